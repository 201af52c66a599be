/*
 * bench_util.h — measurements the benchmarks share, so that every figure they compare
 * against is taken the same way.
 */
#ifndef GF_BENCH_UTIL_H
#define GF_BENCH_UTIL_H

/* The machine's read bandwidth in bytes/s: `threads` readers (1..16) summing disjoint parts
 * of a 1 GiB buffer (in huge pages where the kernel gives them, as the engine's weights are)
 * with the widest vectors the CPU has, best of four passes. 0 if the
 * buffer cannot be allocated. */
double bench_read_bandwidth(int threads);

/* The same, one pass at a time over a buffer allocated once, for a benchmark that interleaves
 * read passes with its own rounds (the bandwidth of a shared machine drifts over seconds). */
typedef struct bench_reader bench_reader;
bench_reader *bench_reader_new(int threads); /* NULL: out of memory */
double bench_reader_pass(bench_reader *b);   /* bytes/s */
void bench_reader_free(bench_reader *b);

/* The CPU's own counts for this process and every thread it starts after the call: cycles
 * and instructions of user code (hardware counters), and CPU time. They say whether a
 * slower run ran at a lower clock (GHz = cycles / CPU time) or did less per cycle (IPC).
 * Where the CPU exposes no counters (most VMs) `available` is false and only the CPU time is
 * kept. Read after the threads have been joined: a thread's counts join its parent's when it
 * ends. */
typedef struct bench_counters {
	int fd_cycles, fd_instructions;
	int available;
} bench_counters;
void bench_counters_start(bench_counters *bc);
/* Fills cpu_s, ghz and ipc (ghz and ipc 0 when not available); closes the counters. */
void bench_counters_stop(bench_counters *bc, double *cpu_s, double *ghz, double *ipc);

#endif
