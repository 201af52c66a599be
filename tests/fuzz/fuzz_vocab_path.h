/*
 * fuzz_vocab_path.h — where the tokenizer targets find the RWKV World vocabulary: env
 * GF_FUZZ_VOCAB, else the path compiled in from GF_TESTDATA. Exits 77 (skip) without it.
 */
#ifndef GF_FUZZ_VOCAB_PATH_H
#define GF_FUZZ_VOCAB_PATH_H

#include "goldfinch.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef GF_FUZZ_VOCAB
#define GF_FUZZ_VOCAB "../shared/testdata/tokenizer/rwkv_vocab_v20230424.txt"
#endif

static inline void fuzz_load_world_vocab(gf_vocab *v)
{
	const char *path = getenv("GF_FUZZ_VOCAB");
	char err[GF_ERR_LEN];

	if (!path || !*path)
		path = GF_FUZZ_VOCAB;
	if (access(path, R_OK)) {
		fprintf(stderr, "skip: no vocabulary at %s (set GF_FUZZ_VOCAB)\n", path);
		exit(77);
	}
	if (gf_vocab_load_file(v, path, err)) {
		fprintf(stderr, "%s\n", err);
		exit(1);
	}
}

#endif
