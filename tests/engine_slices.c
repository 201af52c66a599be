/*
 * engine_slices — a question without a context, and a question fed in slices.
 *
 *   engine_slices MODEL.gguf TMP_DIR
 *
 * Chunks of 100 tokens, pages of 100, the tier on. With P = 730 random tokens:
 *   - a session over no context (GFE_NO_CONTEXT) prefilled with P gives the logits an
 *     ingest of P gives for its last token, bit for bit (both start from the model's
 *     initial state and run the same chunks and the same GOLD tail);
 *   - on no context and on an ingested context of 500 tokens, P prefilled at once and P fed
 *     in slices of 100, 200 and 300 tokens (gfe_session_feed) then the rest prefilled give
 *     the same logits bit for bit, and so do D decode steps after them;
 *   - a slice that is not whole chunks is refused.
 * Exit 0 pass, 1 fail.
 */
#include "engine.h"

#include <errno.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define P 730
#define CTX 500
#define CHUNK 100
#define D 3

static int failures;

static void check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "FAIL: %s\n", what);
		failures++;
	}
}

/* Logits of prefill (in slices of `slice` tokens first, 0: at once) and D steps after. */
static int ask(gfe_engine *e, uint64_t serial, const int32_t *q, size_t n, size_t slice,
	       float *out /* [(D + 1) * V] */, char *err)
{
	const int V = gfe_model(e)->cfg.vocab_size;
	gfe_session *s = NULL;
	size_t done = 0;
	int rc = gfe_session_open(e, serial, &s, err);
	if (rc)
		return rc;
	while (slice && n - done > slice) {
		if ((rc = gfe_session_feed(s, q + done, slice, err)))
			goto out;
		done += slice;
	}
	if ((rc = gfe_session_prefill(s, q + done, n - done, out, err)))
		goto out;
	for (int i = 0; i < D; i++)
		if ((rc = gfe_session_step(s, (int32_t)(i * 7 + 3), out + (size_t)(i + 1) * V, err)))
			goto out;
out:
	gfe_session_free(s);
	return rc;
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN] = "";
	gfe_engine *e = NULL;
	gfe_ingest *in = NULL;
	gfe_context ctx;
	if (argc != 3) {
		fprintf(stderr, "usage: engine_slices MODEL.gguf TMP_DIR\n");
		return 2;
	}
	gfe_config cfg;
	gfe_config_defaults(&cfg);
	cfg.model_path = argv[1];
	cfg.cache_dir = argv[2];
	cfg.chunk = CHUNK;
	cfg.page_tokens = 100;
	if (gfe_open(&e, &cfg, err)) {
		fprintf(stderr, "open: %s\n", err);
		return 1;
	}
	const int V = gfe_model(e)->cfg.vocab_size;
	int32_t q[P], cx[CTX];
	srand(5);
	for (int i = 0; i < P; i++)
		q[i] = 1 + rand() % (V - 1);
	for (int i = 0; i < CTX; i++)
		cx[i] = 1 + rand() % (V - 1);
	const size_t lsz = (size_t)(D + 1) * V;
	float *ing = malloc(sizeof(float) * (size_t)V), *a = malloc(sizeof(float) * lsz),
	      *b = malloc(sizeof(float) * lsz);
	if (!ing || !a || !b)
		return 1;

	/* No context against an ingest of the same tokens. */
	if (gfe_ingest_begin(e, NULL, &in, err) || gfe_ingest_tokens(in, q, P, err) ||
	    gfe_ingest_finish(in, &ctx, ing, err)) {
		fprintf(stderr, "ingest: %s\n", err);
		return 1;
	}
	gfe_ingest_free(in);
	in = NULL;
	if (ask(e, GFE_NO_CONTEXT, q, P, 0, a, err)) {
		fprintf(stderr, "no context: %s\n", err);
		return 1;
	}
	check(!memcmp(a, ing, sizeof(float) * (size_t)V),
	      "no context: the prefill's logits differ from the ingest's of the same tokens");

	/* A stored context for the sliced questions. */
	if (gfe_ingest_begin(e, "cx", &in, err) || gfe_ingest_tokens(in, cx, CTX, err) ||
	    gfe_ingest_finish(in, &ctx, NULL, err)) {
		fprintf(stderr, "ingest: %s\n", err);
		return 1;
	}
	gfe_ingest_free(in);
	const uint64_t serials[2] = { GFE_NO_CONTEXT, ctx.serial };
	for (int k = 0; k < 2; k++) {
		if (ask(e, serials[k], q, P, 0, a, err)) {
			fprintf(stderr, "prefill: %s\n", err);
			return 1;
		}
		for (size_t slice = CHUNK; slice <= 3 * CHUNK; slice += CHUNK) {
			if (ask(e, serials[k], q, P, slice, b, err)) {
				fprintf(stderr, "slices of %zu: %s\n", slice, err);
				return 1;
			}
			char what[120];
			snprintf(what, sizeof(what), "%s: slices of %zu change the logits",
				 k ? "context" : "no context", slice);
			check(!memcmp(a, b, sizeof(float) * lsz), what);
		}
	}

	gfe_session *s = NULL;
	if (gfe_session_open(e, ctx.serial, &s, err)) {
		fprintf(stderr, "open: %s\n", err);
		return 1;
	}
	check(gfe_session_chunk(s) == CHUNK, "gfe_session_chunk is not the engine's chunk");
	check(gfe_session_feed(s, q, CHUNK + 1, err) == -EINVAL, "a partial chunk fed was accepted");
	gfe_session_free(s);
	free(ing);
	free(a);
	free(b);
	gfe_close(e);
	if (failures)
		return 1;
	printf("ok: no context equals an ingest; slices of whole chunks change no bit\n");
	return 0;
}
