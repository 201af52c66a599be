/*
 * bench_util.c — see bench_util.h.
 */
#include "bench_util.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

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

/* The reference must be the best this CPU can do, so it gets wide vectors where it can. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
	!defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
static void *read_job_run(void *arg)
{
	struct read_job *j = arg;
	float acc[16] = { 0 };
	for (size_t i = 0; i + 16 <= j->n; i += 16)
		for (int u = 0; u < 16; u++)
			acc[u] += j->p[i + u];
	for (int u = 0; u < 16; u++)
		j->sum += acc[u];
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
	b->buf = malloc(b->n * sizeof(float));
	if (!b->buf) {
		free(b);
		return NULL;
	}
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
	free(b->buf);
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
