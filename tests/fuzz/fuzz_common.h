/*
 * fuzz_common.h — what the fuzz targets of tests/fuzz share.
 *
 * Every target is a libFuzzer entry point (LLVMFuzzerTestOneInput). Built with -DGF_FUZZ=ON
 * (clang) it links libFuzzer; in the ordinary builds the same file links replay_main.c,
 * which runs the committed corpus through it once (the seeds and the regression inputs of
 * fixed crashes), so a gcc or gcc+ASan build replays them too.
 *
 * Harness state (a memory file, the tables of the mmap wrapper, a vocabulary loaded once)
 * lives in statics: a fuzz process runs one input at a time in one thread.
 */
#ifndef GF_FUZZ_COMMON_H
#define GF_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Writes data to this process's memory file (memfd) and returns a path that opens it,
 * "/proc/self/fd/N": the readers under test take paths. Valid until the next call. */
const char *fuzz_memfile(const uint8_t *data, size_t size);

/* The readers map their input (gf_tset_map). Targets that link fuzz_common.c with
 * -Wl,--wrap=mmap,--wrap=munmap get a heap copy instead of a read-only file mapping, so
 * that AddressSanitizer sees a read one byte past the file (a mapping would give the zeros
 * of the rest of the page, silently). Only whole-file, read-only, private maps of regular
 * files are replaced; anything else goes to the real mmap. */

/* An invariant of the code under test broke: print and abort (libFuzzer keeps the input). */
#define FUZZ_CHECK(cond, ...)                                                            \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                    \
			fputc('\n', stderr);                                             \
			abort();                                                         \
		}                                                                        \
	} while (0)

/* An error message must be one line: non-empty, NUL-terminated within len, no newline.
 * With GF_FUZZ_VERBOSE set in the environment the message is printed (to see which
 * error a seed ends in). */
void fuzz_check_err(const char *err, size_t len, const char *what);

/* Reads every byte of [p, p+n) (AddressSanitizer checks each). Returns a checksum so the
 * loop is not optimised away. */
uint64_t fuzz_touch(const void *p, size_t n);

/* Little-endian field access for harnesses that build structured inputs. */
static inline uint32_t fuzz_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t fuzz_get64(const uint8_t *p)
{
	return (uint64_t)fuzz_get32(p) | (uint64_t)fuzz_get32(p + 4) << 32;
}

/* Consumes structured input front to back, as libFuzzer's FuzzedDataProvider does; reads
 * past the end give zeros. */
typedef struct fuzz_in {
	const uint8_t *p;
	size_t n;
} fuzz_in;

static inline uint8_t fuzz_u8(fuzz_in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

static inline uint32_t fuzz_u32(fuzz_in *in)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++)
		v |= (uint32_t)fuzz_u8(in) << (8 * i);
	return v;
}

/* A piece of up to max bytes whose length is the next byte pair (little-endian). */
static inline const uint8_t *fuzz_piece(fuzz_in *in, size_t max, size_t *len)
{
	size_t want = fuzz_u8(in);
	const uint8_t *p;

	want |= (size_t)fuzz_u8(in) << 8;
	if (want > max)
		want = max;
	if (want > in->n)
		want = in->n;
	p = in->p;
	in->p += want;
	in->n -= want;
	*len = want;
	return p;
}

#endif /* GF_FUZZ_COMMON_H */
