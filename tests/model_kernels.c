/*
 * model_kernels — the matrix kernels of model/gemm.h and the bf16 helpers of vecmath.h.
 *
 * For every packed type (f32, f16, bf16) and shapes of every kind (k odd and even, below and
 * above the kernels' k block, n a multiple of the panel or not, 1 to 33 rows), with and without
 * accumulating into y:
 *   - every element is within float rounding of a double-precision sum of the same stored
 *     weights (a wrong layout or a lost tail is far outside it);
 *   - the AVX-512, AVX2 and scalar kernels give the same bits (each runs where this CPU has
 *     it; the scalar one everywhere): an output is one fused multiply-add chain in k order;
 *   - a row's bits do not depend on the other rows (one call for all rows against one call
 *     per row), nor on the panels a call covers (every panel on its own);
 *   - f32, and f16 / bf16 widened: a matrix of bf16-representable values packed as f32 and as
 *     bf16 gives the same bits (widening is exact).
 * A LoRA matrix packed from [k][n] equals its transpose packed from [n][k].
 * Exit 0 pass, 1 fail.
 */
#include "gemm.h"
#include "test_util.h"
#include "vecmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static float rnd(uint64_t *s)
{
	*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
	return (float)((*s >> 40) & 0xffffff) / (float)0x1000000 - 0.5f;
}

static float as_stored(gf_dtype t, float f)
{
	if (t == GF_DTYPE_BF16)
		return gf_bf16_to_f32(gf_f32_to_bf16(f));
	if (t == GF_DTYPE_F16)
		return gf_f16_to_f32(gf_f32_to_f16(f));
	return f;
}

/* W [n][k] (an nn.Linear weight) in type t's values, kept as float for the reference. */
static void make_weights(uint64_t *s, gf_dtype t, int k, int n, float *wf, void *raw)
{
	for (size_t i = 0; i < (size_t)k * n; i++) {
		wf[i] = as_stored(t, rnd(s));
		if (t == GF_DTYPE_F32)
			((float *)raw)[i] = wf[i];
		else if (t == GF_DTYPE_BF16)
			((uint16_t *)raw)[i] = gf_f32_to_bf16(wf[i]);
		else
			((uint16_t *)raw)[i] = gf_f32_to_f16(wf[i]);
	}
}

static void one_shape(gf_dtype t, int k, int n, int m, bool acc, uint64_t *s)
{
	const int ldx = k + 3, ldy = n + 5;
	float *wf = malloc(sizeof(float) * (size_t)k * n);
	void *raw = malloc(sizeof(float) * (size_t)k * n);
	void *pk = aligned_alloc(64, (gf_mat_bytes(t, k, n) + 63) & ~(size_t)63);
	float *x = malloc(sizeof(float) * (size_t)m * ldx);
	float *y0 = malloc(sizeof(float) * (size_t)m * ldy), *y[3], *yr, *yp;
	for (int i = 0; i < 3; i++)
		y[i] = malloc(sizeof(float) * (size_t)m * ldy);
	yr = malloc(sizeof(float) * (size_t)m * ldy);
	yp = malloc(sizeof(float) * (size_t)m * ldy);
	make_weights(s, t, k, n, wf, raw);
	for (int i = 0; i < m * ldx; i++)
		x[i] = rnd(s);
	for (int i = 0; i < m * ldy; i++)
		y0[i] = rnd(s);
	gf_mat B;
	gf_mat_pack(&B, pk, t, raw, t, k, n, true);
	const int isa = gf_isa_detect(), panels = gf_mat_panels(&B);
	for (int i = 0; i <= isa; i++) {
		memcpy(y[i], y0, sizeof(float) * (size_t)m * ldy);
		gf_gemm_panels(i, &B, x, ldx, m, y[i], ldy, acc, 0, panels, i == 1);
	}
	/* Against the exact sum, relative to the sum of |terms|. */
	double worst = 0;
	for (int r = 0; r < m; r++)
		for (int c = 0; c < n; c++) {
			double sum = acc ? y0[(size_t)r * ldy + c] : 0, mag = fabs(sum);
			for (int kk = 0; kk < k; kk++) {
				const double p = (double)x[(size_t)r * ldx + kk] * wf[(size_t)c * k + kk];
				sum += p;
				mag += fabs(p);
			}
			const double e = fabs(y[0][(size_t)r * ldy + c] - sum) / (mag + 1e-30);
			worst = e > worst ? e : worst;
		}
	CHECK(worst < 1e-5, "%s k %d n %d m %d acc %d: relative error %.3g", gf_dtype_name(t), k, n,
	      m, acc, worst);
	for (int i = 1; i <= isa; i++)
		CHECK(!memcmp(y[0], y[i], sizeof(float) * (size_t)m * ldy),
		      "%s k %d n %d m %d acc %d: %s kernels differ from scalar", gf_dtype_name(t), k, n,
		      m, acc, gf_isa_name(i));
	/* Row by row and panel by panel, on the best kernels: the same bits. */
	memcpy(yr, y0, sizeof(float) * (size_t)m * ldy);
	memcpy(yp, y0, sizeof(float) * (size_t)m * ldy);
	for (int r = 0; r < m; r++)
		gf_gemm_panels(isa, &B, x + (size_t)r * ldx, ldx, 1, yr + (size_t)r * ldy, ldy, acc, 0,
			       panels, true);
	for (int p = panels - 1; p >= 0; p--)
		gf_gemm_panels(isa, &B, x, ldx, m, yp, ldy, acc, p, p + 1, false);
	CHECK(!memcmp(y[isa], yr, sizeof(float) * (size_t)m * ldy),
	      "%s k %d n %d m %d: rows alone differ from the rows together", gf_dtype_name(t), k, n,
	      m);
	CHECK(!memcmp(y[isa], yp, sizeof(float) * (size_t)m * ldy),
	      "%s k %d n %d m %d: panels alone differ from the whole", gf_dtype_name(t), k, n, m);
	/* The stored values as f32: widening is exact, so the same bits. */
	if (t != GF_DTYPE_F32) {
		void *pf = aligned_alloc(64, (gf_mat_bytes(GF_DTYPE_F32, k, n) + 63) & ~(size_t)63);
		gf_mat F;
		gf_mat_pack(&F, pf, GF_DTYPE_F32, wf, GF_DTYPE_F32, k, n, true);
		memcpy(yr, y0, sizeof(float) * (size_t)m * ldy);
		gf_gemm_panels(isa, &F, x, ldx, m, yr, ldy, acc, 0, panels, false);
		CHECK(!memcmp(y[isa], yr, sizeof(float) * (size_t)m * ldy),
		      "%s k %d n %d m %d: differs from its values packed as f32", gf_dtype_name(t), k,
		      n, m);
		free(pf);
	}
	free(wf), free(raw), free(pk), free(x), free(y0), free(yr), free(yp);
	for (int i = 0; i < 3; i++)
		free(y[i]);
}

/* A LoRA matrix is packed from [k][n]: the same matrix as its transpose packed from [n][k]. */
static void lora_layout(uint64_t *s)
{
	const int k = 37, n = 70;
	float *w = malloc(sizeof(float) * k * n), *wt = malloc(sizeof(float) * k * n);
	for (int i = 0; i < k * n; i++)
		w[i] = rnd(s);
	for (int a = 0; a < k; a++)
		for (int b = 0; b < n; b++)
			wt[(size_t)b * k + a] = w[(size_t)a * n + b];
	const gf_dtype types[] = { GF_DTYPE_F32, GF_DTYPE_BF16 };
	for (int i = 0; i < 2; i++) {
		const size_t bytes = gf_mat_bytes(types[i], k, n);
		void *p1 = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
		void *p2 = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
		gf_mat B1, B2;
		gf_mat_pack(&B1, p1, types[i], w, GF_DTYPE_F32, k, n, false);
		gf_mat_pack(&B2, p2, types[i], wt, GF_DTYPE_F32, k, n, true);
		CHECK(!memcmp(p1, p2, bytes), "%s: [k][n] and [n][k] packs differ",
		      gf_dtype_name(types[i]));
		free(p1), free(p2);
	}
	free(w), free(wt);
}

int main(void)
{
	uint64_t s = 0x243f6a8885a308d3ull;
	const gf_dtype types[] = { GF_DTYPE_F32, GF_DTYPE_F16, GF_DTYPE_BF16 };
	const int ks[] = { 1, 2, 7, 32, 64, 251, 768, 1031, 2200 };
	const int ns[] = { 1, 48, 64, 65, 130, 192 };
	/* Up to 6 rows (4 for bf16) is one pass per panel with the whole k; more rows take the
	 * prefill path (k blocks of 1024, rows in tiles): 16 and 33 rows, the batched decode's
	 * sizes, must give each row the bits of the row alone. */
	const int ms[] = { 1, 2, 3, 4, 5, 6, 7, 13, 16, 33 };
	int shapes = 0;
	printf("kernels on this CPU: up to %s\n", gf_isa_name(gf_isa_detect()));
	for (int ti = 0; ti < 3; ti++)
		for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++)
			for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
				/* Every row count on the small shapes, a few on the large. */
				static const int few[] = { 0, 6, 9 }; /* 1, 7 and 33 rows */
				const bool large = ks[ki] * ns[ni] > 100000;
				const size_t nm = large ? 3 : sizeof(ms) / sizeof(ms[0]);
				for (size_t mi = 0; mi < nm; mi++, shapes++)
					one_shape(types[ti], ks[ki], ns[ni], ms[large ? few[mi] : (int)mi],
						  (ks[ki] + mi) % 2 == 0, &s);
			}
	lora_layout(&s);
	printf("%d shapes x %d instruction sets and the layouts: %s\n", shapes,
	       gf_isa_detect() + 1, test_failures ? "FAIL" : "ok");
	return test_failures != 0;
}
