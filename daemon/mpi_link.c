/*
 * mpi_link.c — see mpi_link.h. The link thread: post sends from the outbox, complete them,
 * receive whatever has arrived into mailboxes, watch the local peers. When nothing moves:
 * while a stream's thread waits for a message, poll again at once (yielding the core at each
 * turn) for up to SPIN_MS ($GOLDFINCH_LINK_SPIN_MS) since the last message moved, then every
 * IDLE_MAX_US at most; while none waits, the compute thread beside it has the core, so sleep
 * between polls, growing to IDLE_BUSY_US ($GOLDFINCH_LINK_IDLE_US). Polling without sleep
 * keeps a waiting rank's CPU busy between a pipeline's chunks: on a virtual machine an idle
 * CPU goes back to the host, and 8 ranks ingested 6% slower on average (daemon/README.md).
 */
#include "mpi_link.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define GFM_TAG 7
#define BOX_BUCKETS 256
#define IDLE_MAX_US 200      /* between polls while a stream waits for a message */
#define IDLE_BUSY_US 2000    /* while none does (its threads compute, or nothing runs) */
#define WATCH_EVERY_NS 100000000ll /* peers' liveness, every 100 ms */
#define SPIN_MS 1000         /* polling without sleep while a stream waits, after the last message */

struct gfm_box {
	struct gfm_link *link;
	uint32_t stream;
	gfm_msg *head, *tail;
	pthread_cond_t cond;
	struct gfm_box *next;   /* hash chain */
};

struct out_msg {
	int dest;
	size_t len;
	MPI_Request req;
	struct out_msg *next;
	unsigned char buf[];    /* header then payload */
};

/* A message being received (MPI_Imrecv): routed once complete, in the order matched. */
struct in_msg {
	MPI_Request req;
	int source, count;
	gfm_msg *m;
	struct in_msg *next;
};

struct peer {
	int pid;
	char host[64];
};

struct gfm_link {
	MPI_Comm comm;
	pthread_t watcher;            /* peers' liveness: apart, as MPI may block on a dead peer */
	int rank, size;
	struct peer *peers;
	pthread_t thread;
	pthread_mutex_t mu;           /* boxes, outbox, control, failure */
	pthread_cond_t outbox_cond;
	struct out_msg *outbox, *outbox_tail;
	struct gfm_box *boxes[BOX_BUCKETS];
	gfm_box control;
	uint32_t next_stream;
	uint64_t sends, fail_send_at;  /* fault injection: the send that fails (0: none) */
	bool stop;
	int idle_max_us;              /* longest sleep between polls while no stream waits */
	int64_t spin_ns;              /* polling without sleep while one waits (0: never) */
	int waiters;                  /* stream threads blocked for a message */
	int streams;                  /* open stream mailboxes */
	char failure[256];
};

void gfm_msg_free(gfm_msg *m)
{
	free(m);
}

/* Caller holds l->mu. */
static void fail_locked(gfm_link *l, const char *why)
{
	if (l->failure[0])
		return;
	snprintf(l->failure, sizeof(l->failure), "%s", why);
	pthread_cond_broadcast(&l->control.cond);
	for (int i = 0; i < BOX_BUCKETS; i++)
		for (gfm_box *b = l->boxes[i]; b; b = b->next)
			pthread_cond_broadcast(&b->cond);
}

void gfm_link_fail(gfm_link *l, const char *why)
{
	pthread_mutex_lock(&l->mu);
	fail_locked(l, why);
	pthread_mutex_unlock(&l->mu);
}

const char *gfm_link_failure(gfm_link *l)
{
	/* Written once under the lock, never changed after: a racy read sees "" or the line. */
	return l->failure;
}

static gfm_box *box_find(gfm_link *l, uint32_t stream)
{
	for (gfm_box *b = l->boxes[stream % BOX_BUCKETS]; b; b = b->next)
		if (b->stream == stream)
			return b;
	return NULL;
}

static gfm_box *box_create_locked(gfm_link *l, uint32_t stream)
{
	gfm_box *b = box_find(l, stream);
	if (b)
		return b;
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->link = l;
	b->stream = stream;
	l->streams++;
	pthread_cond_init(&b->cond, NULL);
	b->next = l->boxes[stream % BOX_BUCKETS];
	l->boxes[stream % BOX_BUCKETS] = b;
	return b;
}

static void box_push_locked(gfm_box *b, gfm_msg *m)
{
	m->next = NULL;
	if (b->tail)
		b->tail->next = m;
	else
		b->head = m;
	b->tail = m;
	pthread_cond_signal(&b->cond);
}

gfm_box *gfm_box_open(gfm_link *l, uint32_t stream)
{
	pthread_mutex_lock(&l->mu);
	gfm_box *b = box_create_locked(l, stream);
	pthread_mutex_unlock(&l->mu);
	return b;
}

void gfm_box_close(gfm_link *l, gfm_box *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&l->mu);
	gfm_box **pp = &l->boxes[b->stream % BOX_BUCKETS];
	while (*pp && *pp != b)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = b->next;
		l->streams--;
	}
	pthread_mutex_unlock(&l->mu);
	for (gfm_msg *m = b->head, *next; m; m = next) {
		next = m->next;
		gfm_msg_free(m);
	}
	pthread_cond_destroy(&b->cond);
	free(b);
}

static int pop_locked(gfm_link *l, gfm_box *b, int timeout_ms, gfm_msg **out)
{
	struct timespec until;
	if (timeout_ms >= 0) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += timeout_ms / 1000;
		until.tv_nsec += (long)(timeout_ms % 1000) * 1000000l;
		if (until.tv_nsec >= 1000000000l) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000l;
		}
	}
	/* A stream's thread that waits makes the link thread poll at its fast pace. */
	const bool counts = b != &l->control;
	bool waiting = false;
	int rc = 0;
	while (!b->head) {
		if (l->failure[0]) {
			rc = -EPIPE;
			break;
		}
		if (counts && !waiting) {
			waiting = true;
			if (l->waiters++ == 0)
				pthread_cond_signal(&l->outbox_cond);
		}
		if (timeout_ms < 0)
			pthread_cond_wait(&b->cond, &l->mu);
		else if (pthread_cond_timedwait(&b->cond, &l->mu, &until) == ETIMEDOUT && !b->head) {
			rc = l->failure[0] ? -EPIPE : -ETIMEDOUT;
			break;
		}
	}
	if (waiting)
		l->waiters--;
	if (rc)
		return rc;
	*out = b->head;
	b->head = b->head->next;
	if (!b->head)
		b->tail = NULL;
	return 0;
}

int gfm_box_pop(gfm_box *b, int timeout_ms, gfm_msg **out)
{
	gfm_link *l = b->link;
	pthread_mutex_lock(&l->mu);
	int rc = pop_locked(l, b, timeout_ms, out);
	pthread_mutex_unlock(&l->mu);
	return rc;
}

int gfm_control_pop(gfm_link *l, int timeout_ms, gfm_msg **out)
{
	pthread_mutex_lock(&l->mu);
	int rc = pop_locked(l, &l->control, timeout_ms, out);
	pthread_mutex_unlock(&l->mu);
	return rc;
}

void gfm_link_fail_send_at(gfm_link *l, uint64_t n)
{
	pthread_mutex_lock(&l->mu);
	l->fail_send_at = n ? l->sends + n : 0;
	pthread_mutex_unlock(&l->mu);
}

uint64_t gfm_link_sends(gfm_link *l)
{
	pthread_mutex_lock(&l->mu);
	uint64_t n = l->sends;
	pthread_mutex_unlock(&l->mu);
	return n;
}

uint32_t gfm_new_stream(gfm_link *l)
{
	pthread_mutex_lock(&l->mu);
	uint32_t s = ++l->next_stream;
	pthread_mutex_unlock(&l->mu);
	return s;
}

int gfm_link_rank(const gfm_link *l)
{
	return l->rank;
}

int gfm_link_size(const gfm_link *l)
{
	return l->size;
}

int gfm_send3(gfm_link *l, int dest, const gfm_hdr *h, const void *a, size_t alen,
	      const void *b, size_t blen, const void *c, size_t clen)
{
	struct out_msg *o = malloc(sizeof(*o) + sizeof(*h) + alen + blen + clen);
	if (!o)
		return -ENOMEM;
	o->dest = dest;
	o->len = sizeof(*h) + alen + blen + clen;
	o->next = NULL;
	memcpy(o->buf, h, sizeof(*h));
	if (alen)
		memcpy(o->buf + sizeof(*h), a, alen);
	if (blen)
		memcpy(o->buf + sizeof(*h) + alen, b, blen);
	if (clen)
		memcpy(o->buf + sizeof(*h) + alen + blen, c, clen);
	pthread_mutex_lock(&l->mu);
	if (++l->sends == l->fail_send_at && !l->failure[0]) {
		char why[256];
		snprintf(why, sizeof(why), "injected fault: message #%llu of rank %d (type %u to rank %d) failed",
			 (unsigned long long)l->sends, l->rank, h->type, dest);
		fail_locked(l, why);
	}
	if (l->failure[0]) {
		pthread_mutex_unlock(&l->mu);
		free(o);
		return -EPIPE;
	}
	if (l->outbox_tail)
		l->outbox_tail->next = o;
	else
		l->outbox = o;
	l->outbox_tail = o;
	pthread_cond_signal(&l->outbox_cond);
	pthread_mutex_unlock(&l->mu);
	return 0;
}

int gfm_send2(gfm_link *l, int dest, const gfm_hdr *h, const void *a, size_t alen,
	      const void *b, size_t blen)
{
	return gfm_send3(l, dest, h, a, alen, b, blen, NULL, 0);
}

int gfm_send(gfm_link *l, int dest, const gfm_hdr *h, const void *payload, size_t len)
{
	return gfm_send2(l, dest, h, payload, len, NULL, 0);
}

/* Routes a received message: to its stream's box, to the control queue (stream 0), or, for
 * the first message of a stream this rank has not opened, to a new box with a copy of its
 * header in the control queue so the serve loop starts a thread for it. */
static void route(gfm_link *l, gfm_msg *m)
{
	pthread_mutex_lock(&l->mu);
	if (m->h.stream == 0) {
		box_push_locked(&l->control, m);
		pthread_mutex_unlock(&l->mu);
		return;
	}
	gfm_box *b = box_find(l, m->h.stream);
	const bool opener = m->h.type == GFM_BEGIN || m->h.type == GFM_RESUME ||
			    m->h.type == GFM_OPEN;
	if (!b && opener && l->rank != 0) {
		gfm_msg *note = calloc(1, sizeof(*note));
		b = box_create_locked(l, m->h.stream);
		if (!note || !b) {
			free(note);
			fail_locked(l, "out of memory for a new stream's mailbox");
			pthread_mutex_unlock(&l->mu);
			gfm_msg_free(m);
			return;
		}
		note->h = m->h;
		note->source = m->source;
		box_push_locked(&l->control, note);
	}
	if (b)
		box_push_locked(b, m);
	else
		gfm_msg_free(m); /* a stream that has ended: late credits and the like */
	pthread_mutex_unlock(&l->mu);
}

static bool peer_alive(int pid)
{
	char path[64], buf[256];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	/* pid (comm) S ...: the state follows the last ')'. A zombie is dead to us. */
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static void watch_peers(gfm_link *l)
{
	const char *me = l->peers[l->rank].host;
	for (int r = 0; r < l->size; r++) {
		if (r == l->rank || strcmp(l->peers[r].host, me))
			continue;
		if (!peer_alive(l->peers[r].pid)) {
			char why[256];
			snprintf(why, sizeof(why), "rank %d (pid %d on %s) has died", r,
				 l->peers[r].pid, l->peers[r].host);
			gfm_link_fail(l, why);
			return;
		}
	}
}

/* The watcher runs beside the link thread because the link thread can be stuck inside MPI
 * on a message from a peer that died mid-transfer; failing the link from here wakes every
 * waiting stream all the same. */
static void *watch_thread(void *arg)
{
	gfm_link *l = arg;
	const struct timespec pause = { 0, WATCH_EVERY_NS };
	for (;;) {
		pthread_mutex_lock(&l->mu);
		const bool done = l->stop || l->failure[0];
		pthread_mutex_unlock(&l->mu);
		if (done)
			return NULL;
		watch_peers(l);
		nanosleep(&pause, NULL);
	}
}

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static void *link_thread(void *arg)
{
	gfm_link *l = arg;
	struct out_msg *pending = NULL;
	struct in_msg *incoming = NULL, **incoming_tail = &incoming;
	int idle_us = 0;
	uint64_t wakes = 0, spins = 0;
	int64_t spin_from = 0;        /* when polling without sleep began; 0: not spinning */
	for (;;) {
		bool progress = false;
		pthread_mutex_lock(&l->mu);
		struct out_msg *batch = l->outbox;
		l->outbox = l->outbox_tail = NULL;
		const bool stop = l->stop;
		const bool failed = l->failure[0] != 0;
		pthread_mutex_unlock(&l->mu);
		for (struct out_msg *o = batch, *next; o; o = next) {
			next = o->next;
			if (failed) {
				free(o);
				continue;
			}
			int rc = MPI_Isend(o->buf, (int)o->len, MPI_BYTE, o->dest, GFM_TAG, l->comm,
					   &o->req);
			if (rc != MPI_SUCCESS) {
				char why[256];
				snprintf(why, sizeof(why), "sending to rank %d failed (MPI error %d)",
					 o->dest, rc);
				gfm_link_fail(l, why);
				free(o);
				continue;
			}
			o->next = pending;
			pending = o;
			progress = true;
		}
		for (struct out_msg **pp = &pending; *pp;) {
			int done = 0;
			struct out_msg *o = *pp;
			if (MPI_Test(&o->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
				char why[256];
				snprintf(why, sizeof(why), "a message to rank %d was lost (MPI error)",
					 o->dest);
				gfm_link_fail(l, why);
				done = 1;
			}
			if (done) {
				*pp = o->next;
				free(o);
				progress = true;
			} else {
				pp = &o->next;
			}
		}
		/* Sends to a dead peer never complete: after a failure, stopping abandons them. */
		if (stop && ((!pending && !incoming) || failed))
			break;
		/* Receives are posted without blocking: a blocking one would spin on the core the
		 * compute thread shares until the sender's link thread moves the data along. */
		for (int flag = 1; flag && !failed;) {
			MPI_Message msg;
			MPI_Status st;
			if (MPI_Improbe(MPI_ANY_SOURCE, GFM_TAG, l->comm, &flag, &msg, &st) != MPI_SUCCESS) {
				gfm_link_fail(l, "probing for messages failed (MPI error)");
				break;
			}
			if (!flag)
				break;
			int count = 0;
			MPI_Get_count(&st, MPI_BYTE, &count);
			struct in_msg *in = malloc(sizeof(*in));
			gfm_msg *m = malloc(sizeof(*m) + (size_t)(count > 0 ? count : 1));
			if (!in || !m) {
				free(in);
				free(m);
				gfm_link_fail(l, "out of memory receiving a message");
				break;
			}
			*in = (struct in_msg){ .source = st.MPI_SOURCE, .count = count, .m = m };
			if (MPI_Imrecv(m + 1, count, MPI_BYTE, &msg, &in->req) != MPI_SUCCESS) {
				char why[256];
				snprintf(why, sizeof(why), "a message from rank %d was lost", st.MPI_SOURCE);
				gfm_link_fail(l, why);
				free(in);
				free(m);
				break;
			}
			*incoming_tail = in;
			incoming_tail = &in->next;
			progress = true;
		}
		while (incoming) {
			struct in_msg *in = incoming;
			int done = 0;
			if (MPI_Test(&in->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS ||
			    (done && (size_t)in->count < sizeof(gfm_hdr))) {
				char why[256];
				snprintf(why, sizeof(why), "a message from rank %d was lost", in->source);
				gfm_link_fail(l, why);
				done = 1;
				free(in->m);
				in->m = NULL;
			}
			if (!done)
				break;
			incoming = in->next;
			if (!incoming)
				incoming_tail = &incoming;
			gfm_msg *m = in->m;
			progress = true;
			if (m) {
				unsigned char *raw = (unsigned char *)(m + 1);
				memcpy(&m->h, raw, sizeof(gfm_hdr));
				m->source = in->source;
				m->len = (size_t)in->count - sizeof(gfm_hdr);
				m->payload = raw + sizeof(gfm_hdr);
				m->next = NULL;
				route(l, m);
			}
			free(in);
		}
		if (progress) {
			idle_us = 0;
			spin_from = 0;
			continue;
		}
		pthread_mutex_lock(&l->mu);
		/* Only while every stream of the rank waits: none computes beside the polls. */
		if (l->waiters && l->waiters >= l->streams && l->spin_ns && !l->outbox && !l->stop) {
			const int64_t now = mono_ns();
			if (!spin_from)
				spin_from = now;
			if (now - spin_from < l->spin_ns) {
				pthread_mutex_unlock(&l->mu);
				spins++;
				sched_yield(); /* the compute thread, once woken, gets the core at once */
				continue;
			}
		} else {
			spin_from = 0;
		}
		/* Nothing moved: wait for an outgoing message, briefly (incoming ones and send
		 * completions are only seen by polling MPI). Every poll takes the core from the
		 * rank's compute thread (they share it), so while no stream waits for a message
		 * the polls are sparse (idle_max_us); a thread that starts waiting wakes this one
		 * and the pace is fast again (IDLE_MAX_US). */
		const int cap = l->waiters ? IDLE_MAX_US : l->idle_max_us;
		idle_us = idle_us ? (idle_us * 2 > cap ? cap : idle_us * 2) : 5;
		wakes++;
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += (long)idle_us * 1000l;
		if (until.tv_nsec >= 1000000000l) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000l;
		}
		const int waiters = l->waiters;
		if (!l->outbox && !l->stop)
			pthread_cond_timedwait(&l->outbox_cond, &l->mu, &until);
		if (l->waiters > waiters)
			idle_us = 0; /* a thread began to wait: poll now, then fast */
		pthread_mutex_unlock(&l->mu);
	}
	/* Sends and receives that could not complete (a failed link: the peer is gone, or the
	 * process is about to exit) are abandoned with their buffers. */
	for (struct out_msg *o = pending, *next; o; o = next) {
		next = o->next;
		free(o);
	}
	for (struct in_msg *in = incoming, *next; in; in = next) {
		next = in->next;
		free(in->m);
		free(in);
	}
	if (getenv("GOLDFINCH_RANK_STATS")) {
		struct timespec cpu;
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
		fprintf(stderr, "rank %d: link thread used %.3f s of CPU, %llu idle polls, %llu polls without sleep\n",
			l->rank, (double)cpu.tv_sec + 1e-9 * (double)cpu.tv_nsec,
			(unsigned long long)wakes, (unsigned long long)spins);
	}
	return NULL;
}

/* Polling without sleep pays only where each rank has a core of its own, not where this host
 * runs more ranks than it has CPUs. $GOLDFINCH_LINK_SPIN_MS decides when given. */
static long spin_default_ms(const gfm_link *l)
{
	const char *v = getenv("GOLDFINCH_LINK_SPIN_MS");
	if (v && *v) {
		char *end;
		long ms = strtol(v, &end, 10);
		if (!*end && ms >= 0 && ms <= 60000)
			return ms;
		fprintf(stderr, "rank %d: GOLDFINCH_LINK_SPIN_MS=%s is not 0..60000 (ms); ignored\n",
			l->rank, v);
	}
	int here = 0;
	for (int r = 0; r < l->size; r++)
		here += !strcmp(l->peers[r].host, l->peers[l->rank].host);
	return here <= sysconf(_SC_NPROCESSORS_ONLN) ? SPIN_MS : 0;
}

int gfm_link_start(gfm_link **out, MPI_Comm comm, char *err)
{
	gfm_link *l = calloc(1, sizeof(*l));
	if (!l) {
		if (err)
			snprintf(err, 256, "out of memory");
		return -ENOMEM;
	}
	l->comm = comm;
	/* Polling costs the core it shares with the rank's compute; waiting costs latency. */
	const char *idle = getenv("GOLDFINCH_LINK_IDLE_US");
	l->idle_max_us = idle && atoi(idle) >= 5 && atoi(idle) <= 100000 ? atoi(idle) : IDLE_BUSY_US;
	MPI_Comm_rank(comm, &l->rank);
	MPI_Comm_size(comm, &l->size);
	MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->outbox_cond, NULL);
	pthread_cond_init(&l->control.cond, NULL);
	l->control.link = l;
	l->peers = calloc((size_t)l->size, sizeof(struct peer));
	struct peer me = { .pid = (int)getpid() };
	gethostname(me.host, sizeof(me.host) - 1);
	if (!l->peers ||
	    MPI_Allgather(&me, (int)sizeof(me), MPI_BYTE, l->peers, (int)sizeof(me), MPI_BYTE,
			  comm) != MPI_SUCCESS) {
		if (err)
			snprintf(err, 256, "cannot exchange the ranks' addresses");
		free(l->peers);
		free(l);
		return -EIO;
	}
	l->spin_ns = spin_default_ms(l) * 1000000ll;
	if (pthread_create(&l->thread, NULL, link_thread, l) ||
	    pthread_create(&l->watcher, NULL, watch_thread, l)) {
		if (err)
			snprintf(err, 256, "cannot start the MPI link thread");
		free(l->peers);
		free(l);
		return -EAGAIN;
	}
	*out = l;
	return 0;
}

void gfm_link_stop(gfm_link *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->mu);
	l->stop = true;
	const bool failed = l->failure[0] != 0;
	pthread_cond_signal(&l->outbox_cond);
	pthread_mutex_unlock(&l->mu);
	pthread_join(l->watcher, NULL);
	if (failed) {
		/* The link thread may be stuck in MPI on a dead peer's message: give it a second,
		 * then leave it, and the link with it, to the process's exit. */
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 1;
		if (pthread_timedjoin_np(l->thread, NULL, &until))
			return;
	} else {
		pthread_join(l->thread, NULL);
	}
	for (int i = 0; i < BOX_BUCKETS; i++)
		while (l->boxes[i])
			gfm_box_close(l, l->boxes[i]);
	for (gfm_msg *m = l->control.head, *next; m; m = next) {
		next = m->next;
		gfm_msg_free(m);
	}
	pthread_cond_destroy(&l->control.cond);
	pthread_cond_destroy(&l->outbox_cond);
	pthread_mutex_destroy(&l->mu);
	free(l->peers);
	free(l);
}
