/*
 * bench_util.c — see bench_util.h.
 */
#include "bench_util.h"

#include <linux/perf_event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct read_job {
	const float *p;
	size_t n;
	float sum;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The reference must be the best this CPU can do, so it gets wide vectors where it can, and it
 * prefetches ahead with the non-temporal hint as the engine's decode does (one core reads
 * about 1.4x faster so on Zen 5 than with plain loads). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
	!defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
static void *read_job_run(void *arg)
{
	/* 16 floats as one value (one AVX-512 register, two AVX2 ones): vector loads whatever the
	 * optimisation level, where a plain loop stays scalar at -O2. */
	typedef float vf16 __attribute__((vector_size(64)));
	struct read_job *j = arg;
	vf16 acc[4] = { { 0 } };
	size_t i = 0;
	for (; i + 64 <= j->n; i += 64) {
		for (int u = 0; u < 4; u++) {
			__builtin_prefetch(j->p + i + 1024 + 16 * u, 0, 0);
			vf16 v;
			memcpy(&v, j->p + i + 16 * u, sizeof(v));
			acc[u] += v;
		}
	}
	for (int u = 0; u < 4; u++)
		for (int l = 0; l < 16; l++)
			j->sum += acc[u][l];
	return NULL;
}

struct bench_reader {
	float *buf;
	size_t n;
	int threads;
};

bench_reader *bench_reader_new(int threads)
{
	bench_reader *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->n = (size_t)256 << 20; /* floats: 1 GiB, far beyond the caches */
	b->threads = threads < 1 ? 1 : threads > 16 ? 16 : threads;
	/* In huge pages where the kernel gives them, like the engine's weights: a reference
	 * read through 4 KiB pages would be a tenth slower than the machine can read. */
	void *map = mmap(NULL, b->n * sizeof(float), PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED) {
		free(b);
		return NULL;
	}
	b->buf = map;
	madvise(map, b->n * sizeof(float), MADV_HUGEPAGE); /* advice: refused is fine */
	for (size_t i = 0; i < b->n; i++)
		b->buf[i] = (float)(i & 15);
	return b;
}

double bench_reader_pass(bench_reader *b)
{
	struct read_job jobs[16];
	pthread_t tid[16];
	const size_t part = b->n / (size_t)b->threads;
	double t0 = now();
	for (int i = 0; i < b->threads; i++) {
		jobs[i] = (struct read_job){ b->buf + part * (size_t)i, part, 0 };
		pthread_create(&tid[i], NULL, read_job_run, &jobs[i]);
	}
	for (int i = 0; i < b->threads; i++)
		pthread_join(tid[i], NULL);
	double dt = now() - t0;
	volatile float sink = jobs[0].sum;
	(void)sink;
	return (double)part * (size_t)b->threads * sizeof(float) / dt;
}

void bench_reader_free(bench_reader *b)
{
	if (!b)
		return;
	munmap(b->buf, b->n * sizeof(float));
	free(b);
}

double bench_read_bandwidth(int threads)
{
	bench_reader *b = bench_reader_new(threads);
	double best = 0;
	if (!b)
		return 0;
	for (int rep = 0; rep < 4; rep++) {
		double bw = bench_reader_pass(b);
		best = bw > best ? bw : best;
	}
	bench_reader_free(b);
	return best;
}

/* One user-space hardware counter of this process, inherited by the threads it starts. */
static int counter_open(uint64_t config)
{
	struct perf_event_attr a;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.type = PERF_TYPE_HARDWARE;
	a.config = config;
	a.exclude_kernel = 1;
	a.exclude_hv = 1;
	a.inherit = 1;
	return (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
}

void bench_counters_start(bench_counters *bc)
{
	bc->fd_cycles = counter_open(PERF_COUNT_HW_CPU_CYCLES);
	bc->fd_instructions = bc->fd_cycles >= 0 ? counter_open(PERF_COUNT_HW_INSTRUCTIONS) : -1;
	bc->available = bc->fd_cycles >= 0 && bc->fd_instructions >= 0;
}

static uint64_t counter_read(int fd)
{
	uint64_t v = 0;
	if (fd < 0 || read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		return 0;
	return v;
}

void bench_counters_stop(bench_counters *bc, double *cpu_s, double *ghz, double *ipc)
{
	struct rusage self;
	getrusage(RUSAGE_SELF, &self);
	/* User time only: the counters exclude the kernel too. */
	*cpu_s = (double)self.ru_utime.tv_sec + 1e-6 * (double)self.ru_utime.tv_usec;
	const uint64_t cycles = counter_read(bc->fd_cycles);
	const uint64_t instructions = counter_read(bc->fd_instructions);
	*ghz = bc->available && *cpu_s > 0 ? 1e-9 * (double)cycles / *cpu_s : 0.0;
	*ipc = bc->available && cycles ? (double)instructions / (double)cycles : 0.0;
	if (bc->fd_cycles >= 0)
		close(bc->fd_cycles);
	if (bc->fd_instructions >= 0)
		close(bc->fd_instructions);
	bc->fd_cycles = bc->fd_instructions = -1;
}
