/*
 * rank_part.c — see rank_part.h.
 */
#include "rank_part.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* What a chunk carries after its rows: the chain's work before the receiver's own (see
 * choose_position), the sender's time for a row of the receiver's first time-mix products
 * (0: it computes none), then where the sender split its last channel mix the shift carry
 * [C], or where it computed rows of those products, those (gf_time_mix_ahead). */
typedef struct gfr_edge {
	double above_ns;
	double ahead_row_ns;
	float rows[];
} gfr_edge;

struct gfr_part {
	gfr_ctx *x;
	uint32_t stream;
	gfm_box *box;
	bool session;
	uint64_t serial;             /* local */
	cs_writer *w;                /* ingest: this rank's replica of the pages */
	cs_reader *reader;           /* session: the stored context */
	cs_branch *branch;           /* session: the question's and answer's rows */
	struct paged_src ps;         /* session, GOLD ranks */
	bool ps_ready;
	uint64_t base_tokens, session_id;
	uint64_t input_bytes;        /* as read from the snapshot */
	gf_workspace *ws;
	gf_state st;
	uint64_t rows;               /* positions whose cache rows this rank holds */
	uint64_t committed;          /* rows as of the last commit */
	int credits;                 /* chunks this rank may still send to its successor */
	float *c;                    /* [chunk][Ck] */
	void *crow;                  /* [chunk][Ck] in the store's type */
	uint32_t *tok_u32;           /* [chunk] */
	float *tail_x;               /* [chunk][C] */
	void *snap;
	gfm_msg *held, *held_tail;   /* work that arrived while waiting */
	gfm_msg *tailx;              /* a GOLD tail's window waiting for this rank's commit */
	/* Sharing the ingest tail's attention (see shared_attend). */
	gfm_msg *tailq;              /* queries waiting for this rank's commit */
	cs_reader *help_reader;      /* this rank's replica, read for others' queries */
	struct paged_src help_ps;
	bool help_ready;
	float *help_buf;             /* this rank's partials for another's queries */
	size_t help_cap;             /* floats */
	float *share;                /* partials of every span, then the accumulator */
	size_t share_cap;            /* floats */
	uint64_t share_aux[PART_MAX_RANKS]; /* the spans asked of each rank; 0 = none pending */
	int share_pending, share_status;
	int64_t share_p0;
	int share_n;
	char share_err[GF_ERR_LEN];
	bool closing, drop;          /* CLOSE or DROP seen */
	uint64_t compute_ns;         /* time in this rank's math and page writes */
	uint64_t finch_ns, tail_ns;  /* of which: the Finch blocks; the GOLD tail */
	uint64_t chunks;
	uint64_t idle_ns, credit_ns; /* waiting for work; waiting for the successor's room */
	uint64_t pages_ns, help_ns;  /* appending rows to the store; others' tail queries (stats) */
	/* The moving boundary (see gfr_part_chunk): this rank's side towards the next rank. */
	int keep_rows;               /* rows of its last channel mix this rank runs, of a chunk */
	int ahead_rows;              /* rows of the next rank's first time-mix products it runs
				      * (then keep_rows is the whole chunk) */
	double keep_residue;         /* what rounding the position to a step left out, carried */
	double base_ns;              /* this rank's time a chunk without any boundary's rows
				      * (moving average; 0: not known yet) */
	double below_ns;             /* the chain's work after that channel mix (0: not known
				      * yet), as the last credit brought it (see choose_rows) */
	double next_ns;              /* the next rank's time a chunk without that channel mix's
				      * rows, as the last credit brought it */
	double row_ns;               /* one row of that channel mix */
	double ahead_row_ns;         /* one row of the next rank's first time-mix products */
	uint64_t split_chunks, split_kept, split_ahead; /* chunks sent; rows kept, ahead (stats) */
	gfr_edge *edge;              /* the next chunk's, with its carry or rows ahead */
	/* ...and towards the previous rank, for the chunk in hand. */
	int in_rows;                 /* rows it ran of its last channel mix (-1: all) */
	const float *in_carry;
	int in_ahead;                /* rows of this rank's first time-mix products it ran */
	const float *in_ahead_rows;  /* and those products */
	double in_ahead_row_ns;      /* a row of them there (0: it runs none) */
	double in_above_ns;          /* the chain's work before this rank's own (0: not known) */
	double in_row_ns;            /* one row of the previous rank's last channel mix here */
	uint64_t last_ns, last_help_ns; /* this chunk's compute; of which finishing those rows */
	int last_help_rows;
	int last_own_ahead;          /* rows of its first time-mix products it ran that the rank
				      * before could have run (priced at in_ahead_row_ns) */
	gfr_wait wait;
	char err[GF_ERR_LEN];
};

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t gfr_part_compute_ns(const gfr_part *p)
{
	return p->compute_ns;
}

void gfr_ctx_init(gfr_ctx *x, gfe_engine *e, gfm_link *link, const part_plan *plan)
{
	memset(x, 0, sizeof(*x));
	x->e = e;
	x->link = link;
	x->plan = *plan;
	x->rank = gfm_link_rank(link);
	x->size = gfm_link_size(link);
	part_rank_blocks(plan, x->rank, &x->b0, &x->b1);
	x->L = plan->n_layer;
	x->G = plan->first_gold;
	x->emitter = part_emitter(plan);
	x->has_gold = x->b1 > x->G;
	x->has_finch = x->b0 < x->G;
	/* Chunks in flight per hop: enough to ride out a stage that is briefly slower. Only the
	 * sender reads it, so ranks may differ. */
	const char *env = getenv("GOLDFINCH_PIPELINE_CHUNKS");
	x->credits = env && atoi(env) >= 1 && atoi(env) <= 64 ? atoi(env) : GFR_CREDITS;
	/* On unless turned off (to measure what it brings). */
	env = getenv("GOLDFINCH_TAIL_SHARE");
	x->share_tail = !(env && strcmp(env, "0") == 0);
	/* The boundary moves where the next rank holds this rank's last channel mix (parts of a
	 * chunk keep their bits at any thread count: gf_split_step), in chunks of whole steps. */
	env = getenv("GOLDFINCH_BOUNDARY");
	x->split_test = env && !strcmp(env, "test");
	const int step = gf_split_step(&e->model->cfg);
	if (x->rank + 1 < x->size && x->rank < x->emitter && x->has_finch &&
	    gfr_takes_boundary(plan, x->rank + 1) && e->cfg.chunk <= 32768 &&
	    e->cfg.chunk % step == 0)
		x->split_step = step;
	x->ahead = x->split_step && gfr_gives_ahead(plan, x->rank) &&
		   e->model->layers[x->b1].att_key.p;
}

bool gfr_gives_ahead(const part_plan *plan, int rank)
{
	const char *env = getenv("GOLDFINCH_BOUNDARY");
	return !(env && !strcmp(env, "down")) && gfr_takes_boundary(plan, rank + 1) &&
	       rank < part_emitter(plan);
}

bool gfr_takes_boundary(const part_plan *plan, int rank)
{
	const char *env = getenv("GOLDFINCH_BOUNDARY");
	if ((env && !strcmp(env, "0")) || rank < 1 || rank >= plan->n_ranks)
		return false;
	int b0, b1;
	part_rank_blocks(plan, rank, &b0, &b1);
	/* Its predecessor's last block b0-1 is a Finch block before G-1: that rank sends chunks. */
	return b0 < b1 && b0 < plan->first_gold;
}

void gfr_part_name(char *buf, size_t cap, uint64_t serial0, const char *name, size_t len)
{
	int n = snprintf(buf, cap, "r0-%" PRIu64, serial0);
	/* rank 0's name after a colon, cut to what the store keeps, without control bytes */
	if (len && n > 0 && (size_t)n + 2 < cap) {
		size_t k = (size_t)n;
		buf[k++] = ':';
		for (size_t i = 0; i < len && k + 1 < cap && k + 1 < CS_NAME_MAX; i++)
			if ((unsigned char)name[i] >= 0x20)
				buf[k++] = name[i];
		buf[k] = 0;
	}
}

int gfr_part_parse(const char *name, uint64_t *serial0)
{
	char *end;
	if (strncmp(name, "r0-", 3) || name[3] < '0' || name[3] > '9')
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(name + 3, &end, 10);
	if (errno || (*end && *end != ':'))
		return -EINVAL;
	*serial0 = v;
	return 0;
}

int gfr_part_lookup(cs_store *s, uint64_t serial0, cs_ctx_info *out)
{
	char name[64];
	cs_ctx_info *list;
	size_t n;
	uint64_t s0;
	gfr_part_name(name, sizeof(name), serial0, NULL, 0);
	if (!cs_store_lookup_name(s, name, out))
		return 0; /* a copy made before copies carried rank 0's name */
	if (cs_store_list(s, &list, &n, NULL))
		return -ENOMEM;
	int rc = -ENOENT;
	for (size_t i = n; i-- > 0 && rc;)
		if (!gfr_part_parse(list[i].name, &s0) && s0 == serial0) {
			*out = list[i];
			rc = 0;
		}
	free(list);
	return rc;
}

static const gf_config *cfg_of(const gfr_part *p)
{
	return &p->x->e->model->cfg;
}

static int part_alloc(gfr_ctx *x, uint32_t stream, gfm_box *box, bool session, gfr_part **out,
		      char *err)
{
	gfe_engine *e = x->e;
	const gf_config *c = &e->model->cfg;
	const size_t ch = (size_t)e->cfg.chunk;
	gfr_part *p = calloc(1, sizeof(*p));
	if (!p)
		return gf_error(err, -ENOMEM, "out of memory");
	p->x = x;
	p->stream = stream;
	p->box = box;
	p->session = session;
	p->credits = x->credits;
	int rc = gfe_workspace_take(e, &p->ws);
	if (!rc)
		rc = gf_state_init(&p->st, c);
	p->c = malloc(ch * c->ckv_dim * sizeof(float));
	p->crow = malloc(ch * c->ckv_dim * cs_dtype_size(e->cfg.c_dtype));
	p->tok_u32 = malloc(ch * sizeof(uint32_t));
	p->tail_x = malloc(ch * c->n_embd * sizeof(float));
	p->edge = malloc(sizeof(gfr_edge) +
			 sizeof(float) * (x->ahead ? gf_ahead_floats(c, (int)ch) : (size_t)c->n_embd));
	/* All: where ranks of the same pace balance (see choose_rows). */
	p->keep_rows = e->cfg.chunk;
	p->in_rows = -1;
	p->snap = malloc(gfe_snapshot_size(c, gf_config_tail_window(c)));
	p->wait.logits = malloc((size_t)c->vocab_size * sizeof(float));
	if (rc || !p->c || !p->crow || !p->tok_u32 || !p->tail_x || !p->edge || !p->snap ||
	    !p->wait.logits) {
		gfr_part_free(p);
		return gf_error(err, -ENOMEM, "out of memory for a stream");
	}
	*out = p;
	return 0;
}

static void help_close(gfr_part *p)
{
	if (p->help_ready)
		gfe_paged_free(&p->help_ps);
	cs_reader_close(p->help_reader);
	p->help_reader = NULL;
	p->help_ready = false;
}

static double above_boundary(const gfr_part *p);
static double ahead_price(const gfr_part *p);

void gfr_part_free(gfr_part *p)
{
	if (!p)
		return;
	if (getenv("GOLDFINCH_RANK_STATS")) {
		struct rusage ru;
		struct timespec cpu;
		getrusage(RUSAGE_THREAD, &ru);
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
		fprintf(stderr, "rank %d stream %u: computing %.3f s (Finch blocks %.3f s over %llu chunks, GOLD tail %.3f s, others' tail queries %.3f s), appending pages %.3f s, waiting for work %.3f s, for room downstream %.3f s; thread CPU %.3f s (%.3f s in the kernel), %ld+%ld context switches, %ld page faults\n",
			p->x->rank, p->stream, p->compute_ns * 1e-9, p->finch_ns * 1e-9,
			(unsigned long long)p->chunks, p->tail_ns * 1e-9, p->help_ns * 1e-9,
			p->pages_ns * 1e-9, p->idle_ns * 1e-9,
			p->credit_ns * 1e-9, (double)cpu.tv_sec + 1e-9 * (double)cpu.tv_nsec,
			(double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec,
			ru.ru_nvcsw, ru.ru_nivcsw, ru.ru_minflt + ru.ru_majflt);
		if (p->split_chunks)
			fprintf(stderr, "rank %d stream %u: boundary with rank %d: kept %.1f of %d rows of block %d's channel mix and ran %.1f of block %d's time mix on average over %llu chunks (%d and %d at the end)\n",
				p->x->rank, p->stream, p->x->rank + 1,
				(double)p->split_kept / (double)p->split_chunks, p->x->e->cfg.chunk,
				p->x->b1 - 1, (double)p->split_ahead / (double)p->split_chunks,
				p->x->b1, (unsigned long long)p->split_chunks, p->keep_rows,
				p->ahead_rows);
		if (p->base_ns > 0)
			fprintf(stderr, "rank %d stream %u: at the end, a chunk's base %.1f ms, rows of its boundary %.1f us and %.1f us (of the previous one's %.1f us and %.1f us); the chain's work before its boundary %.1f ms, after it %.1f ms (the next rank's own %.1f ms)\n",
				p->x->rank, p->stream, p->base_ns * 1e-6, p->row_ns * 1e-3,
				p->x->ahead ? ahead_price(p) * 1e-3 : 0.0, p->in_row_ns * 1e-3,
				p->in_ahead_row_ns * 1e-3, above_boundary(p) * 1e-6,
				p->below_ns * 1e-6, p->next_ns * 1e-6);
	}
	if (p->ps_ready) {
		gfe_paged_free(&p->ps);
		if (p->session_id)
			gfe_tier_forget(&p->x->e->tier, p->session_id);
	}
	cs_branch_free(p->branch);
	cs_reader_close(p->reader);
	cs_writer_free(p->w);
	gfe_workspace_give(p->x->e, p->ws);
	gf_state_free(&p->st);
	for (gfm_msg *m = p->held, *next; m; m = next) {
		next = m->next;
		gfm_msg_free(m);
	}
	gfm_msg_free(p->tailx);
	gfm_msg_free(p->tailq);
	help_close(p);
	free(p->help_buf);
	free(p->share);
	free(p->c);
	free(p->crow);
	free(p->tok_u32);
	free(p->tail_x);
	free(p->edge);
	free(p->snap);
	free(p->wait.logits);
	free(p);
}

uint64_t gfr_part_serial(const gfr_part *p)
{
	return p->serial;
}

uint64_t gfr_part_pos(const gfr_part *p)
{
	return (uint64_t)p->st.n_pos;
}

uint64_t gfr_part_committed(const gfr_part *p)
{
	return p->committed;
}

uint64_t gfr_part_input_bytes(const gfr_part *p)
{
	return p->input_bytes;
}

uint64_t gfr_part_base_tokens(const gfr_part *p)
{
	return p->base_tokens;
}

cs_writer *gfr_part_writer(gfr_part *p)
{
	return p->w;
}

gfr_wait *gfr_part_wait_state(const gfr_part *p)
{
	return (gfr_wait *)&p->wait; /* the part's own record; const only for readers */
}

int gfr_part_begin(gfr_ctx *x, uint32_t stream, gfm_box *box, const char *name,
		   gfr_part **out, char *err)
{
	const gf_config *c = &x->e->model->cfg;
	gfr_part *p;
	int rc = part_alloc(x, stream, box, false, &p, err);
	if (rc)
		return rc;
	cs_ctx_params cp = {
		.model_id = gfe_context_model_id(x->e->model), .dtype = x->e->cfg.c_dtype,
		.width = (uint32_t)c->ckv_dim, .page_tokens = x->e->cfg.page_tokens, .name = name,
	};
	if ((rc = cs_writer_begin(x->e->store, &cp, &p->w, err))) {
		gfr_part_free(p);
		return rc;
	}
	p->serial = cs_writer_serial(p->w);
	*out = p;
	return 0;
}

int gfr_part_resume(gfr_ctx *x, uint32_t stream, gfm_box *box, uint64_t serial,
		    gfr_part **out, char *err)
{
	gfe_engine *e = x->e;
	void *blob = NULL;
	size_t len = 0;
	uint64_t input_bytes;
	cs_ctx_info info;
	gfr_part *p;
	int rc = part_alloc(x, stream, box, false, &p, err);
	if (rc)
		return rc;
	if ((rc = cs_writer_resume(e->store, serial, &p->w, err)) ||
	    (rc = cs_store_info(e->store, serial, &info, err)))
		goto fail_part;
	if (info.dtype != e->cfg.c_dtype) {
		rc = gf_error(err, -EINVAL, "context #%" PRIu64 " stores c as %s, this server as %s",
			      serial, cs_dtype_name(info.dtype), cs_dtype_name(e->cfg.c_dtype));
		goto fail_part;
	}
	if ((rc = cs_store_read_blob(e->store, serial, &blob, &len, err)))
		goto fail_part;
	if (len == 0) {
		rc = gf_error(err, -EINVAL, "context #%" PRIu64 " has no snapshot to resume from",
			      serial);
		goto fail_part;
	}
	if ((rc = gfe_snapshot_read(e->model, blob, len, e->slice, &p->st, &input_bytes, err)))
		goto fail_part;
	p->input_bytes = input_bytes;
	p->serial = serial;
	p->rows = p->committed = cs_writer_committed(p->w);
	if ((uint64_t)p->st.n_pos != p->rows) {
		rc = gf_error(err, -EBADMSG, "context #%" PRIu64 ": snapshot at token %" PRId64 " but %" PRIu64 " committed",
			      serial, p->st.n_pos, p->rows);
		goto fail_part;
	}
	free(blob);
	*out = p;
	return 0;
fail_part:
	free(blob);
	gfr_part_free(p);
	return rc;
}

int gfr_part_session(gfr_ctx *x, uint32_t stream, gfm_box *box, uint64_t serial,
		     gfr_part **out, char *err)
{
	gfe_engine *e = x->e;
	void *blob = NULL;
	size_t len = 0;
	uint64_t input_bytes;
	cs_ctx_info info;
	gfr_part *p;
	int rc = part_alloc(x, stream, box, true, &p, err);
	if (rc)
		return rc;
	p->serial = serial;
	if ((rc = cs_reader_open(e->store, serial, &p->reader, err)))
		goto fail_part;
	cs_reader_info(p->reader, &info);
	if (!info.sealed) {
		rc = gf_error(err, -EINVAL, "context #%" PRIu64 " is still being ingested", serial);
		goto fail_part;
	}
	if ((rc = gfe_check_context(e, serial, info.model_id, info.width, info.dtype, err)))
		goto fail_part;
	if ((rc = cs_reader_blob(p->reader, &blob, &len, err)) ||
	    (rc = gfe_snapshot_read(e->model, blob, len, e->slice, &p->st, &input_bytes, err)))
		goto fail_part;
	if ((uint64_t)p->st.n_pos != info.n_tokens) {
		rc = gf_error(err, -EBADMSG, "context #%" PRIu64 ": snapshot at token %" PRId64 ", pages hold %" PRIu64,
			      serial, p->st.n_pos, info.n_tokens);
		goto fail_part;
	}
	p->rows = p->committed = p->base_tokens = info.n_tokens;
	if (x->has_gold) {
		if ((rc = cs_branch_init(&p->branch, p->reader, err)))
			goto fail_part;
		pthread_mutex_lock(&e->mu);
		p->session_id = ++e->next_session | (1ull << 63);
		pthread_mutex_unlock(&e->mu);
		if ((rc = gfe_paged_init(&p->ps, e, p->reader, serial, info.n_tokens, true))) {
			p->ps_ready = true;
			rc = gf_error(err, rc, "out of memory for a session");
			goto fail_part;
		}
		p->ps_ready = true;
		p->ps.branch = p->branch;
		p->ps.session_owner = p->session_id;
		p->ps.src.n_pos = (int64_t)info.n_tokens;
	}
	free(blob);
	*out = p;
	return 0;
fail_part:
	free(blob);
	gfr_part_free(p);
	return rc;
}

/* ---- messages -------------------------------------------------------------------------- */

void gfr_ack(gfr_ctx *x, uint32_t stream, uint32_t acked, uint64_t pos, int status,
	     const char *err)
{
	gfm_hdr h = { .type = GFM_ACK, .stream = stream, .status = status, .pos = pos,
		      .aux = acked };
	size_t len = status < 0 && err ? strlen(err) + 1 : 0;
	gfm_send(x->link, 0, &h, err, len);
}

static void hold(gfr_part *p, gfm_msg *m)
{
	m->next = NULL;
	if (p->held_tail)
		p->held_tail->next = m;
	else
		p->held = m;
	p->held_tail = m;
}

static int append_rows(gfr_part *p, uint64_t pos, const int32_t *tok, const float *c, int n,
		       char *err)
{
	const gf_config *cf = cfg_of(p);
	if (pos != p->rows)
		return gf_error(err, -EPROTO, "rank %d: rows for position %" PRIu64 " arrived, expected %" PRIu64,
				p->x->rank, pos, p->rows);
	const uint64_t t0 = mono_ns();
	gfe_c_to_storage(p->x->e->cfg.c_dtype, c, p->crow, (size_t)n * cf->ckv_dim);
	for (int i = 0; i < n; i++)
		p->tok_u32[i] = (uint32_t)tok[i];
	int rc = p->session ? cs_branch_append(p->branch, p->crow, p->tok_u32, (size_t)n, err)
			    : cs_writer_append(p->w, p->crow, p->tok_u32, (size_t)n, err);
	p->pages_ns += mono_ns() - t0;
	if (rc)
		return rc;
	p->rows += (uint64_t)n;
	if (p->ps_ready)
		p->ps.src.n_pos = (int64_t)p->rows;
	return 0;
}

/* ---- the ingest tail's attention, shared over the ranks ------------------------------------
 *
 * At the end of an ingest every rank holds every page, and the GOLD tail's attention over all
 * T positions (rebuilding each position's keys and values, per GOLD layer) is most of the
 * tail's work. The rank running a GOLD layer sends its queries to every rank; each computes
 * the partial softmax of its share of the spans (gf_attn_spans) from its own replica and
 * sends it back; the owner merges all spans in order — the bits of one process. */

static int reserve_floats(float **buf, size_t *cap, size_t floats)
{
	if (floats <= *cap)
		return 0;
	float *nb = realloc(*buf, floats * sizeof(float));
	if (!nb)
		return -ENOMEM;
	*buf = nb;
	*cap = floats;
	return 0;
}

static uint64_t span_aux(int g, int s0, int s1)
{
	return (uint64_t)g << 32 | (uint64_t)s0 << 16 | (uint64_t)s1;
}

/* Rank r's run of the spans of n_keys keys, out of P. */
static void span_share(int64_t n_keys, int r, int P, int *s0, int *s1)
{
	const int spans = gf_attn_n_spans(n_keys);
	*s0 = (int)((int64_t)spans * r / P);
	*s1 = (int)((int64_t)spans * (r + 1) / P);
}

/* Every GOLD layer of the tail rebuilds the keys of the same spans: their key stream once. */
static int keep_key_stream(struct paged_src *ps, int64_t n_keys, int s0, int s1)
{
	const int64_t per = gf_attn_span_blocks(n_keys), full = n_keys / GF_KV_BLOCK;
	const int64_t b0 = s0 * per, b1 = s1 * per < full ? s1 * per : full;
	return b1 > b0 ? gfe_paged_key_cache(ps, b0, b1 - b0, GFE_TAIL_KEY_CACHE_BYTES) : 0;
}

/* Another rank's tail queries: this rank's share of the spans, or an error, goes back.
 * Returns non-zero only when the link fails (the asker reports the rest). */
static int serve_tailq(gfr_part *p, const gfm_msg *m, char *err)
{
	gfr_ctx *cx = p->x;
	gfe_engine *e = cx->e;
	const gf_config *cf = cfg_of(p);
	const int n = (int)m->h.n, g = (int)(m->h.aux >> 32);
	const int s0 = (int)(m->h.aux >> 16 & 0xffff), s1 = (int)(m->h.aux & 0xffff);
	const int64_t p0 = (int64_t)m->h.pos;
	const uint64_t t0 = mono_ns();
	char why[GF_ERR_LEN] = "";
	size_t floats = 0;
	int rc = 0;
	if (n < 1 || n > e->cfg.chunk || m->len != sizeof(float) * (size_t)n * cf->dim_att ||
	    g >= cf->n_layer - cf->first_gold || s0 >= s1 || s1 > gf_attn_n_spans(p0 + n) ||
	    (uint64_t)p0 + (uint64_t)n > p->committed)
		rc = gf_error(why, -EPROTO, "rank %d: malformed GOLD tail queries", cx->rank);
	if (!rc && !p->help_ready) {
		if (!(rc = cs_reader_open(e->store, p->serial, &p->help_reader, why))) {
			cs_reader_set_streaming(p->help_reader, true);
			rc = gfe_paged_init(&p->help_ps, e, p->help_reader, p->serial, p->committed, false);
			p->help_ready = true;
			p->help_ps.src.n_pos = (int64_t)p->committed;
			if (!rc)
				rc = keep_key_stream(&p->help_ps, p0 + n, s0, s1);
			if (rc)
				gf_error(why, rc, "rank %d: out of memory for the GOLD tail", cx->rank);
		}
	}
	if (!rc) {
		floats = (size_t)(s1 - s0) * gf_attn_partial_floats(cf, n);
		if (reserve_floats(&p->help_buf, &p->help_cap, floats))
			rc = gf_error(why, -ENOMEM, "rank %d: out of memory for the GOLD tail", cx->rank);
	}
	if (!rc) {
		p->help_ps.err[0] = 0;
		rc = gf_attn_spans(e->model, p->ws, &p->help_ps.src, g, m->payload, p0, n, s0, s1,
				   p->help_buf);
		if (rc)
			gf_error(why, rc, "rank %d: GOLD tail, spans %d..%d: %.200s", cx->rank, s0,
				 s1 - 1, p->help_ps.err[0] ? p->help_ps.err : "failed");
	}
	p->compute_ns += mono_ns() - t0;
	p->help_ns += mono_ns() - t0;
	gfm_hdr h = { .type = GFM_TAILP, .stream = p->stream, .status = rc, .n = m->h.n,
		      .pos = m->h.pos, .aux = m->h.aux };
	int sent = rc ? gfm_send(cx->link, m->source, &h, why, strlen(why) + 1)
		      : gfm_send(cx->link, m->source, &h, p->help_buf, floats * sizeof(float));
	return sent ? gf_error(err, sent, "%s", gfm_link_failure(cx->link)) : 0;
}

/* Another rank's partials, for the spans this rank asked of it. */
static int take_tailp(gfr_part *p, const gfm_msg *m)
{
	const int r = m->source;
	if (r < 0 || r >= PART_MAX_RANKS || !p->share_aux[r] || m->h.aux != p->share_aux[r] ||
	    (int64_t)m->h.pos != p->share_p0 || (int)m->h.n != p->share_n)
		return 0; /* an answer to a tail that already failed */
	p->share_aux[r] = 0;
	p->share_pending--;
	if (p->share_status)
		return 0;
	if (m->h.status < 0) {
		p->share_status = m->h.status;
		snprintf(p->share_err, sizeof(p->share_err), "%.*s", (int)m->len,
			 m->len ? (const char *)m->payload : "failed");
		return 0;
	}
	const size_t pf = gf_attn_partial_floats(cfg_of(p), p->share_n);
	const int s0 = (int)(m->h.aux >> 16 & 0xffff), s1 = (int)(m->h.aux & 0xffff);
	if (m->len != (size_t)(s1 - s0) * pf * sizeof(float)) {
		p->share_status = -EPROTO;
		snprintf(p->share_err, sizeof(p->share_err), "rank %d: malformed GOLD tail partials", r);
		return 0;
	}
	memcpy(p->share + (size_t)s0 * pf, m->payload, m->len);
	return 0;
}

static int pump(gfr_part *p, char *err);

/* The attention of a GOLD layer in the ingest's tail (gf_kv_source.attend): spans shared
 * out in contiguous runs, one per rank, this rank's own computed here meanwhile. */
static int shared_attend(gf_kv_source *src, gf_workspace *ws, int g, const float *q,
			 int64_t p0, int n, float *y)
{
	struct paged_src *ps = (struct paged_src *)src;
	gfr_part *p = src->user;
	gfr_ctx *cx = p->x;
	const gf_config *cf = cfg_of(p);
	const int spans = gf_attn_n_spans(p0 + n), P = cx->size;
	const size_t pf = gf_attn_partial_floats(cf, n);
	char err[GF_ERR_LEN] = "";
	int own0 = 0, own1 = 0, rc = 0;
	if (reserve_floats(&p->share, &p->share_cap, (size_t)(spans + 1) * pf)) {
		snprintf(ps->err, sizeof(ps->err), "out of memory for the GOLD tail");
		return -ENOMEM;
	}
	p->share_pending = 0;
	p->share_status = 0;
	p->share_p0 = p0;
	p->share_n = n;
	for (int r = 0; r < P; r++) {
		int s0, s1;
		span_share(p0 + n, r, P, &s0, &s1);
		p->share_aux[r] = 0;
		if (r == cx->rank) {
			own0 = s0;
			own1 = s1;
		} else if (s1 > s0 && !rc) {
			gfm_hdr h = { .type = GFM_TAILQ, .stream = p->stream, .n = (uint32_t)n,
				      .pos = (uint64_t)p0, .aux = span_aux(g, s0, s1) };
			rc = gfm_send(cx->link, r, &h, q, sizeof(float) * (size_t)n * cf->dim_att);
			if (rc)
				gf_error(err, rc, "%s", gfm_link_failure(cx->link));
			else {
				p->share_aux[r] = h.aux;
				p->share_pending++;
			}
		}
	}
	if (!rc && own1 > own0) {
		ps->err[0] = 0;
		rc = gf_attn_spans(cx->e->model, ws, src, g, q, p0, n, own0, own1,
				   p->share + (size_t)own0 * pf);
		if (rc)
			gf_error(err, rc, "%s", ps->err[0] ? ps->err : "attention failed");
	}
	while (!rc && p->share_pending > 0)
		rc = pump(p, err);
	if (!rc && p->share_status)
		rc = gf_error(err, p->share_status, "%s", p->share_err);
	if (rc) {
		snprintf(ps->err, sizeof(ps->err), "%s", err);
		memset(p->share_aux, 0, sizeof(p->share_aux));
		p->share_pending = 0;
		return rc;
	}
	float *acc = p->share + (size_t)spans * pf;
	gf_attn_acc_init(cf, n, acc);
	for (int s = 0; s < spans; s++)
		gf_attn_acc_merge(cf, n, acc, p->share + (size_t)s * pf);
	gf_attn_acc_finish(cf, n, acc, y);
	return 0;
}

/* ---- the moving boundary ----------------------------------------------------------------
 *
 * A pipeline runs at the pace of its slowest rank, and on a shared host a rank's pace moves
 * with its core's (daemon/README.md). So the boundary between a rank and the next moves too.
 * It is a stretch of row-parallel work that either rank can run, a row at a time (in steps
 * of gf_split_step rows), with the bits of one process: first the channel mix of this
 * rank's last block (gf_blocks_split runs its first `keep` rows, gf_channel_mix_rest on the
 * next rank the rest), then the products of the next rank's first time mix before its
 * recurrence (gf_time_mix_ahead runs its last `ahead` rows here, the next rank takes them).
 * A position q in 0 .. n + u rows says where: keep = min(q, n), ahead = q - n beyond n,
 * with u = n - step (the next rank always runs the first step rows of its time mix: their
 * token shift needs its state). The channel mix alone lets work move down the chain only;
 * with the time mix a rank slower than those before it hands work up too. Each credit brings
 * back the next rank's time for a chunk and how long the channel-mix rows it finished took;
 * each chunk brings down the sender's time for a row of time-mix products; the sender then
 * picks the position that evens the whole chain (see choose_position). */

#define SPLIT_EMA 0.2

static void ema(double *avg, double sample)
{
	*avg = *avg > 0 ? *avg + SPLIT_EMA * (sample - *avg) : sample;
}

/* Multiply-adds of a row of a channel mix and of a time mix's products, over n_embd. */
static double cm_work(const gf_config *c)
{
	return 2.0 * c->dim_ffn + c->n_embd;
}

static double tm_work(const gf_config *c)
{
	return 4.0 * c->dim_att + 10.0 * c->lora_maa + 2.0 * c->lora_value2 + 2.0 * c->lora_decay;
}

/* Until the next rank has timed some rows: one row's share of this rank's own time, in the
 * proportion of multiply-adds a channel mix has among its Finch blocks. */
static double guess_row_ns(const gfr_part *p, double chunk_ns, int n)
{
	const gf_config *c = cfg_of(p);
	const double cm = cm_work(c), tm = 5.0 * c->dim_att;
	const int blocks = p->x->b1 - p->x->b0;
	return chunk_ns * cm / (cm + tm) / (double)(blocks > 0 ? blocks : 1) / (double)n;
}

/* Rows of the next rank's time-mix products this rank may run: all but the first step. */
static int ahead_max(const gfr_part *p)
{
	return p->x->ahead ? p->x->e->cfg.chunk - p->x->split_step : 0;
}

/* One row of those, priced: as timed here, or until it has run some, in proportion to a
 * channel-mix row. */
static double ahead_price(const gfr_part *p)
{
	if (p->ahead_row_ns > 0)
		return p->ahead_row_ns;
	const gf_config *c = cfg_of(p);
	return p->row_ns * tm_work(c) / cm_work(c);
}

/* After a full ingest chunk: this rank's base, its time without the rows of either boundary,
 * each priced at its row time. Priced (not timed) on both sides, so that the model gives back
 * the measured time at the boundaries as they were: where they stay, the ranks' measured
 * times are what comes out even, however far the linear model is off (a split's fixed cost,
 * a row time learnt on another core). */
static void learn_base(gfr_part *p, int keep, int ahead)
{
	const int n = p->x->e->cfg.chunk;
	double shared = 0;
	if (p->x->split_step) {
		if (p->row_ns <= 0)
			p->row_ns = guess_row_ns(p, (double)p->last_ns, n);
		shared += keep * p->row_ns + ahead * ahead_price(p);
	}
	if (p->last_help_rows > 0 && p->last_help_ns > 0)
		ema(&p->in_row_ns, (double)p->last_help_ns / p->last_help_rows);
	shared += p->last_help_rows * p->in_row_ns + p->last_own_ahead * p->in_ahead_row_ns;
	const double base = (double)p->last_ns - shared;
	ema(&p->base_ns, base > 1 ? base : 1);
}

/* The whole of this rank's boundary with the next, priced (0: none that moves). */
static double boundary_ns(const gfr_part *p)
{
	return p->x->split_step ? p->x->e->cfg.chunk * p->row_ns + ahead_max(p) * ahead_price(p) : 0;
}

/* Of it, what this rank ran of the last chunk. */
static double kept_ns(const gfr_part *p)
{
	return p->x->split_step ? p->keep_rows * p->row_ns + p->ahead_rows * ahead_price(p) : 0;
}

/* A credit's report: the chain's work after this rank's boundary, the next rank's own, and
 * what one row of this rank's last channel mix takes there (timed where it finishes them,
 * so both ranks price the boundary alike). */
static void learn_next(gfr_part *p, const double report[3])
{
	if (p->x->split_step && report[2] > 0)
		p->row_ns = report[2];
	if (report[0] > 0 && report[1] > 0) {
		p->below_ns = report[0];
		p->next_ns = report[1];
	}
}

/* The chain's work up to this rank's boundary with the next: the ranks before it, the
 * boundaries between them whole, and this rank's base (0: not known yet). */
static double above_boundary(const gfr_part *p)
{
	if (p->base_ns <= 0 || (p->x->rank > 0 && p->in_above_ns <= 0))
		return 0;
	return p->in_above_ns + p->base_ns;
}

/* The position of this rank's boundary with the next for the full chunk at pos: sets
 * keep_rows and ahead_rows. Each rank of the pipeline's chain (ranks 0 to the emitter)
 * learns the work before its boundary (it comes down with the chunks) and after it (up with
 * the credits), so each boundary is set where the whole chain balances
 * (part_boundary_target), not only its two ranks: balancing pairs alone, a difference at one
 * end of 8 ranks takes hundreds of chunks to spread. */
static void choose_position(gfr_part *p, uint64_t pos, int n)
{
	const int step = p->x->split_step, u = ahead_max(p);
	int q;
	if (p->x->split_test) { /* every position, in an order that depends on pos only */
		q = (int)((pos / (uint64_t)n * 7 + 3) % (uint64_t)((n + u) / step + 1)) * step;
	} else {
		const double above = above_boundary(p);
		if (above <= 0 || p->below_ns <= 0 || p->row_ns <= 0)
			return; /* where it was, until both sides are known */
		const double mine = p->base_ns + p->last_help_rows * p->in_row_ns +
				    p->last_own_ahead * p->in_ahead_row_ns;
		const double work = part_boundary_target(above, p->below_ns, mine, p->next_ns,
							 boundary_ns(p), p->x->rank,
							 p->x->emitter + 1);
		const double at = part_boundary_position(work, n, p->row_ns, u, ahead_price(p));
		q = part_boundary_rows(at, &p->keep_residue, n + u, step);
	}
	p->keep_rows = q < n ? q : n;
	p->ahead_rows = q > n ? q - n : 0;
}

/* Takes one message off the stream: the immediate kinds are handled, work is held. Tail
 * queries that came before this rank's commit are answered once it has committed. */
static int pump(gfr_part *p, char *err)
{
	gfm_msg *m;
	int rc;
	if (p->tailq && p->committed >= p->tailq->h.pos + p->tailq->h.n) {
		m = p->tailq;
		p->tailq = NULL;
		rc = serve_tailq(p, m, err);
		gfm_msg_free(m);
		return rc;
	}
	rc = gfm_box_pop(p->box, -1, &m);
	if (rc)
		return gf_error(err, -EPIPE, "%s", gfm_link_failure(p->x->link));
	const gf_config *cf = cfg_of(p);
	switch (m->h.type) {
	case GFM_TAILQ:
		if (p->session || p->tailq) {
			rc = gf_error(err, -EPROTO, "rank %d: unexpected GOLD tail queries", p->x->rank);
			break;
		}
		if (p->committed < m->h.pos + m->h.n) {
			p->tailq = m;
			return 0;
		}
		rc = serve_tailq(p, m, err);
		break;
	case GFM_TAILP:
		rc = take_tailp(p, m);
		break;
	case GFM_ROWS: {
		const int n = (int)m->h.n;
		if (m->len != (size_t)n * (sizeof(int32_t) + sizeof(float) * cf->ckv_dim) ||
		    n > p->x->e->cfg.chunk)
			rc = gf_error(err, -EPROTO, "rank %d: malformed rows", p->x->rank);
		else
			rc = append_rows(p, m->h.pos, m->payload,
					 (const float *)((const int32_t *)m->payload + n), n, err);
		break;
	}
	case GFM_CREDIT:
		p->credits += (int)m->h.n;
		if (m->len == 3 * sizeof(double)) {
			double report[3];
			memcpy(report, m->payload, sizeof(report));
			learn_next(p, report);
		}
		break;
	case GFM_ACK: {
		gfr_wait *w = &p->wait;
		w->acks++;
		if (m->h.aux == GFM_SEAL && m->source < PART_MAX_RANKS)
			w->rank_ms[m->source] = m->h.n;
		if (m->h.pos > w->ack_pos)
			w->ack_pos = m->h.pos;
		if (m->h.status < 0 && !w->ack_status) {
			w->ack_status = m->h.status;
			w->ack_rank = m->source;
			snprintf(w->ack_err, sizeof(w->ack_err), "%.*s", (int)m->len,
				 m->len ? (const char *)m->payload : "failed");
		}
		break;
	}
	case GFM_LOGITS:
		if (m->len != sizeof(float) * (size_t)cf->vocab_size) {
			rc = gf_error(err, -EPROTO, "malformed logits from rank %d", m->source);
			break;
		}
		memcpy(p->wait.logits, m->payload, m->len);
		p->wait.have_logits = true;
		break;
	case GFM_ERROR:
		rc = gf_error(err, m->h.status < 0 ? m->h.status : -EIO, "rank %d: %.*s", m->source,
			      (int)m->len, (const char *)m->payload);
		break;
	case GFM_CLOSE:
	case GFM_DROP:
		p->closing = true;
		p->drop = m->h.type == GFM_DROP;
		rc = gf_error(err, -ECANCELED, "stream closed");
		break;
	default:
		hold(p, m);
		return 0;
	}
	gfm_msg_free(m);
	return rc;
}

int gfr_part_wait_rows(gfr_part *p, uint64_t pos, char *err)
{
	while (p->rows < pos) {
		int rc = pump(p, err);
		if (rc)
			return rc;
	}
	return 0;
}

static int ack_error(gfr_part *p, char *err)
{
	gfr_wait *w = &p->wait;
	return gf_error(err, w->ack_status, "rank %d: %s", w->ack_rank, w->ack_err);
}

int gfr_part_wait_acks(gfr_part *p, int count, char *err)
{
	while (p->wait.acks < count) {
		int rc = pump(p, err);
		if (rc)
			return rc;
	}
	return p->wait.ack_status ? ack_error(p, err) : 0;
}

void gfr_part_drain_acks(gfr_part *p, int count)
{
	char err[GF_ERR_LEN];
	while (p->wait.acks < count && pump(p, err) != -EPIPE)
		;
}

int gfr_part_wait_logits(gfr_part *p, char *err)
{
	while (!p->wait.have_logits) {
		int rc = pump(p, err);
		if (rc)
			return rc;
	}
	p->wait.have_logits = false;
	return 0;
}

/* A chunk to the next rank, once it has room for one. */
static int send_chunk(gfr_part *p, uint64_t pos, const int32_t *tok, const float *x, int n,
		      int mode, int rows, int ahead, char *err)
{
	const uint64_t t0 = p->credits <= 0 ? mono_ns() : 0;
	while (p->credits <= 0) {
		int rc = pump(p, err);
		if (rc)
			return rc;
	}
	if (t0)
		p->credit_ns += mono_ns() - t0;
	const bool split = rows < n;
	gfm_hdr h = { .type = GFM_CHUNK, .stream = p->stream, .n = (uint32_t)n, .pos = pos,
		      .aux = (uint64_t)mode | (split ? (uint64_t)(rows + 1) << 32 : 0) |
			     (uint64_t)ahead << 48 };
	p->credits--;
	const gf_config *cf = cfg_of(p);
	const size_t C = (size_t)cf->n_embd;
	/* After the rows: the chain's work before the next rank's own, a row of its time-mix
	 * products here, then a split's carry or those products' rows run here. */
	const double above = above_boundary(p);
	p->edge->above_ns = above > 0 ? above + boundary_ns(p) : 0;
	p->edge->ahead_row_ns = p->x->ahead && mode != GFM_MODE_STEP ? ahead_price(p) : 0;
	const size_t extra = split ? C : ahead ? gf_ahead_floats(cf, ahead) : 0;
	int rc = gfm_send3(p->x->link, p->x->rank + 1, &h, tok, sizeof(int32_t) * (size_t)n, x,
			   sizeof(float) * (size_t)n * C, p->edge,
			   sizeof(*p->edge) + sizeof(float) * extra);
	return rc ? gf_error(err, rc, "%s", gfm_link_failure(p->x->link)) : 0;
}

static int send_logits(gfr_part *p, const float *x_last, char *err)
{
	const gf_model *m = p->x->e->model;
	gf_head(m, p->ws, x_last, 1, p->wait.logits);
	gfm_hdr h = { .type = GFM_LOGITS, .stream = p->stream };
	int rc = gfm_send(p->x->link, 0, &h, p->wait.logits,
			  sizeof(float) * (size_t)m->cfg.vocab_size);
	return rc ? gf_error(err, rc, "%s", gfm_link_failure(p->x->link)) : 0;
}

int gfr_part_chunk(gfr_part *p, uint64_t pos, const int32_t *tok, float *x, int n, int mode,
		   char *err)
{
	gfr_ctx *cx = p->x;
	const gf_model *m = cx->e->model;
	const gf_config *cf = &m->cfg;
	int rc;
	if (n < 1 || n > cx->e->cfg.chunk)
		return gf_error(err, -EPROTO, "rank %d: chunk of %d rows", cx->rank, n);
	uint64_t t0 = mono_ns();
	if (cx->b0 == 0 && gf_embed(m, tok, n, x))
		return gf_error(err, -EINVAL, "token outside the vocabulary (0..%d) near position %" PRIu64,
				cf->vocab_size - 1, pos);
	const uint64_t tf = mono_ns();
	p->last_help_rows = 0;
	p->last_help_ns = 0;
	/* The rows of its first time mix's products the rank before could have run and did not:
	 * the boundary's share here (ahead_max there). */
	p->last_own_ahead = p->in_ahead_row_ns > 0 && n == cx->e->cfg.chunk && mode != GFM_MODE_STEP
				    ? n - gf_split_step(cf) - p->in_ahead
				    : 0;
	if (p->in_rows >= 0 && p->in_rows < n) {
		/* The rows of the previous rank's last channel mix it left to this rank. */
		if ((rc = gf_channel_mix_rest(m, p->ws, cx->b0 - 1, x, n, p->in_rows, p->in_carry)))
			return gf_error(err, rc == -EINVAL ? -EPROTO : rc,
					"rank %d: cannot finish rows %d..%d of block %d's channel mix (not loaded here, or not a split of a %d-row chunk)",
					cx->rank, p->in_rows, n - 1, cx->b0 - 1, n);
		p->last_help_rows = n - p->in_rows;
		p->last_help_ns = mono_ns() - tf;
	}
	const int fb1 = cx->b1 < cx->G ? cx->b1 : cx->G;
	/* Full chunks only: a boundary is set for, and learns from, those. */
	const bool splits = cx->split_step && mode != GFM_MODE_STEP && n == cx->e->cfg.chunk;
	if (splits)
		choose_position(p, pos, n);
	const int rows = splits ? p->keep_rows : n, ahead = splits ? p->ahead_rows : 0;
	if (cx->has_finch) {
		const gf_split s = { .keep = rows, .carry = p->edge->rows, .ahead_from = n - p->in_ahead,
				     .ahead = p->in_ahead ? p->in_ahead_rows : NULL };
		rc = rows < n || s.ahead
			     ? gf_blocks_split(m, p->ws, &p->st, x, (int64_t)pos, n, cx->b0, fb1, &s)
			     : gf_blocks(m, p->ws, &p->st, NULL, x, (int64_t)pos, n, cx->b0, fb1);
		if (rc)
			return gf_error(err, rc,
					"rank %d: Finch blocks failed (%d rows of its last channel mix kept, %d rows of its first time mix given)",
					cx->rank, rows, p->in_ahead);
		if (ahead) {
			const uint64_t ta = mono_ns();
			if ((rc = gf_time_mix_ahead(m, p->ws, cx->b1, x, n, n - ahead, p->edge->rows)))
				return gf_error(err, rc, "rank %d: rows %d.. of block %d's time mix failed",
						cx->rank, n - ahead, cx->b1);
			ema(&p->ahead_row_ns, (double)(mono_ns() - ta) / ahead);
		}
	}
	p->finch_ns += mono_ns() - tf;
	p->chunks++;
	if (splits) {
		p->split_chunks++;
		p->split_kept += (uint64_t)rows;
		p->split_ahead += (uint64_t)ahead;
	}
	if (cx->rank == cx->emitter) {
		gf_cache_rows(m, p->ws, x, n, p->c);
		gfm_hdr h = { .type = GFM_ROWS, .stream = p->stream, .n = (uint32_t)n, .pos = pos };
		for (int r = 0; r < cx->size; r++) {
			if (r == cx->rank || (p->session && !part_has_gold(&cx->plan, r)))
				continue;
			if ((rc = gfm_send2(cx->link, r, &h, tok, sizeof(int32_t) * (size_t)n, p->c,
					    sizeof(float) * (size_t)n * cf->ckv_dim)))
				return gf_error(err, rc, "%s", gfm_link_failure(cx->link));
		}
		if ((!p->session || cx->has_gold) && (rc = append_rows(p, pos, tok, p->c, n, err)))
			return rc;
		gf_state_push_tail(cf, &p->st, x, n);
	}
	if (mode == GFM_MODE_STEP && cx->has_gold) {
		p->compute_ns += mono_ns() - t0;
		if ((rc = gfr_part_wait_rows(p, pos + (uint64_t)n, err)))
			return rc;
		t0 = mono_ns();
		p->ps.err[0] = 0;
		rc = gf_blocks(m, p->ws, &p->st, &p->ps.src, x, (int64_t)pos, n,
			       cx->b0 > cx->G ? cx->b0 : cx->G, cx->b1);
		if (rc)
			return gf_error(err, rc, "rank %d: attention over the cache: %.200s", cx->rank,
					p->ps.err[0] ? p->ps.err : "failed");
	}
	p->st.n_pos = (int64_t)(pos + (uint64_t)n);
	p->last_ns = mode == GFM_MODE_STEP ? 0 : mono_ns() - t0;
	p->compute_ns += mono_ns() - t0;
	if (mode != GFM_MODE_STEP && n == cx->e->cfg.chunk && cx->has_finch && cx->rank <= cx->emitter)
		learn_base(p, rows, ahead);
	if (mode == GFM_MODE_STEP) {
		if (cx->rank == cx->size - 1)
			return send_logits(p, x + (size_t)(n - 1) * cf->n_embd, err);
		return send_chunk(p, pos, tok, x, n, mode, n, 0, err);
	}
	if (cx->rank < cx->emitter)
		return send_chunk(p, pos, tok, x, n, mode, rows, ahead, err);
	return 0;
}

int gfr_part_commit(gfr_part *p, uint64_t input_bytes, bool seal, char *err)
{
	const gf_config *cf = cfg_of(p);
	help_close(p); /* a replica read for others' tail queries: reopened on the next */
	p->st.n_pos = (int64_t)p->rows;
	gfe_snapshot_write(p->x->e->model, &p->st, input_bytes, p->x->e->slice, p->snap);
	int rc = cs_writer_commit(p->w, p->snap, gfe_snapshot_size(cf, p->st.n_tail),
				  seal ? CS_COMMIT_SEAL : 0, err);
	if (!rc)
		p->committed = p->rows;
	return rc;
}

/* The GOLD tail on this rank: its GOLD blocks over the window x [n][C] of positions pos0..,
 * from zero shift state (DESIGN.md fact 3), then on to the next rank or the logits. */
static int tail_step(gfr_part *p, uint64_t pos0, float *x, int n, char *err)
{
	gfr_ctx *cx = p->x;
	gfe_engine *e = cx->e;
	const gf_model *m = e->model;
	const gf_config *cf = &m->cfg;
	const uint64_t t0 = mono_ns();
	int rc = 0;
	if (cx->has_gold) {
		const int g0 = cx->b0 > cx->G ? cx->b0 : cx->G;
		for (int b = g0; b < cx->b1; b++)
			memset(p->st.shift + (size_t)b * 2 * cf->n_embd, 0,
			       sizeof(float) * 2 * (size_t)cf->n_embd);
		if (p->session) {
			if ((rc = gfr_part_wait_rows(p, pos0 + (uint64_t)n, err)))
				return rc;
			p->ps.err[0] = 0;
			rc = gf_blocks(m, p->ws, &p->st, &p->ps.src, x, (int64_t)pos0, n, g0, cx->b1);
			if (rc)
				return gf_error(err, rc, "rank %d: attention over the cache: %.200s",
						cx->rank, p->ps.err[0] ? p->ps.err : "failed");
		} else {
			/* The ingest's tail reads this rank's committed pages once, streaming. */
			cs_reader *r = NULL;
			struct paged_src ps;
			if ((rc = cs_reader_open(e->store, p->serial, &r, err)))
				return rc;
			cs_reader_set_streaming(r, true);
			rc = gfe_paged_init(&ps, e, r, p->serial, p->rows, false);
			if (!rc) {
				ps.src.n_pos = (int64_t)p->rows;
				int s0 = 0, s1 = gf_attn_n_spans((int64_t)p->rows);
				if (cx->share_tail && cx->size > 1) {
					ps.src.attend = shared_attend;
					ps.src.user = p;
					span_share((int64_t)p->rows, cx->rank, cx->size, &s0, &s1);
				}
				rc = keep_key_stream(&ps, (int64_t)p->rows, s0, s1);
				if (!rc)
					rc = gf_blocks(m, p->ws, &p->st, &ps.src, x, (int64_t)pos0, n, g0, cx->b1);
				if (rc)
					gf_error(err, rc, "rank %d: GOLD tail: %.200s", cx->rank,
						 ps.err[0] ? ps.err : "failed");
			} else {
				gf_error(err, rc, "out of memory for the GOLD tail");
			}
			gfe_paged_free(&ps);
			cs_reader_close(r);
			if (rc)
				return rc;
		}
	}
	p->compute_ns += mono_ns() - t0;
	p->tail_ns += mono_ns() - t0;
	if (cx->rank == cx->size - 1)
		return send_logits(p, x + (size_t)(n - 1) * cf->n_embd, err);
	gfm_hdr h = { .type = GFM_TAILX, .stream = p->stream, .n = (uint32_t)n, .pos = pos0 };
	rc = gfm_send(cx->link, cx->rank + 1, &h, x, sizeof(float) * (size_t)n * cf->n_embd);
	return rc ? gf_error(err, rc, "%s", gfm_link_failure(cx->link)) : 0;
}

int gfr_part_tail_start(gfr_part *p, char *err)
{
	const gf_config *cf = cfg_of(p);
	const int n = p->st.n_tail;
	if (n < 1)
		return gf_error(err, -EPROTO, "rank %d: no window for the GOLD tail", p->x->rank);
	memcpy(p->tail_x, p->st.tail, sizeof(float) * (size_t)n * cf->n_embd);
	return tail_step(p, (uint64_t)p->st.n_pos - (uint64_t)n, p->tail_x, n, err);
}

int gfr_part_mark(gfr_part *p, int kind, uint64_t pos, char *err)
{
	gfr_ctx *cx = p->x;
	int rc;
	gfm_hdr h = { .type = GFM_MARK, .stream = p->stream, .pos = pos, .aux = (uint64_t)kind };
	/* Down the chain to the emitter; the emitter passes commits on to the ranks after it
	 * (after its rows, so they have them all). */
	rc = 0;
	if (cx->rank < cx->emitter)
		rc = gfm_send(cx->link, cx->rank + 1, &h, NULL, 0);
	else if (cx->rank == cx->emitter && kind != GFM_MARK_QTAIL)
		for (int r = cx->rank + 1; r < cx->size && !rc; r++)
			rc = gfm_send(cx->link, r, &h, NULL, 0);
	if (rc)
		return gf_error(err, rc, "%s", gfm_link_failure(cx->link));
	if (cx->rank == 0) {
		/* Rank 0 commits in its own order (server_backend_mpi.c); it may start the tail. */
		if (kind == GFM_MARK_QTAIL && cx->emitter == 0)
			return gfr_part_tail_start(p, err);
		return 0;
	}
	if (kind == GFM_MARK_QTAIL)
		return cx->rank == cx->emitter ? gfr_part_tail_start(p, err) : 0;
	if ((rc = gfr_part_wait_rows(p, pos, err)))
		return rc;
	if (p->rows != pos)
		return gf_error(err, -EPROTO, "rank %d: commit at %" PRIu64 " but %" PRIu64 " rows",
				cx->rank, pos, p->rows);
	rc = gfr_part_commit(p, 0, false, err);
	gfr_ack(cx, p->stream, GFM_MARK, pos, rc, err);
	if (rc)
		return rc;
	if (kind == GFM_MARK_FINISH && cx->rank == cx->emitter)
		return gfr_part_tail_start(p, err);
	return 0;
}

/* ---- ranks >= 1: one thread per stream ------------------------------------------------- */

static void report(gfr_part *p, uint32_t stream, int rc, const char *err)
{
	gfm_hdr h = { .type = GFM_ERROR, .stream = stream, .status = rc };
	gfm_send(p->x->link, 0, &h, err, strlen(err) + 1);
}

/* One work message. */
static int handle(gfr_part *p, gfm_msg *m, char *err)
{
	gfr_ctx *cx = p->x;
	const gf_config *cf = cfg_of(p);
	const int n = (int)m->h.n;
	int rc;
	switch (m->h.type) {
	case GFM_CHUNK: {
		const uint32_t split = (uint32_t)(m->h.aux >> 32 & 0xffff);
		const uint32_t ahead = (uint32_t)(m->h.aux >> 48);
		const size_t xbytes = sizeof(float) * (size_t)n * cf->n_embd;
		if (n < 1 || n > cx->e->cfg.chunk || split > (uint32_t)n || ahead >= (uint32_t)n ||
		    (split && ahead) ||
		    m->len != (size_t)n * sizeof(int32_t) + xbytes + sizeof(gfr_edge) +
				      sizeof(float) * (split	? (size_t)cf->n_embd
							: ahead ? gf_ahead_floats(cf, (int)ahead)
								: 0))
			return gf_error(err, -EPROTO, "rank %d: malformed chunk", cx->rank);
		float *x = (float *)((int32_t *)m->payload + n);
		gfr_edge edge;
		memcpy(&edge, (char *)x + xbytes, sizeof(edge));
		const float *after = (const float *)((char *)x + xbytes + sizeof(edge));
		p->in_above_ns = edge.above_ns;
		p->in_ahead_row_ns = edge.ahead_row_ns > 0 ? edge.ahead_row_ns : 0;
		p->in_rows = split ? (int)split - 1 : -1;
		p->in_carry = split ? after : NULL;
		p->in_ahead = (int)ahead;
		p->in_ahead_rows = ahead ? after : NULL;
		rc = gfr_part_chunk(p, m->h.pos, m->payload, x, n, (int)(m->h.aux & 0xffffffffu), err);
		p->in_rows = -1;
		p->in_ahead = 0;
		p->in_ahead_rows = NULL;
		/* Consumed: the sender may send another. With it, what the sender's boundary needs
		 * (learn_next): the chain's work from here down, this rank's own, a row's time. */
		double report[3] = { p->base_ns, p->base_ns, p->in_row_ns };
		if (cx->rank < cx->emitter) {
			report[0] = p->below_ns > 0 ? report[0] + boundary_ns(p) + p->below_ns : 0;
			report[1] += kept_ns(p);
		}
		gfm_hdr h = { .type = GFM_CREDIT, .stream = p->stream, .n = 1 };
		gfm_send(cx->link, m->source, &h, report, sizeof(report));
		return rc;
	}
	case GFM_MARK:
		rc = gfr_part_mark(p, (int)m->h.aux, m->h.pos, err);
		if (!rc && p->tailx && p->committed >= p->tailx->h.pos + p->tailx->h.n) {
			gfm_msg *t = p->tailx;
			p->tailx = NULL;
			rc = tail_step(p, t->h.pos, t->payload, (int)t->h.n, err);
			gfm_msg_free(t);
		}
		return rc;
	case GFM_TAILX:
		if (n < 1 || n > cx->e->cfg.chunk || m->len != sizeof(float) * (size_t)n * cf->n_embd)
			return gf_error(err, -EPROTO, "rank %d: malformed tail window", cx->rank);
		if (!p->session && p->committed < m->h.pos + (uint64_t)n) {
			/* The ingest's tail reads committed pages: wait for this rank's commit. */
			p->tailx = m;
			return 1;
		}
		return tail_step(p, m->h.pos, m->payload, n, err);
	case GFM_SEAL: {
		rc = gfr_part_commit(p, 0, true, err);
		/* The acknowledgement carries this rank's compute time, in ms (benchmarks). */
		gfm_hdr h = { .type = GFM_ACK, .stream = p->stream, .status = rc, .pos = p->rows,
			      .aux = GFM_SEAL, .n = (uint32_t)(p->compute_ns / 1000000) };
		gfm_send(cx->link, 0, &h, rc ? err : NULL, rc ? strlen(err) + 1 : 0);
		return rc;
	}
	default:
		return gf_error(err, -EPROTO, "rank %d: unexpected message %u", cx->rank, m->h.type);
	}
}

void gfr_serve_stream(gfr_ctx *x, gfm_box *box, uint32_t stream)
{
	char err[GF_ERR_LEN] = "";
	char name[CS_NAME_MAX];
	cs_ctx_info info;
	gfr_part *p = NULL;
	gfm_msg *m;
	if (gfm_box_pop(box, -1, &m))
		goto out_box;
	/* The opening message: find this rank's copy of rank 0's context. */
	const uint32_t kind = m->h.type;
	int rc;
	if (kind == GFM_BEGIN) {
		gfr_part_name(name, sizeof(name), m->h.aux, m->payload, m->len);
		rc = gfr_part_begin(x, stream, box, name, &p, err);
	} else if ((rc = gfr_part_lookup(x->e->store, m->h.aux, &info))) {
		rc = gf_error(err, rc == -ENOENT ? -ENOENT : rc,
			      "rank %d has no copy of context #%" PRIu64 " (its cache directory lost it?)",
			      x->rank, m->h.aux);
	} else if (kind == GFM_RESUME) {
		rc = gfr_part_resume(x, stream, box, info.serial, &p, err);
		if (!rc && gfr_part_committed(p) != m->h.pos) {
			rc = gf_error(err, -ESTALE, "rank %d committed context #%" PRIu64 " at token %" PRIu64 ", rank 0 at %" PRIu64 ": the ingest cannot resume (start it again)",
				      x->rank, m->h.aux, gfr_part_committed(p), m->h.pos);
		}
	} else {
		rc = gfr_part_session(x, stream, box, info.serial, &p, err);
	}
	gfr_ack(x, stream, kind, p ? gfr_part_committed(p) : 0, rc, err);
	gfm_msg_free(m);
	if (rc) {
		gfr_part_free(p);
		p = NULL;
		/* Wait for rank 0 to end the stream, so that its messages are not taken for a
		 * new stream's. */
		while (!gfm_box_pop(box, -1, &m)) {
			const bool end = m->h.type == GFM_CLOSE || m->h.type == GFM_DROP;
			gfm_msg_free(m);
			if (end)
				break;
		}
		if (kind != GFM_OPEN)
			gfr_ack(x, stream, GFM_CLOSE, 0, 0, NULL);
		goto out_box;
	}
	bool failed = false;
	while (!p->closing) {
		if (p->held) {
			m = p->held;
			p->held = m->next;
			if (!p->held)
				p->held_tail = NULL;
		} else {
			/* Immediate kinds are handled by pump; it holds work. */
			err[0] = 0;
			const uint64_t t0 = mono_ns();
			rc = pump(p, err);
			p->idle_ns += mono_ns() - t0;
			if (rc == -EPIPE)
				break;
			if (rc && rc != -ECANCELED && !failed) {
				failed = true;
				report(p, stream, rc, err);
			}
			continue;
		}
		if (failed) {
			/* Keep the pipeline moving for rank 0 to end the stream: credits only. */
			if (m->h.type == GFM_CHUNK) {
				gfm_hdr h = { .type = GFM_CREDIT, .stream = stream, .n = 1 };
				gfm_send(x->link, m->source, &h, NULL, 0);
			}
			gfm_msg_free(m);
			continue;
		}
		err[0] = 0;
		rc = handle(p, m, err);
		if (rc == 1)
			continue; /* kept (a tail window waiting for the commit) */
		gfm_msg_free(m);
		if (rc == -EPIPE)
			break;
		if (rc && rc != -ECANCELED) {
			failed = true;
			report(p, stream, rc, err);
		}
	}
	const bool ingest = !p->session;
	if (p->drop) {
		uint64_t serial = gfr_part_serial(p);
		cs_writer_free(p->w);
		p->w = NULL;
		gfr_part_free(p);
		cs_store_remove(x->e->store, serial, NULL);
	} else {
		gfr_part_free(p);
	}
	/* An ingest's writer is released now: rank 0 may resume the context at once. */
	if (ingest)
		gfr_ack(x, stream, GFM_CLOSE, 0, 0, NULL);
out_box:
	gfm_box_close(x->link, box);
}
