/*
 * gf-run — the whole GoldFinch path in one process (daemon/engine.h): ingest text into a
 * context in the paged cache store, list contexts, ask questions of a context.
 *
 *   gf-run --model M.gguf --cache-dir D [global options] ingest [--name NAME] [--resume] PATH...
 *   gf-run --model M.gguf --cache-dir D [global options] ask CONTEXT "question" [sampling]
 *   gf-run --model M.gguf --cache-dir D [global options] ask --no-context "question" [sampling]
 *   gf-run --cache-dir D ls
 *
 * The input stream of an ingest is exactly what goldfinchd builds when `gf ingest` sends
 * the same PATHs, so both give the same tokens and the same context key. One policy, one
 * implementation: the files are those of the client library's walker (gfc_walk in
 * client/gfc_walk.c: folders in byte-wise name order, version-control folders, binary
 * files, links to folders and special files skipped), and each file is rendered as the
 * daemon renders a FileStart and its text:
 *
 *     "### File: " REL "\n"   the file's bytes   "\n"
 *
 * REL is the path relative to the folder given, or the base name of a file given directly
 * (a single file too: `gf-run ingest book.txt` is `gf ingest book.txt`). PATH "-" is stdin,
 * taken as plain text with no header (like `gf ingest -`): the way to ingest a book, or any
 * stream, exactly as it is. Identical contexts are stored once: the second ingest reports
 * the first as reused.
 *
 * The stream is read 64 KiB at a time and fed to the engine in 4 KiB pieces: memory stays
 * fixed whatever the input size. SIGINT or SIGTERM during an ingest commits a checkpoint
 * and exits 1 with the command that resumes it; --resume re-reads the same files, skips
 * the bytes behind the last checkpoint (gfe_ingest_input_bytes) and continues; the result
 * is bit-identical to an uninterrupted ingest (engine.h). A SIGKILL loses only the work
 * since the last periodic checkpoint (--checkpoint-tokens).
 *
 * Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 context not found. Every error is one
 * line on stderr.
 */
#include "goldfinch_version.h"
#include "cache_store.h"
#include "engine.h"
#include "gfclient.h"
#include "goldfinch.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EX_OK = 0, EX_ERR = 1, EX_USAGE = 2, EX_NOCTX = 3 };

#define READ_BYTES (64u << 10)   /* one read from an input file */
#define FEED_BYTES (4u << 10)    /* one gfe_ingest_text call: signals are seen between them */
#define PROGRESS_EVERY 0.25      /* seconds between progress line updates */

/* The one piece of global mutable state: written by the SIGINT/SIGTERM handler, read
 * between input pieces during an ingest. */
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
	stop_signal = sig;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: gf-run --model M.gguf --cache-dir D [OPTIONS] ingest [--name NAME] [--resume] PATH...\n"
		"       gf-run --model M.gguf --cache-dir D [OPTIONS] ask CONTEXT QUESTION [SAMPLING]\n"
		"       gf-run --model M.gguf --cache-dir D [OPTIONS] ask --no-context QUESTION [SAMPLING]\n"
		"       gf-run --cache-dir D ls\n"
		"\n"
		"Ingests text into a context of the paged cache store in D, in constant memory, and\n"
		"answers questions about a context by continuing it on a copy-on-write branch (the\n"
		"stored context never changes).\n"
		"\n"
		"Options (anywhere on the line; -- ends them):\n"
		"  --model M.gguf         model written by gf-convert, with a vocabulary (ingest, ask)\n"
		"  --cache-dir D          the cache store directory (created by ingest)\n"
		"  --threads N            compute threads (default: OpenBLAS's count, the cores)\n"
		"  --chunk N              Finch-stage chunk, tokens (default 256); use the same value\n"
		"                         to resume an ingest bit-identically\n"
		"  --page-tokens N        tokens per cache page (ingest; default 4096)\n"
		"  --c-dtype f16|bf16|f32 storage type of the cache rows (ingest; default f16). A\n"
		"                         resumed ingest or a question uses the context's own type\n"
		"  --checkpoint-tokens K  commit a resumable checkpoint every K tokens (ingest;\n"
		"                         rounded up to a chunk multiple; default 262144)\n"
		"  --tier-mb N            expanded key/value tier for decode, MiB (default 512; 0 off)\n"
		"  --compute f32|bf16|auto  how a prefill multiplies (default " GF_COMPUTE_DEFAULT_NAME
		", or\n"
		"                         GOLDFINCH_COMPUTE): f32 is exact, bf16 (AVX512-BF16 CPUs)\n"
		"                         about 1.6x faster. A context is continued in the mode that\n"
		"                         ingested it\n"
		"  --help                 this text\n"
		"\n"
		"ingest PATH...: PATHs (files, directories, or - for stdin) become one byte stream,\n"
		"the very stream goldfinchd makes of `gf ingest PATH...`, so both give the same\n"
		"context. Each text file, in command-line order (a directory's recursively, in\n"
		"byte-wise name order), is written as\n"
		"    ### File: REL<newline><the file's bytes><newline>\n"
		"where REL is its path relative to the directory given, or the base name of a file\n"
		"given directly (a single file too). Skipped, with a note on stderr: version-control\n"
		"folders (.git .hg .svn .bzr _darcs CVS .jj), binary files (a NUL byte or invalid\n"
		"UTF-8 in the first 8 KiB), links to directories, special files. - is stdin, as plain\n"
		"text without a header: ingest a book as it is with `gf-run ingest - < book.txt`.\n"
		"An identical context already stored is reused (reported, not stored twice).\n"
		"  --name NAME            name the context; names are unique in a store (a name in\n"
		"                         use is refused); a reused context keeps its own name\n"
		"  --resume               continue the interrupted ingest named NAME (or the only\n"
		"                         unnamed one) from its last checkpoint: give the same PATHs\n"
		"                         (unchanged) and --chunk. With nothing to resume, a new\n"
		"                         ingest starts\n"
		"On a terminal a progress line on stderr shows tokens done, tokens/s and the ETA.\n"
		"SIGINT/SIGTERM commit a checkpoint and exit 1, printing the command to resume.\n"
		"At the end one line on stdout: context serial, name, tokens, bytes on disk, bytes per\n"
		"token, tokens/s, key prefix, and whether an identical context was reused.\n"
		"\n"
		"ask CONTEXT QUESTION: CONTEXT is a context name, #serial, or a prefix of its hex key.\n"
		"ask --no-context QUESTION: the question alone, from the model's initial state\n"
		"(what goldfinchd answers for the plain model id over HTTP, or Generate.no_context).\n"
		"QUESTION's tokens are appended to the context as given, with no prompt template\n"
		"(write the format the model expects, e.g. \"\\n\\nUser: ...\\n\\nAssistant:\"). The\n"
		"answer streams to stdout as whole UTF-8 characters; it ends at the end-of-text token,\n"
		"--max-tokens, or a --stop string (not printed). Timings go to stderr.\n"
		"  --max-tokens N         answer length limit (default 256)\n"
		"  --temperature T        0 = greedy (default 1.0)\n"
		"  --top-k K              keep the K most likely tokens (default 0 = off)\n"
		"  --top-p P              nucleus sampling, 0 < P <= 1 (default 1 = off)\n"
		"  --min-p M              drop tokens below M x the top probability (default 0 = off)\n"
		"  --presence-penalty X   subtracted once from every token already in the answer (0)\n"
		"  --frequency-penalty X  subtracted per occurrence in the answer (0); penalties look\n"
		"                         at the answer only, not at the context or the question\n"
		"  --seed S               sampling RNG seed (default 0: the same answer every run)\n"
		"  --stop STR             stop when STR appears in the answer (repeatable)\n"
		"\n"
		"ls: every context: serial, name, tokens, bytes on disk, bytes per token, key prefix,\n"
		"state (sealed, or open = interrupted ingest). Reads the store without locking it.\n"
		"\n"
		"Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 context not found; every error\n"
		"is one line on stderr.\n");
}

static int die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int die(int code, const char *fmt, ...)
{
	char line[2 * GF_ERR_LEN + 256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	for (char *p = line; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	fprintf(stderr, "gf-run: %s\n", line);
	return code;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- command line ------------------------------------------------------------------------ */

struct opts {
	const char *model, *cache_dir;
	int threads;
	int chunk;
	uint32_t page_tokens;
	cs_dtype c_dtype;
	uint64_t checkpoint_tokens;
	uint64_t tier_mb;
	bool page_set, dtype_set;
	gf_compute compute;
	bool compute_set;
	/* ingest */
	const char *name;
	bool resume;
	/* ask */
	bool no_context;
	gf_sampling samp;
	long max_tokens;
	const char **stops;
	int n_stops;
	/* positionals: the command, then its arguments */
	const char *cmd;
	char **args;
	int n_args;
	const char *ingest_opt, *ask_opt;   /* one option given of each kind, for messages */
};

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end;

	if (!s[0] || s[0] == '-')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static int parse_float(const char *s, float *out)
{
	char *end;

	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v))
		return -1;
	*out = (float)v;
	return 0;
}

/* 0, or an exit code after printing the error. */
static int parse_args(int argc, char **argv, struct opts *o)
{
	bool dashdash = false;
	uint64_t u;

	memset(o, 0, sizeof(*o));
	o->chunk = 256;
	o->page_tokens = 4096;
	o->c_dtype = CS_DTYPE_F16;
	o->checkpoint_tokens = 262144;
	o->tier_mb = 512;
	o->compute = gf_compute_default();
	o->max_tokens = 256;
	gf_sampling_defaults(&o->samp);
	o->stops = calloc((size_t)argc, sizeof(*o->stops));
	o->args = calloc((size_t)argc, sizeof(*o->args));
	if (!o->stops || !o->args)
		return die(EX_ERR, "out of memory");

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (dashdash || strncmp(a, "--", 2) != 0 || a[2] == 0) {
			if (!dashdash && strcmp(a, "--") == 0) {
				dashdash = true;
				continue;
			}
			if (!o->cmd)
				o->cmd = a;
			else
				o->args[o->n_args++] = argv[i];
			continue;
		}
		if (strcmp(a, "--resume") == 0) {
			o->resume = true;
			o->ingest_opt = a;
			continue;
		}
		if (strcmp(a, "--no-context") == 0) {
			o->no_context = true;
			o->ask_opt = a;
			continue;
		}
		if (i + 1 >= argc)
			return die(EX_USAGE, "%s needs a value (see --help)", a);
		const char *v = argv[++i];
		if (strcmp(a, "--model") == 0) {
			o->model = v;
		} else if (strcmp(a, "--cache-dir") == 0) {
			o->cache_dir = v;
		} else if (strcmp(a, "--threads") == 0) {
			if (parse_u64(v, 1, 1024, &u))
				return die(EX_USAGE, "--threads %s: not an integer in 1..1024", v);
			o->threads = (int)u;
		} else if (strcmp(a, "--chunk") == 0) {
			if (parse_u64(v, 1, 1 << 16, &u))
				return die(EX_USAGE, "--chunk %s: not an integer in 1..65536", v);
			o->chunk = (int)u;
		} else if (strcmp(a, "--page-tokens") == 0) {
			if (parse_u64(v, 1, 1 << 20, &u))
				return die(EX_USAGE, "--page-tokens %s: not an integer in 1..1048576", v);
			o->page_tokens = (uint32_t)u;
			o->page_set = true;
		} else if (strcmp(a, "--c-dtype") == 0) {
			if (strcmp(v, "f16") == 0)
				o->c_dtype = CS_DTYPE_F16;
			else if (strcmp(v, "bf16") == 0)
				o->c_dtype = CS_DTYPE_BF16;
			else if (strcmp(v, "f32") == 0)
				o->c_dtype = CS_DTYPE_F32;
			else
				return die(EX_USAGE, "--c-dtype %s: not f16, bf16 or f32", v);
			o->dtype_set = true;
		} else if (strcmp(a, "--compute") == 0) {
			char why[GF_ERR_LEN];
			if (gf_compute_parse(v, &o->compute, why))
				return die(EX_USAGE, "--compute: %s", why);
			o->compute_set = true;
		} else if (strcmp(a, "--checkpoint-tokens") == 0) {
			if (parse_u64(v, 0, UINT64_MAX / 2, &u))
				return die(EX_USAGE, "--checkpoint-tokens %s: not a non-negative integer", v);
			o->checkpoint_tokens = u;
		} else if (strcmp(a, "--tier-mb") == 0) {
			if (parse_u64(v, 0, 1ull << 30, &u))
				return die(EX_USAGE, "--tier-mb %s: not a non-negative integer", v);
			o->tier_mb = u;
		} else if (strcmp(a, "--name") == 0) {
			size_t len = strlen(v);
			if (len == 0 || len >= CS_NAME_MAX || strchr(v, '\n'))
				return die(EX_USAGE, "--name: 1..%d bytes without a newline", CS_NAME_MAX - 1);
			o->name = v;
			o->ingest_opt = a;
		} else if (strcmp(a, "--max-tokens") == 0) {
			if (parse_u64(v, 0, 1u << 30, &u))
				return die(EX_USAGE, "--max-tokens %s: not a non-negative integer", v);
			o->max_tokens = (long)u;
			o->ask_opt = a;
		} else if (strcmp(a, "--temperature") == 0 || strcmp(a, "--top-p") == 0 ||
			   strcmp(a, "--min-p") == 0 || strcmp(a, "--presence-penalty") == 0 ||
			   strcmp(a, "--frequency-penalty") == 0) {
			float *dst = strcmp(a, "--temperature") == 0 ? &o->samp.temperature
				   : strcmp(a, "--top-p") == 0 ? &o->samp.top_p
				   : strcmp(a, "--min-p") == 0 ? &o->samp.min_p
				   : strcmp(a, "--presence-penalty") == 0 ? &o->samp.presence_penalty
				   : &o->samp.frequency_penalty;
			if (parse_float(v, dst))
				return die(EX_USAGE, "%s %s: not a number", a, v);
			o->ask_opt = a;
		} else if (strcmp(a, "--top-k") == 0) {
			if (parse_u64(v, 0, INT32_MAX, &u))
				return die(EX_USAGE, "--top-k %s: not a non-negative integer", v);
			o->samp.top_k = (int32_t)u;
			o->ask_opt = a;
		} else if (strcmp(a, "--seed") == 0) {
			if (parse_u64(v, 0, UINT64_MAX, &u))
				return die(EX_USAGE, "--seed %s: not an unsigned 64-bit integer", v);
			o->samp.seed = u;
			o->ask_opt = a;
		} else if (strcmp(a, "--stop") == 0) {
			if (!v[0])
				return die(EX_USAGE, "--stop: empty string");
			o->stops[o->n_stops++] = v;
			o->ask_opt = a;
		} else {
			return die(EX_USAGE, "unknown option %s (see --help)", a);
		}
	}
	if (!o->cmd)
		return die(EX_USAGE, "no command: ingest, ask or ls (see --help)");
	if (!o->cache_dir)
		return die(EX_USAGE, "%s needs --cache-dir (see --help)", o->cmd);
	bool ingest = strcmp(o->cmd, "ingest") == 0, ask = strcmp(o->cmd, "ask") == 0;
	if (!ingest && !ask && strcmp(o->cmd, "ls") != 0)
		return die(EX_USAGE, "unknown command '%s': ingest, ask or ls (see --help)", o->cmd);
	if (o->ingest_opt && !ingest)
		return die(EX_USAGE, "%s is an option of ingest, not %s", o->ingest_opt, o->cmd);
	if (o->ask_opt && !ask)
		return die(EX_USAGE, "%s is an option of ask, not %s", o->ask_opt, o->cmd);
	if ((ingest || ask) && !o->model)
		return die(EX_USAGE, "%s needs --model (see --help)", o->cmd);
	if (ingest && o->n_args == 0)
		return die(EX_USAGE, "ingest needs at least one PATH (see --help)");
	if (ask && o->no_context && o->n_args != 1)
		return die(EX_USAGE, "ask --no-context takes QUESTION alone (%d arguments given; quote "
			   "the question)", o->n_args);
	if (ask && !o->no_context && o->n_args != 2)
		return die(EX_USAGE, "ask takes CONTEXT and QUESTION (%d argument%s given; quote "
			   "the question)", o->n_args, o->n_args == 1 ? "" : "s");
	if (!ingest && !ask && o->n_args)
		return die(EX_USAGE, "ls takes no argument ('%s' given)", o->args[0]);
	if (ask && !o->args[o->n_args - 1][0])
		return die(EX_USAGE, "empty question");
	char err[GF_ERR_LEN];
	if (ask && gf_sampling_check(&o->samp, err))
		return die(EX_USAGE, "%s", err);
	return 0;
}

static void opts_free(struct opts *o)
{
	free(o->stops);
	free(o->args);
}

static void engine_config(const struct opts *o, gfe_config *cfg)
{
	gfe_config_defaults(cfg);
	cfg->model_path = o->model;
	cfg->cache_dir = o->cache_dir;
	cfg->chunk = o->chunk;
	cfg->page_tokens = o->page_tokens;
	cfg->c_dtype = o->c_dtype;
	cfg->checkpoint_tokens = o->checkpoint_tokens;
	cfg->tier_bytes = o->tier_mb << 20;
	cfg->threads = o->threads;
	cfg->compute = o->compute;
}

/* A context is continued in the compute mode that ingested it: an engine of the other mode is
 * reopened in that one, unless --compute asked otherwise (then an error). 0, or an exit code
 * after printing the error. */
static int follow_context_compute(const struct opts *o, gfe_engine **e, gfe_config *cfg,
				  uint64_t serial, uint64_t ctx_model_id)
{
	char err[GF_ERR_LEN];
	gf_compute made;
	if (gfe_context_compute(*e, ctx_model_id, &made) || made == cfg->compute)
		return 0; /* another model's context: the engine's own check says so */
	if (o->compute_set)
		return die(EX_USAGE, "context #%" PRIu64 " was ingested with --compute %s: continue it with the same (or without --compute)",
			   serial, gf_compute_name(made));
	gfe_close(*e);
	*e = NULL;
	cfg->compute = made;
	if (gfe_open(e, cfg, err))
		return die(EX_ERR, "context #%" PRIu64 " needs %s compute: %s", serial,
			   gf_compute_name(made), err);
	return 0;
}

/* The store read-only (no lock: works beside a running ingest). *s NULL and 0 when the
 * directory does not exist and missing_ok. */
static int open_store_ro(const char *dir, bool missing_ok, cs_store **s)
{
	char err[CS_ERR_LEN] = "";
	cs_config cfg;

	*s = NULL;
	cs_config_defaults(&cfg);
	cfg.flags = CS_OPEN_RDONLY;
	int rc = cs_store_open(s, dir, &cfg, err);
	if (rc == -ENOENT && missing_ok)
		return 0;
	if (rc)
		return die(rc == -ENOENT ? EX_NOCTX : EX_ERR, "%s", err);
	return 0;
}

static void human(char *out, size_t cap, double v, const char *unit)
{
	static const char sfx[] = " kMGTP";
	int i = 0;

	while (v >= 1000 && i < 5) {
		v /= 1000;
		i++;
	}
	if (i == 0)
		snprintf(out, cap, "%.0f%s", v, unit);
	else
		snprintf(out, cap, "%.*f%c%s", v < 10 ? 2 : v < 100 ? 1 : 0, v, sfx[i], unit);
}

/* ---- ls ------------------------------------------------------------------------------------ */

static int cmd_ls(const struct opts *o)
{
	char err[CS_ERR_LEN] = "", hex[33];
	cs_ctx_info *list;
	cs_store *s;
	size_t n;
	int rc = open_store_ro(o->cache_dir, false, &s);

	if (rc)
		return rc == EX_NOCTX ? EX_ERR : rc;
	if (cs_store_list(s, &list, &n, err)) {
		cs_store_close(s);
		return die(EX_ERR, "%s", err);
	}
	printf("%6s  %-24s %12s %14s %8s  %-12s  %s\n", "SERIAL", "NAME", "TOKENS", "DISK_BYTES",
	       "B/TOKEN", "KEY", "STATE");
	for (size_t i = 0; i < n; i++) {
		const cs_ctx_info *x = &list[i];

		cs_key_hex(x->key, hex);
		printf("%6" PRIu64 "  %-24s %12" PRIu64 " %14" PRIu64 " %8.2f  %.12s  %s\n", x->serial,
		       x->name[0] ? x->name : "-", x->n_tokens, x->disk_bytes,
		       x->n_tokens ? (double)x->disk_bytes / (double)x->n_tokens : 0.0, hex,
		       x->sealed ? "sealed" : "open");
	}
	free(list);
	cs_store_close(s);
	return EX_OK;
}

/* ---- the input stream ------------------------------------------------------------------- */

/* What `gf ingest` sends for the same arguments, and hence the stream goldfinchd renders:
 * the files come from the client library's walker (gfc_walk: one policy for every tool),
 * stdin ("-") is plain text. */
struct input {
	gfc_filelist *lists;  /* one per argument; empty for "-" */
	bool *is_stdin;
	int n;
	uint64_t total;       /* rendered bytes, from the sizes at listing time; 0 with stdin */
	char **notes;         /* "PATH: why" of what the walk skipped, printed once ingesting */
	size_t n_notes, cap_notes;
	bool notes_oom;
};

static void input_free(struct input *in)
{
	for (int i = 0; i < in->n; i++)
		gfc_filelist_free(&in->lists[i]);
	free(in->lists);
	free(in->is_stdin);
	for (size_t i = 0; i < in->n_notes; i++)
		free(in->notes[i]);
	free(in->notes);
}

/* Skips are kept, not printed, during the walk: a command that fails before it ingests
 * anything says so in one line. */
static void note_skip(void *user, const char *path, const char *why)
{
	struct input *in = user;
	size_t n = strlen(path) + strlen(why) + 3;
	char *line = malloc(n);

	if (in->n_notes == in->cap_notes) {
		size_t cap = in->cap_notes ? 2 * in->cap_notes : 16;
		char **p = realloc(in->notes, cap * sizeof(*p));
		if (!p) {
			free(line);
			in->notes_oom = true;
			return;
		}
		in->notes = p;
		in->cap_notes = cap;
	}
	if (!line) {
		in->notes_oom = true;
		return;
	}
	snprintf(line, n, "%s: %s", path, why);
	in->notes[in->n_notes++] = line;
}

static void print_notes(const struct input *in)
{
	for (size_t i = 0; i < in->n_notes; i++)
		fprintf(stderr, "gf-run: skipping %s\n", in->notes[i]);
	if (in->notes_oom)
		fprintf(stderr, "gf-run: skipped more (out of memory for the list)\n");
}

static int input_list(struct input *in, char **args, int n_args)
{
	char err[GFC_ERR_LEN];
	size_t n_files = 0;
	int n_stdin = 0;

	memset(in, 0, sizeof(*in));
	in->lists = calloc((size_t)n_args, sizeof(*in->lists));
	in->is_stdin = calloc((size_t)n_args, sizeof(*in->is_stdin));
	if (!in->lists || !in->is_stdin)
		return die(EX_ERR, "out of memory listing input files");
	in->n = n_args;
	for (int i = 0; i < n_args; i++) {
		gfc_filelist_init(&in->lists[i]);
		if (strcmp(args[i], "-") == 0) {
			in->is_stdin[i] = true;
			n_stdin++;
			continue;
		}
		if (gfc_walk(&in->lists[i], args[i], note_skip, in, err))
			return die(EX_ERR, "%s", err);
		for (size_t k = 0; k < in->lists[i].n; k++)
			in->total += gfc_rendered_size(in->lists[i].files[k].rel,
						       in->lists[i].files[k].size);
		n_files += in->lists[i].n;
	}
	if (n_stdin > 1)
		return die(EX_USAGE, "stdin (-) given more than once");
	if (!n_files && !n_stdin)
		return die(EX_ERR, "nothing to ingest: no text file in the given paths");
	if (n_stdin)
		in->total = 0;   /* unknown */
	return 0;
}

/* ---- ingest --------------------------------------------------------------------------------- */

struct feed {
	gfe_ingest *in;
	uint64_t skip;          /* stream bytes still to skip (a resume) */
	uint64_t pos;           /* stream bytes seen, skipped ones included */
	uint64_t total;
	uint64_t tokens0;       /* tokens done when this run started */
	double t0, last_progress;
	bool progress;
	char err[GF_ERR_LEN];
};

static void fmt_eta(char *out, size_t cap, double s)
{
	if (!(s >= 0) || s > 3600.0 * 24 * 365)
		snprintf(out, cap, "?");
	else if (s >= 3600)
		snprintf(out, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
	else if (s >= 60)
		snprintf(out, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
	else
		snprintf(out, cap, "%ds", (int)s);
}

static void progress_line(struct feed *f, bool force)
{
	if (!f->progress)
		return;
	double t = now_s();
	if (!force && t - f->last_progress < PROGRESS_EVERY)
		return;
	f->last_progress = t;
	uint64_t done = gfe_ingest_tokens_done(f->in);
	double rate = t > f->t0 ? (double)(done - f->tokens0) / (t - f->t0) : 0;
	/* Total tokens estimated from the bytes/token ratio of the stream so far. */
	double est = f->pos ? (double)done * (double)f->total / (double)f->pos : 0;
	char a[32], b[32], c[32];
	human(a, sizeof(a), (double)done, "");
	human(b, sizeof(b), rate, "");
	fmt_eta(c, sizeof(c), rate > 0 && est > done ? (est - (double)done) / rate : -1);
	fprintf(stderr, "\r%s tokens  %s tokens/s  %3.0f%%  ETA %s\033[K", a, b,
		f->total ? 100.0 * (double)(f->pos < f->total ? f->pos : f->total) / (double)f->total
			 : 0.0,
		rate > 0 ? c : "?");
}

/* Feeds stream bytes to the engine, skipping what a resume already has. 0, -EINTR when a
 * signal asked to stop, or an engine error (f->err). */
static int feed_bytes(struct feed *f, const char *p, size_t n)
{
	while (n) {
		if (stop_signal)
			return -EINTR;
		if (f->skip) {
			size_t k = f->skip < n ? (size_t)f->skip : n;
			f->skip -= k;
			f->pos += k;
			p += k;
			n -= k;
			continue;
		}
		size_t k = n < FEED_BYTES ? n : FEED_BYTES;
		int rc = gfe_ingest_text(f->in, p, k, f->err);
		if (rc)
			return rc;
		f->pos += k;
		p += k;
		n -= k;
		progress_line(f, false);
	}
	return 0;
}

/* Feeds what fd gives until its end: a file's bytes, or stdin's. */
static int feed_fd(struct feed *f, int fd, const char *what, char *buf)
{
	for (;;) {
		ssize_t n = read(fd, buf, READ_BYTES);
		if (n < 0 && errno == EINTR) {
			if (stop_signal)
				return -EINTR;
			continue;
		}
		if (n < 0) {
			snprintf(f->err, sizeof(f->err), "%s: read: %s", what, strerror(errno));
			return -EIO;
		}
		if (n == 0)
			return 0;
		int rc = feed_bytes(f, buf, (size_t)n);
		if (rc)
			return rc;
	}
}

/* The stream goldfinchd renders from what `gf ingest` sends for the same arguments
 * (protocol/README.md): a file opens with "### File: REL\n" and is closed by "\n" when
 * the next file opens or the input ends; stdin's bytes go in as they are (inside the file
 * before them, if any, as text after a FileStart does on the wire). */
static int feed_input(struct feed *f, const struct input *in, char *buf)
{
	bool file_open = false;
	int rc;

	for (int i = 0; i < in->n; i++) {
		if (in->is_stdin[i]) {
			if ((rc = feed_fd(f, STDIN_FILENO, "stdin", buf)))
				return rc;
			continue;
		}
		for (size_t k = 0; k < in->lists[i].n; k++) {
			const gfc_file *file = &in->lists[i].files[k];
			if ((file_open && (rc = feed_bytes(f, "\n", 1))) ||
			    (rc = feed_bytes(f, GFC_FILE_HEADER, strlen(GFC_FILE_HEADER))) ||
			    (rc = feed_bytes(f, file->rel, strlen(file->rel))) ||
			    (rc = feed_bytes(f, "\n", 1)))
				return rc;
			file_open = true;
			int fd = open(file->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
			if (fd < 0) {
				snprintf(f->err, sizeof(f->err), "%s: %s", file->path, strerror(errno));
				return -EIO;
			}
			rc = feed_fd(f, fd, file->path, buf);
			close(fd);
			if (rc)
				return rc;
		}
	}
	return file_open ? feed_bytes(f, "\n", 1) : 0;
}

/* Finds the context --resume continues: the unsealed one named o->name, or the only
 * unnamed unsealed one. 0 with *serial 0 when there is none; an exit code on error. */
static int find_resumable(const struct opts *o, uint64_t *serial, cs_ctx_info *out)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_info *list;
	cs_store *s;
	size_t n, hits = 0;
	int rc = open_store_ro(o->cache_dir, true, &s);

	*serial = 0;
	if (rc || !s)
		return rc;
	if (cs_store_list(s, &list, &n, err)) {
		cs_store_close(s);
		return die(EX_ERR, "%s", err);
	}
	for (size_t i = 0; i < n; i++) {
		const cs_ctx_info *x = &list[i];
		if (o->name ? strcmp(x->name, o->name) != 0 : x->name[0] != 0)
			continue;
		if (x->sealed && o->name) {
			rc = die(EX_ERR, "context '%s' (#%" PRIu64 ", %" PRIu64 " tokens) is complete: "
				 "nothing to resume", o->name, x->serial, x->n_tokens);
			break;
		}
		if (x->sealed)
			continue;
		*serial = x->serial;
		*out = *x;
		hits++;
	}
	if (!rc && hits > 1)
		rc = die(EX_ERR, "%zu interrupted unnamed ingests in %s: remove all but one "
			 "(gf-cache rm #serial) to resume", hits, o->cache_dir);
	free(list);
	cs_store_close(s);
	return rc;
}

/* A new ingest must not take a name in use: say what to do instead. */
static int check_name_free(const struct opts *o)
{
	cs_ctx_info info;
	cs_store *s;
	int rc = open_store_ro(o->cache_dir, true, &s);

	if (rc || !s || !o->name)
		goto out_store;
	if (cs_store_lookup_name(s, o->name, &info) == 0) {
		if (info.sealed)
			rc = die(EX_ERR, "name '%s' is taken by context #%" PRIu64 " (%" PRIu64
				 " tokens): choose another --name", o->name, info.serial, info.n_tokens);
		else
			rc = die(EX_ERR, "an interrupted ingest named '%s' exists (#%" PRIu64 ", %" PRIu64
				 " tokens): add --resume to continue it, or remove it with gf-cache rm #%" PRIu64,
				 o->name, info.serial, info.n_tokens, info.serial);
	}
out_store:
	cs_store_close(s);
	return rc;
}

static void resume_hint(const struct opts *o, char *out, size_t cap)
{
	int k = snprintf(out, cap, "gf-run --model %s --cache-dir %s", o->model, o->cache_dir);
	if (o->chunk != 256 && k > 0 && (size_t)k < cap)
		k += snprintf(out + k, cap - (size_t)k, " --chunk %d", o->chunk);
	if (k > 0 && (size_t)k < cap)
		k += snprintf(out + k, cap - (size_t)k, " ingest --resume%s%s", o->name ? " --name " : "",
			      o->name ? o->name : "");
	for (int i = 0; i < o->n_args && k > 0 && (size_t)k < cap; i++)
		k += snprintf(out + k, cap - (size_t)k, " %s", o->args[i]);
}

static int cmd_ingest(struct opts *o)
{
	char err[GF_ERR_LEN] = "", hex[33], hint[1024];
	struct input inp;
	struct feed f = { 0 };
	gfe_engine *e = NULL;
	gfe_ingest *in = NULL;
	gfe_context ctx;
	char *buf = NULL;
	uint64_t serial = 0;
	cs_ctx_info rinfo;
	int rc, ret = EX_ERR;

	if ((rc = input_list(&inp, o->args, o->n_args)))
		goto out_input;
	if (o->resume) {
		if ((rc = find_resumable(o, &serial, &rinfo)))
			goto out_input;
		if (serial) {
			/* The context fixes its row type and page size; the engine must agree. */
			if ((o->dtype_set && o->c_dtype != rinfo.dtype) ||
			    (o->page_set && o->page_tokens != rinfo.page_tokens)) {
				rc = die(EX_USAGE, "context #%" PRIu64 " was started with --c-dtype %s "
					 "--page-tokens %u: resume with the same (or without them)",
					 serial, cs_dtype_name(rinfo.dtype), rinfo.page_tokens);
				goto out_input;
			}
			o->c_dtype = rinfo.dtype;
			o->page_tokens = rinfo.page_tokens;
		} else {
			fprintf(stderr, "gf-run: no interrupted ingest%s%s to resume: starting a new one\n",
				o->name ? " named " : "", o->name ? o->name : "");
		}
	}
	if (!serial && (rc = check_name_free(o)))
		goto out_input;
	buf = malloc(READ_BYTES);
	if (!buf) {
		rc = die(EX_ERR, "out of memory");
		goto out_input;
	}
	gfe_config cfg;
	engine_config(o, &cfg);
	if (gfe_open(&e, &cfg, err)) {
		rc = die(EX_ERR, "%s", err);
		goto out_input;
	}
	if (serial && (rc = follow_context_compute(o, &e, &cfg, serial, rinfo.model_id)))
		goto out_engine;
	if (!gfe_tokenizer(e)) {
		rc = die(EX_ERR, "%s: the model has no vocabulary (convert it with --vocab)", o->model);
		goto out_engine;
	}
	if (serial ? gfe_ingest_resume(e, serial, &in, err)
		   : gfe_ingest_begin(e, o->name, &in, err)) {
		rc = die(EX_ERR, "%s", err);
		goto out_engine;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;   /* no SA_RESTART: a blocked read returns EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	f.in = in;
	f.skip = gfe_ingest_input_bytes(in);
	f.total = inp.total;
	f.tokens0 = gfe_ingest_tokens_done(in);
	f.t0 = now_s();
	f.progress = isatty(STDERR_FILENO);
	const uint64_t resumed_bytes = f.skip;
	print_notes(&inp);
	rc = feed_input(&f, &inp, buf);
	if (rc == -EINTR) {
		int sig = stop_signal;
		if (f.progress)
			fputs("\r\033[K", stderr);
		resume_hint(o, hint, sizeof(hint));
		if (gfe_ingest_checkpoint(in, err))
			rc = die(EX_ERR, "interrupted by signal %d; the checkpoint failed (%s); the last "
				 "periodic checkpoint holds %" PRIu64 " tokens: resume with: %s", sig, err,
				 gfe_ingest_committed(in), hint);
		else
			rc = die(EX_ERR, "interrupted by signal %d: %" PRIu64 " tokens committed to "
				 "context #%" PRIu64 "; resume with: %s", sig, gfe_ingest_committed(in),
				 gfe_ingest_serial(in), hint);
		goto out_ingest;
	}
	if (rc) {
		if (f.progress)
			fputs("\r\033[K", stderr);
		rc = die(EX_ERR, "%s", f.err[0] ? f.err : "ingest failed");
		goto out_ingest;
	}
	if (f.skip) {
		if (f.progress)
			fputs("\r\033[K", stderr);
		rc = die(EX_ERR, "the input is %" PRIu64 " bytes but the interrupted ingest had read "
			 "%" PRIu64 ": give the same files, unchanged", f.pos, resumed_bytes);
		goto out_ingest;
	}
	if (f.progress) {
		progress_line(&f, true);
		fprintf(stderr, "  finishing");
	}
	int frc = gfe_ingest_finish(in, &ctx, NULL, err);
	double t_end = now_s();
	if (f.progress)
		fputs("\r\033[K", stderr);
	if (frc) {
		rc = die(EX_ERR, "%s", err);
		goto out_ingest;
	}
	/* Tokens the finish ran (the last partial chunk) count too. */
	const uint64_t ran = ctx.n_tokens - f.tokens0;
	cs_ctx_info info;
	const char *name = "-";
	if (cs_store_info(gfe_store(e), ctx.serial, &info, NULL) == 0 && info.name[0])
		name = info.name;
	cs_key_hex(ctx.key, hex);
	printf("%s #%" PRIu64 " %s: %" PRIu64 " tokens, %" PRIu64 " bytes on disk (%.2f bytes/token), "
	       "%.0f tokens/s, key %.12s%s\n", ctx.reused ? "reused" : "ingested", ctx.serial, name,
	       ctx.n_tokens, ctx.disk_bytes,
	       ctx.n_tokens ? (double)ctx.disk_bytes / (double)ctx.n_tokens : 0.0,
	       t_end > f.t0 ? (double)ran / (t_end - f.t0) : 0.0, hex,
	       ctx.reused ? " (an identical context was already stored)" : "");
	rc = 0;
	ret = EX_OK;
out_ingest:
	gfe_ingest_free(in);
out_engine:
	gfe_close(e);
out_input:
	free(buf);
	input_free(&inp);
	return rc ? rc : ret;
}

/* ---- ask ------------------------------------------------------------------------------------ */

/* Resolves CONTEXT: a name, #serial, or a unique prefix of the hex key. */
static int resolve(const struct opts *o, const char *id, cs_ctx_info *out)
{
	char err[CS_ERR_LEN] = "", hex[33];
	cs_ctx_info *list;
	cs_store *s;
	size_t n, hits = 0, len = strlen(id);
	int rc = open_store_ro(o->cache_dir, true, &s);

	if (rc)
		return rc;
	if (!s)
		return die(EX_NOCTX, "%s: no such context (no store at %s)", id, o->cache_dir);
	if (cs_store_lookup_name(s, id, out) == 0)
		goto out_store;
	if (id[0] == '#') {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(id + 1, &end, 10);
		if (!id[1] || *end || errno)
			rc = die(EX_USAGE, "%s: not a serial number", id);
		else if (cs_store_info(s, v, out, err))
			rc = die(EX_NOCTX, "%s: no such context in %s", id, o->cache_dir);
		goto out_store;
	}
	bool hexid = len > 0 && len <= 32;
	for (size_t i = 0; i < len; i++)
		hexid = hexid && strchr("0123456789abcdefABCDEF", id[i]);
	if (!hexid) {
		rc = die(EX_NOCTX, "%s: no context of that name in %s", id, o->cache_dir);
		goto out_store;
	}
	if (cs_store_list(s, &list, &n, err)) {
		rc = die(EX_ERR, "%s", err);
		goto out_store;
	}
	for (size_t i = 0; i < n; i++) {
		cs_key_hex(list[i].key, hex);
		if (!strncasecmp(hex, id, len)) {
			*out = list[i];
			hits++;
		}
	}
	free(list);
	if (hits > 1)
		rc = die(EX_USAGE, "%s: matches %zu contexts, give more digits", id, hits);
	else if (!hits)
		rc = die(EX_NOCTX, "%s: no such context in %s", id, o->cache_dir);
out_store:
	cs_store_close(s);
	return rc;
}

/* The answer on its way to stdout, held back where it could be the start of a stop string. */
struct answer {
	char *buf;
	size_t n, cap;
	const char **stops;
	int n_stops;
	bool stopped;
};

static int answer_write(const char *p, size_t n)
{
	if (n && fwrite(p, 1, n, stdout) != n)
		return -EIO;
	return fflush(stdout) ? -EIO : 0;
}

/* Appends bytes; writes what can no longer be part of a stop string. */
static int answer_push(struct answer *a, const uint8_t *p, size_t n, bool final)
{
	if (!a->buf || a->n + n > a->cap) {
		size_t cap = (a->n + n) * 2 + 256;
		char *b = realloc(a->buf, cap);
		if (!b)
			return -ENOMEM;
		a->buf = b;
		a->cap = cap;
	}
	memcpy(a->buf + a->n, p, n);
	a->n += n;
	size_t cut = a->n, hold = 0;
	for (int i = 0; i < a->n_stops; i++) {
		const size_t ls = strlen(a->stops[i]);
		const char *hit = memmem(a->buf, a->n, a->stops[i], ls);
		if (hit && (size_t)(hit - a->buf) < cut) {
			cut = (size_t)(hit - a->buf);
			a->stopped = true;
		}
		/* Longest tail of the buffer that begins the stop string. */
		for (size_t k = ls - 1 < a->n ? ls - 1 : a->n; k > hold; k--)
			if (!memcmp(a->buf + a->n - k, a->stops[i], k)) {
				hold = k;
				break;
			}
	}
	if (a->stopped)
		return answer_write(a->buf, cut);
	if (final)
		hold = 0;
	size_t out = a->n - hold;
	int rc = answer_write(a->buf, out);
	memmove(a->buf, a->buf + out, hold);
	a->n = hold;
	return rc;
}

static int cmd_ask(struct opts *o)
{
	char err[GF_ERR_LEN] = "";
	const char *id = o->no_context ? NULL : o->args[0], *question = o->args[o->n_args - 1];
	gfe_engine *e = NULL;
	gfe_session *s = NULL;
	gf_sampler smp = { 0 };
	bool smp_ok = false;
	gf_decoder dec;
	struct answer ans = { .stops = o->stops, .n_stops = o->n_stops };
	int32_t *q = NULL;
	float *logits = NULL;
	uint8_t text[GF_TOKEN_MAX_BYTES + 16];
	size_t n_q = 0, n_text;
	cs_ctx_info info;
	int rc;

	memset(&info, 0, sizeof(info));
	if (o->no_context) {
		/* The question alone, from the model's initial state: the store's layout and
		 * --compute as given. */
		info.serial = GFE_NO_CONTEXT;
		info.sealed = true;
	} else if ((rc = resolve(o, id, &info)))
		return rc;
	if (!info.sealed)
		return die(EX_ERR, "%s: context #%" PRIu64 " is an interrupted ingest (%" PRIu64
			   " tokens): finish it with ingest --resume", id, info.serial, info.n_tokens);
	gfe_config cfg;
	engine_config(o, &cfg);
	if (!o->no_context) {
		cfg.c_dtype = info.dtype;   /* the engine reads rows of the context's type */
		cfg.page_tokens = info.page_tokens;
	}
	const double t0 = now_s();
	if (gfe_open(&e, &cfg, err))
		return die(EX_ERR, "%s", err);
	if (!o->no_context && (rc = follow_context_compute(o, &e, &cfg, info.serial, info.model_id))) {
		gfe_close(e);
		return rc;
	}
	const double t_open = now_s();
	const gf_tokenizer *tk = gfe_tokenizer(e);
	const int32_t V = gfe_model(e)->cfg.vocab_size;
	if (!tk) {
		rc = die(EX_ERR, "%s: the model has no vocabulary (convert it with --vocab)", o->model);
		goto out_engine;
	}
	if (gf_tokenize(tk, (const uint8_t *)question, strlen(question), &q, &n_q)) {
		rc = die(EX_ERR, "out of memory tokenizing the question");
		goto out_engine;
	}
	if (n_q == 0) {
		rc = die(EX_USAGE, "empty question");
		goto out_engine;
	}
	logits = malloc(sizeof(float) * (size_t)V);
	if (!logits || gf_sampler_init(&smp, V, &o->samp)) {
		rc = die(EX_ERR, "out of memory for the sampler");
		goto out_engine;
	}
	smp_ok = true;
	gf_decoder_init(&dec, tk);
	if (gfe_session_open(e, info.serial, &s, err) ||
	    gfe_session_prefill(s, q, n_q, logits, err)) {
		rc = die(EX_ERR, "%s", err);
		goto out_engine;
	}
	const double t_prefill = now_s();
	double t_first = t_prefill;
	long n_gen = 0;
	const char *why = "max tokens";
	for (long i = 0; i < o->max_tokens; i++) {
		int32_t tok = gf_sampler_sample(&smp, logits);
		if (i == 0)
			t_first = now_s();
		if (tok == 0) {
			why = "end of text";
			break;
		}
		gf_sampler_accept(&smp, tok);
		n_gen++;
		if (gf_decoder_push(&dec, tok, text, sizeof(text), &n_text)) {
			rc = die(EX_ERR, "sampled token %d has no bytes in the vocabulary", tok);
			goto out_engine;
		}
		if (answer_push(&ans, text, n_text, false)) {
			rc = die(EX_ERR, "writing the answer: %s", strerror(errno));
			goto out_engine;
		}
		if (ans.stopped) {
			why = "stop string";
			break;
		}
		if (i + 1 < o->max_tokens && gfe_session_step(s, tok, logits, err)) {
			rc = die(EX_ERR, "%s", err);
			goto out_engine;
		}
	}
	if (!ans.stopped) {
		gf_decoder_flush(&dec, text, sizeof(text), &n_text);
		if (answer_push(&ans, text, n_text, true)) {
			rc = die(EX_ERR, "writing the answer: %s", strerror(errno));
			goto out_engine;
		}
	}
	if (isatty(STDOUT_FILENO))
		answer_write("\n", 1);
	const double t_end = now_s();
	fprintf(stderr, "gf-run: context #%" PRIu64 " (%" PRIu64 " tokens) + %zu question tokens; "
		"load %.2f s, prefill %.3f s, first token %.3f s, %ld tokens in %.3f s "
		"(%.1f tokens/s), stopped at %s\n",
		info.serial, info.n_tokens, n_q, t_open - t0, t_prefill - t_open,
		t_first - t_open, n_gen, t_end - t_first,
		n_gen > 1 && t_end > t_first ? (double)(n_gen - 1) / (t_end - t_first) : 0.0, why);
	rc = EX_OK;
out_engine:
	gfe_session_free(s);
	if (smp_ok)
		gf_sampler_free(&smp);
	free(ans.buf);
	free(logits);
	free(q);
	gfe_close(e);
	return rc;
}

int main(int argc, char **argv)
{
	struct opts o;
	int rc;

	if (gf_version_asked(argc, argv, "gf-run"))
		return 0;

	gf_blas_prefer_avx512(argv);
	for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return EX_OK;
		}
	rc = parse_args(argc, argv, &o);
	if (!rc) {
		if (strcmp(o.cmd, "ls") == 0)
			rc = cmd_ls(&o);
		else if (strcmp(o.cmd, "ingest") == 0)
			rc = cmd_ingest(&o);
		else
			rc = cmd_ask(&o);
	}
	opts_free(&o);
	return rc;
}
