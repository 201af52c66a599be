/*
 * engine_invariance — a context's bytes do not depend on how its input was fed.
 *
 *   engine_invariance MODEL.gguf TMP_DIR
 *
 * One stream of T random token ids is ingested (c as f16, chunk 64, pages of 100 tokens, a
 * checkpoint every 128 tokens), each variant into its own store directory:
 *   - fed in pieces of 1, 7, 63, 64, 65, 1000 tokens, and all at once;
 *   - interrupted right after every checkpoint (gfe_ingest_free, then gfe_ingest_resume and
 *     re-feeding from the committed token count), in pieces of 50 and of 1000;
 *   - with explicit gfe_ingest_checkpoint calls every 100 tokens fed, each followed by an
 *     interruption and a resume (checkpoints off the periodic grid).
 * Every variant must give byte-identical c rows, tokens, snapshot blob and key, and
 * bit-identical last logits (memcmp) to the one-piece ingest. Sanity against the model
 * itself: stored rows and the last logits are within f16 rounding of gf_forward_full.
 * Exit 0 pass, 1 fail.
 */
#include "engine.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T 3000
#define CHUNK 64
#define PAGE 100
#define CHECKPOINT 128

struct result {
	uint64_t n_tokens;
	cs_key key;
	void *rows;       /* [n_tokens][Ck] f16 */
	uint32_t *tok;
	void *blob;
	size_t blob_len;
	float *logits;    /* [V] */
	int resumes;
};

static void result_free(struct result *r)
{
	free(r->rows);
	free(r->tok);
	free(r->blob);
	free(r->logits);
	memset(r, 0, sizeof(*r));
}

static int open_engine(const char *model, const char *tmp, const char *variant, gfe_engine **e)
{
	char dir[1024], err[GF_ERR_LEN];
	gfe_config cfg;

	snprintf(dir, sizeof(dir), "%s/%s", tmp, variant);
	gfe_config_defaults(&cfg);
	cfg.model_path = model;
	cfg.cache_dir = dir;
	cfg.chunk = CHUNK;
	cfg.page_tokens = PAGE;
	cfg.c_dtype = CS_DTYPE_F16;
	cfg.checkpoint_tokens = CHECKPOINT;
	if (gfe_open(e, &cfg, err)) {
		fprintf(stderr, "%s: open: %s\n", variant, err);
		return 1;
	}
	return 0;
}

/* Reads the sealed context back through the store. */
static int collect(gfe_engine *e, const gfe_context *ctx, struct result *r, const char *variant)
{
	char err[GF_ERR_LEN];
	cs_reader *rd;
	cs_ctx_info info;
	const int Ck = gfe_model(e)->cfg.ckv_dim;

	if (cs_reader_open(gfe_store(e), ctx->serial, &rd, err)) {
		fprintf(stderr, "%s: reader: %s\n", variant, err);
		return 1;
	}
	cs_reader_info(rd, &info);
	r->n_tokens = info.n_tokens;
	r->key = info.key;
	r->rows = malloc(info.n_tokens * Ck * 2);
	r->tok = malloc(info.n_tokens * sizeof(uint32_t));
	int rc = !r->rows || !r->tok || !info.sealed || info.dtype != CS_DTYPE_F16 ||
		 info.page_tokens != PAGE || ctx->reused;
	if (!rc && (cs_reader_read(rd, 0, info.n_tokens, r->rows, r->tok, err) ||
		    cs_reader_blob(rd, &r->blob, &r->blob_len, err))) {
		fprintf(stderr, "%s: read: %s\n", variant, err);
		rc = 1;
	}
	cs_reader_close(rd);
	return rc;
}

/* Feeds tok[from, T) in pieces; after each piece, optionally an explicit checkpoint
 * (explicit) and an interruption when the committed count moved (interrupt). */
static int run_variant(const char *model, const char *tmp, const char *variant,
		       const int32_t *tok, size_t piece, bool interrupt, bool explicit,
		       struct result *r)
{
	char err[GF_ERR_LEN];
	gfe_engine *e;
	gfe_ingest *in;
	gfe_context ctx;

	if (open_engine(model, tmp, variant, &e))
		return 1;
	r->logits = malloc(sizeof(float) * (size_t)gfe_model(e)->cfg.vocab_size);
	if (gfe_ingest_begin(e, "inv", &in, err)) {
		fprintf(stderr, "%s: begin: %s\n", variant, err);
		goto fail_engine;
	}
	uint64_t pos = 0, committed = 0;
	while (pos < T) {
		size_t n = T - pos < piece ? T - pos : piece;
		if (gfe_ingest_tokens(in, tok + pos, n, err)) {
			fprintf(stderr, "%s: tokens at %" PRIu64 ": %s\n", variant, pos, err);
			goto fail_ingest;
		}
		pos += n;
		if (explicit && gfe_ingest_checkpoint(in, err)) {
			fprintf(stderr, "%s: checkpoint at %" PRIu64 ": %s\n", variant, pos, err);
			goto fail_ingest;
		}
		if (interrupt && gfe_ingest_committed(in) > committed) {
			/* As if killed now: whatever ran after the checkpoint is lost. */
			uint64_t serial = gfe_ingest_serial(in);
			gfe_ingest_free(in);
			in = NULL;
			if (gfe_ingest_resume(e, serial, &in, err)) {
				fprintf(stderr, "%s: resume at %" PRIu64 ": %s\n", variant, pos, err);
				goto fail_engine;
			}
			committed = gfe_ingest_committed(in);
			if (committed > pos || committed % CHUNK || gfe_ingest_tokens_done(in) != committed ||
			    gfe_ingest_input_bytes(in) != 0) {
				fprintf(stderr, "%s: resumed at %" PRIu64 " tokens (done %" PRIu64
					") after feeding %" PRIu64 "\n", variant, committed,
					gfe_ingest_tokens_done(in), pos);
				goto fail_ingest;
			}
			pos = committed;
			r->resumes++;
		}
	}
	if (gfe_ingest_finish(in, &ctx, r->logits, err)) {
		fprintf(stderr, "%s: finish: %s\n", variant, err);
		goto fail_ingest;
	}
	gfe_ingest_free(in);
	int rc = collect(e, &ctx, r, variant);
	gfe_close(e);
	return rc;
fail_ingest:
	gfe_ingest_free(in);
fail_engine:
	gfe_close(e);
	return 1;
}

int main(int argc, char **argv)
{
	static const size_t pieces[] = { 1, 7, 63, 64, 65, 1000 };
	char name[64], err[GF_ERR_LEN];
	struct result ref = { 0 }, r = { 0 };
	int failures = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: engine_invariance MODEL.gguf TMP_DIR\n");
		return 1;
	}
	gf_model *m;
	if (gf_model_load(&m, argv[1], err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	const int V = m->cfg.vocab_size, Ck = m->cfg.ckv_dim;
	int32_t *tok = malloc(T * sizeof(int32_t));
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (int i = 0; i < T; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		tok[i] = (int32_t)(x % (uint64_t)V);
	}

	if (run_variant(argv[1], argv[2], "whole", tok, T, false, false, &ref))
		return 1;
	printf("reference: %" PRIu64 " tokens, blob %zu bytes\n", ref.n_tokens, ref.blob_len);
	if (ref.n_tokens != T) {
		printf("FAIL: %" PRIu64 " tokens stored, %d fed\n", ref.n_tokens, T);
		return 1;
	}
	for (int i = 0; i < T; i++)
		if (ref.tok[i] != (uint32_t)tok[i]) {
			printf("FAIL: stored token %d is %u, fed %d\n", i, ref.tok[i], tok[i]);
			return 1;
		}
	cs_key key;
	cs_hash_tokens(gfe_key_model_id(m), (const uint32_t *)tok, T, &key);
	if (!cs_key_equal(key, ref.key)) {
		printf("FAIL: key differs from cs_hash_tokens of the input\n");
		failures++;
	}

	/* Against the model itself: the rows are c rounded to f16, the logits within f16 noise. */
	float *full = malloc(sizeof(float) * (size_t)T * V), *c = malloc(sizeof(float) * T * Ck);
	if (gf_forward_full(m, tok, T, full, c, NULL, NULL, err)) {
		fprintf(stderr, "forward: %s\n", err);
		return 1;
	}
	double cmax = 0, cdiff = 0, lmax = 0, ldiff = 0;
	for (size_t i = 0; i < (size_t)T * Ck; i++) {
		float s = gf_f16_to_f32(((uint16_t *)ref.rows)[i]);
		cmax = fmax(cmax, fabs(c[i]));
		cdiff = fmax(cdiff, fabs((double)s - c[i]));
	}
	for (int i = 0; i < V; i++) {
		const float *row = full + (size_t)(T - 1) * V;
		lmax = fmax(lmax, fabs(row[i]));
		ldiff = fmax(ldiff, fabs((double)ref.logits[i] - row[i]));
	}
	printf("vs full forward: c %.2e, last logits %.2e (relative to max)\n", cdiff / cmax,
	       ldiff / lmax);
	if (!(cdiff <= 1e-3 * cmax) || !(ldiff <= 1e-3 * lmax)) {
		printf("FAIL: stored context is not the model's\n");
		failures++;
	}
	free(full);
	free(c);

	struct variant {
		size_t piece;
		bool interrupt, explicit;
	} variants[16];
	int n_var = 0;
	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++)
		variants[n_var++] = (struct variant){ pieces[i], false, false };
	variants[n_var++] = (struct variant){ 50, true, false };
	variants[n_var++] = (struct variant){ 1000, true, false };
	variants[n_var++] = (struct variant){ 100, true, true };
	variants[n_var++] = (struct variant){ 77, false, true };

	for (int v = 0; v < n_var; v++) {
		snprintf(name, sizeof(name), "pieces%zu%s%s", variants[v].piece,
			 variants[v].interrupt ? "_interrupted" : "",
			 variants[v].explicit ? "_checkpoints" : "");
		if (run_variant(argv[1], argv[2], name, tok, variants[v].piece, variants[v].interrupt,
				variants[v].explicit, &r)) {
			printf("%-32s FAIL (error)\n", name);
			failures++;
			result_free(&r);
			continue;
		}
		const char *bad = NULL;
		if (r.n_tokens != ref.n_tokens)
			bad = "token count";
		else if (memcmp(r.tok, ref.tok, T * sizeof(uint32_t)))
			bad = "tokens";
		else if (memcmp(r.rows, ref.rows, (size_t)T * Ck * 2))
			bad = "c rows";
		else if (r.blob_len != ref.blob_len || memcmp(r.blob, ref.blob, ref.blob_len))
			bad = "snapshot";
		else if (!cs_key_equal(r.key, ref.key))
			bad = "key";
		else if (memcmp(r.logits, ref.logits, sizeof(float) * V))
			bad = "last logits";
		else if (variants[v].interrupt &&
			 r.resumes < (variants[v].piece <= CHECKPOINT ? T / CHECKPOINT - 1 : 2))
			bad = "too few interruptions";
		printf("%-32s %3d resumes  %s%s\n", name, r.resumes, bad ? "FAIL: " : "ok",
		       bad ? bad : "");
		failures += bad != NULL;
		result_free(&r);
	}
	result_free(&ref);
	free(tok);
	gf_model_free(m);
	printf("%s\n", failures ? "FAIL" : "PASS");
	return failures ? 1 : 0;
}
