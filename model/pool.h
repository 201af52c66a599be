/*
 * pool.h — a small persistent thread pool for the decode path (private to model/).
 *
 * One decode step runs about a hundred matrix-vector products of a few hundred microseconds
 * each; OpenBLAS's sgemv reaches only half the memory bandwidth here, so model/ runs its
 * own GEMV and splits it across this pool. Workers spin briefly between jobs (the next
 * product follows within microseconds) and then sleep, so an idle pool costs nothing.
 */
#ifndef GF_POOL_H
#define GF_POOL_H

typedef void (*gf_pool_fn)(void *arg, int part, int n_parts);
typedef struct gf_pool gf_pool;

/* n_threads counts the caller: 1 starts no thread. */
int gf_pool_init(gf_pool **out, int n_threads);
void gf_pool_free(gf_pool *p);
int gf_pool_threads(const gf_pool *p);
/* Runs fn(arg, i, n) once for every part i < n (n is a few parts per thread), on whichever
 * threads claim them, the caller included; returns when all are done. Not reentrant: one
 * caller at a time. */
void gf_pool_run(gf_pool *p, gf_pool_fn fn, void *arg);
/* The same with exactly n_parts parts (a caller that keeps per-part buffers). */
void gf_pool_run_n(gf_pool *p, gf_pool_fn fn, void *arg, int n_parts);

#endif
