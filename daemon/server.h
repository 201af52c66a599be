/*
 * server.h — goldfinchd's front end: options, the log, counters, the network loop, the job
 * queue and its workers, the control thread and the metrics endpoint. Internal to daemon/;
 * daemon/README.md describes the behaviour, protocol/README.md the wire.
 *
 * Threads and who owns what:
 *   - the loop thread (server_loop.c) owns connections, listeners, job structs and the
 *     registry of live jobs (by server-wide number): it accepts, reads frames, answers
 *     Hello and Cancel (of this connection's jobs, or of any by number), copies the jobs
 *     for Status, queues jobs, writes responses; it never blocks (non-blocking sockets, no
 *     store or engine calls);
 *   - --max-jobs worker threads (server_jobs.c) take jobs from the pending queue and run
 *     them through the backend (server_backend.h);
 *   - one control thread (server_jobs.c) answers Status, ListContexts and DropContext,
 *     which touch the store (a drop commits the manifest: fsync) but never wait for jobs;
 *   - libmicrohttpd's thread serves --metrics (server_metrics.c).
 * Workers and the control thread hand responses to the loop as ready-made frames through
 * the event queue (a locked list + an eventfd). A job is freed only by the loop, after the
 * worker's last event for it (GFD_EV_JOB_END).
 */
#ifndef GFD_SERVER_H
#define GFD_SERVER_H

#include "goldfinch_version.h"
#include "protocol.h"
#include "server_backend.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define GFD_VERSION GOLDFINCH_VERSION   /* CMake's project version */
#define GFD_MAX_LISTEN 16
#define GFD_DEFAULT_LISTEN "127.0.0.1:7433"
#define GFD_DEFAULT_PORT "7433"    /* --port's without --host, and --host's without --port */
/* The variable of --server-file (not gf's GOLDFINCH_SERVER_FILE: see goldfinchd.c). */
#define GFD_ENV_SERVER_FILE "GOLDFINCH_WRITE_SERVER_FILE"
#define GFD_MAX_STOP 16          /* stop strings per Generate */
#define GFD_MAX_STOP_BYTES 256   /* bytes per stop string */
#define GFD_MAX_GEN_TOKENS (1u << 20)
/* With return_progress, a prompt runs in slices of about this many tokens (whole engine
 * chunks), a PromptProgress after each. */
#define GFD_PROGRESS_SLICE_TOKENS 1024
#define GFD_DEFAULT_GEN_TOKENS 256

/* ---- options -------------------------------------------------------------------------- */
typedef struct gfd_options {
	const char *model_path;
	const char *cache_dir;
	const char *listen[GFD_MAX_LISTEN];
	int n_listen;
	const char *auth_token_file;
	uint64_t max_frame;           /* bytes */
	int max_jobs;                 /* jobs running at once */
	int max_queue;                /* jobs waiting */
	uint64_t max_context_tokens;  /* 0 = unlimited */
	uint64_t disk_budget;         /* 0 = unlimited */
	int threads;                  /* 0 = OpenBLAS's default */
	uint64_t checkpoint_tokens;   /* 0 = engine default */
	cs_dtype c_dtype;
	uint64_t tier_mb;             /* default GFE_TIER_DEFAULT_MB */
	gf_compute compute;           /* resolved: "auto" is f32 or bf16 by now */
	const char *metrics;          /* HOST:PORT or NULL */
	const char *http;             /* --http HOST:PORT (server_http.c) or NULL */
	const char *log_file;         /* NULL = stderr */
	bool print_config;
	bool print_plan;             /* --print-plan: show the MPI plan for -n ranks, exit */
	int ranks;                   /* -n / --ranks, for --print-plan */
	double plan_workload[3];     /* --plan-workload: tokens ingested, decoded, context; 0s: default */
	const char *host, *port;     /* --host/--port: one more TCP listener, HOST:PORT */
	char host_port[300];         /* storage of that listener's address */
	char env_listen[1024];       /* storage of $GOLDFINCH_LISTEN's addresses, split */
} gfd_options;

void gfd_options_defaults(gfd_options *o);
/* Parses $GOLDFINCH_* (gfd_usage lists them), then argv, into o: a flag wins over its
 * variable. 1 when --help/--version printed (exit 0), 0, or -EINVAL with err. */
int gfd_options_parse(gfd_options *o, int argc, char **argv, char *err);
void gfd_options_print(const gfd_options *o, FILE *f);
void gfd_usage(FILE *f);

/* ---- utilities (server_util.c) -------------------------------------------------------- */
/* "123", "64K", "16M", "2G", "1T" (powers of 1024; an optional trailing B/iB). */
int gfd_parse_size(const char *s, uint64_t *out);
int gfd_parse_uint(const char *s, uint64_t max, uint64_t *out);
/* Equal contents, in time that depends only on the lengths. */
bool gfd_ct_equal(const void *a, size_t na, const void *b, size_t nb);
int64_t gfd_now_ns(void);       /* CLOCK_MONOTONIC */
int64_t gfd_unix_ms(int64_t realtime_ns);
double gfd_ms_since(int64_t t0_ns);
uint64_t gfd_rss_bytes(void);   /* from /proc/self/statm; 0 if unknown */
/* fmt formatted into msg[len] as one line (line breaks become spaces): error messages on
 * the wire and in the log. */
void gfd_vformat_line(char *msg, size_t len, const char *fmt, va_list ap);

/* The log: one line per event, "2025-01-31T12:00:00.123Z goldfinchd: ...". Thread-safe. */
typedef struct gfd_log {
	FILE *f;
	bool own;
	pthread_mutex_t mu;
} gfd_log;

int gfd_log_open(gfd_log *l, const char *path /* NULL: stderr */, char *err);
void gfd_log_close(gfd_log *l);
void gfd_logf(gfd_log *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- counters shared by every thread (server_metrics.c) ---------------------------------- */
#define GFD_RATE_SLOTS 8   /* seconds of history for the tokens/s gauges */

typedef struct gfd_stats {
	pthread_mutex_t mu;
	uint64_t jobs_accepted, jobs_done, jobs_failed, jobs_cancelled, jobs_rejected;
	uint32_t jobs_running, jobs_queued, connections;
	uint64_t tokens_ingested, tokens_decoded, prompt_tokens;
	uint64_t context_hits, cached_tokens, ingests_reused;
	struct {
		int64_t sec;
		uint64_t ingested, decoded;
	} slot[GFD_RATE_SLOTS];
} gfd_stats;

typedef enum gfd_job_outcome { GFD_OUT_DONE, GFD_OUT_FAILED, GFD_OUT_CANCELLED } gfd_job_outcome;

void gfd_stats_init(gfd_stats *st);
void gfd_stats_destroy(gfd_stats *st);
void gfd_stats_tokens(gfd_stats *st, uint64_t ingested, uint64_t decoded);
/* Tokens/s over the last full seconds. */
void gfd_stats_rates(gfd_stats *st, double *ingest, double *decode);
void gfd_stats_snapshot(gfd_stats *st, gfd_stats *out);   /* copy under the lock */

typedef struct gfd_metrics gfd_metrics;
struct gfd_server;
int gfd_metrics_start(gfd_metrics **out, const char *addr, struct gfd_server *srv, char *err);
void gfd_metrics_stop(gfd_metrics *m);   /* NULL-safe */
/* The text /metrics serves (malloc'd). */
char *gfd_metrics_render(struct gfd_server *srv);

/* ---- jobs, events, the server ---------------------------------------------------------- */
enum gfd_job_kind { GFD_JOB_INGEST = 1, GFD_JOB_GENERATE };
enum gfd_cancel {
	GFD_CANCEL_NONE = 0,
	GFD_CANCEL_CLIENT,      /* a Cancel request */
	GFD_CANCEL_DISCONNECT,  /* the connection is gone: nobody to answer */
	GFD_CANCEL_SHUTDOWN,    /* SIGTERM/SIGINT */
};

/* Input of an ingest, rendered: bytes to tokenize, or an error the loop found in the
 * stream (a bad FileStart), which fails the ingest when the worker reaches it. */
struct gfd_piece {
	struct gfd_piece *next;
	size_t len;
	bool is_error;
	uint8_t data[];   /* [len]; for an error, a NUL-terminated message */
};

struct gfd_conn;
struct gfd_server;

typedef struct gfd_job {
	/* Fixed at accept. */
	struct gfd_server *srv;
	uint64_t number;         /* server-wide: the log, JobInfo.job, Cancel.job */
	uint64_t conn_id, req_id;
	char peer[64];
	enum gfd_job_kind kind;
	int64_t accepted_ns;
	int64_t accepted_unix_ms;
	/* Loop thread only. */
	struct gfd_conn *conn;   /* NULL once the connection is gone */
	struct gfd_job *cprev, *cnext;
	struct gfd_job *rprev, *rnext;  /* the server's registry of live jobs */
	bool file_open;          /* a FileStart's file awaits its closing "\n" */
	bool end_seen;
	/* Pending queue link and flag, under srv->qmu. */
	struct gfd_job *qnext;
	bool queued;
	/* Shared. */
	atomic_int cancel;       /* enum gfd_cancel */
	/* Written by the worker, read by the loop for StatusReply.jobs. */
	atomic_uint_fast64_t tokens_done;  /* ingest: tokens in the context; generate: sent */
	atomic_uint_fast64_t serial;       /* the context's, once the worker knows it; 0 */
	pthread_mutex_t mu;      /* the input queue */
	pthread_cond_t cv;
	struct gfd_piece *in_head, *in_tail;
	size_t in_bytes;
	bool in_end;             /* IngestEnd arrived: no more pieces */
	bool in_closed;          /* the worker takes no more pieces (drop them) */
	bool read_paused;        /* the loop stopped reading the connection for this input */
	/* IngestStart. */
	char *name;
	bool resume;
	uint64_t total_bytes;
	/* Generate. */
	char *context;           /* "" with no_context */
	bool no_context;         /* the prompt alone, from the model's initial state (1.3) */
	bool return_progress;    /* PromptProgress while the prompt runs (1.3) */
	char *prompt;
	size_t prompt_len;
	gf_sampling sp;
	uint32_t max_tokens;
	char **stop;
	size_t n_stop;
} gfd_job;

enum gfd_event_kind {
	GFD_EV_FRAME = 1,   /* data: one framed Response for conn_id */
	GFD_EV_RESUME,      /* job's input drained: read its connection again */
	GFD_EV_JOB_END,     /* the worker is done with job: the loop frees it */
	GFD_EV_ADOPT,       /* data: a struct gfd_adopt, a connection for the loop to serve */
};

/* A socket the loop takes as a client connection (it closes it when it cannot). */
struct gfd_adopt {
	int fd;
	char peer[64];
};

/* Worker → loop, and the loop's own output queue entries (a frame and a write offset). */
struct gfd_event {
	struct gfd_event *next;
	enum gfd_event_kind kind;
	uint64_t conn_id;
	gfd_job *job;
	size_t len, off;
	uint8_t data[];
};

/* A job as StatusReply.jobs shows it: copied by the loop, which owns the jobs, when the
 * Status request arrives, and answered with the store's figures by the control thread. */
struct gfd_job_snap {
	uint64_t number;
	enum gfd_job_kind kind;
	bool running;
	uint64_t tokens_done;
	int64_t accepted_unix_ms;
	char *context;         /* malloc'd; NULL: none known yet */
	char peer[64];
};

/* Control requests the control thread answers. */
struct gfd_ctl_task {
	struct gfd_ctl_task *next;
	uint64_t conn_id, req_id;
	int what;              /* GOLDFINCH__V1__REQUEST__BODY_* */
	char *context;         /* DropContext */
	char peer[64];
	struct gfd_job_snap *jobs;  /* Status: the live jobs, by number [n_jobs] */
	size_t n_jobs;
};

typedef struct gfd_server {
	gfd_options opt;
	gfd_backend be;
	gfd_backend_info info;
	gfd_log *log;
	gfd_stats stats;
	uint8_t *auth_token;    /* NULL: no authentication */
	size_t auth_len;
	uint32_t max_frame;
	size_t ingest_queue_bytes;  /* an ingest's input above this pauses its connection */

	/* Loop state (server_loop.c). */
	int epfd, sigfd, evfd;
	void *listeners;        /* struct listener[n_listeners] */
	int n_listeners;
	void *conns;            /* connection table */
	uint64_t next_conn_id, next_job_number;
	uint64_t live_jobs;     /* job structs not yet freed */
	gfd_job *jobs_head, *jobs_tail;  /* the registry: every live job, by number */
	bool stopping;
	int spare_fd;           /* closed to accept-and-drop when out of descriptors */

	/* The event queue (workers, control thread → loop). */
	pthread_mutex_t evmu;
	struct gfd_event *ev_head, *ev_tail;

	/* The pending job queue and the workers. */
	pthread_mutex_t qmu;
	pthread_cond_t qcv;
	gfd_job *q_head, *q_tail;
	int q_len;
	bool workers_stop;
	pthread_t *workers;
	int n_workers;

	/* The control thread. */
	pthread_mutex_t cmu;
	pthread_cond_t ccv;
	struct gfd_ctl_task *c_head, *c_tail;
	bool ctl_stop;
	pthread_t ctl;
	bool ctl_started;

	gfd_metrics *metrics;
} gfd_server;

/* ---- the HTTP API (server_http.c) --------------------------------------------------------
 * An OpenAI-compatible API on libmicrohttpd, one thread per HTTP connection. Each request is
 * a client of the loop over a socket pair (gfd_adopt): the same jobs, limits, cancelling
 * and bytes as the wire protocol. Started before the model loads (GET /health answers
 * "loading"), attached to the server once it exists, detached before it stops. */
typedef struct gfd_http gfd_http;
int gfd_http_start(gfd_http **out, const gfd_options *o, gfd_log *log, char *err);
void gfd_http_attach(gfd_http *h, gfd_server *s);
/* No new requests reach the server; those waiting on it give up within a quarter second. */
void gfd_http_detach(gfd_http *h);
void gfd_http_stop(gfd_http *h);   /* joins every HTTP thread; NULL-safe */

/* server_loop.c */
int gfd_server_create(gfd_server **out, const gfd_options *o, gfd_backend *be, gfd_log *log,
		      char *err);
int gfd_server_run(gfd_server *s);   /* until SIGTERM/SIGINT; 0 after a clean shutdown */
void gfd_server_free(gfd_server *s); /* closes the backend too; NULL-safe */

/* server_jobs.c: workers and the control thread. */
int gfd_workers_start(gfd_server *s, char *err);
void gfd_workers_stop(gfd_server *s);  /* joins; no job may be running */
/* Takes the job from the pending queue if no worker has it yet (under qmu): true if it did. */
bool gfd_queue_remove(gfd_server *s, gfd_job *j);
void gfd_queue_push(gfd_server *s, gfd_job *j);
void gfd_ctl_push(gfd_server *s, struct gfd_ctl_task *t);
void gfd_ctl_task_free(struct gfd_ctl_task *t);   /* NULL-safe */
void gfd_job_free(gfd_job *j);
void gfd_job_wake(gfd_job *j);        /* after setting cancel or adding input */

/* Events: post a framed response / a resume / a job end to the loop (any thread). */
int gfd_post_response(gfd_server *s, uint64_t conn_id, const proto_response *r);
void gfd_post(gfd_server *s, struct gfd_event *ev);
/* A framed response as an event (kind FRAME); NULL on -ENOMEM. */
struct gfd_event *gfd_frame_event(uint64_t conn_id, const proto_response *r);
int gfd_post_error(gfd_server *s, uint64_t conn_id, uint64_t req_id,
		   Goldfinch__V1__ErrorCode code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
Goldfinch__V1__ErrorCode gfd_errno_code(int rc);
/* Hands fd (a connected stream socket) to the loop as a client connection speaking the wire
 * protocol, shown as `peer` in the log; the loop owns fd from here on. -ENOMEM (fd closed). */
int gfd_adopt(gfd_server *s, int fd, const char *peer);
/* Resolves a context reference (name, "#serial", or >= 8 hex digits of its key). */
int gfd_resolve_context(gfd_server *s, const char *ref, cs_ctx_info *out, char *err);
void gfd_ctx_to_proto(const cs_ctx_info *c, Goldfinch__V1__ContextInfo *out, char keyhex[33]);

#endif /* GFD_SERVER_H */
