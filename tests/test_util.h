/*
 * test_util.h — what the C tests of model/ and the engine share: a CHECK that counts
 * failures and carries on (so one run reports every broken case), and whole-file reads.
 */
#ifndef GF_TEST_UTIL_H
#define GF_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>

static int test_failures __attribute__((unused));

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond)) {                                                  \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
			fprintf(stderr, __VA_ARGS__);                           \
			fprintf(stderr, "\n");                                  \
			test_failures++;                                        \
		}                                                               \
	} while (0)

/* The whole file, NUL-terminated (*len excludes the NUL), malloc'd; NULL if unreadable. */
static inline void *test_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;
	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
		buf = malloc((size_t)n + 1);
		if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
			free(buf);
			buf = NULL;
		}
		if (buf) {
			buf[n] = 0;
			*len = (size_t)n;
		}
	}
	fclose(f);
	return buf;
}

/* dir/name read whole, or the test ends (exit 1) naming the file. */
static inline void *test_slurp(const char *dir, const char *name, size_t *len)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	void *buf = test_read_file(path, len);
	if (!buf) {
		fprintf(stderr, "cannot read %s\n", path);
		exit(1);
	}
	return buf;
}

#endif
