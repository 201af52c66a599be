/*
 * cache_store_sigkill: a writer process appends, checkpoints, seals, resumes and removes
 * contexts in a loop and is killed with SIGKILL at a random moment, 60 times over one
 * store directory. After each kill the store is reopened and must show every context the
 * writer reported committed, at that commit or a later one, byte-identical (rows, tokens,
 * key and blob), verified, and nothing else: no half-written context.
 *
 * The writer reports each commit on a pipe only after it returned, so the parent's view can
 * lag (a commit that became durable just before the kill); hence "or a later one". Data
 * depend only on (serial, position), so any committed prefix can be checked.
 */
#include "cache_store_common.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KILLS 60
#define MAX_CTX 6
#define MAX_TRACK 4096

static uint64_t seed_of(uint64_t serial)
{
	return serial * 1000 + 17;
}

struct known {
	uint64_t n;          /* last reported commit */
	bool present;        /* reported committed and not reported removed */
	bool sealed;
	bool removing;       /* removal announced: may or may not have happened */
};

static int commit(cs_writer *w, uint64_t n, uint32_t flags, char *err)
{
	uint8_t blob[3000];
	uint64_t seed = seed_of(cs_writer_serial(w));
	size_t bl = cst_blob_len(seed, n);

	cst_blob(seed, n, blob, bl);
	return cs_writer_commit(w, blob, bl, flags, err);
}

static void report(int fd, char kind, uint64_t serial, uint64_t n, bool sealed)
{
	char line[96];
	int len = snprintf(line, sizeof(line), "%c %llu %llu %d\n", kind,
			   (unsigned long long)serial, (unsigned long long)n, sealed);

	if (write(fd, line, (size_t)len) != len)
		_exit(5);
}

static void die(const char *what, int rc, const char *err)
{
	fprintf(stderr, "writer: %s: rc %d: %s\n", what, rc, err);
	_exit(4);
}

/* The writer: never returns. */
static void writer(const char *dir, const cst_mode *m, uint64_t rng, int fd)
{
	static const cs_dtype dts[] = { CS_DTYPE_F32, CS_DTYPE_F16, CS_DTYPE_BF16 };
	static const uint32_t pts[] = { 8, 16, 64 };
	char err[CS_ERR_LEN] = "";
	cs_config cfg;
	cs_store *s;
	int rc;

	cst_config(&cfg, m);
	rc = cs_store_open(&s, dir, &cfg, err);
	if (rc)
		die("open", rc, err);
	for (;;) {
		cs_ctx_info *list;
		size_t n_list, n_sealed = 0;
		cs_writer *w = NULL;
		cs_dtype dt = CS_DTYPE_F32;
		uint32_t width = 1;
		uint64_t serial, n;

		rc = cs_store_list(s, &list, &n_list, err);
		if (rc)
			die("list", rc, err);
		for (size_t i = 0; i < n_list; i++)
			n_sealed += list[i].sealed;
		/* keep the store small: drop the oldest sealed context */
		if (n_list >= MAX_CTX && n_sealed) {
			for (size_t i = 0; i < n_list; i++) {
				if (list[i].sealed) {
					report(fd, 'R', list[i].serial, 0, true);
					rc = cs_store_remove(s, list[i].serial, err);
					if (rc)
						die("remove", rc, err);
					break;
				}
			}
		}
		/* resume an unsealed context, or start one */
		for (size_t i = 0; i < n_list && !w; i++) {
			if (!list[i].sealed && cst_mix(rng++) % 3) {
				rc = cs_writer_resume(s, list[i].serial, &w, err);
				if (rc)
					die("resume", rc, err);
				dt = list[i].dtype;
				width = list[i].width;
			}
		}
		free(list);
		if (!w) {
			/* One draw per statement: an initializer list's order is unspecified. */
			const uint64_t d_dtype = cst_mix(rng++);
			const uint64_t d_width = cst_mix(rng++);
			const uint64_t d_page = cst_mix(rng++);
			cs_ctx_params cp = { .model_id = 77, .dtype = dts[d_dtype % 3],
					     .width = 1 + (uint32_t)(d_width % 32),
					     .page_tokens = pts[d_page % 3] };

			rc = cs_writer_begin(s, &cp, &w, err);
			if (rc)
				die("begin", rc, err);
			dt = cp.dtype;
			width = cp.width;
		}
		serial = cs_writer_serial(w);
		/* a few appends and checkpoints, then maybe a seal */
		for (int round = 0; round < 4; round++) {
			uint64_t add = 1 + cst_mix(rng++) % 300;
			uint32_t flags = 0;

			n = cs_writer_tokens(w);
			cst_append(w, dt, width, seed_of(serial), n, n + add, rng++);
			n += add;
			if (n > 1200)
				flags = CS_COMMIT_SEAL;
			rc = commit(w, n, flags, err);
			if (rc)
				die("commit", rc, err);
			report(fd, 'C', serial, n, flags != 0);
			if (flags)
				break;
		}
		cs_writer_free(w);
	}
}

int main(void)
{
	char *dir = cst_tmpdir("cs_sigkill"), err[CS_ERR_LEN] = "";
	static struct known known[MAX_TRACK];
	uint64_t rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	int kills = 0, early = 0;
	cs_store *s;
	int rc = cst_open(&s, dir, &cst_modes[0], NULL);

	if (rc == 77)
		rc = cst_open(&s, dir, &cst_modes[3], NULL);
	CHECK(rc == 0, "open");
	cs_store_close(s);
	printf("seed %llu\n", (unsigned long long)rng);

	for (int it = 0; it < KILLS; it++) {
		const cst_mode *m = &cst_modes[it % 2 ? 3 : 0];
		int pfd[2], status;
		pid_t pid;
		char buf[1 << 16];
		size_t got = 0;
		ssize_t k;
		cs_ctx_info *list;
		size_t n_list;

		CHECK(!pipe(pfd), "pipe");
		fflush(NULL);
		pid = fork();
		CHECK(pid >= 0, "fork");
		if (pid == 0) {
			close(pfd[0]);
			writer(dir, m, rng + (uint64_t)it * 7919, pfd[1]);
			_exit(6);
		}
		close(pfd[1]);
		usleep((useconds_t)(1000 + cst_mix(rng + (uint64_t)it) % 30000));
		kill(pid, SIGKILL);
		CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
		while ((k = read(pfd[0], buf + got, sizeof(buf) - 1 - got)) > 0)
			got += (size_t)k;
		close(pfd[0]);
		buf[got] = 0;
		if (WIFEXITED(status))
			CHECK(0, "writer exited on its own with %d (mode %s)", WEXITSTATUS(status),
			      m->name);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "status %#x", status);
		kills++;
		/* what the writer reported */
		for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
			char kind;
			unsigned long long serial, n;
			int sealed;

			if (sscanf(line, "%c %llu %llu %d", &kind, &serial, &n, &sealed) != 4 ||
			    serial >= MAX_TRACK)
				continue;   /* a line cut by the kill cannot be: writes are atomic */
			if (kind == 'C') {
				known[serial].n = n;
				known[serial].present = true;
				known[serial].sealed = sealed;
			} else {
				known[serial].removing = true;
			}
		}
		if (!got)
			early++;

		/* the store as a crash left it */
		rc = cst_open(&s, dir, &cst_modes[it % 4], NULL);
		if (rc == 77)
			rc = cst_open(&s, dir, &cst_modes[3], NULL);
		CHECK(rc == 0, "reopen after kill %d", it);
		rc = cs_store_list(s, &list, &n_list, err);
		CHECK_RC(rc, err);
		for (size_t i = 0; i < n_list; i++) {
			const cs_ctx_info *x = &list[i];
			struct known *kn;

			CHECK(x->serial < MAX_TRACK, "serial");
			kn = &known[x->serial];
			if (kn->present && !kn->removing) {
				CHECK(x->n_tokens >= kn->n, "kill %d: #%llu has %llu tokens, %llu were committed",
				      it, (unsigned long long)x->serial, (unsigned long long)x->n_tokens,
				      (unsigned long long)kn->n);
				CHECK(!kn->sealed || x->sealed, "kill %d: #%llu lost its seal", it,
				      (unsigned long long)x->serial);
			}
			cst_check_ctx(s, x->serial, seed_of(x->serial), x->n_tokens, true);
			rc = cs_store_verify(s, x->serial, NULL, err);
			CHECK_RC(rc, err);
			/* the parent now knows this state as committed */
			kn->n = x->n_tokens;
			kn->sealed = x->sealed;
			kn->present = true;
			kn->removing = false;
		}
		for (uint64_t serial = 0; serial < MAX_TRACK; serial++) {
			bool found = false;

			if (!known[serial].present)
				continue;
			for (size_t i = 0; i < n_list; i++)
				found |= list[i].serial == serial;
			CHECK(found || known[serial].removing, "kill %d: committed context #%llu vanished",
			      it, (unsigned long long)serial);
			if (!found)
				known[serial] = (struct known){ 0 };
		}
		free(list);
		cs_store_close(s);
	}
	printf("sigkill: %d kills (%d before any commit), every committed context intact\n", kills,
	       early);
	cst_rmrf(dir);
	free(dir);
	return 0;
}
