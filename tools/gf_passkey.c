/*
 * gf-passkey — the pass-key retrieval test through the engine (daemon/engine.h): a haystack
 * of N tokens with a 5-digit pass key hidden at a random depth is ingested into the paged
 * cache store, the question is asked on a branch of the stored context, and the greedy
 * answer is compared with the key. Prints accuracy by depth, ingest tokens/s and the
 * cache's bytes on disk; the last line is one JSON object.
 *
 *   gf-passkey --model M.gguf [--tokens N] [--trials K] [--seed S] [--cache-dir D]
 *              [--threads T] [--tier-mb MB] [--compute f32|bf16|auto] [--min-correct M]
 *              [--keep]
 *   gf-passkey --print-haystack|--print-context [--tokens N] [--seed S]
 *
 * The haystack is the one the model was trained on (tools/train/data.py, passkey_text;
 * keep both in step), for a model with the byte vocabulary (one token per byte):
 *
 *     PREFIX, FILLER x before, NEEDLE, FILLER x (units - before), FILLER cut to fit
 *     QUESTION                                  (asked in the session, not ingested)
 *
 * with units = (N - |QUESTION| - |PREFIX| - |NEEDLE|) / |FILLER| and before =
 * round-half-even(depth * units), so context + question are exactly N tokens. Trial i of K
 * draws its key in 10000..99999 and its depth in [i/K, (i+1)/K) from a generator seeded
 * with (S, i): the depths cover the haystack evenly and every run with the same S is the
 * same. The answer is the greedy continuation up to the first non-digit (at most 12
 * tokens); a trial passes when it equals the key.
 *
 * --print-haystack writes trial 0's context and question to stdout (and "depth D key K" to
 * stderr), for comparing with tools/train/passkey.py (tests/passkey_format.sh);
 * --print-context the context alone, to ingest with gf or gf-run (the question is then
 * "\nWhat is the pass key? The pass key is ").
 *
 * Exit codes: 0 when at least M trials pass (M defaults to 0: a benchmark), 1 when fewer
 * do or on a runtime error, 2 for bad usage. Errors are one line on stderr.
 */
#include "goldfinch_version.h"
#include "cache_store.h"
#include "engine.h"
#include "goldfinch.h"

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EX_OK = 0, EX_FAIL = 1, EX_USAGE = 2 };

#define MAX_TRIALS 1000
#define MAX_ANSWER 12
#define FEED_BYTES (64u << 10)
#define N_BINS 5

static const char PREFIX[] =
	"There is an important info hidden inside a lot of irrelevant text. "
	"Find it and memorize it. I will quiz you about the important information there.\n";
static const char FILLER[] =
	"The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
static const char NEEDLE_FMT[] = "The pass key is %s. Remember it. %s is the pass key. ";
static const char QUESTION[] = "\nWhat is the pass key? The pass key is ";

static void usage(FILE *f)
{
	fprintf(f,
		"usage: gf-passkey --model M.gguf [--tokens N] [--trials K] [--seed S]\n"
		"                  [--cache-dir D] [--threads T] [--tier-mb MB]\n"
		"                  [--compute f32|bf16|auto] [--min-correct M] [--keep]\n"
		"       gf-passkey --print-haystack|--print-context [--tokens N] [--seed S]\n"
		"\n"
		"Pass-key retrieval through the engine: per trial, a haystack of N tokens (default\n"
		"100000; question included) with a 5-digit key at a random depth is ingested into\n"
		"the page store, the question is asked, and the greedy answer is checked.\n"
		"The model must have the byte vocabulary (gf-convert --byte-vocab).\n"
		"  --trials K        trials, depths spread over the haystack (default 10)\n"
		"  --seed S          seed of keys and depths (default 1)\n"
		"  --cache-dir D     page store to use (default: a new folder under $TMPDIR or\n"
		"                    /tmp, removed at the end unless --keep)\n"
		"  --threads T       compute threads (default: OpenBLAS's count, the cores)\n"
		"  --tier-mb MB      expanded key/value tier (default %d); the answer's decode\n"
		"                    steps rebuild keys and values from the pages unless the tier\n"
		"                    holds them: 2 * GOLD layers * C * 2 bytes per token. Resident\n"
		"                    memory is about weights + page cache (256 MiB) + the tier\n"
		"  --compute MODE    f32, bf16 or auto: how the ingest multiplies (default %s,\n"
		"                    or $GOLDFINCH_COMPUTE). f32 is exact; bf16 (AVX512-BF16\n"
		"                    CPUs) ingests faster\n"
		"  --min-correct M   exit 1 when fewer than M trials pass (default 0)\n"
		"  --keep            keep the contexts (default: each is removed after its trial)\n"
		"  --print-haystack  write trial 0's context and question to stdout, its depth\n"
		"                    and key to stderr, and exit (no model needed)\n"
		"  --print-context   the same without the question (to ingest it elsewhere; the\n"
		"                    question is \"\\nWhat is the pass key? The pass key is \")\n",
		GFE_TIER_DEFAULT_MB, gf_compute_name(gf_compute_default()));
}

static int die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int die(int code, const char *fmt, ...)
{
	va_list ap;

	fputs("gf-passkey: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return code;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || *s == '-')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

/* splitmix64: a small seeded generator; trial i uses its own stream. */
static uint64_t mix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double uniform01(uint64_t *s)
{
	return (double)(mix64(s) >> 11) * 0x1p-53;
}

/* The context (everything but the question) of an n_tokens haystack; *len its bytes.
 * Returns a malloc'd buffer, or NULL (errno ENOMEM, or EINVAL when n_tokens is too small). */
static char *haystack(uint64_t n_tokens, double depth, const char *key, size_t *len)
{
	char needle[128];
	const size_t n_f = sizeof(FILLER) - 1, n_p = sizeof(PREFIX) - 1;
	const size_t n_q = sizeof(QUESTION) - 1;
	int n_n = snprintf(needle, sizeof(needle), NEEDLE_FMT, key, key);

	if (n_tokens < n_q + n_p + (size_t)n_n) {
		errno = EINVAL;
		return NULL;
	}
	size_t n_ctx = n_tokens - n_q;
	size_t units = (n_ctx - n_p - (size_t)n_n) / n_f;
	/* nearbyint rounds half to even, as Python's round() in data.py does. */
	size_t before = (size_t)nearbyint(depth * (double)units);
	char *buf = malloc(n_ctx), *p = buf;

	if (!buf)
		return NULL;
	memcpy(p, PREFIX, n_p);
	p += n_p;
	for (size_t i = 0; i < before; i++, p += n_f)
		memcpy(p, FILLER, n_f);
	memcpy(p, needle, (size_t)n_n);
	p += n_n;
	for (size_t i = before; i < units; i++, p += n_f)
		memcpy(p, FILLER, n_f);
	memcpy(p, FILLER, n_ctx - (size_t)(p - buf)); /* the last unit, cut to fit */
	*len = n_ctx;
	return buf;
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	return remove(path);
}

struct trial {
	double depth;
	char key[8];
	char answer[MAX_ANSWER + 1];
	bool ok;
	double ingest_s, ask_s;
	uint64_t n_ctx, disk_bytes;
};

/* Key and depth of trial i of k: a stream of its own per (seed, i). */
static void trial_params(uint64_t seed, uint64_t i, uint64_t k, struct trial *t)
{
	uint64_t st = seed * 0x9e3779b97f4a7c15ull ^ (i + 1) * 0xd1b54a32d192ed03ull;

	snprintf(t->key, sizeof(t->key), "%05u", (unsigned)(10000 + mix64(&st) % 90000));
	t->depth = ((double)i + uniform01(&st)) / (double)k;
}

static int print_haystack(uint64_t n_tokens, uint64_t seed, bool question)
{
	struct trial t;
	size_t n = 0;
	char *hay;

	trial_params(seed, 0, 1, &t);
	hay = haystack(n_tokens, t.depth, t.key, &n);
	if (!hay)
		return die(EX_FAIL, "haystack of %" PRIu64 " tokens: %s", n_tokens,
			   errno == EINVAL ? "too short for the needle" : "out of memory");
	fwrite(hay, 1, n, stdout);
	if (question)
		fwrite(QUESTION, 1, sizeof(QUESTION) - 1, stdout);
	fprintf(stderr, "depth %.17g key %s\n", t.depth, t.key);
	free(hay);
	return fflush(stdout) ? die(EX_FAIL, "stdout: %s", strerror(errno)) : EX_OK;
}

/* One trial: ingest, ask, decode. Fills t; returns 0 or a negative errno with err set. */
static int run_trial(gfe_engine *e, struct trial *t, uint64_t n_tokens, bool keep, char *err)
{
	const gf_tokenizer *tk = gfe_tokenizer(e);
	const int32_t V = gfe_model(e)->cfg.vocab_size;
	gfe_ingest *in = NULL;
	gfe_session *s = NULL;
	gfe_context ctx;
	int32_t *q = NULL;
	float *logits = NULL;
	size_t n_hay = 0, n_q = 0, n_ans = 0;
	char *hay = haystack(n_tokens, t->depth, t->key, &n_hay);
	int rc;

	if (!hay)
		return gf_error(err, -errno, "haystack of %" PRIu64 " tokens: %s", n_tokens,
				errno == EINVAL ? "too short for the needle" : "out of memory");
	double t0 = now_s();
	if ((rc = gfe_ingest_begin(e, NULL, &in, err)))
		goto out;
	for (size_t off = 0; off < n_hay; off += FEED_BYTES) {
		size_t k = n_hay - off < FEED_BYTES ? n_hay - off : FEED_BYTES;

		if ((rc = gfe_ingest_text(in, hay + off, k, err)))
			goto out;
	}
	if ((rc = gfe_ingest_finish(in, &ctx, NULL, err)))
		goto out;
	gfe_ingest_free(in);
	in = NULL;
	t->ingest_s = now_s() - t0;
	t->n_ctx = ctx.n_tokens;
	t->disk_bytes = ctx.disk_bytes;

	t0 = now_s();
	logits = malloc(sizeof(float) * (size_t)V);
	if (!logits || gf_tokenize(tk, (const uint8_t *)QUESTION, sizeof(QUESTION) - 1, &q, &n_q)) {
		rc = gf_error(err, -ENOMEM, "out of memory for the question");
		goto out;
	}
	if ((rc = gfe_session_open(e, ctx.serial, &s, err)) ||
	    (rc = gfe_session_prefill(s, q, n_q, logits, err)))
		goto out;
	for (;;) {
		int32_t best = 0;
		size_t blen;
		const uint8_t *b;

		for (int32_t i = 1; i < V; i++)
			if (logits[i] > logits[best])
				best = i;
		b = gf_tokenizer_token(tk, best, &blen);
		if (!b || blen != 1 || b[0] < '0' || b[0] > '9' || n_ans >= MAX_ANSWER)
			break;
		t->answer[n_ans++] = (char)b[0];
		if ((rc = gfe_session_step(s, best, logits, err)))
			goto out;
	}
	t->answer[n_ans] = '\0';
	t->ok = strcmp(t->answer, t->key) == 0;
	t->ask_s = now_s() - t0;
	gfe_session_free(s);
	s = NULL;
	if (!keep && (rc = cs_store_remove(gfe_store(e), ctx.serial, err)))
		goto out;
	rc = 0;
out:
	gfe_session_free(s);
	gfe_ingest_free(in);
	free(logits);
	free(q);
	free(hay);
	return rc;
}

int main(int argc, char **argv)
{
	const char *model = NULL, *cache_dir = NULL;
	uint64_t n_tokens = 100000, trials = 10, seed = 1, threads = 0, min_correct = 0;
	uint64_t tier_mb = GFE_TIER_DEFAULT_MB;
	gf_compute compute = gf_compute_default();
	bool keep = false;
	int print = 0; /* 1: haystack and question, 2: context only */
	char err[GF_ERR_LEN] = "", tmpdir[4096] = "";
	struct trial *tr = NULL;
	gfe_engine *e = NULL;
	int rc = EX_FAIL;

	if (gf_version_asked(argc, argv, "gf-passkey"))
		return 0;

	gf_blas_prefer_avx512(argv);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t *num = NULL, lo = 0, hi = UINT64_MAX;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return EX_OK;
		}
		if (strcmp(a, "--keep") == 0) {
			keep = true;
			continue;
		}
		if (strcmp(a, "--print-haystack") == 0 || strcmp(a, "--print-context") == 0) {
			print = strcmp(a, "--print-context") == 0 ? 2 : 1;
			continue;
		}
		if (!v)
			return die(EX_USAGE, "%s: %s (see --help)", a,
				   strncmp(a, "--", 2) ? "unexpected argument" : "needs a value");
		i++;
		if (strcmp(a, "--model") == 0) {
			model = v;
		} else if (strcmp(a, "--cache-dir") == 0) {
			cache_dir = v;
		} else if (strcmp(a, "--tokens") == 0) {
			num = &n_tokens, lo = 1000, hi = 1ull << 34;
		} else if (strcmp(a, "--trials") == 0) {
			num = &trials, lo = 1, hi = MAX_TRIALS;
		} else if (strcmp(a, "--seed") == 0) {
			num = &seed;
		} else if (strcmp(a, "--threads") == 0) {
			num = &threads, lo = 1, hi = 1024;
		} else if (strcmp(a, "--tier-mb") == 0) {
			num = &tier_mb, hi = 1u << 20;
		} else if (strcmp(a, "--compute") == 0) {
			char why[GF_ERR_LEN];
			if (gf_compute_parse(v, &compute, why))
				return die(EX_USAGE, "--compute: %s", why);
		} else if (strcmp(a, "--min-correct") == 0) {
			num = &min_correct, hi = MAX_TRIALS;
		} else {
			return die(EX_USAGE, "unknown option %s (see --help)", a);
		}
		if (num && parse_u64(v, lo, hi, num))
			return die(EX_USAGE, "%s %s: not an integer in %" PRIu64 "..%" PRIu64, a, v, lo,
				   hi);
	}
	if (print)
		return print_haystack(n_tokens, seed, print == 1);
	if (!model)
		return die(EX_USAGE, "--model is required (see --help)");
	if (min_correct > trials)
		return die(EX_USAGE, "--min-correct %" PRIu64 " exceeds --trials %" PRIu64,
			   min_correct, trials);
	if (!cache_dir) {
		const char *t = getenv("TMPDIR");

		snprintf(tmpdir, sizeof(tmpdir), "%s/gf-passkey.XXXXXX", t && *t ? t : "/tmp");
		if (!mkdtemp(tmpdir))
			return die(EX_FAIL, "%s: cannot create: %s", tmpdir, strerror(errno));
		cache_dir = tmpdir;
	}

	gfe_config cfg;
	gfe_config_defaults(&cfg);
	cfg.model_path = model;
	cfg.cache_dir = cache_dir;
	cfg.threads = (int)threads;
	cfg.tier_bytes = tier_mb << 20; /* the answer's decode steps reuse expanded keys */
	cfg.compute = compute;
	if (gfe_open(&e, &cfg, err)) {
		die(EX_FAIL, "%s", err);
		goto out;
	}
	const gf_tokenizer *tk = gfe_tokenizer(e);
	size_t blen;
	const uint8_t *b1 = tk ? gf_tokenizer_token(tk, '7' + 1, &blen) : NULL;
	if (!b1 || blen != 1 || b1[0] != '7') {
		die(EX_FAIL, "%s: not a byte-vocabulary model (convert it with gf-convert "
		    "--byte-vocab)", model);
		goto out;
	}
	tr = calloc(trials, sizeof(*tr));
	if (!tr) {
		die(EX_FAIL, "out of memory");
		goto out;
	}

	const gf_config *mc = &gfe_model(e)->cfg;
	printf("gf-passkey: model %s (layers %d, C %d, G %d), %" PRIu64 " tokens per haystack, "
	       "%" PRIu64 " trials, seed %" PRIu64 ", compute %s (kernels %s), OpenBLAS %s x%d\n",
	       model, mc->n_layer, mc->n_embd, mc->first_gold, n_tokens, trials, seed,
	       gf_compute_name(gfe_model(e)->compute), gf_model_isa_name(gfe_model(e)),
	       gf_blas_corename(), gf_blas_threads());
	uint64_t n_ok = 0;
	for (uint64_t i = 0; i < trials; i++) {
		struct trial *t = &tr[i];

		trial_params(seed, i, trials, t);
		if (run_trial(e, t, n_tokens, keep, err)) {
			die(EX_FAIL, "trial %" PRIu64 ": %s", i, err);
			goto out;
		}
		n_ok += t->ok;
		printf("trial %2" PRIu64 ": depth %5.1f%%  key %s  answer %-12s %s  ingest %.1f s "
		       "(%.0f tokens/s), ask %.2f s, cache %.2f MB on disk\n", i, 100 * t->depth,
		       t->key, t->answer[0] ? t->answer : "(none)", t->ok ? "ok  " : "FAIL",
		       t->ingest_s, (double)t->n_ctx / t->ingest_s, t->ask_s,
		       (double)t->disk_bytes / 1e6);
		fflush(stdout);
	}

	/* Accuracy by depth: five bins of the haystack. */
	uint64_t bin_n[N_BINS] = { 0 }, bin_ok[N_BINS] = { 0 }, disk = 0, ctx_tok = 0;
	double ingest_s = 0, ask_s = 0;
	for (uint64_t i = 0; i < trials; i++) {
		int b = (int)(tr[i].depth * N_BINS);

		b = b < N_BINS ? b : N_BINS - 1;
		bin_n[b]++;
		bin_ok[b] += tr[i].ok;
		ingest_s += tr[i].ingest_s;
		ask_s += tr[i].ask_s;
		disk += tr[i].disk_bytes;
		ctx_tok += tr[i].n_ctx;
	}
	printf("accuracy %" PRIu64 "/%" PRIu64 "; by depth:", n_ok, trials);
	for (int b = 0; b < N_BINS; b++)
		if (bin_n[b])
			printf("  %d-%d%% %" PRIu64 "/%" PRIu64, 100 * b / N_BINS,
			       100 * (b + 1) / N_BINS, bin_ok[b], bin_n[b]);
	printf("\ningest %.0f tokens/s (mean over trials), ask %.2f s per question, cache %.0f "
	       "bytes on disk per context (%.2f bytes/token)\n", (double)ctx_tok / ingest_s,
	       ask_s / (double)trials, (double)disk / (double)trials,
	       (double)disk / (double)ctx_tok);
	printf("{\"tokens\":%" PRIu64 ",\"trials\":%" PRIu64 ",\"correct\":%" PRIu64
	       ",\"compute\":\"%s\",\"kernels\":\"%s\""
	       ",\"ingest_tokens_per_s\":%.1f,\"ask_s\":%.3f,\"cache_bytes_per_context\":%.0f,"
	       "\"cache_bytes_per_token\":%.3f,\"by_depth\":[", n_tokens, trials, n_ok,
	       gf_compute_name(gfe_model(e)->compute), gf_model_isa_name(gfe_model(e)),
	       (double)ctx_tok / ingest_s, ask_s / (double)trials, (double)disk / (double)trials,
	       (double)disk / (double)ctx_tok);
	for (int b = 0, first = 1; b < N_BINS; b++) {
		if (!bin_n[b])
			continue;
		printf("%s{\"from\":%.2f,\"to\":%.2f,\"correct\":%" PRIu64 ",\"trials\":%" PRIu64 "}",
		       first ? "" : ",", (double)b / N_BINS, (double)(b + 1) / N_BINS, bin_ok[b],
		       bin_n[b]);
		first = 0;
	}
	printf("]}\n");
	if (n_ok < min_correct) {
		die(EX_FAIL, "%" PRIu64 " of %" PRIu64 " trials correct, fewer than the %" PRIu64
		    " required", n_ok, trials, min_correct);
		goto out;
	}
	rc = EX_OK;
out:
	free(tr);
	gfe_close(e);
	if (tmpdir[0] && !keep)
		nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return rc;
}
