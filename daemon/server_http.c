/*
 * server_http.c — the OpenAI-compatible HTTP API (--http HOST:PORT) on libmicrohttpd, one
 * thread per HTTP connection. daemon/README.md ("HTTP API") is the manual.
 *
 * Every request that needs the model or the store is a client of the loop: it opens a
 * socket pair, hands one end to the loop (gfd_adopt), says Hello with the server's token
 * and sends the wire protocol's requests (Generate, IngestStart/Data/End, ListContexts,
 * DropContext). So the jobs, the queue and its limits, the stop strings, the sampling, the
 * log and the metrics are the socket protocol's, and a greedy answer carries gf ask's bytes.
 * Closing the pair is a disconnect to the loop: the job is cancelled and its slot freed,
 * which is what a client that goes away mid-stream causes (its socket is watched while we
 * wait for the loop).
 */
#include "server.h"
#include "gfclient.h"

#include <archive.h>
#include <archive_entry.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS 250                 /* how often a waiting request checks the server is there */
#define HELLO_WAIT_MS 10000
#define PIECE_BYTES (64u << 10)     /* ingest input per IngestData */
#define HTTP_MAX_CONNS 1024
#define HTTP_IDLE_S 60              /* a keep-alive connection idle this long is closed */
#define MAX_PROMPT_PARTS 4096

/* The page of GET / (daemon/web/index.html, embedded at build time by web/embed.cmake). */
extern const unsigned char gfd_web_index[];
extern const size_t gfd_web_index_len;

struct gfd_http {
	struct MHD_Daemon *d;
	gfd_log *log;
	uint32_t max_frame;
	char model_id[GF_NAME_MAX];     /* the --model file's base name, less ".gguf" */
	pthread_mutex_t mu;             /* srv: attach, detach and every gfd_adopt */
	gfd_server *srv;
	atomic_bool attached;
	atomic_bool stopped;            /* detached: the server is going */
	atomic_uint_fast64_t next_id;   /* ids of completions without a job number */
};

/* ---- growing byte buffers --------------------------------------------------------------- */

struct buf {
	char *p;
	size_t n, cap;
};

static int buf_add(struct buf *b, const void *d, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap : 1024;
		while (c < b->n + n + 1)
			c *= 2;
		char *p = realloc(b->p, c);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = c;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
	b->p[b->n] = 0;
	return 0;
}

static int buf_str(struct buf *b, const char *s)
{
	return buf_add(b, s, strlen(s));
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* JSON strings are UTF-8 and cJSON's are NUL-terminated: bytes of the answer that are not
 * UTF-8 (a byte model may emit any byte), and NUL, become U+FFFD, one for each maximal
 * ill-formed subpart as Unicode recommends (what Python's decode(errors="replace") does). */
static int utf8_clean(struct buf *out, const uint8_t *s, size_t n)
{
	static const char fffd[] = "\xef\xbf\xbd";
	size_t i = 0;
	while (i < n) {
		uint8_t b = s[i];
		if (b && b < 0x80) {
			size_t k = i;
			while (k < n && s[k] && s[k] < 0x80)
				k++;
			if (buf_add(out, s + i, k - i))
				return -ENOMEM;
			i = k;
			continue;
		}
		size_t len;
		const size_t k = gfc_utf8_prefix(s + i, n - i, &len);
		if (len && k == len) {
			if (buf_add(out, s + i, len))
				return -ENOMEM;
			i += len;
		} else {
			if (buf_add(out, fffd, 3))
				return -ENOMEM;
			i += k;
		}
	}
	return buf_add(out, "", 0);
}

/* ---- requests --------------------------------------------------------------------------- */

enum route {
	R_NONE = 0,
	R_INDEX,
	R_HEALTH,
	R_METRICS,
	R_MODELS,
	R_CHAT,
	R_COMPLETIONS,
	R_CTX_LIST,
	R_CTX_ADD,
	R_CTX_DROP,
};

struct hreq {
	gfd_http *h;
	gfd_server *s;
	struct MHD_Connection *mc;
	enum route route;
	const char *allow;    /* the methods of the path, for a 405 */
	int client_fd;
	char peer[56];   /* "http " and this fit the loop's 64 */
	/* The body: JSON in memory (at most --max-frame), an archive in a temporary file, or
	 * text streamed into the ingest as it arrives. */
	struct buf body;
	bool too_large;
	FILE *tar;
	/* An answer decided before the body's end (sent once it has been read). */
	unsigned err_status;
	const char *err_type;
	char err_msg[GF_ERR_LEN + 64];
	/* The loop connection. */
	int fd;
	proto_reader rd;
	uint64_t req_id;
	/* Ingest. */
	char *ctx_name;
	bool stream;
	bool ingest_text;     /* text streamed as it comes */
	uint64_t ingest_bytes;
	/* Streaming out. */
	struct buf out;
	size_t out_off;
	bool finished;
	proto_response *first;  /* the first response, read before the status was chosen */
	/* Generation. */
	bool chat;
	char *model;          /* as the request named it */
	char id[48];
	int64_t created;
	bool role_sent;
	uint64_t base_tokens;
};

static void ic_close(struct hreq *q)
{
	if (q->fd >= 0)
		close(q->fd);
	q->fd = -1;
	proto_reader_free(&q->rd);
}

static void hreq_free(struct hreq *q)
{
	if (!q)
		return;
	ic_close(q);
	buf_free(&q->body);
	buf_free(&q->out);
	if (q->tar)
		fclose(q->tar);
	proto_response_free(q->first);
	free(q->ctx_name);
	free(q->model);
	free(q);
}

/* ---- answers ---------------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *mc, unsigned status, const char *type, char *body)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	enum MHD_Result ret = MHD_queue_response(mc, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reply_json_allow(struct MHD_Connection *mc, unsigned status, cJSON *j,
					const char *allow)
{
	char *s = j ? cJSON_PrintUnformatted(j) : NULL;
	cJSON_Delete(j);
	if (!s)
		return MHD_NO;
	size_t n = strlen(s);
	char *t = realloc(s, n + 2);
	if (!t) {
		free(s);
		return MHD_NO;
	}
	t[n] = '\n';
	t[n + 1] = 0;
	struct MHD_Response *r = MHD_create_response_from_buffer(n + 1, t, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(t);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", "application/json");
	if (allow)
		MHD_add_response_header(r, "Allow", allow);
	enum MHD_Result ret = MHD_queue_response(mc, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *mc, unsigned status, cJSON *j)
{
	return reply_json_allow(mc, status, j, NULL);
}

static const char *status_type(unsigned status)
{
	switch (status) {
	case 401:
		return "authentication_error";
	case 404:
		return "not_found_error";
	case 429:
		return "rate_limit_error";
	case 503:
		return "unavailable_error";
	default:
		return status >= 500 ? "server_error" : "invalid_request_error";
	}
}

/* {"error":{"message","type","code"}}: OpenAI's shape, one line. */
static cJSON *error_json(unsigned status, const char *type, const char *msg)
{
	cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
	struct buf clean = { 0 };
	utf8_clean(&clean, (const uint8_t *)msg, strlen(msg));
	cJSON_AddStringToObject(e, "message", clean.p ? clean.p : "out of memory");
	cJSON_AddStringToObject(e, "type", type ? type : status_type(status));
	cJSON_AddNumberToObject(e, "code", status);
	buf_free(&clean);
	return root;
}

static enum MHD_Result reply_error(struct MHD_Connection *mc, unsigned status, const char *type,
				   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result reply_error(struct MHD_Connection *mc, unsigned status, const char *type,
				   const char *fmt, ...)
{
	char msg[GF_ERR_LEN + 256];
	va_list ap;
	va_start(ap, fmt);
	gfd_vformat_line(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return reply_json(mc, status, error_json(status, type, msg));
}

/* Remembers an answer for the end of the body (MHD answers only once it has been read). */
static void defer_error(struct hreq *q, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void defer_error(struct hreq *q, unsigned status, const char *fmt, ...)
{
	if (q->err_status)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(q->err_msg, sizeof(q->err_msg), fmt, ap);
	va_end(ap);
	q->err_status = status;
}

/* The wire protocol's error codes as HTTP statuses. */
static unsigned code_status(Goldfinch__V1__ErrorCode c, bool drop)
{
	switch (c) {
	case GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST:
		return 400;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_UNAUTHENTICATED:
		return 401;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND:
		return 404;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_TOO_LARGE:
		return 413;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_BUSY:
		return drop ? 409 : 429;   /* a drop of a context in use; else the queue is full */
	case GOLDFINCH__V1__ERROR_CODE__ERROR_NO_SPACE:
		return 507;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN:
		return 503;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_CANCELLED:
		return 499;
	default:
		return 500;
	}
}

static cJSON *proto_error_json(const Goldfinch__V1__Error *e, bool drop)
{
	unsigned st = code_status(e->code, drop);
	return error_json(st, NULL, e->message ? e->message : proto_error_name(e->code));
}

/* ---- the loop connection ----------------------------------------------------------------- */

static int ic_send(struct hreq *q, proto_request *m)
{
	uint8_t *frame;
	size_t len;
	m->id = q->req_id;
	int rc = proto_frame_request(m, &frame, &len);
	if (rc)
		return rc;
	for (size_t off = 0; off < len;) {
		ssize_t w = send(q->fd, frame + off, len - off, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			rc = -errno;
			break;
		}
		off += (size_t)w;
	}
	free(frame);
	return rc;
}

/* The next response from the loop. -ECONNRESET when the HTTP client hung up meanwhile,
 * -ESHUTDOWN when the server went, -ETIMEDOUT after timeout_ms (< 0: none), -EPIPE when the
 * loop closed the connection. */
static int ic_recv(struct hreq *q, proto_response **out, int timeout_ms)
{
	int waited = 0;
	*out = NULL;
	for (;;) {
		const uint8_t *body;
		uint32_t len;
		int rc = proto_reader_next(&q->rd, &body, &len);
		if (rc < 0)
			return rc;
		if (rc == 1) {
			*out = proto_response_parse(body, len);
			return *out ? 0 : -EBADMSG;
		}
		struct pollfd p[2] = { { .fd = q->fd, .events = POLLIN },
				       { .fd = q->client_fd, .events = POLLRDHUP } };
		int n = poll(p, q->client_fd >= 0 ? 2 : 1, POLL_MS);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (!atomic_load(&q->h->attached))
			return -ESHUTDOWN;
		if (n > 0 && q->client_fd >= 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)))
			return -ECONNRESET;
		if (n <= 0 || !(p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
			waited += POLL_MS;
			if (timeout_ms >= 0 && waited >= timeout_ms)
				return -ETIMEDOUT;
			continue;
		}
		uint8_t *dst;
		size_t avail;
		if ((rc = proto_reader_space(&q->rd, 65536, &dst, &avail)))
			return rc;
		ssize_t r = recv(q->fd, dst, avail, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -EPIPE;
		proto_reader_commit(&q->rd, (size_t)r);
	}
}

/* Opens the loop connection and says Hello; 0, or an HTTP status with q->err_msg. */
static unsigned ic_open(struct hreq *q)
{
	gfd_http *h = q->h;
	int sv[2];
	char peer[64];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
		snprintf(q->err_msg, sizeof(q->err_msg), "socketpair: %s", strerror(errno));
		return 500;
	}
	snprintf(peer, sizeof(peer), "http %s", q->peer);
	pthread_mutex_lock(&h->mu);
	bool up = h->srv != NULL;
	if (up)
		gfd_adopt(h->srv, sv[1], peer);
	pthread_mutex_unlock(&h->mu);
	if (!up) {
		close(sv[0]);
		close(sv[1]);
		snprintf(q->err_msg, sizeof(q->err_msg), "the server is shutting down");
		return 503;
	}
	q->fd = sv[0];
	proto_reader_init(&q->rd, UINT32_MAX);
	q->req_id = 1;

	Goldfinch__V1__Hello hello = GOLDFINCH__V1__HELLO__INIT;
	hello.major = PROTO_VERSION_MAJOR;
	hello.minor = PROTO_VERSION_MINOR;
	hello.client = "goldfinchd http";
	char *tok = NULL;
	if (q->s->auth_token) {
		tok = malloc(q->s->auth_len + 1);
		if (!tok) {
			snprintf(q->err_msg, sizeof(q->err_msg), "out of memory");
			return 500;
		}
		memcpy(tok, q->s->auth_token, q->s->auth_len);
		tok[q->s->auth_len] = 0;
		hello.auth_token = tok;
	}
	proto_request m = GOLDFINCH__V1__REQUEST__INIT;
	m.body_case = GOLDFINCH__V1__REQUEST__BODY_HELLO;
	m.hello = &hello;
	int rc = ic_send(q, &m);
	if (tok) {
		memset(tok, 0, q->s->auth_len);
		free(tok);
	}
	proto_response *r = NULL;
	if (!rc)
		rc = ic_recv(q, &r, HELLO_WAIT_MS);
	unsigned st = 0;
	if (rc) {
		snprintf(q->err_msg, sizeof(q->err_msg), "the server did not answer: %s", strerror(-rc));
		st = rc == -ECONNRESET ? 499 : 503;
	} else if (r->body_case != GOLDFINCH__V1__RESPONSE__BODY_HELLO) {
		snprintf(q->err_msg, sizeof(q->err_msg), "%s",
			 r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR ? r->error->message : "unexpected answer to Hello");
		st = r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR ? code_status(r->error->code, false) : 500;
	}
	proto_response_free(r);
	if (st)
		ic_close(q);
	return st;
}

/* One request, one answer (ListContexts, DropContext). */
static int ic_call(struct hreq *q, proto_request *m, proto_response **out)
{
	int rc = ic_send(q, m);
	return rc ? rc : ic_recv(q, out, -1);
}

/* ---- models and contexts ------------------------------------------------------------------ */

/* "MODEL" (no context) or "MODEL@CONTEXT": *ctx NULL or the context's reference. 0, or
 * -ENOENT when the model is not this one. */
static int parse_model(gfd_http *h, const char *model, const char **ctx)
{
	size_t n = strlen(h->model_id);
	*ctx = NULL;
	if (strncmp(model, h->model_id, n))
		return -ENOENT;
	if (!model[n])
		return 0;
	if (model[n] != '@' || !model[n + 1])
		return -ENOENT;
	*ctx = model + n + 1;
	return 0;
}

static cJSON *context_json(const Goldfinch__V1__ContextInfo *c)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "object", "context");
	if (c->name)
		cJSON_AddStringToObject(o, "name", c->name);
	else
		cJSON_AddNullToObject(o, "name");
	cJSON_AddNumberToObject(o, "serial", (double)c->serial);
	cJSON_AddStringToObject(o, "key", c->key ? c->key : "");
	cJSON_AddNumberToObject(o, "tokens", (double)c->tokens);
	cJSON_AddNumberToObject(o, "raw_bytes", (double)c->raw_bytes);
	cJSON_AddNumberToObject(o, "disk_bytes", (double)c->disk_bytes);
	cJSON_AddBoolToObject(o, "sealed", c->sealed);
	cJSON_AddNumberToObject(o, "last_use_unix_ms", (double)c->last_use_unix_ms);
	return o;
}

static enum MHD_Result answer_list(struct hreq *q, bool models)
{
	Goldfinch__V1__ListContexts lc = GOLDFINCH__V1__LIST_CONTEXTS__INIT;
	proto_request m = GOLDFINCH__V1__REQUEST__INIT;
	proto_response *r = NULL;
	m.body_case = GOLDFINCH__V1__REQUEST__BODY_LIST_CONTEXTS;
	m.list_contexts = &lc;
	int rc = ic_call(q, &m, &r);
	if (rc) {
		proto_response_free(r);
		return reply_error(q->mc, 503, NULL, "listing contexts: %s", strerror(-rc));
	}
	if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR) {
		cJSON *e = proto_error_json(r->error, false);
		unsigned st = code_status(r->error->code, false);
		proto_response_free(r);
		return reply_json(q->mc, st, e);
	}
	cJSON *root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "object", "list");
	cJSON *data = cJSON_AddArrayToObject(root, "data");
	if (models) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "id", q->h->model_id);
		cJSON_AddStringToObject(o, "object", "model");
		cJSON_AddNumberToObject(o, "created", 0);
		cJSON_AddStringToObject(o, "owned_by", "goldfinch");
		cJSON_AddItemToArray(data, o);
	}
	const Goldfinch__V1__ContextList *cl = r->body_case == GOLDFINCH__V1__RESPONSE__BODY_CONTEXTS ? r->contexts : NULL;
	for (size_t i = 0; cl && i < cl->n_contexts; i++) {
		const Goldfinch__V1__ContextInfo *c = cl->contexts[i];
		if (!models) {
			cJSON_AddItemToArray(data, context_json(c));
			continue;
		}
		/* A model per named, complete context: what a request's "model" may name. */
		if (!c->name || !c->sealed)
			continue;
		char id[GF_NAME_MAX + CS_NAME_MAX + 2];
		snprintf(id, sizeof(id), "%s@%s", q->h->model_id, c->name);
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "id", id);
		cJSON_AddStringToObject(o, "object", "model");
		cJSON_AddNumberToObject(o, "created", (double)(c->last_use_unix_ms / 1000));
		cJSON_AddStringToObject(o, "owned_by", "goldfinch");
		cJSON_AddItemToObject(o, "context", context_json(c));
		cJSON_AddItemToArray(data, o);
	}
	proto_response_free(r);
	return reply_json(q->mc, 200, root);
}

static enum MHD_Result answer_drop(struct hreq *q, const char *name)
{
	Goldfinch__V1__DropContext dc = GOLDFINCH__V1__DROP_CONTEXT__INIT;
	proto_request m = GOLDFINCH__V1__REQUEST__INIT;
	proto_response *r = NULL;
	dc.context = (char *)name;
	m.body_case = GOLDFINCH__V1__REQUEST__BODY_DROP_CONTEXT;
	m.drop_context = &dc;
	int rc = ic_call(q, &m, &r);
	if (rc) {
		proto_response_free(r);
		return reply_error(q->mc, 503, NULL, "dropping a context: %s", strerror(-rc));
	}
	if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR) {
		cJSON *e = proto_error_json(r->error, true);
		unsigned st = code_status(r->error->code, true);
		proto_response_free(r);
		return reply_json(q->mc, st, e);
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", name);
	cJSON_AddStringToObject(o, "object", "context");
	cJSON_AddBoolToObject(o, "deleted", true);
	if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_DROPPED)
		cJSON_AddNumberToObject(o, "serial", (double)r->dropped->serial);
	proto_response_free(r);
	return reply_json(q->mc, 200, o);
}

/* ---- generation: the request ---------------------------------------------------------------- */

struct gen_req {
	Goldfinch__V1__Generate g;
	char *stop[GFD_MAX_STOP + 1];
	struct buf prompt;
	bool stream;
};

static void gen_req_free(struct gen_req *r)
{
	for (size_t i = 0; i < r->g.n_stop; i++)
		free(r->stop[i]);
	buf_free(&r->prompt);
}

/* A number field: -ENOENT absent (or null), -EINVAL not a number, 0 with *v. */
static int num_field(const cJSON *root, const char *name, double *v, char *err)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
	if (!it || cJSON_IsNull(it))
		return -ENOENT;
	if (!cJSON_IsNumber(it)) {
		snprintf(err, GF_ERR_LEN, "\"%s\" must be a number", name);
		return -EINVAL;
	}
	*v = it->valuedouble;
	return 0;
}

static int int_field(const cJSON *root, const char *name, double lo, double hi, int64_t *v, char *err)
{
	double d;
	int rc = num_field(root, name, &d, err);
	if (rc)
		return rc;
	if (d != (double)(int64_t)d || d < lo || d > hi) {
		snprintf(err, GF_ERR_LEN, "\"%s\" must be an integer in %.0f..%.0f", name, lo, hi);
		return -EINVAL;
	}
	*v = (int64_t)d;
	return 0;
}

/* What the engine's sampler has no counterpart for: refused rather than ignored, unless
 * the value asks for nothing (n: 1, logprobs: false, typical_p: 1, ...). */
static int check_unsupported(const cJSON *root, char *err)
{
	static const struct {
		const char *name;
		double neutral;   /* a number meaning "off"; NAN: only absent, null, false or empty */
	} nums[] = {
		{ "n", 1 }, { "best_of", 1 }, { "top_logprobs", 0 }, { "n_probs", 0 },
		{ "repeat_penalty", 1 }, { "typical_p", 1 }, { "tfs_z", 1 }, { "mirostat", 0 },
		{ "dry_multiplier", 0 }, { "xtc_probability", 0 }, { "top_n_sigma", -1 },
	};
	static const char *const others[] = {
		"logprobs", "echo", "tools", "tool_choice", "functions", "function_call", "logit_bias",
		"grammar", "json_schema", "suffix", "prediction", "audio", "modalities",
	};
	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, nums[i].name);
		if (!it || cJSON_IsNull(it))
			continue;
		if (!cJSON_IsNumber(it)) {
			snprintf(err, GF_ERR_LEN, "\"%s\" must be a number", nums[i].name);
			return -EINVAL;
		}
		if (it->valuedouble != nums[i].neutral) {
			snprintf(err, GF_ERR_LEN, "\"%s\" = %g is not supported: the sampler has temperature, top_k, top_p, min_p, presence_penalty, frequency_penalty, seed and stop",
				 nums[i].name, it->valuedouble);
			return -EOPNOTSUPP;
		}
	}
	for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
		const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, others[i]);
		if (!it || cJSON_IsNull(it) || cJSON_IsFalse(it))
			continue;
		if ((cJSON_IsArray(it) || cJSON_IsObject(it)) && !it->child)
			continue;
		if (cJSON_IsString(it) && (!it->valuestring[0] || !strcmp(it->valuestring, "none")))
			continue;
		if (cJSON_IsNumber(it) && it->valuedouble == 0 && !strcmp(others[i], "logprobs"))
			continue;
		snprintf(err, GF_ERR_LEN, "\"%s\" is not supported by this server", others[i]);
		return -EOPNOTSUPP;
	}
	const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
	if (rf && !cJSON_IsNull(rf)) {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
		if (!cJSON_IsString(t) || strcmp(t->valuestring, "text")) {
			snprintf(err, GF_ERR_LEN, "\"response_format\" other than {\"type\": \"text\"} is not supported");
			return -EOPNOTSUPP;
		}
	}
	return 0;
}

/* A message's content: a string, or an array of {"type": "text", "text": ...} parts. */
static int content_text(const cJSON *c, struct buf *out, size_t i, char *err)
{
	if (cJSON_IsString(c))
		return buf_str(out, c->valuestring);
	if (!cJSON_IsArray(c)) {
		snprintf(err, GF_ERR_LEN, "messages[%zu].content must be a string or an array of text parts", i);
		return -EINVAL;
	}
	const cJSON *part;
	cJSON_ArrayForEach(part, c) {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
		const cJSON *x = cJSON_GetObjectItemCaseSensitive(part, "text");
		if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(x)) {
			snprintf(err, GF_ERR_LEN, "messages[%zu].content: only parts {\"type\": \"text\", \"text\": ...} are supported", i);
			return -EINVAL;
		}
		if (buf_str(out, x->valuestring))
			return -ENOMEM;
	}
	return 0;
}

/* The chat template (daemon/README.md, "Chat template"): one user message alone is its
 * content, byte for byte, as gf ask sends a question; anything else is one line per
 * message, "System: ", "User: " or "Assistant: " and the content, then "Assistant: ". */
static int chat_prompt(const cJSON *msgs, struct buf *out, char *err)
{
	size_t n = (size_t)cJSON_GetArraySize(msgs);
	if (!cJSON_IsArray(msgs) || !n) {
		snprintf(err, GF_ERR_LEN, "\"messages\" must be a non-empty array");
		return -EINVAL;
	}
	if (n > MAX_PROMPT_PARTS) {
		snprintf(err, GF_ERR_LEN, "%zu messages: at most %d", n, MAX_PROMPT_PARTS);
		return -EINVAL;
	}
	size_t i = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, msgs) {
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
		const char *label;
		if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
			snprintf(err, GF_ERR_LEN, "messages[%zu] must be an object with a string \"role\"", i);
			return -EINVAL;
		}
		if (!strcmp(role->valuestring, "system") || !strcmp(role->valuestring, "developer"))
			label = "System: ";
		else if (!strcmp(role->valuestring, "user"))
			label = "User: ";
		else if (!strcmp(role->valuestring, "assistant"))
			label = "Assistant: ";
		else {
			snprintf(err, GF_ERR_LEN, "messages[%zu].role \"%.40s\" is not supported (system, user, assistant)",
				 i, role->valuestring);
			return -EINVAL;
		}
		if (!content) {
			snprintf(err, GF_ERR_LEN, "messages[%zu] has no \"content\"", i);
			return -EINVAL;
		}
		if (n == 1 && !strcmp(label, "User: "))
			return content_text(content, out, i, err);
		int rc;
		if ((rc = buf_str(out, label)) || (rc = content_text(content, out, i, err)) ||
		    (rc = buf_str(out, "\n")))
			return rc;
		i++;
	}
	return buf_str(out, "Assistant: ");
}

static int parse_gen(const cJSON *root, bool chat, struct gen_req *r, char *err)
{
	Goldfinch__V1__Generate *g = &r->g;
	double d;
	int64_t v;
	int rc;
	goldfinch__v1__generate__init(g);
	if (!cJSON_IsObject(root)) {
		snprintf(err, GF_ERR_LEN, "the body must be a JSON object");
		return -EINVAL;
	}
	if ((rc = check_unsupported(root, err)))
		return rc;
	if (chat) {
		if ((rc = chat_prompt(cJSON_GetObjectItemCaseSensitive(root, "messages"), &r->prompt, err)))
			return rc;
	} else {
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
		if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(p->child))
			p = p->child;
		if (!cJSON_IsString(p)) {
			snprintf(err, GF_ERR_LEN, "\"prompt\" must be a string (or an array of one string)");
			return -EINVAL;
		}
		if ((rc = buf_str(&r->prompt, p->valuestring)))
			return rc;
	}
	if (!r->prompt.n) {
		snprintf(err, GF_ERR_LEN, "the prompt is empty");
		return -EINVAL;
	}
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stream");
	if (st && !cJSON_IsNull(st) && !cJSON_IsBool(st)) {
		snprintf(err, GF_ERR_LEN, "\"stream\" must be true or false");
		return -EINVAL;
	}
	r->stream = cJSON_IsTrue(st);
	/* llama-server's prompt progress: events while a long prompt runs, when streamed. */
	const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "return_progress");
	if (rp && !cJSON_IsNull(rp) && !cJSON_IsBool(rp)) {
		snprintf(err, GF_ERR_LEN, "\"return_progress\" must be true or false");
		return -EINVAL;
	}
	g->has_return_progress = g->return_progress = r->stream && cJSON_IsTrue(rp);
	/* max_tokens, its newer name, or llama-server's n_predict (-1: as many as allowed). */
	static const char *const max_names[] = { "max_tokens", "max_completion_tokens", "n_predict" };
	for (size_t i = 0; i < 3; i++) {
		rc = int_field(root, max_names[i], -1, 4294967295.0, &v, err);
		if (rc == -ENOENT)
			continue;
		if (rc)
			return rc;
		g->has_max_tokens = true;
		g->max_tokens = v < 0 ? GFD_MAX_GEN_TOKENS : (uint32_t)v;
		break;
	}
	struct {
		const char *name;
		protobuf_c_boolean *has;
		float *val;
	} fl[] = {
		{ "temperature", &g->has_temperature, &g->temperature },
		{ "top_p", &g->has_top_p, &g->top_p },
		{ "min_p", &g->has_min_p, &g->min_p },
		{ "presence_penalty", &g->has_presence_penalty, &g->presence_penalty },
		{ "frequency_penalty", &g->has_frequency_penalty, &g->frequency_penalty },
	};
	for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++) {
		rc = num_field(root, fl[i].name, &d, err);
		if (rc == -ENOENT)
			continue;
		if (rc)
			return rc;
		*fl[i].has = true;
		*fl[i].val = (float)d;
	}
	rc = int_field(root, "top_k", 0, 2147483647.0, &v, err);
	if (rc && rc != -ENOENT)
		return rc;
	if (!rc) {
		g->has_top_k = true;
		g->top_k = (uint32_t)v;
	}
	/* llama-server's seed -1 means "any": the clock's. */
	rc = int_field(root, "seed", -1, 9007199254740992.0, &v, err);
	if (rc && rc != -ENOENT)
		return rc;
	if (!rc) {
		g->has_seed = true;
		g->seed = v >= 0 ? (uint64_t)v : (uint64_t)gfd_now_ns();
	}
	const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
	if (cJSON_IsString(stop)) {
		if (!(r->stop[0] = strdup(stop->valuestring)))
			return -ENOMEM;
		g->n_stop = 1;
	} else if (cJSON_IsArray(stop)) {
		const cJSON *it;
		cJSON_ArrayForEach(it, stop) {
			if (!cJSON_IsString(it)) {
				snprintf(err, GF_ERR_LEN, "\"stop\" must be a string or an array of strings");
				return -EINVAL;
			}
			if (g->n_stop == GFD_MAX_STOP) {
				snprintf(err, GF_ERR_LEN, "\"stop\": at most %d strings", GFD_MAX_STOP);
				return -EINVAL;
			}
			if (!(r->stop[g->n_stop] = strdup(it->valuestring)))
				return -ENOMEM;
			g->n_stop++;
		}
	} else if (stop && !cJSON_IsNull(stop)) {
		snprintf(err, GF_ERR_LEN, "\"stop\" must be a string or an array of strings");
		return -EINVAL;
	}
	g->stop = r->stop;
	if (strlen(r->prompt.p) != r->prompt.n) {
		snprintf(err, GF_ERR_LEN, "the prompt holds a NUL character");
		return -EINVAL;
	}
	g->prompt = r->prompt.p;
	return 0;
}

/* ---- generation: the answer ------------------------------------------------------------------ */

static const char *finish_word(Goldfinch__V1__DoneReason r)
{
	switch (r) {
	case GOLDFINCH__V1__DONE_REASON__DONE_STOP:
		return "stop";
	case GOLDFINCH__V1__DONE_REASON__DONE_LENGTH:
		return "length";
	default:
		return "cancelled";
	}
}

/* OpenAI's usage (prompt_tokens counts the context as well, cached) and llama-server's
 * timings (prompt_n: the tokens run, cache_n: those reused). */
static void add_usage(cJSON *root, const Goldfinch__V1__Usage *u)
{
	if (!u)
		return;
	uint64_t prompt = u->prompt_tokens + u->cached_tokens;
	cJSON *us = cJSON_AddObjectToObject(root, "usage");
	cJSON_AddNumberToObject(us, "prompt_tokens", (double)prompt);
	cJSON_AddNumberToObject(us, "completion_tokens", (double)u->completion_tokens);
	cJSON_AddNumberToObject(us, "total_tokens", (double)(prompt + u->completion_tokens));
	cJSON *det = cJSON_AddObjectToObject(us, "prompt_tokens_details");
	cJSON_AddNumberToObject(det, "cached_tokens", (double)u->cached_tokens);
	cJSON *t = cJSON_AddObjectToObject(root, "timings");
	cJSON_AddNumberToObject(t, "cache_n", (double)u->cached_tokens);
	cJSON_AddNumberToObject(t, "prompt_n", (double)u->prompt_tokens);
	cJSON_AddNumberToObject(t, "prompt_ms", u->prompt_ms);
	cJSON_AddNumberToObject(t, "prompt_per_second",
				u->prompt_ms > 0 ? (double)u->prompt_tokens * 1000.0 / u->prompt_ms : 0);
	cJSON_AddNumberToObject(t, "predicted_n", (double)u->completion_tokens);
	cJSON_AddNumberToObject(t, "predicted_ms", u->decode_ms);
	cJSON_AddNumberToObject(t, "predicted_per_second",
				u->decode_ms > 0 ? (double)u->completion_tokens * 1000.0 / u->decode_ms : 0);
}

static cJSON *completion_head(struct hreq *q, const char *object)
{
	cJSON *root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "id", q->id);
	cJSON_AddStringToObject(root, "object", object);
	cJSON_AddNumberToObject(root, "created", (double)q->created);
	cJSON_AddStringToObject(root, "model", q->model);
	return root;
}

static void set_id(struct hreq *q, uint64_t job)
{
	if (q->id[0])
		return;
	uint64_t n = job ? job : atomic_fetch_add(&q->h->next_id, 1) + 1;
	snprintf(q->id, sizeof(q->id), "%s%s-%" PRIu64, q->chat ? "chatcmpl" : "cmpl", job ? "" : "-x", n);
}

/* One SSE event: "data: JSON\n\n". */
static int sse(struct hreq *q, cJSON *j)
{
	char *s = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!s)
		return -ENOMEM;
	int rc = buf_str(&q->out, "data: ");
	if (!rc)
		rc = buf_str(&q->out, s);
	if (!rc)
		rc = buf_str(&q->out, "\n\n");
	free(s);
	return rc;
}

static cJSON *chunk(struct hreq *q, const char *text, const char *finish)
{
	cJSON *root = completion_head(q, q->chat ? "chat.completion.chunk" : "text_completion");
	cJSON *choices = cJSON_AddArrayToObject(root, "choices");
	cJSON *c = cJSON_CreateObject();
	cJSON_AddNumberToObject(c, "index", 0);
	if (q->chat) {
		cJSON *delta = cJSON_AddObjectToObject(c, "delta");
		if (!q->role_sent) {
			cJSON_AddStringToObject(delta, "role", "assistant");
			q->role_sent = true;
		}
		if (text)
			cJSON_AddStringToObject(delta, "content", text);
	} else {
		cJSON_AddStringToObject(c, "text", text ? text : "");
		cJSON_AddNullToObject(c, "logprobs");
	}
	if (finish)
		cJSON_AddStringToObject(c, "finish_reason", finish);
	else
		cJSON_AddNullToObject(c, "finish_reason");
	cJSON_AddItemToArray(choices, c);
	return root;
}

/* Turns one response of the generation into SSE events in q->out; 1 when it was the last. */
static int stream_response(struct hreq *q, const proto_response *r)
{
	struct buf t = { 0 };
	int rc = 0;
	switch (r->body_case) {
	case GOLDFINCH__V1__RESPONSE__BODY_TOKEN:
		set_id(q, r->token->has_job ? r->token->job : 0);
		if (!r->token->has_text || !r->token->text.len)
			return 0;
		if ((rc = utf8_clean(&t, r->token->text.data, r->token->text.len)))
			return rc;
		rc = sse(q, chunk(q, t.p, NULL));
		buf_free(&t);
		return rc;
	case GOLDFINCH__V1__RESPONSE__BODY_PROMPT_PROGRESS: {
		const Goldfinch__V1__PromptProgress *p = r->prompt_progress;
		set_id(q, p->has_job ? p->job : 0);
		cJSON *ev = chunk(q, NULL, NULL);
		cJSON *pp = cJSON_AddObjectToObject(ev, "prompt_progress");
		cJSON_AddNumberToObject(pp, "total", (double)p->total);
		cJSON_AddNumberToObject(pp, "cache", (double)p->cache);
		cJSON_AddNumberToObject(pp, "processed", (double)p->processed);
		cJSON_AddNumberToObject(pp, "time_ms", p->time_ms);
		return sse(q, ev);
	}
	case GOLDFINCH__V1__RESPONSE__BODY_DONE: {
		set_id(q, 0);
		cJSON *last = chunk(q, NULL, finish_word(r->done->reason));
		add_usage(last, r->done->usage);
		if ((rc = sse(q, last)) || (rc = buf_str(&q->out, "data: [DONE]\n\n")))
			return rc;
		return 1;
	}
	case GOLDFINCH__V1__RESPONSE__BODY_ERROR:
		if ((rc = sse(q, proto_error_json(r->error, false))) || (rc = buf_str(&q->out, "data: [DONE]\n\n")))
			return rc;
		return 1;
	default:
		return 0;
	}
}

/* Up to max bytes of the response already formatted: what libmicrohttpd's reader gets. */
static ssize_t drain_out(struct hreq *q, char *dst, size_t max)
{
	size_t n = q->out.n - q->out_off < max ? q->out.n - q->out_off : max;
	memcpy(dst, q->out.p + q->out_off, n);
	q->out_off += n;
	if (q->out_off == q->out.n)
		q->out.n = q->out_off = 0;
	return (ssize_t)n;
}

static ssize_t gen_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
	struct hreq *q = cls;
	(void)pos;
	for (;;) {
		if (q->out_off < q->out.n)
			return drain_out(q, dst, max);
		if (q->finished)
			return MHD_CONTENT_READER_END_OF_STREAM;
		proto_response *r = q->first;
		q->first = NULL;
		int rc = r ? 0 : ic_recv(q, &r, -1);
		if (rc) {
			/* The client left (its job is cancelled when the pair closes), or the
			 * server is going: end the stream. */
			ic_close(q);
			if (rc == -ECONNRESET)
				return MHD_CONTENT_READER_END_WITH_ERROR;
			Goldfinch__V1__Error e = GOLDFINCH__V1__ERROR__INIT;
			e.code = GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN;
			e.message = "the server stopped answering";
			proto_response er = GOLDFINCH__V1__RESPONSE__INIT;
			er.body_case = GOLDFINCH__V1__RESPONSE__BODY_ERROR;
			er.error = &e;
			stream_response(q, &er);
			q->finished = true;
			continue;
		}
		rc = stream_response(q, r);
		proto_response_free(r);
		if (rc < 0)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (rc == 1) {
			q->finished = true;
			ic_close(q);
		}
	}
}

static enum MHD_Result answer_generate(struct hreq *q)
{
	char err[GF_ERR_LEN] = "";
	struct gen_req g = { 0 };
	const char *ctx = NULL;
	enum MHD_Result ret;
	cJSON *root = cJSON_ParseWithLength(q->body.p ? q->body.p : "", q->body.n);
	if (!root) {
		ret = reply_error(q->mc, 400, NULL, "the body is not valid JSON");
		goto out;
	}
	int rc = parse_gen(root, q->chat, &g, err);
	if (rc) {
		ret = reply_error(q->mc, 400, NULL, "%s", rc == -ENOMEM ? "out of memory" : err);
		goto out;
	}
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (!cJSON_IsString(model)) {
		ret = reply_error(q->mc, 400, NULL, "\"model\" must be a string: %s or %s@CONTEXT (GET /v1/models)",
				  q->h->model_id, q->h->model_id);
		goto out;
	}
	if (parse_model(q->h, model->valuestring, &ctx)) {
		ret = reply_error(q->mc, 404, "not_found_error", "model \"%.200s\" not found: this server has %s and %s@CONTEXT for each context (GET /v1/models)",
				  model->valuestring, q->h->model_id, q->h->model_id);
		goto out;
	}
	if (!(q->model = strdup(model->valuestring))) {
		ret = MHD_NO;
		goto out;
	}
	q->created = (int64_t)time(NULL);
	unsigned st = ic_open(q);
	if (st) {
		ret = reply_error(q->mc, st, NULL, "%s", q->err_msg);
		goto out;
	}
	/* The plain model id answers the prompt alone, from the model's initial state. */
	g.g.context = (char *)(ctx ? ctx : "");
	g.g.has_no_context = g.g.no_context = !ctx;
	proto_request m = GOLDFINCH__V1__REQUEST__INIT;
	m.body_case = GOLDFINCH__V1__REQUEST__BODY_GENERATE;
	m.generate = &g.g;
	proto_response *r = NULL;
	if ((rc = ic_send(q, &m)) || (rc = ic_recv(q, &r, -1))) {
		ret = rc == -ECONNRESET ? MHD_NO : reply_error(q->mc, 503, NULL, "the server stopped answering: %s", strerror(-rc));
		goto out;
	}
	if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR) {
		/* Refused before a token (unknown context, bad sampling, queue full): a status. */
		unsigned es = code_status(r->error->code, false);
		ret = reply_json(q->mc, es, proto_error_json(r->error, false));
		proto_response_free(r);
		goto out;
	}
	if (g.stream) {
		q->first = r;
		struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, gen_reader, q, NULL);
		if (!resp) {
			ret = MHD_NO;
			goto out;
		}
		MHD_add_response_header(resp, "Content-Type", "text/event-stream");
		MHD_add_response_header(resp, "Cache-Control", "no-cache");
		ret = MHD_queue_response(q->mc, 200, resp);
		MHD_destroy_response(resp);
		goto out;
	}
	/* Not streamed: the whole answer, then one object. */
	struct buf text = { 0 };
	const Goldfinch__V1__Done *done = NULL;
	proto_response *last = NULL;
	for (;;) {
		if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_TOKEN) {
			set_id(q, r->token->has_job ? r->token->job : 0);
			if (r->token->has_text && buf_add(&text, r->token->text.data, r->token->text.len)) {
				rc = -ENOMEM;
				break;
			}
		} else if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_DONE ||
			   r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR) {
			last = r;
			break;
		}
		proto_response_free(r);
		r = NULL;
		if ((rc = ic_recv(q, &r, -1)))
			break;
	}
	ic_close(q);
	if (!last) {
		proto_response_free(r);
		buf_free(&text);
		ret = rc == -ECONNRESET ? MHD_NO : reply_error(q->mc, 503, NULL, "the server stopped answering: %s", strerror(-rc));
		goto out;
	}
	if (last->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR) {
		ret = reply_json(q->mc, code_status(last->error->code, false), proto_error_json(last->error, false));
		proto_response_free(last);
		buf_free(&text);
		goto out;
	}
	done = last->done;
	set_id(q, 0);
	struct buf clean = { 0 };
	utf8_clean(&clean, (const uint8_t *)(text.p ? text.p : ""), text.n);
	cJSON *res = completion_head(q, q->chat ? "chat.completion" : "text_completion");
	cJSON *choices = cJSON_AddArrayToObject(res, "choices");
	cJSON *c = cJSON_CreateObject();
	cJSON_AddNumberToObject(c, "index", 0);
	if (q->chat) {
		cJSON *msg = cJSON_AddObjectToObject(c, "message");
		cJSON_AddStringToObject(msg, "role", "assistant");
		cJSON_AddStringToObject(msg, "content", clean.p ? clean.p : "");
	} else {
		cJSON_AddStringToObject(c, "text", clean.p ? clean.p : "");
		cJSON_AddNullToObject(c, "logprobs");
	}
	cJSON_AddStringToObject(c, "finish_reason", finish_word(done->reason));
	cJSON_AddItemToArray(choices, c);
	add_usage(res, done->usage);
	proto_response_free(last);
	buf_free(&text);
	buf_free(&clean);
	ret = reply_json(q->mc, 200, res);
out:
	cJSON_Delete(root);
	gen_req_free(&g);
	return ret;
}

/* ---- contexts: ingest --------------------------------------------------------------------- */

static int send_data(struct hreq *q, const void *text, size_t n, const char *file, uint64_t size)
{
	Goldfinch__V1__IngestData d = GOLDFINCH__V1__INGEST_DATA__INIT;
	Goldfinch__V1__FileStart f = GOLDFINCH__V1__FILE_START__INIT;
	proto_request m = GOLDFINCH__V1__REQUEST__INIT;
	m.body_case = GOLDFINCH__V1__REQUEST__BODY_INGEST_DATA;
	m.ingest_data = &d;
	if (file) {
		f.path = (char *)file;
		f.has_size = true;
		f.size = size;
		d.piece_case = GOLDFINCH__V1__INGEST_DATA__PIECE_FILE;
		d.file = &f;
		return ic_send(q, &m);
	}
	/* Pieces that fit the server's frames with their envelope. */
	size_t piece = q->h->max_frame > PIECE_BYTES + 64 ? PIECE_BYTES : q->h->max_frame - 64;
	for (size_t off = 0; off < n; off += piece) {
		d.piece_case = GOLDFINCH__V1__INGEST_DATA__PIECE_TEXT;
		d.text.data = (uint8_t *)text + off;
		d.text.len = n - off < piece ? n - off : piece;
		int rc = ic_send(q, &m);
		if (rc)
			return rc;
	}
	return 0;
}

static unsigned ingest_start(struct hreq *q)
{
	unsigned st = ic_open(q);
	if (st)
		return st;
	Goldfinch__V1__IngestStart is = GOLDFINCH__V1__INGEST_START__INIT;
	is.name = q->ctx_name;
	const char *len = MHD_lookup_connection_value(q->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (len && !q->tar) {
		is.has_total_bytes = true;
		is.total_bytes = strtoull(len, NULL, 10);
	}
	proto_request m = GOLDFINCH__V1__REQUEST__INIT;
	m.body_case = GOLDFINCH__V1__REQUEST__BODY_INGEST_START;
	m.ingest_start = &is;
	if (ic_send(q, &m)) {
		snprintf(q->err_msg, sizeof(q->err_msg), "the server stopped reading");
		return 503;
	}
	return 0;
}

struct tar_file {
	char *rel;
	uint64_t off, size;
};

/* gf's walk order: names compared bytewise within each folder, a folder's files where its
 * name sorts. That is the paths compared with '/' below every other byte. */
static int cmp_walk(const void *a, const void *b)
{
	const unsigned char *x = (const unsigned char *)((const struct tar_file *)a)->rel;
	const unsigned char *y = (const unsigned char *)((const struct tar_file *)b)->rel;
	for (;; x++, y++) {
		unsigned cx = *x == '/' ? 0 : *x + 1u, cy = *y == '/' ? 0 : *y + 1u;
		if (!*x || !*y || cx != cy)
			return (!*x ? 0 : (int)cx) - (!*y ? 0 : (int)cy);
	}
}

/* Whether a path of the archive is one gf's walk would send: no version-control folder
 * on the way. Also drops "./" and "/" prefixes, as a walk's paths are relative. */
static const char *tar_rel(const char *p)
{
	for (;;) {
		if (p[0] == '/')
			p++;
		else if (p[0] == '.' && p[1] == '/')
			p += 2;
		else
			break;
	}
	if (!*p)
		return NULL;
	for (const char *c = p; *c;) {
		const char *e = strchr(c, '/');
		size_t n = e ? (size_t)(e - c) : strlen(c);
		char name[256];
		if (e && n < sizeof(name)) {
			memcpy(name, c, n);
			name[n] = 0;
			if (gfc_is_vcs_dir(name))
				return NULL;
		}
		if (!e)
			break;
		c = e + 1;
	}
	return p;
}

/* Sends the archive's text files as gf ingest DIR sends the folder: sorted the same way,
 * binaries and version-control folders skipped by the same rules (gfclient.h), each file
 * as a FileStart and its bytes. Links are skipped: an archive's link has no bytes of its own. */
static int ingest_tar(struct hreq *q, char *err)
{
	struct archive *a = archive_read_new();
	struct archive_entry *e;
	struct tar_file *files = NULL;
	size_t n = 0, cap = 0;
	FILE *store = tmpfile();
	uint64_t off = 0;
	char *data = malloc(PIECE_BYTES);
	int rc = 0;
	if (!a || !store || !data) {
		snprintf(err, GF_ERR_LEN, "out of memory or temporary files for the archive");
		rc = -ENOMEM;
		goto out;
	}
	archive_read_support_filter_all(a);
	archive_read_support_format_tar(a);
	fflush(q->tar);
	rewind(q->tar);
	if (archive_read_open_FILE(a, q->tar) != ARCHIVE_OK) {
		snprintf(err, GF_ERR_LEN, "the body is not a tar archive: %s", archive_error_string(a));
		rc = -EINVAL;
		goto out;
	}
	for (;;) {
		int r = archive_read_next_header(a, &e);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
			snprintf(err, GF_ERR_LEN, "reading the tar archive: %s", archive_error_string(a));
			rc = -EINVAL;
			goto out;
		}
		const char *rel = tar_rel(archive_entry_pathname(e));
		if (!rel || archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e))
			continue;
		/* Its bytes to the store; the first 8 KiB say whether it is text. */
		uint64_t start = off, size = 0;
		uint8_t sniff[GFC_SNIFF_BYTES];
		size_t n_sniff = 0;
		la_ssize_t got;
		while ((got = archive_read_data(a, data, PIECE_BYTES)) > 0) {
			if (n_sniff < sizeof(sniff)) {
				size_t k = (size_t)got < sizeof(sniff) - n_sniff ? (size_t)got : sizeof(sniff) - n_sniff;
				memcpy(sniff + n_sniff, data, k);
				n_sniff += k;
			}
			if (fwrite(data, 1, (size_t)got, store) != (size_t)got) {
				snprintf(err, GF_ERR_LEN, "writing a temporary file: %s", strerror(errno));
				rc = -EIO;
				goto out;
			}
			size += (uint64_t)got;
		}
		if (got < 0) {
			snprintf(err, GF_ERR_LEN, "reading %s from the archive: %s", rel, archive_error_string(a));
			rc = -EINVAL;
			goto out;
		}
		off += size;
		if (!gfc_is_text(sniff, n_sniff, size > n_sniff))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			struct tar_file *f = realloc(files, cap * sizeof(*f));
			if (!f) {
				rc = -ENOMEM;
				goto out;
			}
			files = f;
		}
		if (!(files[n].rel = strdup(rel))) {
			rc = -ENOMEM;
			goto out;
		}
		files[n].off = start;
		files[n].size = size;
		n++;
	}
	if (n)
		qsort(files, n, sizeof(*files), cmp_walk);
	fflush(store);
	for (size_t i = 0; i < n && !rc; i++) {
		if ((rc = send_data(q, NULL, 0, files[i].rel, files[i].size)))
			break;
		for (uint64_t done = 0; done < files[i].size && !rc;) {
			size_t k = files[i].size - done < PIECE_BYTES ? (size_t)(files[i].size - done) : PIECE_BYTES;
			ssize_t r = pread(fileno(store), data, k, (off_t)(files[i].off + done));
			if (r <= 0) {
				snprintf(err, GF_ERR_LEN, "reading a temporary file: %s", r ? strerror(errno) : "short");
				rc = -EIO;
				break;
			}
			rc = send_data(q, data, (size_t)r, NULL, 0);
			done += (uint64_t)r;
		}
	}
	if (rc && !err[0])
		snprintf(err, GF_ERR_LEN, "sending the archive to the ingest: %s", strerror(-rc));
out:
	for (size_t i = 0; i < n; i++)
		free(files[i].rel);
	free(files);
	free(data);
	if (store)
		fclose(store);
	if (a)
		archive_read_free(a);
	return rc;
}

static cJSON *progress_json(const Goldfinch__V1__IngestProgress *p)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "object", "context.progress");
	cJSON_AddNumberToObject(o, "job", (double)p->job);
	cJSON_AddNumberToObject(o, "tokens_done", (double)p->tokens_done);
	cJSON_AddNumberToObject(o, "tokens_total", (double)p->tokens_total);
	cJSON_AddNumberToObject(o, "bytes_done", (double)p->bytes_done);
	cJSON_AddNumberToObject(o, "tokens_per_second", p->tokens_per_s);
	return o;
}

static cJSON *ready_json(const Goldfinch__V1__ContextReady *cr)
{
	cJSON *o = cr->context ? context_json(cr->context) : cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "reused", cr->reused);
	cJSON_AddNumberToObject(o, "seconds", cr->seconds);
	return o;
}

/* Progress as SSE events, then the context (or an error) and [DONE]. */
static ssize_t ingest_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
	struct hreq *q = cls;
	(void)pos;
	for (;;) {
		if (q->out_off < q->out.n)
			return drain_out(q, dst, max);
		if (q->finished)
			return MHD_CONTENT_READER_END_OF_STREAM;
		proto_response *r = q->first;
		q->first = NULL;
		int rc = r ? 0 : ic_recv(q, &r, -1);
		if (rc) {
			ic_close(q);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		bool last = true;
		if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_PROGRESS) {
			rc = sse(q, progress_json(r->progress));
			last = false;
		} else if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY) {
			rc = sse(q, ready_json(r->context_ready));
		} else if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR) {
			rc = sse(q, proto_error_json(r->error, false));
		} else {
			last = false;
		}
		proto_response_free(r);
		if (!rc && last)
			rc = buf_str(&q->out, "data: [DONE]\n\n");
		if (rc)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (last) {
			q->finished = true;
			ic_close(q);
		}
	}
}

static enum MHD_Result answer_ingest(struct hreq *q)
{
	char err[GF_ERR_LEN] = "";
	int rc;
	if (q->tar) {
		unsigned st = ingest_start(q);
		if (st)
			return reply_error(q->mc, st, NULL, "%s", q->err_msg);
		if ((rc = ingest_tar(q, err))) {
			/* Without IngestEnd the loop cancels the ingest when the pair closes. */
			ic_close(q);
			return reply_error(q->mc, rc == -EINVAL ? 400 : 500, NULL, "%s", err);
		}
	}
	Goldfinch__V1__IngestEnd ie = GOLDFINCH__V1__INGEST_END__INIT;
	proto_request m = GOLDFINCH__V1__REQUEST__INIT;
	m.body_case = GOLDFINCH__V1__REQUEST__BODY_INGEST_END;
	m.ingest_end = &ie;
	if ((rc = ic_send(q, &m)))
		return reply_error(q->mc, 503, NULL, "the server stopped reading: %s", strerror(-rc));
	/* The first response that is not progress decides the status when not streaming; a
	 * stream starts with 200 at the first response of any kind. */
	proto_response *r = NULL;
	for (;;) {
		if ((rc = ic_recv(q, &r, -1)))
			return rc == -ECONNRESET ? MHD_NO : reply_error(q->mc, 503, NULL, "the server stopped answering: %s", strerror(-rc));
		if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR) {
			unsigned st = code_status(r->error->code, false);
			enum MHD_Result ret = reply_json(q->mc, st, proto_error_json(r->error, false));
			proto_response_free(r);
			return ret;
		}
		if (q->stream || r->body_case == GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY)
			break;
		proto_response_free(r);
	}
	if (!q->stream) {
		cJSON *o = ready_json(r->context_ready);
		proto_response_free(r);
		ic_close(q);
		return reply_json(q->mc, 201, o);
	}
	q->first = r;
	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, ingest_reader, q, NULL);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", "text/event-stream");
	MHD_add_response_header(resp, "Cache-Control", "no-cache");
	enum MHD_Result ret = MHD_queue_response(q->mc, 200, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* ---- routing ------------------------------------------------------------------------------- */

/* The route of (method, url); *status 404 or 405 when there is none. */
static enum route route_of(const char *method, const char *url, unsigned *status, const char **allow)
{
	static const struct {
		const char *path;
		bool prefix;
		const char *method;
		enum route r;
		const char *allow;
	} routes[] = {
		{ "/", false, "GET", R_INDEX, "GET" },
		{ "/health", false, "GET", R_HEALTH, "GET" },
		{ "/metrics", false, "GET", R_METRICS, "GET" },
		{ "/v1/models", false, "GET", R_MODELS, "GET" },
		{ "/v1/chat/completions", false, "POST", R_CHAT, "POST" },
		{ "/v1/completions", false, "POST", R_COMPLETIONS, "POST" },
		{ "/v1/contexts", false, "GET", R_CTX_LIST, "GET, POST" },
		{ "/v1/contexts", false, "POST", R_CTX_ADD, "GET, POST" },
		{ "/v1/contexts/", true, "DELETE", R_CTX_DROP, "DELETE" },
	};
	bool path_known = false;
	*status = 404;
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		size_t n = strlen(routes[i].path);
		bool match = routes[i].prefix ? !strncmp(url, routes[i].path, n) && url[n] : !strcmp(url, routes[i].path);
		if (!match)
			continue;
		path_known = true;
		*allow = routes[i].allow;
		if (!strcmp(method, routes[i].method) || (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET")))
			return routes[i].r;
	}
	if (path_known)
		*status = 405;
	return R_NONE;
}

static bool authorized(const gfd_server *s, struct MHD_Connection *mc)
{
	if (!s->auth_token)
		return true;
	const char *v = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!v || strncasecmp(v, "Bearer ", 7))
		return false;
	v += 7;
	while (*v == ' ')
		v++;
	return gfd_ct_equal(v, strlen(v), s->auth_token, s->auth_len);
}

static enum MHD_Result answer_health(gfd_http *h, struct MHD_Connection *mc)
{
	bool up = atomic_load(&h->attached), stopped = atomic_load(&h->stopped);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "status", up ? "ok" : stopped ? "stopping" : "loading");
	if (!up) {
		cJSON_Delete(o);
		o = error_json(503, "unavailable_error", stopped ? "the server is shutting down" : "the model is loading");
		cJSON_AddStringToObject(o, "status", stopped ? "stopping" : "loading");
	}
	return reply_json(mc, up ? 200 : 503, o);
}

static enum MHD_Result answer_index(struct MHD_Connection *mc)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(gfd_web_index_len, (void *)gfd_web_index,
								 MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", "text/html; charset=utf-8");
	/* Its inline script and style, and requests to this server only. */
	MHD_add_response_header(r, "Content-Security-Policy",
				"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
				"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(r, "Cache-Control", "no-cache");
	enum MHD_Result ret = MHD_queue_response(mc, 200, r);
	MHD_destroy_response(r);
	return ret;
}

static bool query_true(struct MHD_Connection *mc, const char *key)
{
	const char *v = MHD_lookup_connection_value(mc, MHD_GET_ARGUMENT_KIND, key);
	return v && (!strcmp(v, "1") || !strcmp(v, "true") || !v[0]);
}

/* The first call of a request: its headers. What they decide is answered once the body
 * has been read (answered before, libmicrohttpd closes the connection: no keep-alive),
 * except a body announced over the limit, which is not worth reading. */
static enum MHD_Result on_headers(gfd_http *h, struct hreq *q, const char *method, const char *url)
{
	struct MHD_Connection *mc = q->mc;
	unsigned status;
	q->route = route_of(method, url, &status, &q->allow);
	if (q->route == R_NONE) {
		defer_error(q, status, status == 405 ? "method %s not allowed on %.200s" : "no route %s %.200s",
			    method, url);
		return MHD_YES;
	}
	/* The page holds nothing secret: the browser must load it before it can send a token. */
	if (q->route == R_HEALTH || q->route == R_INDEX)
		return MHD_YES;
	pthread_mutex_lock(&h->mu);
	q->s = h->srv;
	pthread_mutex_unlock(&h->mu);
	if (!q->s) {
		defer_error(q, 503, "%s", atomic_load(&h->stopped) ? "the server is shutting down" : "the model is loading");
		return MHD_YES;
	}
	if (!authorized(q->s, mc)) {
		defer_error(q, 401, "missing or wrong token: send Authorization: Bearer TOKEN (--auth-token-file)");
		return MHD_YES;
	}
	const char *len = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	uint64_t clen = len ? strtoull(len, NULL, 10) : 0;
	if (q->route != R_CTX_ADD && clen > h->max_frame)
		return reply_error(mc, 413, NULL, "a body of %" PRIu64 " bytes exceeds the %u-byte limit (--max-frame)",
				   clen, h->max_frame);
	if (q->route == R_CTX_ADD) {
		const char *name = MHD_lookup_connection_value(mc, MHD_GET_ARGUMENT_KIND, "name");
		if (!name || !name[0]) {
			defer_error(q, 400, "POST /v1/contexts needs ?name=NAME");
			return MHD_YES;
		}
		if (!(q->ctx_name = strdup(name)))
			return MHD_NO;
		q->stream = query_true(mc, "stream");
		const char *ct = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
		if (ct && !strncasecmp(ct, "application/x-tar", 17)) {
			/* libarchive reads the whole archive before the files go out sorted. */
			if (!(q->tar = tmpfile()))
				defer_error(q, 500, "no temporary file for the archive: %s", strerror(errno));
		} else {
			/* Text goes into the ingest as it arrives. */
			unsigned st = ingest_start(q);
			if (st)
				defer_error(q, st, "%s", q->err_msg);
			else
				q->ingest_text = true;
		}
	}
	return MHD_YES;
}

static void on_body(struct hreq *q, const char *data, size_t n)
{
	if (q->err_status)
		return;
	if (q->ingest_text) {
		int rc = send_data(q, data, n, NULL, 0);
		if (rc)
			defer_error(q, 503, "the server stopped reading the ingest: %s", strerror(-rc));
		q->ingest_bytes += n;
		return;
	}
	if (q->tar) {
		if (fwrite(data, 1, n, q->tar) != n)
			defer_error(q, 500, "writing the archive to a temporary file: %s", strerror(errno));
		return;
	}
	if (q->body.n + n > q->h->max_frame) {
		defer_error(q, 413, "the body exceeds the %u-byte limit (--max-frame)", q->h->max_frame);
		buf_free(&q->body);
		return;
	}
	if (buf_add(&q->body, data, n))
		defer_error(q, 500, "out of memory for the body");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	gfd_http *h = cls;
	struct hreq *q = *con_cls;
	(void)version;
	if (!q) {
		if (!(q = calloc(1, sizeof(*q))))
			return MHD_NO;
		q->h = h;
		q->mc = mc;
		q->fd = -1;
		*con_cls = q;
		const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
		q->client_fd = ci ? ci->connect_fd : -1;
		ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		snprintf(q->peer, sizeof(q->peer), "?");
		if (ci && ci->client_addr) {
			char host[INET6_ADDRSTRLEN] = "?", port[8] = "";
			const struct sockaddr *sa = ci->client_addr;
			socklen_t sl = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
			getnameinfo(sa, sl, host, sizeof(host), port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
			snprintf(q->peer, sizeof(q->peer), sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
		}
		return on_headers(h, q, method, url);
	}
	if (*upload_size) {
		on_body(q, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	if (q->err_status) {
		ic_close(q);
		return reply_json_allow(mc, q->err_status, error_json(q->err_status, NULL, q->err_msg),
					q->err_status == 405 ? q->allow : NULL);
	}
	switch (q->route) {
	case R_INDEX:
		return answer_index(mc);
	case R_HEALTH:
		return answer_health(h, mc);
	case R_METRICS: {
		char *body = gfd_metrics_render(q->s);
		if (!body)
			return MHD_NO;
		return reply(mc, 200, "text/plain; version=0.0.4; charset=utf-8", body);
	}
	case R_MODELS:
	case R_CTX_LIST: {
		unsigned st = ic_open(q);
		if (st)
			return reply_error(mc, st, NULL, "%s", q->err_msg);
		enum MHD_Result ret = answer_list(q, q->route == R_MODELS);
		ic_close(q);
		return ret;
	}
	case R_CTX_DROP: {
		unsigned st = ic_open(q);
		if (st)
			return reply_error(mc, st, NULL, "%s", q->err_msg);
		enum MHD_Result ret = answer_drop(q, url + strlen("/v1/contexts/"));
		ic_close(q);
		return ret;
	}
	case R_CHAT:
	case R_COMPLETIONS:
		q->chat = q->route == R_CHAT;
		return answer_generate(q);
	case R_CTX_ADD:
		return answer_ingest(q);
	default:
		return reply_error(mc, 404, NULL, "no route");
	}
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
			 enum MHD_RequestTerminationCode why)
{
	(void)cls;
	(void)mc;
	(void)why;
	hreq_free(*con_cls);
	*con_cls = NULL;
}

/* ---- start and stop ------------------------------------------------------------------------ */

static bool loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr);
	return false;
}

int gfd_http_start(gfd_http **out, const gfd_options *o, gfd_log *log, char *err)
{
	char host[256] = "127.0.0.1", port[32];
	const char *addr = o->http;
	const char *colon = strrchr(addr, ':');
	*out = NULL;
	/* HOST:PORT, [V6]:PORT, or :PORT / PORT for loopback. */
	if (addr[0] == '[') {
		const char *close = strchr(addr, ']');
		if (!close || close[1] != ':' || (size_t)(close - addr) > sizeof(host)) {
			snprintf(err, GF_ERR_LEN, "--http %s: expected HOST:PORT", addr);
			return -EINVAL;
		}
		snprintf(host, sizeof(host), "%.*s", (int)(close - addr - 1), addr + 1);
		colon = close + 1;
	} else if (colon && colon > addr) {
		if ((size_t)(colon - addr) >= sizeof(host)) {
			snprintf(err, GF_ERR_LEN, "--http %s: host too long", addr);
			return -EINVAL;
		}
		snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
	}
	snprintf(port, sizeof(port), "%s", colon ? colon + 1 : addr);
	char *end;
	unsigned long pv = strtoul(port, &end, 10);
	if (!port[0] || *end || pv > 65535) {
		snprintf(err, GF_ERR_LEN, "--http %s: expected HOST:PORT", addr);
		return -EINVAL;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai = NULL;
	int grc = getaddrinfo(host, port, &hints, &ai);
	if (grc) {
		snprintf(err, GF_ERR_LEN, "--http %s: %s", addr, gai_strerror(grc));
		return -EINVAL;
	}
	if (!loopback(ai->ai_addr) && !o->auth_token_file) {
		freeaddrinfo(ai);
		snprintf(err, GF_ERR_LEN, "--http %s is beyond loopback: give --auth-token-file too", addr);
		return -EINVAL;
	}
	gfd_http *h = calloc(1, sizeof(*h));
	if (!h) {
		freeaddrinfo(ai);
		snprintf(err, GF_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	h->log = log;
	h->max_frame = (uint32_t)o->max_frame;
	pthread_mutex_init(&h->mu, NULL);
	atomic_init(&h->attached, false);
	atomic_init(&h->stopped, false);
	atomic_init(&h->next_id, 0);
	const char *base = strrchr(o->model_path, '/');
	base = base ? base + 1 : o->model_path;
	size_t bl = strlen(base);
	if (bl > 5 && !strcmp(base + bl - 5, ".gguf"))
		bl -= 5;
	snprintf(h->model_id, sizeof(h->model_id), "%.*s", (int)bl, base);
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNS,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_S,
				MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!h->d) {
		pthread_mutex_destroy(&h->mu);
		free(h);
		snprintf(err, GF_ERR_LEN, "--http %s: cannot listen there (in use, or not a local address?)", addr);
		return -EADDRINUSE;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
	gfd_logf(log, "http on http://%s%s%s:%u/ (model id \"%s\")", strchr(host, ':') ? "[" : "", host,
		 strchr(host, ':') ? "]" : "", di ? (unsigned)di->port : 0u, h->model_id);
	*out = h;
	return 0;
}

void gfd_http_attach(gfd_http *h, gfd_server *s)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->mu);
	h->srv = s;
	atomic_store(&h->attached, true);
	pthread_mutex_unlock(&h->mu);
}

void gfd_http_detach(gfd_http *h)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->mu);
	h->srv = NULL;
	atomic_store(&h->attached, false);
	atomic_store(&h->stopped, true);
	pthread_mutex_unlock(&h->mu);
}

void gfd_http_stop(gfd_http *h)
{
	if (!h)
		return;
	gfd_http_detach(h);
	if (h->d)
		MHD_stop_daemon(h->d);
	pthread_mutex_destroy(&h->mu);
	free(h);
}
