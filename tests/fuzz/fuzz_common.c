/*
 * fuzz_common.c — see fuzz_common.h.
 */
#include "fuzz_common.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char *fuzz_memfile(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	size_t done = 0;

	if (fd < 0) {
		fd = memfd_create("gf-fuzz", MFD_CLOEXEC);
		FUZZ_CHECK(fd >= 0, "memfd_create: %s", strerror(errno));
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	FUZZ_CHECK(ftruncate(fd, 0) == 0, "ftruncate: %s", strerror(errno));
	while (done < size) {
		ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);

		FUZZ_CHECK(n > 0, "pwrite: %s", strerror(errno));
		done += (size_t)n;
	}
	return path;
}

void fuzz_check_err(const char *err, size_t len, const char *what)
{
	static int verbose = -1;
	size_t n = strnlen(err, len);

	if (verbose < 0)
		verbose = getenv("GF_FUZZ_VERBOSE") != NULL;
	if (verbose)
		fprintf(stderr, "%s: %.*s\n", what, (int)n, err);

	FUZZ_CHECK(n < len, "%s: error message not NUL-terminated", what);
	FUZZ_CHECK(n > 0, "%s failed with an empty error message", what);
	FUZZ_CHECK(!memchr(err, '\n', n) && !memchr(err, '\r', n),
		   "%s: error message spans lines: %s", what, err);
}

uint64_t fuzz_touch(const void *p, size_t n)
{
	const volatile uint8_t *b = p;
	uint64_t h = 0;

	for (size_t i = 0; i < n; i++)
		h = h * 31 + b[i];
	return h;
}

/* ---- the mmap wrapper (-Wl,--wrap=mmap,--wrap=munmap) -------------------------------- */

void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int __real_munmap(void *addr, size_t len);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int __wrap_munmap(void *addr, size_t len);

#define MAX_COPIES 16
static void *copies[MAX_COPIES];

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct stat st;
	void *p;
	size_t done = 0;
	int slot = -1;

	if (addr || fd < 0 || off != 0 || prot != PROT_READ || !(flags & MAP_PRIVATE) ||
	    fstat(fd, &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != len)
		return __real_mmap(addr, len, prot, flags, fd, off);
	for (int i = 0; i < MAX_COPIES; i++)
		if (!copies[i]) {
			slot = i;
			break;
		}
	/* Page-aligned like a mapping: readers may rely on the base's alignment. */
	if (slot < 0 || posix_memalign(&p, 4096, len ? len : 1))
		return __real_mmap(addr, len, prot, flags, fd, off);
	while (done < len) {
		ssize_t n = pread(fd, (uint8_t *)p + done, len - done, (off_t)done);

		if (n <= 0) {
			free(p);
			errno = EIO;
			return MAP_FAILED;
		}
		done += (size_t)n;
	}
	copies[slot] = p;
	return p;
}

int __wrap_munmap(void *addr, size_t len)
{
	for (int i = 0; i < MAX_COPIES; i++)
		if (addr && copies[i] == addr) {
			copies[i] = NULL;
			free(addr);
			return 0;
		}
	return __real_munmap(addr, len);
}
