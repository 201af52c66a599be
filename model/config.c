/*
 * config.c — the model's shape: inferred from tensor names and shapes, never assumed.
 *
 * One table (gf_config_tensor_specs) lists every tensor a config implies, with its shape and
 * how --random initialises it; inference, validation and random models all read that table,
 * so the three can never disagree about what a GoldFinch checkpoint holds.
 */
#include "goldfinch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gf_config_tail_window(const gf_config *cfg)
{
	return 2 * (cfg->n_layer - cfg->first_gold) + 1;
}

int gf_config_default(gf_config *cfg, int n_layer, int n_embd, int vocab, int ratio, char *err)
{
	if (n_layer < 2 || n_layer > 1024)
		return gf_error(err, -EINVAL, "layers %d: must be 2..1024", n_layer);
	if (n_embd < 16 || n_embd % 16 || n_embd > 65536)
		return gf_error(err, -EINVAL, "embd %d: must be a multiple of 16 in 16..65536", n_embd);
	if (vocab < 2 || vocab > (1 << 24))
		return gf_error(err, -EINVAL, "vocab %d: must be 2..16777216", vocab);
	if (ratio < 2 || ratio > 64)
		return gf_error(err, -EINVAL, "ratio %d: must be 2..64", ratio);
	int head = n_embd < 64 ? n_embd : 64;
	if (n_embd % head)
		return gf_error(err, -EINVAL, "embd %d: must be a multiple of the head size 64", n_embd);
	int gold_first = (int)((long)n_layer * (ratio - 1) / ratio);
	if (gold_first < 1 || gold_first >= n_layer)
		return gf_error(err, -EINVAL, "layers %d with ratio %d leave no Finch or no GOLD block",
			    n_layer, ratio);
	memset(cfg, 0, sizeof(*cfg));
	cfg->n_layer = n_layer;
	cfg->n_embd = n_embd;
	cfg->dim_att = n_embd;
	cfg->dim_ffn = (int)(3.5 * n_embd / 32) * 32;
	if (cfg->dim_ffn < 32)
		cfg->dim_ffn = 32;
	cfg->head_size = head;
	cfg->n_head = n_embd / head;
	cfg->vocab_size = vocab;
	cfg->first_gold = gold_first;
	cfg->ckv_dim = n_embd / 16;
	/* The official RWKV-6 ranks: mix 32 and decay 64, doubled from 4096 wide up. */
	int wide = n_embd >= 4096;
	cfg->lora_maa = wide ? 64 : 32;
	cfg->lora_decay = wide ? 128 : 64;
	cfg->lora_value2 = wide ? 128 : 64;
	cfg->lora_maa_q = wide ? 64 : 32;
	cfg->lora_maa_kv = wide ? 64 : 32;
	cfg->lora_key = wide ? 128 : 64;
	cfg->lora_value = wide ? 128 : 64;
	cfg->rope_rebase = 1.0f;
	cfg->rope_rescale = 1.0f;
	return 0;
}

/* Spec list builder: grows an array, formats names. */
struct spec_list {
	gf_tensor_spec *v;
	int n, cap;
	int oom;
};

static void add(struct spec_list *l, gf_init init, int n_dims, int64_t d0, int64_t d1, int64_t d2,
		const char *fmt, ...)
{
	if (l->oom)
		return;
	if (l->n == l->cap) {
		int cap = l->cap ? 2 * l->cap : 64;
		gf_tensor_spec *v = realloc(l->v, (size_t)cap * sizeof(*v));
		if (!v) {
			l->oom = 1;
			return;
		}
		l->v = v;
		l->cap = cap;
	}
	gf_tensor_spec *s = &l->v[l->n++];
	memset(s, 0, sizeof(*s));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->name, sizeof(s->name), fmt, ap);
	va_end(ap);
	s->n_dims = n_dims;
	s->shape[0] = d0;
	s->shape[1] = d1;
	s->shape[2] = d2;
	s->init = init;
}

#define V1(l, init, d0, ...) add(l, init, 1, d0, 0, 0, __VA_ARGS__)
#define V2(l, init, d0, d1, ...) add(l, init, 2, d0, d1, 0, __VA_ARGS__)
#define V3(l, init, d0, d1, d2, ...) add(l, init, 3, d0, d1, d2, __VA_ARGS__)

int gf_config_tensor_specs(const gf_config *cfg, gf_tensor_spec **specs, int *n_specs)
{
	struct spec_list l = { 0 };
	const int64_t C = cfg->n_embd, A = cfg->dim_att, F = cfg->dim_ffn, V = cfg->vocab_size;
	const int64_t H = cfg->n_head, N = cfg->head_size, Ck = cfg->ckv_dim;

	V2(&l, GF_INIT_EMB, V, C, "emb.weight");
	for (int b = 0; b < cfg->n_layer; b++) {
		V1(&l, GF_INIT_LN_W, C, "blocks.%d.ln1.weight", b);
		V1(&l, GF_INIT_LN_B, C, "blocks.%d.ln1.bias", b);
		V1(&l, GF_INIT_LN_W, C, "blocks.%d.ln2.weight", b);
		V1(&l, GF_INIT_LN_B, C, "blocks.%d.ln2.bias", b);
		if (b == 0) {
			V1(&l, GF_INIT_LN_W, C, "blocks.0.ln0.weight");
			V1(&l, GF_INIT_LN_B, C, "blocks.0.ln0.bias");
		}
		if (b < cfg->first_gold) {
			static const char *const maa[] = { "x", "r", "k", "v", "w", "v2" };
			for (int i = 0; i < 6; i++)
				V3(&l, GF_INIT_MAA, 1, 1, C, "blocks.%d.att.time_maa_%s", b, maa[i]);
			V3(&l, GF_INIT_LORA_W2, 5, cfg->lora_maa, C, "blocks.%d.att.time_maa_w2", b);
			V2(&l, GF_INIT_LORA_W1, C, 5 * cfg->lora_maa, "blocks.%d.att.time_maa_w1", b);
			V3(&l, GF_INIT_DECAY, 1, 1, A, "blocks.%d.att.time_decay", b);
			V2(&l, GF_INIT_LORA_W1, C, cfg->lora_decay, "blocks.%d.att.time_decay_w1", b);
			V2(&l, GF_INIT_LORA_W2, cfg->lora_decay, A, "blocks.%d.att.time_decay_w2", b);
			V2(&l, GF_INIT_LORA_W1, C, cfg->lora_value2, "blocks.%d.att.time_value2_w1", b);
			V2(&l, GF_INIT_LORA_W2, cfg->lora_value2, A, "blocks.%d.att.time_value2_w2", b);
			V2(&l, GF_INIT_FAAAA, H, N, "blocks.%d.att.time_faaaa", b);
			V2(&l, GF_INIT_LINEAR, A, C, "blocks.%d.att.receptance.weight", b);
			V2(&l, GF_INIT_LINEAR, A, C, "blocks.%d.att.key.weight", b);
			V2(&l, GF_INIT_LINEAR, A, C, "blocks.%d.att.value.weight", b);
			V2(&l, GF_INIT_LINEAR, C, A, "blocks.%d.att.output.weight", b);
		} else {
			static const char *const maa[] = { "x", "q", "v_cache", "k", "v" };
			for (int i = 0; i < 5; i++)
				V3(&l, GF_INIT_MAA, 1, 1, C, "blocks.%d.att.time_maa_%s", b, maa[i]);
			V2(&l, GF_INIT_LORA_W1, C, cfg->lora_maa_q, "blocks.%d.att.time_maa_q_w1", b);
			V2(&l, GF_INIT_LORA_W2, cfg->lora_maa_q, C, "blocks.%d.att.time_maa_q_w2", b);
			V2(&l, GF_INIT_LORA_W1, C, 2 * cfg->lora_maa_kv, "blocks.%d.att.time_maa_kv_w1", b);
			V3(&l, GF_INIT_LORA_W2, 2, cfg->lora_maa_kv, C, "blocks.%d.att.time_maa_kv_w2", b);
			V2(&l, GF_INIT_LORA_W1, A, cfg->lora_key, "blocks.%d.att.time_key_w1", b);
			V2(&l, GF_INIT_LORA_W2, cfg->lora_key, A, "blocks.%d.att.time_key_w2", b);
			V2(&l, GF_INIT_LORA_W1, C, cfg->lora_value, "blocks.%d.att.time_value_w1", b);
			V2(&l, GF_INIT_LORA_W2, cfg->lora_value, A, "blocks.%d.att.time_value_w2", b);
			V2(&l, GF_INIT_LINEAR, A, C, "blocks.%d.att.query.weight", b);
			V2(&l, GF_INIT_LINEAR, C, A, "blocks.%d.att.output.weight", b);
			V1(&l, GF_INIT_LN_W, A, "blocks.%d.att.ln_q.weight", b);
			V1(&l, GF_INIT_LN_B, A, "blocks.%d.att.ln_q.bias", b);
			V1(&l, GF_INIT_LN_W, A, "blocks.%d.att.ln_k.weight", b);
			V1(&l, GF_INIT_LN_B, A, "blocks.%d.att.ln_k.bias", b);
			V1(&l, GF_INIT_LN_W, A, "blocks.%d.att.ln_v.weight", b);
			V1(&l, GF_INIT_LN_B, A, "blocks.%d.att.ln_v.bias", b);
		}
		V1(&l, GF_INIT_LN_W, A, "blocks.%d.att.ln_x.weight", b);
		V1(&l, GF_INIT_LN_B, A, "blocks.%d.att.ln_x.bias", b);
		V3(&l, GF_INIT_MAA, 1, 1, C, "blocks.%d.ffn.time_maa_k", b);
		V3(&l, GF_INIT_MAA, 1, 1, C, "blocks.%d.ffn.time_maa_r", b);
		V2(&l, GF_INIT_LINEAR, F, C, "blocks.%d.ffn.key.weight", b);
		V2(&l, GF_INIT_LINEAR, C, C, "blocks.%d.ffn.receptance.weight", b);
		V2(&l, GF_INIT_LINEAR, C, F, "blocks.%d.ffn.value.weight", b);
	}
	V1(&l, GF_INIT_LN_W, C, "ln_out.weight");
	V1(&l, GF_INIT_LN_B, C, "ln_out.bias");
	V2(&l, GF_INIT_LINEAR, V, C, "head.weight");
	V2(&l, GF_INIT_LINEAR, Ck, C, "w_kv_cache_a.weight");
	V2(&l, GF_INIT_LINEAR, A, C + Ck, "w_kv_cache_b.weight");
	if (l.oom) {
		free(l.v);
		return -ENOMEM;
	}
	*specs = l.v;
	*n_specs = l.n;
	return 0;
}

/* Reads dimension `dim` of a required tensor, or fails naming it. */
static int dim_of(const gf_tensor_set *ts, const char *name, int want_dims, int dim, int64_t *out,
		  char *err)
{
	const gf_tensor *t = gf_tensors_find(ts, name);
	if (!t)
		return gf_error(err, -EINVAL, "tensor %s: missing", name);
	if (t->n_dims != want_dims)
		return gf_error(err, -EINVAL, "tensor %s: %d dimensions, expected %d", name, t->n_dims,
			    want_dims);
	*out = t->shape[dim];
	if (*out <= 0 || *out > (1 << 24))
		return gf_error(err, -EINVAL, "tensor %s: dimension %d is %lld", name, dim,
			    (long long)*out);
	return 0;
}

static void shape_str(char *buf, size_t len, int n_dims, const int64_t *shape)
{
	size_t at = (size_t)snprintf(buf, len, "[");
	for (int i = 0; i < n_dims && at < len; i++)
		at += (size_t)snprintf(buf + at, len - at, i ? ",%lld" : "%lld", (long long)shape[i]);
	if (at < len)
		snprintf(buf + at, len - at, "]");
}

/* Every spec present with its exact shape and a float dtype; nothing else present. */
static int check_against_specs(const gf_config *cfg, const gf_tensor_set *ts, char *err)
{
	gf_tensor_spec *specs;
	int n_specs, rc = gf_config_tensor_specs(cfg, &specs, &n_specs);
	if (rc)
		return gf_error(err, rc, "out of memory listing tensors");
	for (int i = 0; i < n_specs && !rc; i++) {
		const gf_tensor_spec *s = &specs[i];
		const gf_tensor *t = gf_tensors_find(ts, s->name);
		if (!t) {
			rc = gf_error(err, -EINVAL, "tensor %s: missing", s->name);
			break;
		}
		if (gf_dtype_size(t->dtype) == 0) {
			rc = gf_error(err, -EINVAL, "tensor %s: unsupported dtype %d", s->name, (int)t->dtype);
			break;
		}
		int same = t->n_dims == s->n_dims;
		for (int d = 0; same && d < s->n_dims; d++)
			same = t->shape[d] == s->shape[d];
		if (!same) {
			char got[80], want[80];
			shape_str(got, sizeof(got), t->n_dims, t->shape);
			shape_str(want, sizeof(want), s->n_dims, s->shape);
			rc = gf_error(err, -EINVAL, "tensor %s: shape %s, expected %s", s->name, got, want);
		}
	}
	/* Counting after the lookups above proves there is no tensor beyond the specs, except
	 * a duplicate name, which the readers reject. */
	if (!rc && ts->n_tensors != n_specs) {
		for (int i = 0; i < ts->n_tensors; i++) {
			int known = 0;
			for (int j = 0; j < n_specs && !known; j++)
				known = strcmp(ts->tensors[i].name, specs[j].name) == 0;
			if (!known) {
				rc = gf_error(err, -EINVAL, "tensor %s: not part of a GoldFinch model",
					  ts->tensors[i].name);
				break;
			}
		}
		if (!rc)
			rc = gf_error(err, -EINVAL, "%d tensors, expected %d", ts->n_tensors, n_specs);
	}
	free(specs);
	return rc;
}

int gf_config_infer(gf_config *cfg, const gf_tensor_set *ts, char *err)
{
	gf_config c;
	int64_t v = 0;
	int rc;
	memset(&c, 0, sizeof(c));
	c.rope_rebase = 1.0f;
	c.rope_rescale = 1.0f;

	if ((rc = dim_of(ts, "emb.weight", 2, 0, &v, err)))
		return rc;
	c.vocab_size = (int32_t)v;
	if ((rc = dim_of(ts, "emb.weight", 2, 1, &v, err)))
		return rc;
	c.n_embd = (int32_t)v;

	/* Blocks are numbered densely from 0; the first with a query is the first GOLD block. */
	char name[GF_NAME_MAX];
	c.first_gold = -1;
	for (int b = 0;; b++) {
		snprintf(name, sizeof(name), "blocks.%d.ln1.weight", b);
		if (!gf_tensors_find(ts, name))
			break;
		c.n_layer = b + 1;
		snprintf(name, sizeof(name), "blocks.%d.att.query.weight", b);
		if (c.first_gold < 0 && gf_tensors_find(ts, name))
			c.first_gold = b;
		if (b > 4096)
			return gf_error(err, -EINVAL, "more than 4096 blocks");
	}
	if (c.n_layer == 0)
		return gf_error(err, -EINVAL, "tensor blocks.0.ln1.weight: missing");
	if (c.first_gold <= 0)
		return gf_error(err, -EINVAL, "%s", c.first_gold == 0 ?
			    "block 0 is a GOLD block: a GoldFinch model starts with Finch blocks" :
			    "no GOLD block (no blocks.N.att.query.weight)");
	const int G = c.first_gold;
	const int L = c.n_layer;

	if ((rc = dim_of(ts, "blocks.0.att.receptance.weight", 2, 0, &v, err)))
		return rc;
	c.dim_att = (int32_t)v;
	if (c.dim_att != c.n_embd)
		return gf_error(err, -EINVAL, "tensor blocks.0.att.receptance.weight: dim_att %d != n_embd %d (GOLD needs them equal)",
			    c.dim_att, c.n_embd);
	if ((rc = dim_of(ts, "blocks.0.ffn.key.weight", 2, 0, &v, err)))
		return rc;
	c.dim_ffn = (int32_t)v;
	if ((rc = dim_of(ts, "blocks.0.att.time_faaaa", 2, 1, &v, err)))
		return rc;
	c.head_size = (int32_t)v;
	if (c.dim_att % c.head_size)
		return gf_error(err, -EINVAL, "tensor blocks.0.att.time_faaaa: head size %d does not divide dim_att %d",
			    c.head_size, c.dim_att);
	c.n_head = c.dim_att / c.head_size;
	if ((rc = dim_of(ts, "w_kv_cache_a.weight", 2, 0, &v, err)))
		return rc;
	c.ckv_dim = (int32_t)v;

	struct {
		const char *fmt;
		int block, dims, dim, div;
		int32_t *out;
	} ranks[] = {
		{ "blocks.%d.att.time_maa_w1", 0, 2, 1, 5, &c.lora_maa },
		{ "blocks.%d.att.time_decay_w1", 0, 2, 1, 1, &c.lora_decay },
		{ "blocks.%d.att.time_value2_w1", 0, 2, 1, 1, &c.lora_value2 },
		{ "blocks.%d.att.time_maa_q_w1", G, 2, 1, 1, &c.lora_maa_q },
		{ "blocks.%d.att.time_maa_kv_w1", G, 2, 1, 2, &c.lora_maa_kv },
		{ "blocks.%d.att.time_key_w1", G, 2, 1, 1, &c.lora_key },
		{ "blocks.%d.att.time_value_w1", G, 2, 1, 1, &c.lora_value },
	};
	for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++) {
		snprintf(name, sizeof(name), ranks[i].fmt, ranks[i].block);
		if ((rc = dim_of(ts, name, ranks[i].dims, ranks[i].dim, &v, err)))
			return rc;
		if (v % ranks[i].div)
			return gf_error(err, -EINVAL, "tensor %s: dimension %lld not a multiple of %d", name,
				    (long long)v, ranks[i].div);
		*ranks[i].out = (int32_t)(v / ranks[i].div);
	}
	(void)L;
	if ((rc = check_against_specs(&c, ts, err)))
		return rc;
	*cfg = c;
	return 0;
}
