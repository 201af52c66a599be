/*
 * cache_store_bitflip: flip one bit at a time at many offsets of a page file (every header
 * byte of every record, then a stride across the whole file, padding included) and check
 * that a reader reports the page holding it as corrupt, naming context and page, never
 * returns its data, still returns every other page intact, and that verify catches every
 * flip (superseded copies included). Then flips in the index, the blob and the manifest.
 */
#include "cache_store_common.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define W 24
#define PT 32
#define DT CS_DTYPE_F16
#define SEED 4242
#define N 200

struct rec {
	uint64_t page, offset;
	uint32_t len;
	bool live;
};

static int fd_of(const char *dir, const char *name, int flags)
{
	char p[4096];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	fd = open(p, flags);
	CHECK(fd >= 0, "open %s", p);
	return fd;
}

static void flip(int fd, uint64_t off)
{
	uint8_t b;

	CHECK(pread(fd, &b, 1, (off_t)off) == 1, "pread");
	b ^= (uint8_t)(1u << (off % 8));
	CHECK(pwrite(fd, &b, 1, (off_t)off) == 1, "pwrite");
}

/* Reads the index file as README.md documents it. */
static size_t load_recs(const char *dir, uint64_t serial, struct rec *recs, size_t cap)
{
	char name[64];
	uint8_t e[32];
	size_t n = 0;
	int fd;

	snprintf(name, sizeof(name), "c%016llx.idx", (unsigned long long)serial);
	fd = fd_of(dir, name, O_RDONLY);
	while (pread(fd, e, 32, (off_t)(n * 32)) == 32 && n < cap) {
		memcpy(&recs[n].page, e, 8);
		memcpy(&recs[n].offset, e + 8, 8);
		memcpy(&recs[n].len, e + 16, 4);
		recs[n].live = true;
		for (size_t k = 0; k < n; k++)
			if (recs[k].page == recs[n].page)
				recs[k].live = false;
		n++;
	}
	close(fd);
	return n;
}

static void check_flip(cs_store *s, uint64_t serial, const char *label, const struct rec *recs,
		       size_t n_recs, uint64_t off, const uint16_t *want, const uint32_t *wtok)
{
	char err[CS_ERR_LEN] = "";
	cs_verify_report rep;
	cs_reader *r;
	int rc = cs_store_verify(s, serial, &rep, err);
	uint64_t bad_page = UINT64_MAX;

	CHECK(rc == -EBADMSG && rep.bad_records == 1, "flip at %llu: verify rc %d, %llu bad (%s)",
	      (unsigned long long)off, rc, (unsigned long long)rep.bad_records, err);
	for (size_t i = 0; i < n_recs; i++)
		if (recs[i].live && off >= recs[i].offset && off < recs[i].offset + recs[i].len)
			bad_page = recs[i].page;
	rc = cs_reader_open(s, serial, &r, err);
	CHECK_RC(rc, err);
	for (uint64_t p = 0; p * PT < N; p++) {
		const cs_page *pg;
		char what[64];

		rc = cs_reader_page(r, p, &pg, err);
		if (p == bad_page) {
			snprintf(what, sizeof(what), "page %llu", (unsigned long long)p);
			CHECK(rc == -EBADMSG && !pg && strstr(err, label) && strstr(err, what) &&
			      strstr(err, "corrupt"),
			      "flip at %llu in page %llu: rc %d, message \"%s\"",
			      (unsigned long long)off, (unsigned long long)p, rc, err);
			continue;
		}
		CHECK_RC(rc, err);
		CHECK(!memcmp(pg->rows, want + p * PT * W, (size_t)pg->n_tokens * W * 2) &&
		      !memcmp(pg->tokens, wtok + p * PT, (size_t)pg->n_tokens * 4),
		      "flip at %llu: page %llu wrong", (unsigned long long)off, (unsigned long long)p);
		cs_page_release(pg);
	}
	cs_reader_close(r);
}

static int run_mode(const cst_mode *m)
{
	char err[CS_ERR_LEN] = "", *dir = cst_tmpdir("cs_bitflip"), name[64], label[64], hex[33];
	uint16_t want[N * W];
	uint32_t wtok[N];
	struct rec recs[64];
	size_t n_recs, flips = 0;
	struct stat st;
	cs_config cfg;
	cs_store *s;
	cs_writer *w;
	cs_ctx_info info;
	uint64_t serial;
	int rc, fd;

	cst_config(&cfg, m);
	cfg.ram_cache_bytes = 1;   /* nothing stays cached: every read goes to the file */
	rc = cst_open(&s, dir, m, &cfg);
	if (rc == 77) {
		cst_rmrf(dir);
		free(dir);
		return 77;
	}
	{
		cs_ctx_params cp = { .model_id = 8, .dtype = DT, .width = W, .page_tokens = PT };

		rc = cs_writer_begin(s, &cp, &w, err);
		CHECK_RC(rc, err);
		serial = cs_writer_serial(w);
		cst_append(w, DT, W, SEED, 0, 70, 1);
		rc = cs_writer_commit(w, "snapshot-1", 10, 0, err);   /* a superseded partial copy */
		CHECK_RC(rc, err);
		cst_append(w, DT, W, SEED, 70, N, 2);
		rc = cs_writer_commit(w, "snapshot-2", 10, CS_COMMIT_SEAL, err);
		CHECK_RC(rc, err);
		cs_writer_free(w);
	}
	CHECK(cs_store_info(s, serial, &info, err) == 0, "%s", err);
	cs_key_hex(info.key, hex);
	snprintf(label, sizeof(label), "%.12s (#%llu)", hex, (unsigned long long)serial);
	cst_rows(DT, W, SEED, 0, N, want);
	cst_tokens(SEED, 0, N, wtok);
	n_recs = load_recs(dir, serial, recs, 64);
	CHECK(n_recs == 8, "%zu records", n_recs);

	snprintf(name, sizeof(name), "c%016llx.pages", (unsigned long long)serial);
	fd = fd_of(dir, name, O_RDWR);
	CHECK(!fstat(fd, &st) && (uint64_t)st.st_size == recs[n_recs - 1].offset + recs[n_recs - 1].len,
	      "page file size");
	for (size_t i = 0; i < n_recs; i++) {
		for (uint64_t b = 0; b < 64; b++) {
			flip(fd, recs[i].offset + b);
			check_flip(s, serial, label, recs, n_recs, recs[i].offset + b, want, wtok);
			flip(fd, recs[i].offset + b);
			flips++;
		}
		flip(fd, recs[i].offset + recs[i].len - 1);   /* the last padding byte */
		check_flip(s, serial, label, recs, n_recs, recs[i].offset + recs[i].len - 1, want, wtok);
		flip(fd, recs[i].offset + recs[i].len - 1);
		flips++;
	}
	for (uint64_t off = 64; off < (uint64_t)st.st_size; off += 61) {
		flip(fd, off);
		check_flip(s, serial, label, recs, n_recs, off, want, wtok);
		flip(fd, off);
		flips++;
	}
	close(fd);
	cst_check_ctx(s, serial, SEED, N, false);   /* all flipped back: whole again */

	/* index entry: the reader refuses the context, naming the entry */
	snprintf(name, sizeof(name), "c%016llx.idx", (unsigned long long)serial);
	fd = fd_of(dir, name, O_RDWR);
	for (uint64_t off = 0; off < n_recs * 32; off += 7) {
		cs_reader *r;

		flip(fd, off);
		rc = cs_reader_open(s, serial, &r, err);
		CHECK(rc == -EBADMSG && strstr(err, label) && strstr(err, "index entry"),
		      "index flip at %llu: rc %d %s", (unsigned long long)off, rc, err);
		CHECK(cs_store_verify(s, serial, NULL, err) == -EBADMSG, "verify missed index flip");
		flip(fd, off);
		flips++;
	}
	close(fd);

	/* blob */
	snprintf(name, sizeof(name), "c%016llx.blob.2", (unsigned long long)serial);
	fd = fd_of(dir, name, O_RDWR);
	for (uint64_t off = 0; off < 48 + 10; off++) {
		void *blob;
		size_t len;

		flip(fd, off);
		rc = cs_store_read_blob(s, serial, &blob, &len, err);
		CHECK(rc == -EBADMSG && !blob && strstr(err, "blob"), "blob flip at %llu: rc %d %s",
		      (unsigned long long)off, rc, err);
		flip(fd, off);
		flips++;
	}
	close(fd);
	cs_store_close(s);

	/* manifest: the store refuses to open rather than guess */
	fd = fd_of(dir, "MANIFEST", O_RDWR);
	CHECK(!fstat(fd, &st), "stat");
	for (uint64_t off = 0; off < (uint64_t)st.st_size; off += 13) {
		flip(fd, off);
		rc = cs_store_open(&s, dir, &cfg, err);
		CHECK(rc == -EBADMSG && strstr(err, "MANIFEST"), "manifest flip at %llu: rc %d %s",
		      (unsigned long long)off, rc, err);
		flip(fd, off);
		flips++;
	}
	close(fd);
	rc = cst_open(&s, dir, m, &cfg);
	CHECK(rc == 0, "reopen");
	cst_check_ctx(s, serial, SEED, N, false);
	cs_store_close(s);
	printf("%s: %zu bit flips, all detected\n", m->name, flips);
	cst_rmrf(dir);
	free(dir);
	return 0;
}

int main(void)
{
	int ran = 0;

	ran += run_mode(&cst_modes[0]) == 0;
	ran += run_mode(&cst_modes[3]) == 0;
	return ran ? 0 : 77;
}
