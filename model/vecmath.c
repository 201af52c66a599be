/*
 * vecmath.c — element-wise kernels; see vecmath.h.
 *
 * libm's expf/tanhf/expm1f are scalar calls; at the chunk sizes of a prefill they cost a
 * tenth of the time of the GEMMs they sit between. These versions are branch-free loops the
 * compiler vectorises, accurate to a few ulp (far inside the 2e-5 the references allow).
 * Each hot function is compiled three times (x86-64-v4 = AVX-512, AVX2, baseline) and the
 * loader picks the one this CPU runs, so a CPU without AVX-512 is never given AVX-512 code.
 */
#include "vecmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define HOT __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define HOT
#endif

/* Independent partial sums: vectorisable without -ffast-math, and more accurate than one
 * running sum. */
#define LANES 16

/* e^x for x in [-87, 88]: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial,
 * 2^n put straight into the exponent bits. Relative error below 2e-7. */
static inline float exp_approx(float x)
{
	x = x < -87.0f ? -87.0f : x;
	x = x > 88.0f ? 88.0f : x;
	/* Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits. */
	const float shifter = 12582912.0f;
	float t = x * 1.44269504088896341f + shifter;
	float fn = t - shifter;
	int32_t n;
	memcpy(&n, &t, sizeof(n));
	n -= 0x4b400000;
	float r = x - fn * 0.693145751953125f - fn * 1.428606765330187e-06f;
	float p = 1.0f / 720.0f;
	p = p * r + 1.0f / 120.0f;
	p = p * r + 1.0f / 24.0f;
	p = p * r + 1.0f / 6.0f;
	p = p * r + 0.5f;
	p = p * r + 1.0f;
	p = p * r + 1.0f;
	/* Unsigned: a NaN input (a damaged checkpoint) gives a NaN out, not a signed-shift UB. */
	uint32_t bits = (uint32_t)(n + 127) << 23;
	float scale;
	memcpy(&scale, &bits, sizeof(scale));
	return p * scale;
}

/* 1 - e^-y for y >= 0 without cancellation: a series below 0.35, the direct form above. */
static inline float one_minus_exp_neg(float y)
{
	float series = 1.0f / 40320.0f;
	series = series * -y + 1.0f / 5040.0f;
	series = series * -y + 1.0f / 720.0f;
	series = series * -y + 1.0f / 120.0f;
	series = series * -y + 1.0f / 24.0f;
	series = series * -y + 1.0f / 6.0f;
	series = series * -y + 0.5f;
	series = series * -y + 1.0f;
	series *= y; /* y - y^2/2 + y^3/6 - ... */
	float direct = 1.0f - exp_approx(-y);
	return y < 0.35f ? series : direct;
}

HOT float gf_vsum(const float *x, int n)
{
	float acc[LANES] = { 0 };
	int i = 0;
	for (; i + LANES <= n; i += LANES)
		for (int u = 0; u < LANES; u++)
			acc[u] += x[i + u];
	float s = 0.0f;
	for (; i < n; i++)
		s += x[i];
	for (int u = 0; u < LANES; u++)
		s += acc[u];
	return s;
}

HOT float gf_vsumsqdev(const float *x, int n, float mean)
{
	float acc[LANES] = { 0 };
	int i = 0;
	for (; i + LANES <= n; i += LANES)
		for (int u = 0; u < LANES; u++) {
			float d = x[i + u] - mean;
			acc[u] += d * d;
		}
	float s = 0.0f;
	for (; i < n; i++)
		s += (x[i] - mean) * (x[i] - mean);
	for (int u = 0; u < LANES; u++)
		s += acc[u];
	return s;
}

/* tanh(x) = 1 - 2 / (e^2x + 1), odd; |x| > 9 is +-1 in float. Absolute error < 2e-7. */
HOT void gf_vtanh(float *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		float a = fabsf(x[i]);
		a = a > 9.0f ? 9.0f : a;
		x[i] = copysignf(1.0f - 2.0f / (exp_approx(2.0f * a) + 1.0f), x[i]);
	}
}

HOT void gf_vsigmoid(float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		x[i] = 1.0f / (1.0f + exp_approx(-x[i]));
}

HOT void gf_vrelu_sq(float *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		float r = x[i] > 0.0f ? x[i] : 0.0f;
		x[i] = r * r;
	}
}

HOT void gf_vmul_add(float *x, const float *a, const float *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		x[i] += a[i] * b[i];
}

HOT void gf_vdecay(float *w, float *k, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		float e = exp_approx(w[i]);
		w[i] = exp_approx(-e);
		k[i] *= one_minus_exp_neg(e);
	}
}

HOT void gf_wkv_step(float *S, const float *r, const float *k, const float *v,
		     const float *decay, float *y, int N)
{
	for (int i = 0; i < N; i++) {
		float *s = S + (size_t)i * N;
		const float vi = v[i];
		float acc[LANES] = { 0 };
		int j = 0;
		for (; j + LANES <= N; j += LANES)
			for (int u = 0; u < LANES; u++) {
				float sj = s[j + u];
				acc[u] += r[j + u] * sj;
				s[j + u] = sj * decay[j + u] + k[j + u] * vi;
			}
		float sum = 0.0f;
		for (; j < N; j++) {
			sum += r[j] * s[j];
			s[j] = s[j] * decay[j] + k[j] * vi;
		}
		for (int u = 0; u < LANES; u++)
			sum += acc[u];
		y[i] = sum;
	}
}

HOT float gf_vdot(const float *restrict a, const float *restrict b, int n)
{
	float acc[LANES] = { 0 };
	int i = 0;
	for (; i + LANES <= n; i += LANES)
		for (int u = 0; u < LANES; u++)
			acc[u] += a[i + u] * b[i + u];
	float s = 0.0f;
	for (; i < n; i++)
		s += a[i] * b[i];
	for (int u = 0; u < LANES; u++)
		s += acc[u];
	return s;
}

HOT void gf_vaxpy(float *restrict y, float a, const float *restrict x, int n)
{
	for (int i = 0; i < n; i++)
		y[i] += a * x[i];
}

/* One query over a block of keys, every head at once: S[h][j] = scale * K[j]_h . q_h. Each key
 * row (all heads, A floats) is read once and in order; a per-head loop would stride over the
 * rows H times, at a fraction of the read bandwidth. */
HOT void gf_attn_scores(const float *restrict K, int ld, int nb, const float *restrict q, int H,
			int N, float scale, float *restrict S)
{
	for (int j = 0; j < nb; j++) {
		const float *kr = K + (size_t)j * ld;
		for (int h = 0; h < H; h++) {
			const float *kh = kr + (size_t)h * N, *qh = q + (size_t)h * N;
			float acc[LANES] = { 0 };
			int d = 0;
			for (; d + LANES <= N; d += LANES)
				for (int u = 0; u < LANES; u++)
					acc[u] += kh[d + u] * qh[d + u];
			float s = 0.0f;
			for (; d < N; d++)
				s += kh[d] * qh[d];
			for (int u = 0; u < LANES; u++)
				s += acc[u];
			S[(size_t)h * nb + j] = scale * s;
		}
	}
}

/* y_h += sum over j of P[h][j] * V[j]_h, every head at once, each value row read once. */
HOT void gf_attn_accum(const float *restrict V, int ld, int nb, const float *restrict P, int H,
		       int N, float *restrict y)
{
	for (int j = 0; j < nb; j++) {
		const float *vr = V + (size_t)j * ld;
		for (int h = 0; h < H; h++) {
			const float p = P[(size_t)h * nb + j];
			const float *vh = vr + (size_t)h * N;
			float *yh = y + (size_t)h * N;
			for (int d = 0; d < N; d++)
				yh[d] += p * vh[d];
		}
	}
}

static inline float widen_bf16(uint16_t h)
{
	const uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* Nearest even on the bits: add half an ulp of bf16 (minus one when the kept part is even),
 * then truncate. NaNs stay NaNs (quiet bit set); infinities and overflow to infinity are
 * what rounding gives. Branch-free, so it vectorises, and every CPU gets the same bits. */
HOT void gf_round_bf16(const float *src, uint16_t *dst, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, &src[i], sizeof(u));
		const uint32_t nan = (u & 0x7fffffffu) > 0x7f800000u;
		const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
		dst[i] = (uint16_t)(nan ? (u >> 16) | 0x40u : r);
	}
}

HOT void gf_widen_bf16_rows(const uint16_t *restrict src, int ld, int rows, int cols,
			    float *restrict dst)
{
	for (int r = 0; r < rows; r++)
		for (int c = 0; c < cols; c++)
			dst[(size_t)r * cols + c] = widen_bf16(src[(size_t)r * ld + c]);
}

HOT void gf_attn_scores_bf16(const uint16_t *restrict K, int ld, int nb, const float *restrict q,
			     int H, int N, float scale, float *restrict S)
{
	for (int j = 0; j < nb; j++) {
		const uint16_t *kr = K + (size_t)j * ld;
		for (int h = 0; h < H; h++) {
			const uint16_t *kh = kr + (size_t)h * N;
			const float *qh = q + (size_t)h * N;
			float acc[LANES] = { 0 };
			int d = 0;
			for (; d + LANES <= N; d += LANES)
				for (int u = 0; u < LANES; u++)
					acc[u] += widen_bf16(kh[d + u]) * qh[d + u];
			float s = 0.0f;
			for (; d < N; d++)
				s += widen_bf16(kh[d]) * qh[d];
			for (int u = 0; u < LANES; u++)
				s += acc[u];
			S[(size_t)h * nb + j] = scale * s;
		}
	}
}

HOT void gf_attn_accum_bf16(const uint16_t *restrict V, int ld, int nb, const float *restrict P,
			    int H, int N, float *restrict y)
{
	for (int j = 0; j < nb; j++) {
		const uint16_t *vr = V + (size_t)j * ld;
		for (int h = 0; h < H; h++) {
			const float p = P[(size_t)h * nb + j];
			const uint16_t *vh = vr + (size_t)h * N;
			float *yh = y + (size_t)h * N;
			for (int d = 0; d < N; d++)
				yh[d] += p * widen_bf16(vh[d]);
		}
	}
}
