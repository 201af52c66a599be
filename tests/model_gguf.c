/*
 * model_gguf — GGUF v3 write/read round trips and reader robustness.
 *
 *   model_gguf TESTDATA          round trips (real checkpoints + vocabulary, mixed dtypes, odd
 *                                sizes), forward compatibility (unknown keys), bad metadata
 *   model_gguf TESTDATA robust   truncated, flipped and garbage copies of a written file
 *
 * Exit 0 pass, 1 fail, 77 skip (test data missing).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static void check_err_line(const char *err, const char *what)
{
	CHECK(err[0] != '\0', "%s: empty error message", what);
	CHECK(strchr(err, '\n') == NULL, "%s: error has a newline: %s", what, err);
}

static bool same_config(const gf_config *a, const gf_config *b)
{
	return a->n_layer == b->n_layer && a->n_embd == b->n_embd && a->dim_att == b->dim_att &&
	       a->dim_ffn == b->dim_ffn && a->head_size == b->head_size &&
	       a->n_head == b->n_head && a->vocab_size == b->vocab_size &&
	       a->first_gold == b->first_gold && a->ckv_dim == b->ckv_dim &&
	       a->lora_maa == b->lora_maa && a->lora_decay == b->lora_decay &&
	       a->lora_value2 == b->lora_value2 && a->lora_maa_q == b->lora_maa_q &&
	       a->lora_maa_kv == b->lora_maa_kv && a->lora_key == b->lora_key &&
	       a->lora_value == b->lora_value && a->rope_base == b->rope_base &&
	       a->rope_rebase == b->rope_rebase && a->rope_rescale == b->rope_rescale &&
	       a->model_id == b->model_id;
}

static void compare_sets(const gf_tensor_set *a, const gf_tensor_set *b, const char *what)
{
	CHECK(a->n_tensors == b->n_tensors, "%s: %d tensors vs %d", what, a->n_tensors,
	      b->n_tensors);
	for (int i = 0; i < a->n_tensors && i < b->n_tensors; i++) {
		const gf_tensor *x = &a->tensors[i], *y = &b->tensors[i];

		CHECK(!strcmp(x->name, y->name), "%s: tensor %d name %s vs %s", what, i, x->name,
		      y->name);
		CHECK(x->dtype == y->dtype && x->n_dims == y->n_dims && x->nbytes == y->nbytes,
		      "%s: %s type/dims/size", what, x->name);
		for (int d = 0; d < x->n_dims; d++)
			CHECK(x->shape[d] == y->shape[d], "%s: %s dim %d", what, x->name, d);
		CHECK(!x->nbytes || !memcmp(x->data, y->data, x->nbytes), "%s: %s bytes", what,
		      x->name);
		CHECK((uintptr_t)y->data % 32 == 0, "%s: %s not 32-byte aligned", what, x->name);
		if (test_failures > 30)
			return;
	}
}

static void compare_vocab(const gf_vocab *a, const gf_vocab *b, const char *what)
{
	CHECK(a->n_tokens == b->n_tokens, "%s: %d tokens vs %d", what, a->n_tokens, b->n_tokens);
	if (a->n_tokens != b->n_tokens || a->n_tokens == 0)
		return;
	CHECK(!memcmp(a->offsets, b->offsets, ((size_t)a->n_tokens + 1) * sizeof(uint32_t)),
	      "%s: offsets differ", what);
	CHECK(!memcmp(a->bytes, b->bytes, a->offsets[a->n_tokens]), "%s: bytes differ", what);
}

/* Writes, reads back and compares everything. */
static void round_trip(const char *path, const gf_config *cfg, const gf_tensor_set *ts,
		       const gf_vocab *vocab, const char *name, const char *what)
{
	char err[GF_ERR_LEN] = "", tmp[1100];
	gf_gguf g;
	gf_tensor_set any;
	int rc = gf_gguf_write(path, cfg, ts, vocab, name, err);

	CHECK(rc == 0, "%s: write: %s", what, err);
	if (rc)
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	CHECK(access(tmp, F_OK) != 0, "%s: %s left behind", what, tmp);
	rc = gf_gguf_read(&g, path, err);
	CHECK(rc == 0, "%s: read: %s", what, err);
	if (rc)
		return;
	compare_sets(ts, &g.tensors, what);
	CHECK(same_config(cfg, &g.config), "%s: config differs", what);
	CHECK(!strcmp(g.name, name ? name : ""), "%s: name '%s'", what, g.name);
	if (vocab)
		compare_vocab(vocab, &g.vocab, what);
	else
		CHECK(g.vocab.n_tokens == 0 && g.vocab.offsets == NULL, "%s: phantom vocab", what);
	gf_gguf_free(&g);
	gf_gguf_free(&g);

	rc = gf_tensors_read_any(&any, path, err);
	CHECK(rc == 0, "%s: read_any: %s", what, err);
	if (rc == 0)
		compare_sets(ts, &any, what);
	gf_tensors_free(&any);
}

static void expect_fail(const char *path, const char *want, const char *what)
{
	gf_gguf g;
	char err[GF_ERR_LEN] = "";
	int rc = gf_gguf_read(&g, path, err);

	CHECK(rc < 0, "%s: read succeeded", what);
	check_err_line(err, what);
	CHECK(strstr(err, want) != NULL, "%s: error '%s' lacks '%s'", what, err, want);
	CHECK(g.tensors.n_tensors == 0 && g.tensors.map == NULL && g.vocab.offsets == NULL,
	      "%s: not empty after failure", what);
}

/* Little-endian GGUF pieces, for files patched by hand. */
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

static void put32(struct buf *b, uint32_t v)
{
	uint8_t x[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };

	put(b, x, 4);
}

static void put64(struct buf *b, uint64_t v)
{
	put32(b, (uint32_t)v);
	put32(b, (uint32_t)(v >> 32));
}

static void put_str(struct buf *b, const char *s)
{
	put64(b, strlen(s));
	put(b, s, strlen(s));
}

/* Replaces the first occurrence of `from` by `to` (same length) in the file. */
static int patch_file(const char *src, const char *dst, const char *from, const char *to)
{
	size_t len, n = strlen(from);
	uint8_t *d = test_read_file(src, &len);
	int rc = -1;

	if (!d)
		return -1;
	for (size_t i = 0; i + n <= len; i++) {
		if (!memcmp(d + i, from, n)) {
			memcpy(d + i, to, n);
			rc = write_all(dst, d, len);
			break;
		}
	}
	free(d);
	return rc;
}

static void test_gguf(const char *testdata, const char *tmpdir)
{
	char src[1024], path[1024], path2[1100], err[GF_ERR_LEN] = "";
	gf_tensor_set ts;
	gf_config cfg;
	gf_vocab vocab = { 0 };
	int rc;

	snprintf(src, sizeof(src), "%s/tokenizer/rwkv_vocab_v20230424.txt", testdata);
	rc = gf_vocab_load_file(&vocab, src, err);
	CHECK(rc == 0 && vocab.n_tokens >= 65536, "vocab: %s", err);

	/* Real checkpoints, with and without a vocabulary. */
	static const char *const cases[] = { "a1", "a2", "a3" };
	for (size_t c = 0; c < 3; c++) {
		char what[64];

		snprintf(src, sizeof(src), "%s/goldfinch/%s/model.pth", testdata, cases[c]);
		rc = gf_tensors_read_pth(&ts, src, err);
		CHECK(rc == 0, "%s", err);
		if (rc)
			continue;
		rc = gf_config_infer(&cfg, &ts, err);
		CHECK(rc == 0, "infer %s: %s", src, err);
		cfg.rope_base = c == 1 ? 10000.0f : 0.0f;
		cfg.rope_rebase = c == 1 ? 2.5f : 1.0f;
		cfg.rope_rescale = c == 1 ? 0.5f : 1.0f;
		cfg.model_id = 0xfedcba9876543210ull + c;
		snprintf(path, sizeof(path), "%s/%s.gguf", tmpdir, cases[c]);
		snprintf(what, sizeof(what), "%s round trip", cases[c]);
		round_trip(path, &cfg, &ts, c != 1 && vocab.n_tokens ? &vocab : NULL,
			   c == 2 ? "" : cases[c], what);
		/* Overwriting an existing file replaces it whole. */
		if (c == 0) {
			snprintf(what, sizeof(what), "%s rewrite", cases[c]);
			round_trip(path, &cfg, &ts, NULL, "again", what);
		}
		gf_tensors_free(&ts);
	}

	/* The layout on disk, read without the reader: header, a u32 alignment, and dims
	 * innermost first (emb.weight is [V=512][C=128] in PyTorch order). */
	{
		size_t len;
		uint8_t *d;
		static const uint8_t emb[] = "\x0a\0\0\0\0\0\0\0emb.weight"
					    "\x02\0\0\0"
					    "\x80\0\0\0\0\0\0\0" "\x00\x02\0\0\0\0\0\0"
					    "\0\0\0\0" "\0\0\0\0\0\0\0\0";
		static const uint8_t align[] = "general.alignment\x04\0\0\0\x20\0\0\0";

		snprintf(path, sizeof(path), "%s/a1.gguf", tmpdir);
		d = test_read_file(path, &len);
		CHECK(d && len > 24 && !memcmp(d, "GGUF\x03\0\0\0\xbc\0\0\0\0\0\0\0", 16),
		      "a1.gguf: header (magic, version 3, 188 tensors)");
		CHECK(d && memmem(d, len, emb, sizeof(emb) - 1), "a1.gguf: emb.weight info");
		CHECK(d && memmem(d, len, align, sizeof(align) - 1), "a1.gguf: alignment");
		free(d);
	}

	/* Mixed dtypes, odd sizes (padding), 0 to 4 dims, a vocabulary with empty tokens. */
	{
		static const uint8_t vb[] = "ab\x00\xffhello";
		uint32_t vo[6] = { 0, 0, 2, 2, 4, 9 };
		gf_vocab small = { 5, vo, (uint8_t *)vb };
		int64_t s3[1] = { 3 }, s4[4] = { 2, 1, 3, 5 }, s0[1] = { 0 }, s7[2] = { 7, 1 };
		float *a = malloc(3 * sizeof(float)), *sc = malloc(sizeof(float));
		uint16_t *h = malloc(30 * 2), *bf = malloc(7 * 2);

		memset(&ts, 0, sizeof(ts));
		if (!a || !sc || !h || !bf) {
			CHECK(0, "oom");
			return;
		}
		for (int i = 0; i < 3; i++)
			a[i] = (float)i - 0.5f;
		*sc = 42.0f;
		for (int i = 0; i < 30; i++)
			h[i] = gf_f32_to_f16((float)i / 7);
		for (int i = 0; i < 7; i++)
			bf[i] = gf_f32_to_bf16((float)-i * 3.3f);
		CHECK(!gf_tensors_add_owned(&ts, "odd.f32", GF_DTYPE_F32, 1, s3, a), "add");
		CHECK(!gf_tensors_add_owned(&ts, "four.dims.f16", GF_DTYPE_F16, 4, s4, h), "add");
		CHECK(!gf_tensors_add_owned(&ts, "scalar", GF_DTYPE_F32, 0, s3, sc), "add");
		CHECK(!gf_tensors_add_owned(&ts, "empty", GF_DTYPE_F32, 1, s0, NULL), "add");
		CHECK(!gf_tensors_add_owned(&ts, "bf", GF_DTYPE_BF16, 2, s7, bf), "add");
		snprintf(path, sizeof(path), "%s/mixed.gguf", tmpdir);
		round_trip(path, &cfg, &ts, &small, "mixed", "mixed round trip");
		gf_tensors_free(&ts);
	}

	/* Write errors leave nothing behind. */
	{
		gf_tensor_set empty = { 0 };
		gf_config bad = cfg;

		snprintf(path, sizeof(path), "%s/no/such/dir/x.gguf", tmpdir);
		err[0] = '\0';
		CHECK(gf_gguf_write(path, &cfg, &empty, NULL, NULL, err) < 0, "write to missing dir");
		check_err_line(err, "write to missing dir");
		bad.n_layer = 0;
		snprintf(path, sizeof(path), "%s/bad.gguf", tmpdir);
		err[0] = '\0';
		CHECK(gf_gguf_write(path, &bad, &empty, NULL, NULL, err) == -EINVAL, "bad config");
		check_err_line(err, "bad config");
		CHECK(access(path, F_OK) != 0, "bad config left a file");
	}

	/* Forward compatibility: unknown keys of every type are skipped. Insert them after the
	 * fixed header, padded to 32 bytes so the data section stays aligned. */
	snprintf(path, sizeof(path), "%s/a1.gguf", tmpdir);
	{
		size_t len;
		uint8_t *d = test_read_file(path, &len);
		struct buf k = { 0 }, out = { 0 };
		uint64_t n_kv;
		gf_gguf g;

		if (!d) {
			CHECK(0, "cannot read %s", path);
			return;
		}
		put_str(&k, "zz.u8");
		put32(&k, 0);
		put(&k, "\x07", 1);
		put_str(&k, "zz.f64");
		put32(&k, 12);
		put64(&k, 0x400921fb54442d18ull);
		put_str(&k, "zz.bool");
		put32(&k, 7);
		put(&k, "\x01", 1);
		put_str(&k, "zz.arr.i16");
		put32(&k, 9);
		put32(&k, 3);
		put64(&k, 3);
		put(&k, "\x01\x00\x02\x00\x03\x00", 6);
		put_str(&k, "zz.arr.arr.str");
		put32(&k, 9);
		put32(&k, 9);
		put64(&k, 2);
		for (int i = 0; i < 2; i++) {
			put32(&k, 8);
			put64(&k, 2);
			put_str(&k, "x");
			put_str(&k, "");
		}
		put_str(&k, "general.future.key");
		put32(&k, 8);
		{
			/* Pad with this string's length: header grows by a multiple of 32. */
			size_t pad = (32 - (k.n + 8) % 32) % 32;
			char s[40];

			memset(s, 'p', pad);
			s[pad] = '\0';
			put_str(&k, s);
		}
		put(&out, d, 24);
		put(&out, k.p, k.n);
		put(&out, d + 24, len - 24);
		memcpy(&n_kv, out.p + 16, 8);
		n_kv += 6;
		memcpy(out.p + 16, &n_kv, 8);
		snprintf(path2, sizeof(path2), "%s/future.gguf", tmpdir);
		CHECK(write_all(path2, out.p, out.n) == 0, "write %s", path2);
		rc = gf_gguf_read(&g, path2, err);
		CHECK(rc == 0, "unknown keys: %s", err);
		if (rc == 0) {
			gf_tensor_set ref;

			CHECK(g.config.model_id == 0xfedcba9876543210ull && g.config.n_layer == 6 &&
			      !strcmp(g.name, "again"), "unknown keys: metadata");
			snprintf(src, sizeof(src), "%s/goldfinch/a1/model.pth", testdata);
			CHECK(gf_tensors_read_pth(&ref, src, err) == 0, "%s", err);
			compare_sets(&ref, &g.tensors, "unknown keys");
			gf_tensors_free(&ref);
		}
		gf_gguf_free(&g);
		free(k.p);
		free(out.p);
		free(d);
	}

	/* Bad metadata, patched into a good file. */
	snprintf(path, sizeof(path), "%s/a3.gguf", tmpdir);
	struct {
		const char *from, *to, *want;
	} bad[] = {
		{ "goldfinch.block_count", "goldfinch.block_counX", "goldfinch.block_count missing" },
		{ "GGUF\x03", "GGUF\x02", "version 2 not supported" },
		{ "GGUF", "GGUG", "bad magic" },
		{ "rwkv-world", "rwkv-worlX", "tokenizer.ggml.model" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(path2, sizeof(path2), "%s/bad%zu.gguf", tmpdir, i);
		CHECK(patch_file(path, path2, bad[i].from, bad[i].to) == 0, "patch %s", bad[i].from);
		expect_fail(path2, bad[i].want, bad[i].want);
	}
	/* The architecture value follows its key: patch the value's text after the key. */
	{
		size_t len;
		uint8_t *d = test_read_file(path, &len);
		const char key[] = "general.architecture";

		for (size_t i = 0; d && i + sizeof(key) < len; i++) {
			if (!memcmp(d + i, key, sizeof(key) - 1)) {
				d[i + sizeof(key) - 1 + 4 + 8] ^= 0x20; /* 'g' -> 'G' */
				break;
			}
		}
		snprintf(path2, sizeof(path2), "%s/arch.gguf", tmpdir);
		CHECK(d && write_all(path2, d, len) == 0, "write arch");
		expect_fail(path2, "architecture 'Goldfinch'", "architecture");
		free(d);
	}
	gf_vocab_free(&vocab);
}

/* ------------------------------------------------------------------------------------------
 * Robustness.
 */
static int try_read(const char *path, const char *what)
{
	gf_gguf g;
	char err[GF_ERR_LEN] = "";
	int rc = gf_gguf_read(&g, path, err);

	if (rc < 0)
		check_err_line(err, what);
	gf_gguf_free(&g);
	return rc;
}

static void test_robust(const char *testdata, const char *tmpdir)
{
	char src[1024], path[1024], what[1200], err[GF_ERR_LEN] = "";
	gf_tensor_set ts;
	gf_config cfg;
	gf_vocab vocab = { 0 };
	uint8_t *orig;
	size_t len, data_start = 0;
	uint64_t rng = 12345;
	int fd, n_fail = 0, n_ok = 0;

	/* A small vocabulary keeps the header short enough to flip every byte of it. */
	static const uint8_t vb[] = "abcdefgh";
	uint32_t vo[5] = { 0, 1, 1, 4, 8 };

	vocab = (gf_vocab){ 4, vo, (uint8_t *)vb };
	snprintf(src, sizeof(src), "%s/goldfinch/a3/model.pth", testdata);
	if (gf_tensors_read_pth(&ts, src, err) || gf_config_infer(&cfg, &ts, err)) {
		CHECK(0, "%s", err);
		return;
	}
	snprintf(path, sizeof(path), "%s/r.gguf", tmpdir);
	CHECK(gf_gguf_write(path, &cfg, &ts, &vocab, "robust", err) == 0, "%s", err);
	gf_tensors_free(&ts);
	orig = test_read_file(path, &len);
	if (!orig) {
		CHECK(0, "cannot read %s", path);
		return;
	}
	{
		gf_gguf g;

		if (gf_gguf_read(&g, path, err) == 0 && g.tensors.n_tensors)
			data_start = (size_t)((const uint8_t *)g.tensors.tensors[0].data -
					      (const uint8_t *)g.tensors.map);
		gf_gguf_free(&g);
	}
	CHECK(data_start > 0 && data_start < len, "data start");
	fd = open(path, O_RDWR);
	if (fd < 0) {
		free(orig);
		return;
	}
	/* Every header byte, three masks. */
	for (size_t off = 0; off < data_start; off++) {
		static const uint8_t masks[] = { 0xff, 0x01, 0x80 };

		for (int m = 0; m < 3; m++) {
			uint8_t v = orig[off] ^ masks[m];

			if (pwrite(fd, &v, 1, (off_t)off) != 1)
				break;
			snprintf(what, sizeof(what), "gguf byte %zu ^ %02x", off, masks[m]);
			if (try_read(path, what) < 0)
				n_fail++;
			else
				n_ok++;
		}
		if (pwrite(fd, orig + off, 1, (off_t)off) != 1)
			break;
		if (test_failures > 30)
			goto out;
	}
	/* Random 8-byte values over counts and lengths: large numbers, not just bit flips. */
	for (int i = 0; i < 3000; i++) {
		uint8_t junk[8];
		size_t off;

		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		off = (size_t)(rng >> 33) % (data_start - 8);
		for (int k = 0; k < 8; k++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			junk[k] = (uint8_t)(rng >> 56);
		}
		if (pwrite(fd, junk, 8, (off_t)off) != 8)
			break;
		snprintf(what, sizeof(what), "gguf junk at %zu", off);
		if (try_read(path, what) < 0)
			n_fail++;
		else
			n_ok++;
		if (pwrite(fd, orig + off, 8, (off_t)off) != 8)
			break;
	}
	/* Truncations: every length through the header, then every 997 bytes. */
	for (size_t l = len - 1;; l = l > data_start + 997 ? l - 997 : l - 1) {
		if (ftruncate(fd, (off_t)l))
			break;
		snprintf(what, sizeof(what), "gguf truncated to %zu", l);
		CHECK(try_read(path, what) < 0, "%s: read succeeded", what);
		n_fail++;
		if (l == 0 || test_failures > 30)
			break;
	}
	fprintf(stderr, "gguf: %d damaged copies rejected, %d still valid\n", n_fail, n_ok);
out:
	close(fd);
	free(orig);
}

int main(int argc, char **argv)
{
	const char *testdata = argc > 1 ? argv[1] : "../shared/testdata";
	bool robust = argc > 2 && !strcmp(argv[2], "robust");
	char probe[1024], tmpdir[] = "/tmp/gf_gguf_XXXXXX", cmd[1100];

	snprintf(probe, sizeof(probe), "%s/goldfinch/a1/model.pth", testdata);
	if (access(probe, R_OK) != 0) {
		fprintf(stderr, "skip: %s not readable\n", probe);
		return 77;
	}
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	if (robust)
		test_robust(testdata, tmpdir);
	else
		test_gguf(testdata, tmpdir);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "warning: could not remove %s\n", tmpdir);
	if (test_failures) {
		fprintf(stderr, "%d test_failures\n", test_failures);
		return 1;
	}
	printf("ok\n");
	return 0;
}
