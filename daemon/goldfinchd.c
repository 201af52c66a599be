/*
 * goldfinchd — the GoldFinch daemon: ingests books and codebases into the paged cache and
 * answers questions about them, for clients speaking protocol/goldfinch.proto over a Unix
 * socket or TCP. This file is the command line; the server is server_*.c (server.h), the
 * engine behind it is reached through server_backend.h. daemon/README.md is the manual.
 */
#include "partition.h"
#include "ranks.h"
#include "server.h"
#include "server_backend_mpi.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Every setting's flag and the environment variable that gives it when the flag is absent
 * (daemon/README.md has the table). GOLDFINCH_SERVER_FILE is gf's, the file to read: the
 * daemon's --server-file has its own variable, so that a shell set up for gf does not make a
 * second daemon overwrite the first one's file. */
static const struct gfd_env_flag {
	const char *flag, *env;
} gfd_env[] = {
	{ "--model", "GOLDFINCH_MODEL" },
	{ "--cache-dir", "GOLDFINCH_CACHE_DIR" },
	{ "--listen", "GOLDFINCH_LISTEN" },
	{ "--host", "GOLDFINCH_HOST" },
	{ "--port", "GOLDFINCH_PORT" },
	{ "--auth-token-file", "GOLDFINCH_AUTH_TOKEN_FILE" },
	{ "--max-frame", "GOLDFINCH_MAX_FRAME" },
	{ "--max-jobs", "GOLDFINCH_MAX_JOBS" },
	{ "--max-queue", "GOLDFINCH_MAX_QUEUE" },
	{ "--max-context-tokens", "GOLDFINCH_MAX_CONTEXT_TOKENS" },
	{ "--disk-budget", "GOLDFINCH_DISK_BUDGET" },
	{ "--threads", "GOLDFINCH_THREADS" },
	{ "--checkpoint-tokens", "GOLDFINCH_CHECKPOINT_TOKENS" },
	{ "--c-dtype", "GOLDFINCH_C_DTYPE" },
	{ "--tier-mb", "GOLDFINCH_TIER_MB" },
	{ "--compute", "GOLDFINCH_COMPUTE" },
	{ "--metrics", "GOLDFINCH_METRICS" },
	{ "--http", "GOLDFINCH_HTTP" },
	{ "--log-file", "GOLDFINCH_LOG_FILE" },
	{ "--plan-workload", "GOLDFINCH_PLAN_WORKLOAD" },
	{ "--server-file", GFD_ENV_SERVER_FILE },
};

void gfd_usage(FILE *f)
{
	fprintf(f,
		"usage: goldfinchd --model M.gguf --cache-dir DIR [options]\n"
		"\n"
		"Serves GoldFinch contexts: clients ingest text or codebases into the paged cache\n"
		"in DIR and ask questions about them (protocol/README.md; clients: gf, gf.py).\n"
		"\n"
		"  -m, --model M.gguf       the model (gf-convert output); required\n"
		"  --cache-dir DIR          the cache store: contexts live here across restarts;\n"
		"                           one daemon per directory (it is locked); required\n"
		"  --listen ADDR            unix:/path, HOST:PORT or [IPV6]:PORT; repeatable;\n"
		"                           default %s. TCP beyond loopback needs\n"
		"                           --auth-token-file. Port 0 picks a free port (logged)\n"
		"  --host HOST, --port P    one more TCP listener, HOST:P, as llama-server takes\n"
		"                           them (HOST default 127.0.0.1, P default 7433)\n"
		"  --auth-token-file F      clients must send this file's contents (trailing\n"
		"                           newline ignored) in Hello.auth_token\n"
		"  --max-frame BYTES        largest frame accepted (default 16M)\n"
		"  --max-jobs N             jobs running at once (default 2)\n"
		"  --max-queue N            jobs waiting for a slot; more get BUSY (default 16)\n"
		"  --max-context-tokens N   longest context an ingest may build, and longest\n"
		"                           prompt; 0 = no limit (default 0)\n"
		"  --disk-budget BYTES      bytes of context files; least recently used contexts\n"
		"                           are evicted to make room; 0 = no limit (default 0)\n"
		"  -t, --threads N          compute threads (OpenBLAS and decode); 0 = all cores\n"
		"  --checkpoint-tokens K    an ingest commits every K tokens (default 262144)\n"
		"  --c-dtype T              storage of the cache rows: f16 (default), bf16, f32\n"
		"  --tier-mb N              RAM for expanded keys/values shared by generations,\n"
		"                           MiB (default %d; 0 = off: every token rebuilds the\n"
		"                           keys of the whole context; any size, same answers)\n"
		"  --compute f32|bf16|auto  how prefill multiplies (default %s, or\n"
		"                           $GOLDFINCH_COMPUTE): f32 is exact; bf16 (AVX512-BF16\n"
		"                           CPUs) makes ingest faster. A context is continued\n"
		"                           only in the mode that ingested it\n"
		"  --metrics HOST:PORT      serve Prometheus metrics at http://HOST:PORT/metrics\n"
		"  --http [HOST:]PORT       serve the OpenAI-compatible HTTP API there (host\n"
		"                           default 127.0.0.1): /v1/chat/completions,\n"
		"                           /v1/completions, /v1/models, /v1/contexts, /health,\n"
		"                           /metrics; the token of --auth-token-file as\n"
		"                           Authorization: Bearer; beyond loopback it needs one.\n"
		"                           \"model\": \"NAME@CONTEXT\" asks a context, the plain\n"
		"                           NAME the prompt alone; \"return_progress\": true streams\n"
		"                           prompt_progress events. GET / is a web page: upload a\n"
		"                           folder or a book, ask with the answer streamed\n"
		"  --log-file F             append the log here (default: stderr)\n"
		"  --server-file F          once listening, write the addresses clients can use\n"
		"                           (tcp:HOST:PORT with this node's name, unix:PATH) and\n"
		"                           the token file's path to F, for gf --server-file;\n"
		"                           removed at a clean stop (cluster/README.md)\n"
		"  --print-config           print the settings these flags give, and exit\n"
		"  --print-plan [-n P]      print which blocks each of P MPI ranks (default 1)\n"
		"                           would own for --model (partition/), and exit\n"
		"  --plan-workload I:D:C    what the split of blocks over MPI ranks balances: I\n"
		"                           tokens ingested, D decoded over contexts of C tokens\n"
		"                           (default 1M:1000:1M; an ingest-heavy service: 1:0:1)\n"
		"  --help, --version\n"
		"\n"
		"BYTES take K, M, G, T suffixes (powers of 1024). Resident memory is about the\n"
		"weights + the store's page cache (256 MiB) + the tier (--tier-mb), plus a little\n"
		"per job; gf status shows each against its budget. SIGTERM or SIGINT stops the\n"
		"daemon cleanly: running ingests checkpoint (resumable), generations stop, exit\n"
		"status 0. Exit status: 0 clean stop, 1 failure to start or run, 2 bad command line.\n"
		"\n"
		"Environment: each setting also comes from a variable, used when its flag is not\n"
		"given (the flag wins; $GOLDFINCH_LISTEN takes several addresses, comma-separated):\n",
		GFD_DEFAULT_LISTEN, GFE_TIER_DEFAULT_MB, gf_compute_name(gf_compute_default()));
	for (size_t i = 0; i < sizeof(gfd_env) / sizeof(gfd_env[0]); i++)
		fprintf(f, "  %-28s %s\n", gfd_env[i].env, gfd_env[i].flag);
}

void gfd_options_defaults(gfd_options *o)
{
	memset(o, 0, sizeof(*o));
	o->max_frame = PROTO_DEFAULT_MAX_FRAME;
	o->max_jobs = 2;
	/* The engine's default, not a share of this machine's RAM: what a daemon holds is then
	 * known before it starts (weights + page cache + tier), whatever host it lands on. */
	o->tier_mb = GFE_TIER_DEFAULT_MB;
	o->compute = gf_compute_default();
	o->max_queue = 16;
	o->c_dtype = CS_DTYPE_F16;
	o->ranks = 1;
}

/* --print-plan: the model's shape from its GGUF header, then partition/'s plan. */
static void gfd_plan_workload(const gfd_options *o, part_workload *w)
{
	part_workload_default(w);
	if (o->plan_workload[0] + o->plan_workload[1] > 0) {
		w->ingest_tokens = o->plan_workload[0];
		w->decode_tokens = o->plan_workload[1];
		w->context_tokens = o->plan_workload[2];
	}
}

static int print_plan(const gfd_options *o)
{
	char err[GF_ERR_LEN];
	char perr[PART_ERR_LEN];
	gf_gguf g;
	if (gf_gguf_read(&g, o->model_path, err)) {
		fprintf(stderr, "goldfinchd: %s\n", err);
		return 1;
	}
	const gf_config *c = &g.config;
	part_shape shape = { c->n_layer, c->first_gold, c->n_embd, c->dim_ffn, c->vocab_size,
			     c->ckv_dim };
	part_workload w;
	gfd_plan_workload(o, &w);
	part_plan plan;
	int rc = part_plan_make(&plan, &shape, &w, o->ranks, NULL, perr);
	gf_gguf_free(&g);
	if (rc) {
		fprintf(stderr, "goldfinchd: %s: %s\n", o->model_path, perr);
		return 1;
	}
	printf("model %s: workload %.0f tokens ingested, %.0f decoded over %.0f-token contexts\n",
	       o->model_path, w.ingest_tokens, w.decode_tokens, w.context_tokens);
	part_plan_print(&plan, &shape, stdout);
	return 0;
}

static int bad(char *err, const char *flag, const char *val, const char *want)
{
	snprintf(err, GF_ERR_LEN, "%s %.120s: %s", flag, val ? val : "(missing)", want);
	return -EINVAL;
}

/* One setting, from a flag or its variable. 0, or -EINVAL with err. */
static int set_option(gfd_options *o, const char *flag, const char *val, char *err)
{
	uint64_t v;
	if (!strcmp(flag, "--model")) {
		o->model_path = val;
	} else if (!strcmp(flag, "--plan-workload")) {
		double *w = o->plan_workload;
		char tail;
		if (sscanf(val, "%lf:%lf:%lf%c", &w[0], &w[1], &w[2], &tail) != 3 || w[0] < 0 ||
		    w[1] < 0 || w[2] < 0 || w[0] + w[1] == 0)
			return bad(err, flag, val, "expected INGESTED:DECODED:CONTEXT token counts");
	} else if (!strcmp(flag, "--cache-dir")) {
		o->cache_dir = val;
	} else if (!strcmp(flag, "--listen")) {
		if (o->n_listen == GFD_MAX_LISTEN)
			return bad(err, flag, val, "too many listen addresses");
		o->listen[o->n_listen++] = val;
	} else if (!strcmp(flag, "--auth-token-file")) {
		o->auth_token_file = val;
	} else if (!strcmp(flag, "--max-frame")) {
		if (gfd_parse_size(val, &v) || v < 4096 || v > (1u << 30))
			return bad(err, flag, val, "expected a size from 4K to 1G");
		o->max_frame = v;
	} else if (!strcmp(flag, "--max-jobs")) {
		if (gfd_parse_uint(val, 256, &v) || v < 1)
			return bad(err, flag, val, "expected 1..256");
		o->max_jobs = (int)v;
	} else if (!strcmp(flag, "--max-queue")) {
		if (gfd_parse_uint(val, 1000000, &v) || v < 1)
			return bad(err, flag, val, "expected 1..1000000");
		o->max_queue = (int)v;
	} else if (!strcmp(flag, "--max-context-tokens")) {
		if (gfd_parse_size(val, &v))
			return bad(err, flag, val, "expected a token count (K/M/G suffixes ok)");
		o->max_context_tokens = v;
	} else if (!strcmp(flag, "--disk-budget")) {
		if (gfd_parse_size(val, &v))
			return bad(err, flag, val, "expected a size such as 500M or 20G");
		o->disk_budget = v;
	} else if (!strcmp(flag, "--threads")) {
		if (gfd_parse_uint(val, 1024, &v))
			return bad(err, flag, val, "expected 0..1024");
		o->threads = (int)v;
	} else if (!strcmp(flag, "--checkpoint-tokens")) {
		if (gfd_parse_size(val, &v) || v < 1)
			return bad(err, flag, val, "expected a positive token count");
		o->checkpoint_tokens = v;
	} else if (!strcmp(flag, "--c-dtype")) {
		if (!strcmp(val, "f16"))
			o->c_dtype = CS_DTYPE_F16;
		else if (!strcmp(val, "bf16"))
			o->c_dtype = CS_DTYPE_BF16;
		else if (!strcmp(val, "f32"))
			o->c_dtype = CS_DTYPE_F32;
		else
			return bad(err, flag, val, "expected f16, bf16 or f32");
	} else if (!strcmp(flag, "--tier-mb")) {
		if (gfd_parse_uint(val, 1u << 24, &v))
			return bad(err, flag, val, "expected a number of MiB");
		o->tier_mb = v;
	} else if (!strcmp(flag, "--compute")) {
		char why[GF_ERR_LEN];
		/* Resolved now: "auto" or bf16 on a CPU without it are settled (or refused)
		 * before anything loads. */
		if (gf_compute_parse(val, &o->compute, why)) {
			snprintf(err, GF_ERR_LEN, "--compute: %.200s", why);
			return -EINVAL;
		}
	} else if (!strcmp(flag, "--metrics")) {
		o->metrics = val;
	} else if (!strcmp(flag, "--http")) {
		o->http = val;
	} else if (!strcmp(flag, "--log-file")) {
		o->log_file = val;
	} else if (!strcmp(flag, "--host")) {
		if (!val[0] || strlen(val) > 255)
			return bad(err, flag, val, "expected a host name or address");
		o->host = val;
	} else if (!strcmp(flag, "--port")) {
		if (gfd_parse_uint(val, 65535, &v))
			return bad(err, flag, val, "expected a TCP port, 0..65535");
		o->port = val;
	} else {
		snprintf(err, GF_ERR_LEN, "unknown option %.100s (see --help)", flag);
		return -EINVAL;
	}
	return 0;
}

/* Whether the command line gives flag (as "--flag V", "--flag=V" or llama-server's -m, -t). */
static bool flag_given(int argc, char **argv, const char *flag)
{
	const size_t n = strlen(flag);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if ((!strncmp(a, flag, n) && (!a[n] || a[n] == '=')) ||
		    (!strcmp(a, "-m") && !strcmp(flag, "--model")) ||
		    (!strcmp(a, "-t") && !strcmp(flag, "--threads")))
			return true;
	}
	return false;
}

/* The settings the environment gives for the flags the command line does not (the flag
 * wins: its variable is not even read). */
static int options_from_env(gfd_options *o, int argc, char **argv, char *err)
{
	for (size_t i = 0; i < sizeof(gfd_env) / sizeof(gfd_env[0]); i++) {
		const char *flag = gfd_env[i].flag, *val = getenv(gfd_env[i].env);
		int rc = 0;
		if (!val || !*val || !strcmp(flag, "--server-file") || flag_given(argc, argv, flag))
			continue; /* main takes --server-file */
		if (!strcmp(flag, "--listen")) {
			/* several addresses, separated by commas */
			snprintf(o->env_listen, sizeof(o->env_listen), "%s", val);
			for (char *save, *a = strtok_r(o->env_listen, ",", &save); a && !rc;
			     a = strtok_r(NULL, ",", &save))
				rc = set_option(o, flag, a, err);
		} else {
			rc = set_option(o, flag, val, err);
		}
		if (rc) {
			char why[GF_ERR_LEN];
			snprintf(why, sizeof(why), "%s", err);
			snprintf(err, GF_ERR_LEN, "$%s: %.200s", gfd_env[i].env, why);
			return rc;
		}
	}
	return 0;
}

int gfd_options_parse(gfd_options *o, int argc, char **argv, char *err)
{
	int rc = options_from_env(o, argc, argv, err);
	if (rc)
		return rc;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		char flag[64];
		const char *val = NULL;
		const char *eq = strchr(a, '=');
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			gfd_usage(stdout);
			return 1;
		}
		if (!strcmp(a, "--version")) {
			printf("goldfinchd %s (protocol %d.%d)\n", GFD_VERSION, PROTO_VERSION_MAJOR,
			       PROTO_VERSION_MINOR);
			return 1;
		}
		if (!strcmp(a, "--print-config")) {
			o->print_config = true;
			continue;
		}
		if (!strcmp(a, "--print-plan")) {
			o->print_plan = true;
			continue;
		}
		if (!strcmp(a, "-n") || !strcmp(a, "--ranks")) {
			char *end;
			long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
			if (i + 1 >= argc || *end || v < 1 || v > PART_MAX_RANKS)
				return bad(err, a, i + 1 < argc ? argv[i + 1] : NULL,
					   "needs a number of ranks, 1..1024");
			o->ranks = (int)v;
			i++;
			continue;
		}
		/* llama-server's short spellings */
		if (!strcmp(a, "-m") || !strcmp(a, "-t"))
			a = a[1] == 'm' ? "--model" : "--threads";
		if (strncmp(a, "--", 2)) {
			snprintf(err, GF_ERR_LEN, "unexpected argument \"%.100s\" (options start with --)", a);
			return -EINVAL;
		}
		if (eq && a == argv[i]) {
			snprintf(flag, sizeof(flag), "%.*s", (int)(eq - a), a);
			val = eq + 1;
		} else {
			snprintf(flag, sizeof(flag), "%s", a);
			if (i + 1 < argc)
				val = argv[++i];
		}
		if (!val)
			return bad(err, flag, NULL, "needs a value");
		if ((rc = set_option(o, flag, val, err)))
			return rc;
	}
	if (o->host || o->port) {
		/* --host/--port as llama-server takes them: one TCP listener, loopback and 7433
		 * unless given */
		const char *h = o->host ? o->host : "127.0.0.1";
		bool v6 = strchr(h, ':') && h[0] != '[';
		snprintf(o->host_port, sizeof(o->host_port), "%s%s%s:%s", v6 ? "[" : "", h, v6 ? "]" : "",
			 o->port ? o->port : GFD_DEFAULT_PORT);
		if (o->n_listen == GFD_MAX_LISTEN)
			return bad(err, "--host/--port", o->host_port, "too many listen addresses");
		o->listen[o->n_listen++] = o->host_port;
	}
	if (o->print_plan && o->model_path)
		return 0; /* the plan needs the model only */
	if (!o->model_path || !o->cache_dir) {
		snprintf(err, GF_ERR_LEN, "--model and --cache-dir are required (see --help)");
		return -EINVAL;
	}
	if (!o->n_listen)
		o->listen[o->n_listen++] = GFD_DEFAULT_LISTEN;
	return 0;
}

void gfd_options_print(const gfd_options *o, FILE *f)
{
	fprintf(f, "model = %s\n", o->model_path);
	fprintf(f, "cache-dir = %s\n", o->cache_dir);
	for (int i = 0; i < o->n_listen; i++)
		fprintf(f, "listen = %s\n", o->listen[i]);
	fprintf(f, "auth-token-file = %s\n", o->auth_token_file ? o->auth_token_file : "(none)");
	fprintf(f, "max-frame = %llu\n", (unsigned long long)o->max_frame);
	fprintf(f, "max-jobs = %d\n", o->max_jobs);
	fprintf(f, "max-queue = %d\n", o->max_queue);
	fprintf(f, "max-context-tokens = %llu%s\n", (unsigned long long)o->max_context_tokens,
		o->max_context_tokens ? "" : " (no limit)");
	fprintf(f, "disk-budget = %llu%s\n", (unsigned long long)o->disk_budget,
		o->disk_budget ? "" : " (no limit)");
	fprintf(f, "threads = %d%s\n", o->threads, o->threads ? "" : " (OpenBLAS default)");
	if (o->checkpoint_tokens)
		fprintf(f, "checkpoint-tokens = %llu\n", (unsigned long long)o->checkpoint_tokens);
	else
		fprintf(f, "checkpoint-tokens = 262144 (engine default)\n");
	fprintf(f, "c-dtype = %s\n", cs_dtype_name(o->c_dtype));
	fprintf(f, "tier-mb = %llu\n", (unsigned long long)o->tier_mb);
	fprintf(f, "compute = %s\n", gf_compute_name(o->compute));
	fprintf(f, "metrics = %s\n", o->metrics ? o->metrics : "(off)");
	fprintf(f, "http = %s\n", o->http ? o->http : "(off)");
	fprintf(f, "log-file = %s\n", o->log_file ? o->log_file : "(stderr)");
}

/* SIGTERM and SIGINT are read by the loop through a signalfd, which sees only signals that
 * every thread blocks. OpenBLAS starts a thread in its library constructor, before main, with
 * the signals open; so block them and execute the program again: the blocked mask survives
 * exec and every thread of the new image inherits it. Returns when they are blocked. */
static void block_signals_everywhere(char **argv)
{
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	if (sigismember(&old, SIGTERM) && sigismember(&old, SIGINT))
		return;
	if (getenv("GOLDFINCHD_SIGNALS_BLOCKED"))
		return; /* exec'd once already: do not loop */
	setenv("GOLDFINCHD_SIGNALS_BLOCKED", "1", 1);
	/* The resolved path rather than /proc/self/exe keeps the process named goldfinchd. */
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = 0;
		execv(self, argv);
	}
	/* No /proc: the constructor's thread may still take a signal and end us uncleanly. */
	fprintf(stderr, "goldfinchd: warning: re-exec to block signals failed (%s); SIGTERM may not stop cleanly\n",
		strerror(errno));
}

/* ---- --server-file: where clients find this daemon (client/gfclient.h has the format) ---- */

/* The file this daemon wrote, so that it removes only its own (a later daemon may have
 * replaced it). */
#define GFD_SF_SOCKETS 64
struct server_file {
	const char *path;
	dev_t dev;
	ino_t ino;
	bool written;
	ino_t before[GFD_SF_SOCKETS];  /* listening sockets open before ours */
	int n_before;
};

/* Takes --server-file FILE (or =FILE) out of argv: the shared options (server.h) do not
 * carry it. 0, or -EINVAL when the value is missing. */
static int take_server_file(int *argc, char **argv, struct server_file *sf, char *err)
{
	int out = 1;
	for (int i = 1; i < *argc; i++) {
		if (!strncmp(argv[i], "--server-file=", 14)) {
			sf->path = argv[i] + 14;
		} else if (!strcmp(argv[i], "--server-file")) {
			if (i + 1 >= *argc)
				return bad(err, argv[i], NULL, "needs a file name");
			sf->path = argv[++i];
		} else {
			argv[out++] = argv[i];
			continue;
		}
		if (!sf->path[0])
			return bad(err, "--server-file", "\"\"", "needs a file name");
	}
	argv[out] = NULL;
	*argc = out;
	return 0;
}

/* The TCP port of a listen or metrics address, 0 when it is 0 or not a number. */
static unsigned addr_port(const char *addr)
{
	const char *colon = strrchr(addr, ':');
	char *end;
	unsigned long v = colon ? strtoul(colon + 1, &end, 10) : 0;
	return colon && colon[1] && !*end && v < 65536 ? (unsigned)v : 0;
}

/* This process's listening TCP sockets, in descriptor order: their inode and port. */
static int listening_sockets(ino_t *ino, unsigned *port, int cap)
{
	int fds[256], n_fds = 0, n = 0;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return 0;
	for (struct dirent *e; (e = readdir(d)) && n_fds < 256;) {
		char *end;
		long fd = strtol(e->d_name, &end, 10);
		if (!*end && e->d_name[0] && fd != dirfd(d))
			fds[n_fds++] = (int)fd;
	}
	closedir(d);
	for (int i = 1; i < n_fds; i++) /* insertion sort: a few dozen descriptors */
		for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
			int t = fds[j];
			fds[j] = fds[j - 1];
			fds[j - 1] = t;
		}
	for (int i = 0; i < n_fds && n < cap; i++) {
		int acc = 0;
		socklen_t len = sizeof(acc);
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		struct stat st;
		if (getsockopt(fds[i], SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) || !acc ||
		    getsockname(fds[i], (struct sockaddr *)&ss, &sl) || fstat(fds[i], &st))
			continue;
		if (ss.ss_family == AF_INET)
			port[n] = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			port[n] = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		else
			continue;
		ino[n++] = st.st_ino;
	}
	return n;
}

/* Before the listeners open: the listening sockets that are not ours (MPI's, say). */
static void server_file_before(struct server_file *sf)
{
	unsigned port[GFD_SF_SOCKETS];
	sf->n_before = listening_sockets(sf->before, port, GFD_SF_SOCKETS);
}

/* The ports the kernel picked for the --listen addresses that asked for port 0: the
 * sockets opened since server_file_before, in descriptor order (the listeners are opened
 * in order, --metrics after them), less those on ports asked for by number. */
static int picked_ports(const struct server_file *sf, const gfd_options *o, unsigned *out, int cap)
{
	ino_t ino[GFD_SF_SOCKETS];
	unsigned port[GFD_SF_SOCKETS];
	int n = 0, m = listening_sockets(ino, port, GFD_SF_SOCKETS);
	for (int i = 0; i < m && n < cap; i++) {
		bool skip = (o->metrics && addr_port(o->metrics) == port[i]) ||
			    (o->http && addr_port(o->http) == port[i]);
		for (int k = 0; k < sf->n_before; k++)
			skip |= sf->before[k] == ino[i];
		for (int k = 0; k < o->n_listen; k++)
			skip |= strncmp(o->listen[k], "unix:", 5) && addr_port(o->listen[k]) == port[i];
		if (!skip)
			out[n++] = port[i];
	}
	return n;
}

/* Writes the addresses clients can use: a wildcard host becomes this node's name, port 0
 * the port the kernel picked, relative paths absolute. Atomic: a temporary file, fsync,
 * rename. */
static int server_file_write(struct server_file *sf, const gfd_options *o, char *err)
{
	char host[256], cwd[4096], tmp[4200];
	unsigned picked[GFD_MAX_LISTEN];
	int n_picked, next_pick = 0, rc;

	if (gethostname(host, sizeof(host)))
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = 0;
	if (!getcwd(cwd, sizeof(cwd)))
		snprintf(cwd, sizeof(cwd), "/");
	n_picked = picked_ports(sf, o, picked, GFD_MAX_LISTEN);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", sf->path, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		rc = -errno;
		snprintf(err, GF_ERR_LEN, "--server-file %.200s: %s", tmp, strerror(errno));
		if (fd >= 0)
			close(fd);
		return rc;
	}
	fprintf(f, "# goldfinchd server file: where this daemon listens (gf --server-file reads it).\n"
		   "# Written once it listens, removed when it stops cleanly.\nformat 1.0\n");
	rc = 0;
	for (int i = 0; i < o->n_listen && !rc; i++) {
		const char *a = o->listen[i];
		if (!strncmp(a, "unix:", 5)) {
			fprintf(f, "address unix:%s%s%s\n", a[5] == '/' ? "" : cwd,
				a[5] == '/' ? "" : "/", a + 5);
			continue;
		}
		/* HOST:PORT or [V6]:PORT; an empty or wildcard host is every address of this node. */
		const char *colon = strrchr(a, ':');
		int hlen = (int)(colon - a);
		const char *h = a;
		if (a[0] == '[') {
			h++;
			hlen -= 2;
		}
		bool wild = !hlen || (hlen == 7 && !strncmp(h, "0.0.0.0", 7)) ||
			    (hlen == 2 && !strncmp(h, "::", 2));
		unsigned port = addr_port(a);
		if (!port) {
			if (next_pick >= n_picked) {
				snprintf(err, GF_ERR_LEN, "--server-file: cannot tell which port --listen %.100s got",
					 a);
				rc = -ENOENT;
				break;
			}
			port = picked[next_pick++];
		}
		if (wild)
			fprintf(f, "address tcp:%s:%u\n", host, port);
		else
			fprintf(f, "address tcp:%.*s:%u\n", (int)(colon - a), a, port);
	}
	if (o->auth_token_file)
		fprintf(f, "auth-token-file %s%s%s\n", o->auth_token_file[0] == '/' ? "" : cwd,
			o->auth_token_file[0] == '/' ? "" : "/", o->auth_token_file);
	fprintf(f, "host %s\npid %d\n", host, (int)getpid());
	const char *job = getenv("SLURM_JOB_ID");
	if (job && *job)
		fprintf(f, "slurm-job %.40s\n", job);
	if (!rc && (fflush(f) || fsync(fileno(f)))) {
		rc = -errno;
		snprintf(err, GF_ERR_LEN, "--server-file %.200s: %s", tmp, strerror(errno));
	}
	if (fclose(f) && !rc) {
		rc = -errno;
		snprintf(err, GF_ERR_LEN, "--server-file %.200s: %s", tmp, strerror(errno));
	}
	struct stat st;
	if (!rc && (rename(tmp, sf->path) || stat(sf->path, &st))) {
		rc = -errno;
		snprintf(err, GF_ERR_LEN, "--server-file %.200s: %s", sf->path, strerror(errno));
	}
	if (rc) {
		unlink(tmp);
		return rc;
	}
	sf->dev = st.st_dev;
	sf->ino = st.st_ino;
	sf->written = true;
	return 0;
}

/* Removes the server file if it is still the one this daemon wrote. */
static void server_file_remove(struct server_file *sf)
{
	struct stat st;
	if (sf->written && !stat(sf->path, &st) && st.st_dev == sf->dev && st.st_ino == sf->ino)
		unlink(sf->path);
	sf->written = false;
}

/* What the memory will hold, once the model is loaded: weights, and the budgets the page
 * cache and the tier grow to. */
static void log_memory(gfd_log *log, const gfd_backend *be, int ranks)
{
	gfd_backend_info info;
	gfd_memory m;
	be->ops->info(be->self, &info);
	be->ops->memory(be->self, &m);
	gfd_logf(log, "compute %s (kernels %s); memory%s: weights %.1f MiB, page cache up to %.0f MiB, tier up to %.0f MiB",
		 gf_compute_name(info.compute), info.kernels, ranks > 1 ? " of rank 0" : "",
		 (double)m.weight_bytes / 1048576.0, (double)m.page_cache_budget / 1048576.0,
		 (double)m.tier_budget / 1048576.0);
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN] = "";
	gfd_options o;
	gfd_log log;
	gfd_backend be = { 0 };
	gfd_server *srv = NULL;
	gfd_http *http = NULL;
	struct server_file sf = { 0 };
	gfd_ranks ranks = { 0 };
	int rc;

	gf_blas_prefer_avx512(argv);
	block_signals_everywhere(argv);
	/* A client that vanishes must not kill us with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);

	gfd_options_defaults(&o);
	rc = take_server_file(&argc, argv, &sf, err);
	if (!rc && !sf.path && getenv(GFD_ENV_SERVER_FILE) && *getenv(GFD_ENV_SERVER_FILE))
		sf.path = getenv(GFD_ENV_SERVER_FILE);
	if (!rc)
		rc = gfd_options_parse(&o, argc, argv, err);
	if (rc == 1)
		return 0;
	if (rc) {
		fprintf(stderr, "goldfinchd: %s\n", err);
		return 2;
	}
	if (o.print_config) {
		gfd_options_print(&o, stdout);
		printf("server-file = %s\n", sf.path ? sf.path : "(none)");
		return 0;
	}
	if (o.print_plan)
		return print_plan(&o);
	if (gfd_log_open(&log, o.log_file, err)) {
		fprintf(stderr, "goldfinchd: %s\n", err);
		return 1;
	}
	gfd_logf(&log, "starting goldfinchd %s (protocol %d.%d): model %s, cache %s, pid %d",
		 GFD_VERSION, PROTO_VERSION_MAJOR, PROTO_VERSION_MINOR, o.model_path, o.cache_dir,
		 (int)getpid());
	gfd_local_config lc = {
		.model_path = o.model_path,
		.cache_dir = o.cache_dir,
		.c_dtype = o.c_dtype,
		.checkpoint_tokens = o.checkpoint_tokens,
		.tier_bytes = o.tier_mb << 20,
		.disk_budget = o.disk_budget,
		.threads = o.threads,
		.compute_set = true,
		.compute = o.compute,
	};
	/* Under mpirun or srun --mpi=pmix: this rank's slice; ranks >= 1 serve rank 0. */
	part_workload workload;
	gfd_plan_workload(&o, &workload);
	if ((rc = gfd_ranks_start(&ranks, &lc, &workload, err)))
		goto fail;
	if (ranks.size > 1) {
		char what[GF_ERR_LEN + 128];
		gfd_ranks_describe(&ranks, what, sizeof(what));
		gfd_logf(&log, "%s", what);
	}
	if (ranks.size > 1 && ranks.rank > 0) {
		rc = gfd_ranks_serve(&ranks, err);
		if (rc)
			gfd_logf(&log, "rank %d: %s", ranks.rank, err);
		gfd_ranks_end(&ranks);
		gfd_log_close(&log);
		return rc ? 1 : 0;
	}
	lc.cache_dir = ranks.cache_dir;
	/* Up before the model loads, so that /health can say it is loading. */
	if (o.http && (rc = gfd_http_start(&http, &o, &log, err)))
		goto fail;
	rc = ranks.size > 1 ? gfd_backend_mpi_open(&be, ranks.e, ranks.link, &ranks.plan, &lc, err)
			    : gfd_backend_local_open(&be, &lc, err);
	if (rc)
		goto fail;
	log_memory(&log, &be, ranks.size);
	if (sf.path)
		server_file_before(&sf);
	if ((rc = gfd_server_create(&srv, &o, &be, &log, err)))
		goto fail;
	if (sf.path) {
		if ((rc = server_file_write(&sf, &o, err)))
			goto fail;
		gfd_logf(&log, "server file %s written", sf.path);
	}
	gfd_http_attach(http, srv);
	rc = gfd_server_run(srv);
	server_file_remove(&sf);
	/* Its threads wait on the server: they end before the server goes. */
	gfd_http_stop(http);
	gfd_server_free(srv);
	/* A rank that failed: exit non-zero for the resource manager to restart the job. */
	if (gfd_ranks_failed(&ranks))
		rc = 1;
	gfd_ranks_end(&ranks);
	gfd_logf(&log, "exit %d", rc ? 1 : 0);
	gfd_log_close(&log);
	return rc ? 1 : 0;
fail:
	gfd_logf(&log, "cannot start: %s", err);
	if (o.log_file)
		fprintf(stderr, "goldfinchd: %s\n", err);
	gfd_http_stop(http);
	gfd_server_free(srv);
	gfd_backend_close(&be);
	if (ranks.mpi && ranks.size > 1 && !ranks.link)
		MPI_Abort(MPI_COMM_WORLD, 1); /* the other ranks wait in start-up collectives */
	gfd_ranks_end(&ranks);
	gfd_log_close(&log);
	return 1;
}
