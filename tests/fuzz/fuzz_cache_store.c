/*
 * fuzz_cache_store.c — a whole cache store directory, read as goldfinchd and gf-cache read
 * it: cs_store_open (manifest, and for a writable open the recovery that truncates and
 * unlinks), the index and page table of every context, every page through a reader (page
 * cache, read path, decoder), the blob, verification, a branch over the last page, and for
 * a writable open the resume of unsealed contexts (token ids read back, partial last page)
 * with one more commit.
 *
 * Input: byte 0 holds options, then four sections, each a u32 little-endian length and
 * that many bytes: MANIFEST, the index, the page file and the blob file of the first
 * context the manifest lists (their names follow its serial and blob generation).
 *   bit 0  keep every checksum as it is (otherwise the harness recomputes the blob's, then
 *          the manifest entry's blob checksum, the index entries', each page record the
 *          index points at, and the manifest's, so that mutations reach the checks behind);
 *   bit 1  open writable (recovery, resume, commit) instead of read-only;
 *   bit 2  io_uring instead of pread.
 *
 * Checks: every call returns 0 or -errno with a one-line message; pages come back with the
 * index and token count the manifest implies; a whole-context read equals the pages read
 * one by one; after a writable session the store opens again (nothing the session did
 * leaves it unreadable).
 */
#include "fuzz_common.h"
#include "cs_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define MAX_CTX 4
#define MAX_PAGES 64
#define MAX_READ (4u << 20)
/* Pages up to the store's 256 MiB are valid, but a reader holds io_depth records of that
 * size: contexts with pages above this are listed, not read (they only cost memory). */
#define MAX_PAGE_BYTES (16u << 20)

static char dir[256];

static void clear_dir(void);

static void remove_dir(void)
{
	clear_dir();
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	(void)argc;
	(void)argv;
	snprintf(dir, sizeof(dir), "%s/gf-fuzz-store-XXXXXX", getenv("TMPDIR") && *getenv("TMPDIR")
		 ? getenv("TMPDIR") : base);
	FUZZ_CHECK(mkdtemp(dir), "mkdtemp %s: %s", dir, strerror(errno));
	atexit(remove_dir);
	return 0;
}

static void clear_dir(void)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int fd;

	FUZZ_CHECK(d, "opendir %s", dir);
	fd = dirfd(d);
	while ((de = readdir(d)))
		if (de->d_name[0] != '.' || (de->d_name[1] && strcmp(de->d_name, "..")))
			unlinkat(fd, de->d_name, 0);
	closedir(d);
}

static void put_file(const char *name, const uint8_t *p, size_t n)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	FUZZ_CHECK(fd >= 0, "%s: %s", path, strerror(errno));
	FUZZ_CHECK(!n || write(fd, p, n) == (ssize_t)n, "%s: write", path);
	close(fd);
}

/* A section: u32 length then the bytes, copied to a heap block the harness may patch. */
static uint8_t *section(fuzz_in *in, size_t *len)
{
	size_t want = fuzz_u32(in);
	uint8_t *p;

	if (want > in->n)
		want = in->n;
	p = malloc(want ? want : 1);
	FUZZ_CHECK(p, "out of memory");
	memcpy(p, in->p, want);
	in->p += want;
	in->n -= want;
	*len = want;
	return p;
}

/* Makes the checksums right, from the blob up to the manifest header. */
static void fix_checksums(uint8_t *man, size_t man_len, uint8_t *idx, size_t idx_len,
			  uint8_t *pages, size_t pages_len, uint8_t *blob, size_t blob_len)
{
	uint8_t *e = man + CS_MAN_HDR;
	uint64_t serial;

	if (man_len < CS_MAN_HDR)
		return;
	if (man_len >= CS_MAN_HDR + CS_MAN_ENTRY_MIN) {
		serial = cs_get64(e);
		if (blob_len >= CS_BLOB_HDR) {
			uint64_t sum = cs_blob_checksum(blob + CS_BLOB_HDR, blob_len - CS_BLOB_HDR);

			cs_put64(blob + 32, sum);
			cs_put64(blob + 40, XXH3_64bits(blob, 40));
			cs_put64(e + 88, sum);
		}
		for (size_t i = 0; i + CS_IDX_ENTRY <= idx_len; i += CS_IDX_ENTRY) {
			uint8_t *x = idx + i;
			uint64_t off = cs_get64(x + 8), dlen = cs_get32(x + 16);

			cs_put64(x + 24, XXH3_64bits_withSeed(x, 24, serial));
			if (dlen >= CS_PAGE_HDR && off <= pages_len && dlen <= pages_len - off) {
				uint8_t *r = pages + off;

				cs_put64(r + 48, XXH3_64bits(r + CS_PAGE_HDR, dlen - CS_PAGE_HDR));
				cs_put64(r + 56, XXH3_64bits(r, 56));
			}
		}
	}
	cs_put64(man + 40, XXH3_64bits(man + CS_MAN_HDR, man_len - CS_MAN_HDR));
	cs_put64(man + 56, XXH3_64bits(man, 56));
}

static void check_rc(int rc, const char *err, const char *what)
{
	FUZZ_CHECK(rc <= 0, "%s returned %d", what, rc);
	if (rc && rc != -ENOMEM)
		fuzz_check_err(err, CS_ERR_LEN, what);
}

static void read_context(cs_store *s, const cs_ctx_info *info)
{
	cs_reader *r;
	cs_branch *b;
	char err[CS_ERR_LEN] = "";
	size_t esz = cs_dtype_size(info->dtype), row = (size_t)info->width * esz;
	uint64_t n_read = info->n_tokens;
	uint8_t *rows = NULL, *rows_pages = NULL;
	uint32_t *tok = NULL, *tok_pages = NULL;
	void *blob;
	size_t blob_len;
	int rc;

	rc = cs_reader_open(s, info->serial, &r, err);
	check_rc(rc, err, "cs_reader_open");
	if (rc)
		return;
	if (n_read * (row + 4) > MAX_READ || info->n_pages > MAX_PAGES)
		n_read = 0;
	if (n_read) {
		rows = malloc(n_read * row + 1);
		tok = malloc(n_read * 4);
		rows_pages = malloc(n_read * row + 1);
		tok_pages = malloc(n_read * 4);
		FUZZ_CHECK(rows && tok && rows_pages && tok_pages, "out of memory");
	}
	for (uint64_t p = 0; p < info->n_pages && p < MAX_PAGES; p++) {
		const cs_page *pg;
		uint64_t want = p + 1 < info->n_pages ? info->page_tokens
						      : info->n_tokens - p * info->page_tokens;

		rc = cs_reader_page(r, p, &pg, err);
		check_rc(rc, err, "cs_reader_page");
		if (rc) {
			n_read = 0; /* a bad page: the whole read fails too, compared below */
			continue;
		}
		FUZZ_CHECK(pg->index == p && pg->n_tokens == want &&
			   pg->first_token == p * info->page_tokens,
			   "page %llu: index %llu, %u tokens (want %llu)", (unsigned long long)p,
			   (unsigned long long)pg->index, pg->n_tokens, (unsigned long long)want);
		fuzz_touch(pg->rows, (size_t)pg->n_tokens * row);
		fuzz_touch(pg->tokens, (size_t)pg->n_tokens * 4);
		if (n_read) {
			memcpy(rows_pages + pg->first_token * row, pg->rows, (size_t)pg->n_tokens * row);
			memcpy(tok_pages + pg->first_token, pg->tokens, (size_t)pg->n_tokens * 4);
		}
		cs_page_release(pg);
	}
	if (n_read) {
		rc = cs_reader_read(r, 0, n_read, rows, tok, err);
		check_rc(rc, err, "cs_reader_read");
		FUZZ_CHECK(rc || (!memcmp(rows, rows_pages, n_read * row) &&
				  !memcmp(tok, tok_pages, n_read * 4)),
			   "a whole read differs from its pages");
	}
	rc = cs_reader_blob(r, &blob, &blob_len, err);
	check_rc(rc, err, "cs_reader_blob");
	if (!rc) {
		fuzz_touch(blob, blob_len);
		free(blob);
	}
	/* A branch copies the partial last page on its first append. */
	if (info->n_pages <= MAX_PAGES && row <= 4096 && cs_branch_init(&b, r, err) == 0) {
		uint8_t zrow[4096 * 2] = { 0 };
		uint32_t t[2] = { 1, 2 };
		const cs_page *pg;

		rc = cs_branch_append(b, zrow, t, 2, err);
		check_rc(rc, err, "cs_branch_append");
		if (!rc && cs_branch_tokens(b) > 0) {
			rc = cs_branch_page(b, (cs_branch_tokens(b) - 1) / info->page_tokens, &pg, err);
			check_rc(rc, err, "cs_branch_page");
			if (!rc)
				cs_page_release(pg);
		}
		cs_branch_free(b);
	}
	free(tok_pages);
	free(rows_pages);
	free(tok);
	free(rows);
	cs_reader_close(r);
}

static void resume_context(cs_store *s, const cs_ctx_info *info)
{
	cs_writer *w;
	char err[CS_ERR_LEN] = "";
	uint8_t zrow[4096 * 4] = { 0 };
	uint32_t t[4] = { 5, 6, 7, 8 };
	size_t row = (size_t)info->width * cs_dtype_size(info->dtype);
	int rc;

	if (info->sealed || row > 4096)
		return;
	rc = cs_writer_resume(s, info->serial, &w, err);
	check_rc(rc, err, "cs_writer_resume");
	if (rc)
		return;
	rc = cs_writer_append(w, zrow, t, 4, err);
	check_rc(rc, err, "cs_writer_append");
	if (!rc) {
		rc = cs_writer_commit(w, "blob", 4, 0, err);
		check_rc(rc, err, "cs_writer_commit");
	}
	cs_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_in in = { data, size };
	uint8_t opts = fuzz_u8(&in), *man, *idx, *pages, *blob;
	size_t man_len, idx_len, pages_len, blob_len, n = 0;
	char name[64], err[CS_ERR_LEN] = "";
	cs_config cfg;
	cs_store *s;
	cs_ctx_info *list = NULL;
	uint64_t serial = 1, gen = 1;
	int rc;

	if (!dir[0])
		LLVMFuzzerInitialize(NULL, NULL);
	man = section(&in, &man_len);
	idx = section(&in, &idx_len);
	pages = section(&in, &pages_len);
	blob = section(&in, &blob_len);
	if (!(opts & 1))
		fix_checksums(man, man_len, idx, idx_len, pages, pages_len, blob, blob_len);
	if (man_len >= CS_MAN_HDR + CS_MAN_ENTRY_MIN) {
		serial = cs_get64(man + CS_MAN_HDR);
		gen = cs_get64(man + CS_MAN_HDR + 72);
	}
	clear_dir();
	put_file(CS_MANIFEST, man, man_len);
	cs_name_idx(name, serial);
	put_file(name, idx, idx_len);
	cs_name_pages(name, serial);
	put_file(name, pages, pages_len);
	cs_name_blob(name, serial, gen);
	put_file(name, blob, blob_len);

	cs_config_defaults(&cfg);
	cfg.flags = opts & 2 ? 0 : CS_OPEN_RDONLY;
	cfg.backend = opts & 4 ? CS_IO_URING : CS_IO_SYNC;
	cfg.direct = CS_DIRECT_OFF;
	cfg.io_depth = 2;
	cfg.readahead_pages = 1;
	cfg.ram_cache_bytes = 1 << 20;
	rc = cs_store_open(&s, dir, &cfg, err);
	if (rc == -EINVAL && (opts & 4))
		goto out; /* no io_uring here */
	check_rc(rc, err, "cs_store_open");
	if (rc)
		goto out;
	rc = cs_store_list(s, &list, &n, err);
	check_rc(rc, err, "cs_store_list");
	for (size_t i = 0; i < n && i < MAX_CTX; i++) {
		cs_verify_report rep;
		void *b;
		size_t bl;

		if ((uint64_t)list[i].page_tokens * (list[i].width * cs_dtype_size(list[i].dtype) + 4) >
		    MAX_PAGE_BYTES)
			continue;

		memset(&rep, 0, sizeof(rep));
		rc = cs_store_verify(s, list[i].serial, &rep, err);
		check_rc(rc, err, "cs_store_verify");
		rc = cs_store_read_blob(s, list[i].serial, &b, &bl, err);
		check_rc(rc, err, "cs_store_read_blob");
		if (!rc)
			free(b);
		read_context(s, &list[i]);
		if (opts & 2)
			resume_context(s, &list[i]);
	}
	free(list);
	cs_store_close(s);
	if (opts & 2) {
		/* What a writable session leaves must open again. */
		cfg.flags = CS_OPEN_RDONLY;
		rc = cs_store_open(&s, dir, &cfg, err);
		FUZZ_CHECK(rc == 0, "the store does not open after a writable session: %s", err);
		cs_store_close(s);
	}
out:
	free(blob);
	free(pages);
	free(idx);
	free(man);
	return 0;
}
