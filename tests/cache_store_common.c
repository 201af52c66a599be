/* cache_store_common.c — see cache_store_common.h. */
#include "cache_store_common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const cst_mode cst_modes[4] = {
	{ "io_uring+O_DIRECT", CS_IO_URING, CS_DIRECT_ON },
	{ "io_uring+buffered", CS_IO_URING, CS_DIRECT_OFF },
	{ "pread+O_DIRECT", CS_IO_SYNC, CS_DIRECT_ON },
	{ "pread+buffered", CS_IO_SYNC, CS_DIRECT_OFF },
};

void cst_config(cs_config *cfg, const cst_mode *m)
{
	cs_config_defaults(cfg);
	cfg->backend = m->backend;
	cfg->direct = m->direct;
}

int cst_open(cs_store **s, const char *dir, const cst_mode *m, cs_config *cfg_out)
{
	char err[CS_ERR_LEN] = "";
	cs_config cfg;
	int rc;

	cst_config(&cfg, m);
	if (cfg_out)
		cfg = *cfg_out, cfg.backend = m->backend, cfg.direct = m->direct;
	rc = cs_store_open(s, dir, &cfg, err);
	if (rc && ((m->direct == CS_DIRECT_ON && rc == -EINVAL && strstr(err, "O_DIRECT")) ||
		   (m->backend == CS_IO_URING && strstr(err, "io_uring_queue_init")))) {
		printf("mode %s not available here: %s\n", m->name, err);
		return 77;
	}
	CHECK(rc == 0, "open %s (%s): %s", dir, m->name, err);
	return 0;
}

char *cst_tmpdir(const char *tag)
{
	const char *base = getenv("CS_TEST_TMPDIR");
	char *p;

	if (!base || !*base)
		base = CS_TEST_TMP;
	mkdir(base, 0755);
	p = malloc(strlen(base) + strlen(tag) + 16);
	CHECK(p, "oom");
	sprintf(p, "%s/%s.XXXXXX", base, tag);
	CHECK(mkdtemp(p), "mkdtemp %s: %s", p, strerror(errno));
	return p;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void cst_rmrf(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void cst_copy_dir(const char *src, const char *dst)
{
	DIR *d = opendir(src);
	struct dirent *de;
	char a[4096], b[4096];
	static char buf[1 << 16];

	CHECK(d, "opendir %s", src);
	mkdir(dst, 0755);
	while ((de = readdir(d))) {
		struct stat st;
		int in, out;
		ssize_t n;

		snprintf(a, sizeof(a), "%s/%s", src, de->d_name);
		snprintf(b, sizeof(b), "%s/%s", dst, de->d_name);
		if (stat(a, &st) || !S_ISREG(st.st_mode))
			continue;
		in = open(a, O_RDONLY);
		out = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		CHECK(in >= 0 && out >= 0, "copy %s -> %s", a, b);
		while ((n = read(in, buf, sizeof(buf))) > 0)
			CHECK(write(out, buf, (size_t)n) == n, "write %s", b);
		close(in);
		close(out);
	}
	closedir(d);
}

uint64_t cst_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

uint32_t cst_token(uint64_t seed, uint64_t t)
{
	return (uint32_t)(cst_mix(seed * 0x100000001b3ull + t) % 65536);
}

static uint16_t f32_to_f16(float f)
{
	uint32_t x;
	uint32_t sign, exp, man;

	memcpy(&x, &f, 4);
	sign = (x >> 16) & 0x8000;
	exp = (x >> 23) & 0xff;
	man = x & 0x7fffff;
	if (exp < 113)
		return (uint16_t)sign;   /* flush tiny values: test data only */
	if (exp > 142)
		return (uint16_t)(sign | 0x7bff);
	return (uint16_t)(sign | ((exp - 112) << 10) | (man >> 13));
}

void cst_rows(cs_dtype dt, uint32_t width, uint64_t seed, uint64_t t0, uint64_t n, void *out)
{
	for (uint64_t i = 0; i < n; i++) {
		uint64_t t = t0 + i;
		bool noisy = cst_mix(seed ^ (t * 31)) % 4 == 0;

		for (uint32_t j = 0; j < width; j++) {
			uint64_t k = i * width + j;
			uint64_t h = cst_mix((seed << 20) ^ (t * 65537) ^ j);
			float v = noisy ? (float)(int64_t)(h % 2000001 - 1000000) * 1e-6f
					: sinf((float)(t * 0.01 + j * 0.37 + (double)seed)) * 2.0f;
			uint32_t b;

			memcpy(&b, &v, 4);
			switch (dt) {
			case CS_DTYPE_F32:
				((float *)out)[k] = v;
				break;
			case CS_DTYPE_F16:
				((uint16_t *)out)[k] = f32_to_f16(v);
				break;
			case CS_DTYPE_BF16:
				((uint16_t *)out)[k] = (uint16_t)(b >> 16);
				break;
			}
		}
	}
}

void cst_tokens(uint64_t seed, uint64_t t0, uint64_t n, uint32_t *out)
{
	for (uint64_t i = 0; i < n; i++)
		out[i] = cst_token(seed, t0 + i);
}

size_t cst_blob_len(uint64_t seed, uint64_t n)
{
	return (size_t)(cst_mix(seed * 7 + n) % 3000);
}

void cst_blob(uint64_t seed, uint64_t n, uint8_t *out, size_t len)
{
	for (size_t i = 0; i < len; i++)
		out[i] = (uint8_t)cst_mix(seed ^ (n << 24) ^ i);
}

void cst_append(cs_writer *w, cs_dtype dt, uint32_t width, uint64_t seed, uint64_t from,
		uint64_t to, uint64_t chunk_seed)
{
	char err[CS_ERR_LEN] = "";
	size_t esz = cs_dtype_size(dt);

	while (from < to) {
		uint64_t n = 1 + cst_mix(chunk_seed++ ^ from) % 97;
		void *rows;
		uint32_t *tok;
		int rc;

		if (n > to - from)
			n = to - from;
		rows = malloc(n * width * esz);
		tok = malloc(n * 4);
		CHECK(rows && tok, "oom");
		cst_rows(dt, width, seed, from, n, rows);
		cst_tokens(seed, from, n, tok);
		rc = cs_writer_append(w, rows, tok, n, err);
		CHECK_RC(rc, err);
		free(rows);
		free(tok);
		from += n;
	}
}

void cst_check_ctx(cs_store *s, uint64_t serial, uint64_t seed, uint64_t n, bool check_blob)
{
	char err[CS_ERR_LEN] = "";
	cs_reader *r;
	cs_ctx_info info;
	size_t esz, rb;
	uint8_t *rows, *want;
	uint32_t *tok, *wtok;
	cs_key key;
	int rc = cs_reader_open(s, serial, &r, err);

	CHECK_RC(rc, err);
	cs_reader_info(r, &info);
	CHECK(info.n_tokens == n, "#%llu: %llu tokens, expected %llu", (unsigned long long)serial,
	      (unsigned long long)info.n_tokens, (unsigned long long)n);
	esz = cs_dtype_size(info.dtype);
	rb = (size_t)info.width * esz;
	rows = malloc(n * rb + 1);
	want = malloc(n * rb + 1);
	tok = malloc(n * 4 + 4);
	wtok = malloc(n * 4 + 4);
	CHECK(rows && want && tok && wtok, "oom");
	cst_rows(info.dtype, info.width, seed, 0, n, want);
	cst_tokens(seed, 0, n, wtok);
	rc = cs_reader_read(r, 0, n, rows, tok, err);
	CHECK_RC(rc, err);
	CHECK(!memcmp(rows, want, n * rb), "#%llu rows differ", (unsigned long long)serial);
	CHECK(!memcmp(tok, wtok, n * 4), "#%llu tokens differ", (unsigned long long)serial);
	CHECK(cs_hash_tokens(info.model_id, wtok, n, &key) == 0, "hash");
	CHECK(cs_key_equal(key, info.key), "#%llu key differs", (unsigned long long)serial);
	/* pages backwards: no read-ahead, every page on its own */
	for (uint64_t p = info.n_pages; p-- > 0;) {
		const cs_page *pg;

		rc = cs_reader_page(r, p, &pg, err);
		CHECK_RC(rc, err);
		CHECK(pg->index == p && pg->first_token == p * info.page_tokens, "page %llu header",
		      (unsigned long long)p);
		CHECK(!memcmp(pg->rows, want + pg->first_token * rb, (size_t)pg->n_tokens * rb) &&
		      !memcmp(pg->tokens, wtok + pg->first_token, (size_t)pg->n_tokens * 4),
		      "#%llu page %llu differs", (unsigned long long)serial, (unsigned long long)p);
		cs_page_release(pg);
	}
	if (check_blob) {
		void *blob;
		size_t len, wl = cst_blob_len(seed, n);
		uint8_t *wb = malloc(wl + 1);

		rc = cs_reader_blob(r, &blob, &len, err);
		CHECK_RC(rc, err);
		cst_blob(seed, n, wb, wl);
		CHECK(len == wl && (!len || !memcmp(blob, wb, len)), "#%llu blob differs (%zu vs %zu)",
		      (unsigned long long)serial, len, wl);
		free(blob);
		free(wb);
	}
	cs_reader_close(r);
	free(rows);
	free(want);
	free(tok);
	free(wtok);
}
