/*
 * server_backend.h — the one seam between goldfinchd's front end (network loop, job queue,
 * protocol) and whatever computes: everything the front end asks of the model and the
 * store goes through a gfd_backend, a table of operations over an opaque implementation.
 *
 * Today there is one implementation, the local one (server_backend_local.c: one process,
 * one gfe_engine). Issue 6's multi-rank daemon implements the same table on rank 0 and
 * fans each call out to the ranks that own the layers; the front end does not change.
 *
 * Contract for every implementation:
 *   - every operation returns 0 or -errno with one line in `err` (GF_ERR_LEN, may be NULL);
 *     the front end maps the errno to a protocol error code (-ENOENT not found, -EBUSY in
 *     use, -ENOSPC disk budget or disk full, -EEXIST name taken, -EINVAL bad request,
 *     anything else internal), so implementations keep those meanings;
 *   - thread-safety: the backend itself may be called from any number of threads at once
 *     (workers, the control thread, the metrics thread); an ingest or a session handle
 *     belongs to one thread at a time;
 *   - ownership: the backend owns its handles until *_free; info/list results are copies.
 */
#ifndef GFD_SERVER_BACKEND_H
#define GFD_SERVER_BACKEND_H

#include "cache_store.h"
#include "goldfinch.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gfd_backend_info {
	char model_name[GF_NAME_MAX];
	gf_config cfg;               /* the model's shapes; cfg.model_id identifies it */
	const gf_tokenizer *tokenizer;  /* owned by the backend, valid until close; NULL: none */
	cs_dtype c_dtype;            /* how this server stores c rows */
	uint32_t ranks;              /* processes serving (1 for the local backend) */
	uint64_t disk_budget;        /* bytes; 0 = unlimited */
	gf_compute compute;          /* how prefill multiplies, as loaded (every rank alike) */
	char kernels[16];            /* gf_model_isa_name: "avx512", "avx2", "scalar" */
	uint64_t weight_bytes;       /* as loaded (rank 0's slice with several ranks) */
} gfd_backend_info;

/* The memory the engine holds, each part against its budget (engine.h, gfe_memory): resident
 * memory is about weights + page cache + tier, plus the small state of each job. A
 * multi-rank backend reports rank 0's process, as gfd_rss_bytes does. */
typedef struct gfd_memory {
	uint64_t weight_bytes;
	uint64_t page_cache_bytes, page_cache_budget;
	uint64_t tier_bytes, tier_budget;
} gfd_memory;

/* What an ingest has done so far. */
typedef struct gfd_ingest_state {
	uint64_t serial;          /* the context being written */
	uint64_t tokens_done;     /* through the Finch stage */
	uint64_t committed;       /* tokens as of the last checkpoint */
	uint64_t input_bytes;     /* input bytes behind the committed tokens (resume point) */
} gfd_ingest_state;

/* The serial a session over no context is opened with (engine.h's GFE_NO_CONTEXT). */
#define GFD_NO_CONTEXT 0

typedef struct gfd_ingest gfd_ingest;     /* opaque per implementation */
typedef struct gfd_session gfd_session;

typedef struct gfd_backend_ops {
	const char *name;
	void (*close)(void *self);  /* every handle freed first */
	void (*info)(void *self, gfd_backend_info *out);
	void (*memory)(void *self, gfd_memory *out);

	/* Contexts: a snapshot of the store's catalogue. */
	int (*list)(void *self, cs_ctx_info **out, size_t *n, char *err); /* *out malloc'd */
	int (*ctx_info)(void *self, uint64_t serial, cs_ctx_info *out, char *err);
	int (*lookup_name)(void *self, const char *name, cs_ctx_info *out); /* -ENOENT */
	int (*remove)(void *self, uint64_t serial, char *err);              /* -EBUSY if held */
	uint64_t (*disk_used)(void *self);

	/* Ingest: text in, a sealed context out; see daemon/engine.h for the semantics. */
	int (*ingest_begin)(void *self, const char *name, gfd_ingest **out, char *err);
	int (*ingest_resume)(void *self, uint64_t serial, gfd_ingest **out, char *err);
	int (*ingest_text)(gfd_ingest *in, const void *bytes, size_t n, char *err);
	/* Token ids instead of text (models without a vocabulary; tests). */
	int (*ingest_tokens)(gfd_ingest *in, const int32_t *tok, size_t n, char *err);
	int (*ingest_checkpoint)(gfd_ingest *in, char *err);
	/* Seals; *out describes the context (maybe an identical one stored before: reused). */
	int (*ingest_finish)(gfd_ingest *in, cs_ctx_info *out, bool *reused, char *err);
	void (*ingest_state)(const gfd_ingest *in, gfd_ingest_state *out);
	void (*ingest_free)(gfd_ingest *in); /* keeps the last checkpoint; NULL-safe */

	/* Sessions: questions and answers on a sealed context, or on none (serial
	 * GFD_NO_CONTEXT: from the model's initial state; -EINVAL where not served); logits
	 * are [vocab]. */
	int (*session_open)(void *self, uint64_t serial, gfd_session **out, char *err);
	int (*session_prefill)(gfd_session *s, const int32_t *tok, size_t n, float *logits,
			       char *err);
	/* Optional (NULL: a question is one prefill): the first n tokens of a question, n a
	 * multiple of session_chunk, through the Finch stage alone; the prefill of the rest
	 * then gives the bits of one prefill of all (gfe_session_feed). */
	int (*session_feed)(gfd_session *s, const int32_t *tok, size_t n, char *err);
	int (*session_chunk)(const gfd_session *s);
	int (*session_step)(gfd_session *s, int32_t tok, float *logits, char *err);
	uint64_t (*session_base_tokens)(const gfd_session *s);
	void (*session_free)(gfd_session *s); /* NULL-safe */
} gfd_backend_ops;

typedef struct gfd_backend {
	const gfd_backend_ops *ops;
	void *self;
} gfd_backend;

/* What the local backend is opened with: the engine's settings. */
typedef struct gfd_local_config {
	const char *model_path;
	const char *cache_dir;
	cs_dtype c_dtype;
	uint64_t checkpoint_tokens;  /* 0 = the engine's default */
	uint64_t tier_bytes;
	uint64_t disk_budget;
	int threads;
	int chunk;                   /* Finch-stage chunk in tokens; 0 = the engine's default */
	/* How prefill multiplies: `compute` when compute_set, else gf_compute_default(); a
	 * flag rather than a value so that a config zeroed field by field keeps the default
	 * (GF_COMPUTE_F32 is 0). Several ranks all take rank 0's (gfd_ranks_start). */
	bool compute_set;
	gf_compute compute;
	/* Expanded keys and values: `kv_dtype` (GF_DTYPE_F32 or GF_DTYPE_BF16) when
	 * kv_dtype_set, else the engine's default (bf16); f32 where results are held to the
	 * float references. Zero-safe as compute is. */
	bool kv_dtype_set;
	gf_dtype kv_dtype;
} gfd_local_config;

/* The engine settings these give (every rank of a multi-rank daemon uses them too). */
struct gfe_config;
void gfd_local_engine_config(const gfd_local_config *cfg, struct gfe_config *ec);

/* One process, one gfe_engine over the model and the store in cache_dir. */
int gfd_backend_local_open(gfd_backend *out, const gfd_local_config *cfg, char *err);

static inline void gfd_backend_close(gfd_backend *b)
{
	if (b && b->ops)
		b->ops->close(b->self);
}

#endif /* GFD_SERVER_BACKEND_H */
