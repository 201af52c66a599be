/*
 * vecmath.h — element-wise kernels of the forward pass (private to model/).
 *
 * Written as plain loops over contiguous arrays with independent partial sums, so the
 * compiler vectorises them; kept in one place so that a faster version of any of them
 * changes one function.
 */
#ifndef GF_VECMATH_H
#define GF_VECMATH_H

#include <stddef.h>
#include <stdint.h>

float gf_vsum(const float *x, int n);
/* e^x, relative error below 2e-7 (the exponential the kernels below use). */
float gf_exp(float x);
/* s[j] = e^(s[j] - shift) for j < n; returns their sum (in LANES partial sums). */
float gf_vexp_shift(float *s, int n, float shift);
/* sum over i of (x[i] - mean)^2 */
float gf_vsumsqdev(const float *x, int n, float mean);
void gf_vtanh(float *x, size_t n);
void gf_vsigmoid(float *x, size_t n);
/* x = max(x, 0)^2 */
void gf_vrelu_sq(float *x, size_t n);
/* x += a * b */
void gf_vmul_add(float *x, const float *a, const float *b, size_t n);
/* w <- decay = exp(-exp(w)); k <- k * (1 - decay), the latter computed without cancellation */
void gf_vdecay(float *w, float *k, size_t n);
/* One token of one head of the WKV-6 recurrence (u = 0):
 * y[i] = sum_j r[j] S[i][j]; S[i][j] = S[i][j] * decay[j] + k[j] * v[i]. */
void gf_wkv_step(float *S, const float *r, const float *k, const float *v, const float *decay,
		 float *y, int N);

#endif
