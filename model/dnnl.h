/*
 * dnnl.h — bf16 compute: a prefill's big matrix products through oneDNN's matmul (private to
 * model/).
 *
 * With bf16 compute every matrix is held in bf16 in the panel layout of gemm.h, which is
 * oneDNN's BA16a64b2a: its matmul reads the weights where they lie, no second copy. Each
 * product is cut into tasks of 64 rows by at most GF_DNNL_COLS columns, fixed by the shape
 * alone, and each task is one single-threaded oneDNN call spread over the pool: a row's bits
 * then do not depend on the other rows, on a part of a chunk against the whole, nor on the
 * thread count (tests/model_bf16.c holds it against the library present).
 */
#ifndef GF_DNNL_H
#define GF_DNNL_H

#include "goldfinch.h"
#include "pool.h"

#include <stdbool.h>
#include <stddef.h>

#define GF_DNNL_ROWS 64
#define GF_DNNL_COLS 1024

/* Makes the matmuls for the model's big matrix shapes (k and n of at least 256; smaller ones
 * run on gemm.h's kernels), from its configuration alone. */
int gf_dnnl_create(gf_model *m, char *err);
void gf_dnnl_free(gf_dnnl *d);
bool gf_dnnl_has(const gf_dnnl *d, const gf_mat *B);

/* Per-workspace buffers of the calls: the rows rounded to bf16, and per pool part a task's
 * output tile and oneDNN's scratchpad. */
typedef struct gf_dnnl_scratch gf_dnnl_scratch;
int gf_dnnl_scratch_init(gf_dnnl_scratch **out, const gf_model *m, int max_rows, int n_parts);
void gf_dnnl_scratch_free(gf_dnnl_scratch *s);

/* Whether the scratch's primitives cover B (a workspace made for a model of B's configuration). */
bool gf_dnnl_scratch_has(const gf_dnnl_scratch *s, const gf_mat *B);
/* y[n][B.n] (ldy) = bf16(x[n][B.k]) (ldx) . B, added to y when accumulate (after the product:
 * y + (x . B)). n <= the scratch's max_rows. */
void gf_dnnl_matmul(const gf_dnnl *d, gf_pool *pool, gf_dnnl_scratch *s, const float *x, int ldx,
		    int n, const gf_mat *B, bool accumulate, float *y, int ldy);

#endif
