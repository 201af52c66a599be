/*
 * server_backend_mpi.c — the multi-rank backend (DESIGN.md §4).
 *
 * Rank 0 runs the front end; its backend is this table: each ingest or session is a stream
 * (rank_part.h) that rank 0 drives — it tokenizes, runs its own slice, sends chunks down the
 * pipeline and coordinates commits: every checkpoint, every rank commits its part and
 * acknowledges, then rank 0 commits its own (rank 0's catalogue is the truth); a context is
 * sealed on every other rank first and on rank 0 last. Ranks >= 1 run gfd_rank_serve: one
 * thread per stream.
 */
#include "rank_part.h"
#include "server_backend.h"
#include "server_backend_mpi.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct mpi_be {
	gfr_ctx cx;
	gfd_backend_info info;
	pthread_t watcher;
	bool watching;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool closing;
};

struct gfd_ingest {
	struct mpi_be *b;
	gfr_part *p;
	gfm_box *box;
	uint32_t stream;
	gf_encoder enc;
	int32_t *pending;
	int n_pending;
	uint64_t pending_bytes, input_bytes, committed_bytes, next_checkpoint;
	float *x;
	bool started;        /* its first chunk has gone down the ranks */
	bool ended;          /* the other ranks' parts are closed or dropped already */
	int failed;
	char err[GF_ERR_LEN];
};

struct gfd_session {
	struct mpi_be *b;
	gfr_part *p;
	gfm_box *box;
	uint32_t stream;
	float *x;
};

/* ---- helpers -------------------------------------------------------------------------- */

static int to_all(struct mpi_be *b, const gfm_hdr *h, const void *payload, size_t len,
		  char *err)
{
	for (int r = 1; r < b->cx.size; r++) {
		int rc = gfm_send(b->cx.link, r, h, payload, len);
		if (rc)
			return gf_error(err, rc, "%s", gfm_link_failure(b->cx.link));
	}
	return 0;
}

static void end_stream(struct mpi_be *b, uint32_t stream, bool drop)
{
	gfm_hdr h = { .type = drop ? GFM_DROP : GFM_CLOSE, .stream = stream };
	to_all(b, &h, NULL, 0, NULL);
}

/* Sends `h` to every other rank and waits for their acknowledgements. */
static int all_ack(struct mpi_be *b, gfr_part *p, const gfm_hdr *h, const void *payload,
		   size_t len, char *err)
{
	gfr_wait *w = gfr_part_wait_state(p);
	w->acks = 0;
	w->ack_status = 0;
	w->ack_pos = 0;
	int rc = to_all(b, h, payload, len, err);
	return rc ? rc : gfr_part_wait_acks(p, b->cx.size - 1, err);
}

/* ---- the catalogue: rank 0's store ------------------------------------------------------ */

static cs_store *store_of(void *self)
{
	return ((struct mpi_be *)self)->cx.e->store;
}

static void be_info(void *self, gfd_backend_info *out)
{
	*out = ((struct mpi_be *)self)->info;
}

/* Rank 0's engine: the other ranks' memory is theirs to report (each has a page cache and a
 * tier of the same budgets, and the weights of its own blocks); asking them would put a
 * round trip over the link into every Status. */
static void be_memory(void *self, gfd_memory *out)
{
	gfe_memory m;
	gfe_memory_get(((struct mpi_be *)self)->cx.e, &m);
	out->weight_bytes = m.weight_bytes;
	out->page_cache_bytes = m.page_cache_bytes;
	out->page_cache_budget = m.page_cache_budget;
	out->tier_bytes = m.tier_bytes;
	out->tier_budget = m.tier_budget;
}

static int be_list(void *self, cs_ctx_info **out, size_t *n, char *err)
{
	return cs_store_list(store_of(self), out, n, err);
}

static int be_ctx_info(void *self, uint64_t serial, cs_ctx_info *out, char *err)
{
	return cs_store_info(store_of(self), serial, out, err);
}

static int be_lookup_name(void *self, const char *name, cs_ctx_info *out)
{
	return cs_store_lookup_name(store_of(self), name, out);
}

static int be_remove(void *self, uint64_t serial, char *err)
{
	struct mpi_be *b = self;
	int rc = cs_store_remove(store_of(self), serial, err);
	if (rc)
		return rc;
	gfm_hdr h = { .type = GFM_REMOVE, .aux = serial };
	to_all(b, &h, NULL, 0, NULL); /* a copy left behind is removed at the next start */
	return 0;
}

static uint64_t be_disk_used(void *self)
{
	return cs_store_disk_used(store_of(self));
}

/* ---- ingest ------------------------------------------------------------------------------ */

static void ingest_release(gfd_ingest *in)
{
	if (!in)
		return;
	if (in->p && !in->ended) {
		/* Wait until every rank has let go of its writer: a resume may follow at once. */
		gfr_wait *w = gfr_part_wait_state(in->p);
		w->acks = 0;
		w->ack_status = 0;
		end_stream(in->b, in->stream, false);
		gfr_part_drain_acks(in->p, in->b->cx.size - 1);
	}
	gfr_part_free(in->p);
	gfm_box_close(in->b->cx.link, in->box);
	free(in->pending);
	free(in->x);
	free(in);
}

static int ingest_alloc(struct mpi_be *b, gfd_ingest **out, char *err)
{
	gfe_engine *e = b->cx.e;
	const gf_config *c = &e->model->cfg;
	gfd_ingest *in = calloc(1, sizeof(*in));
	if (!in)
		return gf_error(err, -ENOMEM, "out of memory");
	in->b = b;
	in->stream = gfm_new_stream(b->cx.link);
	in->box = gfm_box_open(b->cx.link, in->stream);
	in->pending = malloc(sizeof(int32_t) * (size_t)e->cfg.chunk);
	in->x = malloc(sizeof(float) * (size_t)e->cfg.chunk * c->n_embd);
	if (!in->box || !in->pending || !in->x) {
		ingest_release(in);
		return gf_error(err, -ENOMEM, "out of memory for an ingest");
	}
	if (e->has_tokenizer)
		gf_encoder_init(&in->enc, &e->tokenizer);
	in->next_checkpoint = e->cfg.checkpoint_tokens;
	*out = in;
	return 0;
}

static int be_ingest_begin(void *self, const char *name, gfd_ingest **out, char *err)
{
	struct mpi_be *b = self;
	gfd_ingest *in;
	int rc = ingest_alloc(b, &in, err);
	if (rc)
		return rc;
	if ((rc = gfr_part_begin(&b->cx, in->stream, in->box, name, &in->p, err))) {
		ingest_release(in);
		return rc;
	}
	const uint64_t serial = gfr_part_serial(in->p);
	gfm_hdr h = { .type = GFM_BEGIN, .stream = in->stream, .aux = serial };
	/* The name goes along so that each rank's copy can be found by it (gf-cache). */
	if ((rc = all_ack(b, in->p, &h, name, name ? strlen(name) : 0, err))) {
		end_stream(b, in->stream, true);
		in->ended = true;
		ingest_release(in);
		cs_store_remove(b->cx.e->store, serial, NULL);
		return rc;
	}
	*out = in;
	return 0;
}

static int be_ingest_resume(void *self, uint64_t serial, gfd_ingest **out, char *err)
{
	struct mpi_be *b = self;
	gfd_ingest *in;
	int rc = ingest_alloc(b, &in, err);
	if (rc)
		return rc;
	if ((rc = gfr_part_resume(&b->cx, in->stream, in->box, serial, &in->p, err))) {
		ingest_release(in);
		return rc;
	}
	const uint64_t K = gfr_part_committed(in->p);
	gfm_hdr h = { .type = GFM_RESUME, .stream = in->stream, .pos = K, .aux = serial };
	if ((rc = all_ack(b, in->p, &h, NULL, 0, err))) {
		ingest_release(in);
		return rc;
	}
	in->input_bytes = in->committed_bytes = gfr_part_input_bytes(in->p);
	const uint64_t every = b->cx.e->cfg.checkpoint_tokens;
	in->next_checkpoint = every ? (K / every + 1) * every : 0;
	*out = in;
	return 0;
}

/* A checkpoint at the current position: every other rank commits and acknowledges, then
 * rank 0 commits: its catalogue never runs ahead of a part. */
static int checkpoint(gfd_ingest *in, char *err)
{
	struct mpi_be *b = in->b;
	const uint64_t K = gfr_part_pos(in->p);
	int rc;
	gfr_wait *w = gfr_part_wait_state(in->p);
	w->acks = 0;
	w->ack_status = 0;
	if ((rc = gfr_part_mark(in->p, GFM_MARK_CHECKPOINT, K, err)) ||
	    (rc = gfr_part_wait_rows(in->p, K, err)) ||
	    (rc = gfr_part_wait_acks(in->p, b->cx.size - 1, err)))
		return rc;
	if ((rc = gfr_part_commit(in->p, in->input_bytes, false, err)))
		return rc;
	in->committed_bytes = in->input_bytes;
	return 0;
}

static int run_chunk(gfd_ingest *in, char *err)
{
	const gfr_ctx *cx = &in->b->cx;
	const gfe_engine *e = cx->e;
	const int n = in->n_pending;
	/* The first chunk goes down in pieces of the boundary's step: a pipeline of P ranks
	 * otherwise starts its last rank P-1 chunks' times late. Parts of a chunk keep their
	 * rows' bits (gf_split_step), so the pieces change nothing in the results. */
	const int piece = !in->started && cx->split_step && n == e->cfg.chunk &&
				  n % cx->split_step == 0
			  ? cx->split_step
			  : n;
	in->started = true;
	int rc = 0;
	for (int at = 0; at < n && !rc; at += piece)
		rc = gfr_part_chunk(in->p, gfr_part_pos(in->p), in->pending + at, in->x, piece,
				    GFM_MODE_INGEST, err);
	if (rc)
		return rc;
	in->input_bytes += in->pending_bytes;
	in->pending_bytes = 0;
	in->n_pending = 0;
	const uint64_t pos = gfr_part_pos(in->p);
	if (in->next_checkpoint && pos >= in->next_checkpoint && n == e->cfg.chunk) {
		if ((rc = checkpoint(in, err)))
			return rc;
		in->next_checkpoint += e->cfg.checkpoint_tokens;
	}
	return 0;
}

static int push_tokens(gfd_ingest *in, const int32_t *tok, size_t n, char *err)
{
	const gfe_engine *e = in->b->cx.e;
	const int32_t V = e->model->cfg.vocab_size;
	for (size_t i = 0; i < n; i++) {
		if (tok[i] < 0 || tok[i] >= V)
			return gf_error(err, -EINVAL, "token %d at position %" PRIu64 " is outside the vocabulary (0..%d)",
					tok[i], gfr_part_pos(in->p) + (uint64_t)in->n_pending, V - 1);
		in->pending[in->n_pending++] = tok[i];
		if (e->has_tokenizer) {
			size_t len;
			gf_tokenizer_token(&e->tokenizer, tok[i], &len);
			in->pending_bytes += len;
		}
		if (in->n_pending == e->cfg.chunk) {
			int rc = run_chunk(in, err);
			if (rc)
				return rc;
		}
	}
	return 0;
}

static int sink(void *user, const int32_t *ids, size_t n)
{
	gfd_ingest *in = user;
	return push_tokens(in, ids, n, in->err);
}

static int sticky(gfd_ingest *in, int rc, char *err)
{
	if (rc) {
		in->failed = rc;
		if (err && err != in->err)
			snprintf(err, GF_ERR_LEN, "%s", in->err[0] ? in->err : "ingest failed");
	}
	return rc;
}

static int be_ingest_text(gfd_ingest *in, const void *bytes, size_t n, char *err)
{
	if (in->failed)
		return gf_error(err, in->failed, "this ingest failed earlier: %.200s", in->err);
	if (!in->b->cx.e->has_tokenizer)
		return gf_error(err, -EINVAL, "the model has no vocabulary: send token ids");
	in->err[0] = 0;
	return sticky(in, gf_encoder_feed(&in->enc, bytes, n, sink, in), err);
}

static int be_ingest_tokens(gfd_ingest *in, const int32_t *tok, size_t n, char *err)
{
	if (in->failed)
		return gf_error(err, in->failed, "this ingest failed earlier: %.200s", in->err);
	in->err[0] = 0;
	return sticky(in, push_tokens(in, tok, n, in->err), err);
}

static int be_ingest_checkpoint(gfd_ingest *in, char *err)
{
	if (in->failed)
		return gf_error(err, in->failed, "this ingest failed earlier: %.200s", in->err);
	in->err[0] = 0;
	if (gfr_part_pos(in->p) == gfr_part_committed(in->p))
		return 0;
	return sticky(in, checkpoint(in, in->err), err);
}

/* An identical context is sealed already: drop this one everywhere and report that one. */
static int reuse(gfd_ingest *in, cs_key key, cs_ctx_info *out, bool *reused, char *err)
{
	struct mpi_be *b = in->b;
	const uint64_t serial = gfr_part_serial(in->p);
	end_stream(b, in->stream, true);
	in->ended = true;
	gfr_part_free(in->p);
	in->p = NULL;
	int rc = cs_store_remove(b->cx.e->store, serial, err);
	if (rc)
		return rc;
	rc = cs_store_lookup(b->cx.e->store, key, out);
	if (rc)
		return gf_error(err, rc, "identical context vanished");
	*reused = true;
	return 0;
}

static int finish(gfd_ingest *in, cs_ctx_info *out, bool *reused, char *err)
{
	struct mpi_be *b = in->b;
	const gfe_engine *e = b->cx.e;
	int rc;
	if (e->has_tokenizer && (rc = gf_encoder_finish(&in->enc, sink, in)))
		return rc;
	if (in->n_pending && (rc = run_chunk(in, err)))
		return rc;
	const uint64_t T = gfr_part_pos(in->p);
	if (T == 0)
		return gf_error(err, -EINVAL, "empty input: no tokens to ingest");
	/* Every rank commits at T (its tail reads the pages), the GOLD tail runs down the ranks
	 * from the emitter, and the last rank reports the logits when it is done. */
	gfr_wait *w = gfr_part_wait_state(in->p);
	w->acks = 0;
	w->ack_status = 0;
	if ((rc = gfr_part_mark(in->p, GFM_MARK_FINISH, T, err)) ||
	    (rc = gfr_part_wait_rows(in->p, T, err)) ||
	    (rc = gfr_part_commit(in->p, in->input_bytes, false, err)))
		return rc;
	if (b->cx.emitter == 0 && (rc = gfr_part_tail_start(in->p, err)))
		return rc;
	if ((rc = gfr_part_wait_acks(in->p, b->cx.size - 1, err)) ||
	    (rc = gfr_part_wait_logits(in->p, err)))
		return rc;
	in->committed_bytes = in->input_bytes;
	/* The same tokens under the same model are stored already: keep that one. */
	const cs_key key = cs_writer_key(gfr_part_writer(in->p));
	cs_ctx_info same;
	if (!cs_store_lookup(e->store, key, &same) && same.sealed && same.serial != gfr_part_serial(in->p))
		return reuse(in, key, out, reused, err);
	/* Seal: every other rank, then rank 0. */
	gfm_hdr h = { .type = GFM_SEAL, .stream = in->stream };
	rc = all_ack(b, in->p, &h, NULL, 0, err);
	if (rc == -EEXIST)
		return reuse(in, key, out, reused, err);
	if (rc)
		return rc;
	rc = gfr_part_commit(in->p, in->input_bytes, true, err);
	if (rc == -EEXIST)
		return reuse(in, key, out, reused, err);
	if (rc)
		return rc;
	*reused = false;
	return cs_store_info(e->store, gfr_part_serial(in->p), out, err);
}

static int be_ingest_finish(gfd_ingest *in, cs_ctx_info *out, bool *reused, char *err)
{
	if (in->failed)
		return gf_error(err, in->failed, "this ingest failed earlier: %.200s", in->err);
	in->err[0] = 0;
	return sticky(in, finish(in, out, reused, in->err), err);
}

static void be_ingest_state(const gfd_ingest *in, gfd_ingest_state *out)
{
	out->serial = in->p ? gfr_part_serial(in->p) : 0;
	out->tokens_done = in->p ? gfr_part_pos(in->p) : 0;
	out->committed = in->p ? gfr_part_committed(in->p) : 0;
	out->input_bytes = in->committed_bytes;
}

int gfd_ingest_compute_seconds(const gfd_ingest *in, double *seconds, int n)
{
	if (!in->p)
		return -ENOENT;
	const gfr_wait *w = gfr_part_wait_state(in->p);
	for (int r = 0; r < n && r < in->b->cx.size; r++)
		seconds[r] = r == 0 ? (double)gfr_part_compute_ns(in->p) * 1e-9 : w->rank_ms[r] * 1e-3;
	return in->b->cx.size;
}

static void be_ingest_free(gfd_ingest *in)
{
	ingest_release(in);
}

/* ---- sessions ---------------------------------------------------------------------------- */

static void session_release(gfd_session *s)
{
	if (!s)
		return;
	if (s->p)
		end_stream(s->b, s->stream, false);
	gfr_part_free(s->p);
	gfm_box_close(s->b->cx.link, s->box);
	free(s->x);
	free(s);
}

static int be_session_open(void *self, uint64_t serial, gfd_session **out, char *err)
{
	struct mpi_be *b = self;
	const gfe_engine *e = b->cx.e;
	if (serial == GFE_NO_CONTEXT)
		return gf_error(err, -EINVAL, "answers without a context are not served by a multi-rank daemon yet: name a context");
	gfd_session *s = calloc(1, sizeof(*s));
	if (!s)
		return gf_error(err, -ENOMEM, "out of memory");
	s->b = b;
	s->stream = gfm_new_stream(b->cx.link);
	s->box = gfm_box_open(b->cx.link, s->stream);
	s->x = malloc(sizeof(float) * (size_t)e->cfg.chunk * e->model->cfg.n_embd);
	int rc = !s->box || !s->x ? gf_error(err, -ENOMEM, "out of memory for a session") : 0;
	if (!rc)
		rc = gfr_part_session(&b->cx, s->stream, s->box, serial, &s->p, err);
	if (!rc) {
		gfm_hdr h = { .type = GFM_OPEN, .stream = s->stream, .aux = serial };
		rc = all_ack(b, s->p, &h, NULL, 0, err);
	}
	if (rc) {
		session_release(s);
		return rc;
	}
	*out = s;
	return 0;
}

static int be_session_prefill(gfd_session *s, const int32_t *tok, size_t n, float *logits,
			      char *err)
{
	const int ch = s->b->cx.e->cfg.chunk;
	int rc;
	if (n == 0)
		return gf_error(err, -EINVAL, "empty question: no tokens");
	for (size_t t = 0; t < n; t += (size_t)ch) {
		const int step = (int)(n - t < (size_t)ch ? n - t : (size_t)ch);
		if ((rc = gfr_part_chunk(s->p, gfr_part_pos(s->p), tok + t, s->x, step,
					 GFM_MODE_PREFILL, err)))
			return rc;
	}
	if ((rc = gfr_part_mark(s->p, GFM_MARK_QTAIL, gfr_part_pos(s->p), err)) ||
	    (rc = gfr_part_wait_logits(s->p, err)))
		return rc;
	memcpy(logits, gfr_part_wait_state(s->p)->logits,
	       sizeof(float) * (size_t)s->b->info.cfg.vocab_size);
	return 0;
}

static int be_session_step(gfd_session *s, int32_t tok, float *logits, char *err)
{
	int rc = gfr_part_chunk(s->p, gfr_part_pos(s->p), &tok, s->x, 1, GFM_MODE_STEP, err);
	if (!rc)
		rc = gfr_part_wait_logits(s->p, err);
	if (rc)
		return rc;
	memcpy(logits, gfr_part_wait_state(s->p)->logits,
	       sizeof(float) * (size_t)s->b->info.cfg.vocab_size);
	return 0;
}

static uint64_t be_session_base_tokens(const gfd_session *s)
{
	return gfr_part_base_tokens(s->p);
}

static void be_session_free(gfd_session *s)
{
	session_release(s);
}

/* ---- life ---------------------------------------------------------------------------------- */

/* A rank that dies takes the link down: the jobs waiting on it fail with the rank's name at
 * once; then the daemon stops (SIGTERM to itself: the clean path, which lets those errors
 * reach the clients) and exits non-zero for the resource manager to restart it. */
static void *watch(void *arg)
{
	struct mpi_be *b = arg;
	pthread_mutex_lock(&b->mu);
	while (!b->closing && !gfm_link_failure(b->cx.link)[0]) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 50000000l;
		if (until.tv_nsec >= 1000000000l) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000l;
		}
		pthread_cond_timedwait(&b->cond, &b->mu, &until);
	}
	const bool failed = !b->closing;
	pthread_mutex_unlock(&b->mu);
	if (failed) {
		fprintf(stderr, "goldfinchd: %s: stopping (restart the job)\n",
			gfm_link_failure(b->cx.link));
		struct timespec pause = { 0, 300000000l }; /* let the failed jobs report first */
		nanosleep(&pause, NULL);
		kill(getpid(), SIGTERM);
	}
	return NULL;
}

static void be_close(void *self)
{
	struct mpi_be *b = self;
	if (!b)
		return;
	pthread_mutex_lock(&b->mu);
	b->closing = true;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->mu);
	if (b->watching)
		pthread_join(b->watcher, NULL);
	if (!gfm_link_failure(b->cx.link)[0]) {
		gfm_hdr h = { .type = GFM_SHUTDOWN };
		to_all(b, &h, NULL, 0, NULL);
	}
	pthread_cond_destroy(&b->cond);
	pthread_mutex_destroy(&b->mu);
	free(b);
}

static const gfd_backend_ops mpi_ops = {
	.name = "mpi",
	.close = be_close,
	.info = be_info,
	.memory = be_memory,
	.list = be_list,
	.ctx_info = be_ctx_info,
	.lookup_name = be_lookup_name,
	.remove = be_remove,
	.disk_used = be_disk_used,
	.ingest_begin = be_ingest_begin,
	.ingest_resume = be_ingest_resume,
	.ingest_text = be_ingest_text,
	.ingest_tokens = be_ingest_tokens,
	.ingest_checkpoint = be_ingest_checkpoint,
	.ingest_finish = be_ingest_finish,
	.ingest_state = be_ingest_state,
	.ingest_free = be_ingest_free,
	.session_open = be_session_open,
	.session_prefill = be_session_prefill,
	.session_step = be_session_step,
	.session_base_tokens = be_session_base_tokens,
	.session_free = be_session_free,
};

int gfd_backend_mpi_open(gfd_backend *out, gfe_engine *e, gfm_link *link, const part_plan *plan,
			 const gfd_local_config *cfg, char *err)
{
	struct mpi_be *b = calloc(1, sizeof(*b));
	if (!b)
		return gf_error(err, -ENOMEM, "out of memory");
	gfr_ctx_init(&b->cx, e, link, plan);
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cond, NULL);
	const gf_model *m = e->model;
	snprintf(b->info.model_name, sizeof(b->info.model_name), "%s", m->gguf.name);
	b->info.cfg = m->cfg;
	b->info.tokenizer = e->has_tokenizer ? &e->tokenizer : NULL;
	b->info.c_dtype = cfg->c_dtype;
	b->info.ranks = (uint32_t)b->cx.size;
	b->info.disk_budget = cfg->disk_budget;
	b->info.compute = m->compute; /* every rank's: gfd_ranks_start gave them rank 0's */
	snprintf(b->info.kernels, sizeof(b->info.kernels), "%s", gf_model_isa_name(m));
	b->info.weight_bytes = m->weight_bytes;
	if (pthread_create(&b->watcher, NULL, watch, b) == 0)
		b->watching = true;
	out->ops = &mpi_ops;
	out->self = b;
	return 0;
}

/* ---- ranks >= 1 ----------------------------------------------------------------------- */

struct stream_thread {
	gfr_ctx *cx;
	gfm_box *box;
	uint32_t stream;
	pthread_mutex_t *mu;
	pthread_cond_t *cond;
	int *live;
};

static void *stream_main(void *arg)
{
	struct stream_thread *t = arg;
	gfr_serve_stream(t->cx, t->box, t->stream);
	pthread_mutex_lock(t->mu);
	(*t->live)--;
	pthread_cond_broadcast(t->cond);
	pthread_mutex_unlock(t->mu);
	free(t);
	return NULL;
}

static void remove_copy(gfr_ctx *cx, uint64_t serial0)
{
	cs_ctx_info info;
	if (!gfr_part_lookup(cx->e->store, serial0, &info))
		cs_store_remove(cx->e->store, info.serial, NULL);
}

int gfd_rank_serve(gfe_engine *e, gfm_link *link, const part_plan *plan, char *err)
{
	gfr_ctx cx;
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
	int live = 0, rc = 0;
	gfr_ctx_init(&cx, e, link, plan);
	for (;;) {
		gfm_msg *m;
		rc = gfm_control_pop(link, -1, &m);
		if (rc) {
			rc = gf_error(err, -EPIPE, "%s", gfm_link_failure(link));
			break;
		}
		const gfm_hdr h = m->h;
		gfm_msg_free(m);
		if (h.type == GFM_SHUTDOWN)
			break;
		if (h.type == GFM_REMOVE) {
			remove_copy(&cx, h.aux);
			continue;
		}
		/* The first message of a new stream: its mailbox exists, start its thread. */
		struct stream_thread *t = calloc(1, sizeof(*t));
		pthread_t th;
		gfm_box *box = gfm_box_open(link, h.stream);
		if (!t || !box) {
			free(t);
			rc = gf_error(err, -ENOMEM, "rank %d: out of memory for a stream", cx.rank);
			break;
		}
		*t = (struct stream_thread){ &cx, box, h.stream, &mu, &cond, &live };
		pthread_mutex_lock(&mu);
		live++;
		pthread_mutex_unlock(&mu);
		if (pthread_create(&th, NULL, stream_main, t)) {
			pthread_mutex_lock(&mu);
			live--;
			pthread_mutex_unlock(&mu);
			free(t);
			rc = gf_error(err, -EAGAIN, "rank %d: cannot start a stream thread", cx.rank);
			break;
		}
		pthread_detach(th);
	}
	/* Streams end when rank 0 closes them (before it shuts down) or when the link fails. */
	pthread_mutex_lock(&mu);
	while (live > 0 && !rc)
		pthread_cond_wait(&cond, &mu);
	pthread_mutex_unlock(&mu);
	return rc;
}

int gfd_rank_reconcile(gfe_engine *e, int rank, const uint64_t *serials, size_t n)
{
	/* A copy whose context rank 0 no longer has (removed, or never committed there) goes. */
	cs_ctx_info *list = NULL;
	size_t count = 0;
	int removed = 0;
	if (rank == 0 || cs_store_list(e->store, &list, &count, NULL))
		return 0;
	for (size_t i = 0; i < count; i++) {
		uint64_t s0;
		if (gfr_part_parse(list[i].name, &s0))
			continue;
		bool known = false;
		for (size_t j = 0; j < n && !known; j++)
			known = serials[j] == s0;
		if (!known && !cs_store_remove(e->store, list[i].serial, NULL))
			removed++;
	}
	free(list);
	return removed;
}
