/*
 * gemm.h — the engine's matrix products over packed weights (private to model/).
 *
 * Every weight matrix is packed once at load into panels of GF_PANEL columns of B, where
 * y[m][n] = x[m][k] . B[k][n] (B = W^T for an nn.Linear weight W [n][k], B = W for a LoRA
 * matrix [k][n]). A panel holds its k rows one after the other, so one pass down a panel
 * streams contiguous memory whether one row of x is multiplied (decode) or hundreds (prefill):
 *   f32, f16  element (k, c) of panel p at  p*kp*64 + k*64 + c            (kp = k)
 *   bf16      element (k, c) of panel p at  p*kp*64 + (k/2)*128 + c*2 + k%2 (kp = k rounded up
 *             to 32, padded with zeros): oneDNN's BA16a64b2a, so its bf16 matmul reads the same
 *             bytes (dnnl.c).
 * 16-bit weights stay 16-bit and are widened in registers: the products are those of the
 * stored values, exactly.
 *
 * The arithmetic of one output element is fixed: a chain of fused multiply-adds over k in
 * order, starting from 0 (or from y's value when accumulating). It does not depend on the
 * number of rows multiplied at once, on which rows or panels a call covers, on the thread
 * that runs it or on the instruction set (AVX-512, AVX2, scalar fmaf give the same bits).
 * So a row's result is the same in a batch of 1 or 64, in a part of a chunk or the whole,
 * on one rank or several.
 */
#ifndef GF_GEMM_H
#define GF_GEMM_H

#include "goldfinch.h"

#include <stdbool.h>
#include <stddef.h>

#define GF_PANEL 64

/* Instruction sets of the kernels, lowest first. */
enum { GF_ISA_SCALAR = 0, GF_ISA_AVX2 = 1, GF_ISA_AVX512 = 2 };

/* What this CPU runs, capped by GOLDFINCH_ISA ("avx512", "avx2" or "scalar") when set. */
int gf_isa_detect(void);
const char *gf_isa_name(int isa);
/* Whether the CPU (and OS) run AVX512-BF16 (vcvtne2ps2bf16, vdpbf16ps). */
bool gf_cpu_has_avx512_bf16(void);

int gf_mat_kp(gf_dtype t, int k);
size_t gf_mat_bytes(gf_dtype t, int k, int n);
static inline int gf_mat_panels(const gf_mat *B)
{
	return (B->n + GF_PANEL - 1) / GF_PANEL;
}
/* Packs the matrix at src (type src_t: [n][k] when nk, an nn.Linear weight; else [k][n])
 * into dst (gf_mat_bytes(t, k, n) bytes, 64-byte aligned, zeroed) as type t. t is src_t, or
 * bf16 (rounded to nearest even), or f32 from a 16-bit source. Fills *B to describe it. */
void gf_mat_pack(gf_mat *B, void *dst, gf_dtype t, const void *src, gf_dtype src_t, int k,
		 int n, bool nk);
/* Packs panels [p0, p1) only, into the same dst: for nk, src points at source row p0*64
 * (so the caller may read a matrix in pieces); otherwise at the whole [k][n] source. */
void gf_mat_pack_panels(void *dst, gf_dtype t, const void *src, gf_dtype src_t, int k, int n,
			bool nk, int p0, int p1);

/* y[i][j] (row stride ldy) for rows i < m and the columns of panels [p0, p1): the sum over k
 * of x[i][k] (row stride ldx) * B[k][j], added to y[i][j] when accumulate. `stream` hints
 * that the panels are read once (decode): they are prefetched past the caches. */
void gf_gemm_panels(int isa, const gf_mat *B, const float *x, int ldx, int m, float *y, int ldy,
		    bool accumulate, int p0, int p1, bool stream);

#endif
