/*
 * fuzz_tensors.h — checks the checkpoint and GGUF targets share: what every tensor set a
 * reader returns must satisfy, and the model built from it.
 */
#ifndef GF_FUZZ_TENSORS_H
#define GF_FUZZ_TENSORS_H

#include "goldfinch.h"

/* Every tensor: a NUL-terminated non-empty name, 0..GF_MAX_DIMS dims, nbytes equal to
 * elements times element size, data readable to its last byte (touched: ASan checks it),
 * found by name; then gf_config_infer, and when it passes a model bound from the set
 * and a two-token forward of it when it is small. what names the reader. */
void fuzz_check_tensor_set(const gf_tensor_set *ts, const char *what);

/* A model's two-token forward when it is small enough to run per input. */
void fuzz_try_forward(const gf_model *m);

#endif
