/*
 * cache_store_stream: a streaming (one-pass) reader leaves the page cache as it found it.
 * A plain reader's pass over a context fills the cache with its pages; a streaming reader's
 * pass over another context adds nothing, returns the same bytes, and does not evict the
 * pages the plain reader left (white-box: it looks at the cache through cs_internal.h).
 */
#include "cache_store_common.h"
#include "cs_internal.h"

#include <string.h>

#define W 16
#define PT 32
#define N 2000
#define DT CS_DTYPE_F16

static uint64_t make_ctx(cs_store *s, uint64_t seed)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_params cp = { .model_id = 7, .dtype = DT, .width = W, .page_tokens = PT };
	cs_writer *w;
	CHECK(cs_writer_begin(s, &cp, &w, err) == 0, "%s", err);
	cst_append(w, DT, W, seed, 0, N, seed);
	CHECK(cs_writer_commit(w, NULL, 0, CS_COMMIT_SEAL, err) == 0, "%s", err);
	uint64_t serial = cs_writer_serial(w);
	cs_writer_free(w);
	return serial;
}

/* Reads every token through r and checks it against the generator. */
static void read_all(cs_reader *r, uint64_t seed)
{
	static uint16_t rows[N * W], want[N * W];
	static uint32_t tok[N], wtok[N];
	char err[CS_ERR_LEN] = "";
	for (uint64_t t = 0; t < N; t += 100)
		CHECK(cs_reader_read(r, t, 100, rows + t * W, tok + t, err) == 0, "%s", err);
	cst_rows(DT, W, seed, 0, N, want);
	cst_tokens(seed, 0, N, wtok);
	CHECK(!memcmp(rows, want, sizeof(rows)) && !memcmp(tok, wtok, sizeof(tok)),
	      "rows or tokens differ");
}

int main(void)
{
	char err[CS_ERR_LEN] = "", *dir = cst_tmpdir("cs_stream");
	cs_store *s;
	int rc = cst_open(&s, dir, &cst_modes[0], NULL);
	if (rc == 77)
		rc = cst_open(&s, dir, &cst_modes[3], NULL);
	CHECK(rc == 0, "open");
	uint64_t a = make_ctx(s, 1), b = make_ctx(s, 2);
	cs_reader *r;

	CHECK(cs_reader_open(s, a, &r, err) == 0, "%s", err);
	read_all(r, 1);
	cs_reader_close(r);
	const uint64_t after_plain = s->cache.bytes;
	const size_t entries_plain = s->cache.n_entries;
	CHECK(after_plain > 0, "a plain reader's pages are cached");

	CHECK(cs_reader_open(s, b, &r, err) == 0, "%s", err);
	cs_reader_set_streaming(r, true);
	read_all(r, 2);
	read_all(r, 2); /* twice: still right when nothing is cached */
	cs_reader_close(r);
	/* read-ahead of the last pages may still sit unreferenced; nothing else */
	CHECK(s->cache.n_entries <= entries_plain + 8,
	      "streaming left %zu entries (plain pass: %zu)", s->cache.n_entries, entries_plain);

	/* the plain reader's pages are all still there: a second plain pass adds nothing */
	CHECK(cs_reader_open(s, a, &r, err) == 0, "%s", err);
	const size_t before = s->cache.n_entries;
	read_all(r, 1);
	cs_reader_close(r);
	CHECK(s->cache.n_entries == before, "the plain reader's pages were evicted (%zu -> %zu)",
	      before, s->cache.n_entries);
	cs_store_close(s);
	cst_rmrf(dir);
	free(dir);
	printf("PASS\n");
	return 0;
}
