/*
 * goldfinchd — the GoldFinch daemon: ingests books and codebases into the paged cache and
 * answers questions about them, for clients speaking protocol/goldfinch.proto over a Unix
 * socket or TCP. This file is the command line; the server is server_*.c (server.h), the
 * engine behind it is reached through server_backend.h. daemon/README.md is the manual.
 */
#include "partition.h"
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void gfd_usage(FILE *f)
{
	fprintf(f,
		"usage: goldfinchd --model M.gguf --cache-dir DIR [options]\n"
		"\n"
		"Serves GoldFinch contexts: clients ingest text or codebases into the paged cache\n"
		"in DIR and ask questions about them (protocol/README.md; clients: gf, gf.py).\n"
		"\n"
		"  --model M.gguf           the model (gf-convert output); required\n"
		"  --cache-dir DIR          the cache store: contexts live here across restarts;\n"
		"                           one daemon per directory (it is locked); required\n"
		"  --listen ADDR            unix:/path, HOST:PORT or [IPV6]:PORT; repeatable;\n"
		"                           default %s. TCP beyond loopback needs\n"
		"                           --auth-token-file. Port 0 picks a free port (logged)\n"
		"  --auth-token-file F      clients must send this file's contents (trailing\n"
		"                           newline ignored) in Hello.auth_token\n"
		"  --max-frame BYTES        largest frame accepted (default 16M)\n"
		"  --max-jobs N             jobs running at once (default 2)\n"
		"  --max-queue N            jobs waiting for a slot; more get BUSY (default 16)\n"
		"  --max-context-tokens N   longest context an ingest may build, and longest\n"
		"                           prompt; 0 = no limit (default 0)\n"
		"  --disk-budget BYTES      bytes of context files; least recently used contexts\n"
		"                           are evicted to make room; 0 = no limit (default 0)\n"
		"  --threads N              compute threads (OpenBLAS and decode); 0 = all cores\n"
		"  --checkpoint-tokens K    an ingest commits every K tokens (default 262144)\n"
		"  --c-dtype T              storage of the cache rows: f16 (default), bf16, f32\n"
		"  --tier-mb N              RAM for expanded keys/values shared by generations\n"
		"                           (default: a quarter of RAM, at most 4096; 0 = off:\n"
		"                           every token rebuilds the keys of the whole context)\n"
		"  --metrics HOST:PORT      serve Prometheus metrics at http://HOST:PORT/metrics\n"
		"  --log-file F             append the log here (default: stderr)\n"
		"  --print-config           print the settings these flags give, and exit\n"
		"  --print-plan [-n P]      print which blocks each of P MPI ranks (default 1)\n"
		"                           would own for --model (partition/), and exit\n"
		"  --help, --version\n"
		"\n"
		"BYTES take K, M, G, T suffixes (powers of 1024). SIGTERM or SIGINT stops the daemon\n"
		"cleanly: running ingests checkpoint (resumable), generations stop, exit status 0.\n"
		"Exit status: 0 clean stop, 1 failure to start or run, 2 bad command line.\n",
		GFD_DEFAULT_LISTEN);
}

void gfd_options_defaults(gfd_options *o)
{
	memset(o, 0, sizeof(*o));
	o->max_frame = PROTO_DEFAULT_MAX_FRAME;
	o->max_jobs = 2;
	/* Without the tier every decoded token rebuilds the keys of the whole context; a quarter
	 * of RAM, at most 4 GiB, holds those of a few hundred thousand tokens of a small model. */
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	uint64_t ram_mb = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page >> 20 : 4096;
	o->tier_mb = ram_mb / 4 < 4096 ? ram_mb / 4 : 4096;
	o->max_queue = 16;
	o->c_dtype = CS_DTYPE_F16;
	o->ranks = 1;
}

/* --print-plan: the model's shape from its GGUF header, then partition/'s plan. */
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
	part_workload_default(&w);
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

int gfd_options_parse(gfd_options *o, int argc, char **argv, char *err)
{
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
		if (strncmp(a, "--", 2)) {
			snprintf(err, GF_ERR_LEN, "unexpected argument \"%.100s\" (options start with --)", a);
			return -EINVAL;
		}
		if (eq) {
			snprintf(flag, sizeof(flag), "%.*s", (int)(eq - a), a);
			val = eq + 1;
		} else {
			snprintf(flag, sizeof(flag), "%s", a);
			if (i + 1 < argc)
				val = argv[++i];
		}
		uint64_t v;
		if (!val)
			return bad(err, flag, NULL, "needs a value");
		if (!strcmp(flag, "--model")) {
			o->model_path = val;
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
		} else if (!strcmp(flag, "--metrics")) {
			o->metrics = val;
		} else if (!strcmp(flag, "--log-file")) {
			o->log_file = val;
		} else {
			snprintf(err, GF_ERR_LEN, "unknown option %.100s (see --help)", flag);
			return -EINVAL;
		}
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
	fprintf(f, "metrics = %s\n", o->metrics ? o->metrics : "(off)");
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

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN] = "";
	gfd_options o;
	gfd_log log;
	gfd_backend be = { 0 };
	gfd_server *srv = NULL;
	int rc;

	gf_blas_prefer_avx512(argv);
	block_signals_everywhere(argv);
	/* A client that vanishes must not kill us with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);

	gfd_options_defaults(&o);
	rc = gfd_options_parse(&o, argc, argv, err);
	if (rc == 1)
		return 0;
	if (rc) {
		fprintf(stderr, "goldfinchd: %s\n", err);
		return 2;
	}
	if (o.print_config) {
		gfd_options_print(&o, stdout);
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
	};
	if ((rc = gfd_backend_local_open(&be, &lc, err)))
		goto fail;
	if ((rc = gfd_server_create(&srv, &o, &be, &log, err)))
		goto fail;
	rc = gfd_server_run(srv);
	gfd_server_free(srv);
	gfd_logf(&log, "exit %d", rc ? 1 : 0);
	gfd_log_close(&log);
	return rc ? 1 : 0;
fail:
	gfd_logf(&log, "cannot start: %s", err);
	if (o.log_file)
		fprintf(stderr, "goldfinchd: %s\n", err);
	gfd_server_free(srv);
	gfd_backend_close(&be);
	gfd_log_close(&log);
	return 1;
}
