/*
 * cache_store_checkpoint: part-way commits, blobs kept and replaced, an abandoned append,
 * resume from the last commit (partial last page included), reader snapshots that outlive
 * later commits, sealing, and the recovery an open does after a crash (garbage after the
 * commit, orphan files).
 */
#include "cache_store_common.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEED 77
#define W 5
#define PT 16
#define DT CS_DTYPE_F16

static void commit_at(cs_writer *w, uint64_t n, bool with_blob, uint32_t flags)
{
	char err[CS_ERR_LEN] = "";
	uint8_t blob[3000];
	size_t bl = cst_blob_len(SEED, n);
	int rc;

	cst_blob(SEED, n, blob, bl);
	rc = cs_writer_commit(w, with_blob ? blob : NULL, bl, flags, err);
	CHECK_RC(rc, err);
	CHECK(cs_writer_committed(w) == n, "committed %llu",
	      (unsigned long long)cs_writer_committed(w));
}

/* Blob of the context must be the one committed at `at` tokens. */
static void check_blob_at(cs_store *s, uint64_t serial, uint64_t at)
{
	char err[CS_ERR_LEN] = "";
	size_t wl = cst_blob_len(SEED, at), len;
	uint8_t want[3000];
	void *blob;
	int rc = cs_store_read_blob(s, serial, &blob, &len, err);

	CHECK_RC(rc, err);
	cst_blob(SEED, at, want, wl);
	CHECK(len == wl && (!len || !memcmp(blob, want, len)), "blob is not the one of %llu tokens",
	      (unsigned long long)at);
	free(blob);
}

static off_t file_size(const char *dir, const char *name)
{
	char p[4096];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return stat(p, &st) ? -1 : st.st_size;
}

static void put_file(const char *dir, const char *name, const char *data, bool append)
{
	char p[4096];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	fd = open(p, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
	CHECK(fd >= 0, "open %s", p);
	CHECK(write(fd, data, strlen(data)) == (ssize_t)strlen(data), "write %s", p);
	close(fd);
}

static int run_mode(const cst_mode *m)
{
	char err[CS_ERR_LEN] = "", *dir = cst_tmpdir("cs_checkpoint"), pages[64], idx[64];
	cs_ctx_params cp = { .model_id = 9, .dtype = DT, .width = W, .page_tokens = PT,
			     .name = "book" };
	cs_store *s;
	cs_writer *w;
	cs_reader *r;
	cs_ctx_info info;
	cs_verify_report rep;
	uint64_t serial;
	off_t pages_len, idx_len;
	int rc = cst_open(&s, dir, m, NULL);

	if (rc == 77) {
		cst_rmrf(dir);
		free(dir);
		return 77;
	}
	rc = cs_writer_begin(s, &cp, &w, err);
	CHECK_RC(rc, err);
	serial = cs_writer_serial(w);
	CHECK(cs_store_info(s, serial, &info, NULL) == -ENOENT, "visible before its first commit");
	cst_append(w, DT, W, SEED, 0, 20, 1);
	commit_at(w, 20, true, 0);                 /* one page and a partial one */
	cst_append(w, DT, W, SEED, 20, 27, 2);
	commit_at(w, 27, false, 0);                /* partial page rewritten; blob kept */
	cst_append(w, DT, W, SEED, 27, 57, 3);
	cs_writer_free(w);                         /* appends after the commit are dropped */
	cst_check_ctx(s, serial, SEED, 27, false);
	check_blob_at(s, serial, 20);

	/* resume from 27: the partial page comes back, the key is rebuilt */
	rc = cs_writer_resume(s, serial, &w, err);
	CHECK_RC(rc, err);
	CHECK(cs_writer_tokens(w) == 27 && cs_writer_committed(w) == 27, "resume point");
	{
		cs_writer *w2;

		CHECK(cs_writer_resume(s, serial, &w2, err) == -EBUSY && !w2, "second writer allowed");
	}
	cst_append(w, DT, W, SEED, 27, 67, 4);
	commit_at(w, 67, true, 0);
	cst_check_ctx(s, serial, SEED, 67, true);

	/* a reader keeps its snapshot (and blob) across later commits */
	rc = cs_reader_open(s, serial, &r, err);
	CHECK_RC(rc, err);
	cst_append(w, DT, W, SEED, 67, 117, 5);
	commit_at(w, 117, true, CS_COMMIT_SEAL);
	{
		uint8_t rows[67 * W * 2], want[67 * W * 2];
		void *blob;
		size_t len;

		cs_reader_info(r, &info);
		CHECK(info.n_tokens == 67, "snapshot moved to %llu", (unsigned long long)info.n_tokens);
		rc = cs_reader_read(r, 0, 67, rows, NULL, err);
		CHECK_RC(rc, err);
		cst_rows(DT, W, SEED, 0, 67, want);
		CHECK(!memcmp(rows, want, sizeof(rows)), "snapshot rows");
		CHECK(cs_reader_read(r, 60, 8, rows, NULL, err) == -EINVAL, "read past the snapshot");
		rc = cs_reader_blob(r, &blob, &len, err);
		CHECK_RC(rc, err);
		CHECK(len == cst_blob_len(SEED, 67), "snapshot blob length");
		free(blob);
	}
	CHECK(cs_store_remove(s, serial, err) == -EBUSY, "removed while held");
	cs_reader_close(r);
	cst_check_ctx(s, serial, SEED, 117, true);
	{
		uint32_t one = 1;
		uint16_t row[W] = { 0 };

		CHECK(cs_writer_append(w, row, &one, 1, err) == -EINVAL, "append after seal");
	}
	cs_writer_free(w);
	CHECK(cs_writer_resume(s, serial, &w, err) == -EINVAL, "sealed context resumed");
	{
		uint32_t tok[117];
		cs_key key;

		cst_tokens(SEED, 0, 117, tok);
		CHECK(cs_hash_tokens(9, tok, 117, &key) == 0, "hash");
		CHECK(cs_store_lookup(s, key, &info) == 0 && info.serial == serial && info.sealed,
		      "lookup by key after seal");
		CHECK(cs_hash_tokens(9, tok, 67, &key) == 0, "hash");
		CHECK(cs_store_lookup(s, key, &info) == -ENOENT, "stale key still found");
	}
	rc = cs_store_verify(s, serial, &rep, err);
	CHECK_RC(rc, err);
	/* 117 tokens = 8 pages; partial copies at 20, 27, 67 were superseded */
	CHECK(rep.records == 8 + 3 && rep.bad_records == 0, "verify saw %llu records",
	      (unsigned long long)rep.records);

	/* a second context left unsealed, then a crash-like mess around both */
	cp.name = "draft";
	rc = cs_writer_begin(s, &cp, &w, err);
	CHECK_RC(rc, err);
	{
		uint64_t s2 = cs_writer_serial(w);

		cst_append(w, DT, W, SEED + 1, 0, 40, 6);
		rc = cs_writer_commit(w, "x", 1, 0, err);
		CHECK_RC(rc, err);
		cs_writer_free(w);
		cs_store_close(s);

		cs_ctx_info i2;

		snprintf(pages, sizeof(pages), "c%016llx.pages", (unsigned long long)s2);
		snprintf(idx, sizeof(idx), "c%016llx.idx", (unsigned long long)s2);
		pages_len = file_size(dir, pages);
		idx_len = file_size(dir, idx);
		put_file(dir, pages, "half-written page", true);
		put_file(dir, idx, "junk entries", true);
		put_file(dir, "c00000000000000ff.pages", "orphan", false);
		put_file(dir, "c00000000000000ff.idx", "orphan", false);
		put_file(dir, "MANIFEST.tmp", "torn", false);
		snprintf(idx, sizeof(idx), "c%016llx.blob.9", (unsigned long long)s2);
		put_file(dir, idx, "future blob", false);
		put_file(dir, "notes.txt", "not ours", false);

		rc = cst_open(&s, dir, m, NULL);
		CHECK(rc == 0, "reopen");
		CHECK(file_size(dir, pages) == pages_len, "garbage after the commit kept");
		snprintf(idx, sizeof(idx), "c%016llx.idx", (unsigned long long)s2);
		CHECK(file_size(dir, idx) == idx_len, "index garbage kept");
		CHECK(file_size(dir, "c00000000000000ff.pages") < 0 &&
		      file_size(dir, "c00000000000000ff.idx") < 0 &&
		      file_size(dir, "MANIFEST.tmp") < 0, "orphans kept");
		snprintf(idx, sizeof(idx), "c%016llx.blob.9", (unsigned long long)s2);
		CHECK(file_size(dir, idx) < 0, "stale blob kept");
		CHECK(file_size(dir, "notes.txt") > 0, "a file not ours was removed");
		cst_check_ctx(s, serial, SEED, 117, true);
		cst_check_ctx(s, s2, SEED + 1, 40, false);
		CHECK(cs_store_lookup_name(s, "draft", &i2) == 0 && !i2.sealed, "draft");
		rc = cs_writer_resume(s, s2, &w, err);
		CHECK_RC(rc, err);
		cst_append(w, DT, W, SEED + 1, 40, 100, 7);
		rc = cs_writer_commit(w, NULL, 0, CS_COMMIT_SEAL, err);
		CHECK_RC(rc, err);
		cs_writer_free(w);
		cst_check_ctx(s, s2, SEED + 1, 100, false);
	}
	/* a writer never committed leaves nothing behind */
	cp.name = "scratch";
	rc = cs_writer_begin(s, &cp, &w, err);
	CHECK_RC(rc, err);
	snprintf(pages, sizeof(pages), "c%016llx.pages", (unsigned long long)cs_writer_serial(w));
	cst_append(w, DT, W, SEED, 0, 100, 8);
	CHECK(file_size(dir, pages) >= 0, "no page file while writing");
	cs_writer_free(w);
	CHECK(file_size(dir, pages) < 0, "uncommitted context left its file");
	CHECK(cs_store_lookup_name(s, "scratch", &info) == -ENOENT, "uncommitted context visible");
	cs_store_close(s);
	cst_rmrf(dir);
	free(dir);
	return 0;
}

int main(void)
{
	int ran = 0;

	for (int i = 0; i < 4; i++)
		ran += run_mode(&cst_modes[i]) == 0;
	if (!ran)
		return 77;
	printf("checkpoint: %d mode(s) passed\n", ran);
	return 0;
}
