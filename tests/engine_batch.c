/*
 * engine_batch — sessions stepped together give every session the bits of its steps alone.
 *
 *   engine_batch MODEL.gguf TMP_DIR f32|bf16
 *
 * Three contexts (300, 700 and 40 tokens: full and partial key blocks) are ingested, and the
 * engine opened again on them. Sessions
 * on them, each with its own question (1 to 20 tokens) and decode tokens (one crosses a key
 * block boundary during its steps), are first run alone with gfe_session_step: every logit is
 * the reference. Then the same sessions are stepped with gfe_sessions_step under a cap of 1,
 * 2, 3, 7 and 16 sessions per step: a session is opened and asked its question when it joins
 * (between steps), and freed when its tokens run out, the rows' order rotating from step to
 * step, with an engine of 1 thread and the default tier (filled when a context's first
 * session opens; sessions on one context share its blocks) and one of 2 threads with the
 * tier off (every block rebuilt at every step): every logit must be the same bits. Keys and
 * values
 * in f32 or bf16 (the default) as the last argument. Last, a step with one session's token
 * outside the vocabulary fails that session only, which then goes on as if the step had not
 * happened. Exit 0 pass, 1 fail.
 */
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_CTX 3
#define SESSIONS 18
#define MAX_Q 20
#define MAX_STEPS 10

static int failures;
static gf_dtype kv_dtype = GF_DTYPE_BF16;

struct sess {
	int ctx, q, steps, start;
	int32_t *tok;   /* [q + steps]: the question, then the decode tokens */
	float *ref;     /* [steps][V] */
	gfe_session *s;
	int done;
};

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint32_t draw(void)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	return (uint32_t)(rng >> 11);
}

static int open_engine(const char *model, const char *dir, int threads, uint64_t tier,
		       gfe_engine **e)
{
	char err[GF_ERR_LEN];
	gfe_config cfg;
	gfe_config_defaults(&cfg);
	cfg.model_path = model;
	cfg.cache_dir = dir;
	cfg.chunk = 64;
	cfg.page_tokens = 100;
	cfg.threads = threads;
	cfg.tier_bytes = tier;
	cfg.kv_dtype = kv_dtype;
	if (gfe_open(e, &cfg, err)) {
		fprintf(stderr, "open %s: %s\n", dir, err);
		return 1;
	}
	return 0;
}

/* Opens q's session on its context and asks its question. */
static int join(gfe_engine *e, const uint64_t *serial, struct sess *q, float *logits)
{
	char err[GF_ERR_LEN];
	if (gfe_session_open(e, serial[q->ctx], &q->s, err) ||
	    gfe_session_prefill(q->s, q->tok, (size_t)q->q, logits, err)) {
		fprintf(stderr, "session on context %d: %s\n", q->ctx, err);
		return 1;
	}
	q->done = 0;
	return 0;
}

static int run_batched(gfe_engine *e, const uint64_t *serial, struct sess *sq, int cap,
		       int threads)
{
	char err[GF_ERR_LEN];
	const int V = gfe_model(e)->cfg.vocab_size;
	float *logits = malloc(sizeof(float) * (size_t)V * (size_t)cap);
	gfe_session *row[SESSIONS];
	int32_t tok[SESSIONS];
	int rcs[SESSIONS], who[SESSIONS], active[SESSIONS], n_active = 0, next = 0, shown = 0;
	for (int step = 0; n_active || next < SESSIONS; step++) {
		while (n_active < cap && next < SESSIONS && sq[next].start <= step) {
			if (join(e, serial, &sq[next], logits))
				return 1;
			active[n_active++] = next++;
		}
		if (!n_active)
			continue;
		for (int r = 0; r < n_active; r++) {
			struct sess *q = &sq[active[(r + step) % n_active]];
			who[r] = (int)(q - sq);
			row[r] = q->s;
			tok[r] = q->tok[q->q + q->done];
		}
		int rc = gfe_sessions_step(row, tok, n_active, logits, rcs, err);
		if (rc) {
			fprintf(stderr, "FAIL cap %d threads %d step %d: %s\n", cap, threads, step, err);
			failures++;
			return 1;
		}
		for (int r = 0; r < n_active; r++) {
			struct sess *q = &sq[who[r]];
			if (memcmp(logits + (size_t)r * V, q->ref + (size_t)q->done * V,
				   sizeof(float) * (size_t)V)) {
				if (shown++ < 5)
					fprintf(stderr, "FAIL cap %d threads %d: session %d (context %d, question %d) step %d in row %d of %d differs from its step alone\n",
						cap, threads, who[r], q->ctx, q->q, q->done, r, n_active);
				failures++;
			}
			q->done++;
		}
		int k = 0;
		for (int a = 0; a < n_active; a++) {
			struct sess *q = &sq[active[a]];
			if (q->done < q->steps) {
				active[k++] = active[a];
			} else {
				gfe_session_free(q->s); /* leaves between steps */
				q->s = NULL;
			}
		}
		n_active = k;
	}
	free(logits);
	return 0;
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN];
	if (argc != 4 || (strcmp(argv[3], "f32") && strcmp(argv[3], "bf16"))) {
		fprintf(stderr, "usage: engine_batch MODEL.gguf TMP_DIR f32|bf16\n");
		return 1;
	}
	kv_dtype = strcmp(argv[3], "f32") ? GF_DTYPE_BF16 : GF_DTYPE_F32;
	const char *model = argv[1], *dir = argv[2];
	gfe_engine *e;
	if (open_engine(model, dir, 1, (uint64_t)GFE_TIER_DEFAULT_MB << 20, &e))
		return 1;
	const gf_config *c = &gfe_model(e)->cfg;
	const int V = c->vocab_size;
	printf("model: %d layers (G %d), C %d, V %d; keys and values %s; compute %s\n", c->n_layer,
	       c->first_gold, c->n_embd, V, gf_dtype_name(kv_dtype),
	       gf_compute_name(gfe_model(e)->compute));

	/* The contexts. */
	static const int ctx_len[N_CTX] = { 300, 700, 40 };
	uint64_t serial[N_CTX];
	for (int i = 0; i < N_CTX; i++) {
		gfe_ingest *in;
		gfe_context ctx;
		int32_t *t = malloc(sizeof(int32_t) * (size_t)ctx_len[i]);
		for (int j = 0; j < ctx_len[i]; j++)
			t[j] = (int32_t)(draw() % (uint32_t)V);
		if (gfe_ingest_begin(e, NULL, &in, err) ||
		    gfe_ingest_tokens(in, t, (size_t)ctx_len[i], err) ||
		    gfe_ingest_finish(in, &ctx, NULL, err)) {
			fprintf(stderr, "ingest %d: %s\n", i, err);
			return 1;
		}
		serial[i] = ctx.serial;
		gfe_ingest_free(in);
		free(t);
	}

	/* The references from an engine opened on the stored contexts, as a daemon finds them:
	 * its tier is filled at the first session on each context (gfe_tier_fill), not by the
	 * ingest. */
	gfe_close(e);
	if (open_engine(model, dir, 1, (uint64_t)GFE_TIER_DEFAULT_MB << 20, &e))
		return 1;
	c = &gfe_model(e)->cfg;

	/* The sessions and their references, alone. */
	struct sess sq[SESSIONS];
	float *logits = malloc(sizeof(float) * (size_t)V);
	memset(sq, 0, sizeof(sq));
	for (int i = 0; i < SESSIONS; i++) {
		struct sess *q = &sq[i];
		q->ctx = i % N_CTX;
		q->q = 1 + (int)(draw() % MAX_Q);
		q->steps = 1 + (int)(draw() % MAX_STEPS);
		q->start = (int)(draw() % 5);
		if (i == 1) { /* 700 + 65: its steps cross into the fourth key block (768) */
			q->q = 65;
			q->steps = MAX_STEPS;
		}
		q->tok = malloc(sizeof(int32_t) * (size_t)(q->q + q->steps));
		q->ref = malloc(sizeof(float) * (size_t)V * (size_t)q->steps);
		for (int t = 0; t < q->q + q->steps; t++)
			q->tok[t] = (int32_t)(draw() % (uint32_t)V);
		if (join(e, serial, q, logits))
			return 1;
		for (int t = 0; t < q->steps; t++)
			if (gfe_session_step(q->s, q->tok[q->q + t], q->ref + (size_t)t * V, err)) {
				fprintf(stderr, "session %d alone: %s\n", i, err);
				return 1;
			}
		gfe_session_free(q->s);
		q->s = NULL;
	}

	static const int caps[] = { 1, 2, 3, 7, 16 };
	for (int threads = 1; threads <= 2; threads++) {
		if (threads == 2) {
			gfe_close(e);
			if (open_engine(model, dir, 2, 0, &e))
				return 1;
			c = &gfe_model(e)->cfg;
		}
		for (size_t k = 0; k < sizeof(caps) / sizeof(caps[0]); k++)
			if (run_batched(e, serial, sq, caps[k], threads))
				goto done;
	}

	/* One session's bad token fails it alone; it then goes on from where it was. */
	{
		gfe_session *s2[2];
		int32_t tok[2] = { V, sq[1].tok[sq[1].q] };
		int rcs[2];
		float *two = malloc(sizeof(float) * 2 * (size_t)V);
		if (join(e, serial, &sq[0], two) || join(e, serial, &sq[1], two))
			goto done;
		s2[0] = sq[0].s;
		s2[1] = sq[1].s;
		int rc = gfe_sessions_step(s2, tok, 2, two, rcs, err);
		if (rc != -EINVAL || rcs[0] != -EINVAL || rcs[1] != 0) {
			fprintf(stderr, "FAIL a bad token: rc %d, sessions %d %d\n", rc, rcs[0], rcs[1]);
			failures++;
		}
		if (memcmp(two + V, sq[1].ref, sizeof(float) * (size_t)V)) {
			fprintf(stderr, "FAIL a bad token beside it changed a session's logits\n");
			failures++;
		}
		if (gfe_session_error(sq[0].s)[0]) {
			fprintf(stderr, "FAIL a bad token failed the session for good\n");
			failures++;
		}
		tok[0] = sq[0].tok[sq[0].q];
		if (gfe_sessions_step(s2, tok, 1, two, NULL, err) ||
		    memcmp(two, sq[0].ref, sizeof(float) * (size_t)V)) {
			fprintf(stderr, "FAIL the session with the bad token did not go on as before\n");
			failures++;
		}
		gfe_session_free(sq[0].s);
		gfe_session_free(sq[1].s);
		sq[0].s = sq[1].s = NULL;
		free(two);
	}
done:
	for (int i = 0; i < SESSIONS; i++) {
		gfe_session_free(sq[i].s);
		free(sq[i].tok);
		free(sq[i].ref);
	}
	free(logits);
	gfe_close(e);
	printf("%d sessions on %d contexts, caps 1 2 3 7 16, threads 1 and 2: %s\n", SESSIONS,
	       N_CTX, failures ? "FAIL" : "ok");
	return failures != 0;
}
