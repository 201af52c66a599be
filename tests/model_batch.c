/*
 * model_batch — a batched decode step gives every sequence the bits of its step alone.
 *
 *   model_batch MODEL.gguf
 *
 * Sequences with prompts of different lengths (within one key block, across blocks, from one
 * token) are first decoded alone with gf_decode_step; every logit is the reference. Then the
 * same sequences are decoded with gf_decode_batch under a cap of 1, 2, 3, 7 and 16 rows,
 * sequences joining as rows free up and leaving when their tokens run out, in an order that
 * rotates from step to step, on workspaces of 1 and 2 threads: every logit must be the same
 * bits (memcmp). GOLDFINCH_ISA and GOLDFINCH_COMPUTE pick the kernels and the compute mode as
 * for every test. Refused batches (a state twice, a token outside the vocabulary) advance
 * nothing. Exit 0 pass, 1 fail.
 */
#include "goldfinch.h"
#include "test_util.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define SEQS 19 /* more than the largest cap: some wait for a row */
#define MAX_STEPS 12

struct seq {
	int prompt, steps, start; /* prompt tokens, decode steps, first global step it may join */
	int32_t *tok;             /* [prompt + steps] */
	float *ref;               /* [steps][V] */
	gf_state st0;             /* after the prompt, and its kv: every run starts from them */
	gf_kv kv0;
	gf_state st;
	gf_kv kv;
	int done;                 /* decode steps taken in the batched run */
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t draw(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng >> 33);
}

/* A copy of src into dst (no kv copy in the API; the fields are gf_kv's). */
static int kv_copy(const gf_config *c, gf_kv *dst, const gf_kv *src)
{
	const size_t cap = (size_t)src->cap, Ck = (size_t)c->ckv_dim;
	const size_t kvf = (size_t)src->n_gold * (cap / GF_KV_BLOCK) * src->block_floats;
	*dst = *src;
	dst->c = malloc(sizeof(float) * (cap * Ck + 1));
	dst->tok = malloc(sizeof(int32_t) * (cap + 1));
	dst->k = malloc(sizeof(float) * (kvf + 1));
	dst->v = malloc(sizeof(float) * (kvf + 1));
	if (!dst->c || !dst->tok || !dst->k || !dst->v)
		return -ENOMEM;
	if (cap) {
		memcpy(dst->c, src->c, sizeof(float) * cap * Ck);
		memcpy(dst->tok, src->tok, sizeof(int32_t) * cap);
		memcpy(dst->k, src->k, sizeof(float) * kvf);
		memcpy(dst->v, src->v, sizeof(float) * kvf);
	}
	return 0;
}

/* The sequence back at the end of its prompt. */
static int start_seq(const gf_model *m, struct seq *q)
{
	gf_state_free(&q->st);
	gf_kv_free(&q->kv);
	if (gf_state_init(&q->st, &m->cfg) || gf_state_copy(&q->st, &q->st0, &m->cfg))
		return -ENOMEM;
	return kv_copy(&m->cfg, &q->kv, &q->kv0);
}

/* The sequences decoded with rows capped at cap, on ws; returns the failures found. */
static int run_batched(const gf_model *m, gf_workspace *ws, struct seq *sq, int cap, int threads)
{
	const int V = m->cfg.vocab_size;
	float *logits = malloc(sizeof(float) * (size_t)V * (cap > 1 ? cap : 1));
	gf_state *st[SEQS];
	gf_kv *kv[SEQS];
	int32_t tok[SEQS];
	int row_seq[SEQS], active[SEQS], n_active = 0, fails = 0;
	for (int i = 0; i < SEQS; i++) {
		sq[i].done = 0;
		if (start_seq(m, &sq[i])) {
			fprintf(stderr, "prefill of sequence %d failed\n", i);
			return 1;
		}
	}
	int next = 0; /* sequences join in index order, once their start step has come */
	for (int step = 0; n_active || next < SEQS; step++) {
		while (n_active < cap && next < SEQS && sq[next].start <= step)
			active[n_active++] = next++;
		if (!n_active)
			continue;
		/* Rows in an order that rotates, so a sequence sits in different rows. */
		for (int r = 0; r < n_active; r++) {
			const int i = active[(r + step) % n_active];
			row_seq[r] = i;
			st[r] = &sq[i].st;
			kv[r] = &sq[i].kv;
			tok[r] = sq[i].tok[sq[i].prompt + sq[i].done];
		}
		int rc = gf_decode_batch(m, ws, st, kv, tok, n_active, logits);
		CHECK(!rc, "cap %d threads %d step %d: gf_decode_batch returned %d", cap, threads, step, rc);
		if (rc)
			return fails + 1;
		for (int r = 0; r < n_active; r++) {
			struct seq *q = &sq[row_seq[r]];
			if (memcmp(logits + (size_t)r * V, q->ref + (size_t)q->done * V,
				   sizeof(float) * (size_t)V)) {
				if (fails++ < 5)
					fprintf(stderr, "FAIL cap %d threads %d: sequence %d (prompt %d) step %d in row %d of %d differs from its step alone\n",
						cap, threads, row_seq[r], q->prompt, q->done, r, n_active);
				test_failures++;
			}
			q->done++;
		}
		/* Finished sequences leave; the rest keep their order. */
		int k = 0;
		for (int a = 0; a < n_active; a++)
			if (sq[active[a]].done < sq[active[a]].steps)
				active[k++] = active[a];
		n_active = k;
	}
	free(logits);
	return fails;
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN];
	gf_model *m = NULL;
	if (argc != 2) {
		fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
		return 1;
	}
	if (gf_model_load(&m, argv[1], err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	const int V = m->cfg.vocab_size;
	const int W = gf_config_tail_window(&m->cfg);
	gf_workspace *ws[2] = { NULL, NULL };
	const int chunk = W > 64 ? W : 64;
	if (gf_workspace_init_threads(&ws[0], m, chunk, 1) ||
	    gf_workspace_init_threads(&ws[1], m, chunk, 2)) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	printf("model %s: kernels %s, compute %s\n", argv[1], gf_model_isa_name(m),
	       gf_compute_name(m->compute));

	/* Prompts: one token, short, just under and over a key block, a few blocks. */
	static const int prompts[] = { 1, 5, 17, 250, 255, 256, 257, 300, 600, 2, 40, 45, 3, 90,
				       129, 7, 254, 31, 66 };
	struct seq sq[SEQS];
	memset(sq, 0, sizeof(sq));
	float *scratch = malloc(sizeof(float) * (size_t)V);
	for (int i = 0; i < SEQS; i++) {
		struct seq *q = &sq[i];
		q->prompt = prompts[i];
		q->steps = 1 + (int)(draw() % MAX_STEPS);
		q->start = (int)(draw() % 6);
		q->tok = malloc(sizeof(int32_t) * (size_t)(q->prompt + q->steps));
		q->ref = malloc(sizeof(float) * (size_t)V * q->steps);
		for (int t = 0; t < q->prompt + q->steps; t++)
			q->tok[t] = (int32_t)(draw() % (uint32_t)V);
		/* The reference: alone, one step at a time, on the one-thread workspace. */
		int rc = gf_state_init(&q->st0, &m->cfg) || gf_kv_init(&q->kv0, &m->cfg, 0) ? -ENOMEM :
			 gf_prefill(m, ws[0], &q->st0, &q->kv0, q->tok, q->prompt, scratch);
		if (!rc)
			rc = start_seq(m, q);
		for (int t = 0; t < q->steps && !rc; t++)
			rc = gf_decode_step(m, ws[0], &q->st, &q->kv, q->tok[q->prompt + t],
					    q->ref + (size_t)t * V);
		if (rc) {
			fprintf(stderr, "sequence %d alone: rc %d\n", i, rc);
			return 1;
		}
	}

	static const int caps[] = { 1, 2, 3, 7, 16 };
	for (int t = 0; t < 2; t++)
		for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++)
			run_batched(m, ws[t], sq, caps[c], t + 1);

	/* Refused batches move nothing. */
	{
		gf_state *st[2] = { &sq[0].st, &sq[0].st };
		gf_kv *kv[2] = { &sq[0].kv, &sq[0].kv };
		int32_t tok[2] = { 1, 2 };
		const int64_t n0 = sq[0].st.n_pos;
		CHECK(gf_decode_batch(m, ws[0], st, kv, tok, 2, scratch) == -EINVAL,
		      "a state given twice is not refused");
		st[1] = &sq[1].st;
		kv[1] = &sq[1].kv;
		tok[1] = V;
		CHECK(gf_decode_batch(m, ws[0], st, kv, tok, 2, scratch) == -EINVAL,
		      "a token outside the vocabulary is not refused");
		CHECK(sq[0].st.n_pos == n0 && sq[0].kv.n_pos == n0, "a refused batch advanced");
		CHECK(gf_decode_batch(m, ws[0], st, kv, tok, chunk + 1, scratch) == -EINVAL,
		      "a batch over the workspace's rows is not refused");
	}

	for (int i = 0; i < SEQS; i++) {
		free(sq[i].tok);
		free(sq[i].ref);
		gf_state_free(&sq[i].st);
		gf_kv_free(&sq[i].kv);
		gf_state_free(&sq[i].st0);
		gf_kv_free(&sq[i].kv0);
	}
	free(scratch);
	gf_workspace_free(ws[0]);
	gf_workspace_free(ws[1]);
	gf_model_free(m);
	printf("%d sequences, caps 1 2 3 7 16, threads 1 and 2: %s\n", SEQS,
	       test_failures ? "FAIL" : "ok");
	return test_failures != 0;
}
