/*
 * cache_store_fallback: the pread/pwrite backend when io_uring really is unavailable. A
 * child process forbids io_uring_setup with a seccomp filter (as container sandboxes do),
 * then opens a store with the automatic choice: it must pick pread and pass a write/read
 * round trip; asking for io_uring explicitly must fail with a clear message. GF_CS_IO=sync
 * must force pread too.
 */
#include "cache_store_common.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int forbid_io_uring(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = (unsigned short)(sizeof(f) / sizeof(f[0])), .filter = f };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -errno;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) ? -errno : 0;
}

static void roundtrip(cs_store *s, uint64_t seed)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_params cp = { .model_id = 2, .dtype = CS_DTYPE_F16, .width = 9, .page_tokens = 16 };
	cs_writer *w;
	uint64_t serial;
	int rc = cs_writer_begin(s, &cp, &w, err);

	CHECK_RC(rc, err);
	serial = cs_writer_serial(w);
	cst_append(w, CS_DTYPE_F16, 9, seed, 0, 300, 1);
	rc = cs_writer_commit(w, NULL, 0, 0, err);
	CHECK_RC(rc, err);
	cst_append(w, CS_DTYPE_F16, 9, seed, 300, 333, 2);
	rc = cs_writer_commit(w, NULL, 0, CS_COMMIT_SEAL, err);
	CHECK_RC(rc, err);
	cs_writer_free(w);
	cst_check_ctx(s, serial, seed, 333, false);
	rc = cs_store_verify(s, serial, NULL, err);
	CHECK_RC(rc, err);
}

static int child(const char *dir)
{
	char err[CS_ERR_LEN] = "";
	cs_config cfg;
	cs_store *s;
	int rc = forbid_io_uring();

	if (rc) {
		printf("seccomp unavailable here (%s): skipped\n", strerror(-rc));
		return 77;
	}
	cs_config_defaults(&cfg);
	cfg.backend = CS_IO_URING;
	rc = cs_store_open(&s, dir, &cfg, err);
	CHECK(rc == -ENOSYS && strstr(err, "io_uring"), "forced io_uring without io_uring: rc %d %s",
	      rc, err);
	cfg.backend = CS_IO_AUTO;
	rc = cs_store_open(&s, dir, &cfg, err);
	CHECK_RC(rc, err);
	CHECK(!strcmp(cs_store_backend_name(s), "pread"), "backend %s", cs_store_backend_name(s));
	roundtrip(s, 12);
	cs_store_close(s);
	return 0;
}

int main(void)
{
	char err[CS_ERR_LEN] = "", *dir = cst_tmpdir("cs_fallback");
	cs_config cfg;
	cs_store *s;
	int status, rc;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0)
		_exit(child(dir));
	CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
	CHECK(WIFEXITED(status), "child died: status %#x", status);
	rc = WEXITSTATUS(status);
	CHECK(rc == 0 || rc == 77, "child failed (%d)", rc);

	/* the environment forces the fallback too */
	setenv("GF_CS_IO", "sync", 1);
	cs_config_defaults(&cfg);
	rc = cs_store_open(&s, dir, &cfg, err);
	CHECK_RC(rc, err);
	CHECK(!strcmp(cs_store_backend_name(s), "pread"), "GF_CS_IO=sync ignored");
	roundtrip(s, 13);
	cs_store_close(s);
	setenv("GF_CS_IO", "bogus", 1);
	CHECK(cs_store_open(&s, dir, &cfg, err) == -EINVAL && strstr(err, "GF_CS_IO"),
	      "bad GF_CS_IO accepted: %s", err);
	unsetenv("GF_CS_IO");
	cst_rmrf(dir);
	free(dir);
	printf("fallback: %s\n", rc == 77 ? "env only (no seccomp)" : "ok");
	return 0;
}
