/*
 * bench_util.h — measurements the benchmarks share, so that every figure they compare
 * against is taken the same way.
 */
#ifndef GF_BENCH_UTIL_H
#define GF_BENCH_UTIL_H

/* The machine's read bandwidth in bytes/s: `threads` readers (1..16) summing disjoint parts
 * of a 1 GiB buffer with the widest vectors the CPU has, best of four passes. 0 if the
 * buffer cannot be allocated. */
double bench_read_bandwidth(int threads);

#endif
