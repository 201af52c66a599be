/*
 * hardening_fault — the ingest and commit path of the engine (daemon/engine.c over the cache
 * store), with every allocation, read, write, fsync and rename failed in turn.
 *
 *   hardening_fault MODEL.gguf WORKDIR [ERR_STRIDE [CRASH_STRIDE]]
 *
 * Built against gfcache_fi (the cache store with CS_FAULT_INJECTION) and linked with
 * --wrap for malloc, calloc, realloc, posix_memalign, aligned_alloc and strdup (and for
 * cs_store_open, to hand the store this program's fault hook): every allocation made by the
 * engine, the model code and the store, and every read, write, fsync and rename of the store
 * gets the next fault id from one counter while the scenario runs. The store runs on the
 * pread backend, so that the ids fall the same way in every run.
 *
 * The scenario, from a base store holding a sealed context "A" and a checkpointed, unsealed
 * "B": resume B and finish it; ingest "C" with a checkpoint every 128 tokens; ingest A's
 * text again as "A2" (the engine finds A and drops A2). One counting run numbers its steps;
 * then for every id k (every ERR_STRIDE-th: 1 by default), from a fresh copy of the base store:
 *   - error: the scenario runs with step k failing; it must stop with an error, one line,
 *     naming what failed ("out of memory" for an allocation, the file or page for I/O);
 *   - crash (I/O steps only, every CRASH_STRIDE-th, 1 by default: what a crash leaves on disk
 *     depends only on the writes, fsyncs and renames done before it): a child process runs
 *     the scenario and dies at step k (before an fsync or a rename; after half of a write, at
 *     the error);
 * and then the store must open; A must read back bit-identical (every row, token and the
 * snapshot) to an ingest that never failed; B, C and A2 must each be absent (C, A2) or
 * sealed and bit-identical, or unsealed and resumable: resumed from its checkpoint with the
 * rest of its text, it must end bit-identical to the uninterrupted ingest (A2 found equal to
 * A and dropped); and nothing but the store's files may be left in the directory.
 *
 * Exit 0 pass, 1 fail.
 */
#include "engine.h"
#include "test_util.h"

#include <dirent.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- the fault counter: one for allocations and store I/O ------------------------------- */

enum fi_kind { FI_ALLOC = 0, FI_WRITE, FI_FSYNC, FI_RENAME, FI_READ, FI_KINDS };
static const char *const fi_names[FI_KINDS] = { "alloc", "write", "fsync", "rename", "read" };
#define KINDS_CAP 65536

/* The test's own state: the wrappers below can reach nothing else. */
static struct {
	atomic_bool armed;
	atomic_uint_fast64_t next;   /* ids handed out while armed */
	uint64_t fail_at;            /* UINT64_MAX: none */
	bool crash;                  /* die at the fault instead of failing the step */
	bool record;                 /* the counting run: note each id's kind in kinds[] */
	atomic_uint_fast64_t count[FI_KINDS];
	/* what failed */
	int hit_kind;                /* -1: nothing yet */
	char hit_path[256];
	uint8_t kinds[KINDS_CAP];    /* the kind of each id in the counting run */
} fi = { .fail_at = UINT64_MAX, .hit_kind = -1 };

/* True when this step must fail. */
static bool fi_step(enum fi_kind kind, const char *path)
{
	if (!atomic_load(&fi.armed))
		return false;
	uint64_t id = atomic_fetch_add(&fi.next, 1);
	atomic_fetch_add(&fi.count[kind], 1);
	if (fi.record && id < KINDS_CAP)
		fi.kinds[id] = (uint8_t)kind;
	if (id != fi.fail_at)
		return false;
	fi.hit_kind = (int)kind;
	snprintf(fi.hit_path, sizeof(fi.hit_path), "%s", path ? path : "");
	if (getenv("HARDENING_FAULT_TRACE")) {
		/* where the failing step is (addr2line -f -e hardening_fault ADDR...) */
		void *bt[24];
		int n = backtrace(bt, 24);
		fprintf(stderr, "fault %llu (%s of \"%s\"):\n", (unsigned long long)id,
			fi_names[kind], fi.hit_path);
		backtrace_symbols_fd(bt + 1, n - 1, 2);
	}
	/* A crash before an fsync, a rename, or anything but a write: nothing of the step is
	 * done. A write is torn first by the store (half its bytes), then the scenario dies at
	 * the error. */
	if (fi.crash && kind != FI_WRITE)
		_exit(3);
	return true;
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
char *__real_strdup(const char *s);
int __real_cs_store_open(cs_store **out, const char *dir, const cs_config *cfg, char *err);

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
int __wrap_posix_memalign(void **p, size_t align, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);
char *__wrap_strdup(const char *s);
int __wrap_cs_store_open(cs_store **out, const char *dir, const cs_config *cfg, char *err);

void *__wrap_malloc(size_t n)
{
	if (fi_step(FI_ALLOC, NULL)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
	if (fi_step(FI_ALLOC, NULL)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
	if (fi_step(FI_ALLOC, NULL)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_realloc(p, n);
}

int __wrap_posix_memalign(void **p, size_t align, size_t n)
{
	if (fi_step(FI_ALLOC, NULL))
		return ENOMEM;
	return __real_posix_memalign(p, align, n);
}

void *__wrap_aligned_alloc(size_t align, size_t n)
{
	if (fi_step(FI_ALLOC, NULL)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_aligned_alloc(align, n);
}

char *__wrap_strdup(const char *s)
{
	if (fi_step(FI_ALLOC, NULL)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_strdup(s);
}

static int store_hook(void *arg, uint64_t id, cs_fault_op op, const char *path)
{
	(void)arg;
	(void)id;   /* the store's own count leaves out allocations: ours is the id */
	switch (op) {
	case CS_FAULT_WRITE: return fi_step(FI_WRITE, path);
	case CS_FAULT_FSYNC: return fi_step(FI_FSYNC, path);
	case CS_FAULT_RENAME: return fi_step(FI_RENAME, path);
	case CS_FAULT_READ: return fi_step(FI_READ, path);
	}
	return 0;
}

/* The engine opens its store with cs_config_defaults: add the hook, every op, and the pread
 * backend (io_uring completions would make read-ahead allocations fall differently). */
int __wrap_cs_store_open(cs_store **out, const char *dir, const cs_config *cfg, char *err)
{
	cs_config c;
	if (cfg)
		c = *cfg;
	else
		cs_config_defaults(&c);
	c.fault = store_hook;
	c.fault_arg = NULL;
	c.fault_ops = CS_FAULT_OPS_ALL;
	c.backend = CS_IO_SYNC;
	return __real_cs_store_open(out, dir, &c, err);
}

static void fi_arm(uint64_t fail_at, bool crash)
{
	fi.fail_at = fail_at;
	fi.crash = crash;
	fi.record = fail_at == UINT64_MAX;
	fi.hit_kind = -1;
	fi.hit_path[0] = 0;
	atomic_store(&fi.next, 0);
	for (int i = 0; i < FI_KINDS; i++)
		atomic_store(&fi.count[i], 0);
	atomic_store(&fi.armed, true);
}

static void fi_disarm(void)
{
	atomic_store(&fi.armed, false);
}

/* ---- inputs ----------------------------------------------------------------------------- */

static const char *const WORDS[] = {
	"the", "old", "lighthouse", "keeper", "walked", "along", "grey", "shore", "where",
	"gulls", "cried", "over", "boats", "and", "nets;", "she", "remembered", "winters,",
	"letters,", "a", "brother", "at", "sea,", "lamp", "never", "failed,", "café", "façade",
	"naïve", "灯台", "守り人", "Ωμέγα", "—", "quiet", "after.", "\n\n", "storms", "in", "March",
};

/* Deterministic text of about n bytes. */
static char *make_text(size_t n, uint64_t seed, size_t *len)
{
	char *t = malloc(n + 64);
	size_t k = 0;
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	if (!t)
		return NULL;
	while (k < n) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		const char *w = WORDS[(x >> 33) % (sizeof(WORDS) / sizeof(WORDS[0]))];
		size_t wl = strlen(w);
		memcpy(t + k, w, wl);
		k += wl;
		t[k++] = ' ';
	}
	t[k] = 0;
	*len = k;
	return t;
}

struct text {
	const char *name;
	char *data;
	size_t len;
};

enum { T_A, T_B, T_C, N_TEXT };
static struct text texts[N_TEXT] = { { "A", NULL, 0 }, { "B", NULL, 0 }, { "C", NULL, 0 } };

/* What an ingest that never failed stores. */
struct ref {
	cs_key key;
	uint64_t n_tokens;
	void *rows;          /* [n_tokens][Ck] f16 */
	uint32_t *tok;
	void *blob;
	size_t blob_len;
};
static struct ref refs[N_TEXT];

static const char *model_path;

#define SLICE 700            /* bytes per gfe_ingest_text call */
#define CHUNK 64
#define PAGE_TOKENS 128
#define CHECKPOINT 128

static int open_engine(const char *dir, gfe_engine **e, char *err)
{
	gfe_config cfg;
	gfe_config_defaults(&cfg);
	cfg.model_path = model_path;
	cfg.cache_dir = dir;
	cfg.chunk = CHUNK;
	cfg.page_tokens = PAGE_TOKENS;
	cfg.checkpoint_tokens = CHECKPOINT;
	cfg.threads = 1;
	/* The tier's allocations may fail and be absorbed (the block is then rebuilt): off, so
	 * that every allocation of the ingest path must surface. */
	cfg.tier_bytes = 0;
	return gfe_open(e, &cfg, err);
}

static int feed(gfe_ingest *in, const struct text *t, size_t from, size_t to, char *err)
{
	for (size_t off = from; off < to; off += SLICE) {
		size_t n = to - off < SLICE ? to - off : SLICE;
		int rc = gfe_ingest_text(in, t->data + off, n, err);
		if (rc)
			return rc;
	}
	return 0;
}

/* Feeds an ingest (begun or resumed) from byte `from` to the end of t, finishes and frees it. */
static int feed_finish(gfe_ingest *in, const struct text *t, size_t from, gfe_context *ctx,
		       char *err)
{
	int rc = feed(in, t, from, t->len, err);
	if (!rc)
		rc = gfe_ingest_finish(in, ctx, NULL, err);
	gfe_ingest_free(in);
	return rc;
}

/* ---- the scenario ----------------------------------------------------------------------- */

/* Stops at the first error, which it returns (err holds its message). Frees what it made. */
static int scenario(gfe_engine *e, uint64_t serial_b, char *err)
{
	gfe_ingest *in = NULL;
	gfe_context ctx;
	int rc;

	/* resume B, finish it */
	if ((rc = gfe_ingest_resume(e, serial_b, &in, err)))
		return rc;
	rc = feed_finish(in, &texts[T_B], (size_t)gfe_ingest_input_bytes(in), &ctx, err);
	in = NULL;
	if (rc)
		return rc;

	/* C, with checkpoints on the way */
	if ((rc = gfe_ingest_begin(e, "C", &in, err)))
		return rc;
	rc = feed_finish(in, &texts[T_C], 0, &ctx, err);
	in = NULL;
	if (rc)
		return rc;

	/* A again: found stored, the duplicate dropped */
	if ((rc = gfe_ingest_begin(e, "A2", &in, err)))
		return rc;
	rc = feed_finish(in, &texts[T_A], 0, &ctx, err);
	if (!rc && !ctx.reused)
		rc = gf_error(err, -EPROTO, "A2 was not found equal to A");
	return rc;
}

/* ---- files -------------------------------------------------------------------------------- */

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(p);
	return 0;
}

static void rmrf(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void copy_dir(const char *src, const char *dst)
{
	DIR *d = opendir(src);
	struct dirent *de;
	char buf[65536];
	if (mkdir(dst, 0755) && errno != EEXIST) {
		fprintf(stderr, "mkdir %s: %s\n", dst, strerror(errno));
		exit(1);
	}
	if (!d) {
		fprintf(stderr, "opendir %s: %s\n", src, strerror(errno));
		exit(1);
	}
	while ((de = readdir(d))) {
		char a[1024], b[1024];
		if (de->d_name[0] == '.')
			continue;
		snprintf(a, sizeof(a), "%s/%s", src, de->d_name);
		snprintf(b, sizeof(b), "%s/%s", dst, de->d_name);
		int in = open(a, O_RDONLY), out = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		ssize_t n;
		if (in < 0 || out < 0) {
			fprintf(stderr, "copy %s: %s\n", a, strerror(errno));
			exit(1);
		}
		while ((n = read(in, buf, sizeof(buf))) > 0)
			if (write(out, buf, (size_t)n) != n) {
				fprintf(stderr, "copy %s: %s\n", b, strerror(errno));
				exit(1);
			}
		close(in);
		close(out);
	}
	closedir(d);
}

static size_t count_files(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t n = 0;
	if (!d)
		return 0;
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* ---- checks ------------------------------------------------------------------------------- */

/* Everything stored for serial, compared with ref. */
static void check_equal(gfe_engine *e, uint64_t serial, const struct ref *r, const char *what)
{
	char err[GF_ERR_LEN] = "";
	cs_store *s = gfe_store(e);
	cs_ctx_info info;
	cs_reader *rd = NULL;
	const uint32_t ck = (uint32_t)gfe_model(e)->cfg.ckv_dim;
	void *blob = NULL;
	size_t blob_len = 0;

	if (cs_store_info(s, serial, &info, err)) {
		CHECK(0, "%s: %s", what, err);
		return;
	}
	CHECK(info.sealed, "%s: not sealed", what);
	CHECK(info.n_tokens == r->n_tokens && cs_key_equal(info.key, r->key),
	      "%s: %llu tokens, reference %llu (or another key)", what,
	      (unsigned long long)info.n_tokens, (unsigned long long)r->n_tokens);
	if (info.n_tokens != r->n_tokens)
		return;
	uint16_t *rows = malloc((size_t)r->n_tokens * ck * sizeof(uint16_t) + 1);
	uint32_t *tok = malloc((size_t)r->n_tokens * sizeof(uint32_t) + 1);
	int rc = !rows || !tok ? -ENOMEM : cs_reader_open(s, serial, &rd, err);
	if (!rc)
		rc = cs_reader_read(rd, 0, r->n_tokens, rows, tok, err);
	CHECK(rc == 0, "%s: read: %s", what, err);
	if (!rc) {
		CHECK(!memcmp(rows, r->rows, (size_t)r->n_tokens * ck * sizeof(uint16_t)),
		      "%s: cache rows differ from the reference ingest", what);
		CHECK(!memcmp(tok, r->tok, (size_t)r->n_tokens * sizeof(uint32_t)),
		      "%s: token ids differ from the reference ingest", what);
	}
	cs_reader_close(rd);
	free(rows);
	free(tok);
	rc = cs_store_read_blob(s, serial, &blob, &blob_len, err);
	CHECK(rc == 0 && blob_len == r->blob_len && (!blob_len || !memcmp(blob, r->blob, blob_len)),
	      "%s: snapshot differs from the reference ingest (%s)", what, rc ? err : "bytes");
	free(blob);
	rc = cs_store_verify(s, serial, NULL, err);
	CHECK(rc == 0, "%s: verify: %s", what, err);
}

/* Resumes the unsealed context serial with the rest of t and finishes it. */
static int finish_by_resume(gfe_engine *e, uint64_t serial, const struct text *t,
			    gfe_context *ctx, char *err)
{
	gfe_ingest *in = NULL;
	int rc = gfe_ingest_resume(e, serial, &in, err);
	if (!rc)
		rc = feed(in, t, (size_t)gfe_ingest_input_bytes(in), t->len, err);
	if (!rc)
		rc = gfe_ingest_finish(in, ctx, NULL, err);
	gfe_ingest_free(in);
	return rc;
}

static int check_failures_before;

/* The store in dir after a fault at k: see the header. */
static void check_store(const char *dir, uint64_t serial_a, uint64_t serial_b, uint64_t k,
			const char *variant)
{
	char err[GF_ERR_LEN] = "", what[256];
	gfe_engine *e = NULL;
	cs_ctx_info *list = NULL;
	size_t n = 0;
	bool seen_a = false, seen_b = false;
	int rc = open_engine(dir, &e, err);

	check_failures_before = test_failures;
	if (rc) {
		CHECK(0, "%s at %llu: the store does not open: %s", variant, (unsigned long long)k, err);
		return;
	}
	rc = cs_store_list(gfe_store(e), &list, &n, err);
	CHECK(rc == 0, "%s at %llu: list: %s", variant, (unsigned long long)k, err);
	for (size_t i = 0; i < n; i++) {
		const cs_ctx_info *x = &list[i];
		gfe_context ctx;
		snprintf(what, sizeof(what), "%s at %llu: context \"%s\" (#%llu)", variant,
			 (unsigned long long)k, x->name, (unsigned long long)x->serial);
		if (x->serial == serial_a) {
			seen_a = true;
			check_equal(e, x->serial, &refs[T_A], what);
		} else if (x->serial == serial_b || !strcmp(x->name, "C")) {
			int t = x->serial == serial_b ? T_B : T_C;
			seen_b |= t == T_B;
			if (!x->sealed) {
				rc = finish_by_resume(e, x->serial, &texts[t], &ctx, err);
				CHECK(rc == 0, "%s: unsealed, and its resume fails: %s", what, err);
				CHECK(rc || !ctx.reused, "%s: resumed into another context", what);
			}
			check_equal(e, x->serial, &refs[t], what);
		} else if (!strcmp(x->name, "A2")) {
			CHECK(!x->sealed, "%s: sealed beside A", what);
			rc = finish_by_resume(e, x->serial, &texts[T_A], &ctx, err);
			CHECK(rc == 0 && ctx.reused && ctx.serial == serial_a,
			      "%s: its resume did not end in A: %s", what, rc ? err : "");
			CHECK(cs_store_info(gfe_store(e), x->serial, &(cs_ctx_info){ 0 }, NULL) == -ENOENT,
			      "%s: still there after being found equal to A", what);
		} else {
			CHECK(0, "%s: not a context of the scenario", what);
		}
	}
	free(list);
	CHECK(seen_a && seen_b, "%s at %llu: a committed context is gone (A %d, B %d)", variant,
	      (unsigned long long)k, seen_a, seen_b);
	/* nothing but MANIFEST, LOCK and three files per context */
	list = NULL;
	n = 0;
	if (!cs_store_list(gfe_store(e), &list, &n, err)) {
		size_t files = count_files(dir);
		CHECK(files == 2 + 3 * n, "%s at %llu: %zu files for %zu contexts", variant,
		      (unsigned long long)k, files, n);
	}
	free(list);
	gfe_close(e);
	if (test_failures != check_failures_before)
		fprintf(stderr, "  (fault %llu was a %s of \"%s\")\n", (unsigned long long)k,
			fi.hit_kind >= 0 ? fi_names[fi.hit_kind] : "?", fi.hit_path);
}

/* The message of a failed step names it. */
static void check_message(uint64_t k, int rc, const char *err, const char *dir)
{
	CHECK(rc != 0, "fault %llu (%s of \"%s\") went unnoticed: the scenario succeeded",
	      (unsigned long long)k, fi.hit_kind >= 0 ? fi_names[fi.hit_kind] : "?", fi.hit_path);
	if (!rc)
		return;
	CHECK(err[0] && !strchr(err, '\n'), "fault %llu: error message \"%s\" is not one line",
	      (unsigned long long)k, err);
	if (fi.hit_kind == FI_ALLOC) {
		CHECK(strstr(err, "memory") != NULL,
		      "fault %llu (allocation): \"%s\" does not say memory ran out", (unsigned long long)k,
		      err);
	} else if (fi.hit_kind >= 0) {
		const char *base = strrchr(fi.hit_path, '/');
		base = base ? base + 1 : fi.hit_path;
		bool named = strstr(err, base) != NULL || !strcmp(fi.hit_path, dir) ||
			     (fi.hit_kind == FI_READ && strstr(err, "page") != NULL);
		if (!strcmp(fi.hit_path, dir))
			named = strstr(err, "directory") != NULL || strstr(err, dir) != NULL;
		CHECK(named, "fault %llu (%s of \"%s\"): the message \"%s\" does not name it",
		      (unsigned long long)k, fi_names[fi.hit_kind], fi.hit_path, err);
	}
}

/* ---- set-up ------------------------------------------------------------------------------- */

static const char *scratch_tmpfs;   /* removed on the way out, even after a failure */

static void die(const char *what, const char *err)
{
	fprintf(stderr, "hardening_fault: %s: %s\n", what, err);
	if (scratch_tmpfs)
		rmrf(scratch_tmpfs);
	exit(1);
}

static void make_refs(const char *dir)
{
	char err[GF_ERR_LEN] = "";
	gfe_engine *e;
	if (open_engine(dir, &e, err))
		die("reference store", err);
	const uint32_t ck = (uint32_t)gfe_model(e)->cfg.ckv_dim;
	for (int t = 0; t < N_TEXT; t++) {
		gfe_ingest *in;
		gfe_context ctx;
		cs_reader *rd = NULL;
		struct ref *r = &refs[t];
		if (gfe_ingest_begin(e, texts[t].name, &in, err) || feed(in, &texts[t], 0, texts[t].len, err) ||
		    gfe_ingest_finish(in, &ctx, NULL, err))
			die("reference ingest", err);
		gfe_ingest_free(in);
		r->key = ctx.key;
		r->n_tokens = ctx.n_tokens;
		r->rows = malloc((size_t)r->n_tokens * ck * sizeof(uint16_t));
		r->tok = malloc((size_t)r->n_tokens * sizeof(uint32_t));
		if (!r->rows || !r->tok || cs_reader_open(gfe_store(e), ctx.serial, &rd, err) ||
		    cs_reader_read(rd, 0, r->n_tokens, r->rows, r->tok, err))
			die("reference read", err);
		cs_reader_close(rd);
		if (cs_store_read_blob(gfe_store(e), ctx.serial, &r->blob, &r->blob_len, err))
			die("reference snapshot", err);
	}
	gfe_close(e);
}

/* A sealed, B checkpointed at about 40% of its text. */
static uint64_t base_b_tokens;

static void make_base(const char *dir, uint64_t *serial_a, uint64_t *serial_b)
{
	char err[GF_ERR_LEN] = "";
	gfe_engine *e;
	gfe_ingest *in;
	gfe_context ctx;
	if (open_engine(dir, &e, err))
		die("base store", err);
	if (gfe_ingest_begin(e, "A", &in, err) || feed(in, &texts[T_A], 0, texts[T_A].len, err) ||
	    gfe_ingest_finish(in, &ctx, NULL, err))
		die("base A", err);
	gfe_ingest_free(in);
	*serial_a = ctx.serial;
	if (gfe_ingest_begin(e, "B", &in, err) ||
	    feed(in, &texts[T_B], 0, texts[T_B].len * 2 / 5, err) || gfe_ingest_checkpoint(in, err))
		die("base B", err);
	*serial_b = gfe_ingest_serial(in);
	base_b_tokens = gfe_ingest_committed(in);
	if (base_b_tokens == 0)
		die("base B", "no checkpoint");
	gfe_ingest_free(in);
	gfe_close(e);
}

/* The child of a crash run: the scenario with a crash at k. Exits 3 at the fault. */
static int crash_child(uint64_t k, const char *dir, uint64_t serial_b)
{
	char err[GF_ERR_LEN] = "";
	gfe_engine *e;
	if (open_engine(dir, &e, err))
		die("crash run: open", err);
	fi_arm(k, true);
	int rc = scenario(e, serial_b, err);
	_exit(rc ? 3 : 0);   /* no clean-up: a crash */
}

static void run_crash(uint64_t k, const char *dir, uint64_t serial_b)
{
	char ks[32], sb[32];
	snprintf(ks, sizeof(ks), "%llu", (unsigned long long)k);
	snprintf(sb, sizeof(sb), "%llu", (unsigned long long)serial_b);
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", strerror(errno));
	if (pid == 0) {
		/* a fresh image: OpenBLAS's threads do not survive a fork */
		execl("/proc/self/exe", "hardening_fault", "--crash", ks, model_path, dir, sb, (char *)NULL);
		_exit(127);
	}
	int status;
	if (waitpid(pid, &status, 0) != pid)
		die("waitpid", strerror(errno));
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 3,
	      "crash at %llu: the child did not die at the fault (status %#x)", (unsigned long long)k,
	      status);
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN] = "", base[1024], work[1024], refdir[1024];
	uint64_t serial_a, serial_b, total;
	uint64_t counts[FI_KINDS];
	int crash_runs = 0, absorbed = 0;
	gfe_engine *e;

	for (int t = 0; t < N_TEXT; t++) {
		texts[t].data = make_text(t == T_B ? 2600 : 1700, (uint64_t)t + 7, &texts[t].len);
		if (!texts[t].data)
			die("text", "out of memory");
	}
	if (argc == 6 && !strcmp(argv[1], "--crash")) {
		model_path = argv[3];
		return crash_child(strtoull(argv[2], NULL, 10), argv[4], strtoull(argv[5], NULL, 10));
	}
	if (argc < 3 || argc > 5) {
		fprintf(stderr, "usage: hardening_fault MODEL.gguf WORKDIR [ERR_STRIDE [CRASH_STRIDE]]\n");
		return 1;
	}
	model_path = argv[1];
	unsigned err_stride = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 10) : 1;
	unsigned crash_stride = argc > 4 ? (unsigned)strtoul(argv[4], NULL, 10) : 1;
	if (!err_stride)
		err_stride = 1;
	if (!crash_stride)
		crash_stride = 1;
	/* The stores go to a tmpfs when there is one: a crash here is a process dying, after
	 * which the kernel keeps every byte written whether fsynced or not, so a disk would only
	 * add the wait for some 40,000 fsyncs. */
	char shm[] = "/dev/shm/hardening_fault.XXXXXX";
	const char *stores = argv[2];
	if (!getenv("HARDENING_FAULT_ON_DISK") && access("/dev/shm", W_OK) == 0 && mkdtemp(shm))
		stores = scratch_tmpfs = shm;
	snprintf(base, sizeof(base), "%s/base", stores);
	snprintf(work, sizeof(work), "%s/work", stores);
	snprintf(refdir, sizeof(refdir), "%s/ref", stores);
	rmrf(base);
	rmrf(work);
	rmrf(refdir);
	make_refs(refdir);
	make_base(base, &serial_a, &serial_b);

	/* the counting run, which must succeed and leave the store as the checks expect */
	copy_dir(base, work);
	if (open_engine(work, &e, err))
		die("open", err);
	fi_arm(UINT64_MAX, false);
	int rc = scenario(e, serial_b, err);
	fi_disarm();
	total = atomic_load(&fi.next);
	for (int i = 0; i < FI_KINDS; i++)
		counts[i] = atomic_load(&fi.count[i]);
	gfe_close(e);
	if (rc)
		die("the scenario without faults", err);
	check_store(work, serial_a, serial_b, UINT64_MAX, "no fault");
	if (total > KINDS_CAP)
		die("the scenario", "more steps than KINDS_CAP");
	CHECK(counts[FI_ALLOC] > 50 && counts[FI_WRITE] > 10 && counts[FI_FSYNC] > 10 &&
	      counts[FI_RENAME] >= 4 && counts[FI_READ] > 5,
	      "the scenario numbered too few steps: %llu allocations, %llu writes, %llu fsyncs, %llu renames, %llu reads",
	      (unsigned long long)counts[FI_ALLOC], (unsigned long long)counts[FI_WRITE],
	      (unsigned long long)counts[FI_FSYNC], (unsigned long long)counts[FI_RENAME],
	      (unsigned long long)counts[FI_READ]);

	unsigned io_seen = 0;
	int err_runs = 0;
	const char *only = getenv("HARDENING_FAULT_ONLY");   /* one id, for debugging */
	for (uint64_t k = only ? strtoull(only, NULL, 10) : 0; k < total && test_failures < 20; k++) {
		if (only && k != strtoull(only, NULL, 10))
			break;
		const int kind = k < KINDS_CAP ? fi.kinds[k] : FI_ALLOC;
		if (k % err_stride == 0) {
			/* error at k, handled in process */
			rmrf(work);
			copy_dir(base, work);
			if (open_engine(work, &e, err))
				die("open", err);
			err[0] = 0;
			fi_arm(k, false);
			rc = scenario(e, serial_b, err);
			fi_disarm();
			gfe_close(e);
			CHECK(fi.hit_kind == kind, "fault %llu was a %s in the counting run, a %s now",
			      (unsigned long long)k, fi_names[kind],
			      fi.hit_kind >= 0 ? fi_names[fi.hit_kind] : "nothing");
			check_message(k, rc, err, work);
			absorbed += rc == 0;
			check_store(work, serial_a, serial_b, k, "error");
			err_runs++;
		}
		/* crash at k, for steps that change the disk */
		if ((kind == FI_WRITE || kind == FI_FSYNC || kind == FI_RENAME) &&
		    io_seen++ % crash_stride == 0) {
			rmrf(work);
			copy_dir(base, work);
			run_crash(k, work, serial_b);
			fi.hit_kind = kind;
			fi.hit_path[0] = 0;
			check_store(work, serial_a, serial_b, k, "crash");
			crash_runs++;
		}
	}
	printf("texts: A %llu tokens, B %llu (resumed from %llu committed), C %llu; pages of %d tokens, a checkpoint every %d\n",
	       (unsigned long long)refs[T_A].n_tokens, (unsigned long long)refs[T_B].n_tokens,
	       (unsigned long long)base_b_tokens, (unsigned long long)refs[T_C].n_tokens, PAGE_TOKENS,
	       CHECKPOINT);
	printf("fault walk: %llu ids (%llu allocations, %llu reads, %llu writes, %llu fsyncs, %llu renames), "
	       "%d failed in process, %d crash runs; %d faults absorbed\n",
	       (unsigned long long)total, (unsigned long long)counts[FI_ALLOC],
	       (unsigned long long)counts[FI_READ], (unsigned long long)counts[FI_WRITE],
	       (unsigned long long)counts[FI_FSYNC], (unsigned long long)counts[FI_RENAME], err_runs,
	       crash_runs, absorbed);
	if (!test_failures || stores == shm) {
		rmrf(base);
		rmrf(work);
		rmrf(refdir);
		if (stores == shm)
			rmdir(shm);
	}
	for (int t = 0; t < N_TEXT; t++) {
		free(texts[t].data);
		free(refs[t].rows);
		free(refs[t].tok);
		free(refs[t].blob);
	}
	return test_failures ? 1 : 0;
}
