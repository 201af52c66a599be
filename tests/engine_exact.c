/*
 * engine_exact — the paged path against ../shared/testdata, through real files on disk.
 *
 *   engine_exact MODEL.gguf CASE_DIR TMP_DIR
 *
 * With c stored as float32, small pages and chunks and frequent checkpoints (so every path
 * crosses page, chunk and checkpoint boundaries), and the expanded tier off and on:
 *   - ingest tokens[0:P], finish: the last logits equal the reference logits[P-1];
 *   - a session decodes tokens P..T-1 one at a time: decode_logits;
 *   - a session asks tokens P..T-1 as one question: logits[T-1] (context + question);
 *   - the stored context is unchanged by the sessions (same tokens and key after).
 * Tolerance: max|diff| <= 2e-5 max|ref| (../shared/testdata/README.md). Exit 0 pass, 1 fail.
 */
#include "engine.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 2e-5

static int failures;

static void check(const char *what, const float *out, const float *ref, size_t n)
{
	double maxref = 0, maxdiff = 0;
	for (size_t i = 0; i < n; i++) {
		maxref = fabs(ref[i]) > maxref ? fabs(ref[i]) : maxref;
		double d = fabs((double)out[i] - ref[i]);
		maxdiff = isnan(d) ? INFINITY : (d > maxdiff ? d : maxdiff);
	}
	double rel = maxdiff / maxref;
	printf("  %-44s %.3e %s\n", what, rel, rel <= TOL ? "ok" : "FAIL");
	failures += !(rel <= TOL);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: engine_exact MODEL.gguf CASE_DIR TMP_DIR\n");
		return 1;
	}
	char err[GF_ERR_LEN], what[128];
	size_t len;
	int32_t *tok = test_slurp(argv[2], "tokens.i32", &len);
	const int T = (int)(len / 4);
	float *ref = test_slurp(argv[2], "logits.f32", &len);
	const int V = (int)(len / 4 / (size_t)T);
	float *ref_dec = test_slurp(argv[2], "decode_logits.f32", &len);
	const int P = T - (int)(len / 4 / (size_t)V);
	float *row = malloc(sizeof(float) * V);
	float *dec = malloc(sizeof(float) * (size_t)(T - P) * V);

	for (int tier = 0; tier < 2; tier++) {
		char dir[1024];
		snprintf(dir, sizeof(dir), "%s/store%d", argv[3], tier);
		gfe_config cfg;
		gfe_config_defaults(&cfg);
		cfg.model_path = argv[1];
		cfg.cache_dir = dir;
		cfg.chunk = 16;
		cfg.page_tokens = 7;          /* pages and key blocks never line up */
		cfg.c_dtype = CS_DTYPE_F32;   /* exactness: the references are float32 */
		cfg.checkpoint_tokens = 32;
		cfg.tier_bytes = tier ? (64u << 20) : 0;
		cfg.kv_dtype = GF_DTYPE_F32;  /* the references' keys and values are floats too */
		gfe_engine *e;
		if (gfe_open(&e, &cfg, err)) {
			fprintf(stderr, "open: %s\n", err);
			return 1;
		}
		printf("tier %s\n", tier ? "on" : "off");
		gfe_ingest *in;
		gfe_context ctx;
		if (gfe_ingest_begin(e, "case", &in, err) || gfe_ingest_tokens(in, tok, 5, err) ||
		    gfe_ingest_tokens(in, tok + 5, (size_t)P - 5, err) ||
		    gfe_ingest_finish(in, &ctx, row, err)) {
			fprintf(stderr, "ingest: %s\n", err);
			return 1;
		}
		gfe_ingest_free(in);
		check("ingest P tokens: last logits", row, ref + (size_t)(P - 1) * V, (size_t)V);

		/* Twice, so the second session finds the tier filled by the first. */
		for (int pass = 0; pass < 2; pass++) {
			gfe_session *s;
			if (gfe_session_open(e, ctx.serial, &s, err)) {
				fprintf(stderr, "session: %s\n", err);
				return 1;
			}
			for (int t = P; t < T; t++)
				if (gfe_session_step(s, tok[t], dec + (size_t)(t - P) * V, err)) {
					fprintf(stderr, "step: %s\n", err);
					return 1;
				}
			gfe_session_free(s);
			snprintf(what, sizeof(what), "session decode, pass %d", pass);
			check(what, dec, ref_dec, (size_t)(T - P) * V);

			if (gfe_session_open(e, ctx.serial, &s, err) ||
			    gfe_session_prefill(s, tok + P, (size_t)(T - P), row, err)) {
				fprintf(stderr, "question: %s\n", err);
				return 1;
			}
			gfe_session_free(s);
			snprintf(what, sizeof(what), "context + question, pass %d", pass);
			check(what, row, ref + (size_t)(T - 1) * V, (size_t)V);
		}
		cs_ctx_info info;
		if (cs_store_info(gfe_store(e), ctx.serial, &info, err) || info.n_tokens != (uint64_t)P ||
		    !info.sealed) {
			printf("  stored context changed  FAIL\n");
			failures++;
		}
		gfe_tier_stats ts;
		gfe_tier_stats_get(e, &ts);
		printf("  tier: %llu hits, %llu misses, %llu blocks\n", (unsigned long long)ts.hits,
		       (unsigned long long)ts.misses, (unsigned long long)ts.blocks);
		gfe_close(e);
	}
	free(tok), free(ref), free(ref_dec), free(row), free(dec);
	printf("%s\n", failures ? "FAIL" : "PASS");
	return failures ? 1 : 0;
}
