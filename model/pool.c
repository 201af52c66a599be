/*
 * pool.c — see pool.h.
 *
 * Parts are claimed, not assigned: a job's parts sit behind one atomic ticket (generation in
 * the high half, next part in the low half) and every thread, the caller included, claims
 * parts until none is left. A worker the scheduler has not run yet therefore never stalls
 * the caller — on a loaded machine the caller simply does the parts itself.
 */
#include "pool.h"

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#define SPINS 20000
#define PARTS_PER_THREAD 4

struct gf_pool {
	int n_threads;
	int default_parts;
	atomic_uint_fast64_t job;    /* generation << 32 | its number of parts */
	pthread_t *tid;
	pthread_mutex_t mu;
	pthread_cond_t wake;
	atomic_uint_fast64_t ticket; /* generation << 32 | next unclaimed part */
	atomic_int done;             /* parts finished in the current generation */
	atomic_bool stop;
	gf_pool_fn fn;
	void *arg;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

/* Claims and runs parts of generation gen until none is left. */
static void run_parts(gf_pool *p, uint64_t gen)
{
	for (;;) {
		uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
		/* The job's part count, of this generation: a newer one means this one is done. */
		const uint64_t job = atomic_load_explicit(&p->job, memory_order_acquire);
		const int n_parts = (int)(job & 0xffffffffu);
		if ((t >> 32) != gen || (job >> 32) != gen || (t & 0xffffffffu) >= (uint64_t)n_parts)
			return;
		if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1,
							   memory_order_acq_rel,
							   memory_order_acquire))
			continue;
		p->fn(p->arg, (int)(t & 0xffffffffu), n_parts);
		atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
	}
}

static void *worker(void *varg)
{
	gf_pool *p = varg;
	uint64_t seen = 0;
#if defined(__SSE2__)
	/* Parts of a step run here with denormals flushed, as in the calling thread (forward.c). */
	_mm_setcsr(_mm_getcsr() | 0x8040);
#endif
	for (;;) {
		int spins = 0;
		while ((atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32) == seen &&
		       !atomic_load(&p->stop) && spins < SPINS) {
			cpu_relax();
			spins++;
		}
		pthread_mutex_lock(&p->mu);
		while ((atomic_load(&p->ticket) >> 32) == seen && !atomic_load(&p->stop))
			pthread_cond_wait(&p->wake, &p->mu);
		pthread_mutex_unlock(&p->mu);
		if (atomic_load(&p->stop))
			return NULL;
		seen = atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32;
		run_parts(p, seen);
	}
}

int gf_pool_init(gf_pool **out, int n_threads)
{
	gf_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->n_threads = n_threads < 1 ? 1 : n_threads;
	p->default_parts = p->n_threads * PARTS_PER_THREAD;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->wake, NULL);
	p->tid = calloc((size_t)p->n_threads, sizeof(pthread_t));
	if (!p->tid) {
		free(p);
		return -ENOMEM;
	}
	for (int i = 1; i < p->n_threads; i++) {
		if (pthread_create(&p->tid[i], NULL, worker, p)) {
			p->n_threads = i; /* free() joins the ones started */
			gf_pool_free(p);
			return -EAGAIN;
		}
	}
	*out = p;
	return 0;
}

int gf_pool_threads(const gf_pool *p)
{
	return p->n_threads;
}

void gf_pool_run(gf_pool *p, gf_pool_fn fn, void *arg)
{
	gf_pool_run_n(p, fn, arg, p->default_parts);
}

void gf_pool_run_n(gf_pool *p, gf_pool_fn fn, void *arg, int n_parts)
{
	if (p->n_threads == 1 || n_parts <= 1) {
		for (int i = 0; i < n_parts; i++)
			fn(arg, i, n_parts);
		return;
	}
	uint64_t gen = (atomic_load(&p->ticket) >> 32) + 1;
	p->fn = fn;
	p->arg = arg;
	atomic_store_explicit(&p->job, gen << 32 | (uint64_t)n_parts, memory_order_release);
	atomic_store_explicit(&p->done, 0, memory_order_relaxed);
	pthread_mutex_lock(&p->mu);
	atomic_store_explicit(&p->ticket, gen << 32, memory_order_release);
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->mu);
	run_parts(p, gen);
	while (atomic_load_explicit(&p->done, memory_order_acquire) < n_parts)
		cpu_relax();
}

void gf_pool_free(gf_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	atomic_store(&p->stop, true);
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->mu);
	for (int i = 1; i < p->n_threads; i++)
		pthread_join(p->tid[i], NULL);
	pthread_cond_destroy(&p->wake);
	pthread_mutex_destroy(&p->mu);
	free(p->tid);
	free(p);
}
