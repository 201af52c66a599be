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

double bench_read_bandwidth(int threads)
{
	const size_t n = (size_t)256 << 20; /* floats: 1 GiB, far beyond the caches */
	struct read_job jobs[16];
	pthread_t tid[16];
	double best = 1e30;
	float *buf = malloc(n * sizeof(float));
	if (!buf)
		return 0;
	if (threads < 1)
		threads = 1;
	if (threads > 16)
		threads = 16;
	for (size_t i = 0; i < n; i++)
		buf[i] = (float)(i & 15);
	for (int rep = 0; rep < 4; rep++) {
		double t0 = now();
		for (int i = 0; i < threads; i++) {
			jobs[i] = (struct read_job){ buf + n / threads * i, n / threads, 0 };
			pthread_create(&tid[i], NULL, read_job_run, &jobs[i]);
		}
		for (int i = 0; i < threads; i++)
			pthread_join(tid[i], NULL);
		double dt = now() - t0;
		best = dt < best ? dt : best;
	}
	volatile float sink = jobs[0].sum;
	(void)sink;
	free(buf);
	return (double)n * sizeof(float) / best;
}
