/*
 * server_jobs.c — what runs off the network thread: the worker threads that run ingest and
 * generate jobs through the backend, and the control thread that answers Status,
 * ListContexts and DropContext. Both hand their responses to the loop as framed events.
 */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define INGEST_SLICE 2048           /* bytes fed per engine call: the cancel granularity */
#define PROGRESS_NS 1000000000ll    /* IngestProgress about once a second */
#define LOG_PROGRESS_NS 10000000000ll /* a progress line in the log every 10 s */

/* ---- events ------------------------------------------------------------------------------ */

struct gfd_event *gfd_frame_event(uint64_t conn_id, const proto_response *r)
{
	size_t n = protobuf_c_message_get_packed_size(&r->base);
	if (n > UINT32_MAX)
		return NULL;
	struct gfd_event *ev = malloc(sizeof(*ev) + PROTO_HEADER_BYTES + n);
	if (!ev)
		return NULL;
	memset(ev, 0, sizeof(*ev));
	ev->kind = GFD_EV_FRAME;
	ev->conn_id = conn_id;
	ev->len = PROTO_HEADER_BYTES + n;
	ev->data[0] = (uint8_t)n;
	ev->data[1] = (uint8_t)(n >> 8);
	ev->data[2] = (uint8_t)(n >> 16);
	ev->data[3] = (uint8_t)(n >> 24);
	protobuf_c_message_pack(&r->base, ev->data + PROTO_HEADER_BYTES);
	return ev;
}

void gfd_post(gfd_server *s, struct gfd_event *ev)
{
	uint64_t one = 1;
	ev->next = NULL;
	pthread_mutex_lock(&s->evmu);
	if (s->ev_tail)
		s->ev_tail->next = ev;
	else
		s->ev_head = ev;
	s->ev_tail = ev;
	pthread_mutex_unlock(&s->evmu);
	/* The counter only wakes the loop; a full counter (impossible in practice) still does. */
	if (write(s->evfd, &one, sizeof(one)) < 0) {
	}
}

int gfd_post_response(gfd_server *s, uint64_t conn_id, const proto_response *r)
{
	struct gfd_event *ev = gfd_frame_event(conn_id, r);
	if (!ev)
		return -ENOMEM;
	gfd_post(s, ev);
	return 0;
}

static struct gfd_event *error_event_v(uint64_t conn_id, uint64_t req_id,
				       Goldfinch__V1__ErrorCode code, const char *fmt, va_list ap)
{
	char msg[GF_ERR_LEN + 128];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	Goldfinch__V1__Error e = GOLDFINCH__V1__ERROR__INIT;
	e.code = code;
	e.message = msg;
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	r.id = req_id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_ERROR;
	r.error = &e;
	return gfd_frame_event(conn_id, &r);
}

/* An Error as an event not yet posted. */
static struct gfd_event *error_event(uint64_t conn_id, uint64_t req_id,
				     Goldfinch__V1__ErrorCode code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static struct gfd_event *error_event(uint64_t conn_id, uint64_t req_id,
				     Goldfinch__V1__ErrorCode code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	struct gfd_event *ev = error_event_v(conn_id, req_id, code, fmt, ap);
	va_end(ap);
	return ev;
}

int gfd_post_error(gfd_server *s, uint64_t conn_id, uint64_t req_id,
		   Goldfinch__V1__ErrorCode code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	struct gfd_event *ev = error_event_v(conn_id, req_id, code, fmt, ap);
	va_end(ap);
	if (!ev)
		return -ENOMEM;
	gfd_post(s, ev);
	return 0;
}

int gfd_adopt(gfd_server *s, int fd, const char *peer)
{
	struct gfd_event *ev = calloc(1, sizeof(*ev) + sizeof(struct gfd_adopt));
	if (!ev) {
		close(fd);
		return -ENOMEM;
	}
	struct gfd_adopt *a = (struct gfd_adopt *)(void *)ev->data;
	ev->kind = GFD_EV_ADOPT;
	a->fd = fd;
	snprintf(a->peer, sizeof(a->peer), "%s", peer);
	gfd_post(s, ev);
	return 0;
}

/* A job's last response goes out after the job has let go of its context, so that a
 * client may drop the context as soon as it has the answer. */
static void post_final(gfd_server *s, struct gfd_event *ev)
{
	if (ev)
		gfd_post(s, ev);
}

Goldfinch__V1__ErrorCode gfd_errno_code(int rc)
{
	switch (rc) {
	case -ENOENT:
		return GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND;
	case -EBUSY:
		return GOLDFINCH__V1__ERROR_CODE__ERROR_BUSY;
	case -ENOSPC:
	case -EDQUOT:
		return GOLDFINCH__V1__ERROR_CODE__ERROR_NO_SPACE;
	case -EINVAL:
	case -EEXIST:
		return GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST;
	case -EMSGSIZE:
	case -E2BIG:
		return GOLDFINCH__V1__ERROR_CODE__ERROR_TOO_LARGE;
	case -ECANCELED:
		return GOLDFINCH__V1__ERROR_CODE__ERROR_CANCELLED;
	default:
		return GOLDFINCH__V1__ERROR_CODE__ERROR_INTERNAL;
	}
}

/* ---- contexts ----------------------------------------------------------------------------- */

static bool all_hex(const char *s)
{
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
			return false;
	return true;
}

/* Control characters of a client's string, quoted in a message, become '?': the message
 * stays one line, and a terminal that shows the log is not steered by escape codes. */
static void printable(char *msg)
{
	for (unsigned char *p = (unsigned char *)msg; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			*p = '?';
}

static int resolve_context(gfd_server *s, const char *ref, cs_ctx_info *out, char *err);

int gfd_resolve_context(gfd_server *s, const char *ref, cs_ctx_info *out, char *err)
{
	int rc = resolve_context(s, ref, out, err);
	if (rc)
		printable(err);
	return rc;
}

static int resolve_context(gfd_server *s, const char *ref, cs_ctx_info *out, char *err)
{
	const gfd_backend_ops *ops = s->be.ops;
	size_t len = strlen(ref);
	int rc;
	if (!len) {
		snprintf(err, GF_ERR_LEN, "empty context reference: give a name, #serial or key prefix");
		return -EINVAL;
	}
	if (len < CS_NAME_MAX && ops->lookup_name(s->be.self, ref, out) == 0)
		return 0;
	if (ref[0] == '#') {
		uint64_t serial;
		if (gfd_parse_uint(ref + 1, UINT64_MAX, &serial)) {
			snprintf(err, GF_ERR_LEN, "context \"%.140s\": '#' must be followed by a serial number",
				 ref);
			return -EINVAL;
		}
		if (ops->ctx_info(s->be.self, serial, out, NULL) == 0)
			return 0;
		snprintf(err, GF_ERR_LEN, "context #%" PRIu64 ": not found", serial);
		return -ENOENT;
	}
	if (len >= 8 && len <= 32 && all_hex(ref)) {
		cs_ctx_info *list = NULL;
		size_t n = 0, hits = 0;
		char hex[33], lower[33];
		for (size_t i = 0; i <= len; i++)
			lower[i] = (char)(ref[i] >= 'A' && ref[i] <= 'F' ? ref[i] - 'A' + 'a' : ref[i]);
		if ((rc = ops->list(s->be.self, &list, &n, err)))
			return rc;
		for (size_t i = 0; i < n; i++) {
			cs_key_hex(list[i].key, hex);
			if (!memcmp(hex, lower, len)) {
				if (!hits)
					*out = list[i];
				hits++;
			}
		}
		free(list);
		if (hits == 1)
			return 0;
		if (hits > 1) {
			snprintf(err, GF_ERR_LEN, "context \"%s\": the key prefix matches %zu contexts; give more digits",
				 ref, hits);
			return -EINVAL;
		}
	}
	snprintf(err, GF_ERR_LEN, "context \"%.140s\": not found", ref);
	return -ENOENT;
}

void gfd_ctx_to_proto(const cs_ctx_info *c, Goldfinch__V1__ContextInfo *out, char keyhex[33])
{
	goldfinch__v1__context_info__init(out);
	cs_key_hex(c->key, keyhex);
	out->has_serial = true;
	out->serial = c->serial;
	out->key = keyhex;
	out->name = c->name[0] ? (char *)c->name : NULL;
	out->has_tokens = true;
	out->tokens = c->n_tokens;
	out->has_disk_bytes = true;
	out->disk_bytes = c->disk_bytes;
	out->has_sealed = true;
	out->sealed = c->sealed;
	out->has_last_use_unix_ms = true;
	out->last_use_unix_ms = gfd_unix_ms(c->last_use_ns);
	out->has_raw_bytes = true;
	out->raw_bytes = c->raw_bytes;
}

/* ---- the pending queue --------------------------------------------------------------------- */

void gfd_queue_push(gfd_server *s, gfd_job *j)
{
	pthread_mutex_lock(&s->qmu);
	j->qnext = NULL;
	j->queued = true;
	if (s->q_tail)
		s->q_tail->qnext = j;
	else
		s->q_head = j;
	s->q_tail = j;
	s->q_len++;
	pthread_cond_signal(&s->qcv);
	pthread_mutex_unlock(&s->qmu);
	pthread_mutex_lock(&s->stats.mu);
	s->stats.jobs_queued++;
	s->stats.jobs_accepted++;
	pthread_mutex_unlock(&s->stats.mu);
}

bool gfd_queue_remove(gfd_server *s, gfd_job *j)
{
	bool removed = false;
	pthread_mutex_lock(&s->qmu);
	if (j->queued) {
		gfd_job **pp = &s->q_head, *prev = NULL;
		while (*pp && *pp != j) {
			prev = *pp;
			pp = &(*pp)->qnext;
		}
		if (*pp) {
			*pp = j->qnext;
			if (s->q_tail == j)
				s->q_tail = prev;
			s->q_len--;
			j->queued = false;
			removed = true;
		}
	}
	pthread_mutex_unlock(&s->qmu);
	if (removed) {
		pthread_mutex_lock(&s->stats.mu);
		s->stats.jobs_queued--;
		pthread_mutex_unlock(&s->stats.mu);
	}
	return removed;
}

static gfd_job *queue_pop(gfd_server *s)
{
	pthread_mutex_lock(&s->qmu);
	while (!s->q_head && !s->workers_stop)
		pthread_cond_wait(&s->qcv, &s->qmu);
	gfd_job *j = s->q_head;
	if (j) {
		s->q_head = j->qnext;
		if (!s->q_head)
			s->q_tail = NULL;
		s->q_len--;
		j->queued = false;
	}
	pthread_mutex_unlock(&s->qmu);
	if (j) {
		pthread_mutex_lock(&s->stats.mu);
		s->stats.jobs_queued--;
		s->stats.jobs_running++;
		pthread_mutex_unlock(&s->stats.mu);
	}
	return j;
}

void gfd_job_wake(gfd_job *j)
{
	pthread_mutex_lock(&j->mu);
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
}

void gfd_job_free(gfd_job *j)
{
	if (!j)
		return;
	for (struct gfd_piece *p = j->in_head, *next; p; p = next) {
		next = p->next;
		free(p);
	}
	free(j->name);
	free(j->context);
	free(j->prompt);
	for (size_t i = 0; i < j->n_stop; i++)
		free(j->stop[i]);
	free(j->stop);
	pthread_cond_destroy(&j->cv);
	pthread_mutex_destroy(&j->mu);
	free(j);
}

static void count_outcome(gfd_server *s, gfd_job_outcome o)
{
	pthread_mutex_lock(&s->stats.mu);
	if (o == GFD_OUT_DONE)
		s->stats.jobs_done++;
	else if (o == GFD_OUT_FAILED)
		s->stats.jobs_failed++;
	else
		s->stats.jobs_cancelled++;
	pthread_mutex_unlock(&s->stats.mu);
}

/* s as one word of a shell command line: as is when it is plain, else in single quotes. */
static void shell_word(char *out, size_t cap, const char *s)
{
	size_t n = 0;
	if (!s[strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+/:@,=")]) {
		snprintf(out, cap, "%s", s);
		return;
	}
	for (const char *p = s; *p && n + 6 < cap; p++) {
		if (p == s)
			out[n++] = '\'';
		if (*p == '\'') {
			memcpy(out + n, "'\\''", 4);
			n += 4;
		} else {
			out[n++] = *p;
		}
	}
	out[n++] = '\'';
	out[n] = 0;
}

static const char *cancel_word(int why)
{
	switch (why) {
	case GFD_CANCEL_CLIENT:
		return "cancelled by the client";
	case GFD_CANCEL_DISCONNECT:
		return "cancelled: the client disconnected";
	case GFD_CANCEL_SHUTDOWN:
		return "cancelled: the server is shutting down";
	default:
		return "cancelled";
	}
}

/* ---- ingest -------------------------------------------------------------------------------- */

enum take { TAKE_PIECE, TAKE_END, TAKE_CANCEL, TAKE_TIMEOUT };

/* The next input piece, waiting until deadline (CLOCK_MONOTONIC ns). */
static enum take take_piece(gfd_server *s, gfd_job *j, struct gfd_piece **out, int64_t deadline)
{
	struct timespec ts = { .tv_sec = deadline / 1000000000, .tv_nsec = deadline % 1000000000 };
	bool resume = false;
	enum take t;
	pthread_mutex_lock(&j->mu);
	while (!j->in_head && !j->in_end && !atomic_load(&j->cancel)) {
		if (pthread_cond_timedwait(&j->cv, &j->mu, &ts) == ETIMEDOUT)
			break;
	}
	if (atomic_load(&j->cancel)) {
		t = TAKE_CANCEL;
	} else if (j->in_head) {
		struct gfd_piece *p = j->in_head;
		j->in_head = p->next;
		if (!j->in_head)
			j->in_tail = NULL;
		j->in_bytes -= p->len;
		if (j->read_paused && j->in_bytes <= s->ingest_queue_bytes / 2) {
			j->read_paused = false;
			resume = true;
		}
		*out = p;
		t = TAKE_PIECE;
	} else {
		t = j->in_end ? TAKE_END : TAKE_TIMEOUT;
	}
	pthread_mutex_unlock(&j->mu);
	if (resume) {
		struct gfd_event *ev = calloc(1, sizeof(*ev));
		if (ev) {
			ev->kind = GFD_EV_RESUME;
			ev->conn_id = j->conn_id;
			ev->job = j;
			gfd_post(s, ev);
		}
	}
	return t;
}

/* The worker takes no more input: drop what is queued and let the connection read on. */
static void close_input(gfd_server *s, gfd_job *j)
{
	bool resume;
	pthread_mutex_lock(&j->mu);
	j->in_closed = true;
	for (struct gfd_piece *p = j->in_head, *next; p; p = next) {
		next = p->next;
		free(p);
	}
	j->in_head = j->in_tail = NULL;
	j->in_bytes = 0;
	resume = j->read_paused;
	j->read_paused = false;
	pthread_mutex_unlock(&j->mu);
	if (resume) {
		struct gfd_event *ev = calloc(1, sizeof(*ev));
		if (ev) {
			ev->kind = GFD_EV_RESUME;
			ev->conn_id = j->conn_id;
			ev->job = j;
			gfd_post(s, ev);
		}
	}
}

struct ingest_run {
	gfd_server *s;
	gfd_job *j;
	gfd_ingest *in;
	int64_t t0, last_progress, last_log;
	uint64_t resume_bytes, fed, tokens_at_start, tokens_reported;
};

static void send_progress(struct ingest_run *r)
{
	gfd_ingest_state st;
	r->s->be.ops->ingest_state(r->in, &st);
	Goldfinch__V1__IngestProgress p = GOLDFINCH__V1__INGEST_PROGRESS__INIT;
	uint64_t bytes = r->resume_bytes + r->fed;
	double secs = (double)(gfd_now_ns() - r->t0) / 1e9;
	p.has_tokens_done = true;
	p.tokens_done = st.tokens_done;
	p.has_bytes_done = true;
	p.bytes_done = bytes;
	p.has_tokens_per_s = true;
	p.tokens_per_s = secs > 0 ? (double)(st.tokens_done - r->tokens_at_start) / secs : 0;
	p.has_tokens_total = true;
	/* Tokens per byte so far, times the bytes announced. */
	p.tokens_total = r->j->total_bytes && bytes && st.tokens_done
		? (uint64_t)((double)st.tokens_done / (double)bytes * (double)r->j->total_bytes) : 0;
	/* Every progress names the job, so a client learns the number to cancel it by. */
	p.has_job = true;
	p.job = r->j->number;
	proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
	resp.id = r->j->req_id;
	resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_PROGRESS;
	resp.progress = &p;
	gfd_post_response(r->s, r->j->conn_id, &resp);
	r->last_progress = gfd_now_ns();
}

/* Counts newly ingested tokens; sends progress and logs a line when due. */
static void ingest_tick(struct ingest_run *r)
{
	gfd_ingest_state st;
	r->s->be.ops->ingest_state(r->in, &st);
	if (st.tokens_done > r->tokens_reported) {
		gfd_stats_tokens(&r->s->stats, st.tokens_done - r->tokens_reported, 0);
		r->tokens_reported = st.tokens_done;
	}
	atomic_store(&r->j->tokens_done, st.tokens_done);
	int64_t now = gfd_now_ns();
	if (now - r->last_progress >= PROGRESS_NS)
		send_progress(r);
	if (now - r->last_log >= LOG_PROGRESS_NS) {
		double secs = (double)(now - r->t0) / 1e9;
		gfd_logf(r->s->log, "job %" PRIu64 " progress: %" PRIu64 " tokens (%" PRIu64
			 " committed), %" PRIu64 " bytes, %.0f tokens/s",
			 r->j->number, st.tokens_done, st.committed, r->resume_bytes + r->fed,
			 secs > 0 ? (double)(st.tokens_done - r->tokens_at_start) / secs : 0.0);
		r->last_log = now;
	}
}

/* Opens the ingest: a new context, or the unfinished one named for a resume. 1 when the
 * job is already answered (a resume of a complete context). */
static int ingest_open(struct ingest_run *r, char *err)
{
	gfd_server *s = r->s;
	gfd_job *j = r->j;
	const gfd_backend_ops *ops = s->be.ops;
	cs_ctx_info info;
	int rc;
	if (!j->resume)
		return ops->ingest_begin(s->be.self, j->name, &r->in, err);
	if ((rc = gfd_resolve_context(s, j->name, &info, err))) {
		if (rc == -ENOENT)
			snprintf(err, GF_ERR_LEN, "no ingest named \"%.120s\" to resume", j->name);
		return rc;
	}
	if (info.sealed) {
		/* Finished before the client heard of it: the context is there, complete. */
		char keyhex[33];
		Goldfinch__V1__ContextInfo ci;
		gfd_ctx_to_proto(&info, &ci, keyhex);
		Goldfinch__V1__ContextReady cr = GOLDFINCH__V1__CONTEXT_READY__INIT;
		cr.context = &ci;
		cr.has_reused = true;
		cr.reused = true;
		cr.has_seconds = true;
		cr.seconds = (double)(gfd_now_ns() - r->t0) / 1e9;
		proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
		resp.id = j->req_id;
		resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY;
		resp.context_ready = &cr;
		gfd_post_response(s, j->conn_id, &resp);
		gfd_logf(s->log, "job %" PRIu64 " done: context #%" PRIu64 " \"%s\" was complete already (%" PRIu64 " tokens)",
			 j->number, info.serial, info.name, info.n_tokens);
		return 1;
	}
	if (info.dtype != s->info.c_dtype) {
		snprintf(err, GF_ERR_LEN, "context \"%.100s\" (#%" PRIu64 ") stores c as %s; this server writes %s (--c-dtype)",
			 j->name, info.serial, cs_dtype_name(info.dtype), cs_dtype_name(s->info.c_dtype));
		return -EINVAL;
	}
	return ops->ingest_resume(s->be.self, info.serial, &r->in, err);
}

static gfd_job_outcome run_ingest(gfd_server *s, gfd_job *j)
{
	const gfd_backend_ops *ops = s->be.ops;
	struct ingest_run r = { .s = s, .j = j };
	char err[GF_ERR_LEN] = "";
	gfd_ingest_state st;
	Goldfinch__V1__ErrorCode code = GOLDFINCH__V1__ERROR_CODE__ERROR_INTERNAL;
	gfd_job_outcome outcome = GFD_OUT_FAILED;
	struct gfd_event *final = NULL;
	bool remove = false;
	int why = 0, rc;

	r.t0 = r.last_progress = r.last_log = gfd_now_ns();
	rc = ingest_open(&r, err);
	if (rc == 1) {
		outcome = GFD_OUT_DONE;
		goto close;
	}
	if (rc) {
		code = rc == -EEXIST ? GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST : gfd_errno_code(rc);
		if (rc == -EEXIST)
			snprintf(err, GF_ERR_LEN, "context name \"%.120s\" is taken: drop it, resume it, or pick another",
				 j->name);
		goto fail;
	}
	ops->ingest_state(r.in, &st);
	r.resume_bytes = st.input_bytes;
	r.tokens_at_start = r.tokens_reported = st.tokens_done;
	atomic_store(&j->serial, st.serial);
	atomic_store(&j->tokens_done, st.tokens_done);
	gfd_logf(s->log, "job %" PRIu64 " started: ingest \"%s\" into #%" PRIu64 "%s, from byte %" PRIu64
		 " (token %" PRIu64 ")", j->number, j->name ? j->name : "", st.serial,
		 j->resume ? " (resumed)" : "", r.resume_bytes, st.tokens_done);
	/* The first progress says where a resumed input must continue. */
	send_progress(&r);

	for (;;) {
		struct gfd_piece *p = NULL;
		enum take t = take_piece(s, j, &p, r.last_progress + PROGRESS_NS);
		if (t == TAKE_CANCEL)
			goto cancelled;
		if (t == TAKE_END)
			break;
		if (t == TAKE_TIMEOUT) {
			ingest_tick(&r);
			continue;
		}
		if (p->is_error) {
			snprintf(err, GF_ERR_LEN, "%s", (const char *)p->data);
			free(p);
			code = GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST;
			goto fail;
		}
		for (size_t off = 0; off < p->len; off += INGEST_SLICE) {
			size_t n = p->len - off < INGEST_SLICE ? p->len - off : INGEST_SLICE;
			if ((rc = ops->ingest_text(r.in, p->data + off, n, err))) {
				free(p);
				code = gfd_errno_code(rc);
				goto fail;
			}
			r.fed += n;
			ingest_tick(&r);
			ops->ingest_state(r.in, &st);
			if (s->opt.max_context_tokens && st.tokens_done > s->opt.max_context_tokens) {
				free(p);
				goto too_large;
			}
			if (atomic_load(&j->cancel)) {
				free(p);
				goto cancelled;
			}
		}
		free(p);
	}
	close_input(s, j);

	cs_ctx_info info;
	bool reused = false;
	if ((rc = ops->ingest_finish(r.in, &info, &reused, err))) {
		code = gfd_errno_code(rc);
		goto fail;
	}
	ingest_tick(&r);
	if (s->opt.max_context_tokens && info.n_tokens > s->opt.max_context_tokens && !reused)
		goto too_large;
	{
		char keyhex[33];
		Goldfinch__V1__ContextInfo ci;
		gfd_ctx_to_proto(&info, &ci, keyhex);
		Goldfinch__V1__ContextReady cr = GOLDFINCH__V1__CONTEXT_READY__INIT;
		double secs = (double)(gfd_now_ns() - r.t0) / 1e9;
		cr.context = &ci;
		cr.has_reused = true;
		cr.reused = reused;
		cr.has_seconds = true;
		cr.seconds = secs;
		proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
		resp.id = j->req_id;
		resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY;
		resp.context_ready = &cr;
		final = gfd_frame_event(j->conn_id, &resp);
		if (reused) {
			pthread_mutex_lock(&s->stats.mu);
			s->stats.ingests_reused++;
			pthread_mutex_unlock(&s->stats.mu);
		}
		char kept[CS_NAME_MAX + 64] = "";
		if (reused && j->name && strcmp(j->name, info.name))
			snprintf(kept, sizeof(kept), "; the name \"%.*s\" was not kept", CS_NAME_MAX - 1,
				 j->name);
		gfd_logf(s->log, "job %" PRIu64 " done: context #%" PRIu64 " \"%s\" key %.16s..., %" PRIu64
			 " tokens, %" PRIu64 " bytes on disk%s%s, %.2f s, peer %s",
			 j->number, info.serial, info.name, keyhex, info.n_tokens, info.disk_bytes,
			 reused ? " (identical context reused)" : "", kept, secs, j->peer);
	}
	outcome = GFD_OUT_DONE;
	goto close;

too_large:
	ops->ingest_state(r.in, &st);
	snprintf(err, GF_ERR_LEN, "context \"%.100s\" reached %" PRIu64 " tokens, over the limit of %" PRIu64
		 " (--max-context-tokens); the partial context is removed",
		 j->name ? j->name : "", st.tokens_done, s->opt.max_context_tokens);
	code = GOLDFINCH__V1__ERROR_CODE__ERROR_TOO_LARGE;
	remove = true;
	goto fail;

cancelled:
	why = atomic_load(&j->cancel);
	outcome = GFD_OUT_CANCELLED;
	ops->ingest_state(r.in, &st);
	if (st.tokens_done > st.committed && (rc = ops->ingest_checkpoint(r.in, err))) {
		gfd_logf(s->log, "job %" PRIu64 " checkpoint at cancel failed: %s", j->number, err);
	}
	ops->ingest_state(r.in, &st);
	/* The hint names the command line the user types; an unnamed ingest is resumed by its
	 * serial. */
	char resume_ref[4 * CS_NAME_MAX + 4];
	if (j->name && j->name[0])
		shell_word(resume_ref, sizeof(resume_ref), j->name);
	else
		snprintf(resume_ref, sizeof(resume_ref), "'#%" PRIu64 "'", st.serial);
	snprintf(err, GF_ERR_LEN, "ingest #%" PRIu64 " %s at token %" PRIu64 ", byte %" PRIu64
		 "; finish it with: gf ingest --resume --name %.80s PATH... (the same input)",
		 st.serial, cancel_word(why), st.committed, st.input_bytes, resume_ref);
	code = why == GFD_CANCEL_SHUTDOWN ? GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN
					  : GOLDFINCH__V1__ERROR_CODE__ERROR_CANCELLED;
	if (st.committed == 0)
		snprintf(err, GF_ERR_LEN, "ingest of \"%.100s\" %s before any token was committed",
			 j->name ? j->name : "", cancel_word(why));
fail:
	if (why != GFD_CANCEL_DISCONNECT)
		final = error_event(j->conn_id, j->req_id, code, "%s", err);
	if (r.in) {
		ops->ingest_state(r.in, &st);
		gfd_logf(s->log, "job %" PRIu64 " %s: ingest \"%s\" #%" PRIu64 ", %" PRIu64
			 " tokens (%" PRIu64 " committed), %.2f s, peer %s: %s", j->number,
			 outcome == GFD_OUT_CANCELLED ? "cancelled" : "failed", j->name ? j->name : "",
			 st.serial, st.tokens_done, st.committed,
			 (double)(gfd_now_ns() - r.t0) / 1e9, j->peer, err);
	} else {
		gfd_logf(s->log, "job %" PRIu64 " failed: ingest \"%s\", peer %s: %s", j->number,
			 j->name ? j->name : "", j->peer, err);
	}
close:
	close_input(s, j);
	if (r.in) {
		ops->ingest_state(r.in, &st);
		ops->ingest_free(r.in);
		if (remove && st.serial) {
			char why_rm[GF_ERR_LEN];
			if (ops->remove(s->be.self, st.serial, why_rm))
				gfd_logf(s->log, "job %" PRIu64 ": removing #%" PRIu64 " failed: %s", j->number,
					 st.serial, why_rm);
		}
	}
	post_final(s, final);
	return outcome;
}

/* ---- generate ------------------------------------------------------------------------------ */

struct gen_out {
	gfd_server *s;
	gfd_job *j;
	uint8_t *held;          /* decoded bytes not yet sent (a stop string may start there) */
	size_t n_held, cap_held;
	int32_t pend_tok;       /* a Token held back to carry what is still held; -1 none */
	uint8_t *pend_text;
	size_t pend_len, pend_cap;
	uint64_t sent;
};

/* Makes room for need bytes. The buffer exists after any call, even for need 0: memcpy
 * and memmove must not see NULL, even for 0 bytes (a token whose bytes wait in the
 * decoder adds none). */
static int grow(uint8_t **buf, size_t *cap, size_t need)
{
	if (need <= *cap && *buf)
		return 0;
	size_t c = *cap ? *cap : 256;
	while (c < need)
		c *= 2;
	uint8_t *b = realloc(*buf, c);
	if (!b)
		return -ENOMEM;
	*buf = b;
	*cap = c;
	return 0;
}

static void post_token(struct gen_out *g, int32_t tok, const uint8_t *text, size_t n)
{
	Goldfinch__V1__Token t = GOLDFINCH__V1__TOKEN__INIT;
	t.id = tok;
	if (!g->sent) {
		/* The first Token names the job (1.1): what another client cancels it by. */
		t.has_job = true;
		t.job = g->j->number;
	}
	t.has_text = true;
	t.text.data = (uint8_t *)text;
	t.text.len = n;
	proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
	resp.id = g->j->req_id;
	resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_TOKEN;
	resp.token = &t;
	gfd_post_response(g->s, g->j->conn_id, &resp);
	g->sent++;
	atomic_store(&g->j->tokens_done, g->sent);
}

static void flush_pending(struct gen_out *g)
{
	if (g->pend_tok >= 0)
		post_token(g, g->pend_tok, g->pend_text, g->pend_len);
	g->pend_tok = -1;
	g->pend_len = 0;
}

/* Bytes of held that can go out now; *stop when a stop string occurs (the release then ends
 * where it starts). What stays held is the longest tail that could begin a stop string. */
static size_t stop_scan(const gfd_job *j, const uint8_t *h, size_t n, bool *stop)
{
	size_t first = SIZE_MAX, keep = 0;
	*stop = false;
	for (size_t i = 0; i < j->n_stop; i++) {
		const char *st = j->stop[i];
		size_t len = strlen(st);
		const uint8_t *at = memmem(h, n, st, len);
		if (at && (size_t)(at - h) < first)
			first = (size_t)(at - h);
	}
	if (first != SIZE_MAX) {
		*stop = true;
		return first;
	}
	for (size_t i = 0; i < j->n_stop; i++) {
		const char *st = j->stop[i];
		size_t len = strlen(st);
		for (size_t k = (len - 1 < n ? len - 1 : n); k > keep; k--)
			if (!memcmp(h + n - k, st, k)) {
				keep = k;
				break;
			}
	}
	return n - keep;
}

/* Streams token tok (its new bytes in text[n]); *stop when a stop string ended the answer. */
static int emit_token(struct gen_out *g, const gf_decoder *dec, int32_t tok, const uint8_t *text,
		      size_t n, bool *stop)
{
	if (grow(&g->held, &g->cap_held, g->n_held + n))
		return -ENOMEM;
	memcpy(g->held + g->n_held, text, n);
	g->n_held += n;
	size_t out = stop_scan(g->j, g->held, g->n_held, stop);
	flush_pending(g);
	if (*stop) {
		post_token(g, tok, g->held, out);
		g->n_held = 0;
		return 0;
	}
	if (out == g->n_held && dec->n_held == 0) {
		post_token(g, tok, g->held, out);
		g->n_held = 0;
		return 0;
	}
	/* Something waits: hold this Token back so the end of the answer has one to carry it. */
	if (grow(&g->pend_text, &g->pend_cap, out))
		return -ENOMEM;
	memcpy(g->pend_text, g->held, out);
	g->pend_len = out;
	g->pend_tok = tok;
	memmove(g->held, g->held + out, g->n_held - out);
	g->n_held -= out;
	return 0;
}

/* The answer ended without a stop string: what is held goes out with the last Token. */
static int emit_end(struct gen_out *g, gf_decoder *dec)
{
	uint8_t tail[16];
	size_t n = 0;
	if (dec->tk)
		gf_decoder_flush(dec, tail, sizeof(tail), &n);
	if (g->pend_tok >= 0) {
		if (grow(&g->pend_text, &g->pend_cap, g->pend_len + g->n_held + n))
			return -ENOMEM;
		memcpy(g->pend_text + g->pend_len, g->held, g->n_held);
		g->pend_len += g->n_held;
		memcpy(g->pend_text + g->pend_len, tail, n);
		g->pend_len += n;
		g->n_held = 0;
	}
	flush_pending(g);
	return 0;
}

static void post_prompt_progress(gfd_server *s, gfd_job *j, uint64_t total, uint64_t cache,
				 uint64_t processed, int64_t t0)
{
	Goldfinch__V1__PromptProgress p = GOLDFINCH__V1__PROMPT_PROGRESS__INIT;
	p.has_total = p.has_cache = p.has_processed = p.has_time_ms = p.has_job = true;
	p.total = total;
	p.cache = cache;
	p.processed = processed;
	p.time_ms = gfd_ms_since(t0);
	p.job = j->number;
	proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
	resp.id = j->req_id;
	resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_PROMPT_PROGRESS;
	resp.prompt_progress = &p;
	gfd_post_response(s, j->conn_id, &resp);
}

/* The prompt: one prefill, or with return_progress (where the backend can feed) slices of
 * whole chunks with a PromptProgress after each, which leaves the answer's bits as they are
 * (gfe_session_feed). A cancel between slices sets *why and stops with 0 (the caller's loop
 * then ends the generation as cancelled). */
static int run_prompt(gfd_server *s, gfd_job *j, gfd_session *sess, const int32_t *ids, size_t n,
		      uint64_t base, float *logits, int64_t t0, int *why, char *err)
{
	const gfd_backend_ops *ops = s->be.ops;
	size_t done = 0;
	int rc;
	if (!j->return_progress)
		return ops->session_prefill(sess, ids, n, logits, err);
	post_prompt_progress(s, j, base + n, base, base, t0);
	if (ops->session_feed && ops->session_chunk) {
		const size_t ch = (size_t)ops->session_chunk(sess);
		const size_t slice = ch * (GFD_PROGRESS_SLICE_TOKENS > ch ? GFD_PROGRESS_SLICE_TOKENS / ch : 1);
		while (n - done > slice) {
			if ((*why = atomic_load(&j->cancel)))
				return 0;
			if ((rc = ops->session_feed(sess, ids + done, slice, err)))
				return rc;
			done += slice;
			post_prompt_progress(s, j, base + n, base, base + done, t0);
		}
	}
	if ((rc = ops->session_prefill(sess, ids + done, n - done, logits, err)))
		return rc;
	post_prompt_progress(s, j, base + n, base, base + n, t0);
	return 0;
}

static gfd_job_outcome run_generate(gfd_server *s, gfd_job *j)
{
	const gfd_backend_ops *ops = s->be.ops;
	const gf_tokenizer *tk = s->info.tokenizer;
	const int32_t V = s->info.cfg.vocab_size;
	struct gen_out g = { .s = s, .j = j, .pend_tok = -1 };
	char err[GF_ERR_LEN] = "";
	Goldfinch__V1__ErrorCode code = GOLDFINCH__V1__ERROR_CODE__ERROR_INTERNAL;
	gfd_job_outcome outcome = GFD_OUT_FAILED;
	gfd_session *sess = NULL;
	struct gfd_event *final = NULL;
	gf_sampler sampler = { 0 };
	gf_decoder dec = { 0 };
	int32_t *ids = NULL;
	size_t n_ids = 0;
	float *logits = NULL;
	cs_ctx_info info;
	Goldfinch__V1__DoneReason reason = GOLDFINCH__V1__DONE_REASON__DONE_LENGTH;
	double ttft_ms = 0, prompt_ms = 0, decode_ms = 0;
	uint64_t completion = 0, base = 0;
	int why = 0, rc;
	bool by_stop_string = false;
	const int64_t t0 = gfd_now_ns();

	memset(&info, 0, sizeof(info));
	if (j->no_context) {
		info.serial = GFD_NO_CONTEXT;
		info.dtype = s->info.c_dtype;
		info.sealed = true;
	} else if ((rc = gfd_resolve_context(s, j->context, &info, err))) {
		code = gfd_errno_code(rc);
		goto fail;
	}
	atomic_store(&j->serial, info.serial);
	if (info.dtype != s->info.c_dtype) {
		snprintf(err, GF_ERR_LEN, "context \"%.100s\" (#%" PRIu64 ") stores c as %s; this server reads %s (--c-dtype)",
			 j->context, info.serial, cs_dtype_name(info.dtype), cs_dtype_name(s->info.c_dtype));
		code = GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST;
		goto fail;
	}
	if (!info.sealed) {
		snprintf(err, GF_ERR_LEN, "context \"%.100s\" (#%" PRIu64 ") is not complete: its ingest is running or was interrupted (%" PRIu64 " tokens so far)",
			 j->context, info.serial, info.n_tokens);
		code = GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST;
		goto fail;
	}
	if (!tk) {
		snprintf(err, GF_ERR_LEN, "the model has no vocabulary: it cannot read a prompt");
		goto fail;
	}
	if (gf_tokenize(tk, (const uint8_t *)j->prompt, j->prompt_len, &ids, &n_ids) || !n_ids) {
		snprintf(err, GF_ERR_LEN, "the prompt gives no tokens");
		code = GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST;
		goto fail;
	}
	if (s->opt.max_context_tokens && n_ids > s->opt.max_context_tokens) {
		snprintf(err, GF_ERR_LEN, "the prompt has %zu tokens, over the limit of %" PRIu64
			 " (--max-context-tokens)", n_ids, s->opt.max_context_tokens);
		code = GOLDFINCH__V1__ERROR_CODE__ERROR_TOO_LARGE;
		goto fail;
	}
	logits = malloc(sizeof(float) * (size_t)V);
	if (!logits || gf_sampler_init(&sampler, V, &j->sp)) {
		snprintf(err, GF_ERR_LEN, "out of memory for a generation");
		goto fail;
	}
	if ((rc = ops->session_open(s->be.self, info.serial, &sess, err))) {
		code = gfd_errno_code(rc);
		goto fail;
	}
	base = ops->session_base_tokens(sess);
	if (j->no_context)
		gfd_logf(s->log, "job %" PRIu64 " started: generate without a context, prompt %zu tokens, max %u, peer %s",
			 j->number, n_ids, j->max_tokens, j->peer);
	else
		gfd_logf(s->log, "job %" PRIu64 " started: generate on #%" PRIu64 " \"%s\" (%" PRIu64
			 " tokens), prompt %zu tokens, max %u, peer %s", j->number, info.serial, info.name,
			 base, n_ids, j->max_tokens, j->peer);
	/* The penalties count the answer only, as gf-run ask does: same flags, same tokens. */
	int64_t tp = gfd_now_ns();
	if ((rc = run_prompt(s, j, sess, ids, n_ids, base, logits, tp, &why, err))) {
		code = gfd_errno_code(rc);
		goto fail;
	}
	prompt_ms = gfd_ms_since(tp);
	pthread_mutex_lock(&s->stats.mu);
	s->stats.prompt_tokens += n_ids;
	if (!j->no_context)
		s->stats.context_hits++;
	s->stats.cached_tokens += base;
	pthread_mutex_unlock(&s->stats.mu);
	gf_decoder_init(&dec, tk);

	int64_t td = gfd_now_ns();
	for (uint32_t i = 0; i < j->max_tokens; i++) {
		if ((why = atomic_load(&j->cancel)))
			break;
		int32_t tok = gf_sampler_sample(&sampler, logits);
		if (i == 0)
			ttft_ms = gfd_ms_since(j->accepted_ns);
		if (tok == 0) {
			/* <|endoftext|>: the answer is complete; the token itself is not text. */
			reason = GOLDFINCH__V1__DONE_REASON__DONE_STOP;
			break;
		}
		gf_sampler_accept(&sampler, tok);
		uint8_t text[GF_TOKEN_MAX_BYTES + 16];
		size_t n = 0;
		bool stop = false;
		if (gf_decoder_push(&dec, tok, text, sizeof(text), &n))
			n = 0;
		if (emit_token(&g, &dec, tok, text, n, &stop)) {
			snprintf(err, GF_ERR_LEN, "out of memory streaming the answer");
			goto fail;
		}
		completion++;
		gfd_stats_tokens(&s->stats, 0, 1);
		if (stop) {
			reason = GOLDFINCH__V1__DONE_REASON__DONE_STOP;
			by_stop_string = true;
			break;
		}
		if (i + 1 == j->max_tokens)
			break;
		if ((rc = ops->session_step(sess, tok, logits, err))) {
			code = gfd_errno_code(rc);
			goto fail;
		}
	}
	decode_ms = gfd_ms_since(td);
	if (!by_stop_string && emit_end(&g, &dec)) {
		snprintf(err, GF_ERR_LEN, "out of memory streaming the answer");
		goto fail;
	}
	if (why == GFD_CANCEL_SHUTDOWN) {
		snprintf(err, GF_ERR_LEN, "generation %s after %" PRIu64 " tokens", cancel_word(why),
			 completion);
		code = GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN;
		outcome = GFD_OUT_CANCELLED;
		goto fail;
	}
	if (why)
		reason = GOLDFINCH__V1__DONE_REASON__DONE_CANCELLED;
	{
		Goldfinch__V1__Usage u = GOLDFINCH__V1__USAGE__INIT;
		u.has_prompt_tokens = u.has_cached_tokens = u.has_completion_tokens = true;
		u.prompt_tokens = n_ids;
		u.cached_tokens = base;
		u.completion_tokens = completion;
		u.has_time_to_first_token_ms = completion > 0 || reason == GOLDFINCH__V1__DONE_REASON__DONE_STOP;
		u.time_to_first_token_ms = ttft_ms;
		u.has_prompt_ms = u.has_decode_ms = u.has_decode_tokens_per_s = true;
		u.prompt_ms = prompt_ms;
		u.decode_ms = decode_ms;
		u.decode_tokens_per_s = decode_ms > 0 ? (double)completion * 1000.0 / decode_ms : 0;
		Goldfinch__V1__Done d = GOLDFINCH__V1__DONE__INIT;
		d.reason = reason;
		d.usage = &u;
		proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
		resp.id = j->req_id;
		resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_DONE;
		resp.done = &d;
		if (why != GFD_CANCEL_DISCONNECT)
			final = gfd_frame_event(j->conn_id, &resp);
	}
	outcome = why ? GFD_OUT_CANCELLED : GFD_OUT_DONE;
	char on[32] = "without a context";
	if (!j->no_context)
		snprintf(on, sizeof(on), "on #%" PRIu64, info.serial);
	gfd_logf(s->log, "job %" PRIu64 " %s: generate %s, %" PRIu64 " + %zu tokens in, %" PRIu64
		 " out (%s), first token %.1f ms, %.1f tokens/s, %.2f s, peer %s", j->number,
		 why ? "cancelled" : "done", on, base, n_ids, completion,
		 why ? cancel_word(why) : reason == GOLDFINCH__V1__DONE_REASON__DONE_STOP ? "stop" : "length",
		 ttft_ms, decode_ms > 0 ? (double)completion * 1000.0 / decode_ms : 0.0,
		 gfd_ms_since(t0) / 1e3, j->peer);
	goto close;
fail:
	flush_pending(&g);
	if (why != GFD_CANCEL_DISCONNECT)
		final = error_event(j->conn_id, j->req_id, code, "%s", err);
	gfd_logf(s->log, "job %" PRIu64 " %s: generate on \"%s\", %" PRIu64 " tokens out, %.2f s, peer %s: %s",
		 j->number, outcome == GFD_OUT_CANCELLED ? "cancelled" : "failed",
		 j->no_context ? "(no context)" : j->context, completion,
		 gfd_ms_since(t0) / 1e3, j->peer, err);
close:
	ops->session_free(sess);
	gf_sampler_free(&sampler);
	free(logits);
	free(ids);
	free(g.held);
	free(g.pend_text);
	post_final(s, final);
	return outcome;
}

/* ---- workers ------------------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
	gfd_server *s = arg;
	gfd_job *j;
	while ((j = queue_pop(s))) {
		gfd_job_outcome o;
		if (atomic_load(&j->cancel)) {
			/* Cancelled between leaving the queue and starting: say so and stop. */
			int why = atomic_load(&j->cancel);
			if (why != GFD_CANCEL_DISCONNECT) {
				if (j->kind == GFD_JOB_GENERATE && why == GFD_CANCEL_CLIENT) {
					Goldfinch__V1__Done d = GOLDFINCH__V1__DONE__INIT;
					d.reason = GOLDFINCH__V1__DONE_REASON__DONE_CANCELLED;
					proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
					resp.id = j->req_id;
					resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_DONE;
					resp.done = &d;
					gfd_post_response(s, j->conn_id, &resp);
				} else {
					gfd_post_error(s, j->conn_id, j->req_id,
						       why == GFD_CANCEL_SHUTDOWN ? GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN
										  : GOLDFINCH__V1__ERROR_CODE__ERROR_CANCELLED,
						       "job %s before it started", cancel_word(why));
				}
			}
			gfd_logf(s->log, "job %" PRIu64 " cancelled before it started (%s), peer %s", j->number,
				 cancel_word(why), j->peer);
			close_input(s, j);
			o = GFD_OUT_CANCELLED;
		} else if (j->kind == GFD_JOB_INGEST) {
			o = run_ingest(s, j);
		} else {
			o = run_generate(s, j);
		}
		count_outcome(s, o);
		pthread_mutex_lock(&s->stats.mu);
		s->stats.jobs_running--;
		pthread_mutex_unlock(&s->stats.mu);
		struct gfd_event *ev = calloc(1, sizeof(*ev));
		if (!ev) {
			/* Without the event the loop would wait for this job forever: retry. */
			while (!(ev = calloc(1, sizeof(*ev))))
				usleep(1000);
		}
		ev->kind = GFD_EV_JOB_END;
		ev->conn_id = j->conn_id;
		ev->job = j;
		gfd_post(s, ev);
	}
	return NULL;
}

/* ---- the control thread -------------------------------------------------------------------- */

static void ctl_status(gfd_server *s, struct gfd_ctl_task *t)
{
	gfd_stats st;
	cs_ctx_info *list = NULL;
	size_t n = 0;
	gfd_stats_snapshot(&s->stats, &st);
	if (s->be.ops->list(s->be.self, &list, &n, NULL))
		n = 0;
	free(list);
	Goldfinch__V1__StatusReply r = GOLDFINCH__V1__STATUS_REPLY__INIT;
	r.has_jobs_running = r.has_jobs_queued = r.has_max_jobs = r.has_rss_bytes = true;
	r.has_disk_used_bytes = r.has_disk_budget_bytes = r.has_contexts = true;
	r.has_connections = r.has_tokens_ingested = r.has_tokens_generated = true;
	r.jobs_running = st.jobs_running;
	r.jobs_queued = st.jobs_queued;
	r.max_jobs = (uint32_t)s->opt.max_jobs;
	r.rss_bytes = gfd_rss_bytes();
	r.disk_used_bytes = s->be.ops->disk_used(s->be.self);
	r.disk_budget_bytes = s->opt.disk_budget;
	r.contexts = (uint32_t)n;
	r.connections = st.connections;
	r.tokens_ingested = st.tokens_ingested;
	r.tokens_generated = st.tokens_decoded;
	/* 1.2: what the engine holds against its budgets (rank 0's with several ranks). */
	gfd_memory mem;
	s->be.ops->memory(s->be.self, &mem);
	r.compute = (char *)gf_compute_name(s->info.compute);
	r.kernels = s->info.kernels;
	r.has_weight_bytes = r.has_page_cache_bytes = r.has_page_cache_budget_bytes = true;
	r.has_tier_bytes = r.has_tier_budget_bytes = true;
	r.weight_bytes = mem.weight_bytes;
	r.page_cache_bytes = mem.page_cache_bytes;
	r.page_cache_budget_bytes = mem.page_cache_budget;
	r.tier_bytes = mem.tier_bytes;
	r.tier_budget_bytes = mem.tier_budget;
	/* The jobs as the loop saw them when the request arrived (server_loop.c). */
	Goldfinch__V1__JobInfo *ji = t->n_jobs ? calloc(t->n_jobs, sizeof(*ji)) : NULL;
	Goldfinch__V1__JobInfo **jp = t->n_jobs ? calloc(t->n_jobs, sizeof(*jp)) : NULL;
	if (t->n_jobs && (!ji || !jp)) {
		free(ji);
		free(jp);
		gfd_post_error(s, t->conn_id, t->req_id, GOLDFINCH__V1__ERROR_CODE__ERROR_INTERNAL,
			       "out of memory listing %zu jobs", t->n_jobs);
		return;
	}
	for (size_t i = 0; i < t->n_jobs; i++) {
		const struct gfd_job_snap *js = &t->jobs[i];
		goldfinch__v1__job_info__init(&ji[i]);
		ji[i].has_job = ji[i].has_tokens_done = ji[i].has_started_unix_ms = true;
		ji[i].job = js->number;
		ji[i].kind = js->kind == GFD_JOB_INGEST ? "ingest" : "generate";
		ji[i].context = js->context;
		ji[i].state = js->running ? "running" : "queued";
		ji[i].tokens_done = js->tokens_done;
		ji[i].started_unix_ms = js->accepted_unix_ms;
		ji[i].peer = (char *)js->peer;
		jp[i] = &ji[i];
	}
	r.n_jobs = t->n_jobs;
	r.jobs = jp;
	proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
	resp.id = t->req_id;
	resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_STATUS;
	resp.status = &r;
	gfd_post_response(s, t->conn_id, &resp);
	free(ji);
	free(jp);
}

static void ctl_list(gfd_server *s, struct gfd_ctl_task *t)
{
	char err[GF_ERR_LEN];
	cs_ctx_info *list = NULL;
	size_t n = 0;
	int rc = s->be.ops->list(s->be.self, &list, &n, err);
	if (rc) {
		gfd_post_error(s, t->conn_id, t->req_id, gfd_errno_code(rc), "%s", err);
		return;
	}
	Goldfinch__V1__ContextInfo *ci = calloc(n ? n : 1, sizeof(*ci));
	Goldfinch__V1__ContextInfo **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
	char (*keys)[33] = calloc(n ? n : 1, sizeof(*keys));
	if (!ci || !ptrs || !keys) {
		gfd_post_error(s, t->conn_id, t->req_id, GOLDFINCH__V1__ERROR_CODE__ERROR_INTERNAL,
			       "out of memory listing %zu contexts", n);
		goto free_all;
	}
	for (size_t i = 0; i < n; i++) {
		gfd_ctx_to_proto(&list[i], &ci[i], keys[i]);
		ptrs[i] = &ci[i];
	}
	Goldfinch__V1__ContextList cl = GOLDFINCH__V1__CONTEXT_LIST__INIT;
	cl.n_contexts = n;
	cl.contexts = ptrs;
	proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
	resp.id = t->req_id;
	resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_CONTEXTS;
	resp.contexts = &cl;
	gfd_post_response(s, t->conn_id, &resp);
free_all:
	free(ci);
	free(ptrs);
	free(keys);
	free(list);
}

static void ctl_drop(gfd_server *s, struct gfd_ctl_task *t)
{
	char err[GF_ERR_LEN];
	cs_ctx_info info;
	int rc = gfd_resolve_context(s, t->context, &info, err);
	if (!rc && (rc = s->be.ops->remove(s->be.self, info.serial, err)) == -EBUSY)
		snprintf(err, GF_ERR_LEN, "context \"%.100s\" (#%" PRIu64 ") is in use by a job; try again when it ends",
			 t->context, info.serial);
	if (rc) {
		gfd_post_error(s, t->conn_id, t->req_id, gfd_errno_code(rc), "%s", err);
		return;
	}
	gfd_logf(s->log, "context #%" PRIu64 " \"%s\" dropped (%" PRIu64 " tokens, %" PRIu64 " bytes), peer %s",
		 info.serial, info.name, info.n_tokens, info.disk_bytes, t->peer);
	Goldfinch__V1__Dropped d = GOLDFINCH__V1__DROPPED__INIT;
	d.has_serial = true;
	d.serial = info.serial;
	proto_response resp = GOLDFINCH__V1__RESPONSE__INIT;
	resp.id = t->req_id;
	resp.body_case = GOLDFINCH__V1__RESPONSE__BODY_DROPPED;
	resp.dropped = &d;
	gfd_post_response(s, t->conn_id, &resp);
}

static void *ctl_main(void *arg)
{
	gfd_server *s = arg;
	for (;;) {
		pthread_mutex_lock(&s->cmu);
		while (!s->c_head && !s->ctl_stop)
			pthread_cond_wait(&s->ccv, &s->cmu);
		struct gfd_ctl_task *t = s->c_head;
		if (t) {
			s->c_head = t->next;
			if (!s->c_head)
				s->c_tail = NULL;
		}
		pthread_mutex_unlock(&s->cmu);
		if (!t)
			break;
		switch (t->what) {
		case GOLDFINCH__V1__REQUEST__BODY_STATUS:
			ctl_status(s, t);
			break;
		case GOLDFINCH__V1__REQUEST__BODY_LIST_CONTEXTS:
			ctl_list(s, t);
			break;
		case GOLDFINCH__V1__REQUEST__BODY_DROP_CONTEXT:
			ctl_drop(s, t);
			break;
		default:
			break;
		}
		gfd_ctl_task_free(t);
	}
	return NULL;
}

void gfd_ctl_task_free(struct gfd_ctl_task *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n_jobs; i++)
		free(t->jobs[i].context);
	free(t->jobs);
	free(t->context);
	free(t);
}

void gfd_ctl_push(gfd_server *s, struct gfd_ctl_task *t)
{
	t->next = NULL;
	pthread_mutex_lock(&s->cmu);
	if (s->c_tail)
		s->c_tail->next = t;
	else
		s->c_head = t;
	s->c_tail = t;
	pthread_cond_signal(&s->ccv);
	pthread_mutex_unlock(&s->cmu);
}

int gfd_workers_start(gfd_server *s, char *err)
{
	s->workers = calloc((size_t)s->opt.max_jobs, sizeof(pthread_t));
	if (!s->workers) {
		snprintf(err, GF_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	for (int i = 0; i < s->opt.max_jobs; i++) {
		int rc = pthread_create(&s->workers[i], NULL, worker_main, s);
		if (rc) {
			snprintf(err, GF_ERR_LEN, "starting worker thread %d: %s", i, strerror(rc));
			return -rc;
		}
		s->n_workers++;
	}
	int rc = pthread_create(&s->ctl, NULL, ctl_main, s);
	if (rc) {
		snprintf(err, GF_ERR_LEN, "starting the control thread: %s", strerror(rc));
		return -rc;
	}
	s->ctl_started = true;
	return 0;
}

void gfd_workers_stop(gfd_server *s)
{
	pthread_mutex_lock(&s->qmu);
	s->workers_stop = true;
	pthread_cond_broadcast(&s->qcv);
	pthread_mutex_unlock(&s->qmu);
	for (int i = 0; i < s->n_workers; i++)
		pthread_join(s->workers[i], NULL);
	s->n_workers = 0;
	free(s->workers);
	s->workers = NULL;
	pthread_mutex_lock(&s->cmu);
	s->ctl_stop = true;
	pthread_cond_broadcast(&s->ccv);
	pthread_mutex_unlock(&s->cmu);
	if (s->ctl_started)
		pthread_join(s->ctl, NULL);
	s->ctl_started = false;
	for (struct gfd_ctl_task *t = s->c_head, *next; t; t = next) {
		next = t->next;
		gfd_ctl_task_free(t);
	}
	s->c_head = s->c_tail = NULL;
}
