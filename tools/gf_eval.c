/*
 * gf-eval — logits of a model over a token file, for checking the engine against references.
 *
 *   gf-eval --model M.gguf --tokens T.i32 (--logits OUT.f32 | --loss) [--prefill P]
 *           [--dump-cache C.f32] [--threads N] [--compute f32|bf16|auto]
 *
 * Without --prefill: one exact full forward, logits [T][V] for every position.
 * With --prefill P: the linear prefill of the first P tokens, then one decode step per
 * remaining token; logits of positions P-1..T-1, [T-P+1][V].
 * --loss prints the mean cross-entropy of each next token under the logits before it, in
 * bits per token (bits per byte for a byte-level model), on one line.
 */
#include "goldfinch_version.h"
#include "goldfinch.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: gf-eval --model M.gguf --tokens T.i32 (--logits OUT.f32 | --loss) [options]\n"
		"  --model FILE       GGUF model written by gf-convert\n"
		"  --tokens FILE      int32 little-endian token ids\n"
		"  --logits FILE      float32 logits out: [T][V], or [T-P+1][V] with --prefill\n"
		"  --loss             print the next-token cross-entropy in bits per token (with or\n"
		"                     without --logits)\n"
		"  --prefill P        linear prefill of the first P tokens, then decode the rest\n"
		"                     one token at a time (logits of positions P-1..T-1)\n"
		"  --dump-cache FILE  the compressed cache c as float32 [T][Ck]\n"
		"  --threads N        compute threads (default: OpenBLAS's count, the cores)\n"
		"  --compute MODE     f32, bf16 or auto: how prefill chunks multiply (default %s,\n"
		"                     or $GOLDFINCH_COMPUTE). f32 is exact (what the reference\n"
		"                     vectors check); bf16 (AVX512-BF16 CPUs) is faster, less exact\n",
		gf_compute_name(gf_compute_default()));
}

static int read_tokens(const char *path, int32_t **out, int64_t *n)
{
	FILE *f = fopen(path, "rb");
	struct stat sb;
	if (!f) {
		fprintf(stderr, "gf-eval: %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (fstat(fileno(f), &sb) || sb.st_size % 4) {
		fprintf(stderr, "gf-eval: %s: size %lld is not a whole number of int32 tokens\n", path,
			(long long)sb.st_size);
		fclose(f);
		return -1;
	}
	*n = sb.st_size / 4;
	*out = malloc((size_t)(*n ? *n : 1) * 4);
	if (!*out || fread(*out, 4, (size_t)*n, f) != (size_t)*n) {
		fprintf(stderr, "gf-eval: %s: read failed\n", path);
		fclose(f);
		return -1;
	}
	fclose(f);
	return 0;
}

static int write_floats(const char *path, const float *x, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(x, sizeof(float), n, f) != n || fclose(f)) {
		fprintf(stderr, "gf-eval: %s: write failed: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Mean -log2 p(next[i]) under the softmax of logits row i, for i < n (doubles). */
static void print_loss(const float *logits, size_t V, const int32_t *next, int64_t n)
{
	double bits = 0;
	for (int64_t i = 0; i < n; i++) {
		const float *row = logits + (size_t)i * V;
		double mx = row[0], sum = 0;
		for (size_t v = 1; v < V; v++)
			mx = row[v] > mx ? row[v] : mx;
		for (size_t v = 0; v < V; v++)
			sum += exp((double)row[v] - mx);
		bits += (log(sum) + mx - (double)row[next[i]]) / log(2.0);
	}
	printf("loss: %.6f bits per token over %lld predictions\n", n > 0 ? bits / (double)n : 0.0,
	       (long long)n);
}

int main(int argc, char **argv)
{
	if (gf_version_asked(argc, argv, "gf-eval"))
		return 0;

	gf_blas_prefer_avx512(argv);
	const char *model_path = NULL, *tokens_path = NULL, *logits_path = NULL, *cache_path = NULL;
	long prefill = -1;
	int threads = 0, loss = 0;
	gf_compute compute = gf_compute_default();
	char err[GF_ERR_LEN];
	static const struct option opts[] = {
		{ "model", required_argument, 0, 'm' },   { "tokens", required_argument, 0, 't' },
		{ "logits", required_argument, 0, 'l' },  { "prefill", required_argument, 0, 'p' },
		{ "dump-cache", required_argument, 0, 'c' }, { "threads", required_argument, 0, 'j' },
		{ "compute", required_argument, 0, 'C' }, { "help", no_argument, 0, 'h' },
		{ "loss", no_argument, 0, 'L' },
		{ 0, 0, 0, 0 },
	};
	for (int o; (o = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
		char *end;
		switch (o) {
		case 'm': model_path = optarg; break;
		case 't': tokens_path = optarg; break;
		case 'l': logits_path = optarg; break;
		case 'c': cache_path = optarg; break;
		case 'p':
			prefill = strtol(optarg, &end, 10);
			if (*end || prefill < 1) {
				fprintf(stderr, "gf-eval: --prefill %s: expected a positive integer\n", optarg);
				return 2;
			}
			break;
		case 'j':
			threads = (int)strtol(optarg, &end, 10);
			if (*end || threads < 1) {
				fprintf(stderr, "gf-eval: --threads %s: expected a positive integer\n", optarg);
				return 2;
			}
			break;
		case 'C':
			if (gf_compute_parse(optarg, &compute, err)) {
				fprintf(stderr, "gf-eval: --compute: %s\n", err);
				return 2;
			}
			break;
		case 'L': loss = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!model_path || !tokens_path || (!logits_path && !loss) || optind != argc) {
		usage(stderr);
		return 2;
	}
	gf_blas_set_threads(threads);

	gf_model *m = NULL;
	int32_t *tok = NULL;
	int64_t T = 0;
	float *logits = NULL, *cache = NULL;
	int status = 1;
	if (gf_model_load_slice(&m, model_path, 0, -1, gf_compute_load_flag(compute), err)) {
		fprintf(stderr, "gf-eval: %s\n", err);
		return 1;
	}
	const gf_config *c = &m->cfg;
	if (read_tokens(tokens_path, &tok, &T))
		goto out;
	if (T == 0) {
		fprintf(stderr, "gf-eval: %s: empty input, no tokens\n", tokens_path);
		goto out;
	}
	for (int64_t t = 0; t < T; t++)
		if (tok[t] < 0 || tok[t] >= c->vocab_size) {
			fprintf(stderr, "gf-eval: %s: token %d at position %lld is outside the vocabulary (0..%d)\n",
				tokens_path, tok[t], (long long)t, c->vocab_size - 1);
			goto out;
		}
	if (prefill > T) {
		fprintf(stderr, "gf-eval: --prefill %ld: larger than the %lld tokens given\n", prefill,
			(long long)T);
		goto out;
	}
	const size_t V = (size_t)c->vocab_size;
	if (cache_path && !(cache = malloc(sizeof(float) * (size_t)T * c->ckv_dim))) {
		fprintf(stderr, "gf-eval: out of memory\n");
		goto out;
	}
	if (prefill < 0) {
		if (!(logits = malloc(sizeof(float) * (size_t)T * V))) {
			fprintf(stderr, "gf-eval: out of memory for %lld x %zu logits\n", (long long)T, V);
			goto out;
		}
		if (gf_forward_full(m, tok, T, logits, cache, NULL, NULL, err)) {
			fprintf(stderr, "gf-eval: %s\n", err);
			goto out;
		}
		if (logits_path && write_floats(logits_path, logits, (size_t)T * V))
			goto out;
		if (loss)
			print_loss(logits, V, tok + 1, T - 1);
	} else {
		const size_t rows = (size_t)(T - prefill + 1);
		gf_workspace *ws = NULL;
		gf_state st = { 0 };
		gf_kv kv = { 0 };
		int rc;
		if (!(logits = malloc(sizeof(float) * rows * V))) {
			fprintf(stderr, "gf-eval: out of memory\n");
			goto out;
		}
		int chunk = 256, W = gf_config_tail_window(c);
		if (chunk < W)
			chunk = W;
		rc = gf_workspace_init(&ws, m, chunk);
		if (!rc)
			rc = gf_state_init(&st, c);
		if (!rc)
			rc = gf_kv_init(&kv, c, T);
		if (!rc)
			rc = gf_prefill(m, ws, &st, &kv, tok, prefill, logits);
		for (int64_t t = prefill; !rc && t < T; t++)
			rc = gf_decode_step(m, ws, &st, &kv, tok[t], logits + (size_t)(t - prefill + 1) * V);
		if (!rc && cache)
			memcpy(cache, kv.c, sizeof(float) * (size_t)T * c->ckv_dim);
		gf_kv_free(&kv);
		gf_state_free(&st);
		gf_workspace_free(ws);
		if (rc) {
			fprintf(stderr, "gf-eval: prefill/decode failed: %s\n", strerror(-rc));
			goto out;
		}
		if (logits_path && write_floats(logits_path, logits, rows * V))
			goto out;
		if (loss)
			print_loss(logits, V, tok + prefill, (int64_t)rows - 1);
	}
	if (cache && write_floats(cache_path, cache, (size_t)T * c->ckv_dim))
		goto out;
	status = 0;
out:
	free(logits);
	free(cache);
	free(tok);
	gf_model_free(m);
	return status;
}
