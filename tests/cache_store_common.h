/*
 * cache_store_common.h — helpers shared by the cache_store tests: temporary directories,
 * I/O modes to loop over, deterministic test data and content checks.
 * Test programs exit 0 (pass), 1 (fail), 77 (skip).
 */
#ifndef CACHE_STORE_COMMON_H
#define CACHE_STORE_COMMON_H

#include "cache_store.h"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                                \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                   \
			fputc('\n', stderr);                                            \
			exit(1);                                                        \
		}                                                                       \
	} while (0)

#define CHECK_RC(rc, err) CHECK((rc) == 0, "rc %d (%s)", (rc), (err))

/* An I/O configuration to run a test under. */
typedef struct cst_mode {
	const char *name;
	cs_backend backend;
	cs_direct direct;
} cst_mode;

extern const cst_mode cst_modes[4];   /* io_uring/pread x O_DIRECT/buffered */

/* Fills cfg for mode m. */
void cst_config(cs_config *cfg, const cst_mode *m);
/* Opens a store in dir under mode m; returns 0, or 77 when the machine lacks the mode
 * (io_uring refused, or O_DIRECT refused by the filesystem); any other error fails. */
int cst_open(cs_store **s, const char *dir, const cst_mode *m, cs_config *cfg_out);

/* A fresh directory under the build tree (or $CS_TEST_TMPDIR); removed by cst_rmrf. */
char *cst_tmpdir(const char *tag);
void cst_rmrf(const char *path);
/* Copies every regular file of src into dst (created). */
void cst_copy_dir(const char *src, const char *dst);

/* Deterministic data: context `seed`, token position t, element j. Rows mix smooth values
 * (compressible) with hashed ones (not) so both LZ4 paths run. */
uint64_t cst_mix(uint64_t x);
uint32_t cst_token(uint64_t seed, uint64_t t);
void cst_rows(cs_dtype dt, uint32_t width, uint64_t seed, uint64_t t0, uint64_t n, void *out);
void cst_tokens(uint64_t seed, uint64_t t0, uint64_t n, uint32_t *out);
/* Blob of a commit at n tokens: len and bytes derived from (seed, n). */
size_t cst_blob_len(uint64_t seed, uint64_t n);
void cst_blob(uint64_t seed, uint64_t n, uint8_t *out, size_t len);

/* Appends tokens [from, to) of seed in chunks of varying size. */
void cst_append(cs_writer *w, cs_dtype dt, uint32_t width, uint64_t seed, uint64_t from,
		uint64_t to, uint64_t chunk_seed);
/* Checks the context: every token, row and its blob equal the generator's for n tokens (and
 * its key equals the hash of the tokens); pages read both in order and backwards. */
void cst_check_ctx(cs_store *s, uint64_t serial, uint64_t seed, uint64_t n, bool check_blob);

#endif
