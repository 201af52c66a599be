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

float gf_vdot(const float *a, const float *b, int n);
/* y += a * x */
void gf_vaxpy(float *y, float a, const float *x, int n);
/* One query against nb key rows (row stride ld), every head: S [H][nb] = scale * K_h . q_h. */
void gf_attn_scores(const float *K, int ld, int nb, const float *q, int H, int N, float scale,
		    float *S);
/* y [H*N] += P [H][nb] times the value rows (row stride ld), every head. */
void gf_attn_accum(const float *V, int ld, int nb, const float *P, int H, int N, float *y);
/* The same over keys and values stored as bf16 (the top halves of floats): each widened
 * exactly, the sums in the order of the float versions, so the bits are those of the float
 * versions over the widened rows. */
void gf_attn_scores_bf16(const uint16_t *K, int ld, int nb, const float *q, int H, int N,
			 float scale, float *S);
void gf_attn_accum_bf16(const uint16_t *V, int ld, int nb, const float *P, int H, int N,
			float *y);
/* rows x cols bf16 (row stride ld) to float32 (row stride cols). */
void gf_widen_bf16_rows(const uint16_t *src, int ld, int rows, int cols, float *dst);

#endif
