/*
 * model_sampling — gf_sampler: greedy, seeding, top_k/top_p/min_p, penalties, and the
 * distribution it draws from.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "goldfinch.h"

static int failures;

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond)) {                                                  \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
			fprintf(stderr, __VA_ARGS__);                           \
			fputc('\n', stderr);                                    \
			failures++;                                             \
		}                                                               \
	} while (0)

#define BIG_V 65536
#define DRAWS 20000
#define NUCLEUS_DRAWS 3000

static uint64_t lcg = 42;

static float frand(void) /* [0, 1) */
{
	lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
	return (float)(lcg >> 40) / (float)(1ull << 24);
}

static void random_logits(float *l, int n, float scale)
{
	for (int i = 0; i < n; i++)
		l[i] = scale * (frand() * 2 - 1);
}

static void test_check(void)
{
	gf_sampling p;
	char err[GF_ERR_LEN];

	gf_sampling_defaults(&p);
	CHECK(gf_sampling_check(&p, err) == 0, "defaults rejected");
	CHECK(p.temperature == 1.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f &&
	      p.presence_penalty == 0 && p.frequency_penalty == 0, "defaults are not neutral");

#define REJECT(field, value, word)                                                      \
	do {                                                                            \
		gf_sampling q;                                                          \
		gf_sampling_defaults(&q);                                               \
		q.field = value;                                                        \
		err[0] = '\0';                                                          \
		CHECK(gf_sampling_check(&q, err) == -EINVAL && strstr(err, word),       \
		      #field " = " #value " accepted or bad message '%s'", err);        \
	} while (0)
	REJECT(temperature, -0.5f, "temperature");
	REJECT(temperature, NAN, "temperature");
	REJECT(top_k, -1, "top_k");
	REJECT(top_p, 0.0f, "top_p");
	REJECT(top_p, 1.5f, "top_p");
	REJECT(top_p, NAN, "top_p");
	REJECT(min_p, -0.1f, "min_p");
	REJECT(min_p, 1.1f, "min_p");
	REJECT(presence_penalty, INFINITY, "presence_penalty");
	REJECT(frequency_penalty, NAN, "frequency_penalty");
#undef REJECT
	{
		gf_sampler s;

		p.top_p = 2;
		CHECK(gf_sampler_init(&s, 10, &p) == -EINVAL, "sampler init accepts top_p 2");
		gf_sampler_free(&s);
		gf_sampling_defaults(&p);
		CHECK(gf_sampler_init(&s, 0, &p) == -EINVAL, "sampler init accepts vocab 0");
		gf_sampler_free(&s);
		gf_sampler_free(NULL);
	}
}

static int32_t argmax(const float *l, int n)
{
	int32_t b = 0;

	for (int i = 1; i < n; i++)
		if (l[i] > l[b])
			b = i;
	return b;
}

static void test_greedy_and_seeds(float *logits, float *copy)
{
	gf_sampling p;
	gf_sampler s, s2;
	int32_t seq1[100], seq2[100];
	int differ = 0;

	gf_sampling_defaults(&p);
	p.temperature = 0;
	gf_sampler_init(&s, BIG_V, &p);
	for (int r = 0; r < 20; r++) {
		random_logits(logits, BIG_V, 5);
		int32_t want = argmax(logits, BIG_V);
		CHECK(gf_sampler_sample(&s, logits) == want, "greedy is not argmax (round %d)", r);
	}
	/* Ties go to the lowest id. */
	for (int i = 0; i < BIG_V; i++)
		logits[i] = 0;
	logits[700] = logits[300] = 1;
	CHECK(gf_sampler_sample(&s, logits) == 300, "greedy tie not broken to the lowest id");
	gf_sampler_free(&s);

	/* top_k = 1 at temperature 1 is greedy too. */
	gf_sampling_defaults(&p);
	p.top_k = 1;
	p.seed = 5;
	gf_sampler_init(&s, BIG_V, &p);
	for (int r = 0; r < 20; r++) {
		random_logits(logits, BIG_V, 1);
		int32_t want = argmax(logits, BIG_V);
		CHECK(gf_sampler_sample(&s, logits) == want, "top_k=1 is not greedy (round %d)", r);
	}
	gf_sampler_free(&s);

	/* Same seed, same sequence; another seed, another sequence. */
	random_logits(copy, BIG_V, 4);
	for (int variant = 0; variant < 4; variant++) {
		gf_sampling_defaults(&p);
		p.seed = 1234;
		p.temperature = 0.8f;
		if (variant == 1)
			p.top_p = 0.9f;
		if (variant == 2)
			p.top_k = 50;
		if (variant == 3)
			p.min_p = 0.05f;
		gf_sampler_init(&s, BIG_V, &p);
		gf_sampler_init(&s2, BIG_V, &p);
		for (int i = 0; i < 100; i++) {
			memcpy(logits, copy, BIG_V * sizeof(float));
			seq1[i] = gf_sampler_sample(&s, logits);
			memcpy(logits, copy, BIG_V * sizeof(float));
			seq2[i] = gf_sampler_sample(&s2, logits);
		}
		CHECK(memcmp(seq1, seq2, sizeof(seq1)) == 0, "same seed, different draws (variant %d)",
		      variant);
		gf_sampler_free(&s2);
		p.seed = 1235;
		gf_sampler_init(&s2, BIG_V, &p);
		differ = 0;
		for (int i = 0; i < 100; i++) {
			memcpy(logits, copy, BIG_V * sizeof(float));
			differ += gf_sampler_sample(&s2, logits) != seq1[i];
		}
		CHECK(differ > 10, "another seed gives nearly the same draws (variant %d)", variant);
		gf_sampler_free(&s);
		gf_sampler_free(&s2);
	}
}

/* Draws DRAWS tokens from logits (restored each time) and checks the frequencies. */
static void check_freq(const char *what, const gf_sampling *p, const float *logits, int n,
		       const double *want)
{
	float l[8];
	int cnt[8] = { 0 };
	gf_sampler s;

	gf_sampler_init(&s, n, p);
	for (int d = 0; d < DRAWS; d++) {
		int32_t t;

		memcpy(l, logits, (size_t)n * sizeof(float));
		t = gf_sampler_sample(&s, l);
		if (t < 0 || t >= n) {
			CHECK(0, "%s: token %d out of range", what, t);
			break;
		}
		cnt[t]++;
	}
	for (int i = 0; i < n; i++) {
		double f = (double)cnt[i] / DRAWS;

		/* 0.015 is over 4 standard deviations for 20000 draws */
		CHECK(fabs(f - want[i]) < 0.015 && (want[i] > 0 || cnt[i] == 0),
		      "%s: token %d drawn with frequency %.4f, want %.4f", what, i, f, want[i]);
	}
	gf_sampler_free(&s);
}

static void test_distributions(void)
{
	const float l3[3] = { logf(0.5f), logf(0.3f), logf(0.2f) };
	gf_sampling p;

	gf_sampling_defaults(&p);
	p.seed = 99;
	check_freq("T=1", &p, l3, 3, (const double[]){ 0.5, 0.3, 0.2 });

	p.temperature = 2; /* p^(1/2), renormalised */
	{
		double a = sqrt(0.5), b = sqrt(0.3), c = sqrt(0.2), z = a + b + c;

		check_freq("T=2", &p, l3, 3, (const double[]){ a / z, b / z, c / z });
	}
	p.temperature = 1;
	p.top_k = 2;
	check_freq("top_k=2", &p, l3, 3, (const double[]){ 0.625, 0.375, 0 });
	p.top_k = 0;
	p.top_p = 0.7f; /* 0.5 < 0.7 <= 0.8: keeps two */
	check_freq("top_p=0.7", &p, l3, 3, (const double[]){ 0.625, 0.375, 0 });
	p.top_p = 0.45f;
	check_freq("top_p=0.45", &p, l3, 3, (const double[]){ 1, 0, 0 });
	p.top_p = 1;
	p.min_p = 0.5f; /* keeps p >= 0.25 */
	check_freq("min_p=0.5", &p, l3, 3, (const double[]){ 0.625, 0.375, 0 });
	p.min_p = 0.39f; /* keeps p >= 0.195 */
	check_freq("min_p=0.39", &p, l3, 3, (const double[]){ 0.5, 0.3, 0.2 });
	p.min_p = 0;
	/* top_k then top_p over the renormalised top_k set: {0.625, 0.375}, 0.6 keeps one */
	p.top_k = 2;
	p.top_p = 0.6f;
	check_freq("top_k=2 top_p=0.6", &p, l3, 3, (const double[]){ 1, 0, 0 });
}

/* top_p over a full-size vocabulary (the heap path): only the nucleus is ever drawn, with
 * the right frequencies. 10 tokens hold almost all the mass. */
static void test_big_nucleus(float *logits, float *copy)
{
	const float big[10] = { 19, 18.8f, 18.5f, 18.4f, 18, 17.5f, 17, 16, 15, 14 };
	double pr[10], z = 0, cum = 0, inside = 0;
	int nucleus = 0, cnt[10] = { 0 }, outside = 0;
	gf_sampling p;
	gf_sampler s;

	random_logits(copy, BIG_V, 1);
	for (int i = 0; i < 10; i++) {
		copy[1000 + 37 * i] = big[i];
		pr[i] = exp(big[i]);
	}
	z = 0;
	for (int i = 0; i < BIG_V; i++)
		z += exp(copy[i]);
	for (int i = 0; i < 10; i++)
		pr[i] /= z;
	/* reference nucleus for top_p = 0.8 */
	while (nucleus < 10 && cum < 0.8) {
		cum += pr[nucleus];
		nucleus++;
	}
	CHECK(nucleus > 2 && nucleus < 10 && cum < 0.999, "test set-up: nucleus of %d", nucleus);
	for (int i = 0; i < nucleus; i++)
		inside += pr[i];

	gf_sampling_defaults(&p);
	p.top_p = 0.8f;
	p.seed = 7;
	gf_sampler_init(&s, BIG_V, &p);
	for (int d = 0; d < NUCLEUS_DRAWS; d++) {
		int32_t t, k;

		memcpy(logits, copy, BIG_V * sizeof(float));
		t = gf_sampler_sample(&s, logits);
		k = (t - 1000) / 37;
		if (t >= 1000 && (t - 1000) % 37 == 0 && k < nucleus)
			cnt[k]++;
		else
			outside++;
	}
	CHECK(outside == 0, "top_p: %d draws outside the nucleus", outside);
	for (int i = 0; i < nucleus; i++) {
		double f = (double)cnt[i] / (NUCLEUS_DRAWS), w = pr[i] / inside;

		CHECK(fabs(f - w) < 0.04, /* 4 sigma */ "top_p: token %d frequency %.4f, want %.4f", i, f, w);
	}
	gf_sampler_free(&s);
}

static void test_penalties(void)
{
	gf_sampling p;
	gf_sampler s;
	float l[3];

	gf_sampling_defaults(&p);
	p.temperature = 0;
	p.presence_penalty = 0.5f;
	gf_sampler_init(&s, 3, &p);
	memcpy(l, (const float[]){ 1.0f, 0.9f, 0.0f }, sizeof(l));
	CHECK(gf_sampler_sample(&s, l) == 0, "presence: nothing seen yet, want 0");
	gf_sampler_accept(&s, 0);
	memcpy(l, (const float[]){ 1.0f, 0.9f, 0.0f }, sizeof(l));
	CHECK(gf_sampler_sample(&s, l) == 1, "presence: 0 seen, want 1");
	gf_sampler_accept(&s, 1);
	gf_sampler_accept(&s, 1);
	memcpy(l, (const float[]){ 1.0f, 0.9f, 0.0f }, sizeof(l));
	/* presence counts once: 0.5 and 0.4 */
	CHECK(gf_sampler_sample(&s, l) == 0, "presence: applied more than once");
	gf_sampler_accept(&s, -1); /* ignored */
	gf_sampler_accept(&s, 3);
	gf_sampler_free(&s);

	gf_sampling_defaults(&p);
	p.temperature = 0;
	p.frequency_penalty = 0.3f;
	gf_sampler_init(&s, 2, &p);
	gf_sampler_accept(&s, 0);
	memcpy(l, (const float[]){ 2.0f, 1.5f }, 2 * sizeof(float));
	CHECK(gf_sampler_sample(&s, l) == 0, "frequency: 1 occurrence (1.7 vs 1.5), want 0");
	gf_sampler_accept(&s, 0);
	memcpy(l, (const float[]){ 2.0f, 1.5f }, 2 * sizeof(float));
	CHECK(gf_sampler_sample(&s, l) == 1, "frequency: 2 occurrences (1.4 vs 1.5), want 1");
	gf_sampler_free(&s);

	/* Penalties shift the sampled distribution too: a negative presence penalty of
	 * ln(4) on token 1 of an even pair makes it 4:1 (0.8). */
	{
		const float even[2] = { 0, 0 };

		gf_sampling_defaults(&p);
		p.presence_penalty = -logf(4);
		p.seed = 3;
		gf_sampler_init(&s, 2, &p);
		gf_sampler_accept(&s, 1);
		int c1 = 0;

		for (int d = 0; d < DRAWS; d++) {
			float x[2] = { even[0], even[1] };

			c1 += gf_sampler_sample(&s, x) == 1;
		}
		CHECK(fabs((double)c1 / DRAWS - 0.8) < 0.015, "penalised draw: %.4f, want 0.8",
		      (double)c1 / DRAWS);
		gf_sampler_free(&s);
	}
}

static void test_odd_logits(void)
{
	float l[4] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY };
	gf_sampling p;
	gf_sampler s;
	int32_t t;

	gf_sampling_defaults(&p);
	gf_sampler_init(&s, 4, &p);
	t = gf_sampler_sample(&s, l);
	CHECK(t >= 0 && t < 4, "all -inf: token %d", t);
	memcpy(l, (const float[]){ 0, NAN, 1, -INFINITY }, sizeof(l));
	for (int i = 0; i < 100; i++) {
		float x[4];

		memcpy(x, l, sizeof(x));
		t = gf_sampler_sample(&s, x);
		CHECK(t == 0 || t == 2, "NaN/-inf logits: drew %d", t);
	}
	memcpy(l, (const float[]){ 0, INFINITY, 1, 2 }, sizeof(l));
	CHECK(gf_sampler_sample(&s, l) == 1, "+inf logit not chosen");
	gf_sampler_free(&s);
}

int main(void)
{
	float *logits = malloc(BIG_V * sizeof(float)), *copy = malloc(BIG_V * sizeof(float));

	if (!logits || !copy)
		return 1;
	test_check();
	test_greedy_and_seeds(logits, copy);
	test_distributions();
	test_big_nucleus(logits, copy);
	test_penalties();
	test_odd_logits();
	free(logits);
	free(copy);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("model_sampling: all checks passed\n");
	return 0;
}
