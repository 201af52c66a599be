/*
 * server_metrics.c — the daemon's counters and their Prometheus text exposition
 * (https://prometheus.io/docs/instrumenting/exposition_formats/) over libmicrohttpd.
 */
#include "server.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* ---- counters --------------------------------------------------------------------------- */

void gfd_stats_init(gfd_stats *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_init(&st->mu, NULL);
}

void gfd_stats_destroy(gfd_stats *st)
{
	pthread_mutex_destroy(&st->mu);
}

static int64_t now_sec(void)
{
	return gfd_now_ns() / 1000000000;
}

void gfd_stats_tokens(gfd_stats *st, uint64_t ingested, uint64_t decoded)
{
	int64_t sec = now_sec();
	pthread_mutex_lock(&st->mu);
	st->tokens_ingested += ingested;
	st->tokens_decoded += decoded;
	/* One slot per second, reused round-robin; a stale slot starts over. */
	int i = (int)(sec % GFD_RATE_SLOTS);
	if (st->slot[i].sec != sec) {
		st->slot[i].sec = sec;
		st->slot[i].ingested = st->slot[i].decoded = 0;
	}
	st->slot[i].ingested += ingested;
	st->slot[i].decoded += decoded;
	pthread_mutex_unlock(&st->mu);
}

void gfd_stats_rates(gfd_stats *st, double *ingest, double *decode)
{
	/* The last GFD_RATE_SLOTS - 2 full seconds: the current one is still filling. */
	const int span = GFD_RATE_SLOTS - 2;
	int64_t sec = now_sec();
	uint64_t in = 0, de = 0;
	pthread_mutex_lock(&st->mu);
	for (int k = 1; k <= span; k++) {
		int64_t s = sec - k;
		int i = (int)(((s % GFD_RATE_SLOTS) + GFD_RATE_SLOTS) % GFD_RATE_SLOTS);
		if (st->slot[i].sec == s) {
			in += st->slot[i].ingested;
			de += st->slot[i].decoded;
		}
	}
	pthread_mutex_unlock(&st->mu);
	*ingest = (double)in / span;
	*decode = (double)de / span;
}

void gfd_stats_snapshot(gfd_stats *st, gfd_stats *out)
{
	pthread_mutex_lock(&st->mu);
	*out = *st;
	pthread_mutex_unlock(&st->mu);
	memset(&out->mu, 0, sizeof(out->mu));
}

/* ---- exposition ------------------------------------------------------------------------- */

struct text {
	char *buf;
	size_t len, cap;
	bool oom;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = t->oom ? 0 : vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
		va_end(ap);
		if (t->oom || n < 0)
			return;
		if ((size_t)n < t->cap - t->len) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = t->cap * 2 + (size_t)n + 1;
		char *b = realloc(t->buf, cap);
		if (!b) {
			t->oom = true;
			return;
		}
		t->buf = b;
		t->cap = cap;
	}
}

static void family(struct text *t, const char *name, const char *type, const char *help)
{
	put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *gfd_metrics_render(gfd_server *srv)
{
	gfd_stats st;
	double in_rate, de_rate;
	struct text t = { .cap = 4096 };
	t.buf = malloc(t.cap);
	if (!t.buf)
		return NULL;
	t.buf[0] = 0;
	gfd_stats_snapshot(&srv->stats, &st);
	gfd_stats_rates(&srv->stats, &in_rate, &de_rate);
	uint64_t disk = srv->be.ops->disk_used(srv->be.self);
	cs_ctx_info *list = NULL;
	size_t n_ctx = 0;
	if (srv->be.ops->list(srv->be.self, &list, &n_ctx, NULL))
		n_ctx = 0;
	free(list);

	family(&t, "goldfinch_jobs", "gauge", "Jobs now, by state.");
	put(&t, "goldfinch_jobs{state=\"queued\"} %u\n", st.jobs_queued);
	put(&t, "goldfinch_jobs{state=\"running\"} %u\n", st.jobs_running);
	family(&t, "goldfinch_jobs_total", "counter", "Jobs ended since start, by outcome.");
	put(&t, "goldfinch_jobs_total{state=\"done\"} %llu\n", (unsigned long long)st.jobs_done);
	put(&t, "goldfinch_jobs_total{state=\"failed\"} %llu\n", (unsigned long long)st.jobs_failed);
	put(&t, "goldfinch_jobs_total{state=\"cancelled\"} %llu\n",
	    (unsigned long long)st.jobs_cancelled);
	put(&t, "goldfinch_jobs_total{state=\"rejected\"} %llu\n",
	    (unsigned long long)st.jobs_rejected);
	family(&t, "goldfinch_jobs_accepted_total", "counter", "Jobs accepted into the queue.");
	put(&t, "goldfinch_jobs_accepted_total %llu\n", (unsigned long long)st.jobs_accepted);
	family(&t, "goldfinch_queue_depth", "gauge", "Jobs waiting for a worker.");
	put(&t, "goldfinch_queue_depth %u\n", st.jobs_queued);
	family(&t, "goldfinch_tokens_ingested_total", "counter",
	       "Context tokens run through the Finch stage by ingests.");
	put(&t, "goldfinch_tokens_ingested_total %llu\n", (unsigned long long)st.tokens_ingested);
	family(&t, "goldfinch_tokens_decoded_total", "counter", "Tokens generated.");
	put(&t, "goldfinch_tokens_decoded_total %llu\n", (unsigned long long)st.tokens_decoded);
	family(&t, "goldfinch_prompt_tokens_total", "counter", "Question tokens prefilled.");
	put(&t, "goldfinch_prompt_tokens_total %llu\n", (unsigned long long)st.prompt_tokens);
	family(&t, "goldfinch_ingest_tokens_per_second", "gauge",
	       "Ingest throughput over the last seconds.");
	put(&t, "goldfinch_ingest_tokens_per_second %.3f\n", in_rate);
	family(&t, "goldfinch_decode_tokens_per_second", "gauge",
	       "Generation throughput over the last seconds.");
	put(&t, "goldfinch_decode_tokens_per_second %.3f\n", de_rate);
	family(&t, "goldfinch_context_hits_total", "counter",
	       "Generations served from a stored context, plus ingests that found theirs stored.");
	put(&t, "goldfinch_context_hits_total %llu\n",
	    (unsigned long long)(st.context_hits + st.ingests_reused));
	family(&t, "goldfinch_cached_tokens_reused_total", "counter",
	       "Context tokens generations reused instead of prefilling them.");
	put(&t, "goldfinch_cached_tokens_reused_total %llu\n", (unsigned long long)st.cached_tokens);
	family(&t, "goldfinch_disk_bytes", "gauge", "Bytes of context files in the cache store.");
	put(&t, "goldfinch_disk_bytes %llu\n", (unsigned long long)disk);
	family(&t, "goldfinch_disk_budget_bytes", "gauge", "The disk budget; 0 = unlimited.");
	put(&t, "goldfinch_disk_budget_bytes %llu\n", (unsigned long long)srv->opt.disk_budget);
	family(&t, "goldfinch_contexts", "gauge", "Contexts in the store (sealed or not).");
	put(&t, "goldfinch_contexts %zu\n", n_ctx);
	family(&t, "goldfinch_connections", "gauge", "Open client connections.");
	put(&t, "goldfinch_connections %u\n", st.connections);
	family(&t, "goldfinch_rss_bytes", "gauge", "Resident memory of the daemon.");
	put(&t, "goldfinch_rss_bytes %llu\n", (unsigned long long)gfd_rss_bytes());
	/* Resident memory is about weights + page cache + tier: each part and its budget, so
	 * that an alert can tell a full cache (by design) from growth elsewhere. Rank 0's with
	 * several ranks, as the resident set above. */
	gfd_memory mem;
	srv->be.ops->memory(srv->be.self, &mem);
	family(&t, "goldfinch_weight_bytes", "gauge", "Bytes of model weights in memory.");
	put(&t, "goldfinch_weight_bytes %llu\n", (unsigned long long)mem.weight_bytes);
	family(&t, "goldfinch_page_cache_bytes", "gauge",
	       "Decompressed cache pages held in RAM, in use or kept.");
	put(&t, "goldfinch_page_cache_bytes %llu\n", (unsigned long long)mem.page_cache_bytes);
	family(&t, "goldfinch_page_cache_budget_bytes", "gauge",
	       "The most bytes of pages the page cache keeps when no reader uses them.");
	put(&t, "goldfinch_page_cache_budget_bytes %llu\n",
	    (unsigned long long)mem.page_cache_budget);
	family(&t, "goldfinch_tier_bytes", "gauge", "Expanded keys and values held for decode.");
	put(&t, "goldfinch_tier_bytes %llu\n", (unsigned long long)mem.tier_bytes);
	family(&t, "goldfinch_tier_budget_bytes", "gauge", "The tier's budget (--tier-mb); 0 = off.");
	put(&t, "goldfinch_tier_budget_bytes %llu\n", (unsigned long long)mem.tier_budget);
	/* Settings as labels of a constant 1, the Prometheus way to export strings. */
	family(&t, "goldfinch_info", "gauge",
	       "Always 1: the server's version, compute mode (f32 or bf16) and kernels.");
	put(&t, "goldfinch_info{version=\"%s\",compute=\"%s\",kernels=\"%s\"} 1\n", GFD_VERSION,
	    gf_compute_name(srv->info.compute), srv->info.kernels);
	if (t.oom) {
		free(t.buf);
		return NULL;
	}
	return t.buf;
}

/* ---- HTTP ------------------------------------------------------------------------------- */

struct gfd_metrics {
	struct MHD_Daemon *d;
};

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_size, void **con_cls)
{
	gfd_server *srv = cls;
	struct MHD_Response *r;
	unsigned status = MHD_HTTP_OK;
	(void)version;
	(void)upload;
	(void)con_cls;
	if (*upload_size)
		return MHD_NO; /* a body on GET: not ours */
	if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
		static const char msg[] = "only GET /metrics\n";
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
		r = MHD_create_response_from_buffer(sizeof(msg) - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
	} else if (strcmp(url, "/metrics") && strcmp(url, "/")) {
		static const char msg[] = "not found: try /metrics\n";
		status = MHD_HTTP_NOT_FOUND;
		r = MHD_create_response_from_buffer(sizeof(msg) - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
	} else {
		char *body = gfd_metrics_render(srv);
		if (!body)
			return MHD_NO;
		r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
		if (!r)
			free(body);
	}
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", status == MHD_HTTP_OK
				    ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain");
	enum MHD_Result ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* HOST:PORT or [V6]:PORT into host and port strings. */
static int split_hostport(const char *addr, char *host, size_t hcap, char *port, size_t pcap)
{
	const char *colon;
	if (addr[0] == '[') {
		const char *close = strchr(addr, ']');
		if (!close || close[1] != ':')
			return -EINVAL;
		if ((size_t)(close - addr - 1) >= hcap)
			return -EINVAL;
		memcpy(host, addr + 1, (size_t)(close - addr - 1));
		host[close - addr - 1] = 0;
		colon = close + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon || (size_t)(colon - addr) >= hcap)
			return -EINVAL;
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = 0;
	}
	if (!colon[1] || strlen(colon + 1) >= pcap)
		return -EINVAL;
	snprintf(port, pcap, "%s", colon + 1);
	return 0;
}

int gfd_metrics_start(gfd_metrics **out, const char *addr, gfd_server *srv, char *err)
{
	char host[256], port[32];
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai = NULL;
	if (split_hostport(addr, host, sizeof(host), port, sizeof(port))) {
		snprintf(err, GF_ERR_LEN, "--metrics %s: expected HOST:PORT", addr);
		return -EINVAL;
	}
	int grc = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
	if (grc) {
		snprintf(err, GF_ERR_LEN, "--metrics %s: %s", addr, gai_strerror(grc));
		return -EINVAL;
	}
	gfd_metrics *m = calloc(1, sizeof(*m));
	if (!m) {
		freeaddrinfo(ai);
		snprintf(err, GF_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* The port argument is ignored when SOCK_ADDR is given; 0 there means "any". */
	m->d = MHD_start_daemon(flags, 0, NULL, NULL, answer, srv, MHD_OPTION_SOCK_ADDR,
				ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!m->d) {
		free(m);
		snprintf(err, GF_ERR_LEN, "--metrics %s: cannot listen there (in use, or not a local address?)",
			 addr);
		return -EADDRINUSE;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
	gfd_logf(srv->log, "metrics on http://%s%s%s:%u/metrics", strchr(host, ':') ? "[" : "",
		 host[0] ? host : "0.0.0.0", strchr(host, ':') ? "]" : "",
		 di ? (unsigned)di->port : 0u);
	*out = m;
	return 0;
}

void gfd_metrics_stop(gfd_metrics *m)
{
	if (!m)
		return;
	if (m->d)
		MHD_stop_daemon(m->d);
	free(m);
}
