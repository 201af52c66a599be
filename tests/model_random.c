/*
 * model_random — a model of any shape runs, and its paths agree with each other.
 *
 *   model_random MODEL.gguf
 *
 * For a --random model there is no reference, so the exact full forward is the reference:
 * the linear prefill of P tokens plus one-token decode steps must give the same logits at
 * every position, a prefill split at any point must give the same last logits, and the
 * chunk size must not matter. Covers odd layer counts, ratios, head counts and sizes,
 * vocabularies, RoPE and bf16 weights. Exit 0 pass, 1 fail.
 */
#include "goldfinch.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 2e-5

/* A source that rebuilds every block from the per-token cache (c, tok) held in a gf_kv, as
 * the paged store does: it must agree with the expanded rows. */
struct rebuild_src {
	const gf_model *m;
	const float *c;        /* [n_pos][Ck] */
	const int32_t *tok;    /* [n_pos] */
	float kblk[1 << 17], vblk[1 << 17]; /* a block (gf_kv_block_bytes, f32) */
};

static int rebuild_get(gf_kv_source *src, gf_workspace *ws, int g, int64_t first, int n,
		       const void **k, const void **v)
{
	struct rebuild_src *r = src->user;
	const gf_config *c = &r->m->cfg;
	const int has_prev = first > 0, Ck = c->ckv_dim;
	float *kb, *vb;
	if (gf_kv_block_bytes(c, GF_DTYPE_F32) > sizeof(r->kblk))
		return -E2BIG;
	gf_workspace_kv_scratch(ws, &kb, &vb);
	int rc = gf_kv_rebuild(r->m, ws, g, r->c + (size_t)(first - has_prev) * Ck,
			       r->tok + first - has_prev, has_prev, first, n, kb, vb);
	gf_kv_block_put(c, GF_DTYPE_F32, kb, vb, c->dim_att, 0, n, r->kblk, r->vblk);
	*k = r->kblk;
	*v = r->vblk;
	return rc;
}

/* Attention shared out as MPI ranks share it: three "ranks", each a model loaded with its
 * own blocks plus GF_LOAD_GOLD_KV and its own rebuilding source and workspace, compute
 * uneven runs of spans; the partials are merged in span order. */
#define SHARERS 3
struct shared_src {
	gf_kv_source src;
	const gf_config *cfg;
	gf_workspace *ws[SHARERS];
	gf_kv_source part[SHARERS];
	float *partials;
	int calls;
};

static int shared_attend(gf_kv_source *src, gf_workspace *ws, int g, const float *q,
			 int64_t p0, int n, float *y)
{
	struct shared_src *sh = (struct shared_src *)src;
	const int spans = gf_attn_n_spans(p0 + n);
	const size_t pf = gf_attn_partial_floats(sh->cfg, n);
	(void)ws;
	/* cuts: a third, then one span, then the rest (any cut must do) */
	const int cut[SHARERS + 1] = { 0, spans / 3, spans / 3 + 1 < spans ? spans / 3 + 1 : spans,
				       spans };
	for (int i = 0; i < SHARERS; i++) {
		const struct rebuild_src *ri = sh->part[i].user;
		int rc = gf_attn_spans(ri->m, sh->ws[i], &sh->part[i], g, q, p0, n, cut[i],
				       cut[i + 1], sh->partials + (size_t)cut[i] * pf);
		if (rc)
			return rc;
	}
	float *acc = sh->partials + (size_t)spans * pf;
	gf_attn_acc_init(sh->cfg, n, acc);
	for (int s = 0; s < spans; s++)
		gf_attn_acc_merge(sh->cfg, n, acc, sh->partials + (size_t)s * pf);
	gf_attn_acc_finish(sh->cfg, n, acc, y);
	sh->calls++;
	return 0;
}

static double rel_diff(const float *a, const float *b, size_t n)
{
	double maxref = 0, maxdiff = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);
		maxdiff = isnan(d) ? INFINITY : (d > maxdiff ? d : maxdiff);
		maxref = fabs(b[i]) > maxref ? fabs(b[i]) : maxref;
	}
	return maxref > 0 ? maxdiff / maxref : maxdiff;
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN];
	gf_model *m;
	if (argc != 2) {
		fprintf(stderr, "usage: model_random MODEL.gguf\n");
		return 1;
	}
	if (gf_model_load(&m, argv[1], err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	const gf_config *c = &m->cfg;
	const int V = c->vocab_size, W = gf_config_tail_window(c);
	const int T = 3 * W + 37, P = 2 * W + 5;
	printf("%s: L=%d C=%d G=%d H=%dx%d F=%d V=%d rope=%g W=%d T=%d\n", argv[1], c->n_layer,
	       c->n_embd, c->first_gold, c->n_head, c->head_size, c->dim_ffn, V, c->rope_base, W, T);
	int32_t *tok = malloc(sizeof(int32_t) * T);
	float *full = malloc(sizeof(float) * (size_t)T * V);
	float *row = malloc(sizeof(float) * (size_t)V);
	uint64_t r = 0x9e3779b97f4a7c15ull;
	for (int t = 0; t < T; t++) {
		r = r * 6364136223846793005ull + 1442695040888963407ull;
		tok[t] = (int32_t)((r >> 33) % (uint64_t)V);
	}
	if (gf_forward_full(m, tok, T, full, NULL, NULL, NULL, err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	int failures = 0;
	double worst = 0;
	/* Weights in the read-only mapping (GF_LOAD_MAPPED) and copied into huge pages (the
	 * default where the kernel offers them) are the same numbers: the same bits out. */
	{
		gf_model *mapped;
		float *again = malloc(sizeof(float) * (size_t)T * V);
		if (!again || gf_model_load_slice(&mapped, argv[1], 0, -1, GF_LOAD_MAPPED, err) ||
		    gf_forward_full(mapped, tok, T, again, NULL, NULL, NULL, err)) {
			fprintf(stderr, "mapped load: %s\n", err);
			return 1;
		}
		if (mapped->arena) {
			fprintf(stderr, "FAIL: GF_LOAD_MAPPED copied the weights\n");
			failures++;
		}
		if (memcmp(again, full, sizeof(float) * (size_t)T * V)) {
			fprintf(stderr, "FAIL: logits from mapped weights differ from %s ones\n",
				m->arena ? "huge-page" : "mapped");
			failures++;
		}
		printf("weights: %s; mapped load gives the same bits\n",
		       m->arena ? "copied into huge pages" : "in the mapping (no huge pages here)");
		free(again);
		gf_model_free(mapped);
	}
	/* The kernels of every instruction set below this CPU's best give the same bits
	 * (GOLDFINCH_ISA caps them at load): a machine without AVX-512 answers as this one. */
	{
		static const char *const caps[] = { "avx2", "scalar" };
		float *again = malloc(sizeof(float) * (size_t)T * V);
		for (int i = 0; i < 2 && again; i++) {
			gf_model *capped;
			setenv("GOLDFINCH_ISA", caps[i], 1);
			if (gf_model_load(&capped, argv[1], err) ||
			    gf_forward_full(capped, tok, T, again, NULL, NULL, NULL, err)) {
				fprintf(stderr, "%s load: %s\n", caps[i], err);
				return 1;
			}
			unsetenv("GOLDFINCH_ISA");
			const bool same = !memcmp(again, full, sizeof(float) * (size_t)T * V);
			printf("kernels %s (this CPU's best: %s): %s\n", gf_model_isa_name(capped),
			       gf_model_isa_name(m), same ? "the same bits" : "FAIL: other bits");
			failures += !same;
			gf_model_free(capped);
		}
		free(again);
	}
	for (int chunk = W; chunk <= W + 3; chunk += 3) {
		gf_workspace *ws;
		gf_state st;
		gf_kv kv;
		if (gf_workspace_init(&ws, m, chunk) || gf_state_init(&st, c) || gf_kv_init(&kv, c, 0))
			return 1;
		/* prefill + decode at every position */
		if (gf_prefill(m, ws, &st, &kv, tok, P, row))
			return 1;
		double d = rel_diff(row, full + (size_t)(P - 1) * V, V);
		worst = d > worst ? d : worst;
		for (int t = P; t < T; t++) {
			if (gf_decode_step(m, ws, &st, &kv, tok[t], row))
				return 1;
			d = rel_diff(row, full + (size_t)t * V, V);
			worst = d > worst ? d : worst;
		}
		/* context + question, at several split points */
		for (int split = 1; split < T; split += 11) {
			gf_state_reset(&st, c);
			gf_kv_reset(&kv);
			if (gf_prefill(m, ws, &st, &kv, tok, split, row) ||
			    gf_prefill(m, ws, &st, &kv, tok + split, T - split, row))
				return 1;
			d = rel_diff(row, full + (size_t)(T - 1) * V, V);
			worst = d > worst ? d : worst;
		}
		gf_kv_free(&kv);
		gf_state_free(&st);
		gf_workspace_free(ws);
	}
	printf("  prefill/decode/split vs full forward: max|diff|/max|ref| = %.3e %s\n", worst,
	       worst <= TOL ? "ok" : "FAIL");
	failures += worst > TOL;
	/* Keys rebuilt block by block from (c, tok), over several blocks, equal the expanded ones. */
	{
		const int TL = 2 * GF_KV_BLOCK + 77;
		int32_t *tl = malloc(sizeof(int32_t) * TL);
		float *a = malloc(sizeof(float) * V), *b = malloc(sizeof(float) * V);
		for (int t = 0; t < TL; t++)
			tl[t] = tok[t % T];
		gf_workspace *ws;
		gf_state st, st2;
		gf_kv kv;
		if (gf_workspace_init(&ws, m, 64 > W ? 64 : W) || gf_state_init(&st, c) ||
		    gf_state_init(&st2, c) || gf_kv_init(&kv, c, 0) ||
		    gf_prefill(m, ws, &st, &kv, tl, TL, a) || gf_state_copy(&st2, &st, c))
			return 1;
		static struct rebuild_src rs;
		rs.m = m, rs.c = kv.c, rs.tok = kv.tok;
		gf_kv_source src = { .n_pos = kv.n_pos, .get = rebuild_get, .user = &rs };
		int rc = gf_gold_tail(m, ws, &st2, &src, b);
		double d = rc ? INFINITY : rel_diff(b, a, V);
		printf("  rebuilt keys (%d positions) vs expanded: %.3e %s\n", TL, d, d <= TOL ? "ok" : "FAIL");
		failures += !(d <= TOL);
		gf_kv_free(&kv);
		gf_state_free(&st);
		gf_state_free(&st2);
		gf_workspace_free(ws);
		free(tl), free(a), free(b);
	}
	/* Enough keys for spans of several blocks: the GOLD tail with its attention shared out
	 * over three ranks' slices gives the bits of attending in one place. */
	{
		const int64_t TS = (int64_t)GF_KV_BLOCK * (GF_ATTN_MAX_SPANS + 9) + 5;
		const int L = c->n_layer, G = c->first_gold, C = c->n_embd, Ck = c->ckv_dim;
		const int lo[SHARERS] = { 0, G / 2 > 0 ? G / 2 : 1, G + (L - G) / 2 };
		const int hi[SHARERS] = { lo[1], lo[2], L };
		float *cs = malloc(sizeof(float) * (size_t)TS * Ck);
		int32_t *ts = malloc(sizeof(int32_t) * (size_t)TS);
		float *a = malloc(sizeof(float) * V), *b = malloc(sizeof(float) * V);
		gf_model *part[SHARERS];
		static struct rebuild_src rs[SHARERS + 1];
		struct shared_src sh = { .cfg = c };
		gf_workspace *ws;
		gf_state st1, st2;
		for (int64_t t = 0; t < TS; t++) {
			ts[t] = tok[t % T];
			for (int j = 0; j < Ck; j++) {
				r = r * 6364136223846793005ull + 1442695040888963407ull;
				cs[t * Ck + j] = (float)((double)(r >> 11) / 9007199254740992.0 - 0.5);
			}
		}
		if (gf_workspace_init(&ws, m, W) || gf_state_init(&st1, c) || gf_state_init(&st2, c))
			return 1;
		for (int i = 0; i < SHARERS; i++) {
			if (gf_model_load_slice(&part[i], argv[1], lo[i], hi[i], GF_LOAD_GOLD_KV, err)) {
				fprintf(stderr, "slice %d..%d with GOLD keys: %s\n", lo[i], hi[i], err);
				return 1;
			}
			if (gf_workspace_init(&sh.ws[i], part[i], W))
				return 1;
			rs[i].m = part[i], rs[i].c = cs, rs[i].tok = ts;
			sh.part[i] = (gf_kv_source){ .n_pos = TS, .get = rebuild_get, .user = &rs[i] };
		}
		const int spans = gf_attn_n_spans(TS);
		sh.partials = malloc(sizeof(float) * gf_attn_partial_floats(c, W) * (size_t)(spans + 1));
		rs[SHARERS].m = m, rs[SHARERS].c = cs, rs[SHARERS].tok = ts;
		gf_kv_source one = { .n_pos = TS, .get = rebuild_get, .user = &rs[SHARERS] };
		sh.src = (gf_kv_source){ .n_pos = TS, .get = rebuild_get, .user = &rs[SHARERS],
					 .attend = shared_attend };
		for (int i = 0; i < W * C; i++) {
			r = r * 6364136223846793005ull + 1442695040888963407ull;
			st1.tail[i] = (float)((double)(r >> 11) / 4503599627370496.0 - 1.0);
		}
		st1.n_tail = W;
		st1.n_pos = TS;
		if (gf_state_copy(&st2, &st1, c) || gf_gold_tail(m, ws, &st1, &one, a) ||
		    gf_gold_tail(m, ws, &st2, &sh.src, b))
			return 1;
		/* The key stream once, then each layer from it: the bits of a whole rebuild. */
		{
			const int nb = GF_KV_BLOCK, A = c->dim_att;
			const int64_t pos0 = 3 * GF_KV_BLOCK;
			float *stream = malloc(sizeof(float) * gf_key_stream_floats(c, nb));
			float *k1 = malloc(sizeof(float) * (size_t)nb * A), *v1 = malloc(sizeof(float) * (size_t)nb * A);
			float *k2 = malloc(sizeof(float) * (size_t)nb * A), *v2 = malloc(sizeof(float) * (size_t)nb * A);
			int split_same = !gf_key_stream(m, sh.ws[0], cs + (pos0 - 1) * Ck, ts + pos0 - 1, 1,
							pos0, nb, stream);
			for (int g = 0; g < L - G && split_same; g++)
				split_same = !gf_kv_expand(m, sh.ws[0], g, stream, pos0, nb, k1, v1) &&
					     !gf_kv_rebuild(m, sh.ws[0], g, cs + (pos0 - 1) * Ck,
							    ts + pos0 - 1, 1, pos0, nb, k2, v2) &&
					     !memcmp(k1, k2, sizeof(float) * (size_t)nb * A) &&
					     !memcmp(v1, v2, sizeof(float) * (size_t)nb * A);
			printf("  key stream once, every layer from it: %s\n",
			       split_same ? "bit-identical ok" : "FAIL");
			failures += !split_same;
			free(stream), free(k1), free(v1), free(k2), free(v2);
		}
		/* A model without the GOLD keys cannot be asked for spans. */
		const int rc_refused = gf_attn_spans(part[0], sh.ws[0], &sh.part[0], 0, st1.tail,
						     TS - W, W, 0, 1, sh.partials);
		const int same = sh.calls == L - G && !memcmp(a, b, sizeof(float) * (size_t)V) &&
				 !memcmp(st1.shift, st2.shift, gf_state_floats(c) * sizeof(float));
		printf("  GOLD tail over %lld keys in %d spans of %lld blocks, shared by 3 slices: %s\n",
		       (long long)TS, spans, (long long)gf_attn_span_blocks(TS),
		       same ? "bit-identical ok" : "FAIL");
		failures += !same || spans < 2 || gf_attn_span_blocks(TS) < 2;
		gf_model *bare;
		if (gf_model_load_blocks(&bare, argv[1], 0, 1, err))
			return 1;
		const int rc_bare = gf_attn_spans(bare, sh.ws[0], &sh.part[0], 0, st1.tail, TS - W, W,
						  0, 1, sh.partials);
		printf("  spans asked of a slice without GOLD keys: %s\n",
		       rc_bare == -EINVAL && rc_refused == 0 ? "refused ok" : "FAIL");
		failures += !(rc_bare == -EINVAL && rc_refused == 0);
		gf_model_free(bare);
		for (int i = 0; i < SHARERS; i++) {
			gf_workspace_free(sh.ws[i]);
			gf_model_free(part[i]);
		}
		gf_state_free(&st1);
		gf_state_free(&st2);
		gf_workspace_free(ws);
		free(sh.partials), free(cs), free(ts), free(a), free(b);
	}
	/* The forward in slices, as ranks run it, gives the same bits as the whole, whatever the
	 * cut between the Finch blocks and between the GOLD blocks. */
	{
		const int n = W + 3, L = c->n_layer, G = c->first_gold, C = c->n_embd;
		gf_workspace *ws;
		gf_state s1, s2;
		gf_kv kv1, kv2;
		float *x1 = malloc(sizeof(float) * n * C), *x2 = malloc(sizeof(float) * n * C);
		float *c1 = malloc(sizeof(float) * n * c->ckv_dim), *c2 = malloc(sizeof(float) * n * c->ckv_dim);
		float *l1 = malloc(sizeof(float) * (size_t)n * V), *l2 = malloc(sizeof(float) * (size_t)n * V);
		int same = 1;
		if (gf_workspace_init(&ws, m, n) || gf_state_init(&s1, c) || gf_state_init(&s2, c))
			return 1;
		for (int kf = 0; kf <= G; kf++) {
			int kg = G + (kf % (L - G + 1));
			gf_state_reset(&s1, c);
			gf_state_reset(&s2, c);
			gf_kv_init(&kv1, c, 0);
			gf_kv_init(&kv2, c, 0);
			gf_kv_source src1, src2;
			if (gf_finch_chunk(m, ws, &s1, tok, n, NULL, x1, c1) ||
			    gf_kv_append(m, ws, &kv1, c1, tok, n))
				return 1;
			gf_kv_source_ram(&src1, &kv1);
			if (gf_gold_chunk(m, ws, &s1, &src1, x1, 0, n, l1, false))
				return 1;
			if (gf_embed(m, tok, n, x2) || gf_blocks(m, ws, &s2, NULL, x2, 0, n, 0, kf) ||
			    gf_blocks(m, ws, &s2, NULL, x2, 0, n, kf, G))
				return 1;
			gf_cache_rows(m, ws, x2, n, c2);
			if (gf_kv_append(m, ws, &kv2, c2, tok, n))
				return 1;
			gf_kv_source_ram(&src2, &kv2);
			if (gf_blocks(m, ws, &s2, &src2, x2, 0, n, G, kg) ||
			    gf_blocks(m, ws, &s2, &src2, x2, 0, n, kg, L))
				return 1;
			gf_head(m, ws, x2, n, l2);
			same &= !memcmp(c1, c2, sizeof(float) * n * c->ckv_dim) &&
				!memcmp(l1, l2, sizeof(float) * (size_t)n * V) &&
				!memcmp(s1.shift, s2.shift, gf_state_floats(c) * sizeof(float));
			gf_kv_free(&kv1);
			gf_kv_free(&kv2);
		}
		printf("  forward in slices, every cut: %s\n", same ? "bit-identical ok" : "FAIL");
		failures += !same;
		gf_state_free(&s1);
		gf_state_free(&s2);
		gf_workspace_free(ws);
		free(x1), free(x2), free(c1), free(c2), free(l1), free(l2);
	}
	/* Three ranks' slices, each loaded with only its own weights, give the same bits. */
	{
		const int n = W + 3, L = c->n_layer, G = c->first_gold, C = c->n_embd;
		const int k1 = G / 2 > 0 ? G / 2 : 1, k2 = G + (L - G) / 2;
		gf_model *part[3];
		const int lo[3] = { 0, k1, k2 }, hi[3] = { k1, k2, L };
		for (int i = 0; i < 3; i++)
			if (gf_model_load_blocks(&part[i], argv[1], lo[i], hi[i], err)) {
				fprintf(stderr, "slice %d..%d: %s\n", lo[i], hi[i], err);
				return 1;
			}
		gf_workspace *ws;
		gf_state s1, s2;
		gf_kv kv1, kvr[3];   /* every GOLD rank keeps its own copy of the cache */
		float *x1 = malloc(sizeof(float) * n * C), *x2 = malloc(sizeof(float) * n * C);
		float *c1 = malloc(sizeof(float) * n * c->ckv_dim), *c2 = malloc(sizeof(float) * n * c->ckv_dim);
		float *l1 = malloc(sizeof(float) * (size_t)n * V), *l2 = malloc(sizeof(float) * (size_t)n * V);
		gf_kv_source src1, srcr;
		if (gf_workspace_init(&ws, m, n) || gf_state_init(&s1, c) || gf_state_init(&s2, c) ||
		    gf_kv_init(&kv1, c, 0))
			return 1;
		/* whole */
		if (gf_finch_chunk(m, ws, &s1, tok, n, NULL, x1, c1) || gf_kv_append(m, ws, &kv1, c1, tok, n))
			return 1;
		gf_kv_source_ram(&src1, &kv1);
		if (gf_gold_chunk(m, ws, &s1, &src1, x1, 0, n, l1, false))
			return 1;
		/* slices, in rank order: rank 0 embeds; the owner of block G-1 makes c (before any
		 * GOLD block runs, since it comes first); each GOLD rank expands its own keys */
		if (gf_embed(part[0], tok, n, x2))
			return 1;
		for (int i = 0; i < 3; i++) {
			int a = lo[i], e = hi[i], fe = e < G ? e : G;
			gf_kv_init(&kvr[i], c, 0);
			if (a < fe && gf_blocks(part[i], ws, &s2, NULL, x2, 0, n, a, fe))
				return 1;
			if (a < G && G <= e)
				gf_cache_rows(part[i], ws, x2, n, c2);
			int ga = a > G ? a : G;
			if (ga < e) {
				if (gf_kv_append(part[i], ws, &kvr[i], c2, tok, n))
					return 1;
				gf_kv_source_ram(&srcr, &kvr[i]);
				if (gf_blocks(part[i], ws, &s2, &srcr, x2, 0, n, ga, e))
					return 1;
			}
		}
		gf_head(part[2], ws, x2, n, l2);
		int same = !memcmp(c1, c2, sizeof(float) * n * c->ckv_dim) &&
			   !memcmp(l1, l2, sizeof(float) * (size_t)n * V);
		printf("  three ranks' slices (%d..%d, %d..%d, %d..%d): %s\n", lo[0], hi[0] - 1, lo[1],
		       hi[1] - 1, lo[2], hi[2] - 1, same ? "bit-identical ok" : "FAIL");
		failures += !same;
		for (int i = 0; i < 3; i++) {
			gf_model_free(part[i]);
			gf_kv_free(&kvr[i]);
		}
		gf_kv_free(&kv1);
		gf_state_free(&s1);
		gf_state_free(&s2);
		gf_workspace_free(ws);
		free(x1), free(x2), free(c1), free(c2), free(l1), free(l2);
	}
	/* The logits must look like a model's, not like noise blown up or collapsed. */
	double s = 0, s2 = 0;
	for (size_t i = 0; i < (size_t)T * V; i++)
		s += full[i], s2 += (double)full[i] * full[i];
	double mean = s / ((double)T * V), sd = sqrt(s2 / ((double)T * V) - mean * mean);
	printf("  logit std %.3f %s\n", sd, sd > 0.1 && sd < 10 ? "ok" : "FAIL");
	failures += !(sd > 0.1 && sd < 10);
	free(tok), free(full), free(row);
	gf_model_free(m);
	return failures ? 1 : 0;
}
