/*
 * model_split — a pipeline boundary that moves (gf_blocks_split, gf_channel_mix_rest,
 * gf_time_mix_ahead) gives the bits of gf_blocks. For every Finch block b-1 of a model of
 * either shape, chunks of 256 rows carrying their state: block b-1's channel mix split at
 * every allowed row (0, 64, .., 256) with the rest finished by a slice that starts at block b
 * (GF_LOAD_PREV_FFN); and for every Finch block b after the first, rows 64.. to 192.. of its
 * time-mix products computed by the slice before it (GF_LOAD_NEXT_ATT), its own channel mix
 * split as well. Outputs and state must equal those of one gf_blocks call, byte for byte.
 * Refused: rows that are not a multiple of the step, a time mix ahead from row 0 or of no
 * rows, a slice without the weights, a GOLD block. Every shape splits (the second model is
 * a narrow one: a split of it keeps its bits too). Exit 0 pass, 1 fail.
 * usage: model_split MODEL.gguf SMALL_MODEL.gguf
 */
#include "goldfinch.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every boundary of model m (loaded from path) split at every allowed row: the number of
 * failures. */
static int check_model(const char *path, const gf_model *m)
{
	char err[GF_ERR_LEN];
	const gf_config *c = &m->cfg;
	const int n = 256, C = c->n_embd, step = gf_split_step(c);
	printf("model of n_embd %d, %d blocks:\n", C, c->n_layer);
	int32_t *tok = malloc(sizeof(int32_t) * 3 * n);
	float *xa = malloc(sizeof(float) * (size_t)n * C), *xb = malloc(sizeof(float) * (size_t)n * C);
	float *carry = malloc(sizeof(float) * (size_t)C);
	uint64_t r = 0x243f6a8885a308d3ull;
	for (int t = 0; t < 3 * n; t++) {
		r = r * 6364136223846793005ull + 1442695040888963407ull;
		tok[t] = (int32_t)((r >> 33) % (uint64_t)c->vocab_size);
	}
	int failures = 0;
	for (int b = 1; b <= c->first_gold; b++) {
		gf_model *next, *plain;
		gf_workspace *ws, *ws2;
		gf_state sa, sb;
		if (gf_model_load_slice(&next, path, b, -1, GF_LOAD_PREV_FFN, err) ||
		    gf_model_load_blocks(&plain, path, b, -1, err) || gf_workspace_init(&ws, m, n) ||
		    gf_workspace_init(&ws2, next, n) || gf_state_init(&sa, c) || gf_state_init(&sb, c)) {
			fprintf(stderr, "boundary at block %d: %s\n", b, err);
			exit(1);
		}
		int same = 1, splits = 0;
		for (int rows = 0; rows <= n; rows += step) {
			gf_state_reset(&sa, c);
			gf_state_reset(&sb, c);
			for (int j = 0; j < 3; j++) {
				/* Each chunk its own split: the rows given, then others. */
				const int at = (rows + j * 3 * step) % (n + step);
				if (gf_embed(m, tok + j * n, n, xa))
					exit(1);
				memcpy(xb, xa, sizeof(float) * (size_t)n * C);
				if (gf_blocks(m, ws, &sa, NULL, xa, (int64_t)j * n, n, 0, b) ||
				    gf_blocks_split(m, ws, &sb, xb, (int64_t)j * n, n, 0, b,
						    &(gf_split){ .keep = at, .carry = carry }) ||
				    gf_channel_mix_rest(next, ws2, b - 1, xb, n, at, carry)) {
					fprintf(stderr, "FAIL: boundary after block %d: a split at row %d refused\n",
						b - 1, at);
					exit(1);
				}
				same &= !memcmp(xa, xb, sizeof(float) * (size_t)n * C) &&
					!memcmp(sa.shift, sb.shift, gf_state_floats(c) * sizeof(float));
				splits++;
			}
		}
		const int refused =
			gf_channel_mix_rest(next, ws2, b - 1, xb, n, step / 2, carry) == -EINVAL &&
			gf_channel_mix_rest(next, ws2, b - 1, xb, n, n + step, carry) == -EINVAL &&
			gf_channel_mix_rest(plain, ws2, b - 1, xb, n, step, carry) == -EINVAL &&
			gf_blocks_split(m, ws, &sb, xb, 0, n, 0, b,
					&(gf_split){ .keep = step + 1, .carry = carry }) == -EINVAL &&
			gf_blocks_split(m, ws, &sb, xb, 0, n, 0, c->first_gold + 1,
					&(gf_split){ .keep = step, .carry = carry }) == -EINVAL;
		printf("boundary after block %d: %d chunks split at rows 0..%d in steps of %d, rest on the next slice: %s; bad splits %s\n",
		       b - 1, splits, n, step, same ? "bit-identical ok" : "FAIL",
		       refused ? "refused ok" : "FAIL");
		failures += !same || !refused;
		gf_workspace_free(ws);
		gf_workspace_free(ws2);
		gf_model_free(next);
		gf_model_free(plain);
		gf_state_free(&sa);
		gf_state_free(&sb);
	}
	/* The other direction: the rank before Finch block b computes rows [from, n) of b's
	 * time-mix products (GF_LOAD_NEXT_ATT); the rank running b takes them, and may split its
	 * own last channel mix too (the rest finished by the slice after it). */
	for (int b = 1; b < c->first_gold; b++) {
		gf_model *before, *plain, *at_b, *after;
		gf_workspace *ws, *ws2, *ws3;
		gf_state sa, sb;
		float *ahead = malloc(sizeof(float) * gf_ahead_floats(c, n));
		if (!ahead || gf_model_load_slice(&before, path, 0, b, GF_LOAD_NEXT_ATT, err) ||
		    gf_model_load_blocks(&plain, path, 0, b, err) ||
		    gf_model_load_blocks(&at_b, path, b, b + 1, err) ||
		    gf_model_load_slice(&after, path, b + 1, -1, GF_LOAD_PREV_FFN, err) ||
		    gf_workspace_init(&ws, before, n) || gf_workspace_init(&ws2, at_b, n) ||
		    gf_workspace_init(&ws3, after, n) || gf_state_init(&sa, c) || gf_state_init(&sb, c)) {
			fprintf(stderr, "time mix ahead at block %d: %s\n", b, err);
			exit(1);
		}
		int same = 1, chunks = 0;
		for (int from = step; from < n; from += step) {
			gf_state_reset(&sa, c);
			gf_state_reset(&sb, c);
			for (int j = 0; j < 3; j++) {
				const int fr = step + (from - step + j * 2 * step) % (n - step);
				const int keep = (fr + j * step) % (n + step);
				if (gf_embed(m, tok + j * n, n, xa))
					exit(1);
				memcpy(xb, xa, sizeof(float) * (size_t)n * C);
				const gf_split s = { .keep = keep, .carry = carry, .ahead_from = fr,
						     .ahead = ahead };
				if (gf_blocks(m, ws, &sa, NULL, xa, (int64_t)j * n, n, 0, b + 1) ||
				    gf_blocks(before, ws, &sb, NULL, xb, (int64_t)j * n, n, 0, b) ||
				    gf_time_mix_ahead(before, ws, b, xb, n, fr, ahead) ||
				    gf_blocks_split(at_b, ws2, &sb, xb, (int64_t)j * n, n, b, b + 1, &s) ||
				    gf_channel_mix_rest(after, ws3, b, xb, n, keep, carry)) {
					fprintf(stderr, "FAIL: block %d: rows %d.. computed ahead, %d of its channel mix kept: refused\n",
						b, fr, keep);
					exit(1);
				}
				same &= !memcmp(xa, xb, sizeof(float) * (size_t)n * C) &&
					!memcmp(sa.shift, sb.shift, gf_state_floats(c) * sizeof(float));
				chunks++;
			}
		}
		const gf_split bad = { .keep = n, .ahead_from = 0, .ahead = ahead };
		const int refused = gf_time_mix_ahead(before, ws, b, xb, n, 0, ahead) == -EINVAL &&
				    gf_time_mix_ahead(before, ws, b, xb, n, step + 1, ahead) == -EINVAL &&
				    gf_time_mix_ahead(before, ws, b, xb, n, n, ahead) == -EINVAL &&
				    gf_time_mix_ahead(plain, ws, b, xb, n, step, ahead) == -EINVAL &&
				    gf_time_mix_ahead(m, ws, c->first_gold, xb, n, step, ahead) == -EINVAL &&
				    gf_blocks_split(at_b, ws2, &sb, xb, 0, n, b, b + 1, &bad) == -EINVAL;
		printf("time mix of block %d: %d chunks with rows from 64..%d computed by the slice before, its channel mix split too: %s; bad splits %s\n",
		       b, chunks, n - step, same ? "bit-identical ok" : "FAIL",
		       refused ? "refused ok" : "FAIL");
		failures += !same || !refused;
		gf_workspace_free(ws);
		gf_workspace_free(ws2);
		gf_workspace_free(ws3);
		gf_model_free(before);
		gf_model_free(plain);
		gf_model_free(at_b);
		gf_model_free(after);
		gf_state_free(&sa);
		gf_state_free(&sb);
		free(ahead);
	}
	free(tok), free(xa), free(xb), free(carry);
	return failures;
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN];
	gf_model *m, *small;
	if (argc != 3) {
		fprintf(stderr, "usage: model_split MODEL.gguf SMALL_MODEL.gguf\n");
		return 1;
	}
	if (gf_model_load(&m, argv[1], err) || gf_model_load(&small, argv[2], err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, step = gf_split_step(c);
	if (step != GF_SPLIT_ROWS || gf_split_step(&small->cfg) != GF_SPLIT_ROWS) {
		fprintf(stderr, "FAIL: split step %d for n_embd %d, %d for n_embd %d\n", step, C,
			gf_split_step(&small->cfg), small->cfg.n_embd);
		return 1;
	}
	const int failures = check_model(argv[1], m) + check_model(argv[2], small);
	gf_model_free(m);
	gf_model_free(small);
	printf("%s\n", failures ? "FAIL" : "ok");
	return failures != 0;
}
