/*
 * cache_store_budget: a disk budget evicts whole least-recently-used contexts that nobody
 * holds, never a held one nor the writer's own; -ENOSPC when nothing can go; trim; the
 * files of evicted contexts are gone, and stay gone after reopening.
 */
#include "cache_store_common.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>

#define W 16
#define PT 64
#define DT CS_DTYPE_F32
#define LEN 640

static uint64_t put(cs_store *s, uint64_t seed, int *rc_out)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_params cp = { .model_id = 11, .dtype = DT, .width = W, .page_tokens = PT };
	uint8_t blob[3000];
	size_t bl = cst_blob_len(seed, LEN);
	cs_writer *w;
	uint64_t serial;
	int rc = cs_writer_begin(s, &cp, &w, err);

	CHECK_RC(rc, err);
	serial = cs_writer_serial(w);
	cst_blob(seed, LEN, blob, bl);
	/* append without cst_append so a budget error comes back here */
	for (uint64_t at = 0; at < LEN && !rc; at += 100) {
		uint64_t n = LEN - at < 100 ? LEN - at : 100;
		float rows[100 * W];
		uint32_t tok[100];

		cst_rows(DT, W, seed, at, n, rows);
		cst_tokens(seed, at, n, tok);
		rc = cs_writer_append(w, rows, tok, n, err);
	}
	if (!rc)
		rc = cs_writer_commit(w, blob, bl, CS_COMMIT_SEAL, err);
	if (rc_out) {
		*rc_out = rc;
		if (rc)
			CHECK(rc == -ENOSPC && strstr(err, "budget"), "rc %d: %s", rc, err);
	} else {
		CHECK_RC(rc, err);
	}
	cs_writer_free(w);
	return serial;
}

static bool present(cs_store *s, uint64_t serial)
{
	cs_ctx_info info;

	return cs_store_info(s, serial, &info, NULL) == 0;
}

static void touch(cs_store *s, uint64_t serial)
{
	char err[CS_ERR_LEN] = "";
	cs_reader *r;
	int rc = cs_reader_open(s, serial, &r, err);

	CHECK_RC(rc, err);
	cs_reader_close(r);
}

static int count_files(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	CHECK(d, "opendir");
	while ((de = readdir(d)))
		n += de->d_name[0] == 'c';
	closedir(d);
	return n;
}

int main(void)
{
	char err[CS_ERR_LEN] = "", *dir = cst_tmpdir("cs_budget");
	const cst_mode *m = &cst_modes[0];
	uint64_t a, b, c, d, e, f, size, budget;
	cs_config cfg;
	cs_store *s;
	cs_reader *ra, *rc_, *re;
	uint32_t evicted;
	int rc = cst_open(&s, dir, m, NULL);

	if (rc == 77) {
		m = &cst_modes[3];
		rc = cst_open(&s, dir, m, NULL);
	}
	CHECK(rc == 0, "open");
	a = put(s, 1, NULL);
	b = put(s, 2, NULL);
	c = put(s, 3, NULL);
	d = put(s, 4, NULL);
	size = cs_store_disk_used(s) / 4;
	CHECK(size > LEN * W * 4 / 2, "context of %llu bytes on disk", (unsigned long long)size);
	cs_store_close(s);

	/* room for four and a half */
	cst_config(&cfg, m);
	budget = cfg.disk_budget = 4 * size + size / 2;
	rc = cst_open(&s, dir, m, &cfg);
	CHECK(rc == 0, "reopen");
	touch(s, a);                 /* a is now the most recently used */
	e = put(s, 5, NULL);
	CHECK(present(s, a) && !present(s, b) && present(s, c) && present(s, d) && present(s, e),
	      "the LRU context (b) was not the one evicted");
	CHECK(cs_store_disk_used(s) <= budget, "over budget");

	/* c held: d goes next, though c is older */
	rc = cs_reader_open(s, c, &rc_, err);
	CHECK_RC(rc, err);
	f = put(s, 6, NULL);
	CHECK(present(s, c) && !present(s, d) && present(s, f), "held or wrong context evicted");
	CHECK(cs_store_disk_used(s) <= budget, "over budget");

	/* everything held: no room, -ENOSPC, nothing lost */
	rc = cs_reader_open(s, a, &ra, err);
	CHECK_RC(rc, err);
	rc = cs_reader_open(s, e, &re, err);
	CHECK_RC(rc, err);
	{
		cs_reader *rf;
		int prc;

		rc = cs_reader_open(s, f, &rf, err);
		CHECK_RC(rc, err);
		put(s, 7, &prc);
		CHECK(prc == -ENOSPC, "no -ENOSPC with every context held (rc %d)", prc);
		cs_reader_close(rf);
	}
	CHECK(present(s, a) && present(s, c) && present(s, e) && present(s, f), "held lost");
	cst_check_ctx(s, c, 3, LEN, true);
	cs_reader_close(ra);
	cs_reader_close(rc_);
	cs_reader_close(re);
	CHECK(cs_store_remove(s, f, err) == 0, "%s", err);

	/* trim to nothing */
	rc = cs_store_trim(s, 0, &evicted, err);
	CHECK_RC(rc, err);
	CHECK(evicted == 3 && cs_store_disk_used(s) == 0, "trim left %llu bytes",
	      (unsigned long long)cs_store_disk_used(s));
	CHECK(count_files(dir) == 0, "files of evicted contexts left");
	cs_store_close(s);
	rc = cst_open(&s, dir, m, NULL);
	CHECK(rc == 0, "reopen");
	CHECK(!present(s, a) && !present(s, c) && !present(s, e), "evicted context came back");
	cs_store_close(s);
	cst_rmrf(dir);
	free(dir);
	printf("budget: ok\n");
	return 0;
}
