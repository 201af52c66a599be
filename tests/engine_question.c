/*
 * engine_question — context + question through a session equals one full forward.
 *
 *   engine_question MODEL.gguf TMP_DIR [bf16]
 *
 * A context of N = 800 random tokens (3 key blocks of GF_KV_BLOCK and a partial one) is
 * ingested with c stored as f32, chunks of 100 and pages of 100 (no boundary lines up). For
 * questions of 1, 5, W-1, W+3, 222 (its decode steps cross into key block 4) and 300 tokens
 * (W = the GOLD tail window), each in its own session: the prefill's logits equal row
 * N+L-1 of gf_forward_full over context + question, and D = 4 decode steps after it equal
 * the following rows, within 2e-5 of max|ref|
 * (../shared/testdata/README.md). Run with the expanded tier off, then on: with the tier on
 * every question is asked twice, the later sessions must be served by the tier (hits grow)
 * and every logit must be bit-identical to the tier-off run. The stored context (tokens,
 * rows, snapshot, key) is unchanged after all the sessions. Last, an engine whose row type
 * differs from the context's must refuse a session on it (not read past its buffers).
 * With bf16, the engine keeps keys and values in bf16 (the daemon's default): the tier must
 * still change no bit, and the logits stay within BF16_TOL of the full float forward.
 * Exit 0 pass, 1 fail.
 */
#include "engine.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 800
#define QMAX 300
#define D 4
#define F32_TOL 2e-5
/* bf16 keys and values (8 bits of mantissa): measured up to 1.6e-3 on these models. */
#define BF16_TOL 5e-3
static double TOL = F32_TOL;
static gf_dtype kv_dtype = GF_DTYPE_F32;
#define N_LEN 6

static int failures;

static double rel_diff(const float *out, const float *ref, size_t n)
{
	double maxref = 0, maxdiff = 0;
	for (size_t i = 0; i < n; i++) {
		maxref = fmax(maxref, fabs(ref[i]));
		double d = fabs((double)out[i] - ref[i]);
		maxdiff = isnan(d) ? INFINITY : fmax(maxdiff, d);
	}
	return maxdiff / maxref;
}

struct stored {
	cs_ctx_info info;
	float *rows;
	uint32_t *tok;
	void *blob;
	size_t blob_len;
};

static int read_stored(gfe_engine *e, uint64_t serial, struct stored *s)
{
	char err[GF_ERR_LEN];
	cs_reader *r;
	const int Ck = gfe_model(e)->cfg.ckv_dim;

	memset(s, 0, sizeof(*s));
	if (cs_reader_open(gfe_store(e), serial, &r, err)) {
		fprintf(stderr, "reader: %s\n", err);
		return 1;
	}
	cs_reader_info(r, &s->info);
	s->rows = malloc(sizeof(float) * s->info.n_tokens * Ck);
	s->tok = malloc(sizeof(uint32_t) * s->info.n_tokens);
	int rc = !s->rows || !s->tok ||
		 cs_reader_read(r, 0, s->info.n_tokens, s->rows, s->tok, err) ||
		 cs_reader_blob(r, &s->blob, &s->blob_len, err);
	if (rc)
		fprintf(stderr, "read: %s\n", err);
	cs_reader_close(r);
	return rc;
}

static void stored_free(struct stored *s)
{
	free(s->rows);
	free(s->tok);
	free(s->blob);
}

static int open_engine(const char *model, const char *dir, cs_dtype dt, uint64_t tier,
		       gfe_engine **e)
{
	char err[GF_ERR_LEN];
	gfe_config cfg;

	gfe_config_defaults(&cfg);
	cfg.model_path = model;
	cfg.cache_dir = dir;
	cfg.chunk = 100;
	cfg.page_tokens = 100;
	cfg.c_dtype = dt;
	cfg.checkpoint_tokens = 256;
	cfg.tier_bytes = tier;
	cfg.kv_dtype = kv_dtype;
	if (gfe_open(e, &cfg, err)) {
		fprintf(stderr, "open %s: %s\n", dir, err);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN], dir[1024], what[160];
	if (argc != 3 && !(argc == 4 && !strcmp(argv[3], "bf16"))) {
		fprintf(stderr, "usage: engine_question MODEL.gguf TMP_DIR [bf16]\n");
		return 1;
	}
	if (argc == 4) {
		kv_dtype = GF_DTYPE_BF16;
		TOL = BF16_TOL;
	}
	gf_model *m;
	if (gf_model_load(&m, argv[1], err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	const int V = m->cfg.vocab_size, Wn = gf_config_tail_window(&m->cfg);
	/* 222: the decode steps cross a key block boundary (position 1024). */
	const int lens[N_LEN] = { 1, 5, Wn - 1, Wn + 3, 3 * GF_KV_BLOCK + GF_KV_BLOCK - N - 2, QMAX };
	const int total = N + QMAX + D;
	printf("model: %d layers (G %d), C %d, V %d, rope %g; W %d\n", m->cfg.n_layer,
	       m->cfg.first_gold, m->cfg.n_embd, V, m->cfg.rope_base, Wn);

	int32_t *tok = malloc(sizeof(int32_t) * total);
	uint64_t x = 0x243f6a8885a308d3ull;
	for (int i = 0; i < total; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		tok[i] = (int32_t)(x % (uint64_t)V);
	}
	float *full = malloc(sizeof(float) * (size_t)total * V);
	if (gf_forward_full(m, tok, total, full, NULL, NULL, NULL, err)) {
		fprintf(stderr, "forward: %s\n", err);
		return 1;
	}
	/* Per question length: prefill logits, then D step logits; from the tier-off run. */
	float *first[N_LEN], *out = malloc(sizeof(float) * (size_t)(1 + D) * V);
	for (int i = 0; i < N_LEN; i++)
		first[i] = malloc(sizeof(float) * (size_t)(1 + D) * V);
	uint64_t serial = 0;

	for (int tier = 0; tier < 2; tier++) {
		gfe_engine *e;
		gfe_ingest *in;
		gfe_context ctx;
		struct stored before, after;

		snprintf(dir, sizeof(dir), "%s/tier%d", argv[2], tier);
		if (open_engine(argv[1], dir, CS_DTYPE_F32, tier ? 256ull << 20 : 0, &e))
			return 1;
		printf("tier %s\n", tier ? "on" : "off");
		if (gfe_ingest_begin(e, "ctx", &in, err) || gfe_ingest_tokens(in, tok, N, err) ||
		    gfe_ingest_finish(in, &ctx, out, err)) {
			fprintf(stderr, "ingest: %s\n", err);
			return 1;
		}
		gfe_ingest_free(in);
		serial = ctx.serial;
		double rel = rel_diff(out, full + (size_t)(N - 1) * V, V);
		printf("  %-40s %.2e %s\n", "ingest: last logits", rel, rel <= TOL ? "ok" : "FAIL");
		failures += !(rel <= TOL);
		if (read_stored(e, serial, &before))
			return 1;

		uint64_t hits_before = 0;
		for (int pass = 0; pass < (tier ? 2 : 1); pass++) {
			for (int li = 0; li < N_LEN; li++) {
				const int L = lens[li];
				gfe_session *s;
				if (gfe_session_open(e, serial, &s, err) ||
				    gfe_session_prefill(s, tok + N, (size_t)L, out, err)) {
					fprintf(stderr, "question of %d: %s\n", L, err);
					return 1;
				}
				for (int d = 0; d < D; d++)
					if (gfe_session_step(s, tok[N + L + d], out + (size_t)(1 + d) * V, err)) {
						fprintf(stderr, "step %d after %d: %s\n", d, L, err);
						return 1;
					}
				if (gfe_session_tokens(s) != (uint64_t)(N + L + D) ||
				    gfe_session_base_tokens(s) != N) {
					printf("  session token counts wrong  FAIL\n");
					failures++;
				}
				gfe_session_free(s);
				double rp = rel_diff(out, full + (size_t)(N + L - 1) * V, V);
				double rd = rel_diff(out + V, full + (size_t)(N + L) * V, (size_t)D * V);
				bool ok = rp <= TOL && rd <= TOL;
				const char *same = "";
				if (tier && memcmp(out, first[li], sizeof(float) * (size_t)(1 + D) * V)) {
					same = " (differs from tier off)";
					ok = false;
				}
				snprintf(what, sizeof(what), "question %d: prefill %.2e, %d steps %.2e%s",
					 L, rp, D, rd, same);
				printf("  pass %d %-60s %s\n", pass, what, ok ? "ok" : "FAIL");
				failures += !ok;
				if (!tier)
					memcpy(first[li], out, sizeof(float) * (size_t)(1 + D) * V);
			}
			gfe_tier_stats ts;
			gfe_tier_stats_get(e, &ts);
			printf("  tier after pass %d: %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64
			       " blocks, %" PRIu64 " bytes\n", pass, ts.hits, ts.misses, ts.blocks, ts.bytes);
			if (tier && ts.hits <= hits_before) {
				printf("  the tier served no block in pass %d  FAIL\n", pass);
				failures++;
			}
			if (!tier && (ts.hits || ts.blocks)) {
				printf("  the tier is off but holds blocks  FAIL\n");
				failures++;
			}
			hits_before = ts.hits;
		}

		if (read_stored(e, serial, &after))
			return 1;
		const size_t Ck = (size_t)m->cfg.ckv_dim;
		bool same = before.info.n_tokens == N && after.info.n_tokens == N && after.info.sealed &&
			    cs_key_equal(before.info.key, after.info.key) &&
			    !memcmp(before.tok, after.tok, N * sizeof(uint32_t)) &&
			    !memcmp(before.rows, after.rows, N * Ck * sizeof(float)) &&
			    before.blob_len == after.blob_len &&
			    !memcmp(before.blob, after.blob, before.blob_len);
		for (int i = 0; i < N && same; i++)
			same = before.tok[i] == (uint32_t)tok[i];
		cs_key key;
		cs_hash_tokens(gfe_key_model_id(gfe_model(e)), (const uint32_t *)tok, N, &key);
		same = same && cs_key_equal(key, after.info.key);
		printf("  %-40s %s\n", "stored context unchanged", same ? "ok" : "FAIL");
		failures += !same;
		stored_free(&before);
		stored_free(&after);
		gfe_close(e);
	}

	/* The context's rows are f32: an engine set up for f16 must refuse it, cleanly. */
	gfe_engine *e;
	gfe_session *s = NULL;
	snprintf(dir, sizeof(dir), "%s/tier0", argv[2]);
	if (open_engine(argv[1], dir, CS_DTYPE_F16, 0, &e))
		return 1;
	int rc = gfe_session_open(e, serial, &s, err);
	printf("  %-40s %s (%s)\n", "row type mismatch refused", rc == -EINVAL ? "ok" : "FAIL",
	       rc ? err : "opened");
	failures += rc != -EINVAL;
	gfe_session_free(s);
	gfe_close(e);

	for (int i = 0; i < N_LEN; i++)
		free(first[i]);
	free(out);
	free(full);
	free(tok);
	gf_model_free(m);
	printf("%s\n", failures ? "FAIL" : "PASS");
	return failures ? 1 : 0;
}
