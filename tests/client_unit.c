/*
 * client_unit — libgfclient against a scripted fake server (a thread on a Unix socket in a
 * temporary folder): framing across odd write boundaries, streaming callbacks, errors and
 * their exit codes, garbage and truncated frames, timeouts, an Error that must stop an
 * ingest's sending, resume offsets, cancel through the cancel fd, frame limits; and the
 * file walk (order, relative paths, skipped binaries and VCS folders, UTF-8 sniffing).
 * Exit 0 pass, 1 fail.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "gfclient.h"

static int failures;

#define CHECK(cond, ...)                                                                  \
	do {                                                                              \
		if (!(cond)) {                                                            \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
			fprintf(stderr, __VA_ARGS__);                                     \
			fprintf(stderr, "\n");                                            \
			failures++;                                                       \
		}                                                                         \
	} while (0)

static char tmpdir[256];
static char sock_path[300];

/* ---- the fake server ------------------------------------------------------------------ */

struct srv {
	int lfd, fd;
	proto_reader rd;
	void (*script)(struct srv *);
	pthread_t th;
	char fail[256];       /* first expectation the server saw broken */
	uint64_t u;           /* scratch results */
	size_t pieces, max_piece, text_bytes;
	char path[128];
};

static void srv_fail(struct srv *s, const char *fmt, ...)
{
	va_list ap;
	if (s->fail[0])
		return;
	va_start(ap, fmt);
	vsnprintf(s->fail, sizeof(s->fail), fmt, ap);
	va_end(ap);
}

/* The next request, or NULL at end of stream. */
static proto_request *srv_read(struct srv *s)
{
	const uint8_t *body;
	uint32_t len;

	for (;;) {
		int r = proto_reader_next(&s->rd, &body, &len);
		if (r == 1) {
			proto_request *m = proto_request_parse(body, len);
			if (!m)
				srv_fail(s, "request frame of %u bytes does not parse", len);
			return m;
		}
		if (r < 0) {
			srv_fail(s, "request frame over the limit");
			return NULL;
		}
		uint8_t buf[4096];
		ssize_t n = read(s->fd, buf, sizeof(buf));
		if (n <= 0)
			return NULL;
		proto_reader_feed(&s->rd, buf, (size_t)n);
	}
}

static proto_request *srv_expect(struct srv *s, int body_case)
{
	proto_request *m = srv_read(s);
	if (m && (int)m->body_case != body_case) {
		srv_fail(s, "expected request kind %d, got %d", body_case, (int)m->body_case);
		proto_request_free(m);
		return NULL;
	}
	if (!m)
		srv_fail(s, "expected request kind %d, got end of stream", body_case);
	return m;
}

static void write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t w = write(fd, b, n);
		if (w <= 0)
			return;
		b += w;
		n -= (size_t)w;
	}
}

/* Sends r; with `drip`, one byte per write, to cut frames at every boundary. */
static void srv_send(struct srv *s, const proto_response *r, bool drip)
{
	uint8_t *f;
	size_t n;
	if (proto_frame_response(r, &f, &n))
		return;
	if (drip) {
		for (size_t i = 0; i < n; i++) {
			write_all(s->fd, f + i, 1);
			if (i % 7 == 0)
				usleep(100);
		}
	} else {
		write_all(s->fd, f, n);
	}
	free(f);
}

static void srv_error(struct srv *s, uint64_t id, int code, const char *msg)
{
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	Goldfinch__V1__Error e = GOLDFINCH__V1__ERROR__INIT;
	r.id = id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_ERROR;
	r.error = &e;
	e.code = code;
	e.message = (char *)msg;
	srv_send(s, &r, false);
}

static void srv_hello_reply(struct srv *s, uint64_t id, uint32_t major, uint64_t max_frame)
{
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	Goldfinch__V1__HelloReply h = GOLDFINCH__V1__HELLO_REPLY__INIT;
	Goldfinch__V1__ModelInfo m = GOLDFINCH__V1__MODEL_INFO__INIT;
	r.id = id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_HELLO;
	r.hello = &h;
	h.major = major;
	h.minor = 7;
	h.server = "fake 0";
	h.model = &m;
	m.name = "fake-model";
	m.has_n_layer = true;
	m.n_layer = 4;
	if (max_frame) {
		h.has_max_frame = true;
		h.max_frame = max_frame;
	}
	srv_send(s, &r, false);
}

/* Reads Hello and answers it; the Hello's auth token is kept in s->path. */
static uint64_t srv_hello(struct srv *s, uint64_t max_frame)
{
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_HELLO);
	if (!m)
		return 0;
	uint64_t id = m->id;
	if (m->hello->major != PROTO_VERSION_MAJOR || m->hello->minor != PROTO_VERSION_MINOR)
		srv_fail(s, "hello %u.%u", m->hello->major, m->hello->minor);
	snprintf(s->path, sizeof(s->path), "%s", m->hello->auth_token ? m->hello->auth_token : "");
	proto_request_free(m);
	srv_hello_reply(s, id, PROTO_VERSION_MAJOR, max_frame);
	return id;
}

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	s->fd = accept(s->lfd, NULL, NULL);
	if (s->fd < 0) {
		srv_fail(s, "accept: %s", strerror(errno));
		return NULL;
	}
	s->script(s);
	close(s->fd);
	return NULL;
}

static void srv_start(struct srv *s, void (*script)(struct srv *))
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };

	memset(s, 0, sizeof(*s));
	s->script = script;
	proto_reader_init(&s->rd, 0);
	unlink(sock_path);
	memcpy(a.sun_path, sock_path, strlen(sock_path) + 1);  /* fits: checked in main */
	s->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof(a)) || listen(s->lfd, 4)) {
		fprintf(stderr, "fake server on %s: %s\n", sock_path, strerror(errno));
		exit(1);
	}
	pthread_create(&s->th, NULL, srv_main, s);
}

static void srv_stop(struct srv *s, const char *test)
{
	pthread_join(s->th, NULL);
	close(s->lfd);
	proto_reader_free(&s->rd);
	CHECK(!s->fail[0], "%s: fake server: %s", test, s->fail);
}

/* A client on the fake server's socket. */
static gfc_conn *client(double timeout_s, int cancel_fd, const char *token_file)
{
	gfc_options o;
	gfc_conn *c;
	char server[320], err[GFC_ERR_LEN];

	gfc_options_default(&o);
	snprintf(server, sizeof(server), "unix:%s", sock_path);
	o.server = server;
	o.timeout_s = timeout_s;
	o.cancel_fd = cancel_fd;
	o.auth_token_file = token_file;
	int rc = gfc_init(&c, &o, err);
	if (rc) {
		fprintf(stderr, "gfc_init: %s\n", err);
		exit(1);
	}
	return c;
}

/* ---- scripts and the tests that drive them -------------------------------------------- */

static void script_contexts(struct srv *s)
{
	srv_hello(s, 0);
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_LIST_CONTEXTS);
	if (!m)
		return;
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	Goldfinch__V1__ContextList l = GOLDFINCH__V1__CONTEXT_LIST__INIT;
	Goldfinch__V1__ContextInfo a = GOLDFINCH__V1__CONTEXT_INFO__INIT, b = a;
	Goldfinch__V1__ContextInfo *list[2] = { &a, &b };
	a.has_serial = b.has_serial = true;
	a.serial = 1;
	b.serial = 2;
	a.name = "book";
	b.name = "code";
	a.has_tokens = true;
	a.tokens = 123456789012ull;
	l.n_contexts = 2;
	l.contexts = list;
	/* A stale response of another id first: it must be skipped. */
	srv_error(s, m->id + 100, GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND, "stale");
	r.id = m->id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_CONTEXTS;
	r.contexts = &l;
	srv_send(s, &r, true);
	proto_request_free(m);
}

static void test_hello_and_contexts(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "";
	char tf[300];
	proto_response *r = NULL;

	snprintf(tf, sizeof(tf), "%s/token", tmpdir);
	FILE *f = fopen(tf, "w");
	fputs("s3cret\n", f);
	fclose(f);
	srv_start(&s, script_contexts);
	gfc_conn *c = client(5, -1, tf);
	int rc = gfc_connect(c, err);
	CHECK(rc == 0, "connect: %s", err);
	const Goldfinch__V1__HelloReply *h = gfc_hello(c);
	CHECK(h && h->minor == 7 && h->model && !strcmp(h->model->name, "fake-model"),
	      "hello reply not kept");
	rc = gfc_list_contexts(c, &r, err);
	CHECK(rc == 0, "contexts: %s", err);
	CHECK(r && r->contexts->n_contexts == 2 && r->contexts->contexts[0]->tokens ==
	      123456789012ull && !strcmp(r->contexts->contexts[1]->name, "code"),
	      "context list wrong");
	proto_response_free(r);
	gfc_close(c);
	srv_stop(&s, "contexts");
	CHECK(!strcmp(s.path, "s3cret"), "auth token sent as \"%s\"", s.path);
}

static void script_auth_fail(struct srv *s)
{
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_HELLO);
	if (m)
		srv_error(s, m->id, GOLDFINCH__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, "bad token");
	proto_request_free(m);
}

static void script_version(struct srv *s)
{
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_HELLO);
	if (m)
		srv_hello_reply(s, m->id, PROTO_VERSION_MAJOR + 1, 0);
	proto_request_free(m);
}

static void test_hello_failures(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "";

	srv_start(&s, script_auth_fail);
	gfc_conn *c = client(5, -1, NULL);
	int rc = gfc_connect(c, err);
	CHECK(rc == -EACCES && gfc_exit_status(c, rc) == GFC_EXIT_AUTH, "auth: rc %d exit %d: %s",
	      rc, gfc_exit_status(c, rc), err);
	CHECK(strstr(err, "UNAUTHENTICATED") && strstr(err, "bad token"), "auth message: %s", err);
	gfc_close(c);
	srv_stop(&s, "auth");

	srv_start(&s, script_version);
	c = client(5, -1, NULL);
	rc = gfc_connect(c, err);
	CHECK(rc == -EPROTONOSUPPORT && gfc_exit_status(c, rc) == GFC_EXIT_CONNECTION,
	      "version: rc %d: %s", rc, err);
	CHECK(strstr(err, "protocol 2."), "version message: %s", err);
	gfc_close(c);
	srv_stop(&s, "version");

	/* Nobody listening. */
	unlink(sock_path);
	c = client(5, -1, NULL);
	rc = gfc_connect(c, err);
	CHECK(rc == -ENOENT || rc == -ECONNREFUSED, "no server: rc %d", rc);
	CHECK(gfc_exit_status(c, rc) == GFC_EXIT_CONNECTION, "no server: exit %d",
	      gfc_exit_status(c, rc));
	CHECK(strstr(err, sock_path), "no server message: %s", err);
	gfc_close(c);

	/* Bad addresses and token files. */
	const char *bad[] = { "nocolon", "host:", "host:0", "host:99999", ":80", "unix:", "[::1]80",
			      "h:-1" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		gfc_options o;
		gfc_options_default(&o);
		o.server = bad[i];
		rc = gfc_init(&c, &o, err);
		CHECK(rc == -EINVAL && !c, "address %s accepted", bad[i]);
	}
	gfc_options o;
	gfc_options_default(&o);
	o.server = "[::1]:7433";
	rc = gfc_init(&c, &o, err);
	CHECK(rc == 0, "[::1]:7433: %s", err);
	gfc_close(c);
	o.auth_token_file = "/nonexistent/token";
	rc = gfc_init(&c, &o, err);
	CHECK(rc == -EACCES && strstr(err, "/nonexistent/token"), "token file: %d %s", rc, err);
}

/* Tokens in one write with an unknown response kind in between, a Done split byte by
 * byte. */
static void script_generate(struct srv *s)
{
	srv_hello(s, 0);
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_GENERATE);
	if (!m)
		return;
	Goldfinch__V1__Generate *g = m->generate;
	if (strcmp(g->context, "#3") || strcmp(g->prompt, "why?") || !g->has_temperature ||
	    g->temperature != 0 || !g->has_seed || g->seed != 42 || g->n_stop != 1 ||
	    strcmp(g->stop[0], "\n\n") || g->has_top_k)
		srv_fail(s, "generate fields not as sent");
	uint8_t all[4096];
	size_t n = 0;
	const char *words[] = { "Because", " é", "\n" };
	for (int i = 0; i < 3; i++) {
		proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
		Goldfinch__V1__Token t = GOLDFINCH__V1__TOKEN__INIT;
		r.id = m->id;
		r.body_case = GOLDFINCH__V1__RESPONSE__BODY_TOKEN;
		r.token = &t;
		t.id = i + 10;
		t.has_text = true;
		t.text.data = (uint8_t *)words[i];
		t.text.len = strlen(words[i]);
		uint8_t *f;
		size_t fl;
		proto_frame_response(&r, &f, &fl);
		memcpy(all + n, f, fl);
		n += fl;
		free(f);
		if (i == 0) {
			/* A response a later minor version might add: field 99, unknown here. */
			const uint8_t unk[] = { 5, 0, 0, 0, 0x08, (uint8_t)m->id, 0x9a, 0x06, 0x00 };
			memcpy(all + n, unk, sizeof(unk));
			n += sizeof(unk);
		}
	}
	write_all(s->fd, all, n);
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	Goldfinch__V1__Done d = GOLDFINCH__V1__DONE__INIT;
	Goldfinch__V1__Usage u = GOLDFINCH__V1__USAGE__INIT;
	r.id = m->id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_DONE;
	r.done = &d;
	d.reason = GOLDFINCH__V1__DONE_REASON__DONE_STOP;
	d.usage = &u;
	u.has_completion_tokens = true;
	u.completion_tokens = 3;
	srv_send(s, &r, true);
	proto_request_free(m);
}

struct collect {
	char text[256];
	size_t n;
	int tokens, other;
	gfc_conn *c;
	int cancel_fd;     /* written after the first token when >= 0 */
	int writes;
};

static int collect_fn(void *user, const proto_response *r)
{
	struct collect *k = user;
	if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_TOKEN) {
		k->tokens++;
		if (k->n + r->token->text.len < sizeof(k->text)) {
			memcpy(k->text + k->n, r->token->text.data, r->token->text.len);
			k->n += r->token->text.len;
		}
		if (k->cancel_fd >= 0 && k->tokens == 1)
			for (int i = 0; i < k->writes; i++)
				write_all(k->cancel_fd, "x", 1);
	} else if (r->body_case != GOLDFINCH__V1__RESPONSE__BODY_DONE) {
		k->other++;
	}
	return 0;
}

static void generate_params(Goldfinch__V1__Generate *g, char **stop)
{
	goldfinch__v1__generate__init(g);
	g->context = "#3";
	g->prompt = "why?";
	g->has_temperature = true;
	g->temperature = 0;
	g->has_seed = true;
	g->seed = 42;
	stop[0] = "\n\n";
	g->stop = stop;
	g->n_stop = 1;
}

static void test_generate(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "", *stop[1];
	struct collect k = { .cancel_fd = -1 };
	proto_response *done = NULL;
	Goldfinch__V1__Generate g;

	srv_start(&s, script_generate);
	gfc_conn *c = client(5, -1, NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	generate_params(&g, stop);
	int rc = gfc_generate(c, &g, collect_fn, &k, &done, err);
	CHECK(rc == 0, "generate: %s", err);
	CHECK(k.tokens == 3 && k.n == strlen("Because é\n") && !memcmp(k.text, "Because é\n", k.n),
	      "tokens %d text \"%.*s\"", k.tokens, (int)k.n, k.text);
	CHECK(k.other == 1, "unknown response kind not passed on (%d)", k.other);
	CHECK(done && done->done->reason == GOLDFINCH__V1__DONE_REASON__DONE_STOP &&
	      done->done->usage->completion_tokens == 3, "done wrong");
	proto_response_free(done);
	gfc_close(c);
	srv_stop(&s, "generate");
}

/* Each broken answer, and what the client must make of it. */
enum broken { B_NOT_FOUND, B_GARBAGE, B_HUGE, B_TRUNCATED, B_SILENT, B_CONN_ERROR, B_WRONG_KIND };

static enum broken broken_kind;

static void script_broken(struct srv *s)
{
	srv_hello(s, 0);
	proto_request *m = srv_read(s);
	if (!m)
		return;
	static const uint8_t garbage[] = { 6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const uint8_t huge[] = { 0xff, 0xff, 0xff, 0x7f, 1, 2, 3 };
	static const uint8_t trunc[] = { 100, 0, 0, 0, 0x08, 0x01 };
	switch (broken_kind) {
	case B_NOT_FOUND:
		srv_error(s, m->id, GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND,
			  "context \"nope\": not found\nsecond line");
		break;
	case B_GARBAGE: write_all(s->fd, garbage, sizeof(garbage)); break;
	case B_HUGE: write_all(s->fd, huge, sizeof(huge)); break;
	case B_TRUNCATED: write_all(s->fd, trunc, sizeof(trunc)); break;
	case B_SILENT: usleep(600 * 1000); break;
	case B_CONN_ERROR:
		srv_error(s, 0, GOLDFINCH__V1__ERROR_CODE__ERROR_TOO_LARGE, "frame too large");
		break;
	case B_WRONG_KIND: {
		proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
		Goldfinch__V1__Dropped d = GOLDFINCH__V1__DROPPED__INIT;
		r.id = m->id;
		r.body_case = GOLDFINCH__V1__RESPONSE__BODY_DROPPED;
		r.dropped = &d;
		srv_send(s, &r, false);
		break;
	}
	}
	proto_request_free(m);
}

static void test_broken(void)
{
	static const struct {
		enum broken kind;
		int rc, exit;
		const char *msg;
	} cases[] = {
		{ B_NOT_FOUND, -ENOENT, GFC_EXIT_NOT_FOUND, "server: NOT_FOUND: context \"nope\": not found second line" },
		{ B_GARBAGE, -EPROTO, GFC_EXIT_CONNECTION, "not a valid Response" },
		{ B_HUGE, -EPROTO, GFC_EXIT_CONNECTION, "limit" },
		{ B_TRUNCATED, -ECONNRESET, GFC_EXIT_CONNECTION, "closed the connection" },
		{ B_SILENT, -ETIMEDOUT, GFC_EXIT_CONNECTION, "no answer for 0.3 s" },
		{ B_CONN_ERROR, -E2BIG, GFC_EXIT_LIMIT, "TOO_LARGE" },
		{ B_WRONG_KIND, -EPROTO, GFC_EXIT_CONNECTION, "expected StatusReply, got Dropped" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct srv s;
		char err[GFC_ERR_LEN] = "";
		proto_response *r = NULL;

		broken_kind = cases[i].kind;
		srv_start(&s, script_broken);
		gfc_conn *c = client(0.3, -1, NULL);
		CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
		int rc = gfc_status(c, &r, err);
		CHECK(rc == cases[i].rc, "case %zu: rc %d, want %d (%s)", i, rc, cases[i].rc, err);
		CHECK(gfc_exit_status(c, rc) == cases[i].exit, "case %zu: exit %d, want %d", i,
		      gfc_exit_status(c, rc), cases[i].exit);
		CHECK(strstr(err, cases[i].msg) && !strchr(err, '\n'), "case %zu: message \"%s\"", i,
		      err);
		CHECK(!r, "case %zu: a response handed out", i);
		gfc_close(c);
		srv_stop(&s, "broken");
	}
}

/* Ingest: pieces of at most 64 KiB (or the server's limit), the FileStart, progress. */
static void script_ingest(struct srv *s)
{
	srv_hello(s, 0);
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_INGEST_START);
	if (!m)
		return;
	uint64_t id = m->id;
	if (strcmp(m->ingest_start->name, "code") || m->ingest_start->total_bytes != 300000 ||
	    m->ingest_start->c_dtype != GOLDFINCH__V1__CDTYPE__C_DTYPE_F32)
		srv_fail(s, "ingest start fields");
	proto_request_free(m);
	for (;;) {
		m = srv_read(s);
		if (!m)
			return;
		if (m->id != id)
			srv_fail(s, "ingest piece with id %llu", (unsigned long long)m->id);
		if (m->body_case == GOLDFINCH__V1__REQUEST__BODY_INGEST_END) {
			proto_request_free(m);
			break;
		}
		Goldfinch__V1__IngestData *d = m->ingest_data;
		if (d->piece_case == GOLDFINCH__V1__INGEST_DATA__PIECE_FILE) {
			snprintf(s->path, sizeof(s->path), "%s", d->file->path);
			s->u = d->file->size;
		} else {
			s->pieces++;
			s->text_bytes += d->text.len;
			if (d->text.len > s->max_piece)
				s->max_piece = d->text.len;
			if (s->pieces % 2 == 0) {
				proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
				Goldfinch__V1__IngestProgress p = GOLDFINCH__V1__INGEST_PROGRESS__INIT;
				r.id = id;
				r.body_case = GOLDFINCH__V1__RESPONSE__BODY_PROGRESS;
				r.progress = &p;
				p.has_tokens_done = true;
				p.tokens_done = s->text_bytes / 4;
				srv_send(s, &r, false);
			}
		}
		proto_request_free(m);
	}
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	Goldfinch__V1__ContextReady cr = GOLDFINCH__V1__CONTEXT_READY__INIT;
	Goldfinch__V1__ContextInfo ci = GOLDFINCH__V1__CONTEXT_INFO__INIT;
	r.id = id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_CONTEXT_READY;
	r.context_ready = &cr;
	cr.context = &ci;
	ci.has_serial = true;
	ci.serial = 9;
	ci.has_tokens = true;
	ci.tokens = s->text_bytes / 4;
	srv_send(s, &r, false);
}

static int count_progress(void *user, const proto_response *r)
{
	if (r->body_case == GOLDFINCH__V1__RESPONSE__BODY_PROGRESS)
		(*(int *)user)++;
	return 0;
}

static void test_ingest(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "";
	Goldfinch__V1__IngestStart st = GOLDFINCH__V1__INGEST_START__INIT;
	proto_response *ready = NULL;
	int progress = 0;
	size_t n = 200 * 1024 + 17;
	char *text = malloc(n);

	for (size_t i = 0; i < n; i++)
		text[i] = "abcdefgh\n"[i % 9];
	srv_start(&s, script_ingest);
	gfc_conn *c = client(5, -1, NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	st.name = "code";
	st.has_total_bytes = true;
	st.total_bytes = 300000;
	st.has_c_dtype = true;
	st.c_dtype = GOLDFINCH__V1__CDTYPE__C_DTYPE_F32;
	int rc = gfc_ingest_start(c, &st, count_progress, &progress, NULL, err);
	CHECK(rc == 0, "start: %s", err);
	rc = gfc_ingest_file(c, "src/main.c", n, err);
	CHECK(rc == 0, "file: %s", err);
	rc = gfc_ingest_text(c, text, n, err);
	CHECK(rc == 0, "text: %s", err);
	rc = gfc_ingest_end(c, &ready, err);
	CHECK(rc == 0, "end: %s", err);
	CHECK(ready && ready->context_ready->context->serial == 9, "context ready");
	CHECK(progress == 2, "progress messages seen: %d", progress);
	/* The connection goes on after an ingest. */
	gfc_close(c);
	proto_response_free(ready);
	srv_stop(&s, "ingest");
	CHECK(s.pieces == 4 && s.max_piece == GFC_PIECE_BYTES && s.text_bytes == n,
	      "pieces %zu max %zu bytes %zu", s.pieces, s.max_piece, s.text_bytes);
	CHECK(!strcmp(s.path, "src/main.c") && s.u == n, "file start %s %llu", s.path,
	      (unsigned long long)s.u);
	free(text);
}

/* The server refuses the ingest at once and stops reading: the client, with megabytes left
 * to send, must see the Error rather than block on a full socket. */
static void script_ingest_refused(struct srv *s)
{
	srv_hello(s, 0);
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_INGEST_START);
	if (!m)
		return;
	srv_error(s, m->id, GOLDFINCH__V1__ERROR_CODE__ERROR_NO_SPACE, "disk budget of 1 MiB spent");
	proto_request_free(m);
	usleep(1500 * 1000);   /* reads nothing meanwhile */
}

static void test_ingest_refused(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "";
	Goldfinch__V1__IngestStart st = GOLDFINCH__V1__INGEST_START__INIT;
	size_t n = 16u << 20;
	char *text = calloc(1, n);

	memset(text, 'a', n);
	srv_start(&s, script_ingest_refused);
	gfc_conn *c = client(10, -1, NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	int rc = gfc_ingest_start(c, &st, NULL, NULL, NULL, err);
	if (!rc)
		rc = gfc_ingest_text(c, text, n, err);
	CHECK(rc == -ENOSPC && gfc_exit_status(c, rc) == GFC_EXIT_LIMIT, "refused: rc %d: %s", rc,
	      err);
	CHECK(strstr(err, "NO_SPACE: disk budget"), "refused message: %s", err);
	rc = gfc_ingest_text(c, "x", 1, err);
	CHECK(rc == -EINVAL, "ingest still open after an error: %d", rc);
	gfc_close(c);
	srv_stop(&s, "ingest refused");
	free(text);
}

/* Resume: the first progress says where to go on from; small max_frame shrinks pieces. */
static void script_resume(struct srv *s)
{
	srv_hello(s, 1000);
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_INGEST_START);
	if (!m)
		return;
	uint64_t id = m->id;
	if (!m->ingest_start->resume)
		srv_fail(s, "resume flag not sent");
	proto_request_free(m);
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	Goldfinch__V1__IngestProgress p = GOLDFINCH__V1__INGEST_PROGRESS__INIT;
	r.id = id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_PROGRESS;
	r.progress = &p;
	p.has_bytes_done = true;
	p.bytes_done = 1234;
	srv_send(s, &r, true);
	while ((m = srv_read(s))) {
		if (m->body_case == GOLDFINCH__V1__REQUEST__BODY_INGEST_DATA) {
			s->pieces++;
			if (m->ingest_data->text.len > s->max_piece)
				s->max_piece = m->ingest_data->text.len;
		}
		proto_request_free(m);
	}
}

static void test_resume_and_limits(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "", *stop[1];
	Goldfinch__V1__IngestStart st = GOLDFINCH__V1__INGEST_START__INIT;
	uint64_t from = 0;
	char text[5000];

	memset(text, 'z', sizeof(text));
	srv_start(&s, script_resume);
	gfc_conn *c = client(5, -1, NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	st.name = "book";
	st.has_resume = true;
	st.resume = true;
	int rc = gfc_ingest_start(c, &st, NULL, NULL, &from, err);
	CHECK(rc == 0 && from == 1234, "resume: rc %d from %llu: %s", rc, (unsigned long long)from,
	      err);
	rc = gfc_ingest_text(c, text, sizeof(text), err);
	CHECK(rc == 0, "text under a 1000-byte frame limit: %s", err);
	gfc_close(c);
	srv_stop(&s, "resume");
	CHECK(s.pieces >= 6 && s.max_piece <= 1000 - 64, "pieces %zu max %zu", s.pieces,
	      s.max_piece);

	/* A request above the server's frame limit fails here, before it is sent. */
	srv_start(&s, script_resume);
	c = client(5, -1, NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	Goldfinch__V1__Generate g;
	generate_params(&g, stop);
	g.prompt = text;
	text[sizeof(text) - 1] = 0;
	rc = gfc_generate(c, &g, NULL, NULL, NULL, err);
	CHECK(rc == -E2BIG && strstr(err, "1000-byte frame limit"), "big request: %d %s", rc, err);
	gfc_close(c);
	pthread_join(s.th, NULL);
	close(s.lfd);
	proto_reader_free(&s.rd);
}

static int second_signal_fd = -1;

/* Cancel: the client's cancel fd fires after the first token; the server must then see
 * Cancel{target = the generation}, and its Done{CANCELLED} ends the call. */
static void script_cancel(struct srv *s)
{
	srv_hello(s, 0);
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_GENERATE);
	if (!m)
		return;
	uint64_t id = m->id;
	proto_request_free(m);
	proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
	Goldfinch__V1__Token t = GOLDFINCH__V1__TOKEN__INIT;
	r.id = id;
	r.body_case = GOLDFINCH__V1__RESPONSE__BODY_TOKEN;
	r.token = &t;
	t.has_text = true;
	t.text.data = (uint8_t *)"tok";
	t.text.len = 3;
	srv_send(s, &r, false);
	m = srv_read(s);
	if (!m)
		return;   /* the client gave up (second signal) */
	if (m->body_case != GOLDFINCH__V1__REQUEST__BODY_CANCEL || m->cancel->target != id)
		srv_fail(s, "expected Cancel{%llu}", (unsigned long long)id);
	s->u = 1;
	if (second_signal_fd >= 0) {
		/* A second Ctrl-C while the server has not acknowledged: the client quits. */
		write_all(second_signal_fd, "x", 1);
		proto_request_free(m);
		usleep(500 * 1000);
		return;
	}
	proto_response d = GOLDFINCH__V1__RESPONSE__INIT;
	Goldfinch__V1__Done done = GOLDFINCH__V1__DONE__INIT;
	d.id = id;
	d.body_case = GOLDFINCH__V1__RESPONSE__BODY_DONE;
	d.done = &done;
	done.reason = GOLDFINCH__V1__DONE_REASON__DONE_CANCELLED;
	srv_send(s, &d, false);
	/* Cancel's own NOT_FOUND crossing the end: the client must ignore it. */
	srv_error(s, m->id, GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND, "job already ended");
	proto_request_free(m);
	/* The connection stays usable: a status request next. */
	m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_STATUS);
	if (m) {
		proto_response st = GOLDFINCH__V1__RESPONSE__INIT;
		Goldfinch__V1__StatusReply sr = GOLDFINCH__V1__STATUS_REPLY__INIT;
		st.id = m->id;
		st.body_case = GOLDFINCH__V1__RESPONSE__BODY_STATUS;
		st.status = &sr;
		srv_send(s, &st, false);
	}
	proto_request_free(m);
}

static void test_cancel(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "", *stop[1];
	Goldfinch__V1__Generate g;
	proto_response *done = NULL, *st = NULL;
	int p[2];

	if (pipe(p)) {
		perror("pipe");
		exit(1);
	}
	srv_start(&s, script_cancel);
	gfc_conn *c = client(5, p[0], NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	generate_params(&g, stop);
	struct collect k = { .cancel_fd = p[1], .writes = 1 };
	int rc = gfc_generate(c, &g, collect_fn, &k, &done, err);
	CHECK(rc == 0 && done && done->done->reason == GOLDFINCH__V1__DONE_REASON__DONE_CANCELLED,
	      "cancelled generate: rc %d: %s", rc, err);
	proto_response_free(done);
	rc = gfc_status(c, &st, err);
	CHECK(rc == 0 && st, "status after a cancel: %s", err);
	proto_response_free(st);
	gfc_close(c);
	srv_stop(&s, "cancel");
	CHECK(s.u == 1, "server saw no Cancel");

	/* Two signals: the client quits without waiting for the server. */
	second_signal_fd = p[1];
	srv_start(&s, script_cancel);
	c = client(5, p[0], NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	struct collect k2 = { .cancel_fd = p[1], .writes = 1 };
	rc = gfc_generate(c, &g, collect_fn, &k2, &done, err);
	CHECK(rc == -ECANCELED && gfc_exit_status(c, rc) == GFC_EXIT_CANCELLED,
	      "second signal: rc %d: %s", rc, err);
	gfc_close(c);
	srv_stop(&s, "cancel twice");
	second_signal_fd = -1;
	CHECK(s.u == 1, "server saw no Cancel before the second signal");
	close(p[0]);
	close(p[1]);
}

/* Cancel of another job id, which the server does not know. */
static void script_cancel_other(struct srv *s)
{
	srv_hello(s, 0);
	proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_CANCEL);
	if (m) {
		if (m->cancel->target != 77)
			srv_fail(s, "cancel target %llu", (unsigned long long)m->cancel->target);
		srv_error(s, m->id, GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND, "job 77: not found");
	}
	proto_request_free(m);
}

static void test_cancel_other(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "";

	srv_start(&s, script_cancel_other);
	gfc_conn *c = client(5, -1, NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	int rc = gfc_cancel(c, 77, 2000, err);
	CHECK(rc == -ENOENT && gfc_exit_status(c, rc) == GFC_EXIT_NOT_FOUND, "cancel 77: %d %s", rc,
	      err);
	gfc_close(c);
	srv_stop(&s, "cancel other");
}

/* Protocol 1.1: Cancel{target 0, job} by server-wide number, from a connection that did
 * not start the job: CancelAccepted, then NOT_FOUND for a number the server does not know. */
static void script_cancel_number(struct srv *s)
{
	srv_hello(s, 0);
	for (uint64_t want = 77; want <= 78; want++) {
		proto_request *m = srv_expect(s, GOLDFINCH__V1__REQUEST__BODY_CANCEL);
		if (!m)
			return;
		if (m->cancel->target != 0 || !m->cancel->has_job || m->cancel->job != want)
			srv_fail(s, "cancel target %llu job %llu (has %d)",
				 (unsigned long long)m->cancel->target,
				 (unsigned long long)m->cancel->job, m->cancel->has_job);
		if (want == 77) {
			proto_response r = GOLDFINCH__V1__RESPONSE__INIT;
			Goldfinch__V1__CancelAccepted ca = GOLDFINCH__V1__CANCEL_ACCEPTED__INIT;
			ca.has_job = true;
			ca.job = want;
			r.id = m->id;
			r.body_case = GOLDFINCH__V1__RESPONSE__BODY_CANCEL_ACCEPTED;
			r.cancel_accepted = &ca;
			srv_send(s, &r, true);
		} else {
			srv_error(s, m->id, GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND,
				  "cancel: no job 78 is queued or running");
		}
		proto_request_free(m);
	}
}

static void test_cancel_number(void)
{
	struct srv s;
	char err[GFC_ERR_LEN] = "";

	srv_start(&s, script_cancel_number);
	gfc_conn *c = client(5, -1, NULL);
	CHECK(gfc_connect(c, err) == 0, "connect: %s", err);
	int rc = gfc_cancel_number(c, 77, err);
	CHECK(rc == 0 && gfc_exit_status(c, rc) == GFC_EXIT_OK, "cancel job 77: %d %s", rc, err);
	rc = gfc_cancel_number(c, 78, err);
	CHECK(rc == -ENOENT && gfc_exit_status(c, rc) == GFC_EXIT_NOT_FOUND, "cancel job 78: %d %s",
	      rc, err);
	gfc_close(c);
	srv_stop(&s, "cancel number");
}

/* ---- walking -------------------------------------------------------------------------- */

static void put(const char *rel, const void *data, size_t n)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
	FILE *f = fopen(p, "wb");
	if (!f || fwrite(data, 1, n, f) != n) {
		fprintf(stderr, "writing %s: %s\n", p, strerror(errno));
		exit(1);
	}
	fclose(f);
}

static void mk(const char *rel)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
	mkdir(p, 0755);
}

static void note_count(void *user, const char *path, const char *why)
{
	(void)path;
	(void)why;
	(*(int *)user)++;
}

static void test_walk(void)
{
	static const struct {
		const char *s;
		size_t n;
		bool trunc;
		int text;
	} t[] = {
		{ "plain\n", 6, false, 1 },
		{ "a\0b", 3, false, 0 },
		{ "caf\xc3\xa9", 5, false, 1 },
		{ "caf\xc3", 4, false, 0 },          /* cut at the end of the file */
		{ "caf\xc3", 4, true, 1 },           /* cut by the sniff window */
		{ "\xe2\x82", 2, true, 1 },
		{ "\xe0\x80\x80", 3, false, 0 },     /* overlong */
		{ "\xe0\x80", 2, true, 0 },          /* overlong even when cut */
		{ "\xed\xa0\x80", 3, false, 0 },     /* surrogate */
		{ "\xf4\x90\x80\x80", 4, false, 0 }, /* above U+10FFFF */
		{ "\xf0\x9f\x98\x80", 4, false, 1 },
		{ "\x80", 1, false, 0 },
		{ "\xc1\xbf", 2, false, 0 },
		{ "\xff", 1, true, 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		CHECK(gfc_is_text((const uint8_t *)t[i].s, t[i].n, t[i].trunc) == t[i].text,
		      "is_text case %zu", i);

	/* A tree: sorted bytewise per level ("B" < "a", "a" folder before "a.txt"). */
	mk("tree");
	mk("tree/a");
	mk("tree/a/.git");
	mk("tree/B");
	mk("tree/.svn");
	put("tree/a/.git/HEAD", "ref\n", 4);
	put("tree/a/z.c", "int z;\n", 7);
	put("tree/a/b.c", "int b;\n", 7);
	put("tree/a.txt", "text\n", 5);
	put("tree/B/readme", "", 0);
	put("tree/.svn/entries", "x\n", 2);
	put("tree/img.png", "\x89PNG\r\n\x1a\n\0\0", 10);
	put("tree/latin1.txt", "caf\xe9\n", 5);
	char big[GFC_SNIFF_BYTES + 100];
	memset(big, 'x', sizeof(big));
	big[GFC_SNIFF_BYTES + 50] = 0;   /* a NUL past the sniff window: still text */
	put("tree/big.txt", big, sizeof(big));
	char p[512], q[512];
	snprintf(p, sizeof(p), "%s/tree/a", tmpdir);
	snprintf(q, sizeof(q), "%s/tree/link_to_a", tmpdir);
	CHECK(!symlink(p, q), "symlink");
	snprintf(p, sizeof(p), "%s/tree/a.txt", tmpdir);
	snprintf(q, sizeof(q), "%s/tree/link.txt", tmpdir);
	CHECK(!symlink(p, q), "symlink");

	gfc_filelist fl;
	char err[GFC_ERR_LEN];
	int notes = 0;
	gfc_filelist_init(&fl);
	snprintf(p, sizeof(p), "%s/tree/", tmpdir);
	int rc = gfc_walk(&fl, p, note_count, &notes, err);
	CHECK(rc == 0, "walk: %s", err);
	const char *want[] = { "B/readme", "a/b.c", "a/z.c", "a.txt", "big.txt", "link.txt" };
	CHECK(fl.n == 6, "walk found %zu files", fl.n);
	for (size_t i = 0; i < fl.n && i < 6; i++)
		CHECK(!strcmp(fl.files[i].rel, want[i]), "file %zu: %s, want %s", i, fl.files[i].rel,
		      want[i]);
	/* .svn, a/.git, img.png, latin1.txt, link_to_a */
	CHECK(notes == 5, "notes %d", notes);
	CHECK(fl.n >= 5 && fl.files[4].size == sizeof(big), "size of big.txt");
	CHECK(gfc_rendered_size("a/b.c", 7) == strlen("### File: a/b.c\n") + 7 + 1, "rendered size");

	/* A file named directly: its base name; a binary one: skipped with a note. */
	snprintf(p, sizeof(p), "%s/tree/a/z.c", tmpdir);
	rc = gfc_walk(&fl, p, note_count, &notes, err);
	CHECK(rc == 0 && fl.n == 7 && !strcmp(fl.files[6].rel, "z.c"), "single file");
	snprintf(p, sizeof(p), "%s/tree/img.png", tmpdir);
	rc = gfc_walk(&fl, p, note_count, &notes, err);
	CHECK(rc == 0 && fl.n == 7 && notes == 6, "binary file named directly");
	snprintf(p, sizeof(p), "%s/tree/missing", tmpdir);
	rc = gfc_walk(&fl, p, note_count, &notes, err);
	CHECK(rc == -ENOENT && strstr(err, "missing"), "missing path: %d %s", rc, err);
	gfc_filelist_free(&fl);
	gfc_filelist_free(NULL);
}

int main(void)
{
	const char *base = getenv("TMPDIR");
	snprintf(tmpdir, sizeof(tmpdir), "%s/gf_client_unit.XXXXXX", base ? base : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(sock_path, sizeof(sock_path), "%s/s", tmpdir);
	if (strlen(sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		fprintf(stderr, "socket path %s too long\n", sock_path);
		return 1;
	}

	test_hello_and_contexts();
	test_hello_failures();
	test_generate();
	test_broken();
	test_ingest();
	test_ingest_refused();
	test_resume_and_limits();
	test_cancel();
	test_cancel_other();
	test_cancel_number();
	test_walk();

	char cmd[400];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd))
		fprintf(stderr, "could not remove %s\n", tmpdir);
	if (failures) {
		fprintf(stderr, "client_unit: %d failure(s)\n", failures);
		return 1;
	}
	printf("client_unit: all passed\n");
	return 0;
}
