/*
 * forward.c — the GoldFinch forward pass on the CPU (DESIGN.md §1-2).
 *
 * Everything is float32. Linear layers run as one OpenBLAS GEMM over a whole chunk of tokens
 * (GEMV for one token, where GEMM with M = 1 is slow); the recurrences and the element-wise
 * work run per token over rows laid out for the vectoriser. The workspace is sized once, so
 * the chunk and decode paths allocate nothing (the only growth is gf_kv's storage).
 */
#include "goldfinch.h"
#include "dnnl.h"
#include "gemm.h"
#include "pool.h"
#include "vecmath.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* Denormal floats are flushed to zero (FTZ and DAZ) inside every compute entry point, and the
 * caller's mode is restored on return. Long sequences drive the recurrent state of quickly
 * decaying channels toward the denormal range, where x86 float arithmetic takes microcode
 * assists (measured: a 24-layer model's Finch blocks 4% faster over 32K tokens). Values below
 * 1.2e-38 carry nothing for the result; every path flushes the same way, so paths that must
 * agree bit for bit (ranks and one process, rebuilt and expanded keys) still do. */
#if defined(__SSE2__)
#include <xmmintrin.h>
static inline unsigned fp_enter(void)
{
	const unsigned saved = _mm_getcsr();
	_mm_setcsr(saved | 0x8040); /* FTZ (bit 15) | DAZ (bit 6) */
	return saved;
}

static inline void fp_restore(const unsigned *saved)
{
	_mm_setcsr(*saved);
}
#define FLUSH_DENORMALS() \
	const unsigned fp_saved __attribute__((cleanup(fp_restore), unused)) = fp_enter()
#else
#define FLUSH_DENORMALS() ((void)0)
#endif

struct gf_workspace {
	int max_chunk;       /* M */
	int max_rows;        /* rows of the row buffers: max(M, GF_KV_BLOCK) */
	float *x;            /* [M][C] residual stream */
	float *xln;          /* [M][C] normalised input of the current mix */
	float *dx;           /* [M][C] shift(xln) - xln */
	float *mix;          /* [5][M][C] token-shift mixes (r, k, w, v, v2 for Finch) */
	float *lora_in;      /* [M][C] */
	float *lora_h;       /* [M][lora_max] */
	float *r, *k, *w;    /* [M][A] */
	float *v;            /* [2][M][A]: v then v2, one GEMM for both */
	float *y;            /* [M][A] */
	float *ffk;          /* [M][F] */
	float *ffr;          /* [M][C] */
	float *out;          /* [M][C] */
	float *q;            /* [M][A] */
	float *scores;       /* [M][GF_KV_BLOCK] */
	float *att_max;      /* [M][H] running max of the online softmax */
	float *att_sum;      /* [M][H] running denominator */
	float *att_y;        /* [M][A] unnormalised output merged over the spans so far */
	float *sp_max, *sp_sum; /* [M][H] of the span being computed */
	float *kv_k, *kv_v;  /* [GF_KV_BLOCK][A] scratch for sources that rebuild */
	float *ek, *ev;      /* [M][A] rows of keys and values on their way into blocks */
	float *attn_part;    /* per pool part: scores [max_rows][GF_KV_BLOCK] */
	float *e_cat;        /* [M+1][C+Ck]: [x0 ; c] rows, previous position first */
	float *e_kc;         /* [M+1][A] key stream */
	float *e_xn;         /* [M+1][C] rms(x0) */
	float *e_dxn;        /* [M][C] */
	float *fx;           /* [M][C] Finch-stage outputs of a chunk */
	float *fc;           /* [M][Ck] its cache rows */
	double *rope_freq;   /* [N/2] */
	gf_pool *pool;       /* splits the matrix products by panels (or oneDNN's tasks) */
	gf_dnnl_scratch *dnnl_scratch; /* bf16 compute's buffers, or NULL */
	/* Set while a batched decode step multiplies its rows (one per sequence): they take the
	 * kernels whatever their number, as the one row of gf_decode_step does, so a row's bits
	 * do not depend on the batch. Cleared while a sequence attends: a source that rebuilds
	 * blocks then multiplies as it would for that sequence alone. */
	bool decode_rows;
	gf_kv_source *seq_src;  /* [max_rows] gf_decode_batch's sources over the sequences' kv */
	gf_kv_source **seq_srcp;/* [max_rows] pointers to them */
	int *seq_rc;         /* [max_rows] per-row codes of a batch */
	float *block;        /* the one allocation everything above points into */
};

int gf_workspace_max_chunk(const gf_workspace *ws)
{
	return ws->max_chunk;
}

static int imax(int a, int b)
{
	return a > b ? a : b;
}

int gf_workspace_init(gf_workspace **out, const gf_model *m, int max_chunk)
{
	return gf_workspace_init_threads(out, m, max_chunk, gf_blas_threads());
}

int gf_workspace_init_threads(gf_workspace **out, const gf_model *m, int max_chunk, int threads)
{
	const gf_config *c = &m->cfg;
	if (max_chunk < 1)
		return -EINVAL;
	gf_workspace *ws = calloc(1, sizeof(*ws));
	if (!ws)
		return -ENOMEM;
	/* Row buffers also serve key/value rebuilds of a whole block. */
	const size_t M = (size_t)(max_chunk > GF_KV_BLOCK ? max_chunk : GF_KV_BLOCK);
	const size_t C = (size_t)c->n_embd, A = (size_t)c->dim_att, H = (size_t)c->n_head;
	const size_t F = (size_t)c->dim_ffn, Ck = (size_t)c->ckv_dim;
	const size_t lmax = (size_t)imax(imax(imax(5 * c->lora_maa, c->lora_decay),
					      imax(c->lora_value2, c->lora_maa_q)),
					 imax(imax(2 * c->lora_maa_kv, c->lora_key), c->lora_value));
	struct {
		float **p;
		size_t n;
	} parts[] = {
		{ &ws->x, M * C },       { &ws->xln, M * C },    { &ws->dx, M * C },
		{ &ws->mix, 5 * M * C }, { &ws->lora_in, M * C }, { &ws->lora_h, M * lmax },
		{ &ws->r, M * A },       { &ws->k, M * A },      { &ws->w, M * A },
		{ &ws->v, 2 * M * A },   { &ws->y, M * A },      { &ws->ffk, M * F },
		{ &ws->ffr, M * C },     { &ws->out, M * C },    { &ws->q, M * A },
		{ &ws->scores, M * GF_KV_BLOCK }, { &ws->att_max, M * H }, { &ws->att_sum, M * H },
		{ &ws->att_y, M * A },   { &ws->sp_max, M * H }, { &ws->sp_sum, M * H },
		{ &ws->kv_k, GF_KV_BLOCK * A }, { &ws->kv_v, GF_KV_BLOCK * A },
		{ &ws->ek, M * A },      { &ws->ev, M * A },

		{ &ws->e_cat, (M + 1) * (C + Ck) },
		{ &ws->e_kc, (M + 1) * A }, { &ws->e_xn, (M + 1) * C }, { &ws->e_dxn, M * C },
		{ &ws->fx, M * C },      { &ws->fc, M * Ck },
	};
	size_t total = 0;
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
		total += (parts[i].n + 15) & ~(size_t)15; /* 64-byte aligned parts */
	ws->block = aligned_alloc(64, total * sizeof(float));
	ws->rope_freq = malloc(sizeof(double) * (size_t)(c->head_size / 2 + 1));
	ws->seq_src = calloc(M, sizeof(*ws->seq_src));
	ws->seq_srcp = calloc(M, sizeof(*ws->seq_srcp));
	ws->seq_rc = calloc(M, sizeof(*ws->seq_rc));
	if (!ws->block || !ws->rope_freq || !ws->seq_src || !ws->seq_srcp || !ws->seq_rc ||
	    gf_pool_init(&ws->pool, threads) ||
	    !(ws->attn_part = aligned_alloc(64, sizeof(float) * M * GF_KV_BLOCK *
						    (size_t)gf_pool_threads(ws->pool))) ||
	    gf_dnnl_scratch_init(&ws->dnnl_scratch, m, (int)M, gf_pool_threads(ws->pool))) {
		gf_workspace_free(ws);
		return -ENOMEM;
	}
	memset(ws->block, 0, total * sizeof(float));
	size_t at = 0;
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		*parts[i].p = ws->block + at;
		at += (parts[i].n + 15) & ~(size_t)15;
	}
	/* RoPE frequencies: (base*rebase)^(-2i/N) / rescale, pairs (2i, 2i+1) of each head. */
	for (int i = 0; i < c->head_size / 2; i++)
		ws->rope_freq[i] = c->rope_base > 0 ?
			pow((double)c->rope_base * c->rope_rebase, -2.0 * i / c->head_size) /
				c->rope_rescale : 0.0;
	ws->max_chunk = max_chunk;
	ws->max_rows = (int)M;
	*out = ws;
	return 0;
}

void gf_workspace_free(gf_workspace *ws)
{
	if (!ws)
		return;
	free(ws->block);
	free(ws->rope_freq);
	free(ws->attn_part);
	free(ws->seq_src);
	free(ws->seq_srcp);
	free(ws->seq_rc);
	gf_dnnl_scratch_free(ws->dnnl_scratch);
	gf_pool_free(ws->pool);
	free(ws);
}

/* ---- linear algebra ---------------------------------------------------------------------- */

/* Up to this many rows are a decode step (its kernels stream each weight once, prefetched past
 * the caches); more are a chunk. */
#define DECODE_ROWS 4

struct mm_job {
	const gf_mat *B;
	const float *x;
	float *y;
	int ldx, n, ldy, isa;
	bool accumulate, stream;
};

/* Part `part` of n_parts takes a contiguous range of panels (possibly none). */
static void mm_part(void *arg, int part, int n_parts)
{
	const struct mm_job *j = arg;
	const int panels = gf_mat_panels(j->B);
	const int p0 = (int)((int64_t)panels * part / n_parts);
	const int p1 = (int)((int64_t)panels * (part + 1) / n_parts);
	gf_gemm_panels(j->isa, j->B, j->x, j->ldx, j->n, j->y, j->ldy, j->accumulate, p0, p1,
		       j->stream);
}

/* y[n][B.n] (ldy) = x[n][B.k] (ldx) . B, added to y when accumulate. The rows are part of a
 * call over `whole` rows: its kernels are chosen by `whole`, so that a part's rows get the bits
 * they get in the whole. Chunks (whole > DECODE_ROWS) of a bf16-compute model go
 * through oneDNN where the matrix has a matmul; everything else through the kernels of
 * gemm.h, whose rows never depend on the other rows, split by panels over the pool (decode's
 * few rows stream each panel once). The rows of a batched decode step (ws->decode_rows) always
 * take the kernels: a sequence's row then has the bits of its step alone, in either compute
 * mode, for any batch. */
static void matmul_part(const gf_model *m, gf_workspace *ws, const float *x, int ldx, int n,
			int whole, const gf_mat *B, bool accumulate, float *y, int ldy)
{
	if (whole > DECODE_ROWS && !ws->decode_rows && m->dnnl &&
	    gf_dnnl_scratch_has(ws->dnnl_scratch, B)) {
		gf_dnnl_matmul(m->dnnl, ws->pool, ws->dnnl_scratch, x, ldx, n, B, accumulate, y, ldy);
		return;
	}
	struct mm_job j = { B, x, y, ldx, n, ldy, m->isa, accumulate, whole <= DECODE_ROWS };
	if (gf_pool_threads(ws->pool) > 1 && gf_mat_panels(B) > 1 &&
	    (size_t)n * B->k * B->n >= 65536)
		gf_pool_run(ws->pool, mm_part, &j);
	else
		mm_part(&j, 0, 1);
}

static void matmul(const gf_model *m, gf_workspace *ws, const float *x, int ldx, int n,
		   const gf_mat *B, bool accumulate, float *y, int ldy)
{
	matmul_part(m, ws, x, ldx, n, n, B, accumulate, y, ldy);
}

/* ---- row-wise helpers --------------------------------------------------------------------- */

static void layernorm_rows(float *out, const float *in, int n, int dim, const float *w,
			   const float *b)
{
	for (int t = 0; t < n; t++) {
		const float *x = in + (size_t)t * dim;
		float *o = out + (size_t)t * dim;
		float mean = gf_vsum(x, dim) / (float)dim;
		float var = gf_vsumsqdev(x, dim, mean) / (float)dim;
		float inv = 1.0f / sqrtf(var + 1e-5f);
		for (int i = 0; i < dim; i++)
			o[i] = (x[i] - mean) * inv * w[i] + b[i];
	}
}

/* rms(x) = x / (||x|| / sqrt(len) + 1e-8): the epsilon sits outside the root. */
static void rms_rows(float *out, const float *in, int n, int dim)
{
	for (int t = 0; t < n; t++) {
		const float *x = in + (size_t)t * dim;
		float *o = out + (size_t)t * dim;
		float s = gf_vsumsqdev(x, dim, 0.0f);
		float inv = 1.0f / (sqrtf(s / (float)dim) + 1e-8f);
		for (int i = 0; i < dim; i++)
			o[i] = x[i] * inv;
	}
}

/* dx[t] = xln[t-1] - xln[t] with xln[-1] = *prev; *prev becomes xln[n-1]. */
static void shift_diff(float *dx, const float *xln, int n, int dim, float *prev)
{
	for (int i = 0; i < dim; i++)
		dx[i] = prev[i] - xln[i];
	for (int t = 1; t < n; t++) {
		const float *a = xln + (size_t)(t - 1) * dim, *b = xln + (size_t)t * dim;
		float *d = dx + (size_t)t * dim;
		for (int i = 0; i < dim; i++)
			d[i] = a[i] - b[i];
	}
	memcpy(prev, xln + (size_t)(n - 1) * dim, sizeof(float) * (size_t)dim);
}

/* out[t] = x[t] + d[t] * (mu + m[t]) (m may be NULL). */
static void mix_rows(float *out, const float *x, const float *d, const float *mu, const float *m,
		     int n, int dim)
{
	for (int t = 0; t < n; t++) {
		const size_t o = (size_t)t * dim;
		if (m)
			for (int i = 0; i < dim; i++)
				out[o + i] = x[o + i] + d[o + i] * (mu[i] + m[o + i]);
		else
			for (int i = 0; i < dim; i++)
				out[o + i] = x[o + i] + d[o + i] * mu[i];
	}
}

static void add_rows(float *x, const float *y, size_t n)
{
	for (size_t i = 0; i < n; i++)
		x[i] += y[i];
}

/* RoPE on rows of [n][A] at absolute positions pos0.., pairs (2i, 2i+1) inside each head. */
static void rope_rows(const gf_config *c, const double *freq, float *x, int n, int64_t pos0)
{
	const int N = c->head_size, H = c->n_head, A = c->dim_att;
	for (int t = 0; t < n; t++) {
		float *row = x + (size_t)t * A;
		for (int i = 0; i < N / 2; i++) {
			/* The angle in double: positions run into the millions. */
			double ang = (double)(pos0 + t) * freq[i];
			float cs = (float)cos(ang), sn = (float)sin(ang);
			for (int h = 0; h < H; h++) {
				float *p = row + h * N + 2 * i;
				float a = p[0], b = p[1];
				p[0] = a * cs - b * sn;
				p[1] = a * sn + b * cs;
			}
		}
	}
}

/* ---- blocks ------------------------------------------------------------------------------- */

/* The channel mix's products for rows [r0, r1) of a chunk of `whole` rows, once ws->xln and
 * ws->dx hold its input and shift difference: x += sigmoid(xr Wr) * (relu(xk Wk)^2 Wv). */
static void channel_mix_rows(const gf_model *m, gf_workspace *ws, const gf_layer *l, int r0,
			     int r1, int whole)
{
	const int C = m->cfg.n_embd, F = m->cfg.dim_ffn, n = r1 - r0;
	const size_t o = (size_t)r0 * C;
	float *xk = ws->mix, *xr = ws->mix + (size_t)n * C;
	if (n < 1)
		return;
	mix_rows(xk, ws->xln + o, ws->dx + o, l->ffn_maa_k, NULL, n, C);
	mix_rows(xr, ws->xln + o, ws->dx + o, l->ffn_maa_r, NULL, n, C);
	matmul_part(m, ws, xk, C, n, whole, &l->ffn_key, false, ws->ffk, F);
	gf_vrelu_sq(ws->ffk, (size_t)n * F);
	matmul_part(m, ws, xr, C, n, whole, &l->ffn_receptance, false, ws->ffr, C);
	gf_vsigmoid(ws->ffr, (size_t)n * C);
	matmul_part(m, ws, ws->ffk, F, n, whole, &l->ffn_value, false, ws->out, C);
	gf_vmul_add(ws->x + o, ws->ffr, ws->out, (size_t)n * C);
}

/* The channel mix of n rows of ws->x whose shift state is *shift (moved to the last row's),
 * its products on the first `rows` of them only. A chunk's rows may be split in two (a
 * pipeline boundary, gf_blocks_split): `whole` is the chunk's row count, and carry, when
 * not NULL, gets the input row before row `rows` as the other part's shift needs it. */
static void channel_mix_part(const gf_model *m, gf_workspace *ws, const gf_layer *l,
			     float *shift, int n, int rows, int whole, float *carry)
{
	const int C = m->cfg.n_embd;
	layernorm_rows(ws->xln, ws->x, n, C, l->ln2_w, l->ln2_b);
	if (carry)
		memcpy(carry, rows ? ws->xln + (size_t)(rows - 1) * C : shift,
		       sizeof(float) * (size_t)C);
	shift_diff(ws->dx, ws->xln, n, C, shift);
	channel_mix_rows(m, ws, l, 0, rows, whole);
}

static void channel_mix(const gf_model *m, gf_workspace *ws, const gf_layer *l, float *shift,
			int n)
{
	channel_mix_part(m, ws, l, shift, n, n, n, NULL);
}

/* One head's WKV-6 recurrence over n tokens: y_i = sum_j r_j S[i][j], then
 * S[i][j] = S[i][j] * decay_j + k_j v_i (bonus u = 0 in Finch-C2). */
static void wkv_head(float *S, const float *r, const float *k, const float *v, const float *decay,
		     float *y, int n, int N, int A)
{
	for (int t = 0; t < n; t++) {
		const size_t o = (size_t)t * A;
		gf_wkv_step(S, r + o, k + o, v + o, decay + o, y + o, N);
	}
}

/* A time mix's products before its recurrence, for k rows whose ln1 output and shift
 * difference are xln and dx [k][C]: receptance r, key k (already scaled by 1 - decay), value
 * v and value2 v2, decay w, each [k][A]. `whole` is the row count of the chunk the rows belong
 * to (the same kernels for a part as for the whole, see linear_part): these products are
 * row-parallel, so a pipeline rank may compute some rows of the next rank's (gf_time_mix_ahead). */
static void tm_project(const gf_model *m, gf_workspace *ws, const gf_layer *l, const float *xln,
		       const float *dx, int k, int whole, float *r, float *kk, float *v, float *v2,
		       float *w)
{
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, A = c->dim_att, Dm = c->lora_maa;
	const size_t kC = (size_t)k * C, kA = (size_t)k * A;

	/* Five data-dependent token-shift mixes from one LoRA: slices r, k, v, w, v2. */
	mix_rows(ws->lora_in, xln, dx, l->maa_x, NULL, k, C);
	matmul(m, ws, ws->lora_in, C, k, &l->maa_w1, false, ws->lora_h, 5 * Dm);
	gf_vtanh(ws->lora_h, (size_t)k * 5 * Dm);
	/* Buffer order r, k, w, v, v2 keeps v and v2 adjacent for one value GEMM. */
	static const int slot[5] = { 0, 1, 3, 2, 4 }; /* slice j -> buffer */
	const float *mu[5] = { l->maa_r, l->maa_k, l->maa_v, l->maa_w, l->maa_v2 };
	for (int j = 0; j < 5; j++) {
		float *dst = ws->mix + (size_t)slot[j] * kC;
		matmul(m, ws, ws->lora_h + j * Dm, 5 * Dm, k, &l->maa_w2[j], false, dst, C);
		mix_rows(dst, xln, dx, mu[j], dst, k, C);
	}
	const float *xr = ws->mix, *xk = ws->mix + kC, *xw = ws->mix + 2 * kC;
	const float *xv = ws->mix + 3 * kC, *xv2 = ws->mix + 4 * kC;

	matmul_part(m, ws, xr, C, k, whole, &l->att_receptance, false, r, A);
	matmul_part(m, ws, xk, C, k, whole, &l->att_key, false, kk, A);
	if (v2 == v + kA) { /* v and v2's linear part */
		matmul_part(m, ws, xv, C, 2 * k, 2 * whole, &l->att_value, false, v, A);
	} else {
		matmul_part(m, ws, xv, C, k, whole, &l->att_value, false, v, A);
		matmul_part(m, ws, xv2, C, k, whole, &l->att_value, false, v2, A);
	}
	matmul(m, ws, xv2, C, k, &l->value2_w1, false, ws->lora_h, c->lora_value2);
	gf_vtanh(ws->lora_h, (size_t)k * c->lora_value2);
	matmul(m, ws, ws->lora_h, c->lora_value2, k, &l->value2_w2, true, v2, A);

	/* w = time_decay + LoRA; decay = exp(-exp(w)); k *= 1 - decay. */
	matmul(m, ws, xw, C, k, &l->decay_w1, false, ws->lora_h, c->lora_decay);
	gf_vtanh(ws->lora_h, (size_t)k * c->lora_decay);
	for (int t = 0; t < k; t++)
		memcpy(w + (size_t)t * A, l->time_decay, sizeof(float) * (size_t)A);
	matmul(m, ws, ws->lora_h, c->lora_decay, k, &l->decay_w2, true, w, A);
	gf_vdecay(w, kk, kA);
}

/* The Finch time mix of n rows of ws->x. Where `ahead` is not NULL, rows [from, n) of its
 * products came computed by the rank before (gf_time_mix_ahead: planes r, k, v, v2, w of
 * n - from rows each) and only rows [0, from) are computed here. */
static void finch_time_mix(const gf_model *m, gf_workspace *ws, const gf_layer *l, float *shift,
			   float *S, int n, int from, const float *ahead)
{
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, A = c->dim_att, N = c->head_size, H = c->n_head;
	const size_t nA = (size_t)n * A;
	float *v = ws->v, *v2 = ws->v + nA;

	layernorm_rows(ws->xln, ws->x, n, C, l->ln1_w, l->ln1_b);
	shift_diff(ws->dx, ws->xln, n, C, shift);
	if (!ahead || from >= n) {
		tm_project(m, ws, l, ws->xln, ws->dx, n, n, ws->r, ws->k, v, v2, ws->w);
	} else {
		tm_project(m, ws, l, ws->xln, ws->dx, from, n, ws->r, ws->k, v, v2, ws->w);
		const size_t o = (size_t)from * A, kA = (size_t)(n - from) * A;
		float *dst[5] = { ws->r + o, ws->k + o, v + o, v2 + o, ws->w + o };
		for (int j = 0; j < 5; j++)
			memcpy(dst[j], ahead + j * kA, sizeof(float) * kA);
	}

	for (int h = 0; h < H; h++)
		wkv_head(S + (size_t)h * N * N, ws->r + h * N, ws->k + h * N, v + h * N,
			 ws->w + h * N, ws->y + h * N, n, N, A);

	add_rows(ws->y, v2, nA);
	layernorm_rows(ws->y, ws->y, n, A, l->ln_x_w, l->ln_x_b);
	matmul(m, ws, ws->y, A, n, &l->att_output, true, ws->x, C); /* x += output(y) */
}

/* Row tok of the embedding, as float32. */
static void emb_row(const gf_model *m, int32_t tok, float *x)
{
	const size_t C = (size_t)m->cfg.n_embd;
	gf_convert_to_f32(m->emb_dtype, (const char *)m->emb + (size_t)tok * C * gf_dtype_size(m->emb_dtype),
			  x, C);
}

static void embed_rows(const gf_model *m, const int32_t *tok, int n, float *x0)
{
	const int C = m->cfg.n_embd;
	for (int t = 0; t < n; t++)
		emb_row(m, tok[t], x0 + (size_t)t * C);
	layernorm_rows(x0, x0, n, C, m->ln0_w, m->ln0_b);
}

static int check_tokens(const gf_model *m, const int32_t *tok, int64_t n)
{
	for (int64_t t = 0; t < n; t++)
		if (tok[t] < 0 || tok[t] >= m->cfg.vocab_size)
			return -EINVAL;
	return 0;
}

int gf_embed(const gf_model *m, const int32_t *tok, int n, float *x)
{
	FLUSH_DENORMALS();
	if (n < 1 || check_tokens(m, tok, n))
		return -EINVAL;
	embed_rows(m, tok, n, x);
	return 0;
}

static int run_blocks(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv_source *src,
		      int64_t p0, int n, int b0, int b1);

int gf_blocks(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv_source *src, float *x,
	      int64_t p0, int n, int b0, int b1)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	if (n < 1 || n > ws->max_chunk || b0 < 0 || b1 > c->n_layer || b0 > b1)
		return -EINVAL;
	if (b1 > c->first_gold && (!src || p0 < 0 || src->n_pos < p0 + n))
		return -EINVAL;
	const size_t bytes = sizeof(float) * (size_t)n * c->n_embd;
	memcpy(ws->x, x, bytes);
	int rc = run_blocks(m, ws, st, src, p0, n, b0, b1);
	memcpy(x, ws->x, bytes);
	return rc;
}

int gf_split_step(const gf_config *c)
{
	/* A row's products do not depend on the rows beside it (gemm.h), and oneDNN's bf16
	 * tasks are 64 rows (dnnl.c): parts of 64 rows keep the whole chunk's bits in every
	 * shape and mode. */
	(void)c;
	return GF_SPLIT_ROWS;
}

/* Block b's channel mix can be shared by the rank that runs b and the next (a pipeline's
 * boundary, moved to balance them): rows [0, rows) here, rows [rows, n) there. */
static bool split_ok(const gf_model *m, int b, int n, int rows)
{
	const gf_layer *l = &m->layers[b];
	const int step = gf_split_step(&m->cfg);
	return step && b >= 0 && b < m->cfg.first_gold && n % step == 0 && rows % step == 0 &&
	       rows >= 0 && rows <= n && l->ffn_key.p && l->ffn_value.p && l->ffn_receptance.p &&
	       l->ln2_w;
}

/* Block b's time-mix products can be computed for rows [from, n) of a chunk by the rank
 * before (gf_time_mix_ahead), the rest by the rank that runs b. */
static bool ahead_ok(const gf_model *m, int b, int n, int from)
{
	const int step = gf_split_step(&m->cfg);
	if (!step || b < 0 || b >= m->cfg.first_gold || n % step || from % step || from < step ||
	    from > n)
		return false;
	const gf_layer *l = &m->layers[b];
	return l->ln1_w && l->maa_x && l->maa_w1.p && l->maa_w2[4].p && l->decay_w1.p &&
	       l->value2_w1.p && l->att_receptance.p && l->att_key.p && l->att_value.p;
}

int gf_blocks_split(const gf_model *m, gf_workspace *ws, gf_state *st, float *x, int64_t p0,
		    int n, int b0, int b1, const gf_split *s)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, N = c->head_size, H = c->n_head;
	if (n < 1 || n > ws->max_chunk || b0 < 0 || b0 >= b1 || b1 > c->first_gold ||
	    b0 < m->block_first || b1 > m->block_end || !split_ok(m, b1 - 1, n, s->keep) ||
	    (s->ahead && !ahead_ok(m, b0, n, s->ahead_from)))
		return -EINVAL;
	(void)p0; /* as gf_blocks takes it: Finch blocks do not use positions */
	const size_t bytes = sizeof(float) * (size_t)n * C;
	memcpy(ws->x, x, bytes);
	for (int b = b0; b < b1; b++) {
		const gf_layer *l = &m->layers[b];
		float *shift = st->shift + (size_t)b * 2 * C;
		const bool given = b == b0 && s->ahead;
		finch_time_mix(m, ws, l, shift, st->wkv + (size_t)b * H * N * N, n,
			       given ? s->ahead_from : n, given ? s->ahead : NULL);
		if (b < b1 - 1)
			channel_mix(m, ws, l, shift + C, n);
		else
			channel_mix_part(m, ws, l, shift + C, n, s->keep, n, s->carry);
	}
	memcpy(x, ws->x, bytes);
	return 0;
}

size_t gf_ahead_floats(const gf_config *c, int rows)
{
	return 5 * (size_t)rows * (size_t)c->dim_att;
}

int gf_time_mix_ahead(const gf_model *m, gf_workspace *ws, int b, const float *x, int n, int from,
		      float *ahead)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int C = c->n_embd;
	if (n < 1 || n > ws->max_chunk || from >= n || !ahead_ok(m, b, n, from))
		return -EINVAL;
	const gf_layer *l = &m->layers[b];
	const int k = n - from;
	const size_t kA = (size_t)k * c->dim_att;
	/* Row from-1 too: the first row's token shift. ws->out holds its normed row. */
	layernorm_rows(ws->xln, x + (size_t)(from - 1) * C, k + 1, C, l->ln1_w, l->ln1_b);
	memcpy(ws->out, ws->xln, sizeof(float) * (size_t)C);
	shift_diff(ws->dx, ws->xln + C, k, C, ws->out);
	tm_project(m, ws, l, ws->xln + C, ws->dx, k, n, ahead, ahead + kA, ahead + 2 * kA,
		   ahead + 3 * kA, ahead + 4 * kA);
	return 0;
}

int gf_channel_mix_rest(const gf_model *m, gf_workspace *ws, int b, float *x, int n, int rows,
			const float *carry)
{
	FLUSH_DENORMALS();
	const int C = m->cfg.n_embd, k = n - rows;
	if (n < 1 || n > ws->max_chunk || !split_ok(m, b, n, rows))
		return -EINVAL;
	if (k == 0)
		return 0;
	float *prev = ws->lora_in; /* the part's shift state, moved along; carry stays as it is */
	memcpy(prev, carry, sizeof(float) * (size_t)C);
	memcpy(ws->x, x + (size_t)rows * C, sizeof(float) * (size_t)k * C);
	channel_mix_part(m, ws, &m->layers[b], prev, k, k, n, NULL);
	memcpy(x + (size_t)rows * C, ws->x, sizeof(float) * (size_t)k * C);
	return 0;
}

void gf_cache_rows(const gf_model *m, gf_workspace *ws, const float *x, int n, float *c_out)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	/* In blocks of GF_SPLIT_ROWS rows: the product is narrow (n_embd/16 columns), and for
	 * such OpenBLAS picks kernels by row count, so rows would get other bits in a part of a
	 * chunk than in the whole (a pipeline sends its first chunk in pieces). */
	for (int r0 = 0; r0 < n; r0 += GF_SPLIT_ROWS) {
		const int k = n - r0 < GF_SPLIT_ROWS ? n - r0 : GF_SPLIT_ROWS;
		matmul(m, ws, x + (size_t)r0 * c->n_embd, c->n_embd, k, &m->w_kv_cache_a, false,
		       c_out + (size_t)r0 * c->ckv_dim, c->ckv_dim);
	}
}

void gf_head(const gf_model *m, gf_workspace *ws, const float *x, int n, float *logits)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	layernorm_rows(ws->xln, x, n, c->n_embd, m->ln_out_w, m->ln_out_b);
	matmul(m, ws, ws->xln, c->n_embd, n, &m->head, false, logits, c->vocab_size);
}

int gf_finch_chunk(const gf_model *m, gf_workspace *ws, gf_state *st, const int32_t *tok,
		   int n, float *x0_out, float *x_out, float *c_out)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int C = c->n_embd;
	if (n < 1 || n > ws->max_chunk)
		return -EINVAL;
	if (gf_embed(m, tok, n, ws->x))
		return -EINVAL;
	if (x0_out)
		memcpy(x0_out, ws->x, sizeof(float) * (size_t)n * C);
	run_blocks(m, ws, st, NULL, 0, n, 0, c->first_gold);
	if (x_out)
		memcpy(x_out, ws->x, sizeof(float) * (size_t)n * C);
	if (c_out)
		gf_cache_rows(m, ws, ws->x, n, c_out);
	return 0;
}

/* ---- GOLD keys and values ------------------------------------------------------------------ */

/* ---- key/value blocks ----------------------------------------------------------------------
 * The layout of gf_kv_block_bytes: per head, keys as a gf_mat of k = N by n = GF_KV_BLOCK and
 * values as one of k = GF_KV_BLOCK by n = N. */

static size_t kv_head_k(const gf_config *c, gf_dtype t)
{
	return (size_t)GF_KV_BLOCK * (size_t)gf_mat_kp(t, c->head_size);
}

static size_t kv_head_v(const gf_config *c)
{
	return (size_t)(c->head_size + GF_PANEL - 1) / GF_PANEL * GF_PANEL * GF_KV_BLOCK;
}

size_t gf_kv_block_bytes(const gf_config *c, gf_dtype t)
{
	const size_t per = kv_head_k(c, t) > kv_head_v(c) ? kv_head_k(c, t) : kv_head_v(c);
	return per * (size_t)c->n_head * gf_dtype_size(t);
}

/* Head h's keys and values of a block holding nb positions, as the matrices of the products
 * S = q . K_h^T and y += P . V_h. */
static void kv_block_mats(const gf_config *c, gf_dtype t, const void *kblock, const void *vblock,
			  int h, int nb, gf_mat *Bk, gf_mat *Bv)
{
	const size_t es = gf_dtype_size(t);
	const size_t per = gf_kv_block_bytes(c, t) / es / (size_t)c->n_head;
	*Bk = (gf_mat){ .p = (const char *)kblock + (size_t)h * per * es, .dtype = t,
			.k = c->head_size, .n = nb, .kp = gf_mat_kp(t, c->head_size) };
	*Bv = (gf_mat){ .p = (const char *)vblock + (size_t)h * per * es, .dtype = t,
			.k = nb, .n = c->head_size, .kp = GF_KV_BLOCK };
}

/* bf16 of f, nearest even (gf_f32_to_bf16's rounding, inline for the loops below). */
static inline uint16_t bf16_round(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40u); /* NaN stays a (quiet) NaN */
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

void gf_kv_block_put(const gf_config *c, gf_dtype t, const float *k, const float *v, int ld,
		     int row0, int n, void *kblock, void *vblock)
{
	const int N = c->head_size, H = c->n_head;
	const size_t per = gf_kv_block_bytes(c, t) / gf_dtype_size(t) / (size_t)H;
	const int kp = gf_mat_kp(t, N);
	for (int h = 0; h < H; h++) {
		const size_t hb = (size_t)h * per;
		for (int i = 0; i < n; i++) {
			const int j = row0 + i, col = j % GF_PANEL; /* the key, its column */
			const float *kr = k + (size_t)i * ld + (size_t)h * N;
			const float *vr = v + (size_t)i * ld + (size_t)h * N;
			/* keys: row d, column j of panel j/64; values: row j, column d of panel d/64 */
			const size_t kb = hb + (size_t)(j / GF_PANEL) * kp * GF_PANEL;
			if (t == GF_DTYPE_BF16) {
				uint16_t *K = (uint16_t *)kblock + kb, *V = (uint16_t *)vblock + hb;
				/* dims 2i and 2i+1 of a key are one 32-bit lane of the panel's row i/2 */
				for (int d = 0; d < N; d++)
					K[(size_t)(d / 2) * 2 * GF_PANEL + (size_t)col * 2 + (d & 1)] =
						bf16_round(kr[d]);
				for (int d = 0; d < N; d++)
					V[(size_t)(d / GF_PANEL) * GF_KV_BLOCK * GF_PANEL +
					  (size_t)(j / 2) * 2 * GF_PANEL + (size_t)(d % GF_PANEL) * 2 + (j & 1)] =
						bf16_round(vr[d]);
			} else {
				float *K = (float *)kblock + kb, *V = (float *)vblock + hb;
				for (int d = 0; d < N; d++)
					K[(size_t)d * GF_PANEL + (size_t)col] = kr[d];
				for (int d0 = 0; d0 < N; d0 += GF_PANEL)
					memcpy(V + (size_t)(d0 / GF_PANEL) * GF_KV_BLOCK * GF_PANEL +
						       (size_t)j * GF_PANEL,
					       vr + d0, sizeof(float) * (size_t)(N - d0 < GF_PANEL ? N - d0 : GF_PANEL));
			}
		}
	}
}

/* Grows kv so it can hold `need` positions; layers are laid out [n_gold][cap / GF_KV_BLOCK]
 * blocks. */
static int kv_reserve(gf_kv *kv, const gf_config *c, int64_t need)
{
	if (need <= kv->cap)
		return 0;
	int64_t cap = kv->cap ? kv->cap : GF_KV_BLOCK;
	while (cap < need)
		cap *= 2;
	const size_t Ck = (size_t)c->ckv_dim, G = (size_t)kv->n_gold;
	const size_t blk = kv->block_floats;
	const size_t nblk = (size_t)cap / GF_KV_BLOCK, oblk = (size_t)kv->cap / GF_KV_BLOCK;
	float *nc = malloc(sizeof(float) * (size_t)cap * Ck);
	int32_t *nt = malloc(sizeof(int32_t) * (size_t)cap);
	float *nk = calloc(nblk * blk * G, sizeof(float));
	float *nv = calloc(nblk * blk * G, sizeof(float));
	if (!nc || !nt || !nk || !nv) {
		free(nc);
		free(nt);
		free(nk);
		free(nv);
		return -ENOMEM;
	}
	if (kv->n_pos) {
		memcpy(nc, kv->c, sizeof(float) * (size_t)kv->n_pos * Ck);
		memcpy(nt, kv->tok, sizeof(int32_t) * (size_t)kv->n_pos);
		for (size_t g = 0; g < G; g++) {
			memcpy(nk + g * nblk * blk, kv->k + g * oblk * blk, sizeof(float) * oblk * blk);
			memcpy(nv + g * nblk * blk, kv->v + g * oblk * blk, sizeof(float) * oblk * blk);
		}
	}
	free(kv->c);
	free(kv->tok);
	free(kv->k);
	free(kv->v);
	kv->c = nc;
	kv->tok = nt;
	kv->k = nk;
	kv->v = nv;
	kv->cap = cap;
	return 0;
}

/* Key stream and rms(x0) of n+1 rows: the position before t0 (zeros at t0 = 0) and t0..t0+n-1.
 * Rows are kc[0..n] [A], xn[0..n] [C]. */
static void key_stream_rows(const gf_model *m, gf_workspace *ws, const float *c_rows,
			    const int32_t *tok_rows, int n, int has_prev, float *kc, float *xn)
{
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, A = c->dim_att, Ck = c->ckv_dim, W = C + Ck;
	const int first = has_prev ? 0 : 1;
	if (!has_prev) {
		memset(kc, 0, sizeof(float) * (size_t)A);
		memset(xn, 0, sizeof(float) * (size_t)C);
	}
	const int rows = n + 1 - first;
	float *cat = ws->e_cat + (size_t)first * W;
	for (int r = 0; r < rows; r++) {
		float *row = cat + (size_t)r * W;
		emb_row(m, tok_rows[r], row);
		layernorm_rows(row, row, 1, C, m->ln0_w, m->ln0_b);
		memcpy(row + C, c_rows + (size_t)r * Ck, sizeof(float) * (size_t)Ck);
		rms_rows(xn + (size_t)(first + r) * C, row, 1, C);
	}
	matmul(m, ws, cat, W, rows, &m->w_kv_cache_b, false, kc + (size_t)first * A, A);
	rms_rows(kc + (size_t)first * A, kc + (size_t)first * A, rows, A);
}

/* Keys and values of GOLD block l for the n positions whose key stream rows are
 * kc_rows[1..n], xn_rows[1..n] (row 0 = the position before). Writes k [n][A], v [n][A]. */
static void expand_layer(const gf_model *m, gf_workspace *ws, const gf_layer *l, int n,
			 int64_t pos0, const float *kc_rows, const float *xn_rows, float *k, float *v)
{
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, A = c->dim_att, Dkv = c->lora_maa_kv;
	const float *xn = xn_rows + C, *kc = kc_rows + A;
	float *dxn = ws->e_dxn, *mk = ws->mix, *mv = ws->mix + (size_t)n * C;
	const size_t nC = (size_t)n * C;

	for (size_t i = 0; i < nC; i++)
		dxn[i] = xn_rows[i] - xn[i];
	mix_rows(ws->lora_in, xn, dxn, l->maa_v_cache, NULL, n, C);
	matmul(m, ws, ws->lora_in, C, n, &l->maa_kv_w1, false, ws->lora_h, 2 * Dkv);
	gf_vtanh(ws->lora_h, (size_t)n * 2 * Dkv);
	matmul(m, ws, ws->lora_h, 2 * Dkv, n, &l->maa_kv_w2[0], false, mk, C);
	matmul(m, ws, ws->lora_h + Dkv, 2 * Dkv, n, &l->maa_kv_w2[1], false, mv, C);

	/* k = kc + (shift(kc) - kc) * (maa_k + mk); k += tanh(k W1) W2; ln_k. */
	for (int t = 0; t < n; t++) {
		const float *cur = kc + (size_t)t * A, *prev = kc_rows + (size_t)t * A;
		const float *mkt = mk + (size_t)t * C;
		float *kt = k + (size_t)t * A;
		for (int i = 0; i < A; i++)
			kt[i] = cur[i] + (prev[i] - cur[i]) * (l->maa_gk[i] + mkt[i]);
	}
	matmul(m, ws, k, A, n, &l->key_w1, false, ws->lora_h, c->lora_key);
	gf_vtanh(ws->lora_h, (size_t)n * c->lora_key);
	matmul(m, ws, ws->lora_h, c->lora_key, n, &l->key_w2, true, k, A);
	layernorm_rows(k, k, n, A, l->ln_k_w, l->ln_k_b);
	if (c->rope_base > 0)
		rope_rows(c, ws->rope_freq, k, n, pos0);

	/* v = xn + dxn * (maa_v + mv); v += tanh(v W1) W2; ln_v. */
	mix_rows(v, xn, dxn, l->maa_gv, mv, n, C);
	matmul(m, ws, v, C, n, &l->value_w1, false, ws->lora_h, c->lora_value);
	gf_vtanh(ws->lora_h, (size_t)n * c->lora_value);
	matmul(m, ws, ws->lora_h, c->lora_value, n, &l->value_w2, true, v, A);
	layernorm_rows(v, v, n, A, l->ln_v_w, l->ln_v_b);
}

int gf_kv_append(const gf_model *m, gf_workspace *ws, gf_kv *kv, const float *c_rows,
		 const int32_t *tok, int64_t n)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int A = c->dim_att, Ck = c->ckv_dim;
	if (n < 0 || check_tokens(m, tok, n))
		return -EINVAL;
	int rc = kv_reserve(kv, c, kv->n_pos + n);
	if (rc)
		return rc;
	memcpy(kv->c + (size_t)kv->n_pos * Ck, c_rows, sizeof(float) * (size_t)n * Ck);
	memcpy(kv->tok + kv->n_pos, tok, sizeof(int32_t) * (size_t)n);
	for (int64_t done = 0; done < n;) {
		const int step = (int)(n - done < ws->max_chunk ? n - done : ws->max_chunk);
		const int64_t t0 = kv->n_pos + done;
		const int has_prev = t0 > 0;
		/* Rows from the position before t0: its c and token are already in kv. */
		key_stream_rows(m, ws, kv->c + (size_t)(t0 - has_prev) * Ck, kv->tok + t0 - has_prev,
				step, has_prev, ws->e_kc, ws->e_xn);
		for (int g = 0; g < kv->n_gold; g++) {
			const int b = c->first_gold + g;
			if (b < m->block_first || b >= m->block_end)
				continue; /* another rank's layer */
			const gf_layer *l = &m->layers[b];
			expand_layer(m, ws, l, step, t0, ws->e_kc, ws->e_xn, ws->ek, ws->ev);
			/* Into the blocks the rows fall in. */
			const size_t blk = kv->block_floats;
			float *kg = kv->k + (size_t)g * (size_t)(kv->cap / GF_KV_BLOCK) * blk;
			float *vg = kv->v + (size_t)g * (size_t)(kv->cap / GF_KV_BLOCK) * blk;
			for (int r = 0; r < step;) {
				const int64_t t = t0 + r;
				const int in = (int)(t % GF_KV_BLOCK);
				const int run = GF_KV_BLOCK - in < step - r ? GF_KV_BLOCK - in : step - r;
				const size_t at = (size_t)(t / GF_KV_BLOCK) * blk;
				gf_kv_block_put(c, GF_DTYPE_F32, ws->ek + (size_t)r * A, ws->ev + (size_t)r * A,
						A, in, run, kg + at, vg + at);
				r += run;
			}
		}
		done += step;
	}
	kv->n_pos += n;
	return 0;
}

size_t gf_key_stream_floats(const gf_config *c, int n)
{
	return (size_t)(n + 1) * (size_t)(c->dim_att + c->n_embd);
}

int gf_key_stream(const gf_model *m, gf_workspace *ws, const float *c, const int32_t *tok,
		  int has_prev, int64_t pos0, int n, float *stream)
{
	FLUSH_DENORMALS();
	const gf_config *cfg = &m->cfg;
	const size_t A = (size_t)cfg->dim_att;
	if (n < 1 || n > GF_KV_BLOCK || (pos0 > 0 && !has_prev) || !m->w_kv_cache_b.p ||
	    check_tokens(m, tok, n + has_prev))
		return -EINVAL;
	key_stream_rows(m, ws, c, tok, n, has_prev, stream, stream + (size_t)(n + 1) * A);
	return 0;
}

int gf_kv_expand(const gf_model *m, gf_workspace *ws, int g, const float *stream, int64_t pos0,
		 int n, float *k, float *v)
{
	FLUSH_DENORMALS();
	const gf_config *cfg = &m->cfg;
	const size_t A = (size_t)cfg->dim_att;
	if (n < 1 || n > GF_KV_BLOCK || g < 0 || g >= cfg->n_layer - cfg->first_gold ||
	    !m->layers[cfg->first_gold + g].key_w1.p)
		return -EINVAL;
	expand_layer(m, ws, &m->layers[cfg->first_gold + g], n, pos0, stream,
		     stream + (size_t)(n + 1) * A, k, v);
	return 0;
}

int gf_kv_rebuild(const gf_model *m, gf_workspace *ws, int g, const float *c,
		  const int32_t *tok, int has_prev, int64_t pos0, int n, float *k, float *v)
{
	FLUSH_DENORMALS();
	const gf_config *cfg = &m->cfg;
	if (n < 1 || n > GF_KV_BLOCK || g < 0 || g >= cfg->n_layer - cfg->first_gold ||
	    (pos0 > 0 && !has_prev) || check_tokens(m, tok, n + has_prev))
		return -EINVAL;
	key_stream_rows(m, ws, c, tok, n, has_prev, ws->e_kc, ws->e_xn);
	expand_layer(m, ws, &m->layers[cfg->first_gold + g], n, pos0, ws->e_kc, ws->e_xn, k, v);
	return 0;
}

/* Pool part `part`'s scores buffer (see the workspace). */
static float *attn_scratch(gf_workspace *ws, int part)
{
	return ws->attn_part + (size_t)ws->max_rows * GF_KV_BLOCK * (size_t)part;
}

void gf_workspace_kv_scratch(gf_workspace *ws, float **k, float **v)
{
	*k = ws->kv_k;
	*v = ws->kv_v;
}

static int ram_get(gf_kv_source *src, gf_workspace *ws, int g, int64_t first, int n,
		   const void **k, const void **v)
{
	const gf_kv *kv = src->user;
	(void)ws;
	if (first < 0 || n < 0 || first + n > kv->n_pos || first % GF_KV_BLOCK)
		return -EINVAL;
	const size_t blk = kv->block_floats;
	const size_t at = ((size_t)g * (size_t)(kv->cap / GF_KV_BLOCK) +
			   (size_t)(first / GF_KV_BLOCK)) * blk;
	*k = kv->k + at;
	*v = kv->v + at;
	return 0;
}

void gf_kv_source_ram(gf_kv_source *src, const gf_kv *kv)
{
	src->n_pos = kv->n_pos;
	src->get = ram_get;
	src->attend = NULL;
	src->user = (void *)kv;
	src->kv_dtype = GF_DTYPE_F32;
}

/* ---- GOLD attention and blocks ------------------------------------------------------------ */

/* One key block's part of the attention, for the heads of one pool part. */
struct attn_job {
	const gf_config *c;
	gf_workspace *ws;
	int isa;
	const void *K, *V;   /* the block's keys and values (gf_kv_block_bytes) */
	gf_dtype dtype;
	const float *q;      /* [n][A] */
	int64_t p0, kb;      /* the queries' first position; the block's first key */
	int n, nb, t_first;  /* queries; keys in the block; first query that sees it */
	float scale;
	float *att_max, *att_sum, *y;
};

/* The online softmax of row s [nb] of query t and head h (keys [0, visible) of the block
 * seen): exponentials in place, the running max and sum moved on; returns the rescale of
 * the query's output so far. Keys past `visible` get weight 0. */
static float softmax_row(float *s, int nb, int visible, float *mx_t, float *sum_t)
{
	float mx = *mx_t;
	for (int j = 0; j < visible; j++)
		mx = s[j] > mx ? s[j] : mx;
	const float rescale = gf_exp(*mx_t - mx);
	const float sum = gf_vexp_shift(s, visible, mx);
	for (int j = visible; j < nb; j++)
		s[j] = 0.0f;
	*sum_t = *sum_t * rescale + sum;
	*mx_t = mx;
	return rescale;
}

/* Pool part `part` takes a contiguous range of heads: heads are independent, so the bits do
 * not depend on how many parts there are. Per head, two products on the engine's kernels
 * over the block as stored (its 16-bit keys and values widen in registers): the scores
 * S = q . K_h^T and, after the softmax, y_h += S . V_h. A decode step's one query streams the
 * block once. */
static void attend_heads(void *arg, int part, int n_parts)
{
	const struct attn_job *j = arg;
	const gf_config *c = j->c;
	const int N = c->head_size, H = c->n_head, A = c->dim_att, nb = j->nb;
	const int nq = j->n - j->t_first;
	const int h0 = (int)((int64_t)H * part / n_parts), h1 = (int)((int64_t)H * (part + 1) / n_parts);
	float *S = attn_scratch(j->ws, part);
	for (int h = h0; h < h1; h++) {
		gf_mat Bk, Bv;
		kv_block_mats(c, j->dtype, j->K, j->V, h, nb, &Bk, &Bv);
		const float *qh = j->q + (size_t)j->t_first * A + (size_t)h * N;
		float *yh = j->y + (size_t)j->t_first * A + (size_t)h * N;
		const bool stream = nq <= DECODE_ROWS;
		gf_gemm_panels(j->isa, &Bk, qh, A, nq, S, nb, false, 0, gf_mat_panels(&Bk), stream);
		for (int i = 0; i < nq; i++) {
			const int t = j->t_first + i;
			float *s = S + (size_t)i * nb;
			for (int k = 0; k < nb; k++)
				s[k] *= j->scale;
			/* Query at p0+t sees keys up to p0+t. */
			int visible = (int)(j->p0 + t - j->kb + 1);
			visible = visible > nb ? nb : visible;
			const float rescale = softmax_row(s, nb, visible, &j->att_max[t * H + h],
							  &j->att_sum[t * H + h]);
			if (rescale != 1.0f)
				for (int d = 0; d < N; d++)
					yh[(size_t)i * A + d] *= rescale;
		}
		gf_gemm_panels(j->isa, &Bv, S, nb, nq, yh, A, true, 0, gf_mat_panels(&Bv), stream);
	}
}

/* The causal softmax attention of n queries at positions p0.. over the keys of blocks
 * [kb0, kb1) (a query at p sees keys up to p), from scratch: per query and head the running
 * max, the denominator and the unnormalised output (a partial, see gf_attn_spans). Key blocks
 * are the outer loop, so a source that rebuilds keys does so once per block; each block's
 * heads are spread over the pool. */
static int attend_span(const gf_model *m, gf_workspace *ws, gf_kv_source *src, int g,
		       const float *q, int64_t p0, int n, int64_t kb0, int64_t kb1,
		       float *att_max, float *att_sum, float *y)
{
	const gf_config *c = &m->cfg;
	const int N = c->head_size, H = c->n_head, A = c->dim_att;
	const int64_t n_keys = p0 + n;
	for (int i = 0; i < n * H; i++) {
		att_max[i] = -INFINITY;
		att_sum[i] = 0.0f;
	}
	memset(y, 0, sizeof(float) * (size_t)n * A);
	const int64_t k_end = kb1 * GF_KV_BLOCK < n_keys ? kb1 * GF_KV_BLOCK : n_keys;
	struct attn_job j = { .c = c, .ws = ws, .isa = m->isa, .q = q, .p0 = p0, .n = n,
			      .scale = 1.0f / sqrtf((float)N), .att_max = att_max,
			      .att_sum = att_sum, .y = y, .dtype = src->kv_dtype };
	for (int64_t kb = kb0 * GF_KV_BLOCK; kb < k_end; kb += GF_KV_BLOCK) {
		j.nb = (int)(n_keys - kb < GF_KV_BLOCK ? n_keys - kb : GF_KV_BLOCK);
		j.kb = kb;
		/* Only queries that see some key of this block take part. */
		j.t_first = kb > p0 ? (int)(kb - p0) : 0;
		int rc = src->get(src, ws, g, kb, j.nb, &j.K, &j.V);
		if (rc)
			return rc;
		const int parts = gf_pool_threads(ws->pool) < H ? gf_pool_threads(ws->pool) : H;
		gf_pool_run_n(ws->pool, attend_heads, &j, parts);
	}
	return 0;
}

/* ---- attention in spans ------------------------------------------------------------------ */

int64_t gf_attn_span_blocks(int64_t n_keys)
{
	const int64_t blocks = (n_keys + GF_KV_BLOCK - 1) / GF_KV_BLOCK;
	return blocks <= GF_ATTN_MAX_SPANS ? 1 : (blocks + GF_ATTN_MAX_SPANS - 1) / GF_ATTN_MAX_SPANS;
}

int gf_attn_n_spans(int64_t n_keys)
{
	const int64_t blocks = (n_keys + GF_KV_BLOCK - 1) / GF_KV_BLOCK, per = gf_attn_span_blocks(n_keys);
	return (int)((blocks + per - 1) / per);
}

size_t gf_attn_partial_floats(const gf_config *c, int n)
{
	return (size_t)n * (size_t)c->n_head * (2 + (size_t)c->head_size);
}

/* acc += part, both as (max, sum, unnormalised y) per query and head. The one merge rule for
 * every path, so that whoever computed a span, the bits come out the same. */
static void merge_partial(const gf_config *c, int n, float *acc_max, float *acc_sum, float *acc_y,
			  const float *p_max, const float *p_sum, const float *p_y)
{
	const int N = c->head_size, H = c->n_head;
	for (int i = 0; i < n * H; i++) {
		if (p_max[i] == -INFINITY)
			continue; /* the query sees no key of this span */
		float *ya = acc_y + (size_t)i * N;
		const float *yp = p_y + (size_t)i * N;
		if (acc_max[i] == -INFINITY) {
			acc_max[i] = p_max[i];
			acc_sum[i] = p_sum[i];
			memcpy(ya, yp, sizeof(float) * (size_t)N);
			continue;
		}
		const float mx = acc_max[i] > p_max[i] ? acc_max[i] : p_max[i];
		const float fa = expf(acc_max[i] - mx), fp = expf(p_max[i] - mx);
		acc_sum[i] = acc_sum[i] * fa + p_sum[i] * fp;
		acc_max[i] = mx;
		for (int d = 0; d < N; d++)
			ya[d] = ya[d] * fa + yp[d] * fp;
	}
}

static void finish_partial(const gf_config *c, int n, const float *acc_sum, const float *acc_y,
			   float *y)
{
	const int N = c->head_size, H = c->n_head;
	for (int i = 0; i < n * H; i++) {
		const float inv = 1.0f / acc_sum[i];
		for (int d = 0; d < N; d++)
			y[(size_t)i * N + d] = acc_y[(size_t)i * N + d] * inv;
	}
}

/* A partial's parts: max [n*H], sum [n*H], y [n*H*N]. */
static void partial_parts(const gf_config *c, int n, float *p, float **mx, float **sum, float **y)
{
	const size_t nh = (size_t)n * (size_t)c->n_head;
	*mx = p;
	*sum = p + nh;
	*y = p + 2 * nh;
}

static int attn_args_ok(const gf_model *m, gf_workspace *ws, int g, int64_t p0, int n)
{
	const gf_config *c = &m->cfg;
	return n >= 1 && n <= ws->max_chunk && p0 >= 0 && g >= 0 &&
	       g < c->n_layer - c->first_gold && m->layers[c->first_gold + g].key_w1.p;
}

int gf_attn_spans(const gf_model *m, gf_workspace *ws, gf_kv_source *src, int g,
		  const float *q, int64_t p0, int n, int s0, int s1, float *partials)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int64_t n_keys = p0 + n, per = gf_attn_span_blocks(n_keys);
	if (!attn_args_ok(m, ws, g, p0, n) || s0 < 0 || s1 > gf_attn_n_spans(n_keys) || s0 > s1 ||
	    src->n_pos < n_keys)
		return -EINVAL;
	const size_t pf = gf_attn_partial_floats(c, n);
	for (int s = s0; s < s1; s++) {
		float *mx, *sum, *y;
		partial_parts(c, n, partials + (size_t)(s - s0) * pf, &mx, &sum, &y);
		int rc = attend_span(m, ws, src, g, q, p0, n, s * per, (s + 1) * per, mx, sum, y);
		if (rc)
			return rc;
	}
	return 0;
}

void gf_attn_acc_init(const gf_config *c, int n, float *acc)
{
	float *mx, *sum, *y;
	partial_parts(c, n, acc, &mx, &sum, &y);
	for (int i = 0; i < n * c->n_head; i++) {
		mx[i] = -INFINITY;
		sum[i] = 0.0f;
	}
	memset(y, 0, sizeof(float) * (size_t)n * (size_t)c->dim_att);
}

void gf_attn_acc_merge(const gf_config *c, int n, float *acc, const float *partial)
{
	FLUSH_DENORMALS();
	float *am, *as, *ay, *pm, *ps, *py;
	partial_parts(c, n, acc, &am, &as, &ay);
	partial_parts(c, n, (float *)partial, &pm, &ps, &py);
	merge_partial(c, n, am, as, ay, pm, ps, py);
}

void gf_attn_acc_finish(const gf_config *c, int n, const float *acc, float *y)
{
	FLUSH_DENORMALS();
	float *am, *as, *ay;
	partial_parts(c, n, (float *)acc, &am, &as, &ay);
	finish_partial(c, n, as, ay, y);
}

/* Causal softmax attention of n queries at positions p0.. over keys 0..p (per query): span
 * by span (gf_attn_spans), each merged in order. q [n][A] in, y [n][A] out. A source may
 * take the whole of it over (src->attend: ranks sharing the spans). */
static int attention(const gf_model *m, gf_workspace *ws, gf_kv_source *src, int g,
		     const float *q, float *y, int64_t p0, int n)
{
	const gf_config *c = &m->cfg;
	if (src->attend)
		return src->attend(src, ws, g, q, p0, n, y);
	const int64_t n_keys = p0 + n, per = gf_attn_span_blocks(n_keys);
	const int spans = gf_attn_n_spans(n_keys);
	const size_t nh = (size_t)n * (size_t)c->n_head;
	for (size_t i = 0; i < nh; i++) {
		ws->att_max[i] = -INFINITY;
		ws->att_sum[i] = 0.0f;
	}
	memset(ws->att_y, 0, sizeof(float) * (size_t)n * (size_t)c->dim_att);
	for (int s = 0; s < spans; s++) {
		int rc = attend_span(m, ws, src, g, q, p0, n, s * per, (s + 1) * per, ws->sp_max,
				     ws->sp_sum, y);
		if (rc)
			return rc;
		merge_partial(c, n, ws->att_max, ws->att_sum, ws->att_y, ws->sp_max, ws->sp_sum, y);
	}
	finish_partial(c, n, ws->att_sum, ws->att_y, y);
	return 0;
}

static int gold_time_mix(const gf_model *m, gf_workspace *ws, const gf_layer *l, int g,
			 float *shift, gf_kv_source *src, int64_t p0, int n)
{
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, A = c->dim_att, Dq = c->lora_maa_q;

	layernorm_rows(ws->xln, ws->x, n, C, l->ln1_w, l->ln1_b);
	shift_diff(ws->dx, ws->xln, n, C, shift);
	mix_rows(ws->lora_in, ws->xln, ws->dx, l->maa_x, NULL, n, C);
	matmul(m, ws, ws->lora_in, C, n, &l->maa_q_w1, false, ws->lora_h, Dq);
	gf_vtanh(ws->lora_h, (size_t)n * Dq);
	matmul(m, ws, ws->lora_h, Dq, n, &l->maa_q_w2, false, ws->mix, C);
	mix_rows(ws->mix, ws->xln, ws->dx, l->maa_q, ws->mix, n, C);
	matmul(m, ws, ws->mix, C, n, &l->att_query, false, ws->q, A);
	layernorm_rows(ws->q, ws->q, n, A, l->ln_q_w, l->ln_q_b);
	if (c->rope_base > 0)
		rope_rows(c, ws->rope_freq, ws->q, n, p0);

	int rc = attention(m, ws, src, g, ws->q, ws->y, p0, n);
	if (rc)
		return rc;
	layernorm_rows(ws->y, ws->y, n, A, l->ln_x_w, l->ln_x_b);
	matmul(m, ws, ws->y, A, n, &l->att_output, true, ws->x, C);
	return 0;
}

/* Blocks [b0, b1) on ws->x: Finch blocks with their recurrent state, GOLD blocks through src
 * at positions p0.. . */
static int run_blocks(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv_source *src,
		      int64_t p0, int n, int b0, int b1)
{
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, N = c->head_size, H = c->n_head;
	for (int b = b0; b < b1; b++) {
		const gf_layer *l = &m->layers[b];
		float *shift = st->shift + (size_t)b * 2 * C;
		if (!l->is_gold) {
			finch_time_mix(m, ws, l, shift, st->wkv + (size_t)b * H * N * N, n, n, NULL);
		} else {
			int rc = gold_time_mix(m, ws, l, b - c->first_gold, shift, src, p0, n);
			if (rc)
				return rc;
		}
		channel_mix(m, ws, l, shift + C, n);
	}
	return 0;
}

int gf_gold_chunk(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv_source *src,
		  const float *x_in, int64_t p0, int n, float *logits, bool last_only)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int C = c->n_embd;
	if (n < 1 || n > ws->max_chunk || p0 < 0 || src->n_pos < p0 + n)
		return -EINVAL;
	memcpy(ws->x, x_in, sizeof(float) * (size_t)n * C);
	int rc = run_blocks(m, ws, st, src, p0, n, c->first_gold, c->n_layer);
	if (rc || !logits)
		return rc;
	const int first = last_only ? n - 1 : 0;
	gf_head(m, ws, ws->x + (size_t)first * C, n - first, logits);
	return 0;
}

/* ---- whole-sequence entry points ---------------------------------------------------------- */

int gf_forward_full(const gf_model *m, const int32_t *tok, int64_t T, float *logits,
		    float *c_out, float *kc_out, float *finch_out, char *err)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, Ck = c->ckv_dim, A = c->dim_att;
	const int chunk = 128;
	gf_workspace *ws = NULL;
	gf_state st = { 0 };
	gf_kv kv = { 0 };
	float *x = NULL, *cc = NULL;
	int rc;
	if (T < 1) {
		if (err)
			snprintf(err, GF_ERR_LEN, "empty input: no tokens to run");
		return -EINVAL;
	}
	for (int64_t t = 0; t < T; t++)
		if (tok[t] < 0 || tok[t] >= c->vocab_size) {
			if (err)
				snprintf(err, GF_ERR_LEN, "token %d at position %lld is outside the vocabulary (0..%d)",
					 tok[t], (long long)t, c->vocab_size - 1);
			return -EINVAL;
		}
	rc = gf_workspace_init(&ws, m, chunk);
	if (!rc)
		rc = gf_state_init(&st, c);
	if (!rc)
		rc = gf_kv_init(&kv, c, T);
	x = malloc(sizeof(float) * (size_t)T * C);
	cc = malloc(sizeof(float) * (size_t)T * Ck);
	if (rc || !x || !cc) {
		rc = rc ? rc : -ENOMEM;
		if (err)
			snprintf(err, GF_ERR_LEN, "out of memory for %lld tokens", (long long)T);
		goto free_all;
	}
	for (int64_t t = 0; t < T; t += chunk) {
		int n = (int)(T - t < chunk ? T - t : chunk);
		gf_finch_chunk(m, ws, &st, tok + t, n, NULL, x + (size_t)t * C, cc + (size_t)t * Ck);
	}
	if ((rc = gf_kv_append(m, ws, &kv, cc, tok, T))) {
		if (err)
			snprintf(err, GF_ERR_LEN, "out of memory expanding keys for %lld tokens", (long long)T);
		goto free_all;
	}
	if (finch_out)
		memcpy(finch_out, x, sizeof(float) * (size_t)T * C);
	if (c_out)
		memcpy(c_out, cc, sizeof(float) * (size_t)T * Ck);
	if (kc_out)
		for (int64_t t = 0; t < T; t += chunk) {
			int n = (int)(T - t < chunk ? T - t : chunk);
			key_stream_rows(m, ws, cc + (size_t)t * Ck, tok + t, n, 0, ws->e_kc, ws->e_xn);
			memcpy(kc_out + (size_t)t * A, ws->e_kc + A, sizeof(float) * (size_t)n * A);
		}
	gf_kv_source src;
	gf_kv_source_ram(&src, &kv);
	for (int64_t t = 0; t < T && !rc; t += chunk) {
		int n = (int)(T - t < chunk ? T - t : chunk);
		rc = gf_gold_chunk(m, ws, &st, &src, x + (size_t)t * C, t, n,
				   logits + (size_t)t * c->vocab_size, false);
	}
free_all:
	free(x);
	free(cc);
	gf_kv_free(&kv);
	gf_state_free(&st);
	gf_workspace_free(ws);
	return rc;
}

void gf_state_push_tail(const gf_config *c, gf_state *st, const float *x, int n)
{
	const int C = c->n_embd, W = gf_config_tail_window(c);
	if (n >= W) {
		memcpy(st->tail, x + (size_t)(n - W) * C, sizeof(float) * (size_t)W * C);
		st->n_tail = W;
		return;
	}
	int keep = st->n_tail + n > W ? W - n : st->n_tail;
	memmove(st->tail, st->tail + (size_t)(st->n_tail - keep) * C, sizeof(float) * (size_t)keep * C);
	memcpy(st->tail + (size_t)keep * C, x, sizeof(float) * (size_t)n * C);
	st->n_tail = keep + n;
}

int gf_gold_tail(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv_source *src,
		 float *logits_last)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int C = c->n_embd;
	if (st->n_tail < 1 || src->n_pos != st->n_pos)
		return -EINVAL;
	/* The GOLD tail: only the last W positions, from zero shift state (DESIGN.md fact 3);
	 * the last position and every GOLD shift state come out exact. */
	for (int b = c->first_gold; b < c->n_layer; b++)
		memset(st->shift + (size_t)b * 2 * C, 0, sizeof(float) * 2 * (size_t)C);
	return gf_gold_chunk(m, ws, st, src, st->tail, st->n_pos - st->n_tail, st->n_tail,
			     logits_last, true);
}

int gf_prefill(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv *kv,
	       const int32_t *tok, int64_t n, float *logits_last)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	const int M = ws->max_chunk;
	int rc;
	if (n < 1 || gf_config_tail_window(c) > M || st->n_pos != kv->n_pos)
		return -EINVAL;
	if (check_tokens(m, tok, n))
		return -EINVAL;
	for (int64_t t = 0; t < n; t += M) {
		const int step = (int)(n - t < M ? n - t : M);
		gf_finch_chunk(m, ws, st, tok + t, step, NULL, ws->fx, ws->fc);
		if ((rc = gf_kv_append(m, ws, kv, ws->fc, tok + t, step)))
			return rc;
		gf_state_push_tail(c, st, ws->fx, step);
		st->n_pos += step;
	}
	gf_kv_source src;
	gf_kv_source_ram(&src, kv);
	return gf_gold_tail(m, ws, st, &src, logits_last);
}

int gf_decode_step(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv *kv, int32_t tok,
		   float *logits)
{
	FLUSH_DENORMALS();
	int rc;
	if (st->n_pos != kv->n_pos)
		return -EINVAL;
	if ((rc = gf_finch_chunk(m, ws, st, &tok, 1, NULL, ws->fx, ws->fc)))
		return rc;
	if ((rc = gf_kv_append(m, ws, kv, ws->fc, &tok, 1)))
		return rc;
	gf_state_push_tail(&m->cfg, st, ws->fx, 1);
	st->n_pos++;
	gf_kv_source src;
	gf_kv_source_ram(&src, kv);
	return gf_gold_chunk(m, ws, st, &src, ws->fx, st->n_pos - 1, 1, logits, false);
}

/* ---- batched decode --------------------------------------------------------------------------
 * One token of each of B sequences: every matrix is multiplied once for all B rows, and each
 * row is one sequence, with its own shift and recurrent state, position and key/value source.
 * A row goes through exactly the operations of gf_decode_step's one row, in the same order: the
 * products' rows do not depend on the rows beside them (gemm.h; ws->decode_rows keeps them on
 * those kernels), the element-wise and row-wise work is per row, the shifts and recurrences per
 * sequence (one-row calls of the same functions), and attention runs per sequence as alone. */

/* shift_diff for rows that are each a sequence's next position: row s's previous row is its
 * state's vector at `off` (then set to row s). */
static void shift_diff_seqs(float *dx, const float *xln, int B, int dim, gf_state *const *st,
			    size_t off)
{
	for (int s = 0; s < B; s++)
		shift_diff(dx + (size_t)s * dim, xln + (size_t)s * dim, 1, dim, st[s]->shift + off);
}

static void finch_time_mix_seqs(const gf_model *m, gf_workspace *ws, int b, gf_state *const *st,
				int B)
{
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, A = c->dim_att, N = c->head_size, H = c->n_head;
	const gf_layer *l = &m->layers[b];
	const size_t BA = (size_t)B * A;
	float *v = ws->v, *v2 = ws->v + BA;

	layernorm_rows(ws->xln, ws->x, B, C, l->ln1_w, l->ln1_b);
	shift_diff_seqs(ws->dx, ws->xln, B, C, st, (size_t)b * 2 * C);
	tm_project(m, ws, l, ws->xln, ws->dx, B, B, ws->r, ws->k, v, v2, ws->w);
	for (int s = 0; s < B; s++) {
		float *S = st[s]->wkv + (size_t)b * H * N * N;
		const size_t o = (size_t)s * A;
		for (int h = 0; h < H; h++)
			wkv_head(S + (size_t)h * N * N, ws->r + o + h * N, ws->k + o + h * N,
				 v + o + h * N, ws->w + o + h * N, ws->y + o + h * N, 1, N, A);
	}
	add_rows(ws->y, v2, BA);
	layernorm_rows(ws->y, ws->y, B, A, l->ln_x_w, l->ln_x_b);
	matmul(m, ws, ws->y, A, B, &l->att_output, true, ws->x, C);
}

static void channel_mix_seqs(const gf_model *m, gf_workspace *ws, int b, gf_state *const *st,
			     int B)
{
	const int C = m->cfg.n_embd;
	const gf_layer *l = &m->layers[b];
	layernorm_rows(ws->xln, ws->x, B, C, l->ln2_w, l->ln2_b);
	shift_diff_seqs(ws->dx, ws->xln, B, C, st, (size_t)b * 2 * C + C);
	channel_mix_rows(m, ws, l, 0, B, B);
}

/* Row s attends at position st[s]->n_pos - 1 through src[s]. A row whose attention failed
 * (rc[s] != 0) is left out of every later layer's attention (its output row zeroed), so the
 * other rows go on. */
static void gold_time_mix_seqs(const gf_model *m, gf_workspace *ws, int b, gf_state *const *st,
			       gf_kv_source *const *src, int B, int *rc)
{
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, A = c->dim_att, Dq = c->lora_maa_q;
	const gf_layer *l = &m->layers[b];

	layernorm_rows(ws->xln, ws->x, B, C, l->ln1_w, l->ln1_b);
	shift_diff_seqs(ws->dx, ws->xln, B, C, st, (size_t)b * 2 * C);
	mix_rows(ws->lora_in, ws->xln, ws->dx, l->maa_x, NULL, B, C);
	matmul(m, ws, ws->lora_in, C, B, &l->maa_q_w1, false, ws->lora_h, Dq);
	gf_vtanh(ws->lora_h, (size_t)B * Dq);
	matmul(m, ws, ws->lora_h, Dq, B, &l->maa_q_w2, false, ws->mix, C);
	mix_rows(ws->mix, ws->xln, ws->dx, l->maa_q, ws->mix, B, C);
	matmul(m, ws, ws->mix, C, B, &l->att_query, false, ws->q, A);
	layernorm_rows(ws->q, ws->q, B, A, l->ln_q_w, l->ln_q_b);
	if (c->rope_base > 0)
		for (int s = 0; s < B; s++)
			rope_rows(c, ws->rope_freq, ws->q + (size_t)s * A, 1, st[s]->n_pos - 1);

	ws->decode_rows = false; /* a source's rebuilds multiply as for the sequence alone */
	for (int s = 0; s < B; s++) {
		float *y = ws->y + (size_t)s * A;
		if (!rc[s])
			rc[s] = attention(m, ws, src[s], b - c->first_gold, ws->q + (size_t)s * A, y,
					  st[s]->n_pos - 1, 1);
		if (rc[s])
			memset(y, 0, sizeof(float) * (size_t)A);
	}
	ws->decode_rows = true;
	layernorm_rows(ws->y, ws->y, B, A, l->ln_x_w, l->ln_x_b);
	matmul(m, ws, ws->y, A, B, &l->att_output, true, ws->x, C);
}

/* -EINVAL unless 1 <= B <= the workspace's rows and no state (or kv) is given twice. */
static int batch_ok(const gf_workspace *ws, void *const *p, int B)
{
	if (B < 1 || B > ws->max_chunk)
		return -EINVAL;
	for (int i = 0; i < B; i++) {
		if (!p[i])
			return -EINVAL;
		for (int j = 0; j < i; j++)
			if (p[i] == p[j])
				return -EINVAL;
	}
	return 0;
}

int gf_finch_batch(const gf_model *m, gf_workspace *ws, gf_state *const *st, const int32_t *tok,
		   int B, float *x_out, float *c_out)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	if (batch_ok(ws, (void *const *)st, B) || check_tokens(m, tok, B))
		return -EINVAL;
	embed_rows(m, tok, B, ws->x);
	ws->decode_rows = true;
	for (int b = 0; b < c->first_gold; b++) {
		finch_time_mix_seqs(m, ws, b, st, B);
		channel_mix_seqs(m, ws, b, st, B);
	}
	if (x_out)
		memcpy(x_out, ws->x, sizeof(float) * (size_t)B * c->n_embd);
	if (c_out)
		gf_cache_rows(m, ws, ws->x, B, c_out);
	ws->decode_rows = false;
	return 0;
}

int gf_gold_batch(const gf_model *m, gf_workspace *ws, gf_state *const *st,
		  gf_kv_source *const *src, const float *x_in, int B, float *logits, int *rcs)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	if (batch_ok(ws, (void *const *)st, B))
		return -EINVAL;
	int *rc = rcs ? rcs : ws->seq_rc;
	bool bad = false;
	for (int s = 0; s < B; s++)
		bad |= !src[s] || st[s]->n_pos < 1 || src[s]->n_pos < st[s]->n_pos;
	for (int s = 0; s < B; s++)
		rc[s] = bad ? -EINVAL : 0; /* refused: no row ran */
	if (bad)
		return -EINVAL;
	memcpy(ws->x, x_in, sizeof(float) * (size_t)B * c->n_embd);
	ws->decode_rows = true;
	for (int b = c->first_gold; b < c->n_layer; b++) {
		gold_time_mix_seqs(m, ws, b, st, src, B, rc);
		channel_mix_seqs(m, ws, b, st, B);
	}
	if (logits)
		gf_head(m, ws, ws->x, B, logits);
	ws->decode_rows = false;
	for (int s = 0; s < B; s++)
		if (rc[s])
			return rc[s];
	return 0;
}

int gf_decode_batch(const gf_model *m, gf_workspace *ws, gf_state *const *st, gf_kv *const *kv,
		    const int32_t *tok, int B, float *logits)
{
	FLUSH_DENORMALS();
	const gf_config *c = &m->cfg;
	int rc;
	if (batch_ok(ws, (void *const *)st, B) || batch_ok(ws, (void *const *)kv, B))
		return -EINVAL;
	for (int s = 0; s < B; s++)
		if (st[s]->n_pos != kv[s]->n_pos)
			return -EINVAL;
	if ((rc = gf_finch_batch(m, ws, st, tok, B, ws->fx, ws->fc)))
		return rc;
	/* Each sequence's cache row, as gf_decode_step appends it; on an error the sequences
	 * before it have advanced, as a step that fails leaves its sequence. */
	for (int s = 0; s < B; s++) {
		if ((rc = gf_kv_append(m, ws, kv[s], ws->fc + (size_t)s * c->ckv_dim, &tok[s], 1)))
			return rc;
		gf_state_push_tail(c, st[s], ws->fx + (size_t)s * c->n_embd, 1);
		st[s]->n_pos++;
		gf_kv_source_ram(&ws->seq_src[s], kv[s]);
		ws->seq_srcp[s] = &ws->seq_src[s];
	}
	return gf_gold_batch(m, ws, st, ws->seq_srcp, ws->fx, B, logits, NULL);
}
