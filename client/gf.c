/*
 * gf — the command-line client of goldfinchd, over libgfclient (gfclient.h).
 *
 *   gf ingest [--name N] [--c-dtype f16|bf16|f32] [--resume] PATH...
 *   gf ask CONTEXT "question" [sampling flags]
 *   gf ask --no-context "question" [sampling flags]
 *   gf contexts | gf drop CONTEXT | gf status | gf cancel JOB
 *
 * `gf --help` is the manual, exit codes included.
 */
#include "goldfinch_version.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gfclient.h"

#define GF_VERSION "gf " GOLDFINCH_VERSION
#define GF_PROGRESS_SECONDS 5.0 /* between progress lines on a stderr that is no terminal */
#define READ_BYTES GFC_PIECE_BYTES

enum cmd {
	CMD_INGEST = 1 << 0,
	CMD_ASK = 1 << 1,
	CMD_CONTEXTS = 1 << 2,
	CMD_DROP = 1 << 3,
	CMD_STATUS = 1 << 4,
	CMD_CANCEL = 1 << 5,
	CMD_ALL = (1 << 6) - 1,
};

static void usage(FILE *f)
{
	fprintf(f,
"usage: gf [global flags] COMMAND [flags] [ARGS]\n"
"\n"
"Client of goldfinchd: ingest books and codebases into contexts, ask questions about them.\n"
"\n"
"Commands:\n"
"  gf ingest [--name N] [--c-dtype f16|bf16|f32] [--resume] PATH...\n"
"      Sends files and folders as one context. A folder is walked in sorted (bytewise)\n"
"      order; each text file is sent with its path relative to the folder (a file named\n"
"      directly: its base name), which the server renders as \"### File: PATH\" + text.\n"
"      Skipped, with a note on stderr: binary files (a NUL byte or invalid UTF-8 in the\n"
"      first 8 KiB), version-control folders (.git .hg .svn .bzr _darcs CVS .jj), links\n"
"      to folders, special files. PATH \"-\" sends stdin as plain text. On a terminal a\n"
"      progress bar shows tokens, tokens/s and the ETA; elsewhere (a log, a pipe) a\n"
"      progress line goes to stderr every $GOLDFINCH_PROGRESS_SECONDS (default 5;\n"
"      0: each progress message; off: none). At the end: the context's\n"
"      serial, name, tokens, bytes on disk, and whether an identical context was reused.\n"
"      With -v, the job's number (for gf cancel) goes to stderr when the server sends it.\n"
"      --name N        a name to find the context by (unique on the server)\n"
"      --c-dtype T     storage type of the cache rows: f16 (server default), bf16, f32\n"
"      --resume        continue the interrupted ingest named N (needs --name): the\n"
"                      server says how far it got and the input is sent again from\n"
"                      there; give the same PATHs as the first time\n"
"  gf ask CONTEXT QUESTION [flags]\n"
"      Streams the answer to stdout as it is generated. CONTEXT is a name, #SERIAL,\n"
"      or a prefix (8+ hex digits) of the context's key. With -v, the job's number\n"
"      (for gf cancel), usage and timings go to stderr.\n"
"  gf ask --no-context QUESTION [flags]\n"
"      The question alone, from the model's initial state (a server of protocol\n"
"      1.3; an older one refuses it as a request without a context).\n"
"      --max-tokens N          default 256 (server)\n"
"      --temperature T         >= 0; 0 = greedy (server default 1.0)\n"
"      --top-k K               0 = off\n"
"      --top-p P               0 < P <= 1; 1 = off\n"
"      --min-p M               0 <= M <= 1; 0 = off\n"
"      --presence-penalty X    subtracted once from every token already seen\n"
"      --frequency-penalty X   subtracted per occurrence\n"
"      --stop S                stop when the answer ends with S (repeatable)\n"
"      --seed S                sampling seed (unsigned 64-bit)\n"
"  gf contexts         lists contexts: serial, name, tokens, disk bytes, sealed, last use\n"
"  gf drop CONTEXT     deletes a context (BUSY while a job uses it)\n"
"  gf status           server, model, jobs, queue, memory (resident, and weights, page\n"
"                      cache and tier against their budgets), compute mode, disk, and\n"
"                      each queued or running job: JOB number, kind, state, context,\n"
"                      tokens, age, peer\n"
"  gf cancel JOB       cancels job number JOB (as gf status lists it), started by any\n"
"                      client: exit 0 once the server accepted, 3 if no such job is\n"
"                      queued or running. The job's own client then ends: gf ask and\n"
"                      gf ingest exit 5; a cancelled ingest keeps its last checkpoint,\n"
"                      and gf ingest --resume goes on from there. Needs a protocol 1.1\n"
"                      server; with 1.0 job ids are per connection and nothing is found\n"
"                      (exit 3). Your own gf ask / gf ingest is also cancelled by Ctrl-C\n"
"                      (SIGINT) or SIGTERM: gf sends Cancel and waits for the server's\n"
"                      acknowledgement (a second Ctrl-C quits at once).\n"
"\n"
"Global flags (before or after the command):\n"
"  --server ADDR            unix:/path/to/socket, /path, host:port or [v6addr]:port;\n"
"                           default $GOLDFINCH_SERVER, else $GOLDFINCH_SERVER_FILE,\n"
"                           else " GFC_DEFAULT_SERVER "\n"
"  --server-file FILE       read the address (and the token file, unless one is given)\n"
"                           from FILE, which goldfinchd --server-file writes while it\n"
"                           listens (a SLURM job's: cluster/README.md)\n"
"  --auth-token-file F      the server's shared secret (trailing newline ignored);\n"
"                           default: the server file's, else $GOLDFINCH_TOKEN_FILE,\n"
"                           else none\n"
"  --timeout S              give up when the server is silent for S seconds (default:\n"
"                           wait; connecting is bounded by %d s either way)\n"
"  --json                   ingest, contexts, drop, status: one JSON document on stdout\n"
"  -v, --verbose            server details, usage and timings on stderr\n"
"  -h, --help               this text\n"
"  --version                the client's version and protocol version\n"
"Use -- before a QUESTION that starts with '-'.\n"
"\n"
"Exit status:\n"
"  0  success\n"
"  1  the server reported an error (bad request, internal error)\n"
"  2  usage: bad flag or argument, unreadable input PATH\n"
"  3  not found: unknown context or job\n"
"  4  connection or protocol failure: no server, timeout, broken connection,\n"
"     incompatible protocol version; a server file missing, unreadable or invalid\n"
"  5  cancelled (Ctrl-C, SIGTERM, or cancelled by the server)\n"
"  6  authentication failure, or the token file cannot be read\n"
"  7  server limits: busy (queue full), too large, out of disk budget, shutting down\n",
		GFC_CONNECT_TIMEOUT_S);
}

struct args {
	enum cmd cmd;
	const char *server, *server_file, *token_file;
	double timeout_s;
	bool json, verbose;
	/* ingest */
	const char *name;
	int c_dtype;
	bool resume;
	/* ask */
	Goldfinch__V1__Generate gen;
	char **stop;
	size_t n_stop;
	/* positional arguments after the command */
	char **pos;
	int n_pos;
};

static int bad_usage(const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, "gf: ");
	fprintf(stderr, fmt, a, b);
	fprintf(stderr, "\ntry 'gf --help'\n");
	return GFC_EXIT_USAGE;
}

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	if (!*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	unsigned long long x = strtoull(s, &end, 0);
	if (errno || *end)
		return -EINVAL;
	*v = x;
	return 0;
}

static int parse_float(const char *s, float *v)
{
	char *end;

	errno = 0;
	double x = strtod(s, &end);
	if (!*s || errno || *end || !isfinite(x) || fabs(x) > 1e30)
		return -EINVAL;
	*v = (float)x;
	return 0;
}

enum {
	OPT_SERVER = 256, OPT_TOKEN, OPT_TIMEOUT, OPT_JSON, OPT_VERSION, OPT_NAME, OPT_CDTYPE,
	OPT_RESUME, OPT_MAXTOK, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_PRES, OPT_FREQ,
	OPT_STOP, OPT_SEED, OPT_SERVER_FILE, OPT_NO_CONTEXT,
};

static const struct option long_opts[] = {
	{ "server", required_argument, NULL, OPT_SERVER },
	{ "server-file", required_argument, NULL, OPT_SERVER_FILE },
	{ "auth-token-file", required_argument, NULL, OPT_TOKEN },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ "name", required_argument, NULL, OPT_NAME },
	{ "c-dtype", required_argument, NULL, OPT_CDTYPE },
	{ "resume", no_argument, NULL, OPT_RESUME },
	{ "max-tokens", required_argument, NULL, OPT_MAXTOK },
	{ "temperature", required_argument, NULL, OPT_TEMP },
	{ "top-k", required_argument, NULL, OPT_TOPK },
	{ "top-p", required_argument, NULL, OPT_TOPP },
	{ "min-p", required_argument, NULL, OPT_MINP },
	{ "presence-penalty", required_argument, NULL, OPT_PRES },
	{ "frequency-penalty", required_argument, NULL, OPT_FREQ },
	{ "stop", required_argument, NULL, OPT_STOP },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "no-context", no_argument, NULL, OPT_NO_CONTEXT },
	{ 0, 0, 0, 0 },
};

/* Which commands each flag belongs to. */
static int opt_cmds(int opt)
{
	switch (opt) {
	case OPT_JSON: return CMD_INGEST | CMD_CONTEXTS | CMD_DROP | CMD_STATUS;
	case OPT_NAME: case OPT_CDTYPE: case OPT_RESUME: return CMD_INGEST;
	case OPT_MAXTOK: case OPT_TEMP: case OPT_TOPK: case OPT_TOPP: case OPT_MINP:
	case OPT_PRES: case OPT_FREQ: case OPT_STOP: case OPT_SEED: case OPT_NO_CONTEXT:
		return CMD_ASK;
	default: return CMD_ALL;
	}
}

static const char *opt_name(int opt)
{
	for (const struct option *o = long_opts; o->name; o++)
		if (o->val == opt)
			return o->name;
	return "?";
}

static int parse_args(struct args *a, int argc, char **argv)
{
	Goldfinch__V1__Generate *g = &a->gen;
	uint32_t seen = 0;   /* bit opt - OPT_SERVER of each long-only flag given */
	int opt;
	uint64_t u;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":vh", long_opts, NULL)) != -1) {
		const char *v = optarg;
		if (opt >= OPT_SERVER && opt <= OPT_SERVER_FILE)
			seen |= 1u << (opt - OPT_SERVER);
		switch (opt) {
		case 'h': usage(stdout); exit(0);
		case OPT_VERSION:
			printf("%s (protocol %d.%d)\n", GF_VERSION, PROTO_VERSION_MAJOR,
			       PROTO_VERSION_MINOR);
			exit(0);
		case 'v': a->verbose = true; break;
		case OPT_SERVER: a->server = v; break;
		case OPT_SERVER_FILE: a->server_file = v; break;
		case OPT_TOKEN: a->token_file = v; break;
		case OPT_JSON: a->json = true; break;
		case OPT_TIMEOUT: {
			float t;
			if (parse_float(v, &t) || t < 0)
				return bad_usage("--timeout %s: expected seconds >= 0%s", v, "");
			a->timeout_s = t;
			break;
		}
		case OPT_NAME:
			if (!*v)
				return bad_usage("--name: empty%s%s", "", "");
			a->name = v;
			break;
		case OPT_CDTYPE:
			if (!strcmp(v, "f16"))
				a->c_dtype = GOLDFINCH__V1__CDTYPE__C_DTYPE_F16;
			else if (!strcmp(v, "bf16"))
				a->c_dtype = GOLDFINCH__V1__CDTYPE__C_DTYPE_BF16;
			else if (!strcmp(v, "f32"))
				a->c_dtype = GOLDFINCH__V1__CDTYPE__C_DTYPE_F32;
			else
				return bad_usage("--c-dtype %s: expected f16, bf16 or f32%s", v, "");
			break;
		case OPT_RESUME: a->resume = true; break;
		case OPT_NO_CONTEXT:
			g->has_no_context = g->no_context = true;
			break;
		case OPT_MAXTOK:
			if (parse_u64(v, &u) || u < 1 || u > UINT32_MAX)
				return bad_usage("--max-tokens %s: expected 1..4294967295%s", v, "");
			g->has_max_tokens = true;
			g->max_tokens = (uint32_t)u;
			break;
		case OPT_TEMP:
			if (parse_float(v, &g->temperature) || g->temperature < 0)
				return bad_usage("--temperature %s: expected a number >= 0%s", v, "");
			g->has_temperature = true;
			break;
		case OPT_TOPK:
			if (parse_u64(v, &u) || u > UINT32_MAX)
				return bad_usage("--top-k %s: expected 0..4294967295%s", v, "");
			g->has_top_k = true;
			g->top_k = (uint32_t)u;
			break;
		case OPT_TOPP:
			if (parse_float(v, &g->top_p) || !(g->top_p > 0 && g->top_p <= 1))
				return bad_usage("--top-p %s: expected 0 < P <= 1%s", v, "");
			g->has_top_p = true;
			break;
		case OPT_MINP:
			if (parse_float(v, &g->min_p) || !(g->min_p >= 0 && g->min_p <= 1))
				return bad_usage("--min-p %s: expected 0 <= M <= 1%s", v, "");
			g->has_min_p = true;
			break;
		case OPT_PRES:
			if (parse_float(v, &g->presence_penalty))
				return bad_usage("--presence-penalty %s: expected a number%s", v, "");
			g->has_presence_penalty = true;
			break;
		case OPT_FREQ:
			if (parse_float(v, &g->frequency_penalty))
				return bad_usage("--frequency-penalty %s: expected a number%s", v, "");
			g->has_frequency_penalty = true;
			break;
		case OPT_STOP: {
			if (!*v)
				return bad_usage("--stop: empty string%s%s", "", "");
			char **s = realloc(a->stop, (a->n_stop + 1) * sizeof(*s));
			if (!s)
				return bad_usage("out of memory%s%s", "", "");
			a->stop = s;
			a->stop[a->n_stop++] = (char *)v;
			break;
		}
		case OPT_SEED:
			if (parse_u64(v, &g->seed))
				return bad_usage("--seed %s: expected an unsigned 64-bit integer%s", v, "");
			g->has_seed = true;
			break;
		case ':':
			return bad_usage("%s: missing value%s", argv[optind - 1], "");
		default:
			return bad_usage("unknown flag %s%s", argv[optind - 1], "");
		}
	}
	if (optind >= argc)
		return bad_usage("no command%s%s", "", "");
	static const struct { const char *name; enum cmd cmd; } cmds[] = {
		{ "ingest", CMD_INGEST }, { "ask", CMD_ASK }, { "contexts", CMD_CONTEXTS },
		{ "drop", CMD_DROP }, { "status", CMD_STATUS }, { "cancel", CMD_CANCEL },
	};
	const char *c = argv[optind];
	if (!strcmp(c, "help")) {
		usage(stdout);
		exit(0);
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(c, cmds[i].name))
			a->cmd = cmds[i].cmd;
	if (!a->cmd)
		return bad_usage("unknown command \"%s\"%s", c, "");
	if (a->server && a->server_file)
		return bad_usage("--server and --server-file: give one of them%s%s", "", "");
	for (int o = OPT_SERVER; o <= OPT_NO_CONTEXT; o++)
		if ((seen & 1u << (o - OPT_SERVER)) && !(opt_cmds(o) & a->cmd))
			return bad_usage("--%s does not apply to gf %s", opt_name(o), c);
	a->pos = argv + optind + 1;
	a->n_pos = argc - optind - 1;
	int want_min = 0, want_max = 0;
	switch (a->cmd) {
	case CMD_INGEST: want_min = 1, want_max = INT32_MAX; break;
	case CMD_ASK: want_min = want_max = a->gen.no_context ? 1 : 2; break;
	case CMD_DROP: case CMD_CANCEL: want_min = want_max = 1; break;
	default: break;
	}
	if (a->n_pos < want_min || a->n_pos > want_max)
		return bad_usage("gf %s: wrong number of arguments (see gf --help)%s", c, "");
	if (a->resume && !a->name)
		return bad_usage("--resume needs --name: the interrupted ingest is found by it%s%s",
				 "", "");
	if (a->cmd == CMD_ASK && !*a->pos[a->n_pos - 1])
		return bad_usage("gf ask: empty question%s%s", "", "");
	return 0;
}

/* ---- output helpers ------------------------------------------------------------------- */

static const char *human_bytes(uint64_t b, char *buf, size_t n)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)b;
	int u = 0;

	while (v >= 1024 && u < 4)
		v /= 1024, u++;
	if (u == 0)
		snprintf(buf, n, "%" PRIu64 " B", b);
	else
		snprintf(buf, n, "%.1f %s", v, units[u]);
	return buf;
}

static const char *time_ms(int64_t ms, char *buf, size_t n)
{
	if (ms <= 0)
		return "-";
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (!localtime_r(&t, &tm) || !strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm))
		return "-";
	return buf;
}

static int print_json(cJSON *j)
{
	char *s = j ? cJSON_Print(j) : NULL;
	cJSON_Delete(j);
	if (!s) {
		fprintf(stderr, "gf: out of memory\n");
		return GFC_EXIT_SERVER;
	}
	printf("%s\n", s);
	free(s);
	return 0;
}

static cJSON *context_json(const Goldfinch__V1__ContextInfo *ci)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddNumberToObject(o, "serial", (double)ci->serial);
	cJSON_AddStringToObject(o, "key", ci->key ? ci->key : "");
	if (ci->name && *ci->name)
		cJSON_AddStringToObject(o, "name", ci->name);
	else
		cJSON_AddNullToObject(o, "name");
	cJSON_AddNumberToObject(o, "tokens", (double)ci->tokens);
	cJSON_AddNumberToObject(o, "disk_bytes", (double)ci->disk_bytes);
	cJSON_AddNumberToObject(o, "raw_bytes", (double)ci->raw_bytes);
	cJSON_AddBoolToObject(o, "sealed", ci->sealed);
	cJSON_AddNumberToObject(o, "last_use_unix_ms", (double)ci->last_use_unix_ms);
	return o;
}

static void print_hello(const gfc_conn *c)
{
	const Goldfinch__V1__HelloReply *h = gfc_hello(c);
	const Goldfinch__V1__ModelInfo *m = h->model;

	fprintf(stderr, "gf: %s: %s, protocol %u.%u, %u rank(s), frames up to %" PRIu64 " bytes\n",
		gfc_server_address(c), h->server ? h->server : "?", h->major, h->minor,
		h->has_ranks ? h->ranks : 1, h->max_frame);
	if (m)
		fprintf(stderr,
			"gf: model %s: %u layers (GOLD from %u), n_embd %u, %u heads of %u, "
			"vocab %u, cache %u per token\n",
			m->name ? m->name : "?", m->n_layer, m->first_gold, m->n_embd, m->n_head,
			m->head_size, m->vocab_size, m->ckv_dim);
	if (m && m->compute) /* 1.2 */
		fprintf(stderr, "gf: compute %s (kernels %s), weights %" PRIu64 " bytes\n", m->compute,
			m->kernels ? m->kernels : "?", m->weight_bytes);
}

/* ---- ingest --------------------------------------------------------------------------- */

struct ingest_ui {
	bool bar;              /* stderr is a terminal */
	bool drawn;
	bool verbose;          /* -v: say the job's number once it arrives */
	uint64_t job;          /* server-wide number (IngestProgress.job); 0 unknown */
	uint64_t total_bytes;  /* rendered; 0 unknown */
	struct timespec t0;
	double every;          /* not a terminal: seconds between progress lines; < 0 none */
	double drawn_at;       /* seconds after t0 of the last line (0 before the first) */
};

/* $GOLDFINCH_PROGRESS_SECONDS: how often a progress line goes to a stderr that is not a
 * terminal (a log, CI): default 5 s, 0 every message the server sends, "off" never. */
static double progress_every(void)
{
	const char *v = getenv("GOLDFINCH_PROGRESS_SECONDS");
	char *end;
	double d;

	if (!v || !*v)
		return GF_PROGRESS_SECONDS;
	if (!strcmp(v, "off"))
		return -1;
	d = strtod(v, &end);
	return *end || !(d >= 0) ? GF_PROGRESS_SECONDS : d;
}

static void note_skip(void *user, const char *path, const char *why)
{
	(void)user;
	fprintf(stderr, "gf: skipping %s: %s\n", path, why);
}

static double since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void fmt_eta(double s, char *buf, size_t n)
{
	if (!(s >= 0) || s > 99 * 3600) {
		snprintf(buf, n, "--:--");
		return;
	}
	unsigned long t = (unsigned long)(s + 0.5);
	if (t >= 3600)
		snprintf(buf, n, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
	else
		snprintf(buf, n, "%lu:%02lu", t / 60, t % 60);
}

static void clear_bar(struct ingest_ui *ui);

static int on_progress(void *user, const proto_response *r)
{
	struct ingest_ui *ui = user;

	if (r->body_case != GOLDFINCH__V1__RESPONSE__BODY_PROGRESS)
		return 0;
	const Goldfinch__V1__IngestProgress *p = r->progress;
	if (p->has_job && p->job && !ui->job) {
		ui->job = p->job;
		if (ui->verbose) {
			clear_bar(ui);
			fprintf(stderr, "gf: job %" PRIu64 "\n", ui->job);
		}
	}
	if (!ui->bar && !(ui->every >= 0 && since(&ui->t0) - ui->drawn_at >= ui->every))
		return 0;
	double frac = -1, eta = -1;
	if (p->tokens_total)
		frac = (double)p->tokens_done / (double)p->tokens_total;
	else if (ui->total_bytes)
		frac = (double)p->bytes_done / (double)ui->total_bytes;
	if (frac > 1)
		frac = 1;
	if (p->tokens_total && p->tokens_per_s > 0)
		eta = (double)(p->tokens_total - (p->tokens_done < p->tokens_total ?
						  p->tokens_done : p->tokens_total)) / p->tokens_per_s;
	else if (frac > 0)
		eta = since(&ui->t0) * (1 / frac - 1);
	char bar[32], etab[32];
	fmt_eta(eta, etab, sizeof(etab));
	if (!ui->bar) {
		/* A log or a pipe: whole lines, at most one every ui->every seconds. */
		ui->drawn_at = since(&ui->t0);
		if (frac >= 0)
			fprintf(stderr, "gf: ingest %d%%: %" PRIu64 " tokens, %.0f tokens/s, ETA %s\n",
				(int)(frac * 100), p->tokens_done, p->tokens_per_s, etab);
		else
			fprintf(stderr, "gf: ingest: %" PRIu64 " tokens, %.0f tokens/s\n", p->tokens_done,
				p->tokens_per_s);
		return 0;
	}
	if (frac >= 0) {
		int w = 24, k = (int)(frac * w + 0.5);
		for (int i = 0; i < w; i++)
			bar[i] = i < k ? '#' : '.';
		bar[w] = 0;
		fprintf(stderr, "\r[%s] %3d%%  %" PRIu64 " tok  %.0f tok/s  ETA %s\033[K", bar,
			(int)(frac * 100), p->tokens_done, p->tokens_per_s, etab);
	} else {
		fprintf(stderr, "\r%" PRIu64 " tok  %.0f tok/s\033[K", p->tokens_done, p->tokens_per_s);
	}
	ui->drawn = true;
	return 0;
}

static void clear_bar(struct ingest_ui *ui)
{
	if (ui->drawn)
		fprintf(stderr, "\r\033[K");
	ui->drawn = false;
}

/* Sends bytes [from, to) of file f (offsets in the file), reading it in pieces. */
static int send_file_bytes(gfc_conn *c, const gfc_file *f, uint64_t from, char *buf,
			   char *err, bool *local)
{
	int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	int rc = 0;

	if (fd < 0) {
		snprintf(err, GFC_ERR_LEN, "%s: %s", f->path, strerror(errno));
		*local = true;
		return -errno;
	}
	if (from && lseek(fd, (off_t)from, SEEK_SET) < 0) {
		snprintf(err, GFC_ERR_LEN, "%s: seek to %" PRIu64 ": %s", f->path, from,
			 strerror(errno));
		*local = true;
		rc = -errno;
		goto close_fd;
	}
	for (;;) {
		ssize_t n = read(fd, buf, READ_BYTES);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(err, GFC_ERR_LEN, "%s: %s", f->path, strerror(errno));
			*local = true;
			rc = -errno;
			break;
		}
		if (n == 0)
			break;
		rc = gfc_ingest_text(c, buf, (size_t)n, err);
		if (rc)
			break;
	}
close_fd:
	close(fd);
	return rc;
}

/* Sends the walked files from byte `skip` of the rendered stream: whole files before it
 * are left out; a file that it cuts is sent as plain text from there (its header's
 * remainder, its text, its closing newline), since a FileStart would render its header
 * again; the files after it as files. */
static int send_files(gfc_conn *c, const gfc_filelist *fl, uint64_t *skip, char *buf,
		      char *err, bool *local)
{
	for (size_t i = 0; i < fl->n; i++) {
		const gfc_file *f = &fl->files[i];
		uint64_t r = gfc_rendered_size(f->rel, f->size);
		int rc;

		if (*skip >= r) {
			*skip -= r;
			continue;
		}
		if (*skip == 0) {
			rc = gfc_ingest_file(c, f->rel, f->size, err);
			if (!rc)
				rc = send_file_bytes(c, f, 0, buf, err, local);
			if (rc)
				return rc;
			continue;
		}
		size_t hl = strlen(GFC_FILE_HEADER) + strlen(f->rel) + 1;
		char *hdr = malloc(hl + 1);
		if (!hdr)
			return -ENOMEM;
		snprintf(hdr, hl + 1, "%s%s\n", GFC_FILE_HEADER, f->rel);
		uint64_t from = 0;
		rc = 0;
		if (*skip < hl)
			rc = gfc_ingest_text(c, hdr + *skip, hl - (size_t)*skip, err);
		else
			from = *skip - hl;
		free(hdr);
		if (!rc && from < f->size)
			rc = send_file_bytes(c, f, from, buf, err, local);
		if (!rc)
			rc = gfc_ingest_text(c, "\n", 1, err);
		*skip = 0;
		if (rc)
			return rc;
	}
	return 0;
}

/* Sends stdin as plain text, leaving out its first *skip bytes. */
static int send_stdin(gfc_conn *c, uint64_t *skip, char *buf, char *err, bool *local)
{
	for (;;) {
		ssize_t n = read(0, buf, READ_BYTES);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(err, GFC_ERR_LEN, "stdin: %s", strerror(errno));
			*local = true;
			return -errno;
		}
		if (n == 0)
			return 0;
		size_t off = 0;
		if (*skip) {
			off = *skip < (uint64_t)n ? (size_t)*skip : (size_t)n;
			*skip -= off;
		}
		int rc = gfc_ingest_text(c, buf + off, (size_t)n - off, err);
		if (rc)
			return rc;
	}
}

struct ingest_input {
	gfc_filelist *lists;  /* one per PATH; NULL entries for "-" */
	bool *is_stdin;
	int n;
};

static void input_free(struct ingest_input *in)
{
	for (int i = 0; i < in->n; i++)
		gfc_filelist_free(&in->lists[i]);
	free(in->lists);
	free(in->is_stdin);
}

/* Walks every PATH before connecting: a bad PATH is a usage error, and nothing is sent. */
static int walk_inputs(const struct args *a, struct ingest_input *in, uint64_t *total)
{
	char err[GFC_ERR_LEN];
	size_t n_files = 0;
	int n_stdin = 0;

	in->n = a->n_pos;
	in->lists = calloc((size_t)a->n_pos, sizeof(*in->lists));
	in->is_stdin = calloc((size_t)a->n_pos, sizeof(*in->is_stdin));
	if (!in->lists || !in->is_stdin) {
		fprintf(stderr, "gf: out of memory\n");
		return GFC_EXIT_USAGE;
	}
	*total = 0;
	for (int i = 0; i < a->n_pos; i++) {
		gfc_filelist_init(&in->lists[i]);
		if (!strcmp(a->pos[i], "-")) {
			in->is_stdin[i] = true;
			n_stdin++;
			continue;
		}
		int rc = gfc_walk(&in->lists[i], a->pos[i], note_skip, NULL, err);
		if (rc) {
			fprintf(stderr, "gf: %s\n", err);
			return GFC_EXIT_USAGE;
		}
		for (size_t k = 0; k < in->lists[i].n; k++)
			*total += gfc_rendered_size(in->lists[i].files[k].rel,
						    in->lists[i].files[k].size);
		n_files += in->lists[i].n;
	}
	if (n_stdin > 1) {
		fprintf(stderr, "gf: stdin (-) given more than once\n");
		return GFC_EXIT_USAGE;
	}
	if (!n_files && !n_stdin) {
		fprintf(stderr, "gf: nothing to ingest: no text file in the given paths\n");
		return GFC_EXIT_USAGE;
	}
	if (n_stdin)
		*total = 0;   /* unknown */
	return 0;
}

static int cmd_ingest(gfc_conn *c, const struct args *a, struct ingest_input *in,
		      uint64_t total)
{
	Goldfinch__V1__IngestStart s = GOLDFINCH__V1__INGEST_START__INIT;
	struct ingest_ui ui = { .bar = isatty(2), .total_bytes = total, .verbose = a->verbose,
				.every = progress_every() };
	char err[GFC_ERR_LEN] = "";
	proto_response *ready = NULL;
	uint64_t skip = 0;
	bool local = false;
	int rc;

	char *buf = malloc(READ_BYTES);
	if (!buf) {
		fprintf(stderr, "gf: out of memory\n");
		return GFC_EXIT_SERVER;
	}
	clock_gettime(CLOCK_MONOTONIC, &ui.t0);
	s.name = (char *)a->name;
	if (a->c_dtype) {
		s.has_c_dtype = true;
		s.c_dtype = a->c_dtype;
	}
	if (total) {
		s.has_total_bytes = true;
		s.total_bytes = total;
	}
	if (a->resume) {
		s.has_resume = true;
		s.resume = true;
	}
	rc = gfc_ingest_start(c, &s, on_progress, &ui, a->resume ? &skip : NULL, err);
	if (!rc && skip == GFC_RESUME_COMPLETE) {
		if (a->verbose)
			fprintf(stderr, "gf: \"%s\" was complete already\n", a->name);
	} else if (!rc && a->resume && a->verbose) {
		fprintf(stderr, "gf: resuming \"%s\" from byte %" PRIu64 "\n", a->name, skip);
	}
	if (!rc && skip != GFC_RESUME_COMPLETE && total && skip > total) {
		snprintf(err, sizeof(err), "the server resumes at byte %" PRIu64
			 " but the input has %" PRIu64 ": not the same input", skip, total);
		rc = -EINVAL;
		local = true;
	}
	for (int i = 0; !rc && skip != GFC_RESUME_COMPLETE && i < in->n; i++)
		rc = in->is_stdin[i] ? send_stdin(c, &skip, buf, err, &local) :
			send_files(c, &in->lists[i], &skip, buf, err, &local);
	if (!rc)
		rc = gfc_ingest_end(c, &ready, err);
	clear_bar(&ui);
	free(buf);
	if (rc) {
		fprintf(stderr, "gf: %s\n", err);
		return local ? GFC_EXIT_USAGE : gfc_exit_status(c, rc);
	}
	const Goldfinch__V1__ContextReady *cr = ready->context_ready;
	const Goldfinch__V1__ContextInfo *ci = cr->context;
	if (!ci) {
		fprintf(stderr, "gf: server %s: ContextReady without a context\n",
			gfc_server_address(c));
		proto_response_free(ready);
		return GFC_EXIT_CONNECTION;
	}
	/* The store keeps one name per context: an identical text found under another name
	 * keeps that one, and the name asked for names nothing. Say which to use. */
	if (cr->reused && a->name && !a->resume && strcmp(ci->name ? ci->name : "", a->name)) {
		if (ci->name && ci->name[0])
			fprintf(stderr, "gf: this text is stored already as \"%s\" (#%" PRIu64 "), so the "
				"name \"%s\" was not kept; ask with: gf ask %s QUESTION\n", ci->name,
				ci->serial, a->name, ci->name);
		else
			fprintf(stderr, "gf: this text is stored already, unnamed (#%" PRIu64 "), so the "
				"name \"%s\" was not kept; ask with: gf ask '#%" PRIu64 "' QUESTION\n",
				ci->serial, a->name, ci->serial);
	}
	if (a->json) {
		cJSON *o = context_json(ci);
		cJSON_AddBoolToObject(o, "reused", cr->reused);
		cJSON_AddNumberToObject(o, "seconds", cr->seconds);
		rc = print_json(o);
	} else {
		char b[32];
		printf("context #%" PRIu64 " \"%s\": %" PRIu64 " tokens, %s on disk, %s (%.1f s)\n",
		       ci->serial, ci->name ? ci->name : "", ci->tokens,
		       human_bytes(ci->disk_bytes, b, sizeof(b)),
		       cr->reused ? "reused an identical context" : "new", cr->seconds);
		if (a->verbose)
			fprintf(stderr, "gf: key %s\n", ci->key ? ci->key : "?");
	}
	proto_response_free(ready);
	return rc;
}

/* ---- ask ------------------------------------------------------------------------------ */

struct ask_out {
	bool tty;
	char last;          /* last byte written */
	bool failed;
	bool verbose;       /* -v: say the job's number once it arrives */
	uint64_t job;       /* server-wide number (the first Token.job); 0 unknown */
};

static int on_token(void *user, const proto_response *r)
{
	struct ask_out *o = user;

	if (r->body_case != GOLDFINCH__V1__RESPONSE__BODY_TOKEN)
		return 0;
	if (r->token->has_job && r->token->job && !o->job) {
		o->job = r->token->job;
		if (o->verbose) {
			/* stderr: the answer on stdout stays the answer alone. */
			fflush(stdout);
			fprintf(stderr, "gf: job %" PRIu64 "\n", o->job);
		}
	}
	if (!r->token->has_text || !r->token->text.len)
		return 0;
	const ProtobufCBinaryData *t = &r->token->text;
	if (fwrite(t->data, 1, t->len, stdout) != t->len || fflush(stdout)) {
		o->failed = true;
		return -EPIPE;
	}
	o->last = (char)t->data[t->len - 1];
	return 0;
}

static const char *done_reason(int r)
{
	switch (r) {
	case GOLDFINCH__V1__DONE_REASON__DONE_STOP: return "stop";
	case GOLDFINCH__V1__DONE_REASON__DONE_LENGTH: return "length";
	case GOLDFINCH__V1__DONE_REASON__DONE_CANCELLED: return "cancelled";
	default: return "unspecified";
	}
}

static int cmd_ask(gfc_conn *c, struct args *a)
{
	struct ask_out out = { .tty = isatty(1), .verbose = a->verbose };
	char err[GFC_ERR_LEN] = "";
	proto_response *done = NULL;

	/* --no-context: the question alone, from the model's initial state (protocol 1.3). */
	a->gen.context = a->gen.no_context ? "" : a->pos[0];
	a->gen.prompt = a->pos[a->n_pos - 1];
	a->gen.stop = a->stop;
	a->gen.n_stop = a->n_stop;
	int rc = gfc_generate(c, &a->gen, on_token, &out, &done, err);
	if (out.tty && out.last && out.last != '\n')
		putchar('\n');
	if (rc) {
		fprintf(stderr, "gf: %s\n", out.failed ? "writing the answer: broken pipe" : err);
		return out.failed ? GFC_EXIT_SERVER : gfc_exit_status(c, rc);
	}
	const Goldfinch__V1__Done *d = done->done;
	if (a->verbose) {
		const Goldfinch__V1__Usage *u = d->usage;
		fprintf(stderr, "gf: done: %s\n", done_reason(d->reason));
		if (u)
			fprintf(stderr,
				"gf: usage: prompt %" PRIu64 " tokens, cached %" PRIu64
				" tokens reused, completion %" PRIu64 " tokens\n"
				"gf: timings: first token %.1f ms, prompt %.1f ms, decode %.1f ms"
				" (%.1f tokens/s)\n",
				u->prompt_tokens, u->cached_tokens, u->completion_tokens,
				u->time_to_first_token_ms, u->prompt_ms, u->decode_ms,
				u->decode_tokens_per_s);
	}
	rc = 0;
	if (d->reason == GOLDFINCH__V1__DONE_REASON__DONE_CANCELLED) {
		fprintf(stderr, "gf: cancelled\n");
		rc = GFC_EXIT_CANCELLED;
	}
	proto_response_free(done);
	return rc;
}

/* ---- contexts, drop, status, cancel --------------------------------------------------- */

static int cmd_contexts(gfc_conn *c, const struct args *a)
{
	char err[GFC_ERR_LEN] = "";
	proto_response *r;
	int rc = gfc_list_contexts(c, &r, err);

	if (rc) {
		fprintf(stderr, "gf: %s\n", err);
		return gfc_exit_status(c, rc);
	}
	const Goldfinch__V1__ContextList *l = r->contexts;
	if (a->json) {
		cJSON *arr = cJSON_CreateArray();
		for (size_t i = 0; i < l->n_contexts; i++)
			cJSON_AddItemToArray(arr, context_json(l->contexts[i]));
		rc = print_json(arr);
	} else {
		printf("%-7s %-24s %12s %12s %-6s %s\n", "SERIAL", "NAME", "TOKENS", "DISK",
		       "SEALED", "LAST USE");
		for (size_t i = 0; i < l->n_contexts; i++) {
			const Goldfinch__V1__ContextInfo *ci = l->contexts[i];
			char b[32], t[32], s[24];
			snprintf(s, sizeof(s), "#%" PRIu64, ci->serial);
			printf("%-7s %-24s %12" PRIu64 " %12s %-6s %s\n", s,
			       ci->name && *ci->name ? ci->name : "-", ci->tokens,
			       human_bytes(ci->disk_bytes, b, sizeof(b)), ci->sealed ? "yes" : "no",
			       time_ms(ci->last_use_unix_ms, t, sizeof(t)));
		}
	}
	proto_response_free(r);
	return rc;
}

static int cmd_drop(gfc_conn *c, const struct args *a)
{
	char err[GFC_ERR_LEN] = "";
	uint64_t serial = 0;
	int rc = gfc_drop(c, a->pos[0], &serial, err);

	if (rc) {
		fprintf(stderr, "gf: %s\n", err);
		return gfc_exit_status(c, rc);
	}
	if (a->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "dropped", (double)serial);
		return print_json(o);
	}
	printf("dropped #%" PRIu64 "\n", serial);
	return 0;
}

/* "42s", "3m04s", "2h05m", "3d04h": how long ago unix time ms was. */
static const char *age(int64_t ms, char *buf, size_t n)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t d = ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - ms) / 1000;
	if (ms <= 0)
		return "-";
	if (d < 0)
		d = 0;
	if (d < 60)
		snprintf(buf, n, "%" PRId64 "s", d);
	else if (d < 3600)
		snprintf(buf, n, "%" PRId64 "m%02" PRId64 "s", d / 60, d % 60);
	else if (d < 86400)
		snprintf(buf, n, "%" PRId64 "h%02" PRId64 "m", d / 3600, d / 60 % 60);
	else
		snprintf(buf, n, "%" PRId64 "d%02" PRId64 "h", d / 86400, d / 3600 % 24);
	return buf;
}

static cJSON *job_json(const Goldfinch__V1__JobInfo *ji)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddNumberToObject(o, "job", (double)ji->job);
	cJSON_AddStringToObject(o, "kind", ji->kind ? ji->kind : "");
	if (ji->context)
		cJSON_AddStringToObject(o, "context", ji->context);
	else
		cJSON_AddNullToObject(o, "context");
	cJSON_AddStringToObject(o, "state", ji->state ? ji->state : "");
	cJSON_AddNumberToObject(o, "tokens_done", (double)ji->tokens_done);
	cJSON_AddNumberToObject(o, "started_unix_ms", (double)ji->started_unix_ms);
	cJSON_AddStringToObject(o, "peer", ji->peer ? ji->peer : "");
	return o;
}

static void json_str_or_null(cJSON *o, const char *key, const char *v)
{
	if (v)
		cJSON_AddStringToObject(o, key, v);
	else
		cJSON_AddNullToObject(o, key);
}

static void json_u64_or_null(cJSON *o, const char *key, bool has, uint64_t v)
{
	if (has)
		cJSON_AddNumberToObject(o, key, (double)v);
	else
		cJSON_AddNullToObject(o, key);
}

/* The resident set, and from a 1.2 server what makes it up, each part against its budget:
 * "memory  48.2 MiB resident: weights 6.6 MiB, page cache 12.0 MiB of 256.0 MiB, tier
 * 300.0 MiB of 512.0 MiB", then the compute mode and its kernels. */
static void print_memory(const Goldfinch__V1__StatusReply *s, bool ranks)
{
	char b[6][32];
	printf("memory       %s resident%s", human_bytes(s->rss_bytes, b[0], sizeof(b[0])),
	       ranks ? " on rank 0" : "");
	if (s->has_weight_bytes && s->has_page_cache_bytes && s->has_tier_bytes) {
		printf(": weights %s, page cache %s of %s, tier ",
		       human_bytes(s->weight_bytes, b[1], sizeof(b[1])),
		       human_bytes(s->page_cache_bytes, b[2], sizeof(b[2])),
		       human_bytes(s->page_cache_budget_bytes, b[3], sizeof(b[3])));
		if (s->tier_budget_bytes)
			printf("%s of %s", human_bytes(s->tier_bytes, b[4], sizeof(b[4])),
			       human_bytes(s->tier_budget_bytes, b[5], sizeof(b[5])));
		else
			printf("off");
	}
	printf("\n");
	if (s->compute)
		printf("compute      %s (kernels %s)\n", s->compute, s->kernels ? s->kernels : "?");
}

static int cmd_status(gfc_conn *c, const struct args *a)
{
	const Goldfinch__V1__HelloReply *h = gfc_hello(c);
	char err[GFC_ERR_LEN] = "";
	proto_response *r;
	int rc = gfc_status(c, &r, err);

	if (rc) {
		fprintf(stderr, "gf: %s\n", err);
		return gfc_exit_status(c, rc);
	}
	const Goldfinch__V1__StatusReply *s = r->status;
	const Goldfinch__V1__ModelInfo *m = h->model;
	if (a->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "server", h->server ? h->server : "");
		char v[32];
		snprintf(v, sizeof(v), "%u.%u", h->major, h->minor);
		cJSON_AddStringToObject(o, "protocol", v);
		cJSON_AddNumberToObject(o, "ranks", h->has_ranks ? h->ranks : 1);
		cJSON_AddNumberToObject(o, "max_frame", (double)h->max_frame);
		if (m) {
			cJSON *mo = cJSON_AddObjectToObject(o, "model");
			cJSON_AddStringToObject(mo, "name", m->name ? m->name : "");
			char id[24];
			snprintf(id, sizeof(id), "%016" PRIx64, m->model_id);
			cJSON_AddStringToObject(mo, "model_id", id);
			cJSON_AddNumberToObject(mo, "n_layer", m->n_layer);
			cJSON_AddNumberToObject(mo, "n_embd", m->n_embd);
			cJSON_AddNumberToObject(mo, "first_gold", m->first_gold);
			cJSON_AddNumberToObject(mo, "n_head", m->n_head);
			cJSON_AddNumberToObject(mo, "head_size", m->head_size);
			cJSON_AddNumberToObject(mo, "vocab_size", m->vocab_size);
			cJSON_AddNumberToObject(mo, "ckv_dim", m->ckv_dim);
			/* 1.2; null from older servers, so that the keys are always there. */
			json_str_or_null(mo, "compute", m->compute);
			json_str_or_null(mo, "kernels", m->kernels);
			json_u64_or_null(mo, "weight_bytes", m->has_weight_bytes, m->weight_bytes);
		}
		cJSON_AddNumberToObject(o, "jobs_running", s->jobs_running);
		cJSON_AddNumberToObject(o, "jobs_queued", s->jobs_queued);
		cJSON_AddNumberToObject(o, "max_jobs", s->max_jobs);
		cJSON_AddNumberToObject(o, "rss_bytes", (double)s->rss_bytes);
		cJSON_AddNumberToObject(o, "disk_used_bytes", (double)s->disk_used_bytes);
		cJSON_AddNumberToObject(o, "disk_budget_bytes", (double)s->disk_budget_bytes);
		cJSON_AddNumberToObject(o, "contexts", s->contexts);
		cJSON_AddNumberToObject(o, "connections", s->connections);
		cJSON_AddNumberToObject(o, "tokens_ingested", (double)s->tokens_ingested);
		cJSON_AddNumberToObject(o, "tokens_generated", (double)s->tokens_generated);
		/* 1.2: compute and memory against budgets (rank 0's with several ranks); null
		 * from a server before 1.2. */
		json_str_or_null(o, "compute", s->compute);
		json_str_or_null(o, "kernels", s->kernels);
		json_u64_or_null(o, "weight_bytes", s->has_weight_bytes, s->weight_bytes);
		json_u64_or_null(o, "page_cache_bytes", s->has_page_cache_bytes, s->page_cache_bytes);
		json_u64_or_null(o, "page_cache_budget_bytes", s->has_page_cache_budget_bytes,
				 s->page_cache_budget_bytes);
		json_u64_or_null(o, "tier_bytes", s->has_tier_bytes, s->tier_bytes);
		json_u64_or_null(o, "tier_budget_bytes", s->has_tier_budget_bytes,
				 s->tier_budget_bytes);
		/* A 1.0 server sends no job list: [] as for none. */
		cJSON *jobs = cJSON_AddArrayToObject(o, "jobs");
		for (size_t i = 0; i < s->n_jobs; i++)
			cJSON_AddItemToArray(jobs, job_json(s->jobs[i]));
		rc = print_json(o);
	} else {
		char b2[32], b3[32];
		printf("server       %s at %s, protocol %u.%u, %u rank(s)\n",
		       h->server ? h->server : "?", gfc_server_address(c), h->major, h->minor,
		       h->has_ranks ? h->ranks : 1);
		if (m)
			printf("model        %s: %u layers (GOLD from %u), n_embd %u, vocab %u\n",
			       m->name ? m->name : "?", m->n_layer, m->first_gold, m->n_embd,
			       m->vocab_size);
		printf("jobs         %u running, %u queued, %u at most\n", s->jobs_running,
		       s->jobs_queued, s->max_jobs);
		printf("connections  %u\n", s->connections);
		printf("contexts     %u\n", s->contexts);
		print_memory(s, h->has_ranks && h->ranks > 1);
		printf("disk         %s used, budget %s\n",
		       human_bytes(s->disk_used_bytes, b2, sizeof(b2)),
		       s->disk_budget_bytes ? human_bytes(s->disk_budget_bytes, b3, sizeof(b3)) :
					      "unlimited");
		printf("tokens       %" PRIu64 " ingested, %" PRIu64 " generated\n",
		       s->tokens_ingested, s->tokens_generated);
		if (s->n_jobs) {
			printf("\n%-6s %-8s %-7s %-24s %10s %7s %s\n", "JOB", "KIND", "STATE", "CONTEXT",
			       "TOKENS", "AGE", "PEER");
			for (size_t i = 0; i < s->n_jobs; i++) {
				const Goldfinch__V1__JobInfo *ji = s->jobs[i];
				char t[32];
				printf("%-6" PRIu64 " %-8s %-7s %-24s %10" PRIu64 " %7s %s\n", ji->job,
				       ji->kind ? ji->kind : "?", ji->state ? ji->state : "?",
				       ji->context && *ji->context ? ji->context : "-", ji->tokens_done,
				       age(ji->started_unix_ms, t, sizeof(t)), ji->peer ? ji->peer : "-");
			}
		}
	}
	proto_response_free(r);
	return rc;
}

static int cmd_cancel(gfc_conn *c, const struct args *a)
{
	const Goldfinch__V1__HelloReply *h = gfc_hello(c);
	char err[GFC_ERR_LEN] = "";
	uint64_t id;

	if (parse_u64(a->pos[0], &id) || !id)
		return bad_usage("gf cancel %s: expected a job number (a positive integer)%s",
				 a->pos[0], "");
	if (h->minor >= 1) {
		/* Protocol 1.1: the server-wide number, whoever started the job. */
		int rc = gfc_cancel_number(c, id, err);
		if (rc) {
			fprintf(stderr, "gf: job %" PRIu64 ": %s\n", id, err);
			return gfc_exit_status(c, rc);
		}
		printf("job %" PRIu64 ": cancel accepted\n", id);
		return 0;
	}
	/* A 1.0 server knows jobs only by request ids of their own connection. */
	int rc = gfc_cancel(c, id, 2000, err);
	if (rc) {
		fprintf(stderr, "gf: job %" PRIu64 ": %s\n", id, err);
		if (gfc_server_error(c) == GOLDFINCH__V1__ERROR_CODE__ERROR_NOT_FOUND)
			fprintf(stderr, "gf: this server speaks protocol %u.%u: job ids are request "
				"ids of the connection that started the job; press Ctrl-C in that gf "
				"to cancel it\n", h->major, h->minor);
		return gfc_exit_status(c, rc);
	}
	printf("cancel sent for job %" PRIu64 "\n", id);
	return 0;
}

/* ---- main ----------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	struct args a = { 0 };
	struct ingest_input in = { 0 };
	uint64_t total = 0;
	char err[GFC_ERR_LEN] = "";
	gfc_options o;
	gfc_conn *c = NULL;
	int rc;

	goldfinch__v1__generate__init(&a.gen);
	rc = parse_args(&a, argc, argv);
	if (rc)
		goto free_args;
	if (a.cmd == CMD_INGEST) {
		rc = walk_inputs(&a, &in, &total);
		if (rc)
			goto free_input;
	}
	/* Ctrl-C and SIGTERM arrive on a signalfd that the client watches while it waits:
	 * the first cancels the job and waits for the server to say so, the second quits. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	gfc_options_default(&o);
	o.server = a.server;
	o.server_file = a.server_file;
	o.auth_token_file = a.token_file;
	o.timeout_s = a.timeout_s;
	o.cancel_fd = signalfd(-1, &sigs, SFD_CLOEXEC);
	o.client_name = GF_VERSION;
	rc = gfc_init(&c, &o, err);
	if (rc) {
		fprintf(stderr, "gf: %s\n", err);
		/* A server file that is missing, unreadable or not one: no server to talk to. */
		rc = rc == -EACCES ? GFC_EXIT_AUTH :
		     rc == -ENOENT || rc == -EIO || rc == -EBADMSG ? GFC_EXIT_CONNECTION :
		     GFC_EXIT_USAGE;
		goto close_sfd;
	}
	rc = gfc_connect(c, err);
	if (rc) {
		fprintf(stderr, "gf: %s\n", err);
		rc = gfc_exit_status(c, rc);
		goto close_conn;
	}
	if (a.verbose)
		print_hello(c);
	switch (a.cmd) {
	case CMD_INGEST: rc = cmd_ingest(c, &a, &in, total); break;
	case CMD_ASK: rc = cmd_ask(c, &a); break;
	case CMD_CONTEXTS: rc = cmd_contexts(c, &a); break;
	case CMD_DROP: rc = cmd_drop(c, &a); break;
	case CMD_STATUS: rc = cmd_status(c, &a); break;
	default: rc = cmd_cancel(c, &a); break;
	}
close_conn:
	gfc_close(c);
close_sfd:
	if (o.cancel_fd >= 0)
		close(o.cancel_fd);
free_input:
	input_free(&in);
free_args:
	free(a.stop);
	if (fflush(stdout) && !rc) {
		fprintf(stderr, "gf: writing stdout: %s\n", strerror(errno));
		rc = GFC_EXIT_SERVER;
	}
	return rc;
}
