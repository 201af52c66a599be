/*
 * model.c — binding named tensors to the model's weight fields, and the per-sequence state.
 *
 * f32 tensors are used where they lie (the GGUF mapping), or copied once into an arena of
 * huge pages (gf_model_load_slice's default, see goldfinch.h); bf16/f16 tensors are upcast
 * once, since OpenBLAS has only float32 GEMM here.
 */
#include "goldfinch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

/* from_tensors' own flag: copy the weights into a huge-page arena (gf_model_load_slice
 * decides, from GF_LOAD_MAPPED, the environment and the kernel). */
#define GF_LOAD_HUGE_INTERNAL 0x80000000u

/* Reads an f32 tensor's bytes from the file straight into dst, so that its pages of the
 * mapping are never touched (they would count twice in this process's memory). False where
 * that cannot be done; the caller then copies from the mapping. */
static bool read_tensor(const gf_model *m, const gf_tensor_set *ts, const gf_tensor *t, void *dst)
{
	const char *base = ts->map, *at = t->data;
	if (m->arena_fd < 0 || !base || at < base || at + t->nbytes > base + ts->map_len)
		return false;
	for (size_t done = 0; done < t->nbytes;) {
		ssize_t n = pread(m->arena_fd, (char *)dst + done, t->nbytes - done,
				  (off_t)(at - base) + (off_t)done);
		if (n <= 0)
			return false;
		done += (size_t)n;
	}
	return true;
}

/* Returns the tensor as float32, upcasting into a block the model owns if needed. */
static const float *bind(gf_model *m, const gf_tensor_set *ts, int *rc, char *err,
			 const char *fmt, ...)
{
	char name[GF_NAME_MAX];
	va_list ap;
	if (*rc)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	const gf_tensor *t = gf_tensors_find(ts, name);
	if (!t) {
		*rc = gf_error(err, -EINVAL, "tensor %s: missing", name);
		return NULL;
	}
	size_t n = t->nbytes / gf_dtype_size(t->dtype);
	if (m->arena) {
		/* 64-byte aligned, like the tensors in the file; the arena was sized for all. */
		const size_t at = (m->arena_used + 63) & ~(size_t)63;
		if (at + n * sizeof(float) > m->arena_len) {
			*rc = gf_error(err, -EOVERFLOW, "tensor %s: weight arena overrun", name);
			return NULL;
		}
		float *f = (float *)(m->arena + at);
		m->arena_used = at + n * sizeof(float);
		if (t->dtype != GF_DTYPE_F32)
			gf_convert_to_f32(t->dtype, t->data, f, n);
		else if (!read_tensor(m, ts, t, f))
			memcpy(f, t->data, n * sizeof(float));
		return f;
	}
	if (t->dtype == GF_DTYPE_F32 && ((uintptr_t)t->data % sizeof(float)) == 0)
		return t->data;
	float *f = malloc(n * sizeof(float) + 1);
	if (!f) {
		*rc = gf_error(err, -ENOMEM, "tensor %s: out of memory upcasting %zu values", name, n);
		return NULL;
	}
	gf_convert_to_f32(t->dtype, t->data, f, n);
	m->upcast[m->n_upcast++] = f;
	return f;
}

/* The key/value side of GOLD block b: what rebuilds its keys and values from the cache. */
static void bind_gold_kv(gf_model *m, const gf_tensor_set *ts, int b, int *rc, char *err)
{
	gf_layer *l = &m->layers[b];
	l->maa_v_cache = bind(m, ts, rc, err, "blocks.%d.att.time_maa_v_cache", b);
	l->maa_gk = bind(m, ts, rc, err, "blocks.%d.att.time_maa_k", b);
	l->maa_gv = bind(m, ts, rc, err, "blocks.%d.att.time_maa_v", b);
	l->maa_kv_w1 = bind(m, ts, rc, err, "blocks.%d.att.time_maa_kv_w1", b);
	l->maa_kv_w2 = bind(m, ts, rc, err, "blocks.%d.att.time_maa_kv_w2", b);
	l->key_w1 = bind(m, ts, rc, err, "blocks.%d.att.time_key_w1", b);
	l->key_w2 = bind(m, ts, rc, err, "blocks.%d.att.time_key_w2", b);
	l->value_w1 = bind(m, ts, rc, err, "blocks.%d.att.time_value_w1", b);
	l->value_w2 = bind(m, ts, rc, err, "blocks.%d.att.time_value_w2", b);
	l->ln_k_w = bind(m, ts, rc, err, "blocks.%d.att.ln_k.weight", b);
	l->ln_k_b = bind(m, ts, rc, err, "blocks.%d.att.ln_k.bias", b);
	l->ln_v_w = bind(m, ts, rc, err, "blocks.%d.att.ln_v.weight", b);
	l->ln_v_b = bind(m, ts, rc, err, "blocks.%d.att.ln_v.bias", b);
}

static void bind_channel_mix(gf_model *m, const gf_tensor_set *ts, int b, int *rc, char *err)
{
	gf_layer *l = &m->layers[b];
	l->ln2_w = bind(m, ts, rc, err, "blocks.%d.ln2.weight", b);
	l->ln2_b = bind(m, ts, rc, err, "blocks.%d.ln2.bias", b);
	l->ffn_maa_k = bind(m, ts, rc, err, "blocks.%d.ffn.time_maa_k", b);
	l->ffn_maa_r = bind(m, ts, rc, err, "blocks.%d.ffn.time_maa_r", b);
	l->ffn_key = bind(m, ts, rc, err, "blocks.%d.ffn.key.weight", b);
	l->ffn_receptance = bind(m, ts, rc, err, "blocks.%d.ffn.receptance.weight", b);
	l->ffn_value = bind(m, ts, rc, err, "blocks.%d.ffn.value.weight", b);
}

/* Reserves room for every tensor of the set as float32 (only the pages written are ever
 * backed), aligned to 2 MiB and marked for huge pages. No arena (not an error) where the
 * reservation or the advice is refused: the weights then stay in the mapping. */
static void arena_init(gf_model *m, const gf_tensor_set *ts)
{
	const size_t huge = (size_t)2 << 20;
	size_t need = 0;
	for (int i = 0; i < ts->n_tensors; i++)
		need += ts->tensors[i].nbytes / gf_dtype_size(ts->tensors[i].dtype) * sizeof(float) + 64;
	need = (need + huge - 1) & ~(huge - 1);
	void *map = mmap(NULL, need + huge, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED)
		return;
	char *start = (char *)(((uintptr_t)map + huge - 1) & ~(uintptr_t)(huge - 1));
	if (madvise(start, need, MADV_HUGEPAGE)) {
		munmap(map, need + huge);
		return;
	}
	m->arena_map = map;
	m->arena_map_len = need + huge;
	m->arena = start;
	m->arena_len = need;
}

/* Huge pages are used unless the caller, the environment or the kernel says no. */
static bool want_huge_pages(unsigned flags)
{
	if (flags & GF_LOAD_MAPPED)
		return false;
	const char *env = getenv("GOLDFINCH_HUGE_PAGES");
	if (env && !strcmp(env, "0"))
		return false;
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	char mode[128] = "";
	if (!f)
		return false;
	const bool ok = fgets(mode, sizeof(mode), f) && !strstr(mode, "[never]");
	fclose(f);
	return ok;
}

/* What a Finch time mix reads before its recurrence: ln1, the token-shift mixes, and the
 * receptance, key, value, value2 and decay products. */
static void bind_finch_att_in(gf_model *m, const gf_tensor_set *ts, int b, int *rc, char *err)
{
	gf_layer *l = &m->layers[b];
	l->ln1_w = bind(m, ts, rc, err, "blocks.%d.ln1.weight", b);
	l->ln1_b = bind(m, ts, rc, err, "blocks.%d.ln1.bias", b);
	l->maa_x = bind(m, ts, rc, err, "blocks.%d.att.time_maa_x", b);
	l->maa_r = bind(m, ts, rc, err, "blocks.%d.att.time_maa_r", b);
	l->maa_k = bind(m, ts, rc, err, "blocks.%d.att.time_maa_k", b);
	l->maa_v = bind(m, ts, rc, err, "blocks.%d.att.time_maa_v", b);
	l->maa_w = bind(m, ts, rc, err, "blocks.%d.att.time_maa_w", b);
	l->maa_v2 = bind(m, ts, rc, err, "blocks.%d.att.time_maa_v2", b);
	l->maa_w1 = bind(m, ts, rc, err, "blocks.%d.att.time_maa_w1", b);
	l->maa_w2 = bind(m, ts, rc, err, "blocks.%d.att.time_maa_w2", b);
	l->time_decay = bind(m, ts, rc, err, "blocks.%d.att.time_decay", b);
	l->decay_w1 = bind(m, ts, rc, err, "blocks.%d.att.time_decay_w1", b);
	l->decay_w2 = bind(m, ts, rc, err, "blocks.%d.att.time_decay_w2", b);
	l->value2_w1 = bind(m, ts, rc, err, "blocks.%d.att.time_value2_w1", b);
	l->value2_w2 = bind(m, ts, rc, err, "blocks.%d.att.time_value2_w2", b);
	l->att_receptance = bind(m, ts, rc, err, "blocks.%d.att.receptance.weight", b);
	l->att_key = bind(m, ts, rc, err, "blocks.%d.att.key.weight", b);
	l->att_value = bind(m, ts, rc, err, "blocks.%d.att.value.weight", b);
}

/* Binds what blocks [b0, b1) need: their layers; the embedding and ln0 for block 0 and for
 * GOLD blocks (their keys are rebuilt from ln0(emb[tok])); w_kv_cache_a for block G-1;
 * w_kv_cache_b for GOLD blocks; ln_out and the head for the last block. GF_LOAD_GOLD_KV adds
 * the key/value side of every GOLD block, GF_LOAD_PREV_FFN and GF_LOAD_NEXT_ATT the parts of
 * the blocks either side of the slice that a pipeline boundary shares. */
static int from_tensors(gf_model **out, const gf_config *cfg, const gf_tensor_set *ts, int b0,
			int b1, unsigned flags, int fd, char *err)
{
	if (b0 < 0 || b1 > cfg->n_layer || b0 >= b1)
		return gf_error(err, -EINVAL, "blocks %d..%d: the model has blocks 0..%d", b0, b1 - 1,
				cfg->n_layer - 1);
	gf_model *m = calloc(1, sizeof(*m));
	int rc = 0;
	if (!m)
		return gf_error(err, -ENOMEM, "out of memory");
	m->cfg = *cfg;
	m->block_first = b0;
	m->block_end = b1;
	const int G = cfg->first_gold;
	const bool gold_kv = b1 > G || (flags & GF_LOAD_GOLD_KV);
	m->layers = calloc((size_t)cfg->n_layer, sizeof(gf_layer));
	m->upcast = calloc((size_t)ts->n_tensors + 1, sizeof(float *));
	if (!m->layers || !m->upcast) {
		rc = gf_error(err, -ENOMEM, "out of memory");
		goto free_model;
	}
	m->arena_fd = fd;
	if (flags & GF_LOAD_HUGE_INTERNAL)
		arena_init(m, ts);
	if (b0 == 0 || gold_kv) {
		m->emb = bind(m, ts, &rc, err, "emb.weight");
		m->ln0_w = bind(m, ts, &rc, err, "blocks.0.ln0.weight");
		m->ln0_b = bind(m, ts, &rc, err, "blocks.0.ln0.bias");
	}
	if (b1 == cfg->n_layer) {
		m->ln_out_w = bind(m, ts, &rc, err, "ln_out.weight");
		m->ln_out_b = bind(m, ts, &rc, err, "ln_out.bias");
		m->head = bind(m, ts, &rc, err, "head.weight");
	}
	if (b0 < G && G <= b1)
		m->w_kv_cache_a = bind(m, ts, &rc, err, "w_kv_cache_a.weight");
	if (gold_kv)
		m->w_kv_cache_b = bind(m, ts, &rc, err, "w_kv_cache_b.weight");
	for (int b = 0; b < cfg->n_layer; b++)
		m->layers[b].is_gold = b >= G;
	for (int b = b0; b < b1 && !rc; b++) {
		gf_layer *l = &m->layers[b];
		if (!l->is_gold) {
			bind_finch_att_in(m, ts, b, &rc, err);
		} else {
			l->ln1_w = bind(m, ts, &rc, err, "blocks.%d.ln1.weight", b);
			l->ln1_b = bind(m, ts, &rc, err, "blocks.%d.ln1.bias", b);
			l->maa_x = bind(m, ts, &rc, err, "blocks.%d.att.time_maa_x", b);
			l->maa_q = bind(m, ts, &rc, err, "blocks.%d.att.time_maa_q", b);
			l->maa_q_w1 = bind(m, ts, &rc, err, "blocks.%d.att.time_maa_q_w1", b);
			l->maa_q_w2 = bind(m, ts, &rc, err, "blocks.%d.att.time_maa_q_w2", b);
			l->att_query = bind(m, ts, &rc, err, "blocks.%d.att.query.weight", b);
			l->ln_q_w = bind(m, ts, &rc, err, "blocks.%d.att.ln_q.weight", b);
			l->ln_q_b = bind(m, ts, &rc, err, "blocks.%d.att.ln_q.bias", b);
			bind_gold_kv(m, ts, b, &rc, err);
		}
		l->att_output = bind(m, ts, &rc, err, "blocks.%d.att.output.weight", b);
		l->ln_x_w = bind(m, ts, &rc, err, "blocks.%d.att.ln_x.weight", b);
		l->ln_x_b = bind(m, ts, &rc, err, "blocks.%d.att.ln_x.bias", b);
		bind_channel_mix(m, ts, b, &rc, err);
	}
	if ((flags & GF_LOAD_PREV_FFN) && b0 > 0 && !rc)
		bind_channel_mix(m, ts, b0 - 1, &rc, err);
	if ((flags & GF_LOAD_NEXT_ATT) && b1 < G && !rc)
		bind_finch_att_in(m, ts, b1, &rc, err);
	for (int b = G; b < cfg->n_layer && !rc && (flags & GF_LOAD_GOLD_KV); b++)
		if (b < b0 || b >= b1)
			bind_gold_kv(m, ts, b, &rc, err);
	if (rc)
		goto free_model;
	*out = m;
	return 0;
free_model:
	gf_model_free(m);
	return rc;
}

int gf_model_from_tensors(gf_model **out, const gf_config *cfg, const gf_tensor_set *ts, char *err)
{
	return from_tensors(out, cfg, ts, 0, cfg->n_layer, 0, -1, err);
}

int gf_model_load(gf_model **out, const char *gguf_path, char *err)
{
	return gf_model_load_blocks(out, gguf_path, 0, -1, err);
}

int gf_model_load_blocks(gf_model **out, const char *gguf_path, int b0, int b1, char *err)
{
	return gf_model_load_slice(out, gguf_path, b0, b1, 0, err);
}

int gf_model_load_slice(gf_model **out, const char *gguf_path, int b0, int b1, unsigned flags,
			char *err)
{
	gf_gguf g;
	gf_config inferred;
	char why[GF_ERR_LEN];
	int rc = gf_gguf_read(&g, gguf_path, err);
	if (rc)
		return rc;
	/* The metadata says what the model is; the tensors must agree with it exactly. */
	rc = gf_config_infer(&inferred, &g.tensors, why);
	if (rc) {
		gf_error(err, rc, "%s: %s", gguf_path, why);
		goto free_gguf;
	}
	if (inferred.n_layer != g.config.n_layer || inferred.n_embd != g.config.n_embd ||
	    inferred.first_gold != g.config.first_gold || inferred.head_size != g.config.head_size ||
	    inferred.vocab_size != g.config.vocab_size || inferred.dim_ffn != g.config.dim_ffn) {
		rc = gf_error(err, -EINVAL, "%s: goldfinch.* metadata disagrees with the tensors", gguf_path);
		goto free_gguf;
	}
	inferred.rope_base = g.config.rope_base;
	inferred.rope_rebase = g.config.rope_rebase > 0 ? g.config.rope_rebase : 1.0f;
	inferred.rope_rescale = g.config.rope_rescale > 0 ? g.config.rope_rescale : 1.0f;
	inferred.model_id = g.config.model_id;
	gf_model *m;
	int fd = -1;
	if (want_huge_pages(flags)) {
		flags |= GF_LOAD_HUGE_INTERNAL;
		fd = open(gguf_path, O_RDONLY | O_CLOEXEC);
	}
	rc = from_tensors(&m, &inferred, &g.tensors, b0, b1 < 0 ? inferred.n_layer : b1, flags, fd,
			  why);
	if (fd >= 0)
		close(fd);
	if (!rc)
		m->arena_fd = -1;
	if (rc) {
		gf_error(err, rc, "%s: %s", gguf_path, why);
		goto free_gguf;
	}
	m->gguf = g; /* the model now owns the mapping its f32 weights point into, if not copied */
	*out = m;
	return 0;
free_gguf:
	gf_gguf_free(&g);
	return rc;
}

void gf_model_free(gf_model *m)
{
	if (!m)
		return;
	if (m->upcast)
		for (int i = 0; i < m->n_upcast; i++)
			free(m->upcast[i]);
	free(m->upcast);
	if (m->arena_map)
		munmap(m->arena_map, m->arena_map_len);
	free(m->layers);
	gf_gguf_free(&m->gguf);
	free(m);
}

uint64_t gf_model_decode_bytes(const gf_model *m)
{
	const gf_config *c = &m->cfg;
	const uint64_t C = (uint64_t)c->n_embd, A = (uint64_t)c->dim_att, F = (uint64_t)c->dim_ffn;
	const uint64_t V = (uint64_t)c->vocab_size, Ck = (uint64_t)c->ckv_dim;
	uint64_t floats = C /* one embedding row */ + V * C /* head */ + Ck * C + A * (C + Ck);
	for (int b = 0; b < c->n_layer; b++) {
		floats += C * F * 2 + C * C;                       /* channel mix */
		if (b < c->first_gold) {
			floats += 3 * A * C + C * A;                 /* r, k, v, output */
			floats += C * 5 * c->lora_maa * 2;           /* maa_w1, maa_w2 */
			floats += (C + A) * (c->lora_decay + c->lora_value2);
		} else {
			floats += A * C + C * A;                     /* query, output */
			floats += 2 * C * c->lora_maa_q;
			/* key/value rebuild of the new position */
			floats += C * 2 * c->lora_maa_kv * 2 + 2 * A * c->lora_key +
				  (C + A) * c->lora_value;
		}
	}
	return floats * sizeof(float);
}

size_t gf_state_floats(const gf_config *cfg)
{
	return (size_t)cfg->n_layer * 2 * cfg->n_embd +
	       (size_t)cfg->first_gold * cfg->n_head * cfg->head_size * cfg->head_size;
}

int gf_state_init(gf_state *st, const gf_config *cfg)
{
	memset(st, 0, sizeof(*st));
	st->shift = calloc(gf_state_floats(cfg), sizeof(float));
	if (!st->shift)
		return -ENOMEM;
	st->wkv = st->shift + (size_t)cfg->n_layer * 2 * cfg->n_embd;
	st->tail = calloc((size_t)gf_config_tail_window(cfg) * cfg->n_embd, sizeof(float));
	if (!st->tail) {
		free(st->shift);
		st->shift = st->wkv = NULL;
		return -ENOMEM;
	}
	return 0;
}

void gf_state_reset(gf_state *st, const gf_config *cfg)
{
	memset(st->shift, 0, gf_state_floats(cfg) * sizeof(float));
	st->n_tail = 0;
	st->n_pos = 0;
}

int gf_state_copy(gf_state *dst, const gf_state *src, const gf_config *cfg)
{
	memcpy(dst->shift, src->shift, gf_state_floats(cfg) * sizeof(float));
	memcpy(dst->tail, src->tail, (size_t)src->n_tail * cfg->n_embd * sizeof(float));
	dst->n_tail = src->n_tail;
	dst->n_pos = src->n_pos;
	return 0;
}

void gf_state_free(gf_state *st)
{
	if (!st)
		return;
	free(st->shift);
	free(st->tail);
	st->shift = st->wkv = st->tail = NULL;
}

int gf_kv_init(gf_kv *kv, const gf_config *cfg, int64_t initial_cap)
{
	memset(kv, 0, sizeof(*kv));
	kv->n_gold = cfg->n_layer - cfg->first_gold;
	kv->dim = cfg->dim_att;
	(void)initial_cap; /* storage grows on the first append */
	return 0;
}

void gf_kv_reset(gf_kv *kv)
{
	kv->n_pos = 0;
}

void gf_kv_free(gf_kv *kv)
{
	if (!kv)
		return;
	free(kv->c);
	free(kv->tok);
	free(kv->k);
	free(kv->v);
	memset(kv, 0, sizeof(*kv));
}
