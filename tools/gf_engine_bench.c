/*
 * gf-engine-bench — the engine's promises measured: constant-memory ingest, cache
 * bytes per token, reuse of an ingested context, decode over the paged cache.
 *
 *   gf-engine-bench memory         --model M.gguf --tokens N
 *   gf-engine-bench memory-compare --model M.gguf [--small 10000] [--large 1000000]
 *   gf-engine-bench size           --model M.gguf --tokens N [--text FILE]...
 *   gf-engine-bench reuse          --model M.gguf --tokens 100000
 *   gf-engine-bench decode         --model M.gguf --contexts 1000,10000,100000
 *   gf-engine-bench batch          --model M.gguf --tokens 1000
 *
 * Each prints human-readable lines, then one JSON object on the last line ("bench" names
 * the command; sizes in bytes, times in seconds, rates per second):
 *   memory          tokens, peak_rss_bytes (getrusage), stream_rss_peak_bytes (before the
 *                   GOLD tail), loaded_rss_bytes (model open, weights pre-faulted),
 *                   tokens_per_s, seconds, disk_bytes, threads, ram_cache_bytes
 *   memory-compare  small_/large_ tokens, peak_rss_bytes, stream_rss_peak_bytes,
 *                   tokens_per_s; rss_ratio, stream_rss_ratio, within_5_percent
 *   size            tokens, disk_bytes_per_token (pages and index), ..._with_snapshot,
 *                   raw_bytes_per_token, llama_f16_bytes_per_token, ratio_to_llama (and
 *                   _raw, _with_snapshot), snapshot_bytes, other_page_sizes[]
 *   reuse           ingest_s, notier_ttft_s, cold_ttft_s, cold_open_s, warm_ttft_s, cold_speedup,
 *                   notier_speedup, warm_speedup, warm_tier_hit_rate, tier_bytes
 *   decode          read_gbs, contexts[]: tier_off_/tier_on_ tokens_per_s, steps and
 *                   question_s (time to the first answer token),
 *                   tier_hits, tier_misses, tier_hit_rate, page_cache_hit_rate_min,
 *                   kv_bytes_per_token, bound_tokens_per_s, fraction_of_bound;
 *                   longest_fraction_of_bound
 *   batch           context_tokens, threads, decode_bytes_per_step, batches[]: sessions,
 *                   steps, step_s, tokens_per_s (aggregate), speedup (over one session)
 * Every object also says "compute" (f32 or bf16, --compute) and, but memory-compare's,
 * "kernels" (gf_model_isa_name).
 * Ratios that matter are measured within one run, so that a busy shared machine slows both
 * sides of each ratio alike. A benchmark, not a test: it asserts nothing.
 */
#include "goldfinch_version.h"
#include "bench_util.h"
#include "engine.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TEXTS 4096

struct opts {
	const char *cmd;
	const char *model;
	const char *cache_dir;     /* NULL: a fresh mkdtemp, removed at exit */
	const char *texts[MAX_TEXTS];
	int n_texts;
	const char *contexts;      /* decode: comma-separated lengths */
	const char *repack;        /* size: other page sizes to store the same rows with */
	uint64_t tokens;
	uint64_t small, large;     /* memory-compare */
	uint64_t tier_bytes;       /* 0: enough for the whole context */
	uint64_t ram_cache;        /* the store's RAM page cache; 0: cache_store's default */
	uint64_t seed;
	int threads;               /* ingest (and reuse's questions) */
	int decode_threads;        /* decode steps and the bandwidth they are held against */
	int piece;                 /* tokens per gfe_ingest_tokens call */
	int question;              /* question tokens */
	int steps;                 /* decode steps per measurement */
	double step_budget;        /* seconds per decode measurement, at least 2 steps */
	int chunk;
	uint32_t page_tokens;
	cs_dtype dtype;
	gf_compute compute;        /* every engine of the run; default gf_compute_default() */
	bool keep;
	bool no_tier_off;          /* decode: skip the (slow) tier-off runs */
};

/* ---- small helpers ------------------------------------------------------------------------- */

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-')
		return -EINVAL;
	*out = v;
	return 0;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int die(const char *fmt, ...)
{
	va_list ap;
	fputs("gf-engine-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 1;
}

/* Resident set now, from /proc/self/statm (0 if unreadable). */
static uint64_t rss_now(void)
{
	unsigned long size, resident;
	FILE *f = fopen("/proc/self/statm", "r");
	if (!f)
		return 0;
	int ok = fscanf(f, "%lu %lu", &size, &resident) == 2;
	fclose(f);
	return ok ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

static uint64_t rss_peak(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)ru.ru_maxrss * 1024u;
}

/* Bytes this process caused to be read from the storage layer (/proc/self/io read_bytes):
 * the store has no page-cache counters, so disk traffic is what tells hits from misses. */
static uint64_t disk_read_bytes(void)
{
	char line[128];
	uint64_t v = 0;
	FILE *f = fopen("/proc/self/io", "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "read_bytes: %" SCNu64, &v) == 1)
			break;
	fclose(f);
	return v;
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

static void random_tokens(uint64_t *s, int32_t *tok, size_t n, int32_t vocab)
{
	for (size_t i = 0; i < n; i++)
		tok[i] = (int32_t)(rng_next(s) % (uint64_t)vocab);
}

static int32_t argmax(const float *x, int n)
{
	int32_t best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

/* Touches every page of the model's file mapping, so that the resident set counts all the
 * weights whatever tokens a run happens to embed (random ids touch a length-dependent share
 * of the embedding rows: that is the mapping filling in, not the ingest growing). */
static void prefault_model(const gf_model *m)
{
	const volatile uint8_t *p = m->gguf.tensors.map;
	uint8_t sum = 0;
	for (size_t i = 0; p && i < m->gguf.tensors.map_len; i += 4096)
		sum += p[i];
	(void)sum;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	remove(path);
	return 0;
}

static void rm_tree(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int drop_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)ftw;
	if (flag == FTW_F && S_ISREG(sb->st_mode)) {
		int fd = open(path, O_RDONLY);
		if (fd >= 0) {
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
			close(fd);
		}
	}
	return 0;
}

/* Evicts the store's files from the kernel's page cache (committed files are fsynced, so
 * their pages are clean and go): a cold read of a context really reads the disk. */
static void drop_kernel_cache(const char *dir)
{
	nftw(dir, drop_entry, 16, FTW_PHYS);
}

static void print_json(cJSON *j)
{
	char *s = cJSON_PrintUnformatted(j);
	printf("%s\n", s ? s : "{}");
	fflush(stdout);
	free(s);
	cJSON_Delete(j);
}

static void json_model(cJSON *j, const struct opts *o, const gf_model *m)
{
	const gf_config *c = &m->cfg;
	cJSON_AddStringToObject(j, "model", o->model);
	cJSON_AddStringToObject(j, "compute", gf_compute_name(m->compute));
	cJSON_AddStringToObject(j, "kernels", gf_model_isa_name(m));
	cJSON_AddNumberToObject(j, "n_layer", c->n_layer);
	cJSON_AddNumberToObject(j, "n_embd", c->n_embd);
	cJSON_AddNumberToObject(j, "n_gold", c->n_layer - c->first_gold);
	cJSON_AddNumberToObject(j, "vocab", c->vocab_size);
}

/* ---- a bench run: the cache directory and the engine ---------------------------------------- */

struct run {
	const struct opts *o;
	char dir[4096];
	bool own_dir;
	gfe_engine *e;
};

static int run_dir(struct run *r, const struct opts *o)
{
	memset(r, 0, sizeof(*r));
	r->o = o;
	if (o->cache_dir) {
		if (mkdir(o->cache_dir, 0755) && errno != EEXIST)
			return die("%s: cannot create: %s", o->cache_dir, strerror(errno));
		snprintf(r->dir, sizeof(r->dir), "%s", o->cache_dir);
		return 0;
	}
	const char *tmp = getenv("TMPDIR");
	snprintf(r->dir, sizeof(r->dir), "%s/gf-engine-bench.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(r->dir))
		return die("%s: mkdtemp: %s", r->dir, strerror(errno));
	r->own_dir = true;
	return 0;
}

static int run_open(struct run *r, int threads, uint64_t tier_bytes)
{
	char err[GF_ERR_LEN];
	gfe_config cfg;
	gfe_config_defaults(&cfg);
	cfg.model_path = r->o->model;
	cfg.cache_dir = r->dir;
	cfg.threads = threads;
	cfg.tier_bytes = tier_bytes;
	cfg.ram_cache_bytes = r->o->ram_cache;
	cfg.c_dtype = r->o->dtype;
	cfg.compute = r->o->compute;
	if (r->o->chunk > 0)
		cfg.chunk = r->o->chunk;
	if (r->o->page_tokens > 0)
		cfg.page_tokens = r->o->page_tokens;
	if (gfe_open(&r->e, &cfg, err))
		return die("%s", err);
	return 0;
}

static void run_close_engine(struct run *r)
{
	gfe_close(r->e);
	r->e = NULL;
}

static void run_end(struct run *r)
{
	run_close_engine(r);
	if (r->own_dir && !r->o->keep)
		rm_tree(r->dir);
	else if (r->dir[0])
		printf("cache directory kept: %s\n", r->dir);
}

struct ingest_result {
	gfe_context ctx;
	cs_ctx_info info;
	double seconds;          /* begin to sealed, the GOLD tail included */
	double stream_seconds;   /* the Finch stage and page writes, without the tail */
	uint64_t stream_rss_peak;/* largest resident set sampled while streaming */
};

/* A sealed context of exactly these n random ids (seeded) already in the store: true, with
 * its info. Lets repeated decode runs on a kept --cache-dir skip the ingest. */
static bool find_random(struct run *r, uint64_t n, uint64_t seed, int32_t *buf,
			cs_ctx_info *info)
{
	const gf_config *c = &gfe_model(r->e)->cfg;
	cs_hasher *h;
	uint64_t s = seed;
	/* Contexts are keyed by the model id of the engine's compute mode (engine.h). */
	if (cs_hash_init(&h, gfe_key_model_id(gfe_model(r->e))))
		return false;
	for (uint64_t done = 0; done < n;) {
		size_t k = n - done < (uint64_t)r->o->piece ? (size_t)(n - done) : (size_t)r->o->piece;
		random_tokens(&s, buf, k, c->vocab_size);
		cs_hash_update(h, (const uint32_t *)buf, k);
		done += k;
	}
	cs_key key = cs_hash_final(h);
	cs_hash_free(h);
	return cs_store_lookup(gfe_store(r->e), key, info) == 0 && info->sealed &&
	       info->n_tokens == n;
}

/* Ingests n random ids (seeded) in pieces of o->piece tokens; with reuse, takes the context
 * from the store when it is there already (res->seconds is then 0). */
static int ingest_random(struct run *r, uint64_t n, uint64_t seed, bool reuse,
			 struct ingest_result *res)
{
	const gf_config *c = &gfe_model(r->e)->cfg;
	char err[GF_ERR_LEN];
	gfe_ingest *in = NULL;
	int32_t *buf = malloc(sizeof(int32_t) * (size_t)r->o->piece);
	uint64_t s = seed;
	int rc = 1;
	memset(res, 0, sizeof(*res));
	if (!buf)
		return die("out of memory");
	if (reuse && find_random(r, n, seed, buf, &res->info)) {
		res->ctx.serial = res->info.serial;
		res->ctx.key = res->info.key;
		res->ctx.n_tokens = res->info.n_tokens;
		res->ctx.disk_bytes = res->info.disk_bytes;
		res->ctx.reused = true;
		free(buf);
		return 0;
	}
	double t0 = now();
	if (gfe_ingest_begin(r->e, NULL, &in, err)) {
		die("ingest: %s", err);
		goto out_buf;
	}
	for (uint64_t done = 0; done < n;) {
		size_t k = n - done < (uint64_t)r->o->piece ? (size_t)(n - done) : (size_t)r->o->piece;
		random_tokens(&s, buf, k, c->vocab_size);
		if (gfe_ingest_tokens(in, buf, k, err)) {
			die("ingest at token %" PRIu64 ": %s", done, err);
			goto out_ingest;
		}
		done += k;
		uint64_t rss = rss_now();
		res->stream_rss_peak = rss > res->stream_rss_peak ? rss : res->stream_rss_peak;
	}
	res->stream_seconds = now() - t0;
	if (gfe_ingest_finish(in, &res->ctx, NULL, err)) {
		die("ingest finish: %s", err);
		goto out_ingest;
	}
	res->seconds = now() - t0;
	if (cs_store_info(gfe_store(r->e), res->ctx.serial, &res->info, err)) {
		die("%s", err);
		goto out_ingest;
	}
	rc = 0;
out_ingest:
	gfe_ingest_free(in);
out_buf:
	free(buf);
	return rc;
}

/* ---- memory --------------------------------------------------------------------------------- */

static int cmd_memory(const struct opts *o)
{
	struct run r;
	struct ingest_result res;
	if (run_dir(&r, o))
		return 1;
	int rc = run_open(&r, o->threads, 0);
	if (rc)
		goto out;
	const gf_config *c = &gfe_model(r.e)->cfg;
	prefault_model(gfe_model(r.e));
	const uint64_t base = rss_now();
	printf("model: %d layers (%d GOLD), n_embd %d, vocab %d; %d thread(s); store %s%s\n",
	       c->n_layer, c->n_layer - c->first_gold, c->n_embd, c->vocab_size, o->threads,
	       cs_store_backend_name(gfe_store(r.e)),
	       cs_store_direct(gfe_store(r.e)) ? " O_DIRECT" : " buffered");
	printf("resident after open (weights pre-faulted): %.1f MiB; store RAM page cache limit %s\n",
	       base / 1048576.0, o->ram_cache ? "set by --ram-cache" : "cache_store's default");
	if ((rc = ingest_random(&r, o->tokens, o->seed, false, &res)))
		goto out;
	const uint64_t peak = rss_peak();
	const double tps = (double)res.ctx.n_tokens / res.seconds;
	printf("ingested %" PRIu64 " tokens in %.2f s: %.0f tokens/s (Finch stage and pages %.2f s, "
	       "GOLD tail and seal %.2f s)\n",
	       res.ctx.n_tokens, res.seconds, tps, res.stream_seconds,
	       res.seconds - res.stream_seconds);
	printf("peak RSS %.1f MiB (while streaming %.1f MiB; %.1f MiB above the loaded model)\n",
	       peak / 1048576.0, res.stream_rss_peak / 1048576.0,
	       ((double)peak - (double)base) / 1048576.0);
	printf("disk: %" PRIu64 " bytes (%.1f per token)\n", res.ctx.disk_bytes,
	       (double)res.ctx.disk_bytes / (double)res.ctx.n_tokens);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "bench", "memory");
	json_model(j, o, gfe_model(r.e));
	cJSON_AddNumberToObject(j, "tokens", (double)res.ctx.n_tokens);
	cJSON_AddNumberToObject(j, "peak_rss_bytes", (double)peak);
	cJSON_AddNumberToObject(j, "stream_rss_peak_bytes", (double)res.stream_rss_peak);
	cJSON_AddNumberToObject(j, "loaded_rss_bytes", (double)base);
	cJSON_AddNumberToObject(j, "tokens_per_s", tps);
	cJSON_AddNumberToObject(j, "seconds", res.seconds);
	cJSON_AddNumberToObject(j, "disk_bytes", (double)res.ctx.disk_bytes);
	cJSON_AddNumberToObject(j, "threads", o->threads);
	cJSON_AddNumberToObject(j, "ram_cache_bytes", (double)o->ram_cache);
	gfe_memory mem;
	gfe_memory_get(r.e, &mem);
	cJSON_AddNumberToObject(j, "weight_bytes", (double)mem.weight_bytes);
	cJSON_AddNumberToObject(j, "page_cache_budget_bytes", (double)mem.page_cache_budget);
	print_json(j);
out:
	run_end(&r);
	return rc;
}

/* Runs this program as `memory` in a child and parses the child's JSON line. */
static int memory_child(const struct opts *o, uint64_t tokens, double *peak, double *tps,
			double *stream_peak)
{
	char tok_s[32], thr_s[16], seed_s[32], piece_s[16], ram_s[32], dir_s[4096];
	const char *compute = gf_compute_name(o->compute);
	const char *argv[24];
	int n = 0, fds[2];
	snprintf(tok_s, sizeof(tok_s), "%" PRIu64, tokens);
	snprintf(thr_s, sizeof(thr_s), "%d", o->threads);
	snprintf(seed_s, sizeof(seed_s), "%" PRIu64, o->seed);
	snprintf(piece_s, sizeof(piece_s), "%d", o->piece);
	argv[n++] = "gf-engine-bench";
	argv[n++] = "memory";
	argv[n++] = "--model";
	argv[n++] = o->model;
	argv[n++] = "--tokens";
	argv[n++] = tok_s;
	argv[n++] = "--threads";
	argv[n++] = thr_s;
	argv[n++] = "--seed";
	argv[n++] = seed_s;
	argv[n++] = "--piece";
	argv[n++] = piece_s;
	argv[n++] = "--compute"; /* resolved here: both children run the same mode */
	argv[n++] = compute;
	if (o->ram_cache) {
		snprintf(ram_s, sizeof(ram_s), "%" PRIu64, o->ram_cache);
		argv[n++] = "--ram-cache";
		argv[n++] = ram_s;
	}
	if (o->cache_dir) {
		snprintf(dir_s, sizeof(dir_s), "%s/n%" PRIu64, o->cache_dir, tokens);
		argv[n++] = "--cache-dir";
		argv[n++] = dir_s;
	}
	argv[n] = NULL;
	if (pipe(fds))
		return die("pipe: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return die("fork: %s", strerror(errno));
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		close(fds[0]);
		close(fds[1]);
		execv("/proc/self/exe", (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	FILE *f = fdopen(fds[0], "r");
	char line[8192], last[8192] = "";
	while (f && fgets(line, sizeof(line), f)) {
		printf("  [%" PRIu64 "] %s", tokens, line);
		fflush(stdout);
		snprintf(last, sizeof(last), "%s", line);
	}
	if (f)
		fclose(f);
	int status;
	waitpid(pid, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return die("child run with %" PRIu64 " tokens failed", tokens);
	cJSON *j = cJSON_Parse(last);
	const cJSON *p = cJSON_GetObjectItem(j, "peak_rss_bytes");
	const cJSON *t = cJSON_GetObjectItem(j, "tokens_per_s");
	const cJSON *sp = cJSON_GetObjectItem(j, "stream_rss_peak_bytes");
	int rc = cJSON_IsNumber(p) && cJSON_IsNumber(t) && cJSON_IsNumber(sp) ? 0 : 1;
	if (!rc) {
		*peak = p->valuedouble;
		*tps = t->valuedouble;
		*stream_peak = sp->valuedouble;
	} else {
		die("child run with %" PRIu64 " tokens printed no JSON figures", tokens);
	}
	cJSON_Delete(j);
	return rc;
}

static int cmd_memory_compare(const struct opts *o)
{
	double peak_s, peak_l, tps_s, tps_l, sp_s, sp_l;
	if (o->cache_dir && mkdir(o->cache_dir, 0755) && errno != EEXIST)
		return die("%s: cannot create: %s", o->cache_dir, strerror(errno));
	printf("peak RSS of ingesting %" PRIu64 " and %" PRIu64 " tokens, each in its own process; "
	       "store RAM page cache limit: %s\n", o->small, o->large,
	       o->ram_cache ? "--ram-cache" : "cache_store's default (256 MiB)");
	if (memory_child(o, o->small, &peak_s, &tps_s, &sp_s) ||
	    memory_child(o, o->large, &peak_l, &tps_l, &sp_l))
		return 1;
	const double ratio = peak_l / peak_s;
	printf("peak RSS: %" PRIu64 " tokens %.1f MiB, %" PRIu64 " tokens %.1f MiB: ratio %.4f "
	       "(%+.2f%%; target within 5%%)\n",
	       o->small, peak_s / 1048576.0, o->large, peak_l / 1048576.0, ratio,
	       100.0 * (ratio - 1.0));
	printf("while streaming (Finch stage and page writes, before the GOLD tail): %.1f and %.1f MiB: "
	       "ratio %.4f\n", sp_s / 1048576.0, sp_l / 1048576.0, sp_l / sp_s);
	printf("tokens/s: %.0f and %.0f\n", tps_s, tps_l);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "bench", "memory-compare");
	cJSON_AddStringToObject(j, "model", o->model);
	cJSON_AddStringToObject(j, "compute", gf_compute_name(o->compute));
	cJSON_AddNumberToObject(j, "small_tokens", (double)o->small);
	cJSON_AddNumberToObject(j, "large_tokens", (double)o->large);
	cJSON_AddNumberToObject(j, "small_peak_rss_bytes", peak_s);
	cJSON_AddNumberToObject(j, "large_peak_rss_bytes", peak_l);
	cJSON_AddNumberToObject(j, "small_stream_rss_peak_bytes", sp_s);
	cJSON_AddNumberToObject(j, "large_stream_rss_peak_bytes", sp_l);
	cJSON_AddNumberToObject(j, "rss_ratio", ratio);
	cJSON_AddNumberToObject(j, "small_tokens_per_s", tps_s);
	cJSON_AddNumberToObject(j, "large_tokens_per_s", tps_l);
	cJSON_AddNumberToObject(j, "stream_rss_ratio", sp_l / sp_s);
	cJSON_AddNumberToObject(j, "ram_cache_bytes", (double)o->ram_cache);
	cJSON_AddBoolToObject(j, "within_5_percent", ratio <= 1.05 && ratio >= 0.95);
	print_json(j);
	return 0;
}

/* ---- size ----------------------------------------------------------------------------------- */

/* Stores the rows of context `serial` again with pages of page_tokens tokens, in a scratch
 * store, and gives that copy's info: the disk cost of another page size, without running the
 * model again (the rows and ids are the same bytes). */
static int repack(cs_store *src, uint64_t serial, uint32_t page_tokens, cs_ctx_info *out)
{
	char err[CS_ERR_LEN], dir[4096];
	const char *tmp = getenv("TMPDIR");
	const size_t piece = 4096;
	cs_reader *r = NULL;
	cs_store *dst = NULL;
	cs_writer *w = NULL;
	cs_ctx_info in;
	void *rows = NULL;
	uint32_t *tok = NULL;
	int rc = 1;
	snprintf(dir, sizeof(dir), "%s/gf-engine-bench-repack.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		return die("%s: mkdtemp: %s", dir, strerror(errno));
	if (cs_reader_open(src, serial, &r, err) || cs_store_open(&dst, dir, NULL, err)) {
		die("repack: %s", err);
		goto out;
	}
	cs_reader_info(r, &in);
	cs_ctx_params p = {
		.model_id = in.model_id, .dtype = in.dtype, .width = in.width,
		.page_tokens = page_tokens, .no_shuffle = !in.shuffle,
	};
	rows = malloc(piece * in.width * cs_dtype_size(in.dtype));
	tok = malloc(piece * sizeof(uint32_t));
	if (!rows || !tok) {
		die("out of memory");
		goto out;
	}
	if (cs_writer_begin(dst, &p, &w, err)) {
		die("repack: %s", err);
		goto out;
	}
	for (uint64_t t = 0; t < in.n_tokens; t += piece) {
		uint64_t n = in.n_tokens - t < piece ? in.n_tokens - t : piece;
		if (cs_reader_read(r, t, n, rows, tok, err) || cs_writer_append(w, rows, tok, n, err)) {
			die("repack: %s", err);
			goto out;
		}
	}
	if (cs_writer_commit(w, NULL, 0, CS_COMMIT_SEAL, err) ||
	    cs_store_info(dst, cs_writer_serial(w), out, err)) {
		die("repack: %s", err);
		goto out;
	}
	rc = 0;
out:
	cs_writer_free(w);
	cs_store_close(dst);
	cs_reader_close(r);
	free(rows);
	free(tok);
	rm_tree(dir);
	return rc;
}

struct text_feed {
	gfe_ingest *in;
	uint64_t want, fed;
	char err[GF_ERR_LEN];
};

#define FEED_DONE 1   /* the sink's "enough": stops the encoder, not an error */

static int text_sink(void *user, const int32_t *ids, size_t n)
{
	struct text_feed *f = user;
	if (f->fed + n > f->want)
		n = (size_t)(f->want - f->fed);
	if (n && gfe_ingest_tokens(f->in, ids, n, f->err))
		return -EIO;
	f->fed += n;
	return f->fed == f->want ? FEED_DONE : 0;
}

/* Tokenizes the text files, in order and round again if need be, and ingests exactly n of
 * their tokens. *rounds: how many times the text was read from its start. */
static int feed_text(const struct opts *o, const gf_tokenizer *tk, gfe_ingest *in, uint64_t n,
		     int *rounds)
{
	static const size_t piece = 65536;
	struct text_feed f = { .in = in, .want = n };
	gf_encoder enc;
	uint8_t *buf = malloc(piece);
	int rc = 0;
	if (!buf)
		return die("out of memory");
	gf_encoder_init(&enc, tk);
	*rounds = 0;
	while (f.fed < n && !rc) {
		uint64_t round_fed = f.fed;
		for (int i = 0; i < o->n_texts && f.fed < n && !rc; i++) {
			FILE *fp = fopen(o->texts[i], "rb");
			if (!fp) {
				rc = die("%s: %s", o->texts[i], strerror(errno));
				break;
			}
			size_t k;
			while (f.fed < n && (k = fread(buf, 1, piece, fp)) > 0) {
				rc = gf_encoder_feed(&enc, buf, k, text_sink, &f);
				if (rc && rc != FEED_DONE) {
					rc = die("ingest of %s: %s", o->texts[i], f.err);
					break;
				}
				rc = 0;
			}
			fclose(fp);
		}
		(*rounds)++;
		if (!rc && f.fed < n) {
			int e = gf_encoder_finish(&enc, text_sink, &f);
			if (e && e != FEED_DONE)
				rc = die("ingest: %s", f.err);
		}
		gf_encoder_init(&enc, tk);
		if (f.fed == round_fed && !rc)
			rc = die("the text files hold no tokens");
	}
	free(buf);
	return rc;
}

static int cmd_size(const struct opts *o)
{
	char err[GF_ERR_LEN];
	struct run r;
	gfe_ingest *in = NULL;
	gfe_context ctx;
	cs_ctx_info info;
	int rounds = 0;
	if (run_dir(&r, o))
		return 1;
	int rc = run_open(&r, o->threads, 0);
	if (rc)
		goto out;
	const gf_config *c = &gfe_model(r.e)->cfg;
	const bool text = o->n_texts > 0 && gfe_tokenizer(r.e);
	printf("model: %d layers (%d GOLD), n_embd %d, ckv %d, vocab %d; c stored as %s\n",
	       c->n_layer, c->n_layer - c->first_gold, c->n_embd, c->ckv_dim, c->vocab_size,
	       cs_dtype_name(o->dtype));
	if (o->n_texts > 0 && !text)
		printf("the model has no vocabulary: random ids instead of the text\n");
	double t0 = now();
	if (text) {
		if ((rc = gfe_ingest_begin(r.e, NULL, &in, err) ? die("ingest: %s", err) : 0))
			goto out;
		if ((rc = feed_text(o, gfe_tokenizer(r.e), in, o->tokens, &rounds)))
			goto out_ingest;
		if ((rc = gfe_ingest_finish(in, &ctx, NULL, err) ? die("ingest: %s", err) : 0))
			goto out_ingest;
		if ((rc = cs_store_info(gfe_store(r.e), ctx.serial, &info, err) ? die("%s", err) : 0))
			goto out_ingest;
	} else {
		struct ingest_result res;
		if ((rc = ingest_random(&r, o->tokens, o->seed, false, &res)))
			goto out;
		ctx = res.ctx;
		info = res.info;
	}
	const double secs = now() - t0;
	const double n = (double)info.n_tokens;
	const double llama = 2.0 * c->n_layer * c->n_embd * 2.0;
	const double disk_pt = (double)(info.disk_bytes - info.blob_len) / n;
	const double all_pt = (double)info.disk_bytes / n;
	const double raw_pt = (double)info.raw_bytes / n;
	printf("input: %s; %" PRIu64 " tokens in %.1f s (%.0f tokens/s)\n",
	       text ? (rounds > 1 ? "text (read more than once)" : "text") : "random ids",
	       info.n_tokens, secs, n / secs);
	printf("cache on disk: %.1f bytes/token (pages and index); raw %.1f bytes/token "
	       "(%u x %s + u32 id); compression %.3fx\n",
	       disk_pt, raw_pt, info.width, cs_dtype_name(info.dtype), raw_pt / disk_pt);
	printf("snapshot (fixed, whatever the length): %" PRIu64 " bytes; with it %.1f bytes/token "
	       "at this length\n", info.blob_len, all_pt);
	printf("Llama-style f16 KV cache, %d layers x %d wide: %.0f bytes/token; ratio %.1fx "
	       "(raw %.1fx, with the snapshot %.1fx)\n",
	       c->n_layer, c->n_embd, llama, llama / disk_pt, llama / raw_pt, llama / all_pt);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "bench", "size");
	json_model(j, o, gfe_model(r.e));
	cJSON_AddStringToObject(j, "c_dtype", cs_dtype_name(info.dtype));
	cJSON_AddStringToObject(j, "input", text ? "text" : "random");
	cJSON_AddNumberToObject(j, "tokens", n);
	cJSON_AddNumberToObject(j, "disk_bytes", (double)info.disk_bytes);
	cJSON_AddNumberToObject(j, "snapshot_bytes", (double)info.blob_len);
	cJSON_AddNumberToObject(j, "disk_bytes_per_token", disk_pt);
	cJSON_AddNumberToObject(j, "disk_bytes_per_token_with_snapshot", all_pt);
	cJSON_AddNumberToObject(j, "raw_bytes_per_token", raw_pt);
	cJSON_AddNumberToObject(j, "llama_f16_bytes_per_token", llama);
	cJSON_AddNumberToObject(j, "ratio_to_llama", llama / disk_pt);
	cJSON_AddNumberToObject(j, "ratio_to_llama_raw", llama / raw_pt);
	cJSON_AddNumberToObject(j, "ratio_to_llama_with_snapshot", llama / all_pt);
	cJSON_AddNumberToObject(j, "tokens_per_s", n / secs);
	cJSON_AddNumberToObject(j, "page_tokens", info.page_tokens);
	cJSON *arr = cJSON_AddArrayToObject(j, "other_page_sizes");
	char *list = o->repack && *o->repack ? strdup(o->repack) : NULL, *save = NULL;
	char *t = list ? strtok_r(list, ",", &save) : NULL;
	for (; t && !rc; t = strtok_r(NULL, ",", &save)) {
		cs_ctx_info ri;
		uint64_t pt;
		if (parse_u64(t, &pt) || pt < 1 || pt > (1u << 20)) {
			rc = die("--repack: '%s' is not a page size", t);
			break;
		}
		if ((rc = repack(gfe_store(r.e), ctx.serial, (uint32_t)pt, &ri)))
			break;
		const double pt_disk = (double)(ri.disk_bytes - ri.blob_len) / n;
		printf("same rows in pages of %" PRIu64 " tokens: %.1f bytes/token on disk; ratio %.1fx\n",
		       pt, pt_disk, llama / pt_disk);
		cJSON *x = cJSON_CreateObject();
		cJSON_AddNumberToObject(x, "page_tokens", (double)pt);
		cJSON_AddNumberToObject(x, "disk_bytes_per_token", pt_disk);
		cJSON_AddNumberToObject(x, "ratio_to_llama", llama / pt_disk);
		cJSON_AddItemToArray(arr, x);
	}
	free(list);
	if (rc)
		cJSON_Delete(j);
	else
		print_json(j);
out_ingest:
	gfe_ingest_free(in);
out:
	run_end(&r);
	return rc;
}

/* ---- reuse ---------------------------------------------------------------------------------- */

struct ask_result {
	double open_s, prefill_s, total_s;  /* session open; question through prefill; both */
	int32_t first;                      /* the first answer token (greedy) */
};

/* A question on context `serial`: time to its first answer token. */
static int ask(struct run *r, uint64_t serial, const int32_t *q, int nq, struct ask_result *a)
{
	const gf_config *c = &gfe_model(r->e)->cfg;
	char err[GF_ERR_LEN];
	gfe_session *s = NULL;
	float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
	int rc = 1;
	if (!logits)
		return die("out of memory");
	double t0 = now();
	if (gfe_session_open(r->e, serial, &s, err)) {
		die("session: %s", err);
		goto out;
	}
	double t1 = now();
	if (gfe_session_prefill(s, q, (size_t)nq, logits, err)) {
		die("question: %s", err);
		goto out;
	}
	a->first = argmax(logits, c->vocab_size);
	double t2 = now();
	a->open_s = t1 - t0;
	a->prefill_s = t2 - t1;
	a->total_s = t2 - t0;
	rc = 0;
out:
	gfe_session_free(s);
	free(logits);
	return rc;
}

/* Tier budget that holds every full block of every GOLD layer of n positions, with room (as
 * f32 keys and values: room for either type). */
static uint64_t tier_for(const gf_config *c, uint64_t n)
{
	const uint64_t entry = 2ull * gf_kv_block_bytes(c, GF_DTYPE_F32);
	const uint64_t blocks = (n + 4 * GF_KV_BLOCK) / GF_KV_BLOCK;
	return entry * blocks * (uint64_t)(c->n_layer - c->first_gold);
}

static int cmd_reuse(const struct opts *o)
{
	struct run r;
	struct ingest_result res;
	struct ask_result notier, cold, warm;
	int32_t *q = malloc(sizeof(int32_t) * (size_t)o->question * 3);
	uint64_t s = o->seed ^ 0x5eedull;
	if (!q)
		return die("out of memory");
	if (run_dir(&r, o)) {
		free(q);
		return 1;
	}
	int rc = run_open(&r, o->threads, 0);
	if (rc)
		goto out;
	gf_config c = gfe_model(r.e)->cfg;
	const bool direct = cs_store_direct(gfe_store(r.e));
	random_tokens(&s, q, (size_t)o->question * 3, c.vocab_size);
	printf("model: %d layers (%d GOLD), n_embd %d, vocab %d; %d thread(s); store %s%s\n",
	       c.n_layer, c.n_layer - c.first_gold, c.n_embd, c.vocab_size, o->threads,
	       cs_store_backend_name(gfe_store(r.e)), direct ? " O_DIRECT" : " buffered");
	if ((rc = ingest_random(&r, o->tokens, o->seed, false, &res)))
		goto out;
	const double t_ingest = res.seconds;
	printf("ingest of %" PRIu64 " tokens (what asking without the cache costs): %.2f s "
	       "(%.0f tokens/s)\n", res.ctx.n_tokens, t_ingest, (double)res.ctx.n_tokens / t_ingest);

	/* Without the tier: a fresh engine, an empty RAM page cache, the files out of the
	 * kernel's cache; every GOLD layer rebuilds every block as its attention reaches it. */
	run_close_engine(&r);
	drop_kernel_cache(r.dir);
	double t0 = now();
	if ((rc = run_open(&r, o->threads, 0)))
		goto out;
	const double t_open = now() - t0;
	uint64_t io0 = disk_read_bytes();
	if ((rc = ask(&r, res.ctx.serial, q, o->question, &notier)))
		goto out;
	const uint64_t notier_io = disk_read_bytes() - io0;
	printf("question without the tier (%d tokens; fresh engine, store cache empty, %.1f MB read "
	       "from disk): first answer token in %.3f s -> %.1fx faster than ingesting (engine "
	       "open, not counted: %.2f s)\n",
	       o->question, notier_io / 1e6, notier.total_s, t_ingest / notier.total_s, t_open);

	/* Cold: a fresh engine (as after a restart) with its tier, which does not hold the
	 * context: the session rebuilds every block into it for all layers at once, on every
	 * thread; the store's caches as above. Warm: the next question, served by the tier. */
	run_close_engine(&r);
	drop_kernel_cache(r.dir);
	const uint64_t tier = o->tier_bytes ? o->tier_bytes : tier_for(&c, res.ctx.n_tokens);
	if ((rc = run_open(&r, o->threads, tier)))
		goto out;
	io0 = disk_read_bytes();
	if ((rc = ask(&r, res.ctx.serial, q + o->question, o->question, &cold)))
		goto out;
	const uint64_t cold_io = disk_read_bytes() - io0;
	gfe_tier_stats t1;
	gfe_tier_stats_get(r.e, &t1);
	if ((rc = ask(&r, res.ctx.serial, q + 2 * o->question, o->question, &warm)))
		goto out;
	gfe_tier_stats t2;
	gfe_tier_stats_get(r.e, &t2);
	const double hit = (double)(t2.hits - t1.hits) /
			   (double)(t2.hits - t1.hits + t2.misses - t1.misses + (t2.hits == t1.hits));
	printf("cold question (fresh engine, tier of %.2f GB not holding the context, %.1f MB read "
	       "from disk): first answer token in %.3f s (session open, which fills the tier, "
	       "%.3f s) -> %.1fx faster than ingesting\n",
	       t1.budget / 1e9, cold_io / 1e6, cold.total_s, cold.open_s, t_ingest / cold.total_s);
	printf("warm question (second question, tier hit rate %.1f%%): first answer token in %.3f s "
	       "-> %.1fx faster than ingesting\n",
	       100.0 * hit, warm.total_s, t_ingest / warm.total_s);

	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "bench", "reuse");
	json_model(j, o, gfe_model(r.e));
	cJSON_AddNumberToObject(j, "tokens", (double)res.ctx.n_tokens);
	cJSON_AddNumberToObject(j, "question_tokens", o->question);
	cJSON_AddNumberToObject(j, "threads", o->threads);
	cJSON_AddBoolToObject(j, "o_direct", direct);
	cJSON_AddNumberToObject(j, "ingest_s", t_ingest);
	cJSON_AddNumberToObject(j, "notier_ttft_s", notier.total_s);
	cJSON_AddNumberToObject(j, "cold_ttft_s", cold.total_s);
	cJSON_AddNumberToObject(j, "cold_open_s", cold.open_s);
	cJSON_AddNumberToObject(j, "cold_disk_read_bytes", (double)cold_io);
	cJSON_AddNumberToObject(j, "warm_ttft_s", warm.total_s);
	cJSON_AddNumberToObject(j, "warm_tier_hit_rate", hit);
	cJSON_AddNumberToObject(j, "tier_bytes", (double)t2.bytes);
	cJSON_AddNumberToObject(j, "tier_budget_bytes", (double)t2.budget);
	cJSON_AddNumberToObject(j, "notier_speedup", t_ingest / notier.total_s);
	cJSON_AddNumberToObject(j, "cold_speedup", t_ingest / cold.total_s);
	cJSON_AddNumberToObject(j, "warm_speedup", t_ingest / warm.total_s);
	print_json(j);
out:
	run_end(&r);
	free(q);
	return rc;
}

/* ---- decode --------------------------------------------------------------------------------- */

struct decode_result {
	int steps;
	double tps;
	double question_s;       /* session open and question: time to the first answer token */
	gfe_tier_stats tier;     /* deltas over the timed steps */
	uint64_t disk_bytes;     /* read from disk during the timed steps */
};

/* Opens a session on the context, asks a question, then times greedy decode steps: up to
 * o->steps, stopping once o->step_budget seconds are spent (two steps at least). */
static int decode_run(struct run *r, uint64_t serial, const int32_t *q,
		      struct decode_result *d)
{
	const struct opts *o = r->o;
	const gf_config *c = &gfe_model(r->e)->cfg;
	char err[GF_ERR_LEN];
	gfe_session *s = NULL;
	gfe_tier_stats t0, t1;
	float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
	int rc = 1;
	memset(d, 0, sizeof(*d));
	if (!logits)
		return die("out of memory");
	const double q0 = now();
	if (gfe_session_open(r->e, serial, &s, err) ||
	    gfe_session_prefill(s, q, (size_t)o->question, logits, err)) {
		die("question: %s", err);
		goto out;
	}
	d->question_s = now() - q0;
	gfe_tier_stats_get(r->e, &t0);
	const uint64_t io0 = disk_read_bytes();
	const double start = now();
	double dt = 0;
	while (d->steps < o->steps && (d->steps < 2 || dt < o->step_budget)) {
		if (gfe_session_step(s, argmax(logits, c->vocab_size), logits, err)) {
			die("decode: %s", err);
			goto out;
		}
		d->steps++;
		dt = now() - start;
	}
	d->tps = d->steps / dt;
	d->disk_bytes = disk_read_bytes() - io0;
	gfe_tier_stats_get(r->e, &t1);
	d->tier.hits = t1.hits - t0.hits;
	d->tier.misses = t1.misses - t0.misses;
	d->tier.bytes = t1.bytes;
	d->tier.blocks = t1.blocks;
	rc = 0;
out:
	gfe_session_free(s);
	free(logits);
	return rc;
}

#define MAX_CONTEXTS 16

static int cmd_decode(const struct opts *o)
{
	uint64_t lens[MAX_CONTEXTS];
	struct ingest_result ing[MAX_CONTEXTS];
	struct decode_result off[MAX_CONTEXTS], on[MAX_CONTEXTS];
	int n_ctx = 0;
	struct run r;
	char *list = strdup(o->contexts), *save = NULL;
	if (!list)
		return die("out of memory");
	for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		char *end;
		unsigned long long v = strtoull(t, &end, 10);
		if (*end || v < 1 || n_ctx == MAX_CONTEXTS) {
			free(list);
			return die("--contexts: '%s' is not a list of at most %d lengths", o->contexts,
				   MAX_CONTEXTS);
		}
		lens[n_ctx++] = v;
	}
	free(list);
	int32_t *q = malloc(sizeof(int32_t) * (size_t)o->question);
	if (!q)
		return die("out of memory");
	if (run_dir(&r, o)) {
		free(q);
		return 1;
	}
	int rc = run_open(&r, o->threads, 0);
	if (rc)
		goto out;
	const gf_config c = gfe_model(r.e)->cfg;
	const int n_gold = c.n_layer - c.first_gold;
	uint64_t s = o->seed ^ 0xdec0deull, max_len = 0;
	random_tokens(&s, q, (size_t)o->question, c.vocab_size);
	printf("model: %d layers (%d GOLD), n_embd %d, vocab %d; ingest %d thread(s), decode %d "
	       "thread(s); store %s%s\n",
	       c.n_layer, n_gold, c.n_embd, c.vocab_size, o->threads, o->decode_threads,
	       cs_store_backend_name(gfe_store(r.e)),
	       cs_store_direct(gfe_store(r.e)) ? " O_DIRECT" : " buffered");
	for (int i = 0; i < n_ctx; i++) {
		if ((rc = ingest_random(&r, lens[i], o->seed + (uint64_t)i, true, &ing[i])))
			goto out;
		if (ing[i].ctx.reused)
			printf("context %" PRIu64 ": found in the store (#%" PRIu64 "), %.1f MB on disk\n",
			       lens[i], ing[i].ctx.serial, ing[i].ctx.disk_bytes / 1e6);
		else
			printf("context %" PRIu64 ": ingested in %.1f s (%.0f tokens/s), %.1f MB on disk\n",
			       lens[i], ing[i].seconds, (double)lens[i] / ing[i].seconds,
			       ing[i].ctx.disk_bytes / 1e6);
		max_len = lens[i] > max_len ? lens[i] : max_len;
	}
	const double bw0 = bench_read_bandwidth(o->decode_threads);

	/* Tier off: every step rebuilds every key and value from pages. */
	run_close_engine(&r);
	if ((rc = run_open(&r, o->decode_threads, 0)))
		goto out;
	memset(off, 0, sizeof(off));
	for (int i = 0; i < n_ctx && !o->no_tier_off; i++) {
		if ((rc = decode_run(&r, ing[i].ctx.serial, q, &off[i])))
			goto out;
		/* Every step reads each page at least once per GOLD layer. */
		const double touched = (double)off[i].steps * n_gold *
				       (double)(ing[i].info.disk_bytes - ing[i].info.blob_len);
		printf("context %" PRIu64 ", tier off: question %.2f s, then %.2f tokens/s (%d steps); "
		       "page cache: %.1f MB read from disk, hit rate >= %.1f%% (estimated: the store "
		       "keeps no counters)\n",
		       lens[i], off[i].question_s, off[i].tps, off[i].steps, off[i].disk_bytes / 1e6,
		       100.0 * (1.0 - (double)off[i].disk_bytes / touched));
	}

	/* Tier on, big enough for the longest context: the question fills it, steps read it. */
	run_close_engine(&r);
	const uint64_t tier = o->tier_bytes ? o->tier_bytes :
			      tier_for(&c, max_len + (uint64_t)o->question + (uint64_t)o->steps);
	if ((rc = run_open(&r, o->decode_threads, tier)))
		goto out;
	for (int i = 0; i < n_ctx; i++) {
		if ((rc = decode_run(&r, ing[i].ctx.serial, q, &on[i])))
			goto out;
		const uint64_t looks = on[i].tier.hits + on[i].tier.misses;
		printf("context %" PRIu64 ", tier on: question %.2f s (fills the tier), then %.2f "
		       "tokens/s (%d steps); tier hit rate %.1f%% (%" PRIu64 " hits, %" PRIu64
		       " misses), tier %.2f GB; %.1f MB read from disk\n",
		       lens[i], on[i].question_s, on[i].tps, on[i].steps,
		       looks ? 100.0 * on[i].tier.hits / looks : 0.0, on[i].tier.hits,
		       on[i].tier.misses, on[i].tier.bytes / 1e9, on[i].disk_bytes / 1e6);
	}
	const double bw1 = bench_read_bandwidth(o->decode_threads);
	const double bw = bw0 > bw1 ? bw0 : bw1; /* the higher one: the stricter bound */
	printf("read bandwidth, %d thread(s): %.1f GB/s (%.1f before, %.1f after the decode runs)\n",
	       o->decode_threads, bw / 1e9, bw0 / 1e9, bw1 / 1e9);

	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "bench", "decode");
	json_model(j, o, gfe_model(r.e));
	cJSON_AddNumberToObject(j, "threads", o->decode_threads);
	cJSON_AddNumberToObject(j, "read_gbs", bw / 1e9);
	cJSON_AddNumberToObject(j, "tier_budget_bytes", (double)tier);
	cJSON *arr = cJSON_AddArrayToObject(j, "contexts");
	double last_ratio = 0;
	for (int i = 0; i < n_ctx; i++) {
		/* The bound: every expanded key and value of the context read once per token. */
		const double bytes = (double)n_gold * (double)lens[i] * c.dim_att * 2.0 * 4.0;
		const double bound = bw / bytes;
		const double ratio = on[i].tps / bound;
		const uint64_t looks = on[i].tier.hits + on[i].tier.misses;
		const double touched = (double)off[i].steps * n_gold *
				       (double)(ing[i].info.disk_bytes - ing[i].info.blob_len);
		printf("context %" PRIu64 ": tier off %.2f, tier on %.2f tokens/s; bound from reading "
		       "%.2f GB of keys and values per token: %.2f tokens/s -> %.0f%% of it%s\n",
		       lens[i], off[i].tps, on[i].tps, bytes / 1e9, bound, 100.0 * ratio,
		       lens[i] == max_len ? " (target >= 50%)" : "");
		cJSON *x = cJSON_CreateObject();
		cJSON_AddNumberToObject(x, "tokens", (double)lens[i]);
		if (!ing[i].ctx.reused)
			cJSON_AddNumberToObject(x, "ingest_tokens_per_s",
						(double)lens[i] / ing[i].seconds);
		if (off[i].steps) {
			cJSON_AddNumberToObject(x, "tier_off_question_s", off[i].question_s);
			cJSON_AddNumberToObject(x, "tier_off_tokens_per_s", off[i].tps);
			cJSON_AddNumberToObject(x, "tier_off_steps", off[i].steps);
			cJSON_AddNumberToObject(x, "tier_off_disk_read_bytes",
						(double)off[i].disk_bytes);
			cJSON_AddNumberToObject(x, "page_cache_hit_rate_min",
						1.0 - (double)off[i].disk_bytes / touched);
		}
		cJSON_AddNumberToObject(x, "tier_on_question_s", on[i].question_s);
		cJSON_AddNumberToObject(x, "tier_on_tokens_per_s", on[i].tps);
		cJSON_AddNumberToObject(x, "tier_on_steps", on[i].steps);
		cJSON_AddNumberToObject(x, "tier_hits", (double)on[i].tier.hits);
		cJSON_AddNumberToObject(x, "tier_misses", (double)on[i].tier.misses);
		cJSON_AddNumberToObject(x, "tier_hit_rate",
					looks ? (double)on[i].tier.hits / looks : 0.0);
		cJSON_AddNumberToObject(x, "kv_bytes_per_token", bytes);
		cJSON_AddNumberToObject(x, "bound_tokens_per_s", bound);
		cJSON_AddNumberToObject(x, "fraction_of_bound", ratio);
		cJSON_AddItemToArray(arr, x);
		if (lens[i] == max_len)
			last_ratio = ratio;
	}
	cJSON_AddNumberToObject(j, "longest_fraction_of_bound", last_ratio);
	print_json(j);
out:
	run_end(&r);
	free(q);
	return rc;
}

/* ---- batch ---------------------------------------------------------------------------------- */

#define BATCH_SIZES 5

/* B sessions on one context, each asked its own question, then stepped together
 * (gfe_sessions_step, greedy per session): aggregate decode tokens/s, for B = 1, 2, 4, 8, 16. */
static int cmd_batch(const struct opts *o)
{
	static const int sizes[BATCH_SIZES] = { 1, 2, 4, 8, 16 };
	const int max_b = sizes[BATCH_SIZES - 1];
	struct ingest_result ing;
	double tps[BATCH_SIZES] = { 0 }, step_s[BATCH_SIZES] = { 0 };
	int steps[BATCH_SIZES] = { 0 };
	gfe_session *ss[16] = { 0 };
	char err[GF_ERR_LEN];
	struct run r;
	if (run_dir(&r, o))
		return 1;
	int rc = run_open(&r, o->threads, 0);
	if (rc)
		goto out;
	const gf_config c = gfe_model(r.e)->cfg;
	const int V = c.vocab_size;
	if ((rc = ingest_random(&r, o->tokens, o->seed, true, &ing)))
		goto out;
	/* The tier holds the context (shared by every session) and the sessions' own blocks. */
	run_close_engine(&r);
	const uint64_t tier = o->tier_bytes ? o->tier_bytes :
			      tier_for(&c, o->tokens + (uint64_t)max_b * (o->question + o->steps));
	if ((rc = run_open(&r, o->decode_threads, tier)))
		goto out;
	printf("model: %d layers (%d GOLD), n_embd %d, vocab %d, %.1f MB of weights per step; "
	       "context %" PRIu64 " tokens; decode %d thread(s); compute %s, kernels %s\n",
	       c.n_layer, c.n_layer - c.first_gold, c.n_embd, V,
	       gf_model_decode_bytes(gfe_model(r.e)) / 1e6, o->tokens, o->decode_threads,
	       gf_compute_name(gfe_model(r.e)->compute), gf_model_isa_name(gfe_model(r.e)));
	float *logits = malloc(sizeof(float) * (size_t)V * max_b);
	int32_t *q = malloc(sizeof(int32_t) * (size_t)o->question), tok[16];
	if (!logits || !q) {
		free(logits);
		free(q);
		rc = die("out of memory");
		goto out;
	}
	uint64_t seed = o->seed ^ 0xba7c4ull;
	for (int k = 0; k < BATCH_SIZES && !rc; k++) {
		const int B = sizes[k];
		for (int i = 0; i < B && !rc; i++) {
			random_tokens(&seed, q, (size_t)o->question, V);
			if (gfe_session_open(r.e, ing.ctx.serial, &ss[i], err) ||
			    gfe_session_prefill(ss[i], q, (size_t)o->question, logits + (size_t)i * V, err))
				rc = die("question: %s", err);
		}
		const double start = now();
		double dt = 0;
		while (!rc && steps[k] < o->steps && (steps[k] < 2 || dt < o->step_budget)) {
			for (int i = 0; i < B; i++)
				tok[i] = argmax(logits + (size_t)i * V, V);
			if (gfe_sessions_step(ss, tok, B, logits, NULL, err))
				rc = die("decode: %s", err);
			steps[k]++;
			dt = now() - start;
		}
		for (int i = 0; i < B; i++) {
			gfe_session_free(ss[i]);
			ss[i] = NULL;
		}
		if (rc)
			break;
		tps[k] = (double)B * steps[k] / dt;
		step_s[k] = dt / steps[k];
		printf("batch %2d: %d steps, %.2f ms a step, %.1f tokens/s aggregate (%.1f per "
		       "session), %.2fx batch 1\n",
		       B, steps[k], 1e3 * step_s[k], tps[k], tps[k] / B, tps[k] / tps[0]);
	}
	free(logits);
	free(q);
	if (rc)
		goto out;
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "bench", "batch");
	json_model(j, o, gfe_model(r.e));
	cJSON_AddNumberToObject(j, "threads", o->decode_threads);
	cJSON_AddNumberToObject(j, "context_tokens", (double)o->tokens);
	cJSON_AddNumberToObject(j, "question", o->question);
	cJSON_AddNumberToObject(j, "decode_bytes_per_step",
				(double)gf_model_decode_bytes(gfe_model(r.e)));
	cJSON *arr = cJSON_AddArrayToObject(j, "batches");
	for (int k = 0; k < BATCH_SIZES; k++) {
		cJSON *x = cJSON_CreateObject();
		cJSON_AddNumberToObject(x, "sessions", sizes[k]);
		cJSON_AddNumberToObject(x, "steps", steps[k]);
		cJSON_AddNumberToObject(x, "step_s", step_s[k]);
		cJSON_AddNumberToObject(x, "tokens_per_s", tps[k]);
		cJSON_AddNumberToObject(x, "speedup", tps[k] / tps[0]);
		cJSON_AddItemToArray(arr, x);
	}
	print_json(j);
out:
	run_end(&r);
	return rc;
}

/* ---- main ----------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
"usage: gf-engine-bench COMMAND --model M.gguf [options]\n"
"\n"
"  memory          ingest --tokens N random ids (fed in --piece pieces) into a fresh store;\n"
"                  peak RSS (getrusage) and tokens/s. The weights are pre-faulted first, so\n"
"                  the resident set measures the ingest, not how much of the embedding\n"
"                  table a given number of random ids happens to touch.\n"
"  memory-compare  runs `memory` in two child processes (--small 10000, --large 1000000\n"
"                  tokens) and prints both peak RSS figures and their ratio (target: within\n"
"                  5%%). The GOLD tail at the end of an ingest reads every page through the\n"
"                  store's RAM page cache, which keeps up to --ram-cache bytes of them: run\n"
"                  it with and without a small --ram-cache (e.g. 4194304) to tell the cache\n"
"                  from the ingest.\n"
"  size            ingest --tokens N (default 20000) tokens of --text FILE... (repeatable;\n"
"                  read in order, again from the start if short; random ids without text)\n"
"                  with c in --dtype (default f16): bytes on disk per token, raw bytes per\n"
"                  token, and the ratio to a Llama-style f16 KV cache of the same depth and\n"
"                  width (2 * n_layer * n_embd * 2 bytes per token).\n"
"  reuse           ingest --tokens N (default 100000), timed; then time to the first answer\n"
"                  token of a --question (default 20) token question: cold (fresh engine,\n"
"                  tier off, caches dropped) and warm (tier on, second question); ratios\n"
"                  to the ingest time (target >= 100x).\n"
"  decode          for each of --contexts (default 1000,10000,100000): decode tokens/s\n"
"                  with the tier off and with the tier holding the whole context, tier hit\n"
"                  rate, page-cache hit rate (estimated from disk reads), and the fraction\n"
"                  of the bound set by reading the expanded keys and values once per token\n"
"                  (n_gold * context * dim_att * 2 * 4 bytes) at the read bandwidth measured\n"
"                  in the same run (target >= 50%% at the longest context).\n"
"  batch           ingest --tokens N (default 1000); then B = 1, 2, 4, 8, 16 sessions on it,\n"
"                  each with its own --question, stepped together (gfe_sessions_step, every\n"
"                  weight read once per step for all of them) for --steps: aggregate decode\n"
"                  tokens/s and the speedup over one session (tier: the whole context).\n"
"\n"
"options:\n"
"  --model M.gguf        the model (required)\n"
"  --cache-dir D         the store's directory (default: a fresh mkdtemp, removed at exit)\n"
"  --keep                keep the mkdtemp directory (decode then reuses contexts of\n"
"                        the same ids found in a kept --cache-dir instead of ingesting)\n"
"  --no-tier-off         decode: only the tier-on runs\n"
"  --tokens N            context length (memory, size, reuse, batch)\n"
"  --small N --large N   memory-compare's two lengths\n"
"  --text FILE           size: text to tokenize (repeatable)\n"
"  --repack P,P,...      size: also store the same rows in pages of P tokens and print\n"
"                        those sizes (default 4096; \"\" for none)\n"
"  --contexts L,L,...    decode: context lengths\n"
"  --threads N           ingest threads, and reuse's questions (default 2)\n"
"  --decode-threads N    decode steps, and the read bandwidth they are held to (default 1)\n"
"  --steps N             decode steps per measurement (default 32)\n"
"  --step-budget S       stop a decode measurement after S seconds, 2 steps at least\n"
"                        (default 20; the tier-off 100K runs are slow)\n"
"  --question N          question tokens (default 20)\n"
"  --tier-bytes B        the tier of reuse's warm questions and decode's tier-on runs\n"
"                        (default: sized to hold the whole context, since those runs\n"
"                        measure a warm tier; goldfinchd and gf-run start with %d MiB).\n"
"                        Resident memory is about weights + page cache + tier, so there\n"
"                        it grows with the context; the other runs keep the tier off\n"
"  --compute MODE        f32, bf16 or auto: how prefill chunks multiply, every command\n"
"                        (default %s, or $GOLDFINCH_COMPUTE); f32 is exact, bf16\n"
"                        (AVX512-BF16 CPUs) ingests faster; \"compute\" in the JSON\n"
"  --ram-cache B         the store's RAM page cache limit (default: cache_store's, 256 MiB)\n"
"  --piece N             tokens per ingest call (default 1000)\n"
"  --chunk N --page-tokens N --dtype f32|f16|bf16 --seed S\n"
"\n"
"Models (random weights; the vocabulary is needed for --text):\n"
"  V=../shared/testdata/tokenizer/rwkv_vocab_v20230424.txt\n"
"  memory:  gf-convert --random --layers 6 --embd 256 --vocab 65536 --vocab-file $V m6x256.gguf\n"
"  size, reuse, decode (the paper's small shape):\n"
"           gf-convert --random --layers 12 --embd 768 --vocab 65536 --vocab-file $V m12x768.gguf\n"
"  size, the 1.5B shape (3 GB file; about 9 GB of RAM once loaded):\n"
"           gf-convert --random --layers 24 --embd 2048 --vocab 65536 --dtype bf16 \\\n"
"                      --vocab-file $V m24x2048.gguf\n"
"tools/bench-engine.sh makes them and runs every command.\n"
"\n"
"The last line of every command is one JSON object with the figures printed above it.\n",
		GFE_TIER_DEFAULT_MB, gf_compute_name(gf_compute_default()));
}


int main(int argc, char **argv)
{
	if (gf_version_asked(argc, argv, "gf-engine-bench"))
		return 0;

	gf_blas_prefer_avx512(argv);
	struct opts o = {
		.tokens = 0, .small = 10000, .large = 1000000, .seed = 42, .threads = 2,
		.decode_threads = 1, .piece = 1000, .question = 20, .steps = 32,
		.step_budget = 20.0, .dtype = CS_DTYPE_F16, .contexts = "1000,10000,100000",
		.repack = "4096", .compute = gf_compute_default(),
	};
	static const struct option lopts[] = {
		{ "model", required_argument, 0, 'm' },     { "cache-dir", required_argument, 0, 'd' },
		{ "tokens", required_argument, 0, 'n' },    { "small", required_argument, 0, 's' },
		{ "large", required_argument, 0, 'l' },     { "text", required_argument, 0, 'x' },
		{ "contexts", required_argument, 0, 'c' },  { "threads", required_argument, 0, 'j' },
		{ "decode-threads", required_argument, 0, 'J' },
		{ "steps", required_argument, 0, 'S' },     { "step-budget", required_argument, 0, 'B' },
		{ "question", required_argument, 0, 'q' },  { "tier-bytes", required_argument, 0, 'T' },
		{ "piece", required_argument, 0, 'p' },     { "chunk", required_argument, 0, 'C' },
		{ "page-tokens", required_argument, 0, 'P' }, { "dtype", required_argument, 0, 'D' },
		{ "seed", required_argument, 0, 'e' },      { "keep", no_argument, 0, 'k' },
		{ "no-tier-off", no_argument, 0, 'O' },     { "repack", required_argument, 0, 'K' },
		{ "ram-cache", required_argument, 0, 'R' }, { "compute", required_argument, 0, 'U' },
		{ "help", no_argument, 0, 'h' },            { 0, 0, 0, 0 },
	};
	if (argc < 2 || argv[1][0] == '-') {
		bool help = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
		usage(help ? stdout : stderr);
		return help ? 0 : 2;
	}
	o.cmd = argv[1];
	uint64_t v;
	int bad = 0, li = 0;
	optind = 2;
	for (int c; (c = getopt_long(argc, argv, "h", lopts, &li)) != -1;) {
		switch (c) {
		case 'm': o.model = optarg; break;
		case 'd': o.cache_dir = optarg; break;
		case 'x':
			if (o.n_texts == MAX_TEXTS)
				return die("more than %d --text files", MAX_TEXTS);
			o.texts[o.n_texts++] = optarg;
			break;
		case 'c': o.contexts = optarg; break;
		case 'K': o.repack = optarg; break;
		case 'k': o.keep = true; break;
		case 'O': o.no_tier_off = true; break;
		case 'U': {
			char why[GF_ERR_LEN];
			if (gf_compute_parse(optarg, &o.compute, why)) {
				die("--compute: %s", why);
				return 2;
			}
			break;
		}
		case 'h': usage(stdout); return 0;
		case 'B':
			o.step_budget = atof(optarg);
			bad |= !(o.step_budget > 0);
			break;
		case 'D':
			if (!strcmp(optarg, "f32"))
				o.dtype = CS_DTYPE_F32;
			else if (!strcmp(optarg, "f16"))
				o.dtype = CS_DTYPE_F16;
			else if (!strcmp(optarg, "bf16"))
				o.dtype = CS_DTYPE_BF16;
			else
				return die("--dtype %s: f32, f16 or bf16", optarg);
			break;
		case 'n': case 's': case 'l': case 'j': case 'J': case 'S': case 'q': case 'T':
		case 'p': case 'C': case 'P': case 'e': case 'R':
			if (parse_u64(optarg, &v))
				return die("--%s %s: not a number", lopts[li].name, optarg);
			switch (c) {
			case 'n': o.tokens = v; break;
			case 's': o.small = v; break;
			case 'l': o.large = v; break;
			case 'j': o.threads = (int)v; bad |= v < 1 || v > 256; break;
			case 'J': o.decode_threads = (int)v; bad |= v < 1 || v > 16; break;
			case 'S': o.steps = (int)v; bad |= v < 1 || v > 1000000; break;
			case 'q': o.question = (int)v; bad |= v < 1 || v > 1000000; break;
			case 'T': o.tier_bytes = v; break;
			case 'R': o.ram_cache = v; break;
			case 'p': o.piece = (int)v; bad |= v < 1 || v > (1u << 24); break;
			case 'C': o.chunk = (int)v; bad |= v < 1 || v > 65536; break;
			case 'P': o.page_tokens = (uint32_t)v; bad |= v < 1 || v > (1u << 20); break;
			case 'e': o.seed = v ? v : 1; break;
			}
			break;
		default: usage(stderr); return 2;
		}
	}
	if (bad || optind != argc || !o.model) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(o.cmd, "memory")) {
		if (!o.tokens)
			o.tokens = 10000;
		return cmd_memory(&o);
	}
	if (!strcmp(o.cmd, "memory-compare"))
		return o.small && o.large ? cmd_memory_compare(&o) : die("--small/--large: zero");
	if (!strcmp(o.cmd, "size")) {
		if (!o.tokens)
			o.tokens = 20000;
		return cmd_size(&o);
	}
	if (!strcmp(o.cmd, "reuse")) {
		if (!o.tokens)
			o.tokens = 100000;
		return cmd_reuse(&o);
	}
	if (!strcmp(o.cmd, "decode"))
		return cmd_decode(&o);
	if (!strcmp(o.cmd, "batch")) {
		if (!o.tokens)
			o.tokens = 1000;
		return cmd_batch(&o);
	}
	return die("unknown command '%s' (memory, memory-compare, size, reuse, decode, batch)", o.cmd);
}
