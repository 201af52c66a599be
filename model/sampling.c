/*
 * sampling.c — next-token sampling: penalties, temperature, top_k, top_p, min_p, seeded draw.
 *
 * Nothing here allocates after gf_sampler_init. The candidates live in the two scratch
 * arrays as pairs (idx[j], prob[j]). Nothing is ever sorted: top_k is a quickselect on the
 * scaled logits (so only k exponentials), top_p a quickselect on probability mass, min_p a
 * threshold; each is expected O(V) for a 65536-token vocabulary.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "goldfinch.h"

void gf_sampling_defaults(gf_sampling *p)
{
	*p = (gf_sampling){
		.temperature = 1.0f,
		.top_k = 0,
		.top_p = 1.0f,
		.min_p = 0.0f,
		.presence_penalty = 0.0f,
		.frequency_penalty = 0.0f,
		.seed = 0,
	};
}

int gf_sampling_check(const gf_sampling *p, char *err)
{
	const char *msg = NULL;
	double val = 0;

	if (!isfinite(p->temperature) || p->temperature < 0) {
		msg = "temperature %g must be >= 0";
		val = p->temperature;
	} else if (p->top_k < 0) {
		msg = "top_k %g must be >= 0 (0 = off)";
		val = p->top_k;
	} else if (!(p->top_p > 0 && p->top_p <= 1)) {
		msg = "top_p %g must be in (0, 1]";
		val = p->top_p;
	} else if (!(p->min_p >= 0 && p->min_p <= 1)) {
		msg = "min_p %g must be in [0, 1]";
		val = p->min_p;
	} else if (!isfinite(p->presence_penalty)) {
		msg = "presence_penalty %g must be finite";
		val = p->presence_penalty;
	} else if (!isfinite(p->frequency_penalty)) {
		msg = "frequency_penalty %g must be finite";
		val = p->frequency_penalty;
	}
	if (!msg)
		return 0;
	if (err)
		snprintf(err, GF_ERR_LEN, msg, val);
	return -EINVAL;
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman & Vigna). */
static uint64_t rng_next(uint64_t s[4])
{
	uint64_t r = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4])
{
	return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

int gf_sampler_init(gf_sampler *s, int32_t vocab, const gf_sampling *p)
{
	uint64_t x;

	memset(s, 0, sizeof(*s));
	if (vocab <= 0)
		return -EINVAL;
	if (p) {
		if (gf_sampling_check(p, NULL))
			return -EINVAL;
		s->p = *p;
	} else {
		gf_sampling_defaults(&s->p);
	}
	s->vocab = vocab;
	s->counts = calloc((size_t)vocab, sizeof(*s->counts));
	s->idx = malloc((size_t)vocab * sizeof(*s->idx));
	s->prob = malloc((size_t)vocab * sizeof(*s->prob));
	if (!s->counts || !s->idx || !s->prob) {
		gf_sampler_free(s);
		return -ENOMEM;
	}
	x = s->p.seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&x);
	return 0;
}

void gf_sampler_free(gf_sampler *s)
{
	if (!s)
		return;
	free(s->counts);
	free(s->idx);
	free(s->prob);
	memset(s, 0, sizeof(*s));
}

void gf_sampler_accept(gf_sampler *s, int32_t tok)
{
	if (tok >= 0 && tok < s->vocab && s->counts[tok] < UINT32_MAX)
		s->counts[tok]++;
}

/*
 * exp(d) for d in [-87, 0], relative error about 2e-7 (float rounding of d * log2(e)
 * aside, as for expf). Plain arithmetic, no libm call, so the loop over the vocabulary
 * vectorises; libm's expf costs a call per element.
 */
static inline float exp_nonpos(float d)
{
	union {
		float f;
		int32_t i;
	} u;
	float t = d * 1.44269504089f; /* [-125.6, 0] */
	int32_t n = (int32_t)(t - 0.5f); /* truncation toward 0 of t - 0.5: round(t) */
	float y = (t - (float)n) * 0.69314718056f; /* [-0.35, 0.35] */
	float p;

	p = 1.0f + y * (1.0f + y * (0.5f + y * (1.0f / 6 + y * (1.0f / 24 +
		y * (1.0f / 120 + y * (1.0f / 720))))));
	u.i = (n + 127) << 23; /* 2^n, n in [-126, 0] */
	return p * u.f;
}

/*
 * Sums in blocks of DRAW_BLOCK with four independent accumulators: a plain running sum
 * over 65536 floats is one long chain of dependent additions. total_mass and draw add the
 * same block sums in the same order, so the draw's running total ends exactly at the total.
 */
#define DRAW_BLOCK 64

static double block_sum(const float *p, size_t n)
{
	float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
	size_t i = 0;

	for (; i + 4 <= n; i += 4) {
		a0 += p[i];
		a1 += p[i + 1];
		a2 += p[i + 2];
		a3 += p[i + 3];
	}
	for (; i < n; i++)
		a0 += p[i];
	return (double)((a0 + a1) + (a2 + a3));
}

static double total_mass(const float *p, size_t n)
{
	double t = 0;

	for (size_t b = 0; b < n; b += DRAW_BLOCK)
		t += block_sum(p + b, n - b < DRAW_BLOCK ? n - b : DRAW_BLOCK);
	return t;
}

/* Candidate order: larger value first, then lower id: a strict total order, so every
 * selection below is deterministic and ties never depend on the algorithm. */
static inline int before(const float *v, const int32_t *idx, size_t a, size_t b)
{
	return (v[a] > v[b]) | ((v[a] == v[b]) & (idx[a] < idx[b]));
}

static inline void swap_pair(float *v, int32_t *idx, size_t a, size_t b)
{
	float tv = v[a];
	int32_t ti = idx[a];

	v[a] = v[b];
	idx[a] = idx[b];
	v[b] = tv;
	idx[b] = ti;
}

/*
 * Partitions [lo, hi) (hi - lo >= 1) around a median-of-three pivot: returns its final
 * position p; [lo, p) come before it, (p, hi) after.
 */
static size_t partition(float *v, int32_t *idx, size_t lo, size_t hi)
{
	size_t mid = lo + (hi - lo) / 2, last = hi - 1, i = lo;

	/* order lo, mid, last; the median goes to last as the pivot */
	if (before(v, idx, mid, lo))
		swap_pair(v, idx, mid, lo);
	if (before(v, idx, last, lo))
		swap_pair(v, idx, last, lo);
	if (before(v, idx, mid, last))
		swap_pair(v, idx, mid, last);
	/* Branch-free Lomuto: the comparison is a coin flip on random data, so a branch on
	 * it mispredicts half the time. Swapping unconditionally is harmless: when j does not
	 * go before the pivot, the element at i does not either. */
	for (size_t j = lo; j < last; j++) {
		int b = before(v, idx, j, last);

		swap_pair(v, idx, i, j);
		i += (size_t)b;
	}
	swap_pair(v, idx, i, last);
	return i;
}

static void sift_down_worst(float *v, int32_t *idx, size_t i, size_t k)
{
	for (;;) {
		size_t l = 2 * i + 1, w = i;

		if (l < k && before(v, idx, w, l))
			w = l;
		if (l + 1 < k && before(v, idx, w, l + 1))
			w = l + 1;
		if (w == i)
			return;
		swap_pair(v, idx, i, w);
		i = w;
	}
}

/*
 * Moves the k first candidates (in candidate order) to [0, k), unordered. A small k keeps
 * a heap of the k best so far with the worst of them at the root: almost every other
 * candidate loses one well-predicted comparison to it. A large k uses quickselect.
 */
static void select_count(float *v, int32_t *idx, size_t n, size_t k)
{
	size_t lo = 0, hi = n;

	if (k <= n / 16) {
		for (size_t i = k / 2; i-- > 0;)
			sift_down_worst(v, idx, i, k);
		for (size_t j = k; j < n; j++) {
			if (before(v, idx, j, 0)) {
				v[0] = v[j];
				idx[0] = idx[j];
				sift_down_worst(v, idx, 0, k);
			}
		}
		return;
	}
	while (lo < k && k < hi) {
		size_t p = partition(v, idx, lo, hi);

		if (p < k)
			lo = p + 1;
		else
			hi = p;
	}
}

/*
 * The nucleus without sorting: the shortest prefix, in candidate order, whose mass
 * reaches target, found by quickselect on mass. It ends up in [0, m) (unordered);
 * returns m >= 1. Expected O(n).
 */
static size_t select_mass(float *v, int32_t *idx, size_t n, double target)
{
	size_t lo = 0, hi = n;
	double acc = 0; /* mass of [0, lo), all in the nucleus; always < target */

	while (hi - lo > 16) {
		size_t p = partition(v, idx, lo, hi);
		double above = total_mass(v + lo, p - lo);

		if (acc + above >= target) {
			hi = p;
		} else if (acc + above + v[p] >= target) {
			return p + 1;
		} else {
			acc += above + v[p];
			lo = p + 1;
		}
	}
	/* insertion sort of the few left, then the exact cut */
	for (size_t i = lo + 1; i < hi; i++)
		for (size_t j = i; j > lo && before(v, idx, j, j - 1); j--)
			swap_pair(v, idx, j, j - 1);
	for (size_t j = lo; j < hi; j++) {
		acc += v[j];
		if (acc >= target)
			return j + 1;
	}
	return hi > 0 ? hi : 1; /* rounding left target just out of reach: keep all */
}

/* Keeps the candidates with prob >= t, in order; returns how many. Branch-free for the
 * same reason as partition. */
static size_t keep_above(float *prob, int32_t *idx, size_t n, float t)
{
	size_t m = 0;

	for (size_t j = 0; j < n; j++) {
		float pj = prob[j];
		int32_t ij = idx[j];

		prob[m] = pj;
		idx[m] = ij;
		m += pj >= t;
	}
	return m;
}

static int32_t argmax(const float *logits, int32_t n)
{
	int32_t best = 0;
	float bv = -INFINITY;

	for (int32_t i = 0; i < n; i++) {
		if (logits[i] > bv) {
			bv = logits[i];
			best = i;
		}
	}
	return best;
}

static inline float scaled(float logit, float maxl, float inv_t)
{
	float d = (logit - maxl) * inv_t;

	return d >= -87.0f ? d : -87.0f; /* also catches NaN and -inf */
}

/*
 * prob[i] = exp(scaled(logits[i])) for i < n, 0 where the scaled logit is <= -87 (or NaN).
 * Four at a time with SSE2 (every x86-64 has it): libm's expf, one call per element, made
 * this loop the cost of sampling from a 65536-token vocabulary. Same arithmetic as
 * exp_nonpos, so both paths give the same numbers.
 */
static void exp_all(const float *logits, float *prob, size_t n, float maxl, float inv_t)
{
	size_t i = 0;

#ifdef __SSE2__
	const __m128 vmax = _mm_set1_ps(maxl), vinv = _mm_set1_ps(inv_t);
	const __m128 lo = _mm_set1_ps(-87.0f), half = _mm_set1_ps(0.5f);
	const __m128 log2e = _mm_set1_ps(1.44269504089f), ln2 = _mm_set1_ps(0.69314718056f);
	const __m128 one = _mm_set1_ps(1.0f);

	for (; i + 4 <= n; i += 4) {
		__m128 d = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(logits + i), vmax), vinv);
		__m128 keep = _mm_cmpgt_ps(d, lo); /* false for NaN and -inf */
		__m128 t, y, p;
		__m128i e;

		d = _mm_max_ps(d, lo); /* NaN -> -87 too */
		t = _mm_mul_ps(d, log2e);
		e = _mm_cvttps_epi32(_mm_sub_ps(t, half));
		y = _mm_mul_ps(_mm_sub_ps(t, _mm_cvtepi32_ps(e)), ln2);
		p = _mm_add_ps(_mm_set1_ps(1.0f / 120), _mm_mul_ps(y, _mm_set1_ps(1.0f / 720)));
		p = _mm_add_ps(_mm_set1_ps(1.0f / 24), _mm_mul_ps(y, p));
		p = _mm_add_ps(_mm_set1_ps(1.0f / 6), _mm_mul_ps(y, p));
		p = _mm_add_ps(half, _mm_mul_ps(y, p));
		p = _mm_add_ps(one, _mm_mul_ps(y, p));
		p = _mm_add_ps(one, _mm_mul_ps(y, p));
		e = _mm_slli_epi32(_mm_add_epi32(e, _mm_set1_epi32(127)), 23);
		p = _mm_mul_ps(p, _mm_castsi128_ps(e));
		_mm_storeu_ps(prob + i, _mm_and_ps(p, keep));
	}
#endif
	for (; i < n; i++) {
		float d = scaled(logits[i], maxl, inv_t);

		prob[i] = d > -87.0f ? exp_nonpos(d) : 0.0f;
	}
}

/* The candidate where the running mass first exceeds r; n (none) when r is not below the
 * total, which only rounding can cause. */
static size_t draw(const float *p, size_t n, double r)
{
	double acc = 0;

	for (size_t b = 0; b < n; b += DRAW_BLOCK) {
		size_t m = n - b < DRAW_BLOCK ? n - b : DRAW_BLOCK;
		double bs = block_sum(p + b, m);

		if (r < acc + bs) {
			for (size_t j = 0; j < m; j++) {
				acc += p[b + j];
				if (r < acc)
					return b + j;
			}
			for (size_t j = m; j-- > 0;) /* the block's own rounding: its last */
				if (p[b + j] > 0)
					return b + j;
		}
		acc += bs;
	}
	return n;
}

int32_t gf_sampler_sample(gf_sampler *s, float *logits)
{
	const gf_sampling *p = &s->p;
	int32_t V = s->vocab, top;
	float *prob = s->prob;
	int32_t *idx = s->idx;
	size_t n, pick;
	float maxl, inv_t;

	if (p->presence_penalty != 0 || p->frequency_penalty != 0) {
		for (int32_t i = 0; i < V; i++)
			if (s->counts[i])
				logits[i] -= p->presence_penalty +
					     p->frequency_penalty * (float)s->counts[i];
	}
	top = argmax(logits, V);
	maxl = logits[top];
	/* Greedy, and the degenerate cases where there is no distribution to draw from. */
	if (p->temperature <= 0 || p->top_k == 1 || !isfinite(maxl))
		return top;
	inv_t = 1.0f / p->temperature;

	if (p->top_k > 0 && p->top_k < V) {
		/* Select on the scaled logits first: only k exponentials. */
		for (int32_t i = 0; i < V; i++) {
			prob[i] = scaled(logits[i], maxl, inv_t);
			idx[i] = i;
		}
		n = (size_t)p->top_k;
		select_count(prob, idx, (size_t)V, n);
		for (size_t j = 0; j < n; j++)
			prob[j] = prob[j] > -87.0f ? exp_nonpos(prob[j]) : 0.0f;
	} else {
		n = (size_t)V;
		exp_all(logits, prob, n, maxl, inv_t);
		for (int32_t i = 0; i < V; i++)
			idx[i] = i;
	}

	if (p->top_p < 1) {
		double z = total_mass(prob, n), target = (double)p->top_p * z;
		/* Candidates below t hold less than (1 - top_p) of the mass all together, so the
		 * nucleus lies among the others: drop them first, in one pass. For the peaked
		 * distributions of a language model that leaves a handful to select from. */
		float t = (float)(0.5 * (1.0 - (double)p->top_p) * z / (double)n);

		n = select_mass(prob, idx, keep_above(prob, idx, n, t), target);
	}
	if (p->min_p > 0) {
		/* The most likely token has prob exp(0) = 1 and survives top_k and top_p, and
		 * ratios survive renormalising: the threshold is min_p itself. */
		n = keep_above(prob, idx, n, p->min_p);
	}

	pick = draw(prob, n, rng_uniform(s->rng) * total_mass(prob, n));
	return pick < n ? idx[pick] : top; /* r rounded up to the total: the most likely */
}
