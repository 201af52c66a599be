/*
 * tensors_internal.h — helpers shared by the checkpoint and GGUF readers/writer of gfmodel
 * (tensors.c, pth.c, safetensors.c, gguf.c) and by tools/gf_convert.c. Not public API.
 */
#ifndef GF_TENSORS_INTERNAL_H
#define GF_TENSORS_INTERNAL_H

#include <stdarg.h>

#include "goldfinch.h"

/* Formats one line into err (GF_ERR_LEN bytes; NULL: nothing). */
void gf_tset_err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Maps path read-only and whole. An empty file is -EINVAL. *map is munmap'd by the
 * caller (or handed to a gf_tensor_set). */
int gf_tset_map(const char *path, void **map, size_t *len, char *err);

/* Appends a tensor whose data lives in memory the set already owns or maps (not copied).
 * When data is not aligned to its element size it is copied to an owned heap block, so that
 * consumers may read it as float/uint16_t arrays. Checks the name fits GF_NAME_MAX. */
int gf_tset_push(gf_tensor_set *ts, const char *name, size_t name_len, gf_dtype dtype,
		 int n_dims, const int64_t *shape, const void *data, size_t nbytes,
		 const char *path, char *err);

/* Element count of a shape, or -1 when a dimension is negative or the product (times 8
 * bytes) would not fit in memory. */
int64_t gf_tset_numel(int n_dims, const int64_t *shape);

/* -EINVAL when two tensors share a name (err names it). O(n log n). */
int gf_tset_check_unique(const gf_tensor_set *ts, const char *path, char *err);

/* Releases everything but the mapping and leaves the tensors list empty; for readers
 * that fail halfway. */
void gf_tset_reset(gf_tensor_set *ts);

/*
 * Streaming GGUF writer, used by gf_gguf_write and by gf-convert (which fills tensors one at
 * a time so that a multi-GB model never sits in memory whole). infos[i] gives name, dtype,
 * shape and nbytes of tensor i (data ignored); fill(user, i, dst, err) writes its nbytes
 * bytes to dst. When hash_model_id is set, the goldfinch.model_id written is the xxh64
 * (seed 0) of all tensor bytes in order, and *model_id_out (may be NULL) receives it;
 * otherwise cfg->model_id is written. Writes path.tmp, fsyncs and renames.
 */
typedef int (*gf_gguf_fill_fn)(void *user, int idx, void *dst, char *err);
int gf_gguf_write_stream(const char *path, const gf_config *cfg, const gf_tensor *infos,
			 int n_tensors, const gf_vocab *vocab, const char *name,
			 gf_gguf_fill_fn fill, void *user, bool hash_model_id,
			 uint64_t *model_id_out, char *err);

#endif /* GF_TENSORS_INTERNAL_H */
