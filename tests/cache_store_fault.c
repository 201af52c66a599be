/*
 * cache_store_fault: crash safety, proven by failing each I/O step in turn. Built against
 * gfcache_fi (CS_FAULT_INJECTION), whose fault hook numbers every write, fsync and rename.
 *
 * A scenario (resume a checkpointed context, checkpoint it and seal it, create a second one
 * with two checkpoints, remove a third) is run once to number its steps; then, for every
 * step k, from the same starting directory:
 *   - crash: a child process runs the scenario with step k failing and _exits at the first
 *     error, as a crash would (a torn half-write included, nothing cleaned up);
 *   - error: the scenario runs in this process with step k failing, then frees everything
 *     the ordinary way;
 * and in both cases the store, reopened, must show every context either in its last
 * committed state or in the one whose commit was in progress, byte-identical, verified,
 * with no other context and no stray file; and it must take new work.
 */
#include "cache_store_common.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define W 6
#define PT 16
#define DT CS_DTYPE_F16
#define SEED_A 1
#define SEED_B 2
#define SEED_C 3

struct fi {
	uint64_t calls;      /* ids handed out */
	uint64_t fail_at;    /* UINT64_MAX: never */
	uint64_t writes, fsyncs, renames;
};

static int hook(void *arg, uint64_t id, cs_fault_op op, const char *path)
{
	struct fi *f = arg;

	(void)path;
	f->calls = id + 1;
	f->writes += op == CS_FAULT_WRITE;
	f->fsyncs += op == CS_FAULT_FSYNC;
	f->renames += op == CS_FAULT_RENAME;
	return id == f->fail_at;
}

/* Step boundaries (fault ids) of the counting run. */
enum { ST_B90, ST_B130, ST_C40, ST_C75, ST_RM_A, N_ST };
struct marks {
	uint64_t start[N_ST], end[N_ST];
	uint64_t serial_c;
};

static int commit(cs_writer *w, uint64_t seed, uint64_t n, uint32_t flags, char *err)
{
	uint8_t blob[3000];
	size_t bl = cst_blob_len(seed, n);

	cst_blob(seed, n, blob, bl);
	return cs_writer_commit(w, blob, bl, flags, err);
}

/* Appends through the API directly so that an error returns instead of exiting. */
static int append(cs_writer *w, uint64_t seed, uint64_t from, uint64_t to, char *err)
{
	uint16_t rows[128 * W];
	uint32_t tok[128];

	while (from < to) {
		uint64_t n = to - from < 23 ? to - from : 23;
		int rc;

		cst_rows(DT, W, seed, from, n, rows);
		cst_tokens(seed, from, n, tok);
		rc = cs_writer_append(w, rows, tok, n, err);
		if (rc)
			return rc;
		from += n;
	}
	return 0;
}

/* The scenario. Returns 0 when every step succeeded, else the first error (the writer in
 * *wp, if any, is left for the caller). f->calls marks step boundaries. */
static int scenario(cs_store *s, struct fi *f, uint64_t sa, uint64_t sb, struct marks *mk,
		    cs_writer **wp, char *err)
{
	cs_ctx_params cp = { .model_id = 5, .dtype = DT, .width = W, .page_tokens = PT,
			     .name = "c" };
	int rc;

#define STEP(i, expr)                                  \
	do {                                           \
		if (mk)                                \
			mk->start[i] = f->calls;       \
		rc = (expr);                           \
		if (mk)                                \
			mk->end[i] = f->calls;         \
		if (rc)                                \
			return rc;                     \
	} while (0)

	rc = cs_writer_resume(s, sb, wp, err);
	if (rc)
		return rc;
	rc = append(*wp, SEED_B, 50, 90, err);
	if (rc)
		return rc;
	STEP(ST_B90, commit(*wp, SEED_B, 90, 0, err));
	rc = append(*wp, SEED_B, 90, 130, err);
	if (rc)
		return rc;
	STEP(ST_B130, commit(*wp, SEED_B, 130, CS_COMMIT_SEAL, err));
	cs_writer_free(*wp);
	*wp = NULL;

	rc = cs_writer_begin(s, &cp, wp, err);
	if (rc)
		return rc;
	if (mk)
		mk->serial_c = cs_writer_serial(*wp);
	rc = append(*wp, SEED_C, 0, 40, err);
	if (rc)
		return rc;
	STEP(ST_C40, commit(*wp, SEED_C, 40, 0, err));
	rc = append(*wp, SEED_C, 40, 75, err);
	if (rc)
		return rc;
	STEP(ST_C75, commit(*wp, SEED_C, 75, 0, err));
	cs_writer_free(*wp);
	*wp = NULL;

	STEP(ST_RM_A, cs_store_remove(s, sa, err));
	return cs_store_flush(s, err);
#undef STEP
}

/* The state a context may show after a fault at id k: commits are (range, tokens). */
struct commit_rec {
	int step;            /* -1: the base state */
	uint64_t n;
	bool exists, sealed;
};

static bool allowed(const struct marks *mk, uint64_t k, const struct commit_rec *cr, int n_cr,
		    bool exists, uint64_t n, bool sealed)
{
	int last_done = 0;

	for (int i = 1; i < n_cr; i++)
		if (mk->end[cr[i].step] <= k)
			last_done = i;
	for (int i = 0; i < n_cr; i++) {
		bool ok = i == last_done ||
			  (i > 0 && mk->start[cr[i].step] <= k && k < mk->end[cr[i].step]);

		if (ok && cr[i].exists == exists && (!exists || (cr[i].n == n && cr[i].sealed == sealed)))
			return true;
	}
	return false;
}

static void check_after(const char *dir, const cst_mode *m, const struct marks *mk, uint64_t k,
			uint64_t sa, uint64_t sb, const char *variant)
{
	static const struct commit_rec ca[] = { { -1, 100, true, true }, { ST_RM_A, 0, false, false } };
	static const struct commit_rec cb[] = { { -1, 50, true, false }, { ST_B90, 90, true, false },
						{ ST_B130, 130, true, true } };
	static const struct commit_rec cc[] = { { -1, 0, false, false }, { ST_C40, 40, true, false },
						{ ST_C75, 75, true, false } };
	char err[CS_ERR_LEN] = "";
	cs_ctx_info *list;
	size_t n_list, files = 0, want_files = 2;
	bool seen_a = false, seen_c = false;
	cs_store *s;
	DIR *d;
	struct dirent *de;
	int rc = cst_open(&s, dir, m, NULL);

	CHECK(rc == 0, "reopen after %s at %llu", variant, (unsigned long long)k);
	rc = cs_store_list(s, &list, &n_list, err);
	CHECK_RC(rc, err);
	for (size_t i = 0; i < n_list; i++) {
		const cs_ctx_info *x = &list[i];
		uint64_t seed;
		bool ok;

		if (x->serial == sa) {
			ok = allowed(mk, k, ca, 2, true, x->n_tokens, x->sealed);
			seed = SEED_A;
			seen_a = true;
		} else if (x->serial == sb) {
			ok = allowed(mk, k, cb, 3, true, x->n_tokens, x->sealed);
			seed = SEED_B;
		} else if (x->serial == mk->serial_c) {
			ok = allowed(mk, k, cc, 3, true, x->n_tokens, x->sealed);
			seed = SEED_C;
			seen_c = true;
		} else {
			CHECK(0, "%s at %llu: unexpected context #%llu", variant, (unsigned long long)k,
			      (unsigned long long)x->serial);
		}
		CHECK(ok, "%s at %llu: context #%llu shows %llu tokens%s, not a committed state",
		      variant, (unsigned long long)k, (unsigned long long)x->serial,
		      (unsigned long long)x->n_tokens, x->sealed ? " sealed" : "");
		cst_check_ctx(s, x->serial, seed, x->n_tokens, true);
		rc = cs_store_verify(s, x->serial, NULL, err);
		CHECK_RC(rc, err);
		want_files += 3;   /* pages, index, blob */
	}
	CHECK(seen_a || allowed(mk, k, ca, 2, false, 0, false), "%s at %llu: context a lost",
	      variant, (unsigned long long)k);
	CHECK(seen_c || allowed(mk, k, cc, 3, false, 0, false), "%s at %llu: context c lost",
	      variant, (unsigned long long)k);
	CHECK(n_list >= 1, "context b lost");
	free(list);
	/* recovery left exactly MANIFEST, LOCK and each context's pages, index and blob */
	d = opendir(dir);
	CHECK(d, "opendir");
	while ((de = readdir(d)))
		files += de->d_name[0] != '.';
	closedir(d);
	CHECK(files == want_files, "%s at %llu: %zu files, expected %zu", variant,
	      (unsigned long long)k, files, want_files);
	/* and it takes new work (every few steps: each check costs fsyncs) */
	if (k % 4 == 0 || k == UINT64_MAX - 1) {
		cs_ctx_params cp = { .model_id = 5, .dtype = DT, .width = W, .page_tokens = PT };
		cs_writer *w;
		uint64_t serial;

		rc = cs_writer_begin(s, &cp, &w, err);
		CHECK_RC(rc, err);
		serial = cs_writer_serial(w);
		rc = append(w, 99, 0, 33, err);
		CHECK_RC(rc, err);
		rc = commit(w, 99, 33, CS_COMMIT_SEAL, err);
		CHECK_RC(rc, err);
		cs_writer_free(w);
		cst_check_ctx(s, serial, 99, 33, true);
	}
	cs_store_close(s);
}

static void make_base(const char *dir, const cst_mode *m, uint64_t *sa, uint64_t *sb)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_params cp = { .model_id = 5, .dtype = DT, .width = W, .page_tokens = PT };
	cs_store *s;
	cs_writer *w;
	int rc = cst_open(&s, dir, m, NULL);

	CHECK(rc == 0, "open base");
	rc = cs_writer_begin(s, &cp, &w, err);
	CHECK_RC(rc, err);
	*sa = cs_writer_serial(w);
	rc = append(w, SEED_A, 0, 100, err);
	CHECK_RC(rc, err);
	rc = commit(w, SEED_A, 100, CS_COMMIT_SEAL, err);
	CHECK_RC(rc, err);
	cs_writer_free(w);
	rc = cs_writer_begin(s, &cp, &w, err);
	CHECK_RC(rc, err);
	*sb = cs_writer_serial(w);
	rc = append(w, SEED_B, 0, 50, err);
	CHECK_RC(rc, err);
	rc = commit(w, SEED_B, 50, 0, err);
	CHECK_RC(rc, err);
	cs_writer_free(w);
	cs_store_close(s);
}

static cs_store *open_fi(const char *dir, const cst_mode *m, struct fi *f)
{
	char err[CS_ERR_LEN] = "";
	cs_config cfg;
	cs_store *s;
	int rc;

	cst_config(&cfg, m);
	cfg.fault = hook;
	cfg.fault_arg = f;
	rc = cs_store_open(&s, dir, &cfg, err);
	CHECK_RC(rc, err);
	return s;
}

static int run_mode(const cst_mode *m)
{
	char err[CS_ERR_LEN] = "", *base = cst_tmpdir("cs_fault_base"), *work = cst_tmpdir("cs_fault");
	struct fi f = { .fail_at = UINT64_MAX }, counted;
	struct marks mk;
	uint64_t sa, sb, total;
	cs_writer *w = NULL;
	cs_store *s;
	int rc = cst_open(&s, base, m, NULL);

	if (rc == 77) {
		cst_rmrf(base);
		cst_rmrf(work);
		free(base);
		free(work);
		return 77;
	}
	cs_store_close(s);
	cst_rmrf(base);
	make_base(base, m, &sa, &sb);

	/* the counting run */
	cst_rmrf(work);
	cst_copy_dir(base, work);
	s = open_fi(work, m, &f);
	CHECK(f.calls == 0, "open issued %llu fault-checked steps", (unsigned long long)f.calls);
	memset(&mk, 0, sizeof(mk));
	rc = scenario(s, &f, sa, sb, &mk, &w, err);
	CHECK_RC(rc, err);
	cs_store_close(s);
	total = f.calls;
	counted = f;
	CHECK(total >= 30 && f.renames == 5 && f.fsyncs >= 20, "%llu steps, %llu renames, %llu fsyncs",
	      (unsigned long long)total, (unsigned long long)f.renames, (unsigned long long)f.fsyncs);
	check_after(work, m, &mk, UINT64_MAX - 1, sa, sb, "no fault");

	for (uint64_t k = 0; k < total; k++) {
		pid_t pid;
		int status;

		/* crash at step k */
		cst_rmrf(work);
		cst_copy_dir(base, work);
		fflush(NULL);
		pid = fork();
		CHECK(pid >= 0, "fork");
		if (pid == 0) {
			struct fi cf = { .fail_at = k };
			cs_store *cs = open_fi(work, m, &cf);
			cs_writer *cw = NULL;

			_exit(scenario(cs, &cf, sa, sb, NULL, &cw, err) ? 3 : 0);
		}
		CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 3,
		      "step %llu failed but the scenario went on (status %#x)", (unsigned long long)k,
		      status);
		check_after(work, m, &mk, k, sa, sb, "crash");

		/* error at step k, handled in-process */
		cst_rmrf(work);
		cst_copy_dir(base, work);
		f = (struct fi){ .fail_at = k };
		s = open_fi(work, m, &f);
		w = NULL;
		rc = scenario(s, &f, sa, sb, NULL, &w, err);
		CHECK(rc != 0, "step %llu failed but the scenario succeeded", (unsigned long long)k);
		CHECK(strlen(err) > 0 && !strchr(err, '\n'), "error message: \"%s\"", err);
		cs_writer_free(w);
		cs_store_close(s);
		check_after(work, m, &mk, k, sa, sb, "error");
	}
	printf("%s: %llu fault points (%llu writes, %llu fsyncs, %llu renames), each failed twice\n",
	       m->name, (unsigned long long)total, (unsigned long long)counted.writes,
	       (unsigned long long)counted.fsyncs, (unsigned long long)counted.renames);
	cst_rmrf(base);
	cst_rmrf(work);
	free(base);
	free(work);
	return 0;
}

int main(void)
{
	int ran = 0;

	ran += run_mode(&cst_modes[0]) == 0;
	ran += run_mode(&cst_modes[3]) == 0;
	return ran ? 0 : 77;
}
