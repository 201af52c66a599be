/*
 * gfclient.c — connection, framing and the request/response loop of libgfclient.
 * See gfclient.h for the contract.
 *
 * The socket is non-blocking and every wait is a poll() on it and on the cancel fd, so a
 * call that sends (an ingest's pieces) also reads what arrives meanwhile: a progress
 * message reaches the caller at once, and an Error ends the sending instead of being found
 * after megabytes more have been pushed at a server that no longer listens.
 */
#include "gfc_internal.h"
#include "gfclient.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TOKEN_FILE_MAX (64u << 10)
#define READ_BYTES (64u << 10)

enum until {
	UNTIL_SENT,   /* the output queue is empty */
	UNTIL_FIRST,  /* the job got its first response */
	UNTIL_DONE,   /* the job got its final response */
};

struct gfc_conn {
	int fd;
	int cancel_fd;
	int timeout_ms;         /* -1: no limit */
	int wait_ms;            /* the limit of the wait under way */
	char *server;           /* as given, found in the environment, or the server file's
				 * address being tried */
	char *server_file;      /* where the addresses came from; NULL: none */
	char *server_who;       /* the server file's "pid P on HOST, SLURM job J", or NULL */
	char **addrs;           /* the server file's addresses, in order [n_addrs] */
	size_t n_addrs;
	bool is_unix;
	struct sockaddr_un sun;
	char *host, *port;      /* TCP */
	char *token;            /* NULL: none */
	char *client_name;
	proto_reader rd;
	uint8_t *obuf;          /* frames queued for sending: [ooff, olen) */
	size_t olen, ooff, ocap;
	uint64_t next_id;
	proto_response *hello;
	uint64_t max_body;      /* largest request body the server takes */
	int server_code;        /* ErrorCode that failed the last call, 0 none */
	/* The job being waited on (0: none). */
	uint64_t job;
	gfc_response_fn fn;
	void *user;
	bool ingest;            /* an ingest is open across calls */
	bool cancellable;       /* a job the server can cancel (generate, ingest) */
	bool job_done, got_first, cancel_sent;
	int job_rc;
	uint64_t first_bytes_done;
	uint64_t cancel_id;
	proto_response *final;
	char job_err[GFC_ERR_LEN];
};

void gfc_seterr(char *err, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	va_start(ap, fmt);
	vsnprintf(err, GFC_ERR_LEN, fmt, ap);
	va_end(ap);
}

void gfc_options_default(gfc_options *o)
{
	memset(o, 0, sizeof(*o));
	o->cancel_fd = -1;
}

int gfc_code_errno(int code)
{
	switch (code) {
	case GOLDFINCH__V1__ERROR_CODE__ERROR_BAD_REQUEST: return -EINVAL;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_UNAUTHENTICATED: return -EACCES;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_VERSION: return -EPROTONOSUPPORT;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND: return -ENOENT;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_TOO_LARGE: return -E2BIG;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_BUSY: return -EBUSY;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_CANCELLED: return -ECANCELED;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_NO_SPACE: return -ENOSPC;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN: return -ESHUTDOWN;
	default: return -EIO;
	}
}

int gfc_code_exit(int code)
{
	switch (code) {
	case GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND: return GFC_EXIT_NOT_FOUND;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_UNAUTHENTICATED: return GFC_EXIT_AUTH;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_VERSION: return GFC_EXIT_CONNECTION;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_CANCELLED: return GFC_EXIT_CANCELLED;
	case GOLDFINCH__V1__ERROR_CODE__ERROR_BUSY:
	case GOLDFINCH__V1__ERROR_CODE__ERROR_TOO_LARGE:
	case GOLDFINCH__V1__ERROR_CODE__ERROR_NO_SPACE:
	case GOLDFINCH__V1__ERROR_CODE__ERROR_SHUTTING_DOWN: return GFC_EXIT_LIMIT;
	default: return GFC_EXIT_SERVER;
	}
}

int gfc_exit_status(const gfc_conn *c, int rc)
{
	if (!rc)
		return GFC_EXIT_OK;
	if (c && c->server_code)
		return gfc_code_exit(c->server_code);
	if (rc == -ECANCELED)
		return GFC_EXIT_CANCELLED;
	return GFC_EXIT_CONNECTION;
}

int gfc_server_error(const gfc_conn *c)
{
	return c ? c->server_code : 0;
}

const char *gfc_server_address(const gfc_conn *c)
{
	return c->server;
}

const Goldfinch__V1__HelloReply *gfc_hello(const gfc_conn *c)
{
	return c && c->hello ? c->hello->hello : NULL;
}

/* ---- set-up --------------------------------------------------------------------------- */

static int parse_address(gfc_conn *c, char *err)
{
	const char *s = c->server;

	/* A server file writes "tcp:" to say what kind of address follows. */
	if (!strncmp(s, "tcp:", 4))
		s += 4;
	if (!strncmp(s, "unix:", 5) || s[0] == '/' || !strncmp(s, "./", 2)) {
		const char *path = strncmp(s, "unix:", 5) ? s : s + 5;
		if (!*path || strlen(path) >= sizeof(c->sun.sun_path)) {
			gfc_seterr(err, "server address \"%s\": socket path empty or over %zu bytes", s,
			       sizeof(c->sun.sun_path) - 1);
			return -EINVAL;
		}
		c->is_unix = true;
		c->sun.sun_family = AF_UNIX;
		memcpy(c->sun.sun_path, path, strlen(path) + 1);
		return 0;
	}
	const char *colon = strrchr(s, ':');
	const char *h = s, *hend = colon;
	if (s[0] == '[') {   /* [v6]:port */
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':')
			goto bad;
		h = s + 1;
		hend = close;
		colon = close + 1;
	}
	if (!colon || hend == h || !colon[1])
		goto bad;
	char *end;
	errno = 0;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (errno || *end || port == 0 || port > 65535 || colon[1] == '-' || colon[1] == '+')
		goto bad;
	c->host = strndup(h, (size_t)(hend - h));
	c->port = strdup(colon + 1);
	if (!c->host || !c->port)
		return -ENOMEM;
	return 0;
bad:
	gfc_seterr(err, "server address \"%s\": expected unix:/path or host:port", s);
	return -EINVAL;
}

static int read_token(gfc_conn *c, const char *path, char *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		gfc_seterr(err, "auth token file %s: %s", path, strerror(errno));
		return -EACCES;
	}
	char *buf = malloc(TOKEN_FILE_MAX + 1);
	size_t n = 0;
	int rc = 0;
	if (!buf) {
		rc = -ENOMEM;
		goto close_fd;
	}
	for (;;) {
		ssize_t r = read(fd, buf + n, TOKEN_FILE_MAX + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			gfc_seterr(err, "auth token file %s: %s", path, strerror(errno));
			rc = -EACCES;
			goto free_buf;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > TOKEN_FILE_MAX) {
			gfc_seterr(err, "auth token file %s: over %u bytes", path, TOKEN_FILE_MAX);
			rc = -EACCES;
			goto free_buf;
		}
	}
	/* The server ignores one trailing newline (README); a CRLF editor's too. */
	if (n && buf[n - 1] == '\n')
		n--;
	if (n && buf[n - 1] == '\r')
		n--;
	buf[n] = 0;
	if (!n || strlen(buf) != n) {
		gfc_seterr(err, "auth token file %s: %s", path, n ? "contains a NUL byte" : "empty");
		rc = -EACCES;
		goto free_buf;
	}
	c->token = buf;
	close(fd);
	return 0;
free_buf:
	free(buf);
close_fd:
	close(fd);
	return rc;
}

/* Makes addr the address that open_socket uses. */
static int use_address(gfc_conn *c, const char *addr, char *err)
{
	char *dup = strdup(addr);
	if (!dup)
		return -ENOMEM;
	free(c->server);
	free(c->host);
	free(c->port);
	c->server = dup;
	c->host = c->port = NULL;
	c->is_unix = false;
	memset(&c->sun, 0, sizeof(c->sun));
	return parse_address(c, err);
}

/* Sets *field to a copy of val: a key given twice keeps its last value. */
static int set_field(char **field, const char *val)
{
	free(*field);
	*field = strdup(val);
	return *field ? 0 : -ENOMEM;
}

/* Reads the server file (gfclient.h): its addresses into c->addrs (each checked), its
 * token file into *token_file (malloc'd, or NULL), who wrote it into c->server_who. */
static int read_server_file(gfc_conn *c, const char *path, char **token_file, char *err)
{
	char *buf, *host = NULL, *pid = NULL, *job = NULL;
	bool have_format = false;
	size_t n = 0;
	int lineno = 0, rc = 0;

	*token_file = NULL;
	if (!(c->server_file = strdup(path)))
		return -ENOMEM;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = errno == ENOENT ? -ENOENT : -EIO;
		gfc_seterr(err, "server file %s: %s%s", path, strerror(errno),
			   errno == ENOENT ? " (goldfinchd writes it once it listens)" : "");
		return rc;
	}
	if (!(buf = malloc(GFC_SERVER_FILE_MAX + 1))) {
		rc = -ENOMEM;
		goto close_fd;
	}
	for (;;) {
		ssize_t r = read(fd, buf + n, GFC_SERVER_FILE_MAX + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			gfc_seterr(err, "server file %s: %s", path, strerror(errno));
			rc = -EIO;
			goto free_buf;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > GFC_SERVER_FILE_MAX) {
			gfc_seterr(err, "server file %s: over %u bytes", path, GFC_SERVER_FILE_MAX);
			rc = -EBADMSG;
			goto free_buf;
		}
	}
	buf[n] = 0;
	if (strlen(buf) != n) {
		gfc_seterr(err, "server file %s: contains a NUL byte", path);
		rc = -EBADMSG;
		goto free_buf;
	}
	for (char *line = buf, *next; line && !rc; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		lineno++;
		size_t len = strlen(line);
		while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
			line[--len] = 0;
		if (!len || line[0] == '#')
			continue;
		char *val = line + strcspn(line, " \t");
		if (*val)
			*val++ = 0;
		val += strspn(val, " \t");
		bool known = !strcmp(line, "format") || !strcmp(line, "address") ||
			     !strcmp(line, "auth-token-file") || !strcmp(line, "host") ||
			     !strcmp(line, "pid") || !strcmp(line, "slurm-job");
		if (!known) {
			continue; /* added by a later minor version */
		} else if (!*val) {
			gfc_seterr(err, "server file %s line %d: \"%.40s\" without a value", path,
				   lineno, line);
			rc = -EBADMSG;
		} else if (!strcmp(line, "format")) {
			char *end;
			errno = 0;
			unsigned long major = strtoul(val, &end, 10);
			if (errno || end == val || (*end && *end != '.')) {
				gfc_seterr(err, "server file %s line %d: format \"%.40s\": expected MAJOR.MINOR",
					   path, lineno, val);
				rc = -EBADMSG;
			} else if (major != GFC_SERVER_FILE_MAJOR) {
				gfc_seterr(err, "server file %s: format %.40s, this client reads %d.x", path,
					   val, GFC_SERVER_FILE_MAJOR);
				rc = -EBADMSG;
			}
			have_format = true;
		} else if (!strcmp(line, "address")) {
			char e[GFC_ERR_LEN] = "";
			rc = use_address(c, val, e);
			if (rc == -EINVAL) {
				gfc_seterr(err, "server file %s line %d: %s", path, lineno, e);
				rc = -EBADMSG;
			}
			if (!rc) {
				char **v = realloc(c->addrs, (c->n_addrs + 1) * sizeof(*v));
				if (v)
					c->addrs = v;
				if (!v || !(v[c->n_addrs] = strdup(val)))
					rc = -ENOMEM;
				else
					c->n_addrs++;
			}
		} else if (!strcmp(line, "auth-token-file")) {
			rc = set_field(token_file, val);
		} else if (!strcmp(line, "host")) {
			rc = set_field(&host, val);
		} else if (!strcmp(line, "pid")) {
			rc = set_field(&pid, val);
		} else if (!strcmp(line, "slurm-job")) {
			rc = set_field(&job, val);
		}
	}
	if (!rc && (!have_format || !c->n_addrs)) {
		gfc_seterr(err, "server file %s: %s", path,
			   !have_format ? "no \"format\" line (not a goldfinchd server file?)" :
			   "no address");
		rc = -EBADMSG;
	}
	if (!rc && (pid || host || job)) {
		char who[192];
		snprintf(who, sizeof(who), "pid %.20s on %.64s%s%.20s", pid ? pid : "?",
			 host ? host : "?", job ? ", SLURM job " : "", job ? job : "");
		if (!(c->server_who = strdup(who)))
			rc = -ENOMEM;
	}
	/* The first address until gfc_connect finds one that answers. */
	if (!rc)
		rc = use_address(c, c->addrs[0], err);
	if (rc) {
		free(*token_file);
		*token_file = NULL;
	}
	free(host);
	free(pid);
	free(job);
free_buf:
	free(buf);
close_fd:
	close(fd);
	return rc;
}

int gfc_init(gfc_conn **out, const gfc_options *o, char *err)
{
	gfc_options def;
	int rc;

	*out = NULL;
	if (!o) {
		gfc_options_default(&def);
		o = &def;
	}
	gfc_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = -1;
	c->cancel_fd = o->cancel_fd;
	c->timeout_ms = -1;
	if (o->timeout_s > 0)
		c->timeout_ms = o->timeout_s * 1000 > INT_MAX ? INT_MAX : (int)(o->timeout_s * 1000);
	c->next_id = 1;
	proto_reader_init(&c->rd, GFC_MAX_RESPONSE);
	/* Flags before the environment, an address before a server file (gfclient.h). */
	const char *server = o->server, *sfile = NULL;
	char *sfile_token = NULL;
	if (!server || !*server) {
		server = NULL;
		sfile = o->server_file;
		if (!sfile || !*sfile) {
			sfile = NULL;
			server = getenv(GFC_ENV_SERVER);
			if (!server || !*server) {
				server = NULL;
				sfile = getenv(GFC_ENV_SERVER_FILE);
				if (sfile && !*sfile)
					sfile = NULL;
			}
		}
	}
	if (!server && !sfile)
		server = GFC_DEFAULT_SERVER;
	c->client_name = strdup(o->client_name ? o->client_name : "libgfclient");
	if (!c->client_name) {
		rc = -ENOMEM;
		goto free_conn;
	}
	rc = sfile ? read_server_file(c, sfile, &sfile_token, err) : use_address(c, server, err);
	if (rc)
		goto free_conn;
	const char *tf = o->auth_token_file;
	if (!tf || !*tf)
		tf = sfile_token;
	if (!tf || !*tf)
		tf = getenv(GFC_ENV_TOKEN_FILE);
	if (tf && *tf) {
		rc = read_token(c, tf, err);
		if (rc)
			goto free_conn;
	}
	free(sfile_token);
	*out = c;
	return 0;
free_conn:
	free(sfile_token);
	gfc_close(c);
	return rc;
}

void gfc_close(gfc_conn *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	if (c->token) {
		/* The secret does not outlive the connection in freed memory. */
		volatile char *t = c->token;
		while (*t)
			*t++ = 0;
	}
	free(c->token);
	free(c->server);
	free(c->server_file);
	free(c->server_who);
	for (size_t i = 0; i < c->n_addrs; i++)
		free(c->addrs[i]);
	free(c->addrs);
	free(c->host);
	free(c->port);
	free(c->client_name);
	free(c->obuf);
	proto_reader_free(&c->rd);
	proto_response_free(c->hello);
	proto_response_free(c->final);
	free(c);
}

/* ---- connecting ----------------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Non-blocking connect bounded by the deadline. A Unix socket whose backlog is full says
 * EAGAIN rather than EINPROGRESS; that is retried until the deadline. */
static int connect_one(int family, const struct sockaddr *sa, socklen_t salen, int64_t deadline,
		       int *fd_out)
{
	for (;;) {
		int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			return -errno;
		if (!connect(fd, sa, salen)) {
			*fd_out = fd;
			return 0;
		}
		int e = errno;
		if (e == EAGAIN && family == AF_UNIX) {
			close(fd);
			if (now_ms() >= deadline)
				return -ETIMEDOUT;
			struct timespec ts = { 0, 10 * 1000000 };
			nanosleep(&ts, NULL);
			continue;
		}
		if (e != EINPROGRESS && e != EINTR) {
			close(fd);
			return -e;
		}
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		for (;;) {
			int64_t left = deadline - now_ms();
			int r = poll(&p, 1, left < 0 ? 0 : (int)left);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				close(fd);
				return r ? -errno : -ETIMEDOUT;
			}
			break;
		}
		int soerr = 0;
		socklen_t len = sizeof(soerr);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
			soerr = errno;
		if (soerr) {
			close(fd);
			return -soerr;
		}
		*fd_out = fd;
		return 0;
	}
}

static int open_address(gfc_conn *c, int64_t deadline, char *err)
{
	int rc;

	if (c->is_unix) {
		rc = connect_one(AF_UNIX, (const struct sockaddr *)&c->sun, sizeof(c->sun), deadline,
				 &c->fd);
		if (rc)
			gfc_seterr(err, "connecting to %s: %s", c->server, strerror(-rc));
		return rc;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	int g = getaddrinfo(c->host, c->port, &hints, &res);
	if (g) {
		gfc_seterr(err, "server %s: %s", c->server, gai_strerror(g));
		return g == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	}
	rc = -EHOSTUNREACH;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		rc = connect_one(a->ai_family, a->ai_addr, a->ai_addrlen, deadline, &c->fd);
		if (!rc)
			break;
	}
	freeaddrinfo(res);
	if (rc) {
		gfc_seterr(err, "connecting to %s: %s", c->server, strerror(-rc));
		return rc;
	}
	/* Tokens are small frames: each should leave at once. */
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return 0;
}

/* The address, or the server file's addresses in turn: the first that connects. */
static int open_socket(gfc_conn *c, int connect_ms, char *err)
{
	int64_t deadline = now_ms() + connect_ms;
	char e[GFC_ERR_LEN] = "";
	int rc = 0;

	if (!c->n_addrs)
		return open_address(c, deadline, err);
	for (size_t i = 0; i < c->n_addrs; i++) {
		rc = use_address(c, c->addrs[i], e);
		if (!rc)
			rc = open_address(c, deadline, e);
		if (!rc || rc == -ENOMEM)
			return rc;
	}
	/* A daemon that stops cleanly removes its file: one that names nobody is stale. */
	gfc_seterr(err, "server file %s (%s): %s%s; stale if that daemon has stopped",
		   c->server_file, c->server_who ? c->server_who : "goldfinchd",
		   c->n_addrs > 1 ? "no address answered, the last: " : "", e);
	return rc;
}

/* ---- the job being waited on ---------------------------------------------------------- */

static void job_begin(gfc_conn *c, gfc_response_fn fn, void *user)
{
	c->job = c->next_id++;
	c->fn = fn;
	c->user = user;
	c->job_done = c->got_first = c->cancel_sent = c->cancellable = false;
	c->job_rc = 0;
	c->first_bytes_done = 0;
	c->cancel_id = 0;
	c->job_err[0] = 0;
	c->server_code = 0;
	proto_response_free(c->final);
	c->final = NULL;
}

static void job_end(gfc_conn *c)
{
	c->job = 0;
	c->ingest = c->cancellable = false;
	c->fn = NULL;
	c->user = NULL;
	proto_response_free(c->final);
	c->final = NULL;
}

static bool is_final(const proto_response *r)
{
	switch (r->body_case) {
	case GOLDFINCH__V1__RESPONSE__BODY_HELLO:
	case GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY:
	case GOLDFINCH__V1__RESPONSE__BODY_DONE:
	case GOLDFINCH__V1__RESPONSE__BODY_ERROR:
	case GOLDFINCH__V1__RESPONSE__BODY_STATUS:
	case GOLDFINCH__V1__RESPONSE__BODY_CONTEXTS:
	case GOLDFINCH__V1__RESPONSE__BODY_DROPPED:
	case GOLDFINCH__V1__RESPONSE__BODY_CANCEL_ACCEPTED:
		return true;
	default:
		return false;
	}
}

static const char *body_name(int body_case)
{
	switch (body_case) {
	case GOLDFINCH__V1__RESPONSE__BODY_HELLO: return "HelloReply";
	case GOLDFINCH__V1__RESPONSE__BODY_PROGRESS: return "IngestProgress";
	case GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY: return "ContextReady";
	case GOLDFINCH__V1__RESPONSE__BODY_TOKEN: return "Token";
	case GOLDFINCH__V1__RESPONSE__BODY_DONE: return "Done";
	case GOLDFINCH__V1__RESPONSE__BODY_ERROR: return "Error";
	case GOLDFINCH__V1__RESPONSE__BODY_STATUS: return "StatusReply";
	case GOLDFINCH__V1__RESPONSE__BODY_CONTEXTS: return "ContextList";
	case GOLDFINCH__V1__RESPONSE__BODY_DROPPED: return "Dropped";
	case GOLDFINCH__V1__RESPONSE__BODY_CANCEL_ACCEPTED: return "CancelAccepted";
	default: return "an unknown response";
	}
}

/* "server: CODE: message" on one line: control characters would break the one-line rule. */
static void server_err(char *dst, const Goldfinch__V1__Error *e)
{
	const char *m = e->message ? e->message : "";
	int k = snprintf(dst, GFC_ERR_LEN, "server: %s: ", proto_error_name(e->code));
	size_t i = k > 0 && k < GFC_ERR_LEN ? (size_t)k : 0;

	for (; *m && i + 1 < GFC_ERR_LEN; m++)
		dst[i++] = (unsigned char)*m < 0x20 || *m == 0x7f ? ' ' : *m;
	dst[i] = 0;
}

static int queue_frame(gfc_conn *c, const uint8_t *frame, size_t n)
{
	if (c->ooff == c->olen)
		c->ooff = c->olen = 0;
	if (c->ocap - c->olen < n) {
		size_t cap = c->ocap ? c->ocap : 4096;
		while (cap - c->olen < n)
			cap *= 2;
		uint8_t *b = realloc(c->obuf, cap);
		if (!b)
			return -ENOMEM;
		c->obuf = b;
		c->ocap = cap;
	}
	memcpy(c->obuf + c->olen, frame, n);
	c->olen += n;
	return 0;
}

static int queue_request(gfc_conn *c, const proto_request *req, char *err)
{
	uint8_t *frame;
	size_t n;
	int rc = proto_frame_request(req, &frame, &n);

	if (rc) {
		gfc_seterr(err, "request %llu: cannot serialize: %s", (unsigned long long)req->id,
		       strerror(-rc));
		return rc;
	}
	if (c->max_body && n - PROTO_HEADER_BYTES > c->max_body) {
		gfc_seterr(err, "request of %zu bytes exceeds the server's %llu-byte frame limit",
		       n - PROTO_HEADER_BYTES, (unsigned long long)c->max_body);
		free(frame);
		return -E2BIG;
	}
	rc = queue_frame(c, frame, n);
	free(frame);
	return rc;
}

static int send_cancel(gfc_conn *c, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	Goldfinch__V1__Cancel cancel = GOLDFINCH__V1__CANCEL__INIT;

	cancel.target = c->job;
	req.id = c->cancel_id = c->next_id++;
	req.body_case = GOLDFINCH__V1__REQUEST__BODY_CANCEL;
	req.cancel = &cancel;
	int rc = queue_request(c, &req, err);
	if (!rc)
		c->cancel_sent = true;
	return rc;
}

/* Handles one response. Negative: the wait must stop (err set). */
static int dispatch(gfc_conn *c, proto_response *r, char *err)
{
	if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_ERROR &&
	    (r->id == 0 || (r->id == c->job && !c->job_done))) {
		/* id 0: the connection failed (README); either way the job is over. */
		c->server_code = r->error->code ? (int)r->error->code : -1;
		server_err(c->job_err, r->error);
		c->job_done = true;
		c->job_rc = gfc_code_errno(r->error->code);
		gfc_seterr(err, "%s", c->job_err);
		bool fatal = r->id == 0;
		proto_response_free(r);
		return fatal ? c->job_rc : 0;
	}
	if (!c->job || r->id != c->job || c->job_done) {
		/* Stale: a response to an earlier request, or the NOT_FOUND of a Cancel that
		 * crossed its job's end. */
		proto_response_free(r);
		return 0;
	}
	if (!c->got_first && r->body_case == GOLDFINCH__V1__RESPONSE__BODY_PROGRESS)
		c->first_bytes_done = r->progress->bytes_done;
	c->got_first = true;
	int rc = c->fn ? c->fn(c->user, r) : 0;
	if (rc) {
		c->job_done = true;
		c->job_rc = rc;
		snprintf(c->job_err, sizeof(c->job_err), "stopped: %s", strerror(-rc));
		gfc_seterr(err, "%s", c->job_err);
		proto_response_free(r);
		return rc;
	}
	if (is_final(r)) {
		c->job_done = true;
		c->final = r;
		return 0;
	}
	proto_response_free(r);
	return 0;
}

static int read_frames(gfc_conn *c, char *err)
{
	const uint8_t *body;
	uint32_t len;
	int r;

	while ((r = proto_reader_next(&c->rd, &body, &len)) == 1) {
		proto_response *m = proto_response_parse(body, len);
		if (!m) {
			gfc_seterr(err, "server %s: response frame of %u bytes is not a valid Response",
			       c->server, len);
			return -EPROTO;
		}
		int rc = dispatch(c, m, err);
		if (rc)
			return rc;
	}
	if (r < 0) {
		gfc_seterr(err, "server %s: response frame over the client's %u-byte limit", c->server,
		       GFC_MAX_RESPONSE);
		return -EPROTO;
	}
	return 0;
}

/* Reads what the socket has; 1 at end of stream. */
static int read_some(gfc_conn *c, char *err)
{
	uint8_t *dst;
	size_t avail;
	int rc = proto_reader_space(&c->rd, READ_BYTES, &dst, &avail);

	if (rc)
		return rc;
	ssize_t n = recv(c->fd, dst, avail, MSG_DONTWAIT);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		gfc_seterr(err, "reading from %s: %s", c->server, strerror(errno));
		return -errno;
	}
	if (n == 0)
		return 1;
	proto_reader_commit(&c->rd, (size_t)n);
	return read_frames(c, err);
}

/* After a failed send: reads for a moment what the server still has to say. */
static void drain(gfc_conn *c)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };

	while (!c->job_done && poll(&p, 1, 1000) > 0 && read_some(c, NULL) == 0)
		;
}

static bool reached(const gfc_conn *c, enum until u)
{
	switch (u) {
	case UNTIL_SENT: return c->ooff == c->olen;
	case UNTIL_FIRST: return c->got_first || c->job_done;
	default: return c->job_done;
	}
}

/* Moves bytes both ways until `u` holds, the job fails, the cancel fd fires twice, or the
 * server is silent for wait_ms. */
static int pump(gfc_conn *c, enum until u, char *err)
{
	char buf[128];

	for (;;) {
		if (c->job_done && c->job_rc) {
			gfc_seterr(err, "%s", c->job_err);
			return c->job_rc;
		}
		if (reached(c, u))
			return 0;
		struct pollfd p[2] = {
			{ .fd = c->fd, .events = POLLIN | (c->ooff < c->olen ? POLLOUT : 0) },
			{ .fd = c->cancel_fd, .events = POLLIN },
		};
		int np = c->cancel_fd >= 0 ? 2 : 1;
		int r = poll(p, np, c->wait_ms);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			gfc_seterr(err, "poll: %s", strerror(errno));
			return -errno;
		}
		if (r == 0) {
			gfc_seterr(err, "server %s: no answer for %.1f s", c->server, c->wait_ms / 1000.0);
			return -ETIMEDOUT;
		}
		if (np == 2 && p[1].revents) {
			ssize_t n = read(c->cancel_fd, buf, sizeof(buf));
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				/* A pipe whose writer is gone: no cancel can come any more. */
				c->cancel_fd = -1;
			} else if (n < 0) {
				/* spurious wake-up */
			} else if (c->job && c->cancellable && !c->job_done && !c->cancel_sent) {
				int rc = send_cancel(c, err);
				if (rc)
					return rc;
			} else {
				gfc_seterr(err, "interrupted");
				return -ECANCELED;
			}
		}
		if (p[0].revents & (POLLIN | POLLERR | POLLHUP)) {
			int rc = read_some(c, err);
			if (rc < 0)
				return rc;
			if (rc == 1) {
				if (c->job_done && c->job_rc) {
					gfc_seterr(err, "%s", c->job_err);
					return c->job_rc;
				}
				if (reached(c, u))
					return 0;
				gfc_seterr(err, "server %s closed the connection", c->server);
				return -ECONNRESET;
			}
		}
		if ((p[0].revents & POLLOUT) && c->ooff < c->olen) {
			ssize_t n = send(c->fd, c->obuf + c->ooff, c->olen - c->ooff,
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n < 0 && errno != EAGAIN && errno != EINTR) {
				int e = errno;
				/* A server that refused something says why before closing: read
				 * what is left, and report that rather than the broken pipe. */
				drain(c);
				if (c->job_done && c->job_rc) {
					gfc_seterr(err, "%s", c->job_err);
					return c->job_rc;
				}
				gfc_seterr(err, "sending to %s: %s", c->server, strerror(e));
				return -e;
			}
			if (n > 0)
				c->ooff += (size_t)n;
		}
	}
}

int gfc_connect(gfc_conn *c, char *err)
{
	int connect_ms = c->timeout_ms > 0 ? c->timeout_ms : GFC_CONNECT_TIMEOUT_S * 1000;
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	Goldfinch__V1__Hello hello = GOLDFINCH__V1__HELLO__INIT;
	int rc;

	if (c->fd >= 0) {
		gfc_seterr(err, "already connected to %s", c->server);
		return -EISCONN;
	}
	c->server_code = 0;
	rc = open_socket(c, connect_ms, err);
	if (rc)
		return rc;
	hello.major = PROTO_VERSION_MAJOR;
	hello.minor = PROTO_VERSION_MINOR;
	hello.client = c->client_name;
	hello.auth_token = c->token;
	req.body_case = GOLDFINCH__V1__REQUEST__BODY_HELLO;
	req.hello = &hello;
	job_begin(c, NULL, NULL);
	req.id = c->job;
	rc = queue_request(c, &req, err);
	if (rc)
		goto close_fd;
	c->wait_ms = connect_ms;
	rc = pump(c, UNTIL_DONE, err);
	c->wait_ms = c->timeout_ms;
	if (rc)
		goto close_fd;
	if (c->final->body_case != GOLDFINCH__V1__RESPONSE__BODY_HELLO) {
		gfc_seterr(err, "server %s: answered Hello with %s", c->server,
		       body_name(c->final->body_case));
		rc = -EPROTO;
		goto close_fd;
	}
	if (c->final->hello->major != PROTO_VERSION_MAJOR) {
		gfc_seterr(err, "server %s speaks protocol %u.%u, this client %d.%d", c->server,
		       c->final->hello->major, c->final->hello->minor, PROTO_VERSION_MAJOR,
		       PROTO_VERSION_MINOR);
		rc = -EPROTONOSUPPORT;
		goto close_fd;
	}
	c->hello = c->final;
	c->final = NULL;
	c->max_body = c->hello->hello->has_max_frame && c->hello->hello->max_frame ?
		c->hello->hello->max_frame : PROTO_DEFAULT_MAX_FRAME;
	job_end(c);
	return 0;
close_fd:
	job_end(c);
	close(c->fd);
	c->fd = -1;
	return rc;
}

/* ---- requests ------------------------------------------------------------------------- */

static int ready_for_request(gfc_conn *c, char *err)
{
	if (c->fd < 0) {
		gfc_seterr(err, "not connected");
		return -ENOTCONN;
	}
	if (c->job) {
		gfc_seterr(err, "request %llu still in progress on this connection",
		       (unsigned long long)c->job);
		return -EBUSY;
	}
	return 0;
}

/* Checks that a final response r is of the kind wanted; frees it if not. */
static int check_kind(gfc_conn *c, proto_response *r, int want, char *err)
{
	if (r->body_case == (Goldfinch__V1__Response__BodyCase)want)
		return 0;
	gfc_seterr(err, "server %s: expected %s, got %s", c->server, body_name(want),
	       body_name(r->body_case));
	proto_response_free(r);
	return -EPROTO;
}

static int call(gfc_conn *c, proto_request *req, gfc_response_fn fn, void *user,
		bool cancellable, proto_response **final, char *err)
{
	int rc = ready_for_request(c, err);

	if (final)
		*final = NULL;
	if (rc)
		return rc;
	job_begin(c, fn, user);
	c->cancellable = cancellable;
	req->id = c->job;
	rc = queue_request(c, req, err);
	if (!rc)
		rc = pump(c, UNTIL_DONE, err);
	if (!rc && final) {
		*final = c->final;
		c->final = NULL;
	}
	job_end(c);
	return rc;
}

int gfc_call(gfc_conn *c, proto_request *req, gfc_response_fn fn, void *user,
	     proto_response **final, char *err)
{
	/* Of the single requests, only a generation is a job that Cancel can stop. */
	bool job = req->body_case == GOLDFINCH__V1__REQUEST__BODY_GENERATE;

	return call(c, req, fn, user, job, final, err);
}

/* gfc_call for a request answered by one message of kind `want`. */
static int call_expect(gfc_conn *c, proto_request *req, gfc_response_fn fn, void *user, int want,
		       proto_response **out, char *err)
{
	proto_response *r;
	int rc = gfc_call(c, req, fn, user, &r, err);

	if (out)
		*out = NULL;
	if (!rc)
		rc = check_kind(c, r, want, err);
	if (rc)
		return rc;
	if (out)
		*out = r;
	else
		proto_response_free(r);
	return 0;
}

int gfc_status(gfc_conn *c, proto_response **out, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	Goldfinch__V1__StatusRequest s = GOLDFINCH__V1__STATUS_REQUEST__INIT;

	req.body_case = GOLDFINCH__V1__REQUEST__BODY_STATUS;
	req.status = &s;
	return call_expect(c, &req, NULL, NULL, GOLDFINCH__V1__RESPONSE__BODY_STATUS, out, err);
}

int gfc_list_contexts(gfc_conn *c, proto_response **out, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	Goldfinch__V1__ListContexts l = GOLDFINCH__V1__LIST_CONTEXTS__INIT;

	req.body_case = GOLDFINCH__V1__REQUEST__BODY_LIST_CONTEXTS;
	req.list_contexts = &l;
	return call_expect(c, &req, NULL, NULL, GOLDFINCH__V1__RESPONSE__BODY_CONTEXTS, out, err);
}

int gfc_drop(gfc_conn *c, const char *context, uint64_t *serial, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	Goldfinch__V1__DropContext d = GOLDFINCH__V1__DROP_CONTEXT__INIT;
	proto_response *r;

	d.context = (char *)context;
	req.body_case = GOLDFINCH__V1__REQUEST__BODY_DROP_CONTEXT;
	req.drop_context = &d;
	int rc = call_expect(c, &req, NULL, NULL, GOLDFINCH__V1__RESPONSE__BODY_DROPPED, &r, err);
	if (rc)
		return rc;
	if (serial)
		*serial = r->dropped->serial;
	proto_response_free(r);
	return 0;
}

int gfc_generate(gfc_conn *c, const Goldfinch__V1__Generate *g, gfc_response_fn fn,
		 void *user, proto_response **done, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;

	/* protobuf-c's message structs are not const-correct; packing only reads. */
	req.body_case = GOLDFINCH__V1__REQUEST__BODY_GENERATE;
	req.generate = (Goldfinch__V1__Generate *)g;
	return call_expect(c, &req, fn, user, GOLDFINCH__V1__RESPONSE__BODY_DONE, done, err);
}

int gfc_cancel_job(gfc_conn *c, char *err)
{
	if (!c->job || !c->cancellable || c->job_done) {
		gfc_seterr(err, "no job in progress");
		return -ENOENT;
	}
	if (c->cancel_sent)
		return 0;
	return send_cancel(c, err);
}

int gfc_cancel(gfc_conn *c, uint64_t target, int wait_ms, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	Goldfinch__V1__Cancel cancel = GOLDFINCH__V1__CANCEL__INIT;
	int rc = ready_for_request(c, err);

	if (rc)
		return rc;
	cancel.target = target;
	req.body_case = GOLDFINCH__V1__REQUEST__BODY_CANCEL;
	req.cancel = &cancel;
	job_begin(c, NULL, NULL);
	req.id = c->job;
	rc = queue_request(c, &req, err);
	if (!rc) {
		/* A Cancel that succeeds gets no answer of its own: only its target ends. */
		c->wait_ms = wait_ms;
		rc = pump(c, UNTIL_DONE, err);
		c->wait_ms = c->timeout_ms;
		if (rc == -ETIMEDOUT && c->ooff == c->olen) {
			rc = 0;
			if (err)
				err[0] = 0;
		} else if (!rc) {
			gfc_seterr(err, "server %s: answered Cancel with %s", c->server,
			       body_name(c->final->body_case));
			rc = -EPROTO;
		}
	}
	job_end(c);
	return rc;
}

int gfc_cancel_number(gfc_conn *c, uint64_t job, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	Goldfinch__V1__Cancel cancel = GOLDFINCH__V1__CANCEL__INIT;
	const Goldfinch__V1__HelloReply *h = gfc_hello(c);
	proto_response *r;

	if (h && h->major == 1 && h->minor < 1) {
		gfc_seterr(err, "server %s speaks protocol %u.%u: it has no server-wide job numbers (1.1)",
		       c->server, h->major, h->minor);
		return -EPROTONOSUPPORT;
	}
	/* target is required on the wire; with job set the server ignores it (goldfinch.proto). */
	cancel.target = 0;
	cancel.has_job = true;
	cancel.job = job;
	req.body_case = GOLDFINCH__V1__REQUEST__BODY_CANCEL;
	req.cancel = &cancel;
	int rc = call_expect(c, &req, NULL, NULL, GOLDFINCH__V1__RESPONSE__BODY_CANCEL_ACCEPTED,
			     &r, err);
	if (!rc)
		proto_response_free(r);
	return rc;
}

/* ---- ingest --------------------------------------------------------------------------- */

static int ingest_fail(gfc_conn *c, int rc)
{
	job_end(c);
	return rc;
}

int gfc_ingest_start(gfc_conn *c, const Goldfinch__V1__IngestStart *s, gfc_response_fn fn,
		     void *user, uint64_t *resume_from, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	int rc = ready_for_request(c, err);

	if (resume_from)
		*resume_from = 0;
	if (rc)
		return rc;
	job_begin(c, fn, user);
	c->ingest = c->cancellable = true;
	req.id = c->job;
	req.body_case = GOLDFINCH__V1__REQUEST__BODY_INGEST_START;
	req.ingest_start = (Goldfinch__V1__IngestStart *)s;
	rc = queue_request(c, &req, err);
	if (!rc)
		rc = pump(c, s->has_resume && s->resume ? UNTIL_FIRST : UNTIL_SENT, err);
	if (!rc && c->job_done && s->has_resume && s->resume && c->final &&
	    c->final->body_case == GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY) {
		/* The interrupted ingest had finished after all: nothing to send. */
		if (resume_from)
			*resume_from = GFC_RESUME_COMPLETE;
		return 0;
	}
	if (!rc && c->job_done) {
		gfc_seterr(err, "server %s: ingest ended before its input was sent", c->server);
		rc = -EPROTO;
	}
	if (rc)
		return ingest_fail(c, rc);
	if (resume_from)
		*resume_from = c->first_bytes_done;
	return 0;
}

/* Waits for the end of a job that was cancelled while its input was being sent. */
static int ingest_cancelled(gfc_conn *c, char *err)
{
	int rc = pump(c, UNTIL_DONE, err);
	if (!rc) {
		gfc_seterr(err, "cancelled, but the server finished the ingest first");
		rc = -ECANCELED;
	}
	return ingest_fail(c, rc);
}

static int ingest_piece(gfc_conn *c, Goldfinch__V1__IngestData *d, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;

	if (!c->ingest || !c->job) {
		gfc_seterr(err, "no ingest in progress");
		return -EINVAL;
	}
	if (c->job_done) {
		gfc_seterr(err, "the ingest is complete already");
		return -EALREADY;
	}
	if (c->cancel_sent)
		return ingest_cancelled(c, err);
	req.id = c->job;
	req.body_case = GOLDFINCH__V1__REQUEST__BODY_INGEST_DATA;
	req.ingest_data = d;
	int rc = queue_request(c, &req, err);
	if (!rc)
		rc = pump(c, UNTIL_SENT, err);
	if (!rc && c->job_done) {
		gfc_seterr(err, "server %s: ingest ended before its input was sent", c->server);
		rc = -EPROTO;
	}
	if (rc)
		return ingest_fail(c, rc);
	if (c->cancel_sent)
		return ingest_cancelled(c, err);
	return 0;
}

int gfc_ingest_text(gfc_conn *c, const void *data, size_t n, char *err)
{
	const uint8_t *p = data;
	/* A piece and its envelope (ids, tags, lengths: under 64 bytes) fit the server's frame. */
	size_t piece = GFC_PIECE_BYTES;

	if (c->max_body && c->max_body < piece + 64)
		piece = c->max_body > 128 ? (size_t)c->max_body - 64 : 64;
	while (n) {
		Goldfinch__V1__IngestData d = GOLDFINCH__V1__INGEST_DATA__INIT;
		size_t k = n < piece ? n : piece;

		d.piece_case = GOLDFINCH__V1__INGEST_DATA__PIECE_TEXT;
		d.text.data = (uint8_t *)p;
		d.text.len = k;
		int rc = ingest_piece(c, &d, err);
		if (rc)
			return rc;
		p += k;
		n -= k;
	}
	return 0;
}

int gfc_ingest_file(gfc_conn *c, const char *path, uint64_t size, char *err)
{
	Goldfinch__V1__IngestData d = GOLDFINCH__V1__INGEST_DATA__INIT;
	Goldfinch__V1__FileStart f = GOLDFINCH__V1__FILE_START__INIT;

	f.path = (char *)path;
	f.has_size = true;
	f.size = size;
	d.piece_case = GOLDFINCH__V1__INGEST_DATA__PIECE_FILE;
	d.file = &f;
	return ingest_piece(c, &d, err);
}

int gfc_ingest_end(gfc_conn *c, proto_response **ready, char *err)
{
	Goldfinch__V1__Request req = GOLDFINCH__V1__REQUEST__INIT;
	Goldfinch__V1__IngestEnd e = GOLDFINCH__V1__INGEST_END__INIT;
	int rc;

	if (ready)
		*ready = NULL;
	if (!c->ingest || !c->job) {
		gfc_seterr(err, "no ingest in progress");
		return -EINVAL;
	}
	if (c->job_done) {
		rc = 0;   /* answered already (a resume of a complete context) */
	} else if (c->cancel_sent) {
		return ingest_cancelled(c, err);
	} else {
		req.id = c->job;
		req.body_case = GOLDFINCH__V1__REQUEST__BODY_INGEST_END;
		req.ingest_end = &e;
		rc = queue_request(c, &req, err);
		if (!rc)
			rc = pump(c, UNTIL_DONE, err);
	}
	if (!rc) {
		/* A cancel that came too late leaves the context made: it is the result. */
		proto_response *r = c->final;
		c->final = NULL;
		rc = check_kind(c, r, GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY, err);
		if (!rc && ready)
			*ready = r;
		else if (!rc)
			proto_response_free(r);
	}
	return ingest_fail(c, rc);
}
