/*
 * model_forward — the engine against ../shared/testdata reference vectors, by library calls.
 *
 *   model_forward CASE_DIR [CHECKPOINT]
 *
 * Checks, with the README's tolerance (max|out - ref| <= 2e-5 * max|ref| per array):
 *   full forward: logits, c (ckv), kc (kcache), Finch-stage output;
 *   linear prefill of P tokens: last logits and the state (shift and wkv separately);
 *   decode of the remaining tokens one at a time: decode_logits;
 *   prefill split in chunks of every size 1..P and continued prefills (context + question):
 *   the same last logits.
 * Exit 0 pass, 1 fail.
 */
#include "goldfinch.h"
#include "test_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 2e-5

static int failures;

/* Relative error of out against ref, reported and counted as a failure above TOL. */
static double check(const char *what, const float *out, const float *ref, size_t n)
{
	double maxref = 0, maxdiff = 0;
	for (size_t i = 0; i < n; i++) {
		if (fabs(ref[i]) > maxref)
			maxref = fabs(ref[i]);
		double d = fabs((double)out[i] - ref[i]);
		if (!(d <= maxdiff)) /* NaN counts as worst */
			maxdiff = isnan(d) ? INFINITY : d;
	}
	double rel = maxref > 0 ? maxdiff / maxref : maxdiff;
	int ok = rel <= TOL;
	printf("  %-28s max|diff|/max|ref| = %.3e  %s\n", what, rel, ok ? "ok" : "FAIL");
	if (!ok)
		failures++;
	return rel;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: model_forward CASE_DIR [CHECKPOINT]\n");
		return 1;
	}
	const char *dir = argv[1];
	char path[1024], err[GF_ERR_LEN];
	snprintf(path, sizeof(path), "%s/%s", dir, argc > 2 ? argv[2] : "model.pth");
	printf("%s\n", path);

	gf_tensor_set ts = { 0 };
	gf_config cfg;
	gf_model *m;
	if (gf_tensors_read_any(&ts, path, err) || gf_config_infer(&cfg, &ts, err) ||
	    gf_model_from_tensors(&m, &cfg, &ts, err)) {
		fprintf(stderr, "load: %s\n", err);
		return 1;
	}
	const int C = cfg.n_embd, V = cfg.vocab_size, Ck = cfg.ckv_dim, A = cfg.dim_att;
	printf("  L=%d C=%d G=%d H=%d N=%d F=%d V=%d\n", cfg.n_layer, C, cfg.first_gold, cfg.n_head,
	       cfg.head_size, cfg.dim_ffn, V);

	size_t len;
	int32_t *tok = test_slurp(dir, "tokens.i32", &len);
	const int T = (int)(len / 4);
	float *ref_logits = test_slurp(dir, "logits.f32", &len);
	float *ref_ckv = test_slurp(dir, "ckv.f32", &len);
	float *ref_kc = test_slurp(dir, "kcache.f32", &len);
	float *ref_finch = test_slurp(dir, "finch_out.f32", &len);
	float *ref_dec = test_slurp(dir, "decode_logits.f32", &len);
	const int P = T - (int)(len / sizeof(float) / (size_t)V);
	float *ref_state = test_slurp(dir, "state_after_prompt.f32", &len);

	/* Full forward. */
	float *logits = malloc(sizeof(float) * (size_t)T * V);
	float *c = malloc(sizeof(float) * (size_t)T * Ck);
	float *kc = malloc(sizeof(float) * (size_t)T * A);
	float *fo = malloc(sizeof(float) * (size_t)T * C);
	if (gf_forward_full(m, tok, T, logits, c, kc, fo, err)) {
		fprintf(stderr, "forward: %s\n", err);
		return 1;
	}
	check("full logits", logits, ref_logits, (size_t)T * V);
	check("ckv", c, ref_ckv, (size_t)T * Ck);
	check("kcache", kc, ref_kc, (size_t)T * A);
	check("finch_out", fo, ref_finch, (size_t)T * C);

	/* Linear prefill of P tokens, then decode. */
	gf_workspace *ws;
	gf_state st;
	gf_kv kv;
	const int W = gf_config_tail_window(&cfg);
	if (gf_workspace_init(&ws, m, 64 > W ? 64 : W) || gf_state_init(&st, &cfg) ||
	    gf_kv_init(&kv, &cfg, T))
		return 1;
	float *row = malloc(sizeof(float) * (size_t)V);
	float *dec = malloc(sizeof(float) * (size_t)(T - P) * V);
	if (gf_prefill(m, ws, &st, &kv, tok, P, row))
		return 1;
	check("prefill last logits", row, ref_logits + (size_t)(P - 1) * V, (size_t)V);
	const size_t nshift = (size_t)cfg.n_layer * 2 * C;
	check("state shift", st.shift, ref_state, nshift);
	check("state wkv", st.wkv, ref_state + nshift, gf_state_floats(&cfg) - nshift);
	for (int t = P; t < T; t++)
		if (gf_decode_step(m, ws, &st, &kv, tok[t], dec + (size_t)(t - P) * V))
			return 1;
	check("decode logits", dec, ref_dec, (size_t)(T - P) * V);

	/* Chunking must not matter: every chunk size from 1 to P (W at least, the tail's need). */
	double worst = 0;
	for (int chunk = W; chunk <= P; chunk++) {
		gf_workspace *w2;
		if (gf_workspace_init(&w2, m, chunk))
			return 1;
		gf_state_reset(&st, &cfg);
		gf_kv_reset(&kv);
		if (gf_prefill(m, w2, &st, &kv, tok, P, row))
			return 1;
		for (int i = 0; i < V; i++) {
			double d = fabs((double)row[i] - ref_logits[(size_t)(P - 1) * V + i]);
			worst = d > worst ? d : worst;
		}
		gf_workspace_free(w2);
	}
	double maxref = 0;
	for (int i = 0; i < V; i++)
		maxref = fmax(maxref, fabs(ref_logits[(size_t)(P - 1) * V + i]));
	printf("  %-28s max|diff|/max|ref| = %.3e  %s\n", "prefill, chunks W..P", worst / maxref,
	       worst / maxref <= TOL ? "ok" : "FAIL");
	failures += worst / maxref > TOL;

	/* Context + question: prefill in two calls (every split point) equals the full forward. */
	worst = 0;
	for (int split = 1; split < T; split += 7) {
		gf_state_reset(&st, &cfg);
		gf_kv_reset(&kv);
		if (gf_prefill(m, ws, &st, &kv, tok, split, row) ||
		    gf_prefill(m, ws, &st, &kv, tok + split, T - split, row))
			return 1;
		for (int i = 0; i < V; i++) {
			double d = fabs((double)row[i] - ref_logits[(size_t)(T - 1) * V + i]);
			worst = d > worst ? d : worst;
		}
	}
	maxref = 0;
	for (int i = 0; i < V; i++)
		maxref = fmax(maxref, fabs(ref_logits[(size_t)(T - 1) * V + i]));
	printf("  %-28s max|diff|/max|ref| = %.3e  %s\n", "context + question", worst / maxref,
	       worst / maxref <= TOL ? "ok" : "FAIL");
	failures += worst / maxref > TOL;

	/* Out-of-vocabulary tokens are refused, not read out of bounds. */
	int32_t bad[2] = { 0, V };
	gf_state_reset(&st, &cfg);
	gf_kv_reset(&kv);
	if (gf_prefill(m, ws, &st, &kv, bad, 2, row) != -EINVAL) {
		printf("  token >= vocab not refused  FAIL\n");
		failures++;
	}

	gf_kv_free(&kv);
	gf_state_free(&st);
	gf_workspace_free(ws);
	gf_model_free(m);
	gf_tensors_free(&ts);
	free(tok), free(ref_logits), free(ref_ckv), free(ref_kc), free(ref_finch), free(ref_dec);
	free(ref_state), free(logits), free(c), free(kc), free(fo), free(row), free(dec);
	printf("%s\n", failures ? "FAIL" : "PASS");
	return failures ? 1 : 0;
}
