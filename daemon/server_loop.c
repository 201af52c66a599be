/*
 * server_loop.c — the network thread: listeners, connections, framing, request dispatch,
 * signals and shutdown, on one epoll set. Nothing here blocks: sockets are non-blocking,
 * output waits in per-connection queues, and anything that touches the store or the model
 * goes to a worker or the control thread (server_jobs.c).
 *
 * What a client may cost before it has said who it is (Hello, with the token when one is
 * required) is small: frames up to HELLO_MAX_FRAME, HELLO_TIMEOUT_NS to send the Hello.
 *
 * Flow control, both directions:
 *   - a connection whose output queue passes OUT_HIGH bytes is not read until it drains
 *     below OUT_LOW (a client that does not read cannot make us buffer its requests'
 *     answers without bound); past OUT_MAX it is dropped;
 *   - an ingest whose input queue passes srv->ingest_queue_bytes pauses its connection
 *     until the worker has taken half of it (GFD_EV_RESUME).
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define OUT_HIGH (8u << 20)
#define OUT_LOW (1u << 20)
#define OUT_MAX (256u << 20)
#define READ_BUDGET (1u << 20)   /* bytes read from one connection per wake-up: fairness */
#define READ_SLICE 65536
#define CLOSE_LINGER_NS 2000000000ll
#define SHUTDOWN_FLUSH_NS 2000000000ll
#define CONN_BUCKETS 1024
#define DEAD_IDS 16
#define INGEST_QUEUE_MIN (64u << 10)
#define MAX_CONNS 4096                        /* connections at once; more are closed at accept */
#define HELLO_MAX_FRAME (64u << 10)           /* frames before Hello: a Hello is small */
#define HELLO_READ_SLICE 4096                 /* and it is read in small slices */
#define HELLO_TIMEOUT_NS 10000000000ll        /* to send it */
#define READ_KEEP (1u << 20)                  /* input buffer kept between frames */
#define WIRE_MAX_DEPTH 16

enum ptype { P_LISTENER = 1, P_CONN, P_SIGNAL, P_EVENT };

struct pollable {
	enum ptype type;
};

struct listener {
	struct pollable p;
	int fd;
	bool is_unix;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char name[160];
	uint64_t refused;          /* connections closed at accept (MAX_CONNS), not yet logged */
	int64_t refused_log_ns;    /* when that was last logged */
};

struct gfd_conn {
	struct pollable p;
	uint64_t id;
	int fd;
	char peer[64];
	struct gfd_conn *hnext;            /* hash chain */
	struct gfd_conn *prev, *next;      /* every connection */
	struct gfd_conn *dirty_next;       /* output to flush this round */
	proto_reader rd;
	struct gfd_event *out_head, *out_tail;
	size_t out_bytes;
	uint32_t events;                   /* the epoll mask set now */
	bool hello_done;
	bool closing;                      /* answer what is queued, then close */
	bool draining;                     /* write side shut: read and discard until EOF */
	bool dead;                         /* destroy at the end of this round */
	bool dirty;
	bool kick;                         /* buffered frames to handle this round (unpaused) */
	bool out_paused;
	int64_t close_deadline;
	int64_t hello_deadline;
	gfd_job *jobs;
	gfd_job *paused_on;                /* an ingest whose input queue is full */
	uint64_t dead_ids[DEAD_IDS];       /* ingests that ended: their late data is dropped */
	unsigned n_dead;
	const char *close_reason;
};

struct conn_table {
	struct gfd_conn *buckets[CONN_BUCKETS];
	struct gfd_conn *all;
	struct gfd_conn *dirty;
	size_t n;
};

static struct pollable sig_pollable = { P_SIGNAL };
static struct pollable ev_pollable = { P_EVENT };

static struct conn_table *table(gfd_server *s)
{
	return s->conns;
}

static struct gfd_conn *conn_find(gfd_server *s, uint64_t id)
{
	struct gfd_conn *c = table(s)->buckets[id % CONN_BUCKETS];
	while (c && c->id != id)
		c = c->hnext;
	return c;
}

/* ---- epoll interest ------------------------------------------------------------------------ */

static bool conn_reading(const struct gfd_conn *c)
{
	return !c->dead && (c->draining || (!c->closing && !c->paused_on && !c->out_paused));
}

static void conn_update_events(gfd_server *s, struct gfd_conn *c)
{
	if (c->dead)
		return;
	uint32_t ev = 0;
	if (conn_reading(c))
		ev |= EPOLLIN | EPOLLRDHUP;
	else if (!c->closing)
		ev |= EPOLLRDHUP; /* paused: still notice the client going away */
	if (c->out_head)
		ev |= EPOLLOUT;
	if (ev == c->events)
		return;
	struct epoll_event e = { .events = ev, .data.ptr = c };
	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &e) == 0)
		c->events = ev;
}

/* ---- output -------------------------------------------------------------------------------- */

static void conn_mark_dead(gfd_server *s, struct gfd_conn *c, const char *why);
static void remember_dead(struct gfd_conn *c, uint64_t id);

/* Visits c at the end of this round: flushes its output, handles frames if kicked. */
static void conn_mark_dirty(gfd_server *s, struct gfd_conn *c)
{
	if (!c->dirty) {
		c->dirty = true;
		c->dirty_next = table(s)->dirty;
		table(s)->dirty = c;
	}
}

static void conn_queue(gfd_server *s, struct gfd_conn *c, struct gfd_event *ev)
{
	ev->next = NULL;
	ev->off = 0;
	if (c->out_tail)
		c->out_tail->next = ev;
	else
		c->out_head = ev;
	c->out_tail = ev;
	c->out_bytes += ev->len;
	conn_mark_dirty(s, c);
	if (c->out_bytes > OUT_MAX) {
		conn_mark_dead(s, c, "it does not read its responses");
	} else if (c->out_bytes > OUT_HIGH && !c->out_paused) {
		c->out_paused = true;
		conn_update_events(s, c);
	}
}

static void conn_send(gfd_server *s, struct gfd_conn *c, const proto_response *r)
{
	struct gfd_event *ev = gfd_frame_event(c->id, r);
	if (!ev) {
		conn_mark_dead(s, c, "out of memory for its response");
		return;
	}
	conn_queue(s, c, ev);
}

static void conn_error(gfd_server *s, struct gfd_conn *c, uint64_t id, Goldfinch__V1__ErrorCode code,
		       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void conn_error(gfd_server *s, struct gfd_conn *c, uint64_t id, Goldfinch__V1__ErrorCode code,
		       const char *fmt, ...)
{
	char msg[GF_ERR_LEN + 128];
	va_list ap;
	va_start(ap, fmt);
	gfd_vformat_line(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	Goldfinch__V1__Error e = GOLDFINCH__V1__ERROR__INIT;
	e.code = code;
	e.message = msg;
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	r.id = id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_ERROR;
	r.error = &e;
	conn_send(s, c, &r);
}

static void conn_write(gfd_server *s, struct gfd_conn *c)
{
	struct iovec iov[64];
	while (c->out_head && !c->dead) {
		int n = 0;
		for (struct gfd_event *ev = c->out_head; ev && n < 64; ev = ev->next, n++) {
			iov[n].iov_base = ev->data + ev->off;
			iov[n].iov_len = ev->len - ev->off;
		}
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			conn_mark_dead(s, c, "write failed");
			return;
		}
		size_t left = (size_t)w;
		c->out_bytes -= left;
		while (left && c->out_head) {
			struct gfd_event *ev = c->out_head;
			size_t rest = ev->len - ev->off;
			if (left < rest) {
				ev->off += left;
				left = 0;
				break;
			}
			left -= rest;
			c->out_head = ev->next;
			if (!c->out_head)
				c->out_tail = NULL;
			free(ev);
		}
	}
	if (c->out_paused && c->out_bytes < OUT_LOW)
		c->out_paused = false;
	if (c->closing && !c->out_head && !c->draining && !c->dead) {
		/* All said: shut our side, then read until the client closes, so unread input
		 * does not turn our last words into a reset. */
		shutdown(c->fd, SHUT_WR);
		c->draining = true;
	}
	conn_update_events(s, c);
}

/* ---- jobs of a connection ------------------------------------------------------------------- */

static void conn_link_job(struct gfd_conn *c, gfd_job *j)
{
	j->conn = c;
	j->cprev = NULL;
	j->cnext = c->jobs;
	if (c->jobs)
		c->jobs->cprev = j;
	c->jobs = j;
}

static void conn_unlink_job(struct gfd_conn *c, gfd_job *j)
{
	if (j->cprev)
		j->cprev->cnext = j->cnext;
	else
		c->jobs = j->cnext;
	if (j->cnext)
		j->cnext->cprev = j->cprev;
	j->cprev = j->cnext = NULL;
	j->conn = NULL;
}

static gfd_job *conn_find_job(struct gfd_conn *c, uint64_t req_id)
{
	for (gfd_job *j = c->jobs; j; j = j->cnext)
		if (j->req_id == req_id)
			return j;
	return NULL;
}

/* ---- the registry of live jobs, by server-wide number (Status, Cancel{job}) ---------------- */

static void registry_add(gfd_server *s, gfd_job *j)
{
	/* Numbers grow, so appending keeps the list sorted. */
	j->rnext = NULL;
	j->rprev = s->jobs_tail;
	if (s->jobs_tail)
		s->jobs_tail->rnext = j;
	else
		s->jobs_head = j;
	s->jobs_tail = j;
}

static void registry_remove(gfd_server *s, gfd_job *j)
{
	if (j->rprev)
		j->rprev->rnext = j->rnext;
	else if (s->jobs_head == j)
		s->jobs_head = j->rnext;
	else
		return; /* never added */
	if (j->rnext)
		j->rnext->rprev = j->rprev;
	else
		s->jobs_tail = j->rprev;
	j->rprev = j->rnext = NULL;
}

static gfd_job *registry_find(gfd_server *s, uint64_t number)
{
	/* Live jobs are few (workers + queue + those of closed connections still stopping). */
	for (gfd_job *j = s->jobs_head; j; j = j->rnext)
		if (j->number == number)
			return j;
	return NULL;
}

static void job_release(gfd_server *s, gfd_job *j)
{
	registry_remove(s, j);
	gfd_job_free(j);
	s->live_jobs--;
}

/* A job that never reached a worker: answered here, freed here. */
static void cancel_queued(gfd_server *s, gfd_job *j, int why)
{
	struct gfd_conn *c = j->conn;
	if (c && !c->dead && why != GFD_CANCEL_DISCONNECT) {
		if (why == GFD_CANCEL_CLIENT && j->kind == GFD_JOB_GENERATE) {
			Goldfinch__V1__Done d = GOLDFINCH__V1__DONE__INIT;
			d.reason = GOLDFINCH__V1__DONE_REASON__DONE_CANCELLED;
			proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
			r.id = j->req_id;
			r.body_case = GOLDFINCH__V1__RESPONSE__BODY_DONE;
			r.done = &d;
			conn_send(s, c, &r);
		} else {
			conn_error(s, c, j->req_id,
				   why == GFD_CANCEL_SHUTDOWN ? GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN
							      : GOLDFINCH__V1__ERROR_CODE__ERROR_CANCELLED,
				   "%s job %" PRIu64 " cancelled while queued%s",
				   j->kind == GFD_JOB_INGEST ? "ingest" : "generate", j->req_id,
				   why == GFD_CANCEL_SHUTDOWN ? ": the server is shutting down" : "");
		}
	}
	gfd_logf(s->log, "job %" PRIu64 " cancelled while queued (%s), peer %s", j->number,
		 why == GFD_CANCEL_SHUTDOWN ? "shutdown" : why == GFD_CANCEL_CLIENT ? "client" : "disconnect",
		 j->peer);
	pthread_mutex_lock(&s->stats.mu);
	s->stats.jobs_cancelled++;
	pthread_mutex_unlock(&s->stats.mu);
	if (c) {
		/* Its client may still be sending input: dropped quietly, as for any ended ingest. */
		if (j->kind == GFD_JOB_INGEST)
			remember_dead(c, j->req_id);
		if (c->paused_on == j) {
			/* The frames it buffered behind the full queue are handled at the end of this
			 * round: a Cancel{job} from another connection is handled inside that
			 * connection's frames, where handling these would nest. */
			c->paused_on = NULL;
			c->kick = true;
			conn_mark_dirty(s, c);
			conn_update_events(s, c);
		}
		conn_unlink_job(c, j);
	}
	job_release(s, j);
}

/* Cancels a job: queued ones end here, running ones when their worker sees the flag. */
static void job_cancel(gfd_server *s, gfd_job *j, int why)
{
	int none = GFD_CANCEL_NONE;
	atomic_compare_exchange_strong(&j->cancel, &none, why);
	if (gfd_queue_remove(s, j)) {
		cancel_queued(s, j, why);
		return;
	}
	gfd_job_wake(j);
}

/* The connection is gone for its jobs: cancel them all (an ingest checkpoints). */
static void conn_drop_jobs(gfd_server *s, struct gfd_conn *c)
{
	while (c->jobs) {
		gfd_job *j = c->jobs;
		conn_unlink_job(c, j);
		int none = GFD_CANCEL_NONE;
		atomic_compare_exchange_strong(&j->cancel, &none, GFD_CANCEL_DISCONNECT);
		if (gfd_queue_remove(s, j)) {
			gfd_logf(s->log, "job %" PRIu64 " cancelled while queued (disconnect), peer %s",
				 j->number, j->peer);
			pthread_mutex_lock(&s->stats.mu);
			s->stats.jobs_cancelled++;
			pthread_mutex_unlock(&s->stats.mu);
			job_release(s, j);
			continue;
		}
		gfd_job_wake(j);
	}
	c->paused_on = NULL;
}

static void conn_mark_dead(gfd_server *s, struct gfd_conn *c, const char *why)
{
	if (c->dead)
		return;
	c->dead = true;
	/* A connection this server chose to close keeps its reason: the client's close that
	 * follows (it read our last words) is not the why. */
	if (!c->closing || !c->close_reason)
		c->close_reason = why;
	conn_drop_jobs(s, c);
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
}

/* Answer what is queued, then close: for errors after which the stream is unusable. */
static void conn_fatal(gfd_server *s, struct gfd_conn *c, const char *why)
{
	if (c->closing || c->dead)
		return;
	c->closing = true;
	c->close_reason = why;
	c->close_deadline = gfd_now_ns() + CLOSE_LINGER_NS;
	conn_drop_jobs(s, c);
	conn_update_events(s, c);
}

static void conn_destroy(gfd_server *s, struct gfd_conn *c)
{
	struct conn_table *t = table(s);
	struct gfd_conn **pp = &t->buckets[c->id % CONN_BUCKETS];
	while (*pp != c)
		pp = &(*pp)->hnext;
	*pp = c->hnext;
	if (c->prev)
		c->prev->next = c->next;
	else
		t->all = c->next;
	if (c->next)
		c->next->prev = c->prev;
	t->n--;
	conn_drop_jobs(s, c);
	for (struct gfd_event *ev = c->out_head, *next; ev; ev = next) {
		next = ev->next;
		free(ev);
	}
	proto_reader_free(&c->rd);
	close(c->fd);
	gfd_logf(s->log, "connection %" PRIu64 " from %s closed%s%s", c->id, c->peer,
		 c->close_reason ? ": " : "", c->close_reason ? c->close_reason : "");
	pthread_mutex_lock(&s->stats.mu);
	s->stats.connections--;
	pthread_mutex_unlock(&s->stats.mu);
	free(c);
}

/* ---- requests ------------------------------------------------------------------------------- */

/* No byte below 0x20 and no DEL: a name shows in one line of the log and of a listing, and
 * sends no escape sequence to the terminal that shows them. */
static bool has_control(const char *n)
{
	for (const unsigned char *p = (const unsigned char *)n; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return true;
	return false;
}

static bool valid_name(const char *n, size_t max)
{
	size_t len = strlen(n);
	return len > 0 && len < max && !has_control(n);
}

static gfd_job *job_new(gfd_server *s, struct gfd_conn *c, uint64_t req_id, enum gfd_job_kind kind)
{
	gfd_job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&j->mu, NULL);
	atomic_init(&j->cancel, GFD_CANCEL_NONE);
	j->srv = s;
	j->number = ++s->next_job_number;
	j->conn_id = c->id;
	j->req_id = req_id;
	j->kind = kind;
	j->accepted_ns = gfd_now_ns();
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	j->accepted_unix_ms = gfd_unix_ms((int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec);
	atomic_init(&j->tokens_done, 0);
	atomic_init(&j->serial, 0);
	snprintf(j->peer, sizeof(j->peer), "%s", c->peer);
	return j;
}

/* Checks that a job may be queued now; answers and returns false otherwise. */
static bool job_admit(gfd_server *s, struct gfd_conn *c, uint64_t id)
{
	if (s->stopping) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN,
			   "the server is shutting down: no new jobs");
		return false;
	}
	if (conn_find_job(c, id)) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "request id %" PRIu64 " is in use by a job on this connection", id);
		return false;
	}
	pthread_mutex_lock(&s->qmu);
	int q = s->q_len;
	pthread_mutex_unlock(&s->qmu);
	if (q >= s->opt.max_queue) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BUSY,
			   "the job queue is full (%d waiting, --max-queue %d): try again later", q,
			   s->opt.max_queue);
		pthread_mutex_lock(&s->stats.mu);
		s->stats.jobs_rejected++;
		pthread_mutex_unlock(&s->stats.mu);
		return false;
	}
	return true;
}

static void job_accept(gfd_server *s, struct gfd_conn *c, gfd_job *j, const char *what)
{
	conn_link_job(c, j);
	registry_add(s, j);
	s->live_jobs++;
	gfd_logf(s->log, "job %" PRIu64 " accepted: %s, connection %" PRIu64 " request %" PRIu64 ", peer %s",
		 j->number, what, c->id, j->req_id, c->peer);
	gfd_queue_push(s, j);
}

static void on_hello(gfd_server *s, struct gfd_conn *c, uint64_t id, const Goldfinch__V1__Hello *h)
{
	if (c->hello_done) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "Hello was already accepted on this connection");
		return;
	}
	if (h->major != PROTO_VERSION_MAJOR) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_VERSION,
			   "protocol version %u.%u is not supported: this server speaks %d.%d",
			   h->major, h->minor, PROTO_VERSION_MAJOR, PROTO_VERSION_MINOR);
		conn_fatal(s, c, "protocol version mismatch");
		return;
	}
	if (s->auth_token) {
		const char *tok = h->auth_token ? h->auth_token : "";
		if (!gfd_ct_equal(s->auth_token, s->auth_len, tok, strlen(tok))) {
			conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_UNAUTHENTICATED,
				   "authentication failed: %s auth token",
				   h->auth_token ? "wrong" : "missing");
			conn_fatal(s, c, h->auth_token ? "authentication failed: wrong auth token"
						       : "authentication failed: no auth token");
			return;
		}
	}
	c->hello_done = true;
	c->rd.max_frame = s->max_frame;
	const gf_config *mc = &s->info.cfg;
	Goldfinch__V1__ModelInfo mi = GOLDFINCH__V1__MODEL_INFO__INIT;
	mi.name = s->info.model_name;
	mi.has_model_id = mi.has_n_layer = mi.has_n_embd = mi.has_first_gold = true;
	mi.has_n_head = mi.has_head_size = mi.has_vocab_size = mi.has_ckv_dim = true;
	mi.model_id = mc->model_id;
	mi.n_layer = (uint32_t)mc->n_layer;
	mi.n_embd = (uint32_t)mc->n_embd;
	mi.first_gold = (uint32_t)mc->first_gold;
	mi.n_head = (uint32_t)mc->n_head;
	mi.head_size = (uint32_t)mc->head_size;
	mi.vocab_size = (uint32_t)mc->vocab_size;
	mi.ckv_dim = (uint32_t)mc->ckv_dim;
	/* 1.2: fixed at load, so the loop answers them without asking the backend. */
	mi.compute = (char *)gf_compute_name(s->info.compute);
	mi.kernels = s->info.kernels;
	mi.has_weight_bytes = true;
	mi.weight_bytes = s->info.weight_bytes;
	Goldfinch__V1__HelloReply hr = GOLDFINCH__V1__HELLO_REPLY__INIT;
	hr.major = PROTO_VERSION_MAJOR;
	hr.minor = PROTO_VERSION_MINOR;
	hr.server = "goldfinchd " GFD_VERSION;
	hr.model = &mi;
	hr.has_ranks = hr.has_max_frame = true;
	hr.ranks = s->info.ranks;
	hr.max_frame = s->max_frame;
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	r.id = id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_HELLO;
	r.hello = &hr;
	conn_send(s, c, &r);
}

static const char *dtype_word(Goldfinch__V1__CDtype d)
{
	switch (d) {
	case GOLDFINCH__V1__CDTYPE__C_DTYPE_F16: return "f16";
	case GOLDFINCH__V1__CDTYPE__C_DTYPE_BF16: return "bf16";
	case GOLDFINCH__V1__CDTYPE__C_DTYPE_F32: return "f32";
	default: return NULL;
	}
}

static bool ingest_start(gfd_server *s, struct gfd_conn *c, uint64_t id,
			 const Goldfinch__V1__IngestStart *m)
{
	if (m->name && !valid_name(m->name, CS_NAME_MAX)) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "context name must be 1..%d bytes without control characters", CS_NAME_MAX - 1);
		return false;
	}
	if (m->name && m->name[0] == '#' && !(m->has_resume && m->resume)) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "context name \"%.100s\": names may not start with '#' (it marks serial numbers)",
			   m->name);
		return false;
	}
	if (m->has_resume && m->resume && !m->name) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "resume needs the name (or #serial) of the ingest to continue");
		return false;
	}
	if (m->has_c_dtype && m->c_dtype != GOLDFINCH__V1__CDTYPE__C_DTYPE_DEFAULT) {
		const char *want = dtype_word(m->c_dtype);
		if (!want) {
			conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
				   "c_dtype %d is not a known storage type", (int)m->c_dtype);
			return false;
		}
		if (strcmp(want, cs_dtype_name(s->info.c_dtype))) {
			conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
				   "this server stores c as %s (goldfinchd --c-dtype); an ingest cannot choose %s",
				   cs_dtype_name(s->info.c_dtype), want);
			return false;
		}
	}
	if (!job_admit(s, c, id))
		return false;
	gfd_job *j = job_new(s, c, id, GFD_JOB_INGEST);
	if (!j || (m->name && !(j->name = strdup(m->name)))) {
		gfd_job_free(j);
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_INTERNAL, "out of memory");
		return false;
	}
	j->resume = m->has_resume && m->resume;
	j->total_bytes = m->has_total_bytes ? m->total_bytes : 0;
	char what[200];
	snprintf(what, sizeof(what), "ingest \"%s\"%s", m->name ? m->name : "",
		 j->resume ? " (resume)" : "");
	job_accept(s, c, j, what);
	return true;
}

/* A refused IngestStart: the data the client streams after it is dropped without an answer
 * each (it has its Error), unless the id belongs to a live job. */
static void on_ingest_start(gfd_server *s, struct gfd_conn *c, uint64_t id,
			    const Goldfinch__V1__IngestStart *m)
{
	if (!ingest_start(s, c, id, m) && !conn_find_job(c, id))
		remember_dead(c, id);
}

/* Adds rendered input to an ingest; pauses the connection when the queue is full. */
static void ingest_push(gfd_server *s, struct gfd_conn *c, gfd_job *j, const void *a, size_t na,
			const void *b, size_t nb, const void *d, size_t nd, bool is_error)
{
	size_t len = na + nb + nd;
	struct gfd_piece *p = malloc(sizeof(*p) + len + 1);
	if (!p) {
		conn_fatal(s, c, "out of memory for ingest input");
		return;
	}
	p->next = NULL;
	p->len = is_error ? 0 : len;
	p->is_error = is_error;
	if (na)
		memcpy(p->data, a, na);
	if (nb)
		memcpy(p->data + na, b, nb);
	if (nd)
		memcpy(p->data + na + nb, d, nd);
	p->data[len] = 0;
	bool pause = false;
	pthread_mutex_lock(&j->mu);
	if (j->in_closed) {
		free(p);
	} else {
		if (j->in_tail)
			j->in_tail->next = p;
		else
			j->in_head = p;
		j->in_tail = p;
		j->in_bytes += p->len;
		if (j->in_bytes >= s->ingest_queue_bytes && !j->read_paused) {
			j->read_paused = true;
			pause = true;
		}
		pthread_cond_broadcast(&j->cv);
	}
	pthread_mutex_unlock(&j->mu);
	if (pause) {
		c->paused_on = j;
		conn_update_events(s, c);
	}
}

static void remember_dead(struct gfd_conn *c, uint64_t id)
{
	c->dead_ids[c->n_dead++ % DEAD_IDS] = id;
}

static bool is_dead_id(const struct gfd_conn *c, uint64_t id)
{
	unsigned n = c->n_dead < DEAD_IDS ? c->n_dead : DEAD_IDS;
	for (unsigned i = 0; i < n; i++)
		if (c->dead_ids[i] == id)
			return true;
	return false;
}

/* The ingest an IngestData/IngestEnd names, or NULL (answered, or silently dropped for an
 * ingest that ended already: its error or result has been sent). */
static gfd_job *ingest_target(gfd_server *s, struct gfd_conn *c, uint64_t id, const char *what)
{
	gfd_job *j = conn_find_job(c, id);
	if (!j) {
		if (!is_dead_id(c, id))
			conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND,
				   "%s for request %" PRIu64 ": no ingest with that id on this connection",
				   what, id);
		return NULL;
	}
	if (j->kind != GFD_JOB_INGEST) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "%s for request %" PRIu64 ": that request is a generation", what, id);
		return NULL;
	}
	if (j->end_seen) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "%s for request %" PRIu64 " after its IngestEnd", what, id);
		return NULL;
	}
	return j;
}

static bool valid_path(const char *p)
{
	size_t len = strlen(p);
	if (len == 0 || len > 4096)
		return false;
	for (; *p; p++)
		if (*p == '\n' || *p == '\r')
			return false;
	return true;
}

static void on_ingest_data(gfd_server *s, struct gfd_conn *c, uint64_t id,
			   const Goldfinch__V1__IngestData *m)
{
	gfd_job *j = ingest_target(s, c, id, "IngestData");
	if (!j)
		return;
	switch (m->piece_case) {
	case GOLDFINCH__V1__INGEST_DATA__PIECE_TEXT:
		if (m->text.len)
			ingest_push(s, c, j, m->text.data, m->text.len, NULL, 0, NULL, 0, false);
		break;
	case GOLDFINCH__V1__INGEST_DATA__PIECE_FILE: {
		static const char head[] = "### File: ";
		const char *path = m->file ? m->file->path : NULL;
		if (!path || !valid_path(path)) {
			char msg[200];
			snprintf(msg, sizeof(msg), "FileStart with an empty path, a line break in it or over 4096 bytes");
			ingest_push(s, c, j, msg, strlen(msg), NULL, 0, NULL, 0, true);
			break;
		}
		/* "\n" closes the file before, then "### File: <path>\n" opens this one. */
		char *line;
		size_t plen = strlen(path);
		line = malloc(1 + sizeof(head) - 1 + plen + 1);
		if (!line) {
			conn_fatal(s, c, "out of memory");
			return;
		}
		size_t n = 0;
		if (j->file_open)
			line[n++] = '\n';
		memcpy(line + n, head, sizeof(head) - 1);
		n += sizeof(head) - 1;
		memcpy(line + n, path, plen);
		n += plen;
		line[n++] = '\n';
		ingest_push(s, c, j, line, n, NULL, 0, NULL, 0, false);
		free(line);
		j->file_open = true;
		break;
	}
	default: {
		const char msg[] = "IngestData with neither text nor file (a newer client?)";
		ingest_push(s, c, j, msg, sizeof(msg) - 1, NULL, 0, NULL, 0, true);
		break;
	}
	}
}

static void on_ingest_end(gfd_server *s, struct gfd_conn *c, uint64_t id)
{
	gfd_job *j = ingest_target(s, c, id, "IngestEnd");
	if (!j)
		return;
	if (j->file_open)
		ingest_push(s, c, j, "\n", 1, NULL, 0, NULL, 0, false);
	j->file_open = false;
	j->end_seen = true;
	pthread_mutex_lock(&j->mu);
	j->in_end = true;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
}

static void on_generate(gfd_server *s, struct gfd_conn *c, uint64_t id, const Goldfinch__V1__Generate *m)
{
	char err[GF_ERR_LEN];
	gf_sampling sp;
	const Goldfinch__V1__ErrorCode bad = GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST;
	if (m->has_no_context && m->no_context) {
		if (m->context && m->context[0]) {
			conn_error(s, c, id, bad, "Generate with no_context names no context (\"%.100s\" given)",
				   m->context);
			return;
		}
	} else if (!m->context || !m->context[0]) {
		conn_error(s, c, id, bad, "Generate needs a context: a name, #serial or key prefix (or no_context)");
		return;
	}
	if (has_control(m->context)) {
		conn_error(s, c, id, bad, "the context reference holds a control character: no name does");
		return;
	}
	if (!m->prompt || !m->prompt[0]) {
		conn_error(s, c, id, bad, "Generate needs a prompt: the question is empty");
		return;
	}
	uint32_t max_tokens = m->has_max_tokens ? m->max_tokens : GFD_DEFAULT_GEN_TOKENS;
	if (max_tokens < 1 || max_tokens > GFD_MAX_GEN_TOKENS) {
		conn_error(s, c, id, bad, "max_tokens %u must be in 1..%u", max_tokens, GFD_MAX_GEN_TOKENS);
		return;
	}
	gf_sampling_defaults(&sp);
	if (m->has_temperature)
		sp.temperature = m->temperature;
	if (m->has_top_k) {
		if (m->top_k > (uint32_t)INT32_MAX) {
			conn_error(s, c, id, bad, "top_k %u is out of range", m->top_k);
			return;
		}
		sp.top_k = (int32_t)m->top_k;
	}
	if (m->has_top_p)
		sp.top_p = m->top_p;
	if (m->has_min_p)
		sp.min_p = m->min_p;
	if (m->has_presence_penalty)
		sp.presence_penalty = m->presence_penalty;
	if (m->has_frequency_penalty)
		sp.frequency_penalty = m->frequency_penalty;
	if (m->has_seed)
		sp.seed = m->seed;
	if (gf_sampling_check(&sp, err)) {
		conn_error(s, c, id, bad, "%s", err);
		return;
	}
	if (m->n_stop > GFD_MAX_STOP) {
		conn_error(s, c, id, bad, "%zu stop strings: at most %d", m->n_stop, GFD_MAX_STOP);
		return;
	}
	for (size_t i = 0; i < m->n_stop; i++) {
		size_t len = strlen(m->stop[i]);
		if (len == 0 || len > GFD_MAX_STOP_BYTES) {
			conn_error(s, c, id, bad, "stop string %zu must be 1..%d bytes", i, GFD_MAX_STOP_BYTES);
			return;
		}
	}
	if (!job_admit(s, c, id))
		return;
	gfd_job *j = job_new(s, c, id, GFD_JOB_GENERATE);
	bool oom = !j;
	if (j) {
		j->context = strdup(m->context ? m->context : "");
		j->no_context = m->has_no_context && m->no_context;
		j->return_progress = m->has_return_progress && m->return_progress;
		j->prompt_len = strlen(m->prompt);
		j->prompt = strdup(m->prompt);
		j->sp = sp;
		j->max_tokens = max_tokens;
		j->stop = m->n_stop ? calloc(m->n_stop, sizeof(char *)) : NULL;
		oom = !j->context || !j->prompt || (m->n_stop && !j->stop);
		for (size_t i = 0; !oom && i < m->n_stop; i++) {
			if (!(j->stop[i] = strdup(m->stop[i])))
				oom = true;
			else
				j->n_stop++;
		}
	}
	if (oom) {
		gfd_job_free(j);
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_INTERNAL, "out of memory");
		return;
	}
	char what[200];
	if (j->no_context)
		snprintf(what, sizeof(what), "generate without a context, max %u tokens", max_tokens);
	else
		snprintf(what, sizeof(what), "generate on \"%.100s\", max %u tokens", m->context, max_tokens);
	job_accept(s, c, j, what);
}

/* Cancel{job}: any connection may stop any job by its server-wide number (every connection
 * here has passed Hello, and with it the auth token). The job ends as for a Cancel from its
 * own connection; the canceller gets CancelAccepted. */
static void on_cancel_number(gfd_server *s, struct gfd_conn *c, uint64_t id, uint64_t number)
{
	gfd_job *j = registry_find(s, number);
	if (!j) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND,
			   "cancel: no job %" PRIu64 " is queued or running on this server", number);
		return;
	}
	gfd_logf(s->log, "job %" PRIu64 " cancel requested by connection %" PRIu64 ", peer %s",
		 number, c->id, c->peer);
	job_cancel(s, j, GFD_CANCEL_CLIENT);   /* may free j (a queued job) */
	Goldfinch__V1__CancelAccepted ca = GOLDFINCH__V1__CANCEL_ACCEPTED__INIT;
	ca.has_job = true;
	ca.job = number;
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	r.id = id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_CANCEL_ACCEPTED;
	r.cancel_accepted = &ca;
	conn_send(s, c, &r);
}

static void on_cancel(gfd_server *s, struct gfd_conn *c, uint64_t id, const Goldfinch__V1__Cancel *m)
{
	if (m->has_job) {
		on_cancel_number(s, c, id, m->job);
		return;
	}
	gfd_job *j = conn_find_job(c, m->target);
	if (!j) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND,
			   "cancel: no job with request id %" PRIu64 " on this connection", m->target);
		return;
	}
	job_cancel(s, j, GFD_CANCEL_CLIENT);
}

/* Copies the live jobs for StatusReply.jobs (the loop owns them; the control thread
 * answers). -ENOMEM. */
static int jobs_snapshot(gfd_server *s, struct gfd_ctl_task *t)
{
	size_t n = 0;
	for (gfd_job *j = s->jobs_head; j; j = j->rnext)
		n++;
	if (!n)
		return 0;
	t->jobs = calloc(n, sizeof(*t->jobs));
	if (!t->jobs)
		return -ENOMEM;
	/* qmu once for every `queued` flag: a job is running from the moment a worker took it. */
	pthread_mutex_lock(&s->qmu);
	for (gfd_job *j = s->jobs_head; j; j = j->rnext) {
		struct gfd_job_snap *js = &t->jobs[t->n_jobs++];
		js->number = j->number;
		js->kind = j->kind;
		js->running = !j->queued;
		js->accepted_unix_ms = j->accepted_unix_ms;
		snprintf(js->peer, sizeof(js->peer), "%s", j->peer);
	}
	pthread_mutex_unlock(&s->qmu);
	size_t i = 0;
	for (gfd_job *j = s->jobs_head; j; j = j->rnext, i++) {
		struct gfd_job_snap *js = &t->jobs[i];
		char ser[32];
		const char *ctx = j->kind == GFD_JOB_GENERATE ? j->context : j->name;
		uint64_t serial = atomic_load(&j->serial);
		js->tokens_done = atomic_load(&j->tokens_done);
		if (!ctx && serial) {
			snprintf(ser, sizeof(ser), "#%" PRIu64, serial);
			ctx = ser;
		}
		if (ctx && !(js->context = strdup(ctx)))
			return -ENOMEM;
	}
	return 0;
}

static void on_control(gfd_server *s, struct gfd_conn *c, uint64_t id, int what, const char *ctx)
{
	struct gfd_ctl_task *t = calloc(1, sizeof(*t));
	if (!t || (ctx && !(t->context = strdup(ctx))) ||
	    (what == GOLDFINCH__V1__REQUEST__BODY_STATUS && jobs_snapshot(s, t))) {
		gfd_ctl_task_free(t);
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_INTERNAL, "out of memory");
		return;
	}
	t->conn_id = c->id;
	t->req_id = id;
	t->what = what;
	snprintf(t->peer, sizeof(t->peer), "%s", c->peer);
	gfd_ctl_push(s, t);
}

/* Reads a varint at *p (< end); false when malformed. */
static bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	*v = 0;
	for (int shift = 0; shift < 64 && *p < end; shift += 7) {
		uint8_t b = *(*p)++;
		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return true;
	}
	return false;
}

/* The name of a string field of message d (or of a message inside it) whose bytes on the wire
 * hold a NUL, or NULL. protobuf-c hands strings over NUL-terminated, so such a string would
 * arrive cut at its NUL: a name, a context reference, a prompt or a token other than the one
 * sent. The body has parsed already; anything odd here just ends the scan. */
static const char *wire_string_nul(const ProtobufCMessageDescriptor *d, const uint8_t *p,
				   size_t n, int depth)
{
	const uint8_t *end = p + n;
	uint64_t key, len;
	while (p < end && wire_varint(&p, end, &key)) {
		switch (key & 7) {
		case 0:
			if (!wire_varint(&p, end, &len))
				return NULL;
			break;
		case 1:
			p += 8;
			break;
		case 5:
			p += 4;
			break;
		case 2: {
			if (!wire_varint(&p, end, &len) || len > (uint64_t)(end - p))
				return NULL;
			const ProtobufCFieldDescriptor *f =
				protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
			if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(p, 0, len))
				return f->name;
			if (f && f->type == PROTOBUF_C_TYPE_MESSAGE && depth < WIRE_MAX_DEPTH) {
				const char *name = wire_string_nul(f->descriptor, p, len, depth + 1);
				if (name)
					return name;
			}
			p += len;
			break;
		}
		default:
			return NULL; /* groups: not in this protocol */
		}
	}
	return NULL;
}

static void handle_frame(gfd_server *s, struct gfd_conn *c, const uint8_t *body, uint32_t len)
{
	proto_request *req = proto_request_parse(body, len);
	if (!req) {
		conn_error(s, c, 0, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "a frame of %u bytes is not a valid Request message", len);
		return;
	}
	const uint64_t id = req->id;
	const char *nul = wire_string_nul(&goldfinch__v1__request__descriptor, body, len, 0);
	if (nul) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "request %" PRIu64 ": the string %s holds a NUL byte", id, nul);
		if (req->body_case == GOLDFINCH__V1__REQUEST__BODY_INGEST_START)
			remember_dead(c, id); /* its data will follow: dropped quietly */
		goto free_req;
	}
	if (!c->hello_done && req->body_case != GOLDFINCH__V1__REQUEST__BODY_HELLO) {
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "the first request on a connection must be Hello");
		goto free_req;
	}
	switch (req->body_case) {
	case GOLDFINCH__V1__REQUEST__BODY_HELLO:
		on_hello(s, c, id, req->hello);
		break;
	case GOLDFINCH__V1__REQUEST__BODY_INGEST_START:
		on_ingest_start(s, c, id, req->ingest_start);
		break;
	case GOLDFINCH__V1__REQUEST__BODY_INGEST_DATA:
		on_ingest_data(s, c, id, req->ingest_data);
		break;
	case GOLDFINCH__V1__REQUEST__BODY_INGEST_END:
		on_ingest_end(s, c, id);
		break;
	case GOLDFINCH__V1__REQUEST__BODY_GENERATE:
		on_generate(s, c, id, req->generate);
		break;
	case GOLDFINCH__V1__REQUEST__BODY_CANCEL:
		on_cancel(s, c, id, req->cancel);
		break;
	case GOLDFINCH__V1__REQUEST__BODY_STATUS:
	case GOLDFINCH__V1__REQUEST__BODY_LIST_CONTEXTS:
		on_control(s, c, id, (int)req->body_case, NULL);
		break;
	case GOLDFINCH__V1__REQUEST__BODY_DROP_CONTEXT:
		if (!req->drop_context->context || !req->drop_context->context[0])
			conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
				   "DropContext needs a context: a name, #serial or key prefix");
		else if (has_control(req->drop_context->context))
			conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
				   "the context reference holds a control character: no name does");
		else
			on_control(s, c, id, (int)req->body_case, req->drop_context->context);
		break;
	default:
		conn_error(s, c, id, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
			   "request %" PRIu64 " carries no request this server (protocol %d.%d) knows",
			   id, PROTO_VERSION_MAJOR, PROTO_VERSION_MINOR);
		break;
	}
free_req:
	proto_request_free(req);
}

/* Handles the whole frames buffered, unless the connection pauses or closes meanwhile. */
static void conn_process(gfd_server *s, struct gfd_conn *c)
{
	while (!c->dead && !c->closing && !c->paused_on) {
		const uint8_t *body;
		uint32_t len;
		int rc = proto_reader_next(&c->rd, &body, &len);
		if (rc == 0)
			break;
		if (rc < 0) {
			const uint8_t *p = c->rd.buf + c->rd.start;
			uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
				     (uint32_t)p[3] << 24;
			conn_error(s, c, 0, GOLDFINCH__V1__ERROR_CODE__ERROR_TOO_LARGE,
				   "frame of %u bytes exceeds the %u-byte limit%s", n, c->rd.max_frame,
				   c->hello_done ? "" : " before Hello");
			conn_fatal(s, c, "oversized frame");
			break;
		}
		handle_frame(s, c, body, len);
	}
}

/* A large frame grew the input buffer: once it is handled, let the memory go (what remains
 * buffered, the start of the next frame, moves to a small buffer). */
static void conn_release_input(struct gfd_conn *c)
{
	size_t pending = proto_reader_pending(&c->rd);
	if (c->rd.cap <= READ_KEEP || pending > READ_SLICE)
		return;
	proto_reader fresh;
	proto_reader_init(&fresh, c->rd.max_frame);
	if (pending && proto_reader_feed(&fresh, c->rd.buf + c->rd.start, pending)) {
		proto_reader_free(&fresh);
		return; /* keep the big one: it works */
	}
	proto_reader_free(&c->rd);
	c->rd = fresh;
}

static void conn_read(gfd_server *s, struct gfd_conn *c)
{
	if (c->draining) {
		uint8_t junk[16384];
		for (;;) {
			ssize_t n = recv(c->fd, junk, sizeof(junk), MSG_DONTWAIT);
			if (n > 0)
				continue;
			if (n < 0 && errno == EINTR)
				continue;
			if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
				conn_mark_dead(s, c, NULL);
			return;
		}
	}
	/* Frames are handled as they arrive, a slice at a time, so that a pause (a full ingest
	 * queue, a full output queue) stops the reading within one slice. */
	size_t total = 0;
	while (total < READ_BUDGET && conn_reading(c)) {
		uint8_t *dst;
		size_t avail, slice = c->hello_done ? READ_SLICE : HELLO_READ_SLICE;
		if (proto_reader_space(&c->rd, slice, &dst, &avail)) {
			conn_mark_dead(s, c, "out of memory for its input");
			return;
		}
		if (avail > slice)
			avail = slice;
		ssize_t n = recv(c->fd, dst, avail, MSG_DONTWAIT);
		if (n > 0) {
			proto_reader_commit(&c->rd, (size_t)n);
			total += (size_t)n;
			conn_process(s, c);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		/* EOF or a reset: the client is gone, and with it its jobs. */
		conn_mark_dead(s, c, n == 0 ? "client disconnected" : "connection reset");
		return;
	}
	conn_process(s, c);
	conn_release_input(c);
	conn_update_events(s, c);
}

/* ---- listeners ------------------------------------------------------------------------------ */

static void peer_name(int fd, const struct sockaddr_storage *ss, char *out, size_t cap)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)ss;
		char h[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &a->sin_addr, h, sizeof(h));
		snprintf(out, cap, "%s:%u", h, ntohs(a->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)ss;
		char h[INET6_ADDRSTRLEN];
		inet_ntop(AF_INET6, &a->sin6_addr, h, sizeof(h));
		snprintf(out, cap, "[%s]:%u", h, ntohs(a->sin6_port));
	} else {
		struct ucred cr;
		socklen_t len = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0)
			snprintf(out, cap, "unix pid %d uid %u", (int)cr.pid, (unsigned)cr.uid);
		else
			snprintf(out, cap, "unix");
	}
}

/* Counts a connection closed at accept; a flood of them costs the log a line every 10 s. */
static void refused(gfd_server *s, struct listener *l, const char *why)
{
	int64_t now = gfd_now_ns();
	l->refused++;
	if (now - l->refused_log_ns < 10000000000ll)
		return;
	gfd_logf(s->log, "refused %" PRIu64 " connection%s on %s: %s", l->refused,
		 l->refused == 1 ? "" : "s", l->name, why);
	l->refused = 0;
	l->refused_log_ns = now;
}

/* A new connection on fd (non-blocking from here on), owned by the loop; closes fd when it
 * cannot be added. */
static void conn_add(gfd_server *s, int fd, const char *peer, const char *origin)
{
	struct gfd_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->p.type = P_CONN;
	c->fd = fd;
	c->id = ++s->next_conn_id;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	proto_reader_init(&c->rd, s->max_frame < HELLO_MAX_FRAME ? s->max_frame : HELLO_MAX_FRAME);
	c->hello_deadline = gfd_now_ns() + HELLO_TIMEOUT_NS;
	c->events = EPOLLIN | EPOLLRDHUP;
	struct epoll_event e = { .events = c->events, .data.ptr = c };
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &e)) {
		close(fd);
		free(c);
		return;
	}
	struct conn_table *t = table(s);
	c->hnext = t->buckets[c->id % CONN_BUCKETS];
	t->buckets[c->id % CONN_BUCKETS] = c;
	c->next = t->all;
	if (t->all)
		t->all->prev = c;
	t->all = c;
	t->n++;
	pthread_mutex_lock(&s->stats.mu);
	s->stats.connections++;
	pthread_mutex_unlock(&s->stats.mu);
	gfd_logf(s->log, "connection %" PRIu64 " from %s on %s", c->id, c->peer, origin);
}

static void on_accept(gfd_server *s, struct listener *l)
{
	for (int k = 0; k < 64; k++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if ((errno == EMFILE || errno == ENFILE) && s->spare_fd >= 0) {
				/* Out of descriptors: take the connection with the spare one and close
				 * it, rather than spin on a listener that stays readable. */
				close(s->spare_fd);
				fd = accept(l->fd, NULL, NULL);
				if (fd >= 0)
					close(fd);
				s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
				refused(s, l, "out of file descriptors");
				continue;
			}
			return;
		}
		if (table(s)->n >= MAX_CONNS) {
			/* Closed at once: a flood of connections costs a descriptor for an instant. */
			char why[64];
			close(fd);
			snprintf(why, sizeof(why), "%d are open already", MAX_CONNS);
			refused(s, l, why);
			continue;
		}
		char peer[64];
		peer_name(fd, &ss, peer, sizeof(peer));
		conn_add(s, fd, peer, l->name);
	}
}

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)sa;
		return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)sa;
		if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr))
			return true;
		if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
			return a->sin6_addr.s6_addr[12] == 127;
	}
	return false;
}

static int listen_unix(struct listener *l, const char *path, char *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	if (!path[0] || strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, GF_ERR_LEN, "--listen unix:%.200s: the path must be 1..%zu bytes", path,
			 sizeof(sa.sun_path) - 1);
		return -EINVAL;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, GF_ERR_LEN, "--listen unix:%.200s: exists and is not a socket", path);
			return -EEXIST;
		}
		/* A socket file: in use by a live server, or left by one that died. */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(probe);
			snprintf(err, GF_ERR_LEN, "--listen unix:%.200s: another server is listening there", path);
			return -EADDRINUSE;
		}
		if (probe >= 0)
			close(probe);
		unlink(path);
	}
	l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* Linux creates the socket file with the socket's mode (less the umask): 0600 from the
	 * start, so that no other user can connect between bind and chmod. */
	if (l->fd < 0 || fchmod(l->fd, 0600) || bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    chmod(path, 0600) || listen(l->fd, SOMAXCONN)) {
		int rc = -errno;
		snprintf(err, GF_ERR_LEN, "--listen unix:%.200s: %s", path, strerror(errno));
		return rc;
	}
	l->is_unix = true;
	snprintf(l->path, sizeof(l->path), "%s", path);
	snprintf(l->name, sizeof(l->name), "unix:%.150s", path);
	return 0;
}

static int listen_tcp(gfd_server *s, struct listener *l, const char *addr, char *err)
{
	char host[256], port[32];
	const char *colon;
	if (addr[0] == '[') {
		const char *close_br = strchr(addr, ']');
		if (!close_br || close_br[1] != ':' || (size_t)(close_br - addr) > sizeof(host))
			goto bad;
		memcpy(host, addr + 1, (size_t)(close_br - addr - 1));
		host[close_br - addr - 1] = 0;
		colon = close_br + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon || (size_t)(colon - addr) >= sizeof(host))
			goto bad;
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = 0;
	}
	if (!colon[1] || strlen(colon + 1) >= sizeof(port))
		goto bad;
	snprintf(port, sizeof(port), "%s", colon + 1);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai = NULL;
	int grc = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
	if (grc) {
		snprintf(err, GF_ERR_LEN, "--listen %.200s: %s", addr, gai_strerror(grc));
		return -EINVAL;
	}
	if (!is_loopback(ai->ai_addr) && !s->auth_token) {
		freeaddrinfo(ai);
		snprintf(err, GF_ERR_LEN, "--listen %.150s: listening beyond loopback needs --auth-token-file",
			 addr);
		return -EPERM;
	}
	int one = 1;
	l->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0 || setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(l->fd, ai->ai_addr, ai->ai_addrlen) || listen(l->fd, SOMAXCONN)) {
		int rc = -errno;
		snprintf(err, GF_ERR_LEN, "--listen %.200s: %s", addr, strerror(errno));
		freeaddrinfo(ai);
		return rc;
	}
	freeaddrinfo(ai);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	getsockname(l->fd, (struct sockaddr *)&ss, &len);
	char name[128];
	peer_name(l->fd, &ss, name, sizeof(name));
	snprintf(l->name, sizeof(l->name), "tcp %.120s", name);
	return 0;
bad:
	snprintf(err, GF_ERR_LEN, "--listen %.150s: expected unix:/path, HOST:PORT or [IPV6]:PORT", addr);
	return -EINVAL;
}

static void close_listeners(gfd_server *s)
{
	struct listener *ls = s->listeners;
	for (int i = 0; i < s->n_listeners; i++) {
		if (ls[i].fd < 0)
			continue;
		epoll_ctl(s->epfd, EPOLL_CTL_DEL, ls[i].fd, NULL);
		close(ls[i].fd);
		ls[i].fd = -1;
		if (ls[i].is_unix)
			unlink(ls[i].path);
	}
}

/* ---- events from the workers ---------------------------------------------------------------- */

static void drain_events(gfd_server *s)
{
	uint64_t cnt;
	if (read(s->evfd, &cnt, sizeof(cnt)) < 0) {
	}
	pthread_mutex_lock(&s->evmu);
	struct gfd_event *ev = s->ev_head;
	s->ev_head = s->ev_tail = NULL;
	pthread_mutex_unlock(&s->evmu);
	while (ev) {
		struct gfd_event *next = ev->next;
		struct gfd_conn *c;
		gfd_job *j = ev->job;
		switch (ev->kind) {
		case GFD_EV_FRAME:
			c = conn_find(s, ev->conn_id);
			/* A connection closing after a fatal error (an oversized frame) gets
			 * nothing after that error: the protocol says it is the last word. */
			if (c && !c->dead && !c->draining && !c->closing) {
				conn_queue(s, c, ev);
				ev = NULL;
			}
			break;
		case GFD_EV_RESUME:
			c = j->conn;
			if (c && c->paused_on == j) {
				c->paused_on = NULL;
				conn_process(s, c);
				conn_update_events(s, c);
			}
			break;
		case GFD_EV_ADOPT: {
			/* An HTTP request's end of a socket pair (server_http.c): a client like any
			 * other, except that it cannot be refused at accept by the table's size. */
			const struct gfd_adopt *a = (const void *)ev->data;
			int fl = fcntl(a->fd, F_GETFL);
			if (s->stopping || fl < 0 || fcntl(a->fd, F_SETFL, fl | O_NONBLOCK))
				close(a->fd);
			else
				conn_add(s, a->fd, a->peer, "http");
			break;
		}
		case GFD_EV_JOB_END:
			c = j->conn;
			if (c) {
				if (j->kind == GFD_JOB_INGEST)
					remember_dead(c, j->req_id);
				conn_unlink_job(c, j);
				if (c->paused_on == j) {
					c->paused_on = NULL;
					conn_process(s, c);
				}
				conn_update_events(s, c);
			}
			job_release(s, j);
			break;
		}
		free(ev);
		ev = next;
	}
}

/* ---- shutdown ------------------------------------------------------------------------------- */

static void begin_shutdown(gfd_server *s, const char *why)
{
	if (s->stopping)
		return;
	s->stopping = true;
	gfd_logf(s->log, "shutting down (%s): no new connections or jobs; %" PRIu64 " jobs to stop",
		 why, s->live_jobs);
	close_listeners(s);
	for (struct gfd_conn *c = table(s)->all; c; c = c->next) {
		gfd_job *next;
		for (gfd_job *j = c->jobs; j; j = next) {
			next = j->cnext;
			job_cancel(s, j, GFD_CANCEL_SHUTDOWN);
		}
		/* Requests already buffered get their SHUTTING_DOWN answers now. */
		conn_process(s, c);
		conn_update_events(s, c);
	}
}

static void on_signal(gfd_server *s)
{
	struct signalfd_siginfo si;
	while (read(s->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (s->stopping)
			gfd_logf(s->log, "signal %u again: still stopping jobs", si.ssi_signo);
		begin_shutdown(s, si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
	}
}

/* ---- the loop ------------------------------------------------------------------------------- */

int gfd_server_run(gfd_server *s)
{
	struct epoll_event evs[64];
	int64_t flush_deadline = 0;
	gfd_logf(s->log, "ready: model \"%s\" (%d layers, C %d, vocab %d), %d job slots, queue %d, max frame %u",
		 s->info.model_name, s->info.cfg.n_layer, s->info.cfg.n_embd, s->info.cfg.vocab_size,
		 s->opt.max_jobs, s->opt.max_queue, s->max_frame);
	for (;;) {
		int n = epoll_wait(s->epfd, evs, 64, 250);
		if (n < 0 && errno != EINTR) {
			gfd_logf(s->log, "epoll_wait: %s", strerror(errno));
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct pollable *p = evs[i].data.ptr;
			uint32_t e = evs[i].events;
			if (p->type == P_LISTENER) {
				if (!s->stopping)
					on_accept(s, (struct listener *)p);
			} else if (p->type == P_SIGNAL) {
				on_signal(s);
			} else if (p->type == P_EVENT) {
				drain_events(s);
			} else {
				struct gfd_conn *c = (struct gfd_conn *)p;
				if (c->dead)
					continue;
				if (e & EPOLLIN)
					conn_read(s, c);
				if (!c->dead && (e & (EPOLLHUP | EPOLLERR)))
					conn_mark_dead(s, c, "connection reset");
				else if (!c->dead && (e & EPOLLRDHUP) && !conn_reading(c) && !c->closing)
					conn_mark_dead(s, c, "client disconnected");
				if (!c->dead && (e & EPOLLOUT))
					conn_write(s, c);
			}
		}
		/* Flush what this round queued, then reap. */
		struct conn_table *t = table(s);
		while (t->dirty) {
			struct gfd_conn *c = t->dirty;
			t->dirty = c->dirty_next;
			c->dirty = false;
			if (!c->dead && c->kick) {
				c->kick = false;
				conn_process(s, c);
				conn_update_events(s, c);
			}
			if (!c->dead)
				conn_write(s, c);
		}
		int64_t now = gfd_now_ns();
		bool pending_out = false;
		for (struct gfd_conn *c = t->all, *next; c; c = next) {
			next = c->next;
			if (!c->dead && c->closing && now > c->close_deadline)
				conn_mark_dead(s, c, c->close_reason);
			if (!c->dead && !c->closing && !c->hello_done && now > c->hello_deadline) {
				conn_error(s, c, 0, GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST,
					   "no Hello within %lld s: closing", HELLO_TIMEOUT_NS / 1000000000);
				conn_fatal(s, c, "no Hello in time");
				conn_write(s, c);
			}
			if (c->dead)
				conn_destroy(s, c);
			else if (c->out_head)
				pending_out = true;
		}
		if (s->stopping && s->live_jobs == 0) {
			if (!flush_deadline)
				flush_deadline = now + SHUTDOWN_FLUSH_NS;
			if (!pending_out || now > flush_deadline)
				break;
		}
	}
	gfd_logf(s->log, "stopped: every job ended; closing %zu connections", table(s)->n);
	while (table(s)->all) {
		struct gfd_conn *c = table(s)->all;
		if (!c->dead)
			conn_mark_dead(s, c, "server stopped");
		conn_destroy(s, c);
	}
	return 0;
}

/* ---- set-up and teardown --------------------------------------------------------------------- */

static int read_token(gfd_server *s, const char *path, char *err)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		int rc = -errno;
		snprintf(err, GF_ERR_LEN, "--auth-token-file %.200s: %s", path, strerror(errno));
		return rc;
	}
	uint8_t buf[4097];
	size_t n = fread(buf, 1, sizeof(buf), f);
	bool bad = ferror(f);
	fclose(f);
	if (bad || n == sizeof(buf)) {
		snprintf(err, GF_ERR_LEN, "--auth-token-file %.200s: %s", path,
			 bad ? "read error" : "longer than 4096 bytes");
		return -EINVAL;
	}
	/* The trailing newline an editor adds is not part of the secret. */
	if (n && buf[n - 1] == '\n')
		n--;
	if (n && buf[n - 1] == '\r')
		n--;
	if (!n) {
		snprintf(err, GF_ERR_LEN, "--auth-token-file %.200s: the token is empty", path);
		return -EINVAL;
	}
	s->auth_token = malloc(n);
	if (!s->auth_token) {
		snprintf(err, GF_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	memcpy(s->auth_token, buf, n);
	s->auth_len = n;
	memset(buf, 0, sizeof(buf));
	return 0;
}

int gfd_server_create(gfd_server **out, const gfd_options *o, gfd_backend *be, gfd_log *log,
		      char *err)
{
	int rc;
	gfd_server *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, GF_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	s->opt = *o;
	s->be = *be;
	be->ops = NULL; /* the server owns it now */
	s->be.ops->info(s->be.self, &s->info);
	s->log = log;
	s->epfd = s->sigfd = s->evfd = s->spare_fd = -1;
	s->max_frame = (uint32_t)o->max_frame;
	/* Room for one whole frame while the worker eats the one before. */
	s->ingest_queue_bytes = o->max_frame > INGEST_QUEUE_MIN ? o->max_frame : INGEST_QUEUE_MIN;
	gfd_stats_init(&s->stats);
	pthread_mutex_init(&s->evmu, NULL);
	pthread_mutex_init(&s->qmu, NULL);
	pthread_cond_init(&s->qcv, NULL);
	pthread_mutex_init(&s->cmu, NULL);
	pthread_cond_init(&s->ccv, NULL);
	*out = s;

	s->conns = calloc(1, sizeof(struct conn_table));
	s->listeners = calloc((size_t)o->n_listen, sizeof(struct listener));
	if (!s->conns || !s->listeners) {
		snprintf(err, GF_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	if (o->auth_token_file && (rc = read_token(s, o->auth_token_file, err)))
		return rc;

	/* SIGTERM and SIGINT arrive through the loop (main blocked them in every thread). */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	s->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	s->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (s->epfd < 0 || s->sigfd < 0 || s->evfd < 0) {
		rc = -errno;
		snprintf(err, GF_ERR_LEN, "epoll/signalfd/eventfd: %s", strerror(errno));
		return rc;
	}
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = &sig_pollable };
	epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->sigfd, &e);
	e.data.ptr = &ev_pollable;
	epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->evfd, &e);

	struct listener *ls = s->listeners;
	for (int i = 0; i < o->n_listen; i++) {
		struct listener *l = &ls[i];
		l->p.type = P_LISTENER;
		l->fd = -1;
		s->n_listeners++;
		const char *a = o->listen[i];
		rc = !strncmp(a, "unix:", 5) ? listen_unix(l, a + 5, err) : listen_tcp(s, l, a, err);
		if (rc)
			return rc;
		struct epoll_event le = { .events = EPOLLIN, .data.ptr = l };
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, l->fd, &le)) {
			rc = -errno;
			snprintf(err, GF_ERR_LEN, "epoll: %s", strerror(errno));
			return rc;
		}
		gfd_logf(log, "listening on %s%s", l->name, s->auth_token ? " (auth token required)" : "");
	}
	if ((rc = gfd_workers_start(s, err)))
		return rc;
	if (o->metrics && (rc = gfd_metrics_start(&s->metrics, o->metrics, s, err)))
		return rc;
	return 0;
}

void gfd_server_free(gfd_server *s)
{
	if (!s)
		return;
	gfd_metrics_stop(s->metrics);
	/* Connections first: that cancels whatever jobs remain (only after a failure of the
	 * loop), so that the workers end and can be joined. */
	if (s->conns) {
		while (table(s)->all) {
			struct gfd_conn *c = table(s)->all;
			c->dead = true;
			conn_destroy(s, c);
		}
	}
	gfd_workers_stop(s);
	for (struct gfd_event *ev = s->ev_head, *next; ev; ev = next) {
		next = ev->next;
		if (ev->kind == GFD_EV_JOB_END)
			gfd_job_free(ev->job);
		else if (ev->kind == GFD_EV_ADOPT)
			close(((const struct gfd_adopt *)(const void *)ev->data)->fd);
		free(ev);
	}
	if (s->listeners)
		close_listeners(s);
	free(s->conns);
	free(s->listeners);
	if (s->epfd >= 0)
		close(s->epfd);
	if (s->sigfd >= 0)
		close(s->sigfd);
	if (s->evfd >= 0)
		close(s->evfd);
	if (s->spare_fd >= 0)
		close(s->spare_fd);
	if (s->auth_token) {
		memset(s->auth_token, 0, s->auth_len);
		free(s->auth_token);
	}
	gfd_backend_close(&s->be);
	pthread_mutex_destroy(&s->evmu);
	pthread_mutex_destroy(&s->qmu);
	pthread_cond_destroy(&s->qcv);
	pthread_mutex_destroy(&s->cmu);
	pthread_cond_destroy(&s->ccv);
	gfd_stats_destroy(&s->stats);
	free(s);
}
