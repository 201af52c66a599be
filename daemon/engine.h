/*
 * engine.h — contexts of any length: streaming ingest into the paged cache, checkpoints and
 * resume, reuse of an ingested context for questions, decode over the paged cache.
 * It joins model/ (the math) and cache_store/ (the pages); gf-run and goldfinchd drive it.
 * ../shared/DESIGN.md §2-3.
 *
 * Exactness rules this layer keeps:
 *   - the Finch stage runs in chunks that start at absolute multiples of `chunk` tokens,
 *     whatever the pieces the input arrives in and wherever a checkpoint falls, so the cache
 *     bytes of a context do not depend on how it was fed (GEMM rounding depends on shape);
 *   - a checkpoint commits at a chunk boundary: pages, and a snapshot (the Finch states, the
 *     last W Finch outputs, the token count, the model id, the input bytes consumed);
 *     greedy longest-match tokenization restarted at that byte gives the same tokens, so a
 *     resumed ingest ends bit-identical to an uninterrupted one;
 *   - a question continues from the snapshot on a copy-on-write branch of the pages: the
 *     stored context never changes.
 *
 * Thread-safety: one gfe_engine may serve several ingests and sessions at once, each owned
 * by one thread at a time (the model is read-only, the store and the tier lock inside).
 * Errors: 0 or -errno, with one line in `err` (GF_ERR_LEN bytes, may be NULL).
 */
#ifndef GF_ENGINE_H
#define GF_ENGINE_H

#include "cache_store.h"
#include "goldfinch.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GFE_SNAPSHOT_MAGIC 0x4e534647u /* "GFSN" */
#define GFE_SNAPSHOT_MAJOR 1
#define GFE_SNAPSHOT_MINOR 1 /* 1: the compute mode */

typedef struct gfe_config {
	const char *model_path;      /* GGUF */
	const char *cache_dir;       /* the page store's directory */
	int chunk;                   /* Finch-stage chunk, tokens; default 256 */
	uint32_t page_tokens;        /* tokens per cache page; default 4096 */
	cs_dtype c_dtype;            /* storage type of c; default f16 */
	uint64_t checkpoint_tokens;  /* commit every this many tokens (rounded up to a chunk
					* multiple); 0 = only at the end; default 262144 */
	uint64_t tier_bytes;         /* expanded key/value tier budget; 0 = off;
				      * default GFE_TIER_DEFAULT_MB */
	uint64_t disk_budget;        /* bytes; 0 = unlimited */
	int threads;                 /* OpenBLAS / decode threads; 0 = OpenBLAS's default */
	gf_compute compute;          /* how prefill chunks multiply; default gf_compute_default() */
	gf_dtype kv_dtype;           /* of expanded keys and values, in the tier and wherever
				      * else attention reads them: GF_DTYPE_BF16 (default; half
				      * the bytes) or GF_DTYPE_F32 (the rebuilt floats as they are) */
	uint64_t ram_cache_bytes;    /* the store's RAM page cache (cs_config); 0 = its default */
	int block_first, block_end;  /* load only blocks [first, end): an MPI rank's slice, used
				      * through engine_internal.h; end 0 = every block */
	bool gold_kv_all;            /* also the key/value weights of every GOLD block, so that
				      * this rank can attend over spans of others' layers */
	bool prev_ffn;               /* also the channel mix of the block before the slice, to
				      * finish rows the previous rank left (rank_part.c) */
	bool next_att;               /* also the inputs of the time mix of the block after it, to
				      * compute rows of them for the next rank (rank_part.c) */
} gfe_config;

/* The tier every tool and the daemon start with: sized for a laptop; enough for the expanded
 * keys and values of about 340K tokens of the shipped model (the tier holds bf16). */
#define GFE_TIER_DEFAULT_MB 512

void gfe_config_defaults(gfe_config *cfg);

typedef struct gfe_engine gfe_engine;

int gfe_open(gfe_engine **out, const gfe_config *cfg, char *err);
void gfe_close(gfe_engine *e);   /* every ingest and session closed first; NULL-safe */
const gf_model *gfe_model(const gfe_engine *e);
const gf_tokenizer *gfe_tokenizer(const gfe_engine *e); /* NULL if the model has no vocab */
cs_store *gfe_store(gfe_engine *e);

/* The model id the contexts of an engine with model m are stored under: the model's own with f32 compute,
 * another with bf16 compute (the cache rows differ), so that a context is only reused and
 * continued in the mode that ingested it. */
uint64_t gfe_key_model_id(const gf_model *m);
/* The compute mode that made a context stored under ctx_model_id with this engine's model:
 * 0 and *out, or -EINVAL when another model made it. */
int gfe_context_compute(const gfe_engine *e, uint64_t ctx_model_id, gf_compute *out);

/* Tier statistics: block lookups served from the tier, and rebuilt. */
typedef struct gfe_tier_stats {
	uint64_t hits, misses, bytes, blocks;
	uint64_t budget;  /* gfe_config.tier_bytes */
} gfe_tier_stats;
void gfe_tier_stats_get(gfe_engine *e, gfe_tier_stats *out);

/* What the engine's memory holds, each part against its budget: resident memory is about
 * weights + page cache + tier, plus the small state of each job. */
typedef struct gfe_memory {
	uint64_t weight_bytes;                    /* the model's weights as loaded */
	uint64_t page_cache_bytes, page_cache_budget;
	uint64_t tier_bytes, tier_budget;
} gfe_memory;
void gfe_memory_get(gfe_engine *e, gfe_memory *out);

/* ------------------------------------------------------------------------------------------
 * Ingest. Feed text (tokenized as it streams) or token ids; the Finch stage runs per chunk
 * and its (c, token) rows go to pages; every checkpoint_tokens a checkpoint is committed.
 * Memory is constant in the length.
 */
typedef struct gfe_ingest gfe_ingest;

int gfe_ingest_begin(gfe_engine *e, const char *name /* NULL: none */, gfe_ingest **out,
		     char *err);
/* Continues the unsealed context `serial` from its last checkpoint. The caller re-feeds its
 * input from byte gfe_ingest_input_bytes() (text) or token gfe_ingest_tokens() (ids). */
int gfe_ingest_resume(gfe_engine *e, uint64_t serial, gfe_ingest **out, char *err);
int gfe_ingest_text(gfe_ingest *in, const void *bytes, size_t n, char *err);
int gfe_ingest_tokens(gfe_ingest *in, const int32_t *tok, size_t n, char *err);
/* Commits now (at the last chunk boundary reached; tokens of a partial chunk wait). */
int gfe_ingest_checkpoint(gfe_ingest *in, char *err);

typedef struct gfe_context {
	uint64_t serial;
	cs_key key;
	uint64_t n_tokens;
	uint64_t disk_bytes;
	bool reused;     /* an identical sealed context already existed; this one was dropped */
} gfe_context;

/* Flushes the tokenizer and the last partial chunk, runs the GOLD tail, stores the final
 * snapshot and seals the context. logits_last [V] (may be NULL): the last token's logits. */
int gfe_ingest_finish(gfe_ingest *in, gfe_context *out, float *logits_last, char *err);
uint64_t gfe_ingest_tokens_done(const gfe_ingest *in);   /* through the Finch stage */
uint64_t gfe_ingest_committed(const gfe_ingest *in);     /* as of the last checkpoint */
uint64_t gfe_ingest_input_bytes(const gfe_ingest *in);   /* text bytes behind committed tokens */
uint64_t gfe_ingest_serial(const gfe_ingest *in);
/* Frees; an unfinished ingest keeps its last checkpoint on disk (resumable). NULL-safe. */
void gfe_ingest_free(gfe_ingest *in);

/* ------------------------------------------------------------------------------------------
 * Sessions: a question and its answer on an ingested context. Opening one reads the
 * snapshot; every token after it goes through the Finch stage, its c row onto a branch of
 * the pages (RAM only), and the GOLD blocks attend over all positions, fetching pages
 * through the page cache and rebuilding keys and values block by block (or taking them from
 * the tier).
 */
typedef struct gfe_session gfe_session;

/* serial GFE_NO_CONTEXT (0, which no stored context has): a session over no context, from
 * the model's initial state, its pages on a branch of its own; its question and answer are
 * then what an ingest of the same tokens would compute (the same logits, bit for bit). */
#define GFE_NO_CONTEXT 0
int gfe_session_open(gfe_engine *e, uint64_t serial, gfe_session **out, char *err);
/* Runs n tokens (a question) and gives the last one's logits [V]. */
int gfe_session_prefill(gfe_session *s, const int32_t *tok, size_t n, float *logits, char *err);
/* Runs the first n tokens of a question through the Finch stage only, n a multiple of
 * gfe_session_chunk (else -EINVAL); gfe_session_prefill of the rest then ends the question
 * with the bits of one gfe_session_prefill of all of it (the Finch stage runs in the same
 * chunks, the GOLD tail once at the end). For progress between slices of a long question. */
int gfe_session_feed(gfe_session *s, const int32_t *tok, size_t n, char *err);
int gfe_session_chunk(const gfe_session *s);             /* the engine's chunk, tokens */
/* Runs one token (the last sampled) and gives its logits [V]. */
int gfe_session_step(gfe_session *s, int32_t tok, float *logits, char *err);
/* Steps B sessions of this engine together, one token each (tok [B]): logits [B][V], row i
 * session s[i]'s. Every weight is read once for all of them (gf_gold_batch), and each row's
 * logits are bit-identical to gfe_session_step of that session alone, whatever B, the other
 * sessions (any contexts, any lengths; sessions over one context share its tier blocks) or
 * the thread count. 1 <= B <= the engine's chunk; the sessions are distinct and all owned by
 * the calling thread for the call; s[0]'s workspace runs the batch. Per-session outcome in
 * rcs [B] (NULL: not wanted): 0, or the code of that session's failure, whose row of logits is
 * then unspecified while the others are exact. A session whose token is outside the
 * vocabulary is left as it was; one that failed after its state moved on (the branch could
 * not take its row, attention could not read the cache) fails every later call, with
 * gfe_session_error saying why. Returns 0 when every session stepped, else the first failing
 * session's code with its index and message in err. */
int gfe_sessions_step(gfe_session *const *s, const int32_t *tok, int B, float *logits, int *rcs,
		      char *err);
/* Why the session failed for good ("" while it has not). */
const char *gfe_session_error(const gfe_session *s);
uint64_t gfe_session_tokens(const gfe_session *s);       /* context + everything since */
uint64_t gfe_session_base_tokens(const gfe_session *s);  /* the stored context's */
void gfe_session_free(gfe_session *s);   /* NULL-safe; the stored context is unchanged */

#ifdef __cplusplus
}
#endif
#endif /* GF_ENGINE_H */
