/*
 * engine_snapshot — snapshots of the previous format are read, and a context is only
 * continued in the compute mode that ingested it.
 *
 *   engine_snapshot MODEL.gguf TMP_DIR
 *
 *  - Format 1.0 (no compute field; every 1.0 snapshot was made by f32 compute), laid out
 *    here field by field as that format wrote it, reads into the same state as the 1.1
 *    snapshot gfe_snapshot_write makes of it; a 1.1 snapshot round-trips; another major
 *    version, a bf16 snapshot under f32 compute, a truncated or padded one are refused.
 *  - Through the store: a checkpointed ingest whose blob is rewritten as 1.0 resumes, and
 *    the finished context's last logits and rows are bit-identical to an uninterrupted
 *    ingest's.
 *  - Where bf16 compute is available: an engine with bf16 compute refuses to continue or
 *    ask about a context ingested with f32 compute (and says which mode to use), and an f32
 *    engine refuses one ingested with bf16; the same tokens ingested in each mode are two
 *    contexts.
 * Exit 0 pass, 1 fail.
 */
#include "engine.h"
#include "engine_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_TOK 1500
#define N_CUT 700 /* tokens fed before the checkpoint (it commits at a chunk boundary) */
#define HEADER_1_0 64

static int failures;

static void check(int ok, const char *what)
{
	printf("%s: %s\n", what, ok ? "ok" : "FAIL");
	failures += !ok;
}

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* A 1.0 snapshot of st as that format laid it out: magic, major, minor, model id, n_pos,
 * input bytes, then n_layer, n_embd, first_gold, n_head, head_size, window, n_tail, slice
 * (little-endian), then the state floats and the tail. */
static unsigned char *snapshot_1_0(const gf_model *m, const gf_state *st, uint64_t input_bytes,
				   size_t *len)
{
	const gf_config *c = &m->cfg;
	const size_t state = gf_state_floats(c) * sizeof(float);
	const size_t tail = (size_t)st->n_tail * c->n_embd * sizeof(float);
	unsigned char *b = calloc(1, HEADER_1_0 + state + tail);
	if (!b)
		return NULL;
	put32(b, GFE_SNAPSHOT_MAGIC);
	b[4] = 1, b[5] = 0; /* major 1 */
	b[6] = 0, b[7] = 0; /* minor 0 */
	put64(b + 8, c->model_id);
	put64(b + 16, (uint64_t)st->n_pos);
	put64(b + 24, input_bytes);
	const uint32_t fields[8] = {
		(uint32_t)c->n_layer, (uint32_t)c->n_embd, (uint32_t)c->first_gold,
		(uint32_t)c->n_head, (uint32_t)c->head_size, (uint32_t)gf_config_tail_window(c),
		(uint32_t)st->n_tail, 0,
	};
	for (int i = 0; i < 8; i++)
		put32(b + 32 + 4 * i, fields[i]);
	memcpy(b + HEADER_1_0, st->shift, state);
	memcpy(b + HEADER_1_0 + state, st->tail, tail);
	*len = HEADER_1_0 + state + tail;
	return b;
}

static int same_state(const gf_config *c, const gf_state *a, const gf_state *b)
{
	return a->n_pos == b->n_pos && a->n_tail == b->n_tail &&
	       !memcmp(a->shift, b->shift, gf_state_floats(c) * sizeof(float)) &&
	       !memcmp(a->tail, b->tail, (size_t)a->n_tail * c->n_embd * sizeof(float));
}

/* m: a model loaded with f32 compute. */
static void snapshot_formats(const gf_model *m)
{
	const gf_config *c = &m->cfg;
	char err[GF_ERR_LEN];
	gf_state st, back;
	if (gf_state_init(&st, c) || gf_state_init(&back, c)) {
		check(0, "state");
		return;
	}
	/* Any bits will do: the snapshot carries them, it does not interpret them. */
	uint64_t x = 0x9e3779b97f4a7c15ull;
	const size_t nf = gf_state_floats(c);
	for (size_t i = 0; i < nf; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		st.shift[i] = (float)(int32_t)(x >> 33) / 1e9f;
	}
	st.n_tail = gf_config_tail_window(c) - 1;
	for (size_t i = 0; i < (size_t)st.n_tail * c->n_embd; i++)
		st.tail[i] = (float)i * 0.25f - 3.0f;
	st.n_pos = 123457;

	size_t len10 = 0;
	const size_t len11 = gfe_snapshot_size(c, st.n_tail);
	unsigned char *s10 = snapshot_1_0(m, &st, 98765, &len10), *s11 = malloc(len11);
	unsigned char *major2 = malloc(len11), *bf16 = malloc(len11), *padded = calloc(1, len10 + 4);
	if (!s10 || !s11 || !major2 || !bf16 || !padded) {
		check(0, "memory");
		exit(1);
	}
	uint64_t input_bytes = 0;
	int rc = gfe_snapshot_read(m, s10, len10, 0, &back, &input_bytes, err);
	if (rc)
		printf("  1.0: %s\n", err);
	check(!rc && same_state(c, &st, &back) && input_bytes == 98765,
	      "a 1.0 snapshot reads into the state it holds");

	gfe_snapshot_write(m, &st, 98765, 0, s11);
	check(len11 == len10 + 8 && !memcmp(s11 + HEADER_1_0 + 8, s10 + HEADER_1_0, len10 - HEADER_1_0) &&
		      s11[6] == GFE_SNAPSHOT_MINOR,
	      "1.1 is 1.0's layout with the compute field and a reserved word after the header");
	gf_state_reset(&back, c);
	rc = gfe_snapshot_read(m, s11, len11, 0, &back, &input_bytes, err);
	check(!rc && same_state(c, &st, &back), "a 1.1 snapshot round-trips");

	/* The refusals, each with its one-line reason. */
	struct {
		const char *what, *says;
		unsigned char *buf;
		size_t len;
	} bad[4];
	memcpy(major2, s11, len11);
	major2[4] = 2;
	memcpy(bf16, s11, len11);
	put32(bf16 + HEADER_1_0, GF_COMPUTE_BF16);
	memcpy(padded, s10, len10);
	bad[0].what = "format 2.x", bad[0].says = "this build reads 1.x", bad[0].buf = major2, bad[0].len = len11;
	bad[1].what = "bf16 snapshot under f32 compute", bad[1].says = "made with bf16 compute",
	bad[1].buf = bf16, bad[1].len = len11;
	bad[2].what = "truncated 1.0", bad[2].says = "do not match", bad[2].buf = s10, bad[2].len = len10 - 4;
	bad[3].what = "padded 1.0", bad[3].says = "do not match", bad[3].buf = padded, bad[3].len = len10 + 4;
	for (int i = 0; i < 4; i++) {
		err[0] = 0;
		rc = gfe_snapshot_read(m, bad[i].buf, bad[i].len, 0, &back, &input_bytes, err);
		char what[GF_ERR_LEN + 64];
		snprintf(what, sizeof(what), "%s refused (%s)", bad[i].what, err);
		check(rc < 0 && strstr(err, bad[i].says), what);
	}
	free(major2), free(bf16), free(padded), free(s10), free(s11);
	gf_state_free(&st);
	gf_state_free(&back);
}

static int open_engine(const char *model, const char *dir, gf_compute compute, gfe_engine **e,
		       char *err)
{
	gfe_config cfg;
	gfe_config_defaults(&cfg);
	cfg.model_path = model;
	cfg.cache_dir = dir;
	cfg.chunk = 64;
	cfg.page_tokens = 256;
	cfg.checkpoint_tokens = 0;
	cfg.tier_bytes = 0;
	cfg.threads = 1;
	cfg.compute = compute;
	return gfe_open(e, &cfg, err);
}

/* Ingests tok[0..n) as a new context: its serial, and the last position's logits. */
static int ingest(gfe_engine *e, const int32_t *tok, size_t n, uint64_t *serial, float *logits,
		  char *err)
{
	gfe_ingest *in;
	gfe_context ctx;
	int rc = gfe_ingest_begin(e, NULL, &in, err);
	if (rc)
		return rc;
	rc = gfe_ingest_tokens(in, tok, n, err);
	if (!rc)
		rc = gfe_ingest_finish(in, &ctx, logits, err);
	gfe_ingest_free(in);
	if (!rc)
		*serial = ctx.serial;
	return rc;
}

static int read_rows(gfe_engine *e, uint64_t serial, size_t n, uint16_t *rows, uint32_t *tok,
		     char *err)
{
	cs_reader *r;
	int rc = cs_reader_open(gfe_store(e), serial, &r, err);
	if (rc)
		return rc;
	rc = cs_reader_read(r, 0, n, rows, tok, err);
	cs_reader_close(r);
	return rc;
}

/* A checkpointed ingest whose snapshot is rewritten as 1.0 resumes to the same context. */
static void resume_from_1_0(const char *model, const char *dir, const int32_t *tok)
{
	char err[GF_ERR_LEN] = "";
	gfe_engine *e;
	if (open_engine(model, dir, GF_COMPUTE_F32, &e, err)) {
		printf("engine: %s\n", err);
		check(0, "f32 engine");
		return;
	}
	const gf_model *m = gfe_model(e);
	const size_t V = (size_t)m->cfg.vocab_size, Ck = (size_t)m->cfg.ckv_dim;
	float *want = malloc(V * sizeof(float)), *got = malloc(V * sizeof(float));
	uint16_t *rows_a = malloc(N_TOK * Ck * 2), *rows_b = malloc(N_TOK * Ck * 2);
	uint32_t *tok_a = malloc(N_TOK * 4), *tok_b = malloc(N_TOK * 4);
	uint64_t serial_a = 0;
	int rc = ingest(e, tok, N_TOK, &serial_a, want, err);

	/* The same tokens, cut at N_CUT with a checkpoint; the snapshot rewritten as 1.0. */
	gfe_ingest *in = NULL;
	uint64_t serial_b = 0, committed = 0;
	if (!rc)
		rc = gfe_ingest_begin(e, "cut", &in, err);
	if (!rc)
		rc = gfe_ingest_tokens(in, tok, N_CUT, err);
	if (!rc)
		rc = gfe_ingest_checkpoint(in, err);
	if (in)
		serial_b = gfe_ingest_serial(in), committed = gfe_ingest_committed(in);
	gfe_ingest_free(in);
	in = NULL;
	if (!rc && (committed == 0 || committed > N_CUT))
		rc = gf_error(err, -EIO, "checkpoint at %llu tokens", (unsigned long long)committed);
	void *blob = NULL;
	size_t blob_len = 0;
	if (!rc)
		rc = cs_store_read_blob(gfe_store(e), serial_b, &blob, &blob_len, err);
	if (!rc && blob_len < HEADER_1_0 + 8)
		rc = gf_error(err, -EBADMSG, "stored snapshot of %zu bytes", blob_len);
	if (!rc) {
		unsigned char *b = blob;
		check(b[6] == GFE_SNAPSHOT_MINOR, "the engine writes the current format");
		b[6] = 0;
		memmove(b + HEADER_1_0, b + HEADER_1_0 + 8, blob_len - HEADER_1_0 - 8);
		cs_writer *w;
		rc = cs_writer_resume(gfe_store(e), serial_b, &w, err);
		if (!rc) {
			rc = cs_writer_commit(w, b, blob_len - 8, 0, err);
			cs_writer_free(w);
		}
	}
	free(blob);
	gfe_context ctx;
	if (!rc)
		rc = gfe_ingest_resume(e, serial_b, &in, err);
	if (!rc)
		rc = gfe_ingest_tokens(in, tok + committed, N_TOK - committed, err);
	if (!rc)
		rc = gfe_ingest_finish(in, &ctx, got, err);
	gfe_ingest_free(in);
	if (rc)
		printf("  %s\n", err);
	check(!rc && !memcmp(want, got, V * sizeof(float)),
	      "an ingest checkpointed in format 1.0 resumes: last logits bit-identical");
	rc = rc ? rc : read_rows(e, serial_a, N_TOK, rows_a, tok_a, err);
	rc = rc ? rc : read_rows(e, ctx.serial, N_TOK, rows_b, tok_b, err);
	check(!rc && !memcmp(rows_a, rows_b, N_TOK * Ck * 2) && !memcmp(tok_a, tok_b, N_TOK * 4),
	      "its rows bit-identical to the uninterrupted ingest's");
	free(want), free(got), free(rows_a), free(rows_b), free(tok_a), free(tok_b);
	gfe_close(e);
}

/* Contexts of one mode are refused by an engine of the other, with the mode to use. */
static void modes(const char *model, const char *dir, const int32_t *tok)
{
	char why[GF_ERR_LEN], err[GF_ERR_LEN] = "";
	if (!gf_compute_bf16_available(why)) {
		printf("compute modes: skipped (bf16 compute: %s)\n", why);
		return;
	}
	gfe_engine *e32, *e16;
	uint64_t s32 = 0, s16 = 0, partial32 = 0;
	gfe_ingest *in = NULL;
	int rc = open_engine(model, dir, GF_COMPUTE_F32, &e32, err);
	rc = rc ? rc : ingest(e32, tok, N_TOK, &s32, NULL, err);
	rc = rc ? rc : gfe_ingest_begin(e32, "partial", &in, err);
	rc = rc ? rc : gfe_ingest_tokens(in, tok, N_CUT, err);
	rc = rc ? rc : gfe_ingest_checkpoint(in, err);
	if (in)
		partial32 = gfe_ingest_serial(in);
	gfe_ingest_free(in);
	in = NULL;
	if (!rc)
		gfe_close(e32);
	rc = rc ? rc : open_engine(model, dir, GF_COMPUTE_BF16, &e16, err);
	if (rc) {
		printf("  %s\n", err);
		check(0, "engines of both modes");
		return;
	}
	gfe_session *s = NULL;
	rc = gfe_session_open(e16, s32, &s, err);
	printf("  bf16 engine, f32 context: %s\n", err);
	check(rc == -EINVAL && strstr(err, "ingested with f32 compute") && strstr(err, "--compute f32"),
	      "a bf16 engine refuses a question on an f32 context, naming --compute f32");
	gfe_session_free(s);
	err[0] = 0;
	rc = gfe_ingest_resume(e16, partial32, &in, err);
	printf("  bf16 engine, f32 checkpoint: %s\n", err);
	check(rc == -EINVAL && strstr(err, "f32"), "and refuses to continue its ingest");
	gfe_ingest_free(in);
	in = NULL;
	rc = ingest(e16, tok, N_TOK, &s16, NULL, err);
	check(!rc && s16 != s32, "the same tokens under bf16 compute are another context");
	gfe_close(e16);

	rc = open_engine(model, dir, GF_COMPUTE_F32, &e32, err);
	rc = rc ? rc : gfe_session_open(e32, s16, &s, err);
	printf("  f32 engine, bf16 context: %s\n", err);
	check(rc == -EINVAL && strstr(err, "--compute bf16"),
	      "an f32 engine refuses a bf16 context, naming --compute bf16");
	gfe_session_free(s);
	gfe_close(e32);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: engine_snapshot MODEL.gguf TMP_DIR\n");
		return 2;
	}
	char err[GF_ERR_LEN];
	gf_model *m;
	if (gf_model_load_slice(&m, argv[1], 0, -1, GF_LOAD_COMPUTE_F32, err)) {
		fprintf(stderr, "model: %s\n", err);
		return 1;
	}
	snapshot_formats(m);
	const int V = m->cfg.vocab_size;
	gf_model_free(m);

	int32_t *tok = malloc(N_TOK * sizeof(int32_t));
	uint64_t x = 42;
	for (int i = 0; i < N_TOK; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		tok[i] = (int32_t)((x >> 33) % (uint64_t)V);
	}
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/resume", argv[2]);
	resume_from_1_0(argv[1], dir, tok);
	snprintf(dir, sizeof(dir), "%s/modes", argv[2]);
	modes(argv[1], dir, tok);
	free(tok);
	printf("%s\n", failures ? "FAIL" : "all ok");
	return failures ? 1 : 0;
}
