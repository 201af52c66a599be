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

/* The same, one pass at a time over a buffer allocated once, for a benchmark that interleaves
 * read passes with its own rounds (the bandwidth of a shared machine drifts over seconds). */
typedef struct bench_reader bench_reader;
bench_reader *bench_reader_new(int threads); /* NULL: out of memory */
double bench_reader_pass(bench_reader *b);   /* bytes/s */
void bench_reader_free(bench_reader *b);

#endif
