/*
 * engine_internal.h — the engine's parts that the multi-rank daemon (server_backend_mpi.c,
 * rank_part.c) composes differently: the engine struct, the expanded tier, snapshots, the
 * paged key/value source. Not a public interface: daemon/ only.
 */
#ifndef GF_ENGINE_INTERNAL_H
#define GF_ENGINE_INTERNAL_H

#include "engine.h"

#include <pthread.h>

struct tier_entry {
	uint64_t owner;              /* context serial, or session id | TIER_SESSION */
	int g;
	uint64_t block;
	void *k, *v;                 /* a key and a value block (gf_kv_block_bytes, kv_dtype) */
	int pins;
	struct tier_entry *hnext;    /* hash chain */
	struct tier_entry *prev, *next; /* LRU list, most recent first */
};

#define TIER_BUCKETS 4096
#define TIER_SESSION (1ull << 63)

struct tier {
	pthread_mutex_t mu;
	uint64_t budget, bytes, entry_bytes;
	char *slab;                  /* the slots of entries' keys and values (engine.c) */
	size_t slab_len, slab_used;
	void *slab_map;              /* the reservation the slab is aligned within */
	size_t slab_map_len;
	void *free_slots;            /* slots given back, a list through their first bytes */
	struct tier_entry *buckets[TIER_BUCKETS];
	struct tier_entry *head, *tail;
	uint64_t hits, misses, blocks;
};

#define GFE_WS_KEEP 8

struct gfe_engine {
	gfe_config cfg;
	gf_model *model;
	gf_tokenizer tokenizer;
	bool has_tokenizer;
	cs_store *store;
	struct tier tier;
	pthread_mutex_t mu;
	uint64_t next_session;
	uint32_t slice;       /* gfe_slice_code of the blocks loaded; 0 = every block */
	gf_workspace *ws_free[GFE_WS_KEEP]; /* workspaces of ended jobs, for the next (under mu) */
	int n_ws_free;
};

struct paged_src {
	gf_kv_source src;
	gfe_engine *e;
	cs_reader *reader;        /* the stored context */
	cs_branch *branch;        /* NULL: read the reader */
	uint64_t serial;          /* tier owner of blocks below base_full */
	uint64_t session_owner;   /* tier owner of the session's own full blocks; 0 = none */
	uint64_t base_full;       /* positions below this are in full blocks of the base */
	void *raw;                /* [GF_KV_BLOCK + 1][Ck] in the store's type */
	uint32_t *raw_tok;        /* [GF_KV_BLOCK + 1] */
	float *c;                 /* [GF_KV_BLOCK + 1][Ck] */
	int32_t *tok;             /* [GF_KV_BLOCK + 1] */
	void *open_k, *open_v;    /* [n_gold] blocks of kv_dtype: the growing block */
	void *kblk, *vblk;        /* a block rebuilt outside the tier */
	int64_t *open_first;      /* [n_gold]: its first position, -1 = none */
	int *open_rows;           /* [n_gold]: rows valid */
	struct tier_entry *pinned;
	/* Optional (gfe_paged_key_cache): the key stream of full blocks [ks_block0, +ks_blocks),
	 * computed once and shared by every GOLD layer's rebuild of them. */
	float *ks;
	uint8_t *ks_have;
	int64_t ks_block0, ks_blocks;
	char err[GF_ERR_LEN];
};

/* A rank's blocks [b0, b1) as stored in its snapshots: 0 for every block of the model. */
static inline uint32_t gfe_slice_code(const gf_config *c, int b0, int b1)
{
	return b0 == 0 && b1 == c->n_layer ? 0 : (uint32_t)b0 << 16 | (uint32_t)b1;
}

/* The model id a context's pages carry: the model's own for f32 compute, another for bf16
 * compute (its cache rows differ), so that a context is only reused and continued in the
 * mode that made it. */
#define GFE_BF16_ID_SALT 0x62663136636d7074ull /* "bf16cmpt" */
static inline uint64_t gfe_context_model_id(const gf_model *m)
{
	return m->cfg.model_id ^ (m->compute == GF_COMPUTE_BF16 ? GFE_BF16_ID_SALT : 0);
}
/* Checks that a stored context's model id and c type are this engine's; the error says
 * which compute mode made it when only that differs. */
int gfe_check_context(const gfe_engine *e, uint64_t serial, uint64_t model_id, uint32_t width,
		      cs_dtype dtype, char *err);

size_t gfe_snapshot_size(const gf_config *c, int n_tail);
void gfe_snapshot_write(const gf_model *m, const gf_state *st, uint64_t input_bytes,
			uint32_t slice, void *buf);
int gfe_snapshot_read(const gf_model *m, const void *buf, size_t len, uint32_t slice,
		      gf_state *st, uint64_t *input_bytes, char *err);
/* c rows from float32 to the store's element type. */
void gfe_c_to_storage(cs_dtype t, const float *src, void *dst, size_t n);

void gfe_tier_unpin(struct tier *t, struct tier_entry *e);
/* Rebuilds into the tier every full block of the first n_tokens positions of context `serial`
 * that it lacks, for every GOLD layer this engine holds, on all the threads (see engine.c). */
int gfe_tier_fill(gfe_engine *e, uint64_t serial, uint64_t n_tokens, char *err);
/* A workspace for a job (one kept from an ended job, or a new one), and back when it ends. */
int gfe_workspace_take(gfe_engine *e, gf_workspace **out);
void gfe_workspace_give(gfe_engine *e, gf_workspace *ws);
void gfe_tier_forget(struct tier *t, uint64_t owner);

/* A key/value source over a stored context (reader) or a session's branch over it (set
 * ps->branch after init); growing: the newest block is extended row by row (sessions). */
int gfe_paged_init(struct paged_src *ps, gfe_engine *e, cs_reader *reader, uint64_t serial,
		   uint64_t base_tokens, bool growing);
void gfe_paged_free(struct paged_src *ps);
/* Keeps the key stream (gf_key_stream) of up to `blocks` full blocks from block0 on, within
 * max_bytes: a tail that walks every GOLD layer over the same blocks then computes the
 * layer-independent part once. The bits are those of rebuilding each time. */
int gfe_paged_key_cache(struct paged_src *ps, int64_t block0, int64_t blocks, size_t max_bytes);
/* What an ingest's GOLD tail may keep so (about 8 KiB per position at n_embd 1024): past it,
 * the rest of the blocks are rebuilt whole per layer as before. */
#define GFE_TAIL_KEY_CACHE_BYTES ((size_t)256 << 20)

#endif /* GF_ENGINE_INTERNAL_H */
