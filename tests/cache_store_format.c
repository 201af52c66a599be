/*
 * cache_store_format: reads the golden store tests/data/cache_store_v1.0, written by format
 * 1.0 (`cache_store_format --write DIR` regenerates it; do that only when a new format
 * version is introduced, into a new folder, and keep this one so later versions prove they
 * read it). Checks every documented field it can see: the manifest entry, the key's
 * definition (prefix, model id, token ids), page content, blob, verify; then that a
 * writable open of a copy keeps it intact and can add to it.
 */
#include "cache_store_common.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define FIXTURE CS_TEST_DATA "/cache_store_v1.0"
#define NAME "golden-f16"
#define MODEL_ID 0x0123456789abcdefull
#define W 6
#define PT 8
#define N 13
static const char blob_text[] = "GoldFinch snapshot, format 1.0";

/* The fixture's content, by a formula of its own (not the shared test generators, which
 * may change). f16 values around 1.0; token ids below 65536. */
static uint16_t row_val(uint64_t t, uint32_t j)
{
	return (uint16_t)(0x3c00 + t * 16 + j);
}

static uint32_t tok_val(uint64_t t)
{
	return (uint32_t)(t * 1000 + 7);
}

static int write_fixture(const char *dir)
{
	char err[CS_ERR_LEN] = "", path[4096];
	cs_ctx_params cp = { .model_id = MODEL_ID, .dtype = CS_DTYPE_F16, .width = W,
			     .page_tokens = PT, .name = NAME };
	uint16_t rows[N * W];
	uint32_t tok[N];
	cs_config cfg;
	cs_store *s;
	cs_writer *w;
	int rc;

	for (uint64_t t = 0; t < N; t++) {
		tok[t] = tok_val(t);
		for (uint32_t j = 0; j < W; j++)
			rows[t * W + j] = row_val(t, j);
	}
	cs_config_defaults(&cfg);
	cfg.direct = CS_DIRECT_OFF;
	rc = cs_store_open(&s, dir, &cfg, err);
	CHECK_RC(rc, err);
	rc = cs_writer_begin(s, &cp, &w, err);
	CHECK_RC(rc, err);
	rc = cs_writer_append(w, rows, tok, N, err);
	CHECK_RC(rc, err);
	rc = cs_writer_commit(w, blob_text, sizeof(blob_text) - 1, CS_COMMIT_SEAL, err);
	CHECK_RC(rc, err);
	cs_writer_free(w);
	cs_store_close(s);
	snprintf(path, sizeof(path), "%s/LOCK", dir);
	unlink(path);
	printf("wrote the format %d.%d fixture into %s\n", CS_FORMAT_MAJOR, CS_FORMAT_MINOR, dir);
	return 0;
}

static void check_store(cs_store *s)
{
	char err[CS_ERR_LEN] = "";
	uint16_t rows[N * W];
	uint32_t tok[N], want_tok[N];
	cs_ctx_info *list, info;
	size_t n;
	cs_reader *r;
	cs_key key;
	void *blob;
	size_t len;
	int rc = cs_store_list(s, &list, &n, err);

	CHECK_RC(rc, err);
	CHECK(n >= 1 && list[0].serial == 1, "fixture context missing");
	info = list[0];
	free(list);
	CHECK(!strcmp(info.name, NAME) && info.model_id == MODEL_ID && info.dtype == CS_DTYPE_F16 &&
	      info.width == W && info.page_tokens == PT && info.n_tokens == N && info.n_pages == 2 &&
	      info.sealed && info.shuffle && info.blob_len == sizeof(blob_text) - 1 &&
	      info.raw_bytes == N * (W * 2 + 4) && info.disk_bytes == 2 * 4096 + 2 * 32 + 48 +
	      sizeof(blob_text) - 1, "fixture entry fields");
	for (uint64_t t = 0; t < N; t++)
		want_tok[t] = tok_val(t);
	rc = cs_hash_tokens(MODEL_ID, want_tok, N, &key);
	CHECK(rc == 0 && cs_key_equal(key, info.key), "the key's definition changed");
	CHECK(cs_store_lookup(s, key, &info) == 0 && info.serial == 1, "lookup by key");
	CHECK(cs_store_lookup_name(s, NAME, &info) == 0 && info.serial == 1, "lookup by name");
	rc = cs_reader_open(s, 1, &r, err);
	CHECK_RC(rc, err);
	rc = cs_reader_read(r, 0, N, rows, tok, err);
	CHECK_RC(rc, err);
	for (uint64_t t = 0; t < N; t++) {
		CHECK(tok[t] == tok_val(t), "token %llu", (unsigned long long)t);
		for (uint32_t j = 0; j < W; j++)
			CHECK(rows[t * W + j] == row_val(t, j), "row %llu[%u]", (unsigned long long)t, j);
	}
	rc = cs_reader_blob(r, &blob, &len, err);
	CHECK_RC(rc, err);
	CHECK(len == sizeof(blob_text) - 1 && !memcmp(blob, blob_text, len), "blob");
	free(blob);
	cs_reader_close(r);
	rc = cs_store_verify(s, 1, NULL, err);
	CHECK_RC(rc, err);
}

/* The documented header fields, read by hand. */
static void check_layout(void)
{
	uint8_t h[64];
	int fd = open(FIXTURE "/c0000000000000001.pages", O_RDONLY);

	CHECK(fd >= 0 && pread(fd, h, 64, 0) == 64, "fixture page file");
	close(fd);
	CHECK(!memcmp(h, "GFPG", 4) && h[4] == 1 && h[5] == 0 && h[8] == 1 && h[16] == 0 &&
	      h[24] == PT && h[28] == PT && h[32] == W && h[36] == CS_DTYPE_F16 && (h[37] & 1),
	      "page header layout");
	fd = open(FIXTURE "/MANIFEST", O_RDONLY);
	CHECK(fd >= 0 && pread(fd, h, 64, 0) == 64, "fixture manifest");
	close(fd);
	CHECK(!memcmp(h, "GFCSMANF", 8) && h[8] == 1 && h[10] == 0 && h[32] == 1, "manifest header");
}

int main(int argc, char **argv)
{
	char err[CS_ERR_LEN] = "", *dir;
	cs_config cfg;
	cs_store *s;
	int rc;

	if (argc == 3 && !strcmp(argv[1], "--write"))
		return write_fixture(argv[2]);
	check_layout();

	/* read-only, in place */
	cs_config_defaults(&cfg);
	cfg.flags = CS_OPEN_RDONLY;
	rc = cs_store_open(&s, FIXTURE, &cfg, err);
	CHECK_RC(rc, err);
	check_store(s);
	cs_store_close(s);

	/* writable, on a copy, on both backends: recovery keeps it, new contexts join it */
	for (int i = 0; i < 4; i++) {
		cs_writer *w;
		cs_ctx_params cp = { .model_id = 1, .dtype = CS_DTYPE_BF16, .width = 2,
				     .page_tokens = 3 };

		dir = cst_tmpdir("cs_format");
		cst_copy_dir(FIXTURE, dir);
		rc = cst_open(&s, dir, &cst_modes[i], NULL);
		if (rc == 77) {
			cst_rmrf(dir);
			free(dir);
			continue;
		}
		check_store(s);
		rc = cs_writer_begin(s, &cp, &w, err);
		CHECK_RC(rc, err);
		CHECK(cs_writer_serial(w) == 2, "serial after the fixture's");
		cst_append(w, CS_DTYPE_BF16, 2, 5, 0, 10, 1);
		rc = cs_writer_commit(w, NULL, 0, 0, err);
		CHECK_RC(rc, err);
		cs_writer_free(w);
		cs_store_close(s);
		rc = cst_open(&s, dir, &cst_modes[i], NULL);
		CHECK(rc == 0, "reopen");
		check_store(s);
		cst_check_ctx(s, 2, 5, 10, false);
		cs_store_close(s);
		cst_rmrf(dir);
		free(dir);
	}
	printf("format: fixture %d.%d read\n", CS_FORMAT_MAJOR, CS_FORMAT_MINOR);
	return 0;
}
