/*
 * cache_store_branch: copy-on-write branches in RAM. A branch reads the base's pages, copies
 * the base's partial last page on its first append, extends it, adds pages of its own; the
 * stored context never changes; two branches of one base are independent. A branch over no
 * context (cs_branch_init_empty) holds its own pages from token 0.
 */
#include "cache_store_common.h"

#include <errno.h>
#include <string.h>

#define W 3
#define PT 8
#define DT CS_DTYPE_BF16

/* Branch content must be base tokens [0, nb) of seed sb, then [nb, n) of seed sx. */
static void check_branch(cs_branch *b, uint64_t sb, uint64_t nb, uint64_t sx, uint64_t n)
{
	char err[CS_ERR_LEN] = "";
	uint16_t rows[200 * W], want[200 * W];
	uint32_t tok[200], wtok[200];
	int rc;

	CHECK(n <= 200 && cs_branch_tokens(b) == n, "branch has %llu tokens",
	      (unsigned long long)cs_branch_tokens(b));
	cst_rows(DT, W, sb, 0, nb, want);
	cst_tokens(sb, 0, nb, wtok);
	/* the branch's tokens are generated as if they continued at position nb */
	cst_rows(DT, W, sx, nb, n - nb, want + nb * W);
	cst_tokens(sx, nb, n - nb, wtok + nb);
	rc = cs_branch_read(b, 0, n, rows, tok, err);
	CHECK_RC(rc, err);
	CHECK(!memcmp(rows, want, n * W * 2) && !memcmp(tok, wtok, n * 4), "branch content");
	for (uint64_t p = 0; p * PT < n; p++) {
		const cs_page *pg;

		rc = cs_branch_page(b, p, &pg, err);
		CHECK_RC(rc, err);
		CHECK(pg->index == p && pg->first_token == p * PT &&
		      pg->n_tokens == (n - p * PT < PT ? n - p * PT : PT), "branch page %llu shape",
		      (unsigned long long)p);
		CHECK(!memcmp(pg->rows, want + p * PT * W, pg->n_tokens * W * 2), "branch page rows");
		cs_page_release(pg);
	}
	CHECK(cs_branch_read(b, n - 1, 2, rows, tok, err) == -EINVAL, "read past the branch");
}

static void grow(cs_branch *b, uint64_t seed, uint64_t from, uint64_t to)
{
	char err[CS_ERR_LEN] = "";
	uint16_t rows[200 * W];
	uint32_t tok[200];

	cst_rows(DT, W, seed, from, to - from, rows);
	cst_tokens(seed, from, to - from, tok);
	/* in two pieces, to cross page ends at odd places */
	CHECK(cs_branch_append(b, rows, tok, (to - from) / 2, err) == 0, "%s", err);
	CHECK(cs_branch_append(b, rows + (to - from) / 2 * W, tok + (to - from) / 2,
			       to - from - (to - from) / 2, err) == 0, "%s", err);
}

int main(void)
{
	char err[CS_ERR_LEN] = "", *dir = cst_tmpdir("cs_branch");
	static const uint64_t base_lens[] = { 27, 32, 5 };
	cs_store *s;
	int rc = cst_open(&s, dir, &cst_modes[0], NULL);

	if (rc == 77)
		rc = cst_open(&s, dir, &cst_modes[3], NULL);
	CHECK(rc == 0, "open");
	for (size_t k = 0; k < 3; k++) {
		uint64_t nb = base_lens[k], seed = 100 + k;
		cs_ctx_params cp = { .model_id = 1, .dtype = DT, .width = W, .page_tokens = PT };
		cs_writer *w;
		cs_reader *r;
		cs_branch *b1, *b2;
		uint64_t serial;
		const cs_page *held;

		rc = cs_writer_begin(s, &cp, &w, err);
		CHECK_RC(rc, err);
		serial = cs_writer_serial(w);
		cst_append(w, DT, W, seed, 0, nb, 1);
		rc = cs_writer_commit(w, NULL, 0, CS_COMMIT_SEAL, err);
		CHECK_RC(rc, err);
		cs_writer_free(w);

		rc = cs_reader_open(s, serial, &r, err);
		CHECK_RC(rc, err);
		CHECK(cs_branch_init(&b1, r, err) == 0 && cs_branch_init(&b2, r, err) == 0, "%s", err);
		check_branch(b1, seed, nb, 0, nb);          /* nothing appended: the base */
		/* a view of the branch's first own page, taken early, must not change */
		grow(b1, 900, nb, nb + 3);
		rc = cs_branch_page(b1, nb / PT, &held, err);
		CHECK_RC(rc, err);
		{
			uint32_t n0 = held->n_tokens;
			uint16_t copy[PT * W];

			memcpy(copy, held->rows, (size_t)n0 * W * 2);
			grow(b1, 900, nb + 3, nb + 61);
			grow(b2, 901, nb, nb + 17);
			CHECK(!memcmp(copy, held->rows, (size_t)n0 * W * 2), "held branch rows moved");
		}
		cs_page_release(held);
		check_branch(b1, seed, nb, 900, nb + 61);
		check_branch(b2, seed, nb, 901, nb + 17);
		cs_branch_free(b1);
		cs_branch_free(b2);
		cs_reader_close(r);
		/* the stored context is exactly what was committed */
		cst_check_ctx(s, serial, seed, nb, false);
		{
			cs_verify_report rep;

			rc = cs_store_verify(s, serial, &rep, err);
			CHECK_RC(rc, err);
		}
	}
	{
		/* Over no context: every page its own, the same reads as over an empty base. */
		cs_branch *b;
		const cs_page *pg;

		CHECK(cs_branch_init_empty(&b, 0, W, DT, err) == -EINVAL, "a branch of 0-token pages");
		CHECK(cs_branch_init_empty(&b, PT, W, DT, err) == 0, "%s", err);
		CHECK(cs_branch_page(b, 0, &pg, err) == -EINVAL, "a page of an empty branch");
		grow(b, 902, 0, 45);
		check_branch(b, 0, 0, 902, 45);
		CHECK(cs_branch_page(b, 6, &pg, err) == -EINVAL && strstr(err, "(none)"),
		      "a page past the branch: %s", err);
		cs_branch_free(b);
	}
	cs_store_close(s);
	cst_rmrf(dir);
	free(dir);
	printf("branch: ok\n");
	return 0;
}
