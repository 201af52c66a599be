/*
 * model_checkpoint — the checkpoint readers (.pth, .safetensors) and element types.
 *
 *   model_checkpoint TESTDATA          real files against config.json, a3 .pth == .safetensors,
 *                                      dtype conversions, synthetic .pth edge cases
 *   model_checkpoint TESTDATA robust   truncated, flipped and garbage copies of the real files
 *
 * Exit 0 pass, 1 fail, 77 skip (test data missing).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "goldfinch.h"
#include "test_util.h"

static int write_all(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	int ok;

	if (!f)
		return -1;
	ok = fwrite(p, 1, n, f) == n;
	ok &= fclose(f) == 0;
	return ok ? 0 : -1;
}

/* An error must be one non-empty line. */
static void check_err_line(const char *err, const char *what)
{
	CHECK(err[0] != '\0', "%s: empty error message", what);
	CHECK(strchr(err, '\n') == NULL, "%s: error has a newline: %s", what, err);
}

/* ------------------------------------------------------------------------------------------
 * Element types.
 */
static float ref_f16(uint16_t h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	float s = (h & 0x8000) ? -1.0f : 1.0f;

	if (e == 0)
		return s * ldexpf((float)m, -24);
	if (e == 31)
		return m ? NAN : s * INFINITY;
	return s * ldexpf((float)(1024 + m), e - 25);
}

static uint32_t fbits(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	return u;
}

static float bitsf(uint32_t u)
{
	float f;

	memcpy(&f, &u, 4);
	return f;
}

static void test_dtypes(void)
{
	uint16_t *all = malloc(65536 * 2 + 2);
	float *bulk = malloc(65536 * sizeof(float));

	CHECK(gf_dtype_size(GF_DTYPE_F32) == 4 && gf_dtype_size(GF_DTYPE_F16) == 2 &&
	      gf_dtype_size(GF_DTYPE_BF16) == 2 && gf_dtype_size((gf_dtype)7) == 0, "sizes");
	CHECK(!strcmp(gf_dtype_name(GF_DTYPE_F32), "f32") &&
	      !strcmp(gf_dtype_name(GF_DTYPE_F16), "f16") &&
	      !strcmp(gf_dtype_name(GF_DTYPE_BF16), "bf16") &&
	      !strcmp(gf_dtype_name((gf_dtype)3), "?"), "names");

	/* f16: every value against a formula, and back. */
	for (uint32_t h = 0; h < 65536; h++) {
		float f = gf_f16_to_f32((uint16_t)h), r = ref_f16((uint16_t)h);

		if (isnan(r)) {
			CHECK(isnan(f), "f16 %04x: not NaN", h);
			CHECK(isnan(gf_f16_to_f32(gf_f32_to_f16(f))), "f16 %04x: NaN lost", h);
			continue;
		}
		CHECK(fbits(f) == fbits(r), "f16 %04x -> %g, expected %g", h, f, r);
		CHECK(gf_f32_to_f16(f) == h, "f16 %04x: round trip gives %04x", h,
		      gf_f32_to_f16(f));
		if (test_failures > 20)
			goto out;
	}
	/* f16 rounding: midpoints between neighbours go to even, anything off them to the
	 * nearest; the midpoint of two halves is exact in f32. */
	for (uint32_t h = 0; h < 0x7bff; h++) {
		for (uint32_t sign = 0; sign <= 0x8000; sign += 0x8000) {
			uint16_t lo = (uint16_t)(h | sign), hi = (uint16_t)((h + 1) | sign);
			float mid = (gf_f16_to_f32(lo) + gf_f16_to_f32(hi)) / 2;
			uint16_t even = (h & 1) ? hi : lo;

			CHECK(gf_f32_to_f16(mid) == even, "f16 midpoint %04x/%04x -> %04x", lo, hi,
			      gf_f32_to_f16(mid));
			if (h == 0 && sign)
				continue; /* below -0 ... the neighbour tests need a magnitude */
			CHECK(gf_f32_to_f16(bitsf(fbits(mid) - 1)) == lo, "f16 below midpoint %04x",
			      lo);
			CHECK(gf_f32_to_f16(bitsf(fbits(mid) + 1)) == hi, "f16 above midpoint %04x",
			      lo);
		}
		if (test_failures > 20)
			goto out;
	}
	CHECK(gf_f32_to_f16(65504.0f) == 0x7bff, "max half");
	CHECK(gf_f32_to_f16(65519.99f) == 0x7bff, "just below the inf threshold");
	CHECK(gf_f32_to_f16(65520.0f) == 0x7c00, "65520 rounds to inf");
	CHECK(gf_f32_to_f16(1e10f) == 0x7c00 && gf_f32_to_f16(-1e10f) == 0xfc00, "overflow");
	CHECK(gf_f32_to_f16(INFINITY) == 0x7c00 && gf_f32_to_f16(-INFINITY) == 0xfc00, "inf");
	CHECK(gf_f32_to_f16(0x1p-25f) == 0 && gf_f32_to_f16(-0x1p-25f) == 0x8000, "tie to zero");
	CHECK(gf_f32_to_f16(0x1.000002p-25f) == 1, "just above half the smallest subnormal");
	CHECK(gf_f32_to_f16(1e-30f) == 0, "underflow");

	/* bf16 */
	for (uint32_t b = 0; b < 65536; b++) {
		float f = gf_bf16_to_f32((uint16_t)b);

		CHECK(fbits(f) == b << 16, "bf16 %04x", b);
		if (isnan(f)) {
			CHECK(isnan(gf_bf16_to_f32(gf_f32_to_bf16(f))), "bf16 NaN %04x lost", b);
			continue;
		}
		CHECK(gf_f32_to_bf16(f) == b, "bf16 %04x round trip", b);
		if ((b & 0x7fff) < 0x7f80 && (b & 0x7fff) != 0x7f7f) {
			uint32_t mid = (b << 16) | 0x8000;
			uint16_t even = (b & 1) ? (uint16_t)(b + 1) : (uint16_t)b;

			CHECK(gf_f32_to_bf16(bitsf(mid)) == even, "bf16 midpoint above %04x", b);
			CHECK(gf_f32_to_bf16(bitsf(mid - 1)) == b, "bf16 below midpoint %04x", b);
			CHECK(gf_f32_to_bf16(bitsf(mid + 1)) == b + 1, "bf16 above midpoint %04x", b);
		}
		if (test_failures > 20)
			goto out;
	}
	CHECK(gf_f32_to_bf16(bitsf(0x7f7f8000)) == 0x7f80, "bf16 max midpoint rounds to inf");
	CHECK(isnan(gf_bf16_to_f32(gf_f32_to_bf16(bitsf(0x7f800001)))), "bf16 sNaN stays NaN");

	/* Bulk converters equal the scalar ones, aligned or not. */
	if (!all || !bulk) {
		CHECK(0, "out of memory");
		goto out;
	}
	for (int shift = 0; shift < 2; shift++) {
		uint8_t *base = (uint8_t *)all + shift;

		for (uint32_t h = 0; h < 65536; h++)
			memcpy(base + 2 * h, &(uint16_t){ (uint16_t)h }, 2);
		gf_convert_to_f32(GF_DTYPE_F16, base, bulk, 65536);
		for (uint32_t h = 0; h < 65536; h++) {
			float s = gf_f16_to_f32((uint16_t)h);

			if (fbits(bulk[h]) != fbits(s) && !(isnan(s) && isnan(bulk[h]))) {
				CHECK(0, "bulk f16 %04x (shift %d)", h, shift);
				break;
			}
		}
		gf_convert_to_f32(GF_DTYPE_BF16, base, bulk, 65536);
		for (uint32_t h = 0; h < 65536; h++) {
			if (fbits(bulk[h]) != h << 16) {
				CHECK(0, "bulk bf16 %04x (shift %d)", h, shift);
				break;
			}
		}
	}
#if defined(__x86_64__)
	/* The same bits with denormals flushed (the forward's float mode, where contexts' rows
	 * are read too): a subnormal half is not read as zero. */
	{
		const unsigned mode = _mm_getcsr();
		for (uint32_t h = 0; h < 65536; h++)
			memcpy((uint8_t *)all + 2 * h, &(uint16_t){ (uint16_t)h }, 2);
		_mm_setcsr(mode | 0x8040u); /* FTZ | DAZ */
		gf_convert_to_f32(GF_DTYPE_F16, all, bulk, 65536);
		_mm_setcsr(mode);
		for (uint32_t h = 0; h < 65536; h++) {
			float r = ref_f16((uint16_t)h);
			if (fbits(bulk[h]) != fbits(r) && !(isnan(r) && isnan(bulk[h]))) {
				CHECK(0, "f16 %04x with denormals flushed: %g, not %g", h, bulk[h], r);
				break;
			}
		}
	}
#endif
	{
		float src[5] = { 1, -2, 3.5f, 0, 1e-3f }, dst[5];

		gf_convert_to_f32(GF_DTYPE_F32, src, dst, 5);
		CHECK(!memcmp(src, dst, sizeof(src)), "bulk f32 copy");
	}
out:
	free(all);
	free(bulk);
}

/* ------------------------------------------------------------------------------------------
 * Tensor sets built by hand.
 */
static void test_sets(void)
{
	gf_tensor_set ts;
	int64_t shape[2] = { 2, 3 }, bad[2] = { -1, 3 };
	float *a = malloc(6 * sizeof(float));
	uint16_t *b = malloc(4 * sizeof(uint16_t));
	char longname[GF_NAME_MAX + 4];

	memset(&ts, 0, sizeof(ts));
	if (!a || !b) {
		CHECK(0, "out of memory");
		free(a);
		free(b);
		return;
	}
	for (int i = 0; i < 6; i++)
		a[i] = (float)i;
	CHECK(gf_tensors_add_owned(&ts, "x.weight", GF_DTYPE_F32, 2, shape, a) == 0, "add f32");
	CHECK(gf_tensors_add_owned(&ts, "y", GF_DTYPE_BF16, 1, (int64_t[]){ 4 }, b) == 0, "add bf16");
	CHECK(gf_tensors_add_owned(&ts, "z", GF_DTYPE_F32, 2, bad, NULL) == -EINVAL, "neg dim");
	CHECK(gf_tensors_add_owned(&ts, "z", (gf_dtype)5, 2, shape, NULL) == -EINVAL, "bad type");
	CHECK(gf_tensors_add_owned(&ts, "", GF_DTYPE_F32, 0, shape, NULL) == -EINVAL, "no name");
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CHECK(gf_tensors_add_owned(&ts, longname, GF_DTYPE_F32, 0, shape, NULL) == -EINVAL,
	      "long name");
	CHECK(ts.n_tensors == 2, "count %d", ts.n_tensors);
	const gf_tensor *t = gf_tensors_find(&ts, "x.weight");
	CHECK(t && t->nbytes == 24 && t->data == a && t->n_dims == 2 && t->shape[1] == 3, "find");
	CHECK(gf_tensors_find(&ts, "y") && gf_tensors_find(&ts, "y")->nbytes == 8, "find y");
	CHECK(gf_tensors_find(&ts, "x") == NULL, "no prefix match");
	gf_tensors_free(&ts);
	CHECK(ts.n_tensors == 0 && ts.tensors == NULL, "freed");
	gf_tensors_free(&ts);
	gf_tensors_free(NULL);
}

/* ------------------------------------------------------------------------------------------
 * Real checkpoints against config.json.
 */
static double span_tol(size_t n)
{
	return 6.0 / sqrt((double)n);
}

/* The values follow the distribution config.json says they were drawn from: proves that
 * each tensor points at its own bytes. */
static void check_init(const gf_tensor *t, const char *init, const char *where)
{
	size_t n = t->nbytes / gf_dtype_size(t->dtype);
	float *x = malloc(n * sizeof(float) + 1);
	double a, b, sum = 0, sq = 0, mean, sd;
	float lo = INFINITY, hi = -INFINITY;
	int normal;

	if (!x) {
		CHECK(0, "oom");
		return;
	}
	gf_convert_to_f32(t->dtype, t->data, x, n);
	for (size_t i = 0; i < n; i++) {
		sum += x[i];
		sq += (double)x[i] * x[i];
		lo = x[i] < lo ? x[i] : lo;
		hi = x[i] > hi ? x[i] : hi;
	}
	mean = sum / (double)n;
	sd = sqrt(sq / (double)n - mean * mean);
	if (sscanf(init, "normal(%lf,%lf)", &a, &b) == 2) {
		normal = 1;
	} else if (sscanf(init, "uniform(%lf,%lf)", &a, &b) == 2) {
		normal = 0;
	} else {
		CHECK(0, "%s: unknown init %s", where, init);
		free(x);
		return;
	}
	if (normal) {
		CHECK(fabs(mean - a) <= b * span_tol(n) + 1e-6, "%s: mean %g, init %s", where, mean,
		      init);
		if (n >= 32)
			CHECK(fabs(sd / b - 1) <= span_tol(n) + 0.05, "%s: sd %g, init %s", where, sd,
			      init);
	} else {
		double eps = 0.01 * (b - a);

		CHECK(lo >= a - eps && hi <= b + eps, "%s: values [%g, %g] outside %s", where, lo,
		      hi, init);
		CHECK(fabs(mean - (a + b) / 2) <= (b - a) / sqrt(12.0) * span_tol(n) + 1e-6,
		      "%s: mean %g, init %s", where, mean, init);
	}
	free(x);
}

static void check_against_config(const gf_tensor_set *ts, const cJSON *cfg, const char *path,
				 bool check_order)
{
	const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(cfg, "tensors");
	const cJSON *dt = cJSON_GetObjectItemCaseSensitive(cfg, "dtype");
	gf_dtype want = GF_DTYPE_F32;
	const cJSON *e;
	int i = 0;

	if (cJSON_IsString(dt) && !strcmp(dt->valuestring, "bfloat16"))
		want = GF_DTYPE_BF16;
	CHECK(cJSON_GetArraySize(tensors) == ts->n_tensors, "%s: %d tensors, config has %d", path,
	      ts->n_tensors, cJSON_GetArraySize(tensors));
	cJSON_ArrayForEach(e, tensors) {
		const gf_tensor *t = gf_tensors_find(ts, e->string);
		const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape"), *d;
		const cJSON *init = cJSON_GetObjectItemCaseSensitive(e, "init");
		char where[300];
		int k = 0;

		snprintf(where, sizeof(where), "%s: %s", path, e->string);
		if (check_order && i < ts->n_tensors)
			CHECK(!strcmp(ts->tensors[i].name, e->string), "%s: tensor %d is %s", where, i,
			      ts->tensors[i].name);
		i++;
		CHECK(t != NULL, "%s: missing", where);
		if (!t)
			continue;
		CHECK(t->dtype == want, "%s: dtype %s", where, gf_dtype_name(t->dtype));
		CHECK(t->n_dims == cJSON_GetArraySize(shape), "%s: %d dims", where, t->n_dims);
		cJSON_ArrayForEach(d, shape) {
			CHECK(k < t->n_dims && t->shape[k] == (int64_t)d->valuedouble,
			      "%s: dim %d", where, k);
			k++;
		}
		CHECK(((uintptr_t)t->data % gf_dtype_size(t->dtype)) == 0, "%s: misaligned", where);
		if (cJSON_IsString(init))
			check_init(t, init->valuestring, where);
		if (test_failures > 30)
			return;
	}
}

/*
 * Independent of the reader's zip code: the bytes of stored entry `name`, found by
 * scanning for its local header (data start) and its central directory header (size:
 * torch writes the local sizes as 0 and a data descriptor after the data). In these files
 * tensor i of the state_dict is storage "<dir>/data/<i>", whole and contiguous.
 */
static const uint8_t *local_entry(const uint8_t *f, size_t len, const char *name,
				  uint32_t *size)
{
	size_t nl = strlen(name);
	const uint8_t *data = NULL;
	bool have_size = false;

	for (const uint8_t *p = f + 30; p + nl <= f + len; p++) {
		const uint8_t *h;

		p = memmem(p, (size_t)(f + len - p), name, nl);
		if (!p)
			break;
		h = p - 30;
		if (!data && !memcmp(h, "PK\x03\x04", 4) && (h[26] | h[27] << 8) == (int)nl)
			data = p + nl + (size_t)(h[28] | h[29] << 8);
		h = p - 46;
		if (p - f >= 46 && !memcmp(h, "PK\x01\x02", 4) && (h[28] | h[29] << 8) == (int)nl) {
			*size = (uint32_t)h[20] | (uint32_t)h[21] << 8 | (uint32_t)h[22] << 16 |
				(uint32_t)h[23] << 24;
			have_size = true;
		}
	}
	return have_size ? data : NULL;
}

static void check_storages(const gf_tensor_set *ts, const char *path)
{
	size_t len;
	uint8_t *f = (uint8_t *)test_read_file(path, &len);

	CHECK(f != NULL, "cannot read %s", path);
	for (int i = 0; f && i < ts->n_tensors; i++) {
		char name[64];
		uint32_t size = 0;
		const uint8_t *d;

		snprintf(name, sizeof(name), "model/data/%d", i);
		d = local_entry(f, len, name, &size);
		CHECK(d && size == ts->tensors[i].nbytes && d + size <= f + len &&
		      !memcmp(d, ts->tensors[i].data, size),
		      "%s: tensor %s is not the bytes of storage %s", path, ts->tensors[i].name, name);
		CHECK((const uint8_t *)ts->tensors[i].data - (const uint8_t *)ts->map ==
		      (d ? d - f : -1), "%s: tensor %s not mapped in place", path,
		      ts->tensors[i].name);
		if (test_failures > 30)
			break;
	}
	free(f);
}

static void test_real(const char *testdata)
{
	static const char *const cases[] = { "a1", "a2", "a3" };
	char path[1024], err[GF_ERR_LEN];

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		gf_tensor_set ts, any;
		cJSON *cfg;
		size_t len;
		char *json;
		int rc;

		snprintf(path, sizeof(path), "%s/goldfinch/%s/config.json", testdata, cases[c]);
		json = test_read_file(path, &len);
		CHECK(json != NULL, "%s: cannot read", path);
		if (!json)
			continue;
		cfg = cJSON_Parse(json);
		free(json);
		CHECK(cfg != NULL, "%s: bad JSON", path);
		if (!cfg)
			continue;

		snprintf(path, sizeof(path), "%s/goldfinch/%s/model.pth", testdata, cases[c]);
		err[0] = '\0';
		rc = gf_tensors_read_pth(&ts, path, err);
		CHECK(rc == 0, "%s: %s", path, err);
		if (rc == 0) {
			check_against_config(&ts, cfg, path, true);
			check_storages(&ts, path);
			CHECK(ts.map != NULL && ts.n_owned == 0, "%s: data not in place", path);
			rc = gf_tensors_read_any(&any, path, err);
			CHECK(rc == 0 && any.n_tensors == ts.n_tensors, "read_any %s: %s", path, err);
			for (int i = 0; rc == 0 && i < ts.n_tensors; i++)
				CHECK(!strcmp(any.tensors[i].name, ts.tensors[i].name) &&
				      any.tensors[i].nbytes == ts.tensors[i].nbytes &&
				      !memcmp(any.tensors[i].data, ts.tensors[i].data, ts.tensors[i].nbytes),
				      "read_any %s: tensor %d differs", path, i);
			gf_tensors_free(&any);
		}

		if (!strcmp(cases[c], "a3")) {
			gf_tensor_set st;

			snprintf(path, sizeof(path), "%s/goldfinch/a3/model.safetensors", testdata);
			rc = gf_tensors_read_safetensors(&st, path, err);
			CHECK(rc == 0, "%s: %s", path, err);
			if (rc == 0) {
				check_against_config(&st, cfg, path, false);
				CHECK(st.n_tensors == ts.n_tensors, "safetensors count");
				for (int i = 0; i < ts.n_tensors; i++) {
					const gf_tensor *a = &ts.tensors[i];
					const gf_tensor *b = gf_tensors_find(&st, a->name);

					CHECK(b && b->dtype == a->dtype && b->n_dims == a->n_dims &&
					      !memcmp(b->shape, a->shape, sizeof(a->shape)) &&
					      b->nbytes == a->nbytes && !memcmp(a->data, b->data, a->nbytes),
					      "a3: %s differs between .pth and .safetensors", a->name);
				}
				rc = gf_tensors_read_any(&any, path, err);
				CHECK(rc == 0 && any.n_tensors == st.n_tensors, "read_any %s", path);
				gf_tensors_free(&any);
			}
			gf_tensors_free(&st);
		}
		gf_tensors_free(&ts);
		cJSON_Delete(cfg);
	}
}

/* ------------------------------------------------------------------------------------------
 * Synthetic .pth files: a zip writer and a pickle writer, to reach the paths real files do
 * not (ZIP64, float16, bad strides, hostile pickles).
 */
struct buf {
	uint8_t *p;
	size_t n, cap;
};

static void put(struct buf *b, const void *s, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
}

static void put8(struct buf *b, uint8_t v)
{
	put(b, &v, 1);
}

static void put16(struct buf *b, uint16_t v)
{
	put8(b, (uint8_t)v);
	put8(b, (uint8_t)(v >> 8));
}

static void put32(struct buf *b, uint32_t v)
{
	put16(b, (uint16_t)v);
	put16(b, (uint16_t)(v >> 16));
}

static void put64(struct buf *b, uint64_t v)
{
	put32(b, (uint32_t)v);
	put32(b, (uint32_t)(v >> 32));
}

struct zentry {
	const char *name;
	const void *data;
	size_t len;
	int method;
	int misalign; /* data offset % 64 */
};

/* Writes a zip; zip64 puts every size/offset in ZIP64 extra fields and end records. */
static void make_zip(struct buf *z, const struct zentry *e, int n, bool zip64)
{
	uint64_t *lho = calloc((size_t)n, sizeof(uint64_t));
	uint64_t cd_off, cd_size;

	for (int i = 0; i < n; i++) {
		size_t nl = strlen(e[i].name), pad;

		lho[i] = z->n;
		/* Pad with an extra field so data lands at the wanted alignment, as torch does. */
		pad = (64 - (z->n + 30 + nl + 4) % 64 + (size_t)e[i].misalign) % 64;
		put32(z, 0x04034b50);
		put16(z, 20);
		put16(z, 0);
		put16(z, (uint16_t)e[i].method);
		put32(z, 0);
		put32(z, 0); /* crc: not checked by the reader */
		put32(z, (uint32_t)e[i].len);
		put32(z, (uint32_t)e[i].len);
		put16(z, (uint16_t)nl);
		put16(z, (uint16_t)(pad + 4));
		put(z, e[i].name, nl);
		put16(z, 0xcafe);
		put16(z, (uint16_t)pad);
		for (size_t k = 0; k < pad; k++)
			put8(z, 0);
		put(z, e[i].data, e[i].len);
	}
	cd_off = z->n;
	for (int i = 0; i < n; i++) {
		size_t nl = strlen(e[i].name);

		put32(z, 0x02014b50);
		put16(z, 45);
		put16(z, 45);
		put16(z, 0);
		put16(z, (uint16_t)e[i].method);
		put32(z, 0);
		put32(z, 0);
		put32(z, zip64 ? 0xffffffffu : (uint32_t)e[i].len);
		put32(z, zip64 ? 0xffffffffu : (uint32_t)e[i].len);
		put16(z, (uint16_t)nl);
		put16(z, zip64 ? 28 : 0);
		put16(z, 0);
		put16(z, 0);
		put16(z, 0);
		put32(z, 0);
		put32(z, zip64 ? 0xffffffffu : (uint32_t)lho[i]);
		put(z, e[i].name, nl);
		if (zip64) {
			put16(z, 0x0001);
			put16(z, 24);
			put64(z, e[i].len);
			put64(z, e[i].len);
			put64(z, lho[i]);
		}
	}
	cd_size = z->n - cd_off;
	if (zip64) {
		uint64_t rec = z->n;

		put32(z, 0x06064b50);
		put64(z, 44);
		put16(z, 45);
		put16(z, 45);
		put32(z, 0);
		put32(z, 0);
		put64(z, (uint64_t)n);
		put64(z, (uint64_t)n);
		put64(z, cd_size);
		put64(z, cd_off);
		put32(z, 0x07064b50);
		put32(z, 0);
		put64(z, rec);
		put32(z, 1);
	}
	put32(z, 0x06054b50);
	put16(z, 0);
	put16(z, 0);
	put16(z, zip64 ? 0xffff : (uint16_t)n);
	put16(z, zip64 ? 0xffff : (uint16_t)n);
	put32(z, zip64 ? 0xffffffffu : (uint32_t)cd_size);
	put32(z, zip64 ? 0xffffffffu : (uint32_t)cd_off);
	put16(z, 0);
	free(lho);
}

static void p_str(struct buf *p, const char *s)
{
	put8(p, 'X');
	put32(p, (uint32_t)strlen(s));
	put(p, s, strlen(s));
}

static void p_global(struct buf *p, const char *mod, const char *name)
{
	put8(p, 'c');
	put(p, mod, strlen(mod));
	put8(p, '\n');
	put(p, name, strlen(name));
	put8(p, '\n');
}

static void p_int(struct buf *p, int64_t v)
{
	if (v >= 0 && v < 256) {
		put8(p, 'K');
		put8(p, (uint8_t)v);
	} else if (v >= 0 && v < 65536) {
		put8(p, 'M');
		put16(p, (uint16_t)v);
	} else {
		put8(p, 0x8a); /* LONG1 with 8 bytes */
		put8(p, 8);
		put64(p, (uint64_t)v);
	}
}

struct pspec {
	const char *storage;   /* e.g. "HalfStorage" */
	int64_t numel, offset;
	int n_dims;
	int64_t shape[5], stride[5];
	const char *name;
	const char *key;       /* storage key */
};

/* A state_dict pickle of the tensors in s[n], as torch writes it (protocol 2). */
static void make_pickle(struct buf *p, const struct pspec *s, int n)
{
	put8(p, 0x80);
	put8(p, 2);
	p_global(p, "collections", "OrderedDict");
	put8(p, 'q');
	put8(p, 0);
	put8(p, ')');
	put8(p, 'R');
	put8(p, '(');
	for (int i = 0; i < n; i++) {
		p_str(p, s[i].name);
		p_global(p, "torch._utils", "_rebuild_tensor_v2");
		put8(p, '(');
		put8(p, '(');
		p_str(p, "storage");
		p_global(p, "torch", s[i].storage);
		p_str(p, s[i].key);
		p_str(p, "cpu");
		p_int(p, s[i].numel);
		put8(p, 't');
		put8(p, 'Q');
		p_int(p, s[i].offset);
		put8(p, '(');
		for (int d = 0; d < s[i].n_dims; d++)
			p_int(p, s[i].shape[d]);
		put8(p, 't');
		put8(p, '(');
		for (int d = 0; d < s[i].n_dims; d++)
			p_int(p, s[i].stride[d]);
		put8(p, 't');
		put8(p, 0x89);
		put8(p, 'h');
		put8(p, 0);
		put8(p, ')');
		put8(p, 'R');
		put8(p, 't');
		put8(p, 'R');
	}
	put8(p, 'u');
	put8(p, '.');
}

#define OPS(lit) (const uint8_t *)(lit), sizeof(lit) - 1

struct synth {
	const char *tmpdir;
	char path[1024];
};

/* Writes a .pth holding pickle pk and storages; returns its path. */
static const char *write_pth(struct synth *sy, const char *tag, const struct buf *pk,
			     const struct zentry *storages, int n_st, bool zip64, int pkl_method,
			     const char *byteorder)
{
	struct zentry e[16];
	struct buf z = { 0 };
	int n = 0;

	e[n++] = (struct zentry){ "archive/data.pkl", pk->p, pk->n, pkl_method, 0 };
	e[n++] = (struct zentry){ "archive/byteorder", byteorder, strlen(byteorder), 0, 0 };
	for (int i = 0; i < n_st && n < 16; i++)
		e[n++] = storages[i];
	e[n++] = (struct zentry){ "archive/version", "3\n", 2, 0, 0 };
	make_zip(&z, e, n, zip64);
	snprintf(sy->path, sizeof(sy->path), "%s/%s.pth", sy->tmpdir, tag);
	if (write_all(sy->path, z.p, z.n))
		CHECK(0, "cannot write %s", sy->path);
	free(z.p);
	return sy->path;
}

/* Expects the read to fail with a one-line message holding `want` (and the path). */
static void expect_fail(const char *path, const char *want, const char *what)
{
	gf_tensor_set ts;
	char err[GF_ERR_LEN] = "";
	int rc = gf_tensors_read_pth(&ts, path, err);

	CHECK(rc < 0, "%s: read succeeded", what);
	check_err_line(err, what);
	CHECK(strstr(err, want) != NULL, "%s: error '%s' lacks '%s'", what, err, want);
	CHECK(strstr(err, path) != NULL, "%s: error '%s' lacks the path", what, err);
	CHECK(ts.n_tensors == 0 && ts.map == NULL, "%s: set not empty after failure", what);
}

static void test_synthetic(const char *tmpdir)
{
	struct synth sy = { .tmpdir = tmpdir };
	uint16_t half[8] = { 0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600, 0x4700, 0x4800 };
	float f32[4] = { 1.5f, -2.0f, 3.25f, 0.0f };
	struct pspec ok[2] = {
		{ "HalfStorage", 8, 0, 2, { 2, 3 }, { 3, 1 }, "blocks.0.w", "0" },
		{ "FloatStorage", 4, 0, 1, { 4 }, { 1 }, "bias", "1" },
	};
	struct zentry st[2] = {
		{ "archive/data/0", half, sizeof(half), 0, 0 },
		{ "archive/data/1", f32, sizeof(f32), 0, 0 },
	};
	struct buf pk = { 0 };
	gf_tensor_set ts;
	char err[GF_ERR_LEN];
	const char *path;
	int rc;

	/* Valid, plain and ZIP64, f32 aligned and not (the reader copies the latter). */
	for (int variant = 0; variant < 3; variant++) {
		pk.n = 0;
		make_pickle(&pk, ok, 2);
		st[1].misalign = variant == 2 ? 2 : 0;
		path = write_pth(&sy, "ok", &pk, st, 2, variant == 1, 0, "little");
		err[0] = '\0';
		rc = gf_tensors_read_pth(&ts, path, err);
		CHECK(rc == 0, "synthetic variant %d: %s", variant, err);
		if (rc == 0) {
			const gf_tensor *w = gf_tensors_find(&ts, "blocks.0.w");
			const gf_tensor *b = gf_tensors_find(&ts, "bias");

			CHECK(ts.n_tensors == 2 && w && b, "synthetic tensors");
			CHECK(w && w->dtype == GF_DTYPE_F16 && w->n_dims == 2 && w->shape[0] == 2 &&
			      w->shape[1] == 3 && w->nbytes == 12 && !memcmp(w->data, half, 12),
			      "synthetic f16 tensor");
			CHECK(b && b->dtype == GF_DTYPE_F32 && b->nbytes == 16 &&
			      !memcmp(b->data, f32, 16) && (uintptr_t)b->data % 4 == 0,
			      "synthetic f32 tensor (variant %d)", variant);
			CHECK((variant == 2) == (ts.n_owned == 1), "copy only when misaligned");
		}
		gf_tensors_free(&ts);
	}
	st[1].misalign = 0;

	/* Storage offset inside the storage is fine. */
	{
		struct pspec s = { "HalfStorage", 8, 2, 1, { 6 }, { 1 }, "t", "0" };

		pk.n = 0;
		make_pickle(&pk, &s, 1);
		path = write_pth(&sy, "offset", &pk, st, 1, false, 0, "little");
		rc = gf_tensors_read_pth(&ts, path, err);
		CHECK(rc == 0 && ts.n_tensors == 1 && !memcmp(ts.tensors[0].data, half + 2, 12),
		      "storage offset: %s", err);
		gf_tensors_free(&ts);
	}

	struct {
		const char *tag;
		struct pspec s;
		const char *want;
	} bad[] = {
		{ "noncontig", { "HalfStorage", 8, 0, 2, { 2, 3 }, { 1, 2 }, "blocks.0.w", "0" },
		  "blocks.0.w is not contiguous" },
		{ "toosmall", { "HalfStorage", 9, 0, 1, { 9 }, { 1 }, "w", "0" }, "does not fit" },
		{ "overrun", { "HalfStorage", 8, 3, 2, { 2, 3 }, { 3, 1 }, "w", "0" }, "overrun" },
		{ "double", { "DoubleStorage", 1, 0, 1, { 1 }, { 1 }, "w", "0" },
		  "torch.DoubleStorage not supported" },
		{ "nostorage", { "HalfStorage", 1, 0, 1, { 1 }, { 1 }, "w", "7" }, "missing" },
		{ "negdim", { "HalfStorage", 8, 0, 1, { -1 }, { 1 }, "w", "0" }, "bad shape" },
		{ "bigdim", { "HalfStorage", 8, 0, 2, { (int64_t)1 << 40, (int64_t)1 << 40 },
			      { (int64_t)1 << 40, 1 }, "w", "0" }, "bad shape" },
		{ "5dims", { "HalfStorage", 8, 0, 5, { 1, 1, 1, 1, 1 }, { 1, 1, 1, 1, 1 }, "w", "0" },
		  "at most 4 dims" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		pk.n = 0;
		make_pickle(&pk, &bad[i].s, 1);
		path = write_pth(&sy, bad[i].tag, &pk, st, 1, false, 0, "little");
		expect_fail(path, bad[i].want, bad[i].tag);
	}

	/* Zip-level faults. */
	pk.n = 0;
	make_pickle(&pk, ok, 1);
	path = write_pth(&sy, "deflated", &pk, st, 1, false, 8, "little");
	expect_fail(path, "is compressed (method 8)", "compressed entry");
	path = write_pth(&sy, "bigendian", &pk, st, 1, false, 0, "big");
	expect_fail(path, "not little-endian", "byteorder");

	/* Pickle-level faults: append opcodes to a valid prefix. */
	struct {
		const char *tag;
		const uint8_t *ops;
		size_t n;
		const char *want;
	} hostile[] = {
		{ "opcode", OPS("\x80\x02I12\n."),
		  "pickle opcode 0x49 at offset 2 not supported in a state_dict" },
		{ "underflow", OPS("\x80\x02\x87."), "stack underflow" },
		{ "nomark", OPS("\x80\x02t."), "no MARK" },
		{ "memo", OPS("\x80\x02K\x01r\xf0\xff\xff\xff."), "memo index" },
		{ "memoget", OPS("\x80\x02j\x05\x00\x00\x00."), "unset slot" },
		{ "system", OPS("\x80\x02" "cos\nsystem\nX\x02\x00\x00\x00ls\x85R."),
		  "os.system" },
		{ "truncstr", OPS("\x80\x02X\xff\x00\x00\x00" "ab"), "truncated" },
		{ "noend", OPS("\x80\x02}"), "truncated" },
		{ "notdict", OPS("\x80\x02K\x01."), "does not hold a dict" },
		{ "setitem", OPS("\x80\x02K\x01K\x02K\x03s."), "not a dict" },
		{ "value", OPS("\x80\x02}X\x01\x00\x00\x00" "aK\x01s."),
		  "value is not a tensor" },
		{ "proto", OPS("\x80\x09}."), "protocol" },
		{ "long1", OPS("\x80\x02\x8a\x09"), "LONG1" },
	};
	for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
		pk.n = 0;
		put(&pk, hostile[i].ops, hostile[i].n);
		path = write_pth(&sy, hostile[i].tag, &pk, st, 1, false, 0, "little");
		expect_fail(path, hostile[i].want, hostile[i].tag);
	}
	/* Deep nesting: 100000 marks, then 1.1 million pushes. */
	pk.n = 0;
	put(&pk, "\x80\x02", 2);
	for (int i = 0; i < 100000; i++)
		put8(&pk, '(');
	put8(&pk, '.');
	path = write_pth(&sy, "marks", &pk, st, 1, false, 0, "little");
	expect_fail(path, "too deeply nested", "marks");
	pk.n = 0;
	put(&pk, "\x80\x02", 2);
	for (int i = 0; i < 1100000; i++)
		put8(&pk, 'N');
	put8(&pk, '.');
	path = write_pth(&sy, "pushes", &pk, st, 1, false, 0, "little");
	expect_fail(path, "too deeply nested", "pushes");
	free(pk.p);
}

/* ------------------------------------------------------------------------------------------
 * Robustness: damaged copies of the real files. Every read must fail cleanly or succeed
 * (a flipped data byte is still a valid file); none may crash (ASan build runs this too).
 */
typedef int (*reader_fn)(gf_tensor_set *, const char *, char *);

static int try_read(reader_fn fn, const char *path, const char *what)
{
	gf_tensor_set ts;
	char err[GF_ERR_LEN] = "";
	int rc = fn(&ts, path, err);

	if (rc < 0)
		check_err_line(err, what);
	else
		CHECK(rc == 0 && ts.n_tensors > 0, "%s: rc %d", what, rc);
	gf_tensors_free(&ts);
	return rc;
}

static void robust_file(const char *src, const char *tmpdir, const char *tag, reader_fn fn,
			size_t hot_lo, size_t hot_hi, int hot_step, bool truncations)
{
	char path[1024], what[1200];
	size_t len;
	uint8_t *orig = (uint8_t *)test_read_file(src, &len);
	int fd, n_fail = 0, n_ok = 0;
	uint64_t rng = 0x9e3779b97f4a7c15ull;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (!orig) {
		CHECK(0, "cannot read %s", src);
		return;
	}
	snprintf(path, sizeof(path), "%s/%s", tmpdir, tag);
	if (write_all(path, orig, len)) {
		CHECK(0, "cannot write %s", path);
		free(orig);
		return;
	}
	fd = open(path, O_RDWR);
	if (fd < 0) {
		CHECK(0, "cannot open %s", path);
		free(orig);
		return;
	}
	if (hot_hi > len)
		hot_hi = len;

	/* Flipped bytes in the structural region (headers, pickle, directory), restored
	 * after each read. */
	for (size_t off = hot_lo; off < hot_hi; off += (size_t)hot_step) {
		static const uint8_t masks[] = { 0xff, 0x01, 0x80 };
		uint8_t m = masks[(off / (size_t)hot_step) % 3], v = orig[off] ^ m;

		if (pwrite(fd, &v, 1, (off_t)off) != 1)
			break;
		snprintf(what, sizeof(what), "%s: byte %zu ^ %02x", tag, off, m);
		if (try_read(fn, path, what) < 0)
			n_fail++;
		else
			n_ok++;
		if (pwrite(fd, orig + off, 1, (off_t)off) != 1)
			break;
		if (test_failures > 30)
			goto out;
	}
	/* Random bursts of garbage anywhere. */
	for (int i = 0; i < 300; i++) {
		size_t off, n;
		uint8_t junk[64];

		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		off = (size_t)(rng >> 33) % len;
		n = 1 + (size_t)(rng >> 20) % 64;
		if (n > len - off)
			n = len - off;
		for (size_t k = 0; k < n; k++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			junk[k] = (uint8_t)(rng >> 56);
		}
		if (pwrite(fd, junk, n, (off_t)off) != (ssize_t)n)
			break;
		snprintf(what, sizeof(what), "%s: garbage at %zu", tag, off);
		if (try_read(fn, path, what) < 0)
			n_fail++;
		else
			n_ok++;
		if (pwrite(fd, orig + off, n, (off_t)off) != (ssize_t)n)
			break;
	}
	/* Truncations, longest first: 400 lengths spread over the data, every 997 bytes
	 * through the first 256 KiB (headers, pickle, first storages), then the first 4096
	 * lengths step 13. */
	for (size_t l = len - 1; truncations && l > 4096;
	     l = l > (256u << 10) ? l - (len / 400 | 1) : l > 997 ? l - 997 : 0) {
		if (ftruncate(fd, (off_t)l))
			break;
		snprintf(what, sizeof(what), "%s truncated to %zu", tag, l);
		CHECK(try_read(fn, path, what) < 0, "%s: read succeeded", what);
		n_fail++;
		if (test_failures > 30)
			goto out;
	}
	for (size_t l = 4096; truncations; l = l >= 13 ? l - 13 : 0) {
		if (l < len) {
			if (ftruncate(fd, (off_t)l))
				break;
			snprintf(what, sizeof(what), "%s truncated to %zu", tag, l);
			CHECK(try_read(fn, path, what) < 0, "%s: read succeeded", what);
			n_fail++;
		}
		if (l == 0)
			break;
	}
	/* A file of garbage. */
	if (ftruncate(fd, 0) == 0) {
		uint8_t junk[4096];

		for (size_t k = 0; k < sizeof(junk); k++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			junk[k] = (uint8_t)(rng >> 56);
		}
		if (pwrite(fd, junk, sizeof(junk), 0) == (ssize_t)sizeof(junk)) {
			snprintf(what, sizeof(what), "%s: garbage file", tag);
			CHECK(try_read(fn, path, what) < 0, "%s: read succeeded", what);
			CHECK(try_read(gf_tensors_read_any, path, what) < 0, "%s: read_any", what);
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	fprintf(stderr, "%s: %d damaged copies rejected, %d still valid (%.1f s)\n", tag, n_fail,
		n_ok, (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
out:
	close(fd);
	unlink(path);
	free(orig);
}

static void test_robust(const char *testdata, const char *tmpdir)
{
	char src[1024];

	/* a3.pth: pickle in [0, ~24.3K), then a local header per storage; the central
	 * directory is the last ~12K. */
	snprintf(src, sizeof(src), "%s/goldfinch/a3/model.pth", testdata);
	robust_file(src, tmpdir, "a3.pth", gf_tensors_read_pth, 0, 24400, 11, true);
	{
		struct stat s;

		if (stat(src, &s) == 0)
			robust_file(src, tmpdir, "a3.pth-tail", gf_tensors_read_pth,
				    (size_t)s.st_size - 14000, (size_t)s.st_size, 5, false);
	}
	snprintf(src, sizeof(src), "%s/goldfinch/a1/model.pth", testdata);
	robust_file(src, tmpdir, "a1.pth", gf_tensors_read_pth, 0, 1000, 1, true);
	snprintf(src, sizeof(src), "%s/goldfinch/a3/model.safetensors", testdata);
	robust_file(src, tmpdir, "a3.safetensors", gf_tensors_read_safetensors, 0, 17000, 7, true);
	robust_file(src, tmpdir, "a3.safetensors-any", gf_tensors_read_any, 0, 64, 1, false);
}

int main(int argc, char **argv)
{
	const char *testdata = argc > 1 ? argv[1] : "../shared/testdata";
	bool robust = argc > 2 && !strcmp(argv[2], "robust");
	char probe[1024], tmpdir[] = "/tmp/gf_ckpt_XXXXXX";

	snprintf(probe, sizeof(probe), "%s/goldfinch/a1/model.pth", testdata);
	if (access(probe, R_OK) != 0) {
		fprintf(stderr, "skip: %s not readable\n", probe);
		return 77;
	}
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	if (robust) {
		test_robust(testdata, tmpdir);
	} else {
		test_dtypes();
		test_sets();
		test_real(testdata);
		test_synthetic(tmpdir);
	}
	{
		/* Remove what the synthetic tests left. */
		char cmd[1100];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0)
			fprintf(stderr, "warning: could not remove %s\n", tmpdir);
	}
	if (test_failures) {
		fprintf(stderr, "%d failures\n", test_failures);
		return 1;
	}
	printf("ok\n");
	return 0;
}
