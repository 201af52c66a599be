/*
 * daemon_ref — the answers goldfinchd must give, computed through the engine library
 * directly (no daemon, no wire): the daemon tests compare against its output.
 *
 *   daemon_ref MODEL CACHE_DIR INPUT [PROMPT MAX_TOKENS TEMPERATURE SEED]
 *
 * Ingests the bytes of INPUT into a new context of the store in CACHE_DIR and prints
 * "key <32 hex>" and "tokens <n>". With a prompt, asks it the way goldfinchd does (the
 * penalties count the answer only, <|endoftext|> ends it and is not part of it) and prints
 * "answer <id> <id> ...". Exit 0, or 1 with one line on stderr.
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int die(const char *what, const char *err)
{
	fprintf(stderr, "daemon_ref: %s: %s\n", what, err);
	return 1;
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN] = "";
	gfe_config cfg;
	gfe_engine *e = NULL;
	gfe_ingest *in = NULL;
	gfe_context ctx;
	if (argc != 4 && argc != 8) {
		fprintf(stderr, "usage: daemon_ref MODEL CACHE_DIR INPUT [PROMPT MAX_TOKENS TEMPERATURE SEED]\n");
		return 1;
	}
	gfe_config_defaults(&cfg);
	cfg.model_path = argv[1];
	cfg.cache_dir = argv[2];
	if (gfe_open(&e, &cfg, err))
		return die("open", err);
	FILE *f = fopen(argv[3], "rb");
	if (!f)
		return die(argv[3], "cannot open");
	if (gfe_ingest_begin(e, NULL, &in, err))
		return die("ingest", err);
	char buf[4096];
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		if (gfe_ingest_text(in, buf, n, err))
			return die("ingest", err);
	fclose(f);
	if (gfe_ingest_finish(in, &ctx, NULL, err))
		return die("ingest", err);
	gfe_ingest_free(in);
	char hex[33];
	cs_key_hex(ctx.key, hex);
	printf("key %s\ntokens %llu\n", hex, (unsigned long long)ctx.n_tokens);
	if (argc == 8) {
		const gf_tokenizer *tk = gfe_tokenizer(e);
		const int32_t V = gfe_model(e)->cfg.vocab_size;
		int32_t *ids;
		size_t n_ids;
		gfe_session *s;
		gf_sampling sp;
		gf_sampler sm;
		long max = strtol(argv[5], NULL, 10);
		gf_sampling_defaults(&sp);
		sp.temperature = strtof(argv[6], NULL);
		sp.seed = strtoull(argv[7], NULL, 10);
		float *logits = malloc(sizeof(float) * (size_t)V);
		if (!logits || gf_sampler_init(&sm, V, &sp))
			return die("sampler", "cannot initialise");
		if (gf_tokenize(tk, (const uint8_t *)argv[4], strlen(argv[4]), &ids, &n_ids) || !n_ids)
			return die("prompt", "no tokens");
		if (gfe_session_open(e, ctx.serial, &s, err))
			return die("session", err);
		if (gfe_session_prefill(s, ids, n_ids, logits, err))
			return die("prefill", err);
		printf("answer");
		for (long i = 0; i < max; i++) {
			int32_t tok = gf_sampler_sample(&sm, logits);
			if (tok == 0)
				break;
			gf_sampler_accept(&sm, tok);
			printf(" %d", tok);
			if (i + 1 < max && gfe_session_step(s, tok, logits, err))
				return die("step", err);
		}
		printf("\n");
		gfe_session_free(s);
		gf_sampler_free(&sm);
		free(ids);
		free(logits);
	}
	gfe_close(e);
	return 0;
}
