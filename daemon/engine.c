/*
 * engine.c — see engine.h. Ingest, snapshots, the paged key/value source, the expanded tier,
 * sessions.
 */
#include "engine.h"
#include "engine_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---- the expanded key/value tier -----------------------------------------------------------
 * Rebuilt keys and values of whole blocks (GF_KV_BLOCK positions of one GOLD layer), kept in
 * RAM under a byte budget, least recently used first out. Blocks of a stored context never
 * change, so every session shares them; a session's own full blocks (past its base) go in
 * under the session's id and leave with it. Entries in use are pinned.
 */


static size_t tier_hash(uint64_t owner, int g, uint64_t block)
{
	uint64_t h = owner * 0x9e3779b97f4a7c15ull ^ (uint64_t)g * 0xc2b2ae3d27d4eb4full ^
		     block * 0x165667b19e3779f9ull;
	return (size_t)((h ^ (h >> 29)) % TIER_BUCKETS);
}

static void lru_unlink(struct tier *t, struct tier_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		t->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		t->tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_push_front(struct tier *t, struct tier_entry *e)
{
	e->prev = NULL;
	e->next = t->head;
	if (t->head)
		t->head->prev = e;
	t->head = e;
	if (!t->tail)
		t->tail = e;
}

/* Entries' keys and values live in one reservation of the budget's size, in huge pages where
 * the kernel gives them, cut into slots of entry_bytes that are reused as entries come and go:
 * filling a cold context's blocks then costs no page faults for memory used before, and a
 * fresh one a 2 MiB fault where 4 KiB pages would take 512 (measured: page faults were 38% of
 * a cold question at 100K tokens). Under t->mu. */
static void *slot_get(struct tier *t)
{
	if (t->free_slots) {
		void *s = t->free_slots;
		memcpy(&t->free_slots, s, sizeof(void *));
		return s;
	}
	if (!t->slab || t->slab_used + t->entry_bytes > t->slab_len)
		return NULL;
	void *s = t->slab + t->slab_used;
	t->slab_used += t->entry_bytes;
	return s;
}

static void slot_put(struct tier *t, void *s)
{
	memcpy(s, &t->free_slots, sizeof(void *));
	t->free_slots = s;
}

/* Reserves the slab (only what is used is ever backed); none, and so no tier, if refused. */
static void slab_init(struct tier *t)
{
	const size_t huge = (size_t)2 << 20;
	if (t->budget == 0 || t->entry_bytes == 0)
		return;
	const size_t len = (t->budget / t->entry_bytes) * t->entry_bytes;
	void *map = mmap(NULL, len + huge, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED)
		return;
	char *start = (char *)(((uintptr_t)map + huge - 1) & ~(uintptr_t)(huge - 1));
	madvise(start, len, MADV_HUGEPAGE); /* advice: refused is fine */
	t->slab_map = map;
	t->slab_map_len = len + huge;
	t->slab = start;
	t->slab_len = len;
}

/* An entry and its slot given back (under t->mu), its bytes off the budget. */
static void entry_release(struct tier *t, struct tier_entry *e)
{
	slot_put(t, e->k);
	t->bytes -= t->entry_bytes;
	free(e);
}

static void tier_drop(struct tier *t, struct tier_entry *e)
{
	struct tier_entry **pp = &t->buckets[tier_hash(e->owner, e->g, e->block)];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	lru_unlink(t, e);
	t->blocks--;
	entry_release(t, e);
}

/* An entry from tier_alloc that could not be filled: back, unpublished. */
static void tier_discard(struct tier *t, struct tier_entry *e)
{
	pthread_mutex_lock(&t->mu);
	entry_release(t, e);
	pthread_mutex_unlock(&t->mu);
}

/* Pinned entry or NULL. */
static struct tier_entry *tier_get(struct tier *t, uint64_t owner, int g, uint64_t block)
{
	pthread_mutex_lock(&t->mu);
	struct tier_entry *e = t->buckets[tier_hash(owner, g, block)];
	while (e && !(e->owner == owner && e->g == g && e->block == block))
		e = e->hnext;
	if (e) {
		e->pins++;
		lru_unlink(t, e);
		lru_push_front(t, e);
		t->hits++;
	} else {
		t->misses++;
	}
	pthread_mutex_unlock(&t->mu);
	return e;
}

/* Whether the tier holds the block (no pin, no statistics). */
static bool tier_has(struct tier *t, uint64_t owner, int g, uint64_t block)
{
	pthread_mutex_lock(&t->mu);
	struct tier_entry *e = t->buckets[tier_hash(owner, g, block)];
	while (e && !(e->owner == owner && e->g == g && e->block == block))
		e = e->hnext;
	pthread_mutex_unlock(&t->mu);
	return e != NULL;
}

/* A new pinned entry to fill (the caller then publishes it with tier_publish), or NULL when
 * the budget cannot make room. Attention walks a context's blocks in the same order at every
 * step, and least-recently-used eviction of that cycle, when it is larger than the budget,
 * would evict each block just before it is needed again: no hit ever. So a full tier makes
 * room only from other owners' blocks (least recently used first) and otherwise keeps what
 * it has: a scan larger than the budget then hits on the part that fits. */
static struct tier_entry *tier_alloc(struct tier *t, uint64_t owner)
{
	pthread_mutex_lock(&t->mu);
	while (t->bytes + t->entry_bytes > t->budget) {
		struct tier_entry *victim = t->tail;
		while (victim && (victim->pins || victim->owner == owner))
			victim = victim->prev;
		if (!victim)
			break;
		tier_drop(t, victim);
	}
	struct tier_entry *e = NULL;
	char *kv = NULL;
	if (t->bytes + t->entry_bytes <= t->budget && (e = calloc(1, sizeof(*e))) &&
	    (kv = slot_get(t)))
		t->bytes += t->entry_bytes; /* reserved now, so concurrent fills keep the budget */
	pthread_mutex_unlock(&t->mu);
	if (!kv) {
		free(e);
		return NULL;
	}
	e->k = kv;
	e->v = kv + t->entry_bytes / 2;
	e->pins = 1;
	return e;
}

static void tier_publish(struct tier *t, struct tier_entry *e, uint64_t owner, int g,
			 uint64_t block)
{
	e->owner = owner;
	e->g = g;
	e->block = block;
	pthread_mutex_lock(&t->mu);
	size_t h = tier_hash(owner, g, block);
	e->hnext = t->buckets[h];
	t->buckets[h] = e;
	lru_push_front(t, e);
	t->blocks++;
	pthread_mutex_unlock(&t->mu);
}

void gfe_tier_unpin(struct tier *t, struct tier_entry *e)
{
	if (!e)
		return;
	pthread_mutex_lock(&t->mu);
	e->pins--;
	pthread_mutex_unlock(&t->mu);
}

/* Drops every unpinned entry of an owner (a session that ends, a context removed). */
void gfe_tier_forget(struct tier *t, uint64_t owner)
{
	pthread_mutex_lock(&t->mu);
	for (struct tier_entry *e = t->head, *next; e; e = next) {
		next = e->next;
		if (e->owner == owner && !e->pins)
			tier_drop(t, e);
	}
	pthread_mutex_unlock(&t->mu);
}

/* ---- the engine ---------------------------------------------------------------------------- */


void gfe_config_defaults(gfe_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->chunk = 256;
	cfg->page_tokens = 4096; /* records are padded to 4 KiB: large pages make that negligible */
	cfg->c_dtype = CS_DTYPE_F16;
	cfg->checkpoint_tokens = 262144;
	cfg->compute = gf_compute_default();
	cfg->tier_bytes = (uint64_t)GFE_TIER_DEFAULT_MB << 20;
	cfg->kv_dtype = GF_DTYPE_BF16;
}

int gfe_open(gfe_engine **out, const gfe_config *cfg, char *err)
{
	char why[GF_ERR_LEN];
	int rc;
	gfe_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return gf_error(err, -ENOMEM, "out of memory");
	e->cfg = *cfg;
	pthread_mutex_init(&e->mu, NULL);
	pthread_mutex_init(&e->tier.mu, NULL);
	gf_blas_set_threads(cfg->threads);
	if ((rc = gf_model_load_slice(&e->model, cfg->model_path, cfg->block_first,
				      cfg->block_end > 0 ? cfg->block_end : -1,
				      (cfg->gold_kv_all ? GF_LOAD_GOLD_KV : 0) |
					      (cfg->prev_ffn ? GF_LOAD_PREV_FFN : 0) |
					      (cfg->next_att ? GF_LOAD_NEXT_ATT : 0) |
					      gf_compute_load_flag(cfg->compute),
				      err)))
		goto fail_engine;
	const gf_config *mc = &e->model->cfg;
	e->slice = gfe_slice_code(mc, e->model->block_first, e->model->block_end);
	if (e->cfg.chunk < gf_config_tail_window(mc))
		e->cfg.chunk = gf_config_tail_window(mc);
	if (cs_dtype_size(cfg->c_dtype) == 0 || cfg->page_tokens < 1) {
		rc = gf_error(err, -EINVAL, "cache element type %d or page size %u not supported",
			  (int)cfg->c_dtype, cfg->page_tokens);
		goto fail_engine;
	}
	/* Checkpoints fall on chunk boundaries: that is what keeps resumes bit-identical. */
	uint64_t ch = (uint64_t)e->cfg.chunk;
	e->cfg.checkpoint_tokens = (cfg->checkpoint_tokens + ch - 1) / ch * ch;
	if (e->model->gguf.vocab.n_tokens > 0) {
		if ((rc = gf_tokenizer_init(&e->tokenizer, &e->model->gguf.vocab, why))) {
			rc = gf_error(err, rc, "%s: vocabulary: %s", cfg->model_path, why);
			goto fail_engine;
		}
		e->has_tokenizer = true;
	}
	cs_config sc;
	cs_config_defaults(&sc);
	sc.disk_budget = cfg->disk_budget;
	if (cfg->ram_cache_bytes)
		sc.ram_cache_bytes = cfg->ram_cache_bytes;
	if ((rc = cs_store_open(&e->store, cfg->cache_dir, &sc, err)))
		goto fail_engine;
	e->tier.budget = cfg->tier_bytes;
	if (cfg->kv_dtype != GF_DTYPE_F32 && cfg->kv_dtype != GF_DTYPE_BF16) {
		rc = gf_error(err, -EINVAL, "keys and values as %s: f32 or bf16 only",
			      gf_dtype_name(cfg->kv_dtype));
		goto fail_engine;
	}
	e->tier.entry_bytes = 2ull * gf_kv_block_bytes(mc, cfg->kv_dtype);
	slab_init(&e->tier);
	*out = e;
	return 0;
fail_engine:
	gfe_close(e);
	return rc;
}

void gfe_close(gfe_engine *e)
{
	if (!e)
		return;
	while (e->tier.head)
		tier_drop(&e->tier, e->tier.head);
	if (e->tier.slab_map)
		munmap(e->tier.slab_map, e->tier.slab_map_len);
	for (int i = 0; i < e->n_ws_free; i++)
		gf_workspace_free(e->ws_free[i]);
	cs_store_close(e->store);
	if (e->has_tokenizer)
		gf_tokenizer_free(&e->tokenizer);
	gf_model_free(e->model);
	pthread_mutex_destroy(&e->tier.mu);
	pthread_mutex_destroy(&e->mu);
	free(e);
}

const gf_model *gfe_model(const gfe_engine *e)
{
	return e->model;
}

const gf_tokenizer *gfe_tokenizer(const gfe_engine *e)
{
	return e->has_tokenizer ? &e->tokenizer : NULL;
}

cs_store *gfe_store(gfe_engine *e)
{
	return e->store;
}

uint64_t gfe_key_model_id(const gf_model *m)
{
	return gfe_context_model_id(m);
}

int gfe_context_compute(const gfe_engine *e, uint64_t ctx_model_id, gf_compute *out)
{
	const uint64_t id = e->model->cfg.model_id;
	if (ctx_model_id != id && ctx_model_id != (id ^ GFE_BF16_ID_SALT))
		return -EINVAL;
	*out = ctx_model_id == id ? GF_COMPUTE_F32 : GF_COMPUTE_BF16;
	return 0;
}

void gfe_tier_stats_get(gfe_engine *e, gfe_tier_stats *out)
{
	pthread_mutex_lock(&e->tier.mu);
	out->hits = e->tier.hits;
	out->misses = e->tier.misses;
	out->bytes = e->tier.bytes;
	out->blocks = e->tier.blocks;
	out->budget = e->tier.budget;
	pthread_mutex_unlock(&e->tier.mu);
}

void gfe_memory_get(gfe_engine *e, gfe_memory *out)
{
	gfe_tier_stats t;
	gfe_tier_stats_get(e, &t);
	out->weight_bytes = e->model->weight_bytes;
	cs_store_cache_usage(e->store, &out->page_cache_bytes, &out->page_cache_budget);
	out->tier_bytes = t.bytes;
	out->tier_budget = t.budget;
}

/* ---- snapshots ----------------------------------------------------------------------------
 * The blob stored beside a context's pages: a fixed header (little-endian fields) then the
 * state floats (shift + wkv, as gf_state) and the window of the last n_tail Finch outputs.
 */
struct snapshot_header {
	uint32_t magic;
	uint16_t major, minor;
	uint64_t model_id;
	uint64_t n_pos;
	uint64_t input_bytes;
	uint32_t n_layer, n_embd, first_gold, n_head, head_size, window, n_tail;
	uint32_t slice;  /* 0: every block; else gfe_slice_code() of the rank's blocks */
	/* 1.1 on: */
	uint32_t compute; /* gf_compute of the ingest; 1.0 snapshots were all f32 */
	uint32_t reserved;
};

/* A 1.0 header: the fields before `compute`. */
#define SNAPSHOT_HEADER_1_0 offsetof(struct snapshot_header, compute)

size_t gfe_snapshot_size(const gf_config *c, int n_tail)
{
	return sizeof(struct snapshot_header) +
	       (gf_state_floats(c) + (size_t)n_tail * c->n_embd) * sizeof(float);
}

int gfe_check_context(const gfe_engine *e, uint64_t serial, uint64_t model_id, uint32_t width,
		      cs_dtype dtype, char *err)
{
	const gf_model *m = e->model;
	const uint64_t mine = gfe_context_model_id(m);
	if (model_id != mine && (model_id ^ GFE_BF16_ID_SALT) == m->cfg.model_id)
		return gf_error(err, -EINVAL, "context #%llu was ingested with bf16 compute, this daemon runs f32: continue it with --compute bf16, or ingest it again",
				(unsigned long long)serial);
	if (model_id != mine && model_id == m->cfg.model_id)
		return gf_error(err, -EINVAL, "context #%llu was ingested with f32 compute, this daemon runs bf16: continue it with --compute f32, or ingest it again",
				(unsigned long long)serial);
	if (model_id != mine || width != (uint32_t)m->cfg.ckv_dim)
		return gf_error(err, -EINVAL, "context #%llu was made by another model",
				(unsigned long long)serial);
	if (dtype != e->cfg.c_dtype) /* rows are read into buffers of the engine's type */
		return gf_error(err, -EINVAL, "context #%llu stores c as %s, this engine as %s",
				(unsigned long long)serial, cs_dtype_name(dtype),
				cs_dtype_name(e->cfg.c_dtype));
	return 0;
}

void gfe_snapshot_write(const gf_model *m, const gf_state *st, uint64_t input_bytes,
			uint32_t slice, void *buf)
{
	const gf_config *c = &m->cfg;
	struct snapshot_header h = {
		.magic = GFE_SNAPSHOT_MAGIC, .major = GFE_SNAPSHOT_MAJOR,
		.minor = GFE_SNAPSHOT_MINOR, .model_id = c->model_id, .n_pos = (uint64_t)st->n_pos,
		.input_bytes = input_bytes, .n_layer = (uint32_t)c->n_layer,
		.n_embd = (uint32_t)c->n_embd, .first_gold = (uint32_t)c->first_gold,
		.n_head = (uint32_t)c->n_head, .head_size = (uint32_t)c->head_size,
		.window = (uint32_t)gf_config_tail_window(c), .n_tail = (uint32_t)st->n_tail,
		.slice = slice, .compute = (uint32_t)m->compute,
	};
	char *p = buf;
	memcpy(p, &h, sizeof(h));
	p += sizeof(h);
	memcpy(p, st->shift, gf_state_floats(c) * sizeof(float));
	p += gf_state_floats(c) * sizeof(float);
	memcpy(p, st->tail, (size_t)st->n_tail * c->n_embd * sizeof(float));
}

int gfe_snapshot_read(const gf_model *m, const void *buf, size_t len, uint32_t slice,
		      gf_state *st, uint64_t *input_bytes, char *err)
{
	const gf_config *c = &m->cfg;
	struct snapshot_header h = { 0 };
	if (len < SNAPSHOT_HEADER_1_0)
		return gf_error(err, -EBADMSG, "snapshot of %zu bytes is too short", len);
	memcpy(&h, buf, SNAPSHOT_HEADER_1_0);
	if (h.magic != GFE_SNAPSHOT_MAGIC)
		return gf_error(err, -EBADMSG, "snapshot: bad magic 0x%08x", h.magic);
	if (h.major != GFE_SNAPSHOT_MAJOR)
		return gf_error(err, -EBADMSG, "snapshot format %u.%u: this build reads %u.x", h.major,
			    h.minor, GFE_SNAPSHOT_MAJOR);
	if (h.model_id != c->model_id || h.n_layer != (uint32_t)c->n_layer ||
	    h.n_embd != (uint32_t)c->n_embd || h.first_gold != (uint32_t)c->first_gold ||
	    h.n_head != (uint32_t)c->n_head || h.head_size != (uint32_t)c->head_size)
		return gf_error(err, -EINVAL, "snapshot was made by another model (id %016llx, this one %016llx)",
			    (unsigned long long)h.model_id, (unsigned long long)c->model_id);
	if (h.slice != slice) {
		const uint32_t L = (uint32_t)c->n_layer;
		return gf_error(err, -EINVAL, "snapshot holds the state of blocks %u..%u, this process runs blocks %u..%u: it was made with another split of the model over ranks",
			    h.slice ? h.slice >> 16 : 0, (h.slice ? h.slice & 0xffff : L) - 1,
			    slice ? slice >> 16 : 0, (slice ? slice & 0xffff : L) - 1);
	}
	const size_t header = h.minor >= 1 ? sizeof(h) : SNAPSHOT_HEADER_1_0;
	if (len < header)
		return gf_error(err, -EBADMSG, "snapshot of %zu bytes is too short", len);
	memcpy(&h, buf, header);
	if (h.compute != (uint32_t)m->compute)
		return gf_error(err, -EINVAL, "snapshot was made with %s compute, this process runs %s: a context is continued in the mode that ingested it",
				h.compute == GF_COMPUTE_BF16 ? "bf16" : h.compute ? "unknown" : "f32",
				gf_compute_name(m->compute));
	if (h.n_tail > h.window || h.window != (uint32_t)gf_config_tail_window(c) ||
	    len != header + (gfe_snapshot_size(c, (int)h.n_tail) - sizeof(h)))
		return gf_error(err, -EBADMSG, "snapshot: %zu bytes do not match its header", len);
	const char *p = (const char *)buf + header;
	memcpy(st->shift, p, gf_state_floats(c) * sizeof(float));
	p += gf_state_floats(c) * sizeof(float);
	memcpy(st->tail, p, (size_t)h.n_tail * c->n_embd * sizeof(float));
	st->n_tail = (int32_t)h.n_tail;
	st->n_pos = (int64_t)h.n_pos;
	*input_bytes = h.input_bytes;
	return 0;
}

/* c rows from float32 to the store's element type. */
void gfe_c_to_storage(cs_dtype t, const float *src, void *dst, size_t n)
{
	switch (t) {
	case CS_DTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	case CS_DTYPE_F16:
		for (size_t i = 0; i < n; i++)
			((uint16_t *)dst)[i] = gf_f32_to_f16(src[i]);
		break;
	case CS_DTYPE_BF16:
		for (size_t i = 0; i < n; i++)
			((uint16_t *)dst)[i] = gf_f32_to_bf16(src[i]);
		break;
	}
}

/* ---- the paged key/value source ------------------------------------------------------------
 * Serves gf_gold_chunk's key blocks from the tier, or rebuilds them from (c, tok) rows read
 * through the page cache (a reader, or a session's branch over one). The block that holds
 * the newest positions grows during a session: it is kept per layer and extended by the new
 * rows only.
 */

static int paged_rows(struct paged_src *ps, int64_t first, int n)
{
	const gf_config *c = &ps->e->model->cfg;
	int rc = ps->branch ? cs_branch_read(ps->branch, (uint64_t)first, (uint64_t)n, ps->raw,
					     ps->raw_tok, ps->err)
			    : cs_reader_read(ps->reader, (uint64_t)first, (uint64_t)n, ps->raw,
					     ps->raw_tok, ps->err);
	if (rc)
		return rc;
	gf_convert_to_f32((gf_dtype)ps->e->cfg.c_dtype, ps->raw, ps->c, (size_t)n * c->ckv_dim);
	for (int i = 0; i < n; i++)
		ps->tok[i] = (int32_t)ps->raw_tok[i];
	return 0;
}

/* Rebuilds rows [first + from, first + n) of layer g's block into k, v (row stride A). */
static int paged_rebuild(struct paged_src *ps, gf_workspace *ws, int g, int64_t first,
			 int from, int n, float *k, float *v)
{
	const gf_config *c = &ps->e->model->cfg;
	const int64_t pos0 = first + from;
	const int has_prev = pos0 > 0;
	const int64_t block = first / GF_KV_BLOCK;
	if (ps->ks && from == 0 && n == GF_KV_BLOCK && block >= ps->ks_block0 &&
	    block < ps->ks_block0 + ps->ks_blocks) {
		const int64_t i = block - ps->ks_block0;
		float *stream = ps->ks + (size_t)i * gf_key_stream_floats(c, GF_KV_BLOCK);
		int rc = 0;
		if (!ps->ks_have[i]) {
			if ((rc = paged_rows(ps, pos0 - has_prev, n + has_prev)) ||
			    (rc = gf_key_stream(ps->e->model, ws, ps->c, ps->tok, has_prev, pos0, n,
						stream)))
				return rc;
			ps->ks_have[i] = 1;
		}
		return gf_kv_expand(ps->e->model, ws, g, stream, pos0, n, k, v);
	}
	int rc = paged_rows(ps, pos0 - has_prev, n - from + has_prev);
	if (rc)
		return rc;
	return gf_kv_rebuild(ps->e->model, ws, g, ps->c, ps->tok, has_prev, pos0, n - from,
			     k + (size_t)from * c->dim_att, v + (size_t)from * c->dim_att);
}

/* Rows [from, n) of a block rebuilt into the key and value blocks k, v (gf_kv_block_bytes of
 * the source's type; bf16 rounded there, so a rebuilt block has the bits it has in the tier). */
static int rebuild_as(struct paged_src *ps, gf_workspace *ws, int g, int64_t first, int from,
		      int n, void *k, void *v)
{
	const gf_config *c = &ps->e->model->cfg;
	const size_t at = (size_t)from * c->dim_att;
	float *fk, *fv;
	gf_workspace_kv_scratch(ws, &fk, &fv);
	int rc = paged_rebuild(ps, ws, g, first, from, n, fk, fv);
	if (rc)
		return rc;
	gf_kv_block_put(c, ps->src.kv_dtype, fk + at, fv + at, c->dim_att, from, n - from, k, v);
	return 0;
}

static int paged_get(gf_kv_source *src, gf_workspace *ws, int g, int64_t first, int n,
		     const void **k, const void **v)
{
	struct paged_src *ps = (struct paged_src *)src;
	const gf_config *c = &ps->e->model->cfg;
	struct tier *t = &ps->e->tier;
	const uint64_t block = (uint64_t)first / GF_KV_BLOCK;
	const size_t block_bytes = gf_kv_block_bytes(c, src->kv_dtype);
	int rc;
	gfe_tier_unpin(t, ps->pinned);
	ps->pinned = NULL;

	if (ps->open_k && first + n == src->n_pos && (uint64_t)first + n > ps->base_full) {
		/* The growing block (the newest positions): extend it by its new rows. Only that
		 * one: a session's earlier blocks would evict it (and each other) every step, and
		 * a full block is then rebuilt in one go, with or without the tier, so that the
		 * tier never changes a result's bits. */
		char *bk = (char *)ps->open_k + (size_t)g * block_bytes;
		char *bv = (char *)ps->open_v + (size_t)g * block_bytes;
		int from = ps->open_first[g] == first && ps->open_rows[g] <= n ? ps->open_rows[g] : 0;
		if (from < n && (rc = rebuild_as(ps, ws, g, first, from, n, bk, bv)))
			return rc;
		ps->open_first[g] = first;
		ps->open_rows[g] = n;
		*k = bk;
		*v = bv;
		return 0;
	}
	if (n == GF_KV_BLOCK && t->budget > 0) {
		/* A full block: shared if it lies in the stored context, the session's otherwise. */
		uint64_t owner = (uint64_t)first + n <= ps->base_full ? ps->serial : ps->session_owner;
		if (owner) {
			struct tier_entry *e = tier_get(t, owner, g, block);
			if (!e && (e = tier_alloc(t, owner))) {
				if ((rc = rebuild_as(ps, ws, g, first, 0, n, e->k, e->v))) {
					tier_discard(t, e);
					return rc;
				}
				tier_publish(t, e, owner, g, block);
			}
			if (e) {
				ps->pinned = e;
				*k = e->k;
				*v = e->v;
				return 0;
			}
		}
	}
	if ((rc = rebuild_as(ps, ws, g, first, 0, n, ps->kblk, ps->vblk)))
		return rc;
	*k = ps->kblk;
	*v = ps->vblk;
	return 0;
}

int gfe_paged_init(struct paged_src *ps, gfe_engine *e, cs_reader *reader, uint64_t serial,
		      uint64_t base_tokens, bool growing)
{
	const gf_config *c = &e->model->cfg;
	const size_t rows = GF_KV_BLOCK + 1, n_gold = (size_t)(c->n_layer - c->first_gold);
	memset(ps, 0, sizeof(*ps));
	ps->src.get = paged_get;
	ps->src.kv_dtype = e->cfg.kv_dtype;
	ps->e = e;
	ps->reader = reader;
	ps->serial = serial;
	ps->base_full = base_tokens / GF_KV_BLOCK * GF_KV_BLOCK;
	ps->raw = malloc(rows * c->ckv_dim * cs_dtype_size(e->cfg.c_dtype));
	ps->raw_tok = malloc(rows * sizeof(uint32_t));
	ps->c = malloc(rows * c->ckv_dim * sizeof(float));
	ps->tok = malloc(rows * sizeof(int32_t));
	if (growing) {
		const size_t bb = gf_kv_block_bytes(c, e->cfg.kv_dtype);
		ps->open_k = calloc(n_gold, bb);
		ps->open_v = calloc(n_gold, bb);
		ps->open_first = malloc(n_gold * sizeof(int64_t));
		ps->open_rows = calloc(n_gold, sizeof(int));
		if (ps->open_first)
			for (size_t g = 0; g < n_gold; g++)
				ps->open_first[g] = -1;
	}
	ps->kblk = calloc(1, gf_kv_block_bytes(c, e->cfg.kv_dtype));
	ps->vblk = calloc(1, gf_kv_block_bytes(c, e->cfg.kv_dtype));
	if (!ps->kblk || !ps->vblk)
		return -ENOMEM;
	if (!ps->raw || !ps->raw_tok || !ps->c || !ps->tok ||
	    (growing && (!ps->open_k || !ps->open_v || !ps->open_first || !ps->open_rows)))
		return -ENOMEM;
	return 0;
}

int gfe_paged_key_cache(struct paged_src *ps, int64_t block0, int64_t blocks, size_t max_bytes)
{
	const size_t per = gf_key_stream_floats(&ps->e->model->cfg, GF_KV_BLOCK) * sizeof(float);
	if (blocks > (int64_t)(max_bytes / per))
		blocks = (int64_t)(max_bytes / per);
	free(ps->ks);
	free(ps->ks_have);
	ps->ks = NULL;
	ps->ks_have = NULL;
	ps->ks_blocks = 0;
	if (blocks < 1 || !ps->e->model->w_kv_cache_b.p)
		return 0;
	ps->ks = malloc((size_t)blocks * per);
	ps->ks_have = calloc((size_t)blocks, 1);
	if (!ps->ks || !ps->ks_have) {
		free(ps->ks);
		free(ps->ks_have);
		ps->ks = NULL;
		ps->ks_have = NULL;
		snprintf(ps->err, sizeof(ps->err), "out of memory keeping the key stream of %lld blocks",
			 (long long)blocks);
		return -ENOMEM;
	}
	ps->ks_block0 = block0;
	ps->ks_blocks = blocks;
	return 0;
}

void gfe_paged_free(struct paged_src *ps)
{
	if (ps->e)
		gfe_tier_unpin(&ps->e->tier, ps->pinned);
	free(ps->ks);
	free(ps->ks_have);
	free(ps->raw);
	free(ps->raw_tok);
	free(ps->c);
	free(ps->tok);
	free(ps->open_k);
	free(ps->open_v);
	free(ps->kblk);
	free(ps->vblk);
	free(ps->open_first);
	free(ps->open_rows);
	memset(ps, 0, sizeof(*ps));
}

/* ---- filling the tier for a cold question ---------------------------------------------------
 * A question on a context the tier does not hold would rebuild every block of every GOLD layer
 * one layer after the other, each block's key stream (most of the work, the same for every
 * layer) once per layer, on one thread. Before the question runs, every missing full block is
 * instead rebuilt once for all the layers this engine holds, by all the threads, each with its
 * own workspace and reader, as far as the budget allows (blocks in position order). The
 * entries are those the question would have rebuilt (gf_key_stream + gf_kv_expand give the
 * bits of gf_kv_rebuild), so an answer is the same cold, warm or with the tier off. */

struct fill_job {
	gfe_engine *e;
	uint64_t serial;
	int64_t n_blocks;
	atomic_int_fast64_t next;
	atomic_bool full;      /* the budget is spent: stop */
	atomic_int rc;
	char err[GF_ERR_LEN];  /* the first error's (set once, by the thread that set rc) */
	pthread_mutex_t mu;
};

static bool holds_kv(const gf_model *m, int g)
{
	return m->layers[m->cfg.first_gold + g].key_w1.p != NULL;
}

static int fill_block(struct fill_job *j, struct paged_src *ps, gf_workspace *ws, float *stream,
		      int64_t b)
{
	gfe_engine *e = j->e;
	const gf_model *m = e->model;
	const gf_config *c = &m->cfg;
	const int n_gold = c->n_layer - c->first_gold;
	struct tier *t = &e->tier;
	bool any = false;
	for (int g = 0; g < n_gold && !any; g++)
		any = holds_kv(m, g) && !tier_has(t, j->serial, g, (uint64_t)b);
	if (!any)
		return 0;
	const int64_t first = b * GF_KV_BLOCK;
	const int has_prev = first > 0;
	int rc = paged_rows(ps, first - has_prev, GF_KV_BLOCK + has_prev);
	if (!rc)
		rc = gf_key_stream(m, ws, ps->c, ps->tok, has_prev, first, GF_KV_BLOCK, stream);
	for (int g = 0; g < n_gold && !rc; g++) {
		if (!holds_kv(m, g) || tier_has(t, j->serial, g, (uint64_t)b))
			continue;
		struct tier_entry *te = tier_alloc(t, j->serial);
		if (!te) {
			atomic_store(&j->full, true);
			return 0;
		}
		float *fk, *fv;
		gf_workspace_kv_scratch(ws, &fk, &fv);
		if ((rc = gf_kv_expand(m, ws, g, stream, first, GF_KV_BLOCK, fk, fv))) {
			tier_discard(t, te);
			break;
		}
		gf_kv_block_put(c, e->cfg.kv_dtype, fk, fv, c->dim_att, 0, GF_KV_BLOCK, te->k, te->v);
		tier_publish(t, te, j->serial, g, (uint64_t)b);
		gfe_tier_unpin(t, te);
	}
	return rc;
}

static void *fill_worker(void *arg)
{
	struct fill_job *j = arg;
	gfe_engine *e = j->e;
	char err[GF_ERR_LEN] = "";
	gf_workspace *ws = NULL;
	cs_reader *rd = NULL;
	struct paged_src ps = { 0 };
	float *stream = malloc(sizeof(float) * gf_key_stream_floats(&e->model->cfg, GF_KV_BLOCK));
	int rc = stream ? 0 : -ENOMEM;
	if (!rc)
		rc = gf_workspace_init_threads(&ws, e->model, GF_KV_BLOCK, 1);
	if (!rc)
		rc = cs_reader_open(e->store, j->serial, &rd, err);
	if (!rc)
		rc = gfe_paged_init(&ps, e, rd, j->serial, (uint64_t)j->n_blocks * GF_KV_BLOCK, false);
	while (!rc && !atomic_load(&j->full) && !atomic_load(&j->rc)) {
		const int64_t b = atomic_fetch_add(&j->next, 1);
		if (b >= j->n_blocks)
			break;
		rc = fill_block(j, &ps, ws, stream, b);
		if (rc && ps.err[0])
			snprintf(err, sizeof(err), "%s", ps.err);
	}
	if (rc) {
		pthread_mutex_lock(&j->mu);
		if (!atomic_load(&j->rc)) {
			snprintf(j->err, sizeof(j->err), "%s", err[0] ? err : "out of memory");
			atomic_store(&j->rc, rc);
		}
		pthread_mutex_unlock(&j->mu);
	}
	gfe_paged_free(&ps);
	cs_reader_close(rd);
	gf_workspace_free(ws);
	free(stream);
	return NULL;
}

/* ---- workspaces ------------------------------------------------------------------------------
 * A workspace (a chunk's buffers, tens of MB, and a thread pool) is kept when its ingest or
 * session ends and handed to the next: a question then starts without allocating, faulting in
 * fresh pages or starting threads. */

int gfe_workspace_take(gfe_engine *e, gf_workspace **out)
{
	pthread_mutex_lock(&e->mu);
	*out = e->n_ws_free ? e->ws_free[--e->n_ws_free] : NULL;
	pthread_mutex_unlock(&e->mu);
	return *out ? 0 : gf_workspace_init(out, e->model, e->cfg.chunk);
}

void gfe_workspace_give(gfe_engine *e, gf_workspace *ws)
{
	if (!ws)
		return;
	pthread_mutex_lock(&e->mu);
	if (e->n_ws_free < GFE_WS_KEEP) {
		e->ws_free[e->n_ws_free++] = ws;
		ws = NULL;
	}
	pthread_mutex_unlock(&e->mu);
	gf_workspace_free(ws);
}

int gfe_tier_fill(gfe_engine *e, uint64_t serial, uint64_t n_tokens, char *err)
{
	const int64_t n_blocks = (int64_t)(n_tokens / GF_KV_BLOCK);
	if (e->tier.budget == 0 || n_blocks == 0)
		return 0;
	struct fill_job j = { .e = e, .serial = serial, .n_blocks = n_blocks };
	pthread_mutex_init(&j.mu, NULL);
	const int threads = gf_blas_threads() > 1 ? gf_blas_threads() : 1;
	pthread_t tid[64];
	int started = 0;
	for (int i = 1; i < threads && i < 64; i++)
		if (!pthread_create(&tid[i], NULL, fill_worker, &j))
			started = i;
		else
			break;
	fill_worker(&j);
	for (int i = 1; i <= started; i++)
		pthread_join(tid[i], NULL);
	pthread_mutex_destroy(&j.mu);
	const int rc = atomic_load(&j.rc);
	if (rc)
		return gf_error(err, rc, "filling the tier for context #%llu: %s",
				(unsigned long long)serial, j.err);
	return 0;
}

/* ---- ingest --------------------------------------------------------------------------------- */

struct gfe_ingest {
	gfe_engine *e;
	cs_writer *w;
	gf_workspace *ws;
	gf_state st;
	gf_encoder enc;
	int32_t *pending;          /* [chunk] tokens waiting for a full chunk */
	int n_pending;
	uint64_t pending_bytes;    /* text bytes behind the pending tokens */
	uint64_t input_bytes;      /* text bytes behind the tokens through the Finch stage */
	uint64_t committed_bytes;  /* ... as of the last checkpoint */
	uint64_t next_checkpoint;
	float *x, *c;              /* [chunk][C], [chunk][Ck] */
	void *crow;                /* [chunk][Ck] in the store's type */
	uint32_t *tok_u32;         /* [chunk] */
	void *snap;                /* snapshot buffer */
	int failed;                /* sticky error */
	char err[GF_ERR_LEN];
};

static int ingest_alloc(gfe_engine *e, gfe_ingest **out, char *err)
{
	const gf_config *c = &e->model->cfg;
	const size_t ch = (size_t)e->cfg.chunk;
	gfe_ingest *in = calloc(1, sizeof(*in));
	if (!in)
		return gf_error(err, -ENOMEM, "out of memory");
	in->e = e;
	int rc = gfe_workspace_take(e, &in->ws);
	if (!rc)
		rc = gf_state_init(&in->st, c);
	in->pending = malloc(ch * sizeof(int32_t));
	in->x = malloc(ch * c->n_embd * sizeof(float));
	in->c = malloc(ch * c->ckv_dim * sizeof(float));
	in->crow = malloc(ch * c->ckv_dim * cs_dtype_size(e->cfg.c_dtype));
	in->tok_u32 = malloc(ch * sizeof(uint32_t));
	in->snap = malloc(gfe_snapshot_size(c, gf_config_tail_window(c)));
	if (rc || !in->pending || !in->x || !in->c || !in->crow || !in->tok_u32 || !in->snap) {
		gfe_ingest_free(in);
		return gf_error(err, -ENOMEM, "out of memory for an ingest");
	}
	if (e->has_tokenizer)
		gf_encoder_init(&in->enc, &e->tokenizer);
	in->next_checkpoint = e->cfg.checkpoint_tokens;
	*out = in;
	return 0;
}

int gfe_ingest_begin(gfe_engine *e, const char *name, gfe_ingest **out, char *err)
{
	const gf_config *c = &e->model->cfg;
	gfe_ingest *in;
	int rc = ingest_alloc(e, &in, err);
	if (rc)
		return rc;
	cs_ctx_params p = {
		.model_id = gfe_context_model_id(e->model), .dtype = e->cfg.c_dtype,
		.width = (uint32_t)c->ckv_dim, .page_tokens = e->cfg.page_tokens, .name = name,
	};
	if ((rc = cs_writer_begin(e->store, &p, &in->w, err))) {
		gfe_ingest_free(in);
		return rc;
	}
	*out = in;
	return 0;
}

int gfe_ingest_resume(gfe_engine *e, uint64_t serial, gfe_ingest **out, char *err)
{
	gfe_ingest *in;
	void *blob = NULL;
	size_t len = 0;
	int rc = ingest_alloc(e, &in, err);
	if (rc)
		return rc;
	if ((rc = cs_writer_resume(e->store, serial, &in->w, err)))
		goto fail_ingest;
	cs_ctx_info info;
	if ((rc = cs_store_info(e->store, serial, &info, err)))
		goto fail_ingest;
	if (info.dtype != e->cfg.c_dtype) {
		/* Rows are appended from buffers of the engine's type. */
		rc = gf_error(err, -EINVAL, "context #%llu stores c as %s, this engine as %s",
			  (unsigned long long)serial, cs_dtype_name(info.dtype),
			  cs_dtype_name(e->cfg.c_dtype));
		goto fail_ingest;
	}
	if ((rc = cs_store_read_blob(e->store, serial, &blob, &len, err)))
		goto fail_ingest;
	if (len == 0) {
		/* Committed before its first checkpoint's snapshot: start it over. */
		rc = gf_error(err, -EINVAL, "context #%llu has no snapshot to resume from",
			  (unsigned long long)serial);
		goto fail_ingest;
	}
	if ((rc = gfe_snapshot_read(e->model, blob, len, e->slice, &in->st, &in->input_bytes, err)))
		goto fail_ingest;
	if ((uint64_t)in->st.n_pos != cs_writer_committed(in->w)) {
		rc = gf_error(err, -EBADMSG, "context #%llu: snapshot at token %lld but %llu committed",
			  (unsigned long long)serial, (long long)in->st.n_pos,
			  (unsigned long long)cs_writer_committed(in->w));
		goto fail_ingest;
	}
	in->committed_bytes = in->input_bytes;
	const uint64_t K = e->cfg.checkpoint_tokens;
	in->next_checkpoint = K ? ((uint64_t)in->st.n_pos / K + 1) * K : 0;
	free(blob);
	*out = in;
	return 0;
fail_ingest:
	free(blob);
	gfe_ingest_free(in);
	return rc;
}

static int ingest_commit(gfe_ingest *in, uint32_t flags, char *err)
{
	const gf_config *c = &in->e->model->cfg;
	gfe_snapshot_write(in->e->model, &in->st, in->input_bytes, in->e->slice, in->snap);
	int rc = cs_writer_commit(in->w, in->snap, gfe_snapshot_size(c, in->st.n_tail), flags, err);
	if (!rc)
		in->committed_bytes = in->input_bytes;
	return rc;
}

/* Runs the pending tokens (a full chunk, or the last partial one) through the Finch stage
 * and appends their rows; commits when a checkpoint is due. */
static int ingest_run_chunk(gfe_ingest *in, char *err)
{
	gfe_engine *e = in->e;
	const gf_config *c = &e->model->cfg;
	const int n = in->n_pending;
	int rc = gf_finch_chunk(e->model, in->ws, &in->st, in->pending, n, NULL, in->x, in->c);
	if (rc)
		return gf_error(err, rc, "token outside the vocabulary (0..%d) near position %lld",
			    c->vocab_size - 1, (long long)in->st.n_pos);
	gfe_c_to_storage(e->cfg.c_dtype, in->c, in->crow, (size_t)n * c->ckv_dim);
	for (int i = 0; i < n; i++)
		in->tok_u32[i] = (uint32_t)in->pending[i];
	if ((rc = cs_writer_append(in->w, in->crow, in->tok_u32, (size_t)n, err)))
		return rc;
	gf_state_push_tail(c, &in->st, in->x, n);
	in->st.n_pos += n;
	in->input_bytes += in->pending_bytes;
	in->pending_bytes = 0;
	in->n_pending = 0;
	if (in->next_checkpoint && (uint64_t)in->st.n_pos >= in->next_checkpoint &&
	    n == e->cfg.chunk) {
		if ((rc = ingest_commit(in, 0, err)))
			return rc;
		in->next_checkpoint += e->cfg.checkpoint_tokens;
	}
	return 0;
}

static int ingest_push(gfe_ingest *in, const int32_t *tok, size_t n, char *err)
{
	const gf_tokenizer *tk = in->e->has_tokenizer ? &in->e->tokenizer : NULL;
	const int32_t V = in->e->model->cfg.vocab_size;
	for (size_t i = 0; i < n; i++) {
		if (tok[i] < 0 || tok[i] >= V)
			return gf_error(err, -EINVAL, "token %d at position %llu is outside the vocabulary (0..%d)",
				    tok[i], (unsigned long long)(in->st.n_pos + in->n_pending), V - 1);
		in->pending[in->n_pending++] = tok[i];
		if (tk) {
			size_t len;
			gf_tokenizer_token(tk, tok[i], &len);
			in->pending_bytes += len;
		}
		if (in->n_pending == in->e->cfg.chunk) {
			int rc = ingest_run_chunk(in, err);
			if (rc)
				return rc;
		}
	}
	return 0;
}

static int ingest_sink(void *user, const int32_t *ids, size_t n)
{
	gfe_ingest *in = user;
	return ingest_push(in, ids, n, in->err);
}

/* Every public ingest call goes through here: a failed ingest stays failed. */
static int ingest_check(gfe_ingest *in, int rc, char *err)
{
	if (rc) {
		in->failed = rc;
		if (err && err != in->err)
			snprintf(err, GF_ERR_LEN, "%s", in->err[0] ? in->err : "ingest failed");
	}
	return rc;
}

int gfe_ingest_text(gfe_ingest *in, const void *bytes, size_t n, char *err)
{
	if (in->failed)
		return gf_error(err, in->failed, "this ingest failed earlier: %.200s", in->err);
	if (!in->e->has_tokenizer)
		return gf_error(err, -EINVAL, "the model has no vocabulary: send token ids");
	in->err[0] = 0;
	int rc = gf_encoder_feed(&in->enc, bytes, n, ingest_sink, in);
	return ingest_check(in, rc, err);
}

int gfe_ingest_tokens(gfe_ingest *in, const int32_t *tok, size_t n, char *err)
{
	if (in->failed)
		return gf_error(err, in->failed, "this ingest failed earlier: %.200s", in->err);
	in->err[0] = 0;
	int rc = ingest_push(in, tok, n, in->err);
	return ingest_check(in, rc, err);
}

int gfe_ingest_checkpoint(gfe_ingest *in, char *err)
{
	if (in->failed)
		return gf_error(err, in->failed, "this ingest failed earlier: %.200s", in->err);
	in->err[0] = 0;
	int rc = ingest_commit(in, 0, in->err);
	return ingest_check(in, rc, err);
}

int gfe_ingest_finish(gfe_ingest *in, gfe_context *out, float *logits_last, char *err)
{
	gfe_engine *e = in->e;
	const gf_config *c = &e->model->cfg;
	cs_reader *r = NULL;
	struct paged_src ps = { 0 };
	float *logits = NULL;
	int rc;
	if (in->failed)
		return gf_error(err, in->failed, "this ingest failed earlier: %.200s", in->err);
	in->err[0] = 0;
	if (e->has_tokenizer && (rc = gf_encoder_finish(&in->enc, ingest_sink, in)))
		return ingest_check(in, rc, err);
	if (in->n_pending && (rc = ingest_run_chunk(in, in->err)))
		return ingest_check(in, rc, err);
	if (in->st.n_pos == 0)
		return ingest_check(in, gf_error(in->err, -EINVAL, "empty input: no tokens to ingest"), err);
	/* The GOLD tail reads the pages: commit them, then attend over all of them. */
	if ((rc = ingest_commit(in, 0, in->err)))
		return ingest_check(in, rc, err);
	const uint64_t serial = cs_writer_serial(in->w);
	if ((rc = cs_reader_open(e->store, serial, &r, in->err)))
		return ingest_check(in, rc, err);
	/* The tail reads every page once: keep memory constant in the length. */
	cs_reader_set_streaming(r, true);
	logits = malloc(sizeof(float) * (size_t)c->vocab_size);
	rc = logits ? gfe_paged_init(&ps, e, r, serial, (uint64_t)in->st.n_pos, false) : -ENOMEM;
	if (rc == -ENOMEM)
		gf_error(in->err, rc, "context #%llu: out of memory for the GOLD tail",
			 (unsigned long long)serial);
	if (!rc) {
		ps.src.n_pos = in->st.n_pos;
		/* Every GOLD layer rebuilds the same blocks: their key stream once. */
		if ((rc = gfe_paged_key_cache(&ps, 0, in->st.n_pos / GF_KV_BLOCK,
					      GFE_TAIL_KEY_CACHE_BYTES)))
			gf_error(in->err, rc, "context #%llu: out of memory for the GOLD tail",
				 (unsigned long long)serial);
	}
	if (!rc) {
		rc = gf_gold_tail(e->model, in->ws, &in->st, &ps.src, logits);
		if (rc && !in->err[0])
			snprintf(in->err, GF_ERR_LEN, "GOLD tail: %.200s", ps.err[0] ? ps.err : "failed");
	}
	gfe_paged_free(&ps);
	cs_reader_close(r);
	if (rc) {
		free(logits);
		return ingest_check(in, rc, err);
	}
	if (logits_last)
		memcpy(logits_last, logits, sizeof(float) * (size_t)c->vocab_size);
	free(logits);
	/* The final snapshot carries exact GOLD shift states too: a session may decode at once. */
	memset(out, 0, sizeof(*out));
	rc = ingest_commit(in, CS_COMMIT_SEAL, in->err);
	if (rc == -EEXIST) {
		/* The same tokens under the same model are stored already: keep that one. */
		cs_ctx_info info;
		cs_key key = cs_writer_key(in->w);
		cs_writer_free(in->w);
		in->w = NULL;
		if ((rc = cs_store_remove(e->store, serial, in->err)))
			return ingest_check(in, rc, err);
		if ((rc = cs_store_lookup(e->store, key, &info)))
			return ingest_check(in, gf_error(in->err, rc, "identical context vanished"), err);
		out->serial = info.serial;
		out->key = info.key;
		out->n_tokens = info.n_tokens;
		out->disk_bytes = info.disk_bytes;
		out->reused = true;
		return 0;
	}
	if (rc)
		return ingest_check(in, rc, err);
	cs_ctx_info info;
	if ((rc = cs_store_info(e->store, serial, &info, in->err)))
		return ingest_check(in, rc, err);
	out->serial = serial;
	out->key = info.key;
	out->n_tokens = info.n_tokens;
	out->disk_bytes = info.disk_bytes;
	return 0;
}

uint64_t gfe_ingest_tokens_done(const gfe_ingest *in)
{
	return (uint64_t)in->st.n_pos;
}

uint64_t gfe_ingest_committed(const gfe_ingest *in)
{
	return in->w ? cs_writer_committed(in->w) : (uint64_t)in->st.n_pos;
}

uint64_t gfe_ingest_input_bytes(const gfe_ingest *in)
{
	return in->committed_bytes;
}

uint64_t gfe_ingest_serial(const gfe_ingest *in)
{
	return in->w ? cs_writer_serial(in->w) : 0;
}

void gfe_ingest_free(gfe_ingest *in)
{
	if (!in)
		return;
	cs_writer_free(in->w);
	gfe_workspace_give(in->e, in->ws);
	gf_state_free(&in->st);
	free(in->pending);
	free(in->x);
	free(in->c);
	free(in->crow);
	free(in->tok_u32);
	free(in->snap);
	free(in);
}

/* ---- sessions ------------------------------------------------------------------------------- */

struct gfe_session {
	gfe_engine *e;
	cs_reader *reader;
	cs_branch *branch;
	gf_workspace *ws;
	gf_state st;
	struct paged_src ps;
	uint64_t base_tokens;
	uint64_t id;
	float *x, *c;         /* [chunk][C], [chunk][Ck] */
	void *crow;
	uint32_t *tok_u32;
	/* gfe_sessions_step's per-row arrays [chunk], used when this session leads a batch */
	gf_state **b_st;
	gf_kv_source **b_src;
	int *b_idx, *b_rc, *b_grc;
	int32_t *b_tok;
	int failed;           /* a step failed after the state advanced: the session is done */
	char err[GF_ERR_LEN]; /* why */
};

int gfe_session_open(gfe_engine *e, uint64_t serial, gfe_session **out, char *err)
{
	const gf_config *c = &e->model->cfg;
	const size_t ch = (size_t)e->cfg.chunk;
	void *blob = NULL;
	size_t len = 0;
	uint64_t input_bytes;
	cs_ctx_info info;
	int rc;
	gfe_session *s = calloc(1, sizeof(*s));
	if (!s)
		return gf_error(err, -ENOMEM, "out of memory");
	s->e = e;
	if (serial == GFE_NO_CONTEXT) {
		if ((rc = gf_state_init(&s->st, c)) || (rc = gfe_workspace_take(e, &s->ws)))
			goto fail_oom;
		if ((rc = cs_branch_init_empty(&s->branch, e->cfg.page_tokens, (uint32_t)c->ckv_dim,
					       e->cfg.c_dtype, err)))
			goto fail_session;
		goto opened;
	}
	if ((rc = cs_reader_open(e->store, serial, &s->reader, err)))
		goto fail_session;
	cs_reader_info(s->reader, &info);
	if (!info.sealed) {
		rc = gf_error(err, -EINVAL, "context #%llu is still being ingested (%llu tokens so far)",
			  (unsigned long long)serial, (unsigned long long)info.n_tokens);
		goto fail_session;
	}
	if ((rc = gfe_check_context(e, serial, info.model_id, info.width, info.dtype, err)))
		goto fail_session;
	if ((rc = gf_state_init(&s->st, c)) || (rc = gfe_workspace_take(e, &s->ws)))
		goto fail_oom;
	if ((rc = cs_reader_blob(s->reader, &blob, &len, err)))
		goto fail_session;
	if ((rc = gfe_snapshot_read(e->model, blob, len, e->slice, &s->st, &input_bytes, err)))
		goto fail_session;
	if ((uint64_t)s->st.n_pos != info.n_tokens) {
		rc = gf_error(err, -EBADMSG, "context #%llu: snapshot at token %lld, pages hold %llu",
			  (unsigned long long)serial, (long long)s->st.n_pos,
			  (unsigned long long)info.n_tokens);
		goto fail_session;
	}
	if ((rc = cs_branch_init(&s->branch, s->reader, err)))
		goto fail_session;
	s->base_tokens = info.n_tokens;
opened:
	pthread_mutex_lock(&e->mu);
	s->id = ++e->next_session | TIER_SESSION;
	pthread_mutex_unlock(&e->mu);
	if ((rc = gfe_paged_init(&s->ps, e, s->reader, serial, s->base_tokens, true)))
		goto fail_oom;
	s->ps.branch = s->branch;
	s->ps.session_owner = s->id;
	/* A context the tier lacks: its blocks rebuilt for every layer at once, on every thread. */
	if (serial != GFE_NO_CONTEXT && (rc = gfe_tier_fill(e, serial, s->base_tokens, err)))
		goto fail_session;
	s->x = malloc(ch * c->n_embd * sizeof(float));
	s->c = malloc(ch * c->ckv_dim * sizeof(float));
	s->crow = malloc(ch * c->ckv_dim * cs_dtype_size(e->cfg.c_dtype));
	s->tok_u32 = malloc(ch * sizeof(uint32_t));
	s->b_st = malloc(ch * sizeof(*s->b_st));
	s->b_src = malloc(ch * sizeof(*s->b_src));
	s->b_idx = malloc(ch * sizeof(int));
	s->b_rc = malloc(ch * sizeof(int));
	s->b_grc = malloc(ch * sizeof(int));
	s->b_tok = malloc(ch * sizeof(int32_t));
	if (!s->x || !s->c || !s->crow || !s->tok_u32 || !s->b_st || !s->b_src || !s->b_idx ||
	    !s->b_rc || !s->b_grc || !s->b_tok)
		goto fail_oom;
	free(blob);
	*out = s;
	return 0;
fail_oom:
	rc = gf_error(err, -ENOMEM, "out of memory for a session");
fail_session:
	free(blob);
	gfe_session_free(s);
	return rc;
}

/* n <= chunk tokens through the Finch stage; their rows onto the branch. */
static int session_finch(gfe_session *s, const int32_t *tok, int n, char *err)
{
	gfe_engine *e = s->e;
	const gf_config *c = &e->model->cfg;
	int rc = gf_finch_chunk(e->model, s->ws, &s->st, tok, n, NULL, s->x, s->c);
	if (rc)
		return gf_error(err, rc, "token outside the vocabulary (0..%d)", c->vocab_size - 1);
	gfe_c_to_storage(e->cfg.c_dtype, s->c, s->crow, (size_t)n * c->ckv_dim);
	for (int i = 0; i < n; i++)
		s->tok_u32[i] = (uint32_t)tok[i];
	if ((rc = cs_branch_append(s->branch, s->crow, s->tok_u32, (size_t)n, err)))
		return rc;
	gf_state_push_tail(c, &s->st, s->x, n);
	s->st.n_pos += n;
	s->ps.src.n_pos = s->st.n_pos;
	return 0;
}

/* Whole chunks counted from the question's first token, as gfe_session_prefill runs them:
 * feeding a question in such slices leaves the bits of one prefill. */
int gfe_session_feed(gfe_session *s, const int32_t *tok, size_t n, char *err)
{
	const int ch = s->e->cfg.chunk;
	int rc;
	if (n % (size_t)ch)
		return gf_error(err, -EINVAL, "a slice of %zu tokens is not a whole number of %d-token chunks",
				n, ch);
	for (size_t t = 0; t < n; t += (size_t)ch)
		if ((rc = session_finch(s, tok + t, ch, err)))
			return rc;
	return 0;
}

int gfe_session_chunk(const gfe_session *s)
{
	return s->e->cfg.chunk;
}

int gfe_session_prefill(gfe_session *s, const int32_t *tok, size_t n, float *logits, char *err)
{
	const int ch = s->e->cfg.chunk;
	int rc;
	if (s->failed)
		return gf_error(err, s->failed, "%s", s->err);
	if (n == 0)
		return gf_error(err, -EINVAL, "empty question: no tokens");
	for (size_t t = 0; t < n; t += (size_t)ch) {
		int step = (int)(n - t < (size_t)ch ? n - t : (size_t)ch);
		if ((rc = session_finch(s, tok + t, step, err)))
			return rc;
	}
	s->ps.err[0] = 0;
	rc = gf_gold_tail(s->e->model, s->ws, &s->st, &s->ps.src, logits);
	if (rc)
		return gf_error(err, rc, "attention over the cache: %.200s", s->ps.err[0] ? s->ps.err : "failed");
	return 0;
}

int gfe_session_step(gfe_session *s, int32_t tok, float *logits, char *err)
{
	if (s->failed)
		return gf_error(err, s->failed, "%s", s->err);
	int rc = session_finch(s, &tok, 1, err);
	if (rc)
		return rc;
	s->ps.err[0] = 0;
	rc = gf_gold_chunk(s->e->model, s->ws, &s->st, &s->ps.src, s->x, s->st.n_pos - 1, 1,
			   logits, false);
	if (rc) {
		s->failed = gf_error(s->err, rc, "attention over the cache: %.200s",
				     s->ps.err[0] ? s->ps.err : "failed");
		return gf_error(err, rc, "%s", s->err);
	}
	return 0;
}

/* A batch is led by s[0]: its workspace and buffers carry every row. The rows that can go on
 * are gathered (a session that failed before, or whose token is outside the vocabulary, is
 * left out), their Finch stage runs as one batch, each row goes onto its own branch, and the
 * rows whose row is stored run the GOLD blocks as one batch; each row is then moved to its
 * session's place in logits. */
int gfe_sessions_step(gfe_session *const *s, const int32_t *tok, int B, float *logits, int *rcs,
		      char *err)
{
	if (B < 1)
		return gf_error(err, -EINVAL, "no sessions to step");
	gfe_session *lead = s[0];
	gfe_engine *e = lead->e;
	const gf_model *m = e->model;
	const gf_config *c = &m->cfg;
	const int C = c->n_embd, Ck = c->ckv_dim, V = c->vocab_size;
	const int max = gf_workspace_max_chunk(lead->ws);
	if (B > max)
		return gf_error(err, -EINVAL, "%d sessions in one step: at most %d (the engine's chunk)",
				B, max);
	for (int i = 0; i < B; i++) {
		if (s[i]->e != e)
			return gf_error(err, -EINVAL, "sessions %d and 0 belong to different engines", i);
		for (int j = 0; j < i; j++)
			if (s[j] == s[i])
				return gf_error(err, -EINVAL, "session %d is also session %d of the step", i, j);
	}
	int *rc = rcs ? rcs : lead->b_rc;
	int n = 0;
	for (int i = 0; i < B; i++) {
		gfe_session *t = s[i];
		rc[i] = t->failed;
		if (!rc[i] && (tok[i] < 0 || tok[i] >= V))
			rc[i] = gf_error(t->err, -EINVAL, "token %d is outside the vocabulary (0..%d)",
					 tok[i], V - 1);
		if (rc[i])
			continue;
		lead->b_st[n] = &t->st;
		lead->b_tok[n] = tok[i];
		lead->b_idx[n++] = i;
	}
	int frc = n ? gf_finch_batch(m, lead->ws, lead->b_st, lead->b_tok, n, lead->x, lead->c) : 0;
	if (frc)
		for (int j = 0; j < n; j++)
			rc[lead->b_idx[j]] = gf_error(s[lead->b_idx[j]]->err, frc, "Finch stage failed");
	/* Each row onto its branch; the rows stored are moved together (k <= j). */
	int k = 0;
	for (int j = 0; j < n && !frc; j++) {
		const int i = lead->b_idx[j];
		gfe_session *t = s[i];
		gfe_c_to_storage(e->cfg.c_dtype, lead->c + (size_t)j * Ck, t->crow, (size_t)Ck);
		t->tok_u32[0] = (uint32_t)tok[i];
		int r = cs_branch_append(t->branch, t->crow, t->tok_u32, 1, t->err);
		if (r) {
			rc[i] = t->failed = r; /* its Finch state has moved on */
			continue;
		}
		const float *x = lead->x + (size_t)j * C;
		gf_state_push_tail(c, &t->st, x, 1);
		t->st.n_pos++;
		t->ps.src.n_pos = t->st.n_pos;
		t->ps.err[0] = 0;
		if (k != j)
			memmove(lead->x + (size_t)k * C, x, sizeof(float) * (size_t)C);
		lead->b_st[k] = &t->st;
		lead->b_src[k] = &t->ps.src;
		lead->b_idx[k++] = i;
	}
	if (k) {
		int *grc = lead->b_grc;
		for (int j = 0; j < k; j++)
			grc[j] = -EINVAL; /* stays so if the batch is refused */
		gf_gold_batch(m, lead->ws, lead->b_st, lead->b_src, lead->x, k, logits, grc);
		for (int j = k - 1; j >= 0; j--) {
			const int i = lead->b_idx[j];
			gfe_session *t = s[i];
			if (grc[j]) {
				rc[i] = t->failed = gf_error(t->err, grc[j], "attention over the cache: %.200s",
							     t->ps.err[0] ? t->ps.err : "failed");
				continue;
			}
			if (i != j)
				memcpy(logits + (size_t)i * V, logits + (size_t)j * V, sizeof(float) * (size_t)V);
		}
	}
	for (int i = 0; i < B; i++)
		if (rc[i])
			return gf_error(err, rc[i], "session %d of %d: %s", i, B, s[i]->err);
	return 0;
}

const char *gfe_session_error(const gfe_session *s)
{
	return s->failed ? s->err : "";
}

uint64_t gfe_session_tokens(const gfe_session *s)
{
	return (uint64_t)s->st.n_pos;
}

uint64_t gfe_session_base_tokens(const gfe_session *s)
{
	return s->base_tokens;
}

void gfe_session_free(gfe_session *s)
{
	if (!s)
		return;
	gfe_paged_free(&s->ps);
	if (s->id)
		gfe_tier_forget(&s->e->tier, s->id);
	cs_branch_free(s->branch);
	cs_reader_close(s->reader);
	gfe_workspace_give(s->e, s->ws);
	gf_state_free(&s->st);
	free(s->x);
	free(s->c);
	free(s->crow);
	free(s->tok_u32);
	free(s->b_st);
	free(s->b_src);
	free(s->b_idx);
	free(s->b_rc);
	free(s->b_grc);
	free(s->b_tok);
	free(s);
}
