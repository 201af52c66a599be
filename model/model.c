/*
 * model.c — binding named tensors to the model's weight fields, and the per-sequence state.
 *
 * Matrices are packed once into panels (model/gemm.h) in the file's element type, or in bf16
 * for bf16 compute; vectors are upcast to float32. Both go into an arena of huge pages
 * (gf_model_load_slice's default, see goldfinch.h) or into heap blocks the model owns. From a
 * GGUF file the tensors are read with pread, a few panels at a time, so that the file
 * mapping's pages are never touched and never count in this process's memory.
 */
#include "goldfinch.h"
#include "dnnl.h"
#include "gemm.h"

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

/* Source rows read per pread while packing a matrix (a few MB at most). */
#define PACK_ROWS (16 * GF_PANEL)

/* Weight memory of `bytes`, 64-byte aligned: from the arena, or a heap block the model owns. */
static void *weight_alloc(gf_model *m, size_t bytes, int *rc, char *err, const char *name)
{
	m->weight_bytes += bytes;
	if (m->arena) {
		const size_t at = (m->arena_used + 63) & ~(size_t)63;
		if (at + bytes > m->arena_len) {
			*rc = gf_error(err, -EOVERFLOW, "tensor %s: weight arena overrun", name);
			return NULL;
		}
		m->arena_used = at + bytes;
		return m->arena + at;
	}
	if (m->n_owned == m->cap_owned) {
		const int cap = m->cap_owned ? 2 * m->cap_owned : 256;
		void **grown = realloc(m->owned, sizeof(void *) * (size_t)cap);
		if (!grown) {
			*rc = gf_error(err, -ENOMEM, "tensor %s: out of memory", name);
			return NULL;
		}
		m->owned = grown;
		m->cap_owned = cap;
	}
	void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!p) {
		*rc = gf_error(err, -ENOMEM, "tensor %s: out of memory for %zu bytes", name, bytes);
		return NULL;
	}
	m->owned[m->n_owned++] = p;
	return p;
}

/* Reads nbytes of the tensor's data from byte offset `off` of it into dst, from the file
 * when the model has it open (see the file comment), else from the data in memory. */
static int read_tensor(const gf_model *m, const gf_tensor_set *ts, const gf_tensor *t, size_t off,
		       size_t nbytes, void *dst)
{
	const char *base = ts->map, *at = (const char *)t->data + off;
	if (m->arena_fd < 0 || !base || at < base || at + nbytes > base + ts->map_len) {
		memcpy(dst, at, nbytes);
		return 0;
	}
	for (size_t done = 0; done < nbytes;) {
		ssize_t n = pread(m->arena_fd, (char *)dst + done, nbytes - done,
				  (off_t)(at - base) + (off_t)done);
		if (n <= 0)
			return -EIO;
		done += (size_t)n;
	}
	return 0;
}

static const gf_tensor *find(const gf_tensor_set *ts, int *rc, char *err, const char *name)
{
	const gf_tensor *t = gf_tensors_find(ts, name);
	if (!t)
		*rc = gf_error(err, -EINVAL, "tensor %s: missing", name);
	return t;
}

/* Returns the tensor as float32, in memory the model owns. */
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
	const gf_tensor *t = find(ts, rc, err, name);
	if (!t)
		return NULL;
	const size_t n = t->nbytes / gf_dtype_size(t->dtype);
	float *f = weight_alloc(m, n * sizeof(float) + 4, rc, err, name);
	if (!f)
		return NULL;
	if (t->dtype == GF_DTYPE_F32) {
		if (read_tensor(m, ts, t, 0, t->nbytes, f)) {
			*rc = gf_error(err, -EIO, "tensor %s: read failed", name);
			return NULL;
		}
	} else {
		gf_convert_to_f32(t->dtype, t->data, f, n);
	}
	return f;
}

/* Packs a matrix (model/gemm.h): an nn.Linear weight [out][in] when nk, else a LoRA matrix
 * [in][out]; slice j of n_slices when the tensor stacks several ([n_slices][in][out]). */
static void bind_mat_slice(gf_model *m, const gf_tensor_set *ts, int *rc, char *err, gf_mat *out,
			   bool nk, int j, int n_slices, const char *fmt, ...)
{
	char name[GF_NAME_MAX];
	va_list ap;
	if (*rc)
		return;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	const gf_tensor *t = find(ts, rc, err, name);
	if (!t)
		return;
	const int d = t->n_dims;
	if (d != (n_slices > 1 ? 3 : 2) || (n_slices > 1 && t->shape[0] != n_slices)) {
		*rc = gf_error(err, -EINVAL, "tensor %s: not a matrix of the expected rank", name);
		return;
	}
	const int rows = (int)t->shape[d - 2], cols = (int)t->shape[d - 1];
	const int k = nk ? cols : rows, n = nk ? rows : cols;
	const gf_dtype st = t->dtype;
	const gf_dtype dt = m->compute == GF_COMPUTE_BF16 ? GF_DTYPE_BF16 : st;
	const size_t ses = gf_dtype_size(st), slice_bytes = (size_t)rows * cols * ses;
	void *dst = weight_alloc(m, gf_mat_bytes(dt, k, n), rc, err, name);
	if (!dst)
		return;
	memset(dst, 0, gf_mat_bytes(dt, k, n));
	/* A LoRA matrix is small: read whole. An nn.Linear weight: PACK_ROWS rows at a time. */
	const size_t piece = nk ? (size_t)PACK_ROWS * k * ses : slice_bytes;
	void *buf = malloc(piece < slice_bytes ? piece : slice_bytes);
	if (!buf) {
		*rc = gf_error(err, -ENOMEM, "tensor %s: out of memory packing it", name);
		return;
	}
	const int panels = (n + GF_PANEL - 1) / GF_PANEL, per = nk ? PACK_ROWS / GF_PANEL : panels;
	for (int p0 = 0; p0 < panels && !*rc; p0 += per) {
		const int p1 = p0 + per < panels ? p0 + per : panels;
		const size_t off = (size_t)j * slice_bytes + (nk ? (size_t)p0 * GF_PANEL * k * ses : 0);
		const size_t len = nk ? (size_t)((p1 * GF_PANEL < n ? p1 * GF_PANEL : n) - p0 * GF_PANEL) *
						k * ses :
					slice_bytes;
		if (read_tensor(m, ts, t, off, len, buf))
			*rc = gf_error(err, -EIO, "tensor %s: read failed", name);
		else
			gf_mat_pack_panels(dst, dt, buf, st, k, n, nk, p0, p1);
	}
	free(buf);
	*out = (gf_mat){ .p = dst, .dtype = dt, .k = k, .n = n, .kp = gf_mat_kp(dt, k) };
}

#define bind_linear(m, ts, rc, err, out, ...) \
	bind_mat_slice(m, ts, rc, err, out, true, 0, 1, __VA_ARGS__)
#define bind_lora(m, ts, rc, err, out, ...) \
	bind_mat_slice(m, ts, rc, err, out, false, 0, 1, __VA_ARGS__)

/* The embedding stays row-major [V][C] as stored: one row is read per token. */
static void bind_emb(gf_model *m, const gf_tensor_set *ts, int *rc, char *err)
{
	if (*rc)
		return;
	const gf_tensor *t = find(ts, rc, err, "emb.weight");
	if (!t)
		return;
	void *dst = weight_alloc(m, t->nbytes, rc, err, "emb.weight");
	if (!dst)
		return;
	if (read_tensor(m, ts, t, 0, t->nbytes, dst)) {
		*rc = gf_error(err, -EIO, "tensor emb.weight: read failed");
		return;
	}
	m->emb = dst;
	m->emb_dtype = t->dtype;
}

/* The key/value side of GOLD block b: what rebuilds its keys and values from the cache. */
static void bind_gold_kv(gf_model *m, const gf_tensor_set *ts, int b, int *rc, char *err)
{
	gf_layer *l = &m->layers[b];
	l->maa_v_cache = bind(m, ts, rc, err, "blocks.%d.att.time_maa_v_cache", b);
	l->maa_gk = bind(m, ts, rc, err, "blocks.%d.att.time_maa_k", b);
	l->maa_gv = bind(m, ts, rc, err, "blocks.%d.att.time_maa_v", b);
	bind_lora(m, ts, rc, err, &l->maa_kv_w1, "blocks.%d.att.time_maa_kv_w1", b);
	for (int j = 0; j < 2; j++)
		bind_mat_slice(m, ts, rc, err, &l->maa_kv_w2[j], false, j, 2,
			       "blocks.%d.att.time_maa_kv_w2", b);
	bind_lora(m, ts, rc, err, &l->key_w1, "blocks.%d.att.time_key_w1", b);
	bind_lora(m, ts, rc, err, &l->key_w2, "blocks.%d.att.time_key_w2", b);
	bind_lora(m, ts, rc, err, &l->value_w1, "blocks.%d.att.time_value_w1", b);
	bind_lora(m, ts, rc, err, &l->value_w2, "blocks.%d.att.time_value_w2", b);
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
	bind_linear(m, ts, rc, err, &l->ffn_key, "blocks.%d.ffn.key.weight", b);
	bind_linear(m, ts, rc, err, &l->ffn_receptance, "blocks.%d.ffn.receptance.weight", b);
	bind_linear(m, ts, rc, err, &l->ffn_value, "blocks.%d.ffn.value.weight", b);
}

/* Reserves room for every tensor of the set as float32 packed in whole panels (only the
 * pages written are ever backed), aligned to 2 MiB and marked for huge pages. No arena (not an
 * error) where the reservation or the advice is refused: the weights then go to the heap. */
static void arena_init(gf_model *m, const gf_tensor_set *ts)
{
	const size_t huge = (size_t)2 << 20;
	size_t need = 0;
	for (int i = 0; i < ts->n_tensors; i++) {
		const gf_tensor *t = &ts->tensors[i];
		size_t floats = t->nbytes / gf_dtype_size(t->dtype);
		if (t->n_dims >= 2) /* columns rounded up to a panel, whichever way it is packed */
			floats += (size_t)(t->shape[t->n_dims - 1] + t->shape[t->n_dims - 2]) *
				  GF_PANEL * (t->n_dims == 3 ? (size_t)t->shape[0] : 1) * 2;
		need += floats * sizeof(float) + 128;
	}
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
	bind_lora(m, ts, rc, err, &l->maa_w1, "blocks.%d.att.time_maa_w1", b);
	for (int j = 0; j < 5; j++)
		bind_mat_slice(m, ts, rc, err, &l->maa_w2[j], false, j, 5, "blocks.%d.att.time_maa_w2",
			       b);
	l->time_decay = bind(m, ts, rc, err, "blocks.%d.att.time_decay", b);
	bind_lora(m, ts, rc, err, &l->decay_w1, "blocks.%d.att.time_decay_w1", b);
	bind_lora(m, ts, rc, err, &l->decay_w2, "blocks.%d.att.time_decay_w2", b);
	bind_lora(m, ts, rc, err, &l->value2_w1, "blocks.%d.att.time_value2_w1", b);
	bind_lora(m, ts, rc, err, &l->value2_w2, "blocks.%d.att.time_value2_w2", b);
	bind_linear(m, ts, rc, err, &l->att_receptance, "blocks.%d.att.receptance.weight", b);
	bind_linear(m, ts, rc, err, &l->att_key, "blocks.%d.att.key.weight", b);
	bind_linear(m, ts, rc, err, &l->att_value, "blocks.%d.att.value.weight", b);
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
	if (!m->layers) {
		rc = gf_error(err, -ENOMEM, "out of memory");
		goto free_model;
	}
	m->arena_fd = fd;
	if (flags & GF_LOAD_HUGE_INTERNAL)
		arena_init(m, ts);
	m->compute = (flags & GF_LOAD_COMPUTE_BF16) ? GF_COMPUTE_BF16 :
		     (flags & GF_LOAD_COMPUTE_F32)  ? GF_COMPUTE_F32 :
						      gf_compute_default();
	m->isa = gf_isa_detect();
	if (m->compute == GF_COMPUTE_BF16) {
		char why[GF_ERR_LEN];
		if (!gf_compute_bf16_available(why)) {
			rc = gf_error(err, -ENOTSUP, "bf16 compute: %s", why);
			goto free_model;
		}
	}
	if (b0 == 0 || gold_kv) {
		bind_emb(m, ts, &rc, err);
		m->ln0_w = bind(m, ts, &rc, err, "blocks.0.ln0.weight");
		m->ln0_b = bind(m, ts, &rc, err, "blocks.0.ln0.bias");
	}
	if (b1 == cfg->n_layer) {
		m->ln_out_w = bind(m, ts, &rc, err, "ln_out.weight");
		m->ln_out_b = bind(m, ts, &rc, err, "ln_out.bias");
		bind_linear(m, ts, &rc, err, &m->head, "head.weight");
	}
	if (b0 < G && G <= b1)
		bind_linear(m, ts, &rc, err, &m->w_kv_cache_a, "w_kv_cache_a.weight");
	if (gold_kv)
		bind_linear(m, ts, &rc, err, &m->w_kv_cache_b, "w_kv_cache_b.weight");
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
			bind_lora(m, ts, &rc, err, &l->maa_q_w1, "blocks.%d.att.time_maa_q_w1", b);
			bind_lora(m, ts, &rc, err, &l->maa_q_w2, "blocks.%d.att.time_maa_q_w2", b);
			bind_linear(m, ts, &rc, err, &l->att_query, "blocks.%d.att.query.weight", b);
			l->ln_q_w = bind(m, ts, &rc, err, "blocks.%d.att.ln_q.weight", b);
			l->ln_q_b = bind(m, ts, &rc, err, "blocks.%d.att.ln_q.bias", b);
			bind_gold_kv(m, ts, b, &rc, err);
		}
		bind_linear(m, ts, &rc, err, &l->att_output, "blocks.%d.att.output.weight", b);
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
	if (!rc && m->compute == GF_COMPUTE_BF16)
		rc = gf_dnnl_create(m, err);
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

int gf_model_from_tensors_flags(gf_model **out, const gf_config *cfg, const gf_tensor_set *ts,
				unsigned flags, char *err)
{
	return from_tensors(out, cfg, ts, 0, cfg->n_layer,
			    flags & (GF_LOAD_COMPUTE_BF16 | GF_LOAD_COMPUTE_F32), -1, err);
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
	if (want_huge_pages(flags))
		flags |= GF_LOAD_HUGE_INTERNAL;
	const int fd = open(gguf_path, O_RDONLY | O_CLOEXEC);
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
	m->gguf = g; /* the model owns the mapping (its tensor set stays readable) */
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
	gf_dnnl_free(m->dnnl);
	for (int i = 0; i < m->n_owned; i++)
		free(m->owned[i]);
	free(m->owned);
	if (m->arena_map)
		munmap(m->arena_map, m->arena_map_len);
	free(m->layers);
	gf_gguf_free(&m->gguf);
	free(m);
}

const char *gf_model_isa_name(const gf_model *m)
{
	return gf_isa_name(m->isa);
}

static uint64_t mat_bytes(const gf_mat *B)
{
	return B->p ? gf_mat_bytes(B->dtype, B->k, B->n) : 0;
}

uint64_t gf_model_decode_bytes(const gf_model *m)
{
	const gf_config *c = &m->cfg;
	uint64_t bytes = m->emb ? (uint64_t)c->n_embd * gf_dtype_size(m->emb_dtype) : 0;
	bytes += mat_bytes(&m->head) + mat_bytes(&m->w_kv_cache_a) + mat_bytes(&m->w_kv_cache_b);
	for (int b = m->block_first; b < m->block_end; b++) {
		const gf_layer *l = &m->layers[b];
		const gf_mat *mats[] = {
			&l->maa_w1, &l->maa_w2[0], &l->maa_w2[1], &l->maa_w2[2], &l->maa_w2[3],
			&l->maa_w2[4], &l->decay_w1, &l->decay_w2, &l->value2_w1, &l->value2_w2,
			&l->att_receptance, &l->att_key, &l->att_value, &l->maa_q_w1, &l->maa_q_w2,
			&l->maa_kv_w1, &l->maa_kv_w2[0], &l->maa_kv_w2[1], &l->key_w1, &l->key_w2,
			&l->value_w1, &l->value_w2, &l->att_query, &l->att_output, &l->ffn_key,
			&l->ffn_receptance, &l->ffn_value,
		};
		for (size_t i = 0; i < sizeof(mats) / sizeof(mats[0]); i++)
			bytes += mat_bytes(mats[i]);
	}
	return bytes;
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
	kv->block_floats = gf_kv_block_bytes(cfg, GF_DTYPE_F32) / sizeof(float);
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
