/*
 * cache_store_concurrent: two writer threads append to and checkpoint their contexts while
 * reader threads open snapshots of them again and again and check every byte, through a
 * page cache far smaller than the data (so pages are evicted while others are pinned), and
 * pass page views between threads.
 */
#include "cache_store_common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define N_WRITERS 2
#define N_READERS 3
#define TOKENS 3000
#define W 12
#define PT 32
#define DT CS_DTYPE_F16

struct shared {
	cs_store *s;
	uint64_t serial[N_WRITERS];
	cs_writer *w[N_WRITERS];
	atomic_int writers_left;
	atomic_ulong snapshots;
	/* a page handed from reader to reader, released by whoever takes it */
	pthread_mutex_t mu;
	const cs_page *parked;
};

static void *writer_main(void *arg)
{
	struct shared *sh = ((void **)arg)[0];
	int k = (int)(intptr_t)((void **)arg)[1];
	char err[CS_ERR_LEN] = "";
	uint64_t seed = 500 + (uint64_t)k, at = cs_writer_tokens(sh->w[k]);
	uint8_t blob[3000];

	while (at < TOKENS) {
		uint64_t to = at + 150 + cst_mix(at) % 100;
		size_t bl;
		int rc;

		if (to > TOKENS)
			to = TOKENS;
		cst_append(sh->w[k], DT, W, seed, at, to, at);
		at = to;
		bl = cst_blob_len(seed, at);
		cst_blob(seed, at, blob, bl);
		rc = cs_writer_commit(sh->w[k], blob, bl, at == TOKENS ? CS_COMMIT_SEAL : 0, err);
		CHECK_RC(rc, err);
	}
	atomic_fetch_sub(&sh->writers_left, 1);
	return NULL;
}

static void *reader_main(void *arg)
{
	struct shared *sh = arg;
	uint64_t last[N_WRITERS] = { 0 };
	uint16_t *rows = malloc(TOKENS * W * 2), *want = malloc(TOKENS * W * 2);
	uint32_t *tok = malloc(TOKENS * 4), *wtok = malloc(TOKENS * 4);
	char err[CS_ERR_LEN] = "";
	int round = 0;

	CHECK(rows && want && tok && wtok, "oom");
	for (;;) {
		bool final = atomic_load(&sh->writers_left) == 0;

		for (int k = 0; k < N_WRITERS; k++) {
			cs_reader *r;
			cs_ctx_info info;
			uint64_t n, seed = 500 + (uint64_t)k;
			void *blob;
			size_t len;
			int rc = cs_reader_open(sh->s, sh->serial[k], &r, err);

			CHECK_RC(rc, err);
			cs_reader_info(r, &info);
			n = info.n_tokens;
			CHECK(n >= last[k], "snapshot went back from %llu to %llu",
			      (unsigned long long)last[k], (unsigned long long)n);
			last[k] = n;
			/* whole snapshot, in page order (read-ahead) */
			rc = cs_reader_read(r, 0, n, rows, tok, err);
			CHECK_RC(rc, err);
			cst_rows(DT, W, seed, 0, n, want);
			cst_tokens(seed, 0, n, wtok);
			CHECK(!memcmp(rows, want, n * W * 2) && !memcmp(tok, wtok, n * 4),
			      "snapshot of %llu tokens differs", (unsigned long long)n);
			rc = cs_reader_blob(r, &blob, &len, err);
			CHECK_RC(rc, err);
			CHECK(len == cst_blob_len(seed, n), "blob of the snapshot");
			free(blob);
			/* swap a pinned page with another thread */
			if (info.n_pages) {
				const cs_page *p, *old;

				rc = cs_reader_page(r, (uint64_t)round % info.n_pages, &p, err);
				CHECK_RC(rc, err);
				pthread_mutex_lock(&sh->mu);
				old = sh->parked;
				sh->parked = p;
				pthread_mutex_unlock(&sh->mu);
				cs_page_release(old);
			}
			cs_reader_close(r);
			atomic_fetch_add(&sh->snapshots, 1);
		}
		round++;
		if (final)
			break;
	}
	for (int k = 0; k < N_WRITERS; k++)
		CHECK(last[k] == TOKENS, "final snapshot has %llu tokens", (unsigned long long)last[k]);
	free(rows);
	free(want);
	free(tok);
	free(wtok);
	return NULL;
}

static int run_mode(const cst_mode *m)
{
	char err[CS_ERR_LEN] = "", *dir = cst_tmpdir("cs_concurrent");
	struct shared sh = { 0 };
	pthread_t wt[N_WRITERS], rt[N_READERS];
	void *wargs[N_WRITERS][2];
	cs_config cfg;
	int rc;

	cst_config(&cfg, m);
	cfg.ram_cache_bytes = 16 * PT * W * 2;   /* ~16 pages for 190 */
	cfg.readahead_pages = 4;
	rc = cst_open(&sh.s, dir, m, &cfg);
	if (rc == 77) {
		cst_rmrf(dir);
		free(dir);
		return 77;
	}
	pthread_mutex_init(&sh.mu, NULL);
	for (int k = 0; k < N_WRITERS; k++) {
		cs_ctx_params cp = { .model_id = 3, .dtype = DT, .width = W, .page_tokens = PT };

		rc = cs_writer_begin(sh.s, &cp, &sh.w[k], err);
		CHECK_RC(rc, err);
		sh.serial[k] = cs_writer_serial(sh.w[k]);
		{
			uint8_t blob[3000];
			size_t bl = cst_blob_len(500 + (uint64_t)k, 0);

			cst_blob(500 + (uint64_t)k, 0, blob, bl);
			rc = cs_writer_commit(sh.w[k], blob, bl, 0, err);   /* visible, empty */
		}
		CHECK_RC(rc, err);
	}
	atomic_store(&sh.writers_left, N_WRITERS);
	for (int k = 0; k < N_WRITERS; k++) {
		wargs[k][0] = &sh;
		wargs[k][1] = (void *)(intptr_t)k;
		CHECK(!pthread_create(&wt[k], NULL, writer_main, wargs[k]), "thread");
	}
	for (int k = 0; k < N_READERS; k++)
		CHECK(!pthread_create(&rt[k], NULL, reader_main, &sh), "thread");
	for (int k = 0; k < N_WRITERS; k++)
		pthread_join(wt[k], NULL);
	for (int k = 0; k < N_READERS; k++)
		pthread_join(rt[k], NULL);
	cs_page_release(sh.parked);
	for (int k = 0; k < N_WRITERS; k++)
		cs_writer_free(sh.w[k]);
	printf("%s: %lu snapshots read while writing\n", m->name,
	       (unsigned long)atomic_load(&sh.snapshots));
	for (int k = 0; k < N_WRITERS; k++)
		cst_check_ctx(sh.s, sh.serial[k], 500 + (uint64_t)k, TOKENS, true);
	cs_store_close(sh.s);
	pthread_mutex_destroy(&sh.mu);
	cst_rmrf(dir);
	free(dir);
	return 0;
}

int main(void)
{
	int ran = 0;

	ran += run_mode(&cst_modes[0]) == 0;
	ran += run_mode(&cst_modes[3]) == 0;
	if (!ran)
		return 77;
	return 0;
}
