/*
 * model_vecmath — the decode path's matrix-vector kernels against a double-precision sum.
 *
 * gf_gemv_cols (a LoRA matrix [in][out]) at the shapes LoRA has (out 32, 64, 160, C) and odd
 * ones (column counts that are not a multiple of 16), beta 0, 1 and 0.5, every column within
 * float rounding of the exact sum; the same product cut into column ranges of any multiple of
 * 16 (as the decode pool cuts it) must give the same bits as the whole. gf_gemv_rows likewise
 * for a few input rows. Exit 0 pass, 1 fail.
 */
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

/* Largest |y - exact| over the columns, relative to the sum of |terms| (the error bound's
 * scale), so that cancellation does not make a correct kernel look wrong. */
static double cols_err(const float *W, int in, int out, const float *x, float beta,
		       const float *y0, const float *y)
{
	double worst = 0.0;
	for (int o = 0; o < out; o++) {
		double s = (double)beta * y0[o], mag = fabs((double)beta * y0[o]);
		for (int i = 0; i < in; i++) {
			s += (double)x[i] * W[(size_t)i * out + o];
			mag += fabs((double)x[i] * W[(size_t)i * out + o]);
		}
		double e = fabs(y[o] - s) / (mag + 1e-30);
		worst = e > worst ? e : worst;
	}
	return worst;
}

static void test_cols(int in, int out, uint64_t *seed)
{
	float *W = malloc(sizeof(float) * (size_t)in * out), *x = malloc(sizeof(float) * in);
	float *y0 = malloc(sizeof(float) * out), *y = malloc(sizeof(float) * out);
	float *parts = malloc(sizeof(float) * out);
	for (size_t i = 0; i < (size_t)in * out; i++)
		W[i] = rnd(seed);
	for (int i = 0; i < in; i++)
		x[i] = rnd(seed);
	for (int o = 0; o < out; o++)
		y0[o] = rnd(seed);
	const float betas[] = { 0.0f, 1.0f, 0.5f };
	for (int b = 0; b < 3; b++) {
		memcpy(y, y0, sizeof(float) * out);
		gf_gemv_cols(W, out, in, out, x, betas[b], y);
		double e = cols_err(W, in, out, x, betas[b], y0, y);
		CHECK(e < 1e-5, "gemv_cols %dx%d beta %g: relative error %.3g", in, out, betas[b], e);
		/* Column ranges of 16, 48 and 128 (the last one ragged), each with its own call. */
		const int steps[] = { 16, 48, 128 };
		for (int k = 0; k < 3; k++) {
			memcpy(parts, y0, sizeof(float) * out);
			for (int o = 0; o < out; o += steps[k]) {
				int n = out - o < steps[k] ? out - o : steps[k];
				gf_gemv_cols(W + o, out, in, n, x, betas[b], parts + o);
			}
			CHECK(memcmp(parts, y, sizeof(float) * out) == 0,
			      "gemv_cols %dx%d beta %g: ranges of %d differ from the whole", in, out,
			      betas[b], steps[k]);
		}
	}
	free(W);
	free(x);
	free(y0);
	free(y);
	free(parts);
}

static void test_rows(int in, int out, int n, uint64_t *seed)
{
	float *W = malloc(sizeof(float) * (size_t)in * out), *x = malloc(sizeof(float) * in * n);
	float *y = malloc(sizeof(float) * out * n);
	for (size_t i = 0; i < (size_t)in * out; i++)
		W[i] = rnd(seed);
	for (int i = 0; i < in * n; i++)
		x[i] = rnd(seed);
	for (int i = 0; i < out * n; i++)
		y[i] = rnd(seed);
	float *y0 = malloc(sizeof(float) * out * n);
	memcpy(y0, y, sizeof(float) * out * n);
	gf_gemv_rows(W, in, out, x, in, n, 0.5f, y, out);
	double worst = 0.0;
	for (int t = 0; t < n; t++)
		for (int o = 0; o < out; o++) {
			double s = 0.5 * y0[t * out + o], mag = fabs(s);
			for (int i = 0; i < in; i++) {
				double p = (double)W[(size_t)o * in + i] * x[t * in + i];
				s += p;
				mag += fabs(p);
			}
			double e = fabs(y[t * out + o] - s) / (mag + 1e-30);
			worst = e > worst ? e : worst;
		}
	CHECK(worst < 1e-5, "gemv_rows %dx%d n %d: relative error %.3g", in, out, n, worst);
	free(W);
	free(x);
	free(y);
	free(y0);
}

int main(void)
{
	uint64_t seed = 12345;
	const int cols[][2] = { { 768, 160 }, { 32, 768 }, { 768, 64 }, { 64, 768 },
				{ 1024, 32 }, { 37, 45 }, { 5, 200 }, { 1, 17 }, { 300, 8 } };
	for (size_t k = 0; k < sizeof(cols) / sizeof(cols[0]); k++)
		test_cols(cols[k][0], cols[k][1], &seed);
	const int rows[][3] = { { 768, 96, 1 }, { 33, 70, 4 }, { 1, 5, 2 }, { 1000, 17, 3 } };
	for (size_t k = 0; k < sizeof(rows) / sizeof(rows[0]); k++)
		test_rows(rows[k][0], rows[k][1], rows[k][2], &seed);
	if (test_failures)
		fprintf(stderr, "model_vecmath: %d failure(s)\n", test_failures);
	else
		printf("model_vecmath: ok\n");
	return test_failures ? 1 : 0;
}
