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

float gf_exp(float x)
{
	return exp_approx(x);
}

HOT float gf_vexp_shift(float *s, int n, float shift)
{
	float acc[LANES] = { 0 };
	int i = 0;
	for (; i + LANES <= n; i += LANES)
		for (int u = 0; u < LANES; u++) {
			s[i + u] = exp_approx(s[i + u] - shift);
			acc[u] += s[i + u];
		}
	float sum = 0.0f;
	for (; i < n; i++) {
		s[i] = exp_approx(s[i] - shift);
		sum += s[i];
	}
	for (int u = 0; u < LANES; u++)
		sum += acc[u];
	return sum;
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
