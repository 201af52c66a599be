/*
 * gguf.c — GGUF v3 files of architecture "goldfinch".
 *
 * Layout (all little-endian): "GGUF", u32 version 3, u64 tensor count, u64 metadata count,
 * metadata (key string, u32 type, value), tensor infos (name, u32 n_dims, u64 dims innermost
 * first, u32 ggml type, u64 offset into the data section), padding to general.alignment,
 * then the data section, each tensor at an aligned offset. Strings are u64 length + bytes.
 *
 * The writer streams tensors one at a time (gf-convert fills multi-GB models without
 * holding them) and replaces the target atomically: write path.tmp, fsync, rename, fsync
 * the folder. The reader maps the file read-only and checks every count, length, type and
 * offset against the file size before it allocates or points at anything.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "goldfinch.h"
#include "tensors_internal.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_VERSION 3
#define GGUF_ALIGNMENT 32
#define GGUF_ARCH "goldfinch"
#define GGUF_TOKENIZER "rwkv-world"

enum gguf_type {
	GGUF_U8 = 0,
	GGUF_I8 = 1,
	GGUF_U16 = 2,
	GGUF_I16 = 3,
	GGUF_U32 = 4,
	GGUF_I32 = 5,
	GGUF_F32 = 6,
	GGUF_BOOL = 7,
	GGUF_STRING = 8,
	GGUF_ARRAY = 9,
	GGUF_U64 = 10,
	GGUF_I64 = 11,
	GGUF_F64 = 12,
};

/* The goldfinch.* integer keys and the config fields they carry. */
#define CFG_KEYS(X)                                              \
	X("goldfinch.block_count", n_layer, 1)                   \
	X("goldfinch.embedding_length", n_embd, 1)               \
	X("goldfinch.attention_length", dim_att, 1)              \
	X("goldfinch.feed_forward_length", dim_ffn, 1)           \
	X("goldfinch.attention.head_count", n_head, 1)           \
	X("goldfinch.attention.head_size", head_size, 1)         \
	X("goldfinch.first_gold_layer", first_gold, 0)           \
	X("goldfinch.kv_cache_dim", ckv_dim, 1)                  \
	X("goldfinch.vocab_size", vocab_size, 1)                 \
	X("goldfinch.lora.maa", lora_maa, 0)                     \
	X("goldfinch.lora.decay", lora_decay, 0)                 \
	X("goldfinch.lora.value2", lora_value2, 0)               \
	X("goldfinch.lora.maa_q", lora_maa_q, 0)                 \
	X("goldfinch.lora.maa_kv", lora_maa_kv, 0)              \
	X("goldfinch.lora.key", lora_key, 0)                     \
	X("goldfinch.lora.value", lora_value, 0)

/* ---------------------------------------------------------------------------------------
 * Writer.
 */
struct obuf {
	uint8_t *p;
	size_t n, cap;
	uint64_t n_kv; /* metadata pairs put so far */
	int oom;
};

static void put(struct obuf *b, const void *src, size_t n)
{
	if (b->oom || n == 0)
		return;
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		uint8_t *p;

		while (cap < b->n + n)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, src, n);
	b->n += n;
}

static void put_u32(struct obuf *b, uint32_t v)
{
	uint8_t x[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };

	put(b, x, 4);
}

static void put_u64(struct obuf *b, uint64_t v)
{
	put_u32(b, (uint32_t)v);
	put_u32(b, (uint32_t)(v >> 32));
}

static void put_str(struct obuf *b, const void *s, size_t n)
{
	put_u64(b, n);
	put(b, s, n);
}

static void put_key(struct obuf *b, const char *key, enum gguf_type t)
{
	put_str(b, key, strlen(key));
	put_u32(b, t);
	b->n_kv++;
}

static void kv_u32(struct obuf *b, const char *key, uint32_t v)
{
	put_key(b, key, GGUF_U32);
	put_u32(b, v);
}

static void kv_f32(struct obuf *b, const char *key, float v)
{
	uint32_t u;

	memcpy(&u, &v, 4);
	put_key(b, key, GGUF_F32);
	put_u32(b, u);
}

static void kv_str(struct obuf *b, const char *key, const char *s)
{
	put_key(b, key, GGUF_STRING);
	put_str(b, s, strlen(s));
}

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

static int write_all(int fd, const void *p, size_t n)
{
	const uint8_t *c = p;

	while (n) {
		ssize_t w = write(fd, c, n > (1u << 30) ? (1u << 30) : n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		if (w == 0)
			return -EIO;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int fsync_parent(const char *path)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	int fd, rc = 0;

	if (!slash) {
		strcpy(dir, ".");
	} else {
		size_t n = (size_t)(slash - path);

		if (n >= sizeof(dir))
			return 0;
		if (n == 0)
			n = 1; /* "/file" */
		memcpy(dir, path, n);
		dir[n] = '\0';
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return 0; /* best effort: the rename itself is done */
	if (fsync(fd) < 0 && errno != EINVAL)
		rc = -errno;
	close(fd);
	return rc;
}

static int check_config(const gf_config *cfg, char *err, const char *path)
{
#define CHECK_FIELD(key, field, positive)                                                \
	if (cfg->field < (positive)) {                                                   \
		gf_tset_err(err, "%s: config %s is %d", path, key, (int)cfg->field);     \
		return -EINVAL;                                                          \
	}
	CFG_KEYS(CHECK_FIELD)
#undef CHECK_FIELD
	if (cfg->first_gold > cfg->n_layer) {
		gf_tset_err(err, "%s: config first_gold_layer %d > block_count %d", path,
			    cfg->first_gold, cfg->n_layer);
		return -EINVAL;
	}
	return 0;
}

int gf_gguf_write_stream(const char *path, const gf_config *cfg, const gf_tensor *infos,
			 int n_tensors, const gf_vocab *vocab, const char *name,
			 gf_gguf_fill_fn fill, void *user, bool hash_model_id,
			 uint64_t *model_id_out, char *err)
{
	struct obuf b = { 0 };
	size_t id_pos, max_bytes = 0, tmp_len;
	uint64_t off = 0, data_start;
	char *tmp = NULL;
	uint8_t *buf = NULL;
	static const uint8_t zeros[GGUF_ALIGNMENT];
	XXH64_state_t *xs = NULL;
	uint64_t model_id = cfg->model_id;
	int fd = -1, rc;

	if ((rc = check_config(cfg, err, path)))
		return rc;
	if (n_tensors < 0 || (n_tensors > 0 && !infos)) {
		gf_tset_err(err, "%s: bad tensor list", path);
		return -EINVAL;
	}
	if (vocab && vocab->n_tokens > 0 && (!vocab->offsets || vocab->offsets[0] != 0)) {
		gf_tset_err(err, "%s: vocabulary offsets are missing or do not start at 0", path);
		return -EINVAL;
	}

	/* Header: magic, version, counts, metadata, tensor infos. */
	put(&b, GGUF_MAGIC, 4);
	put_u32(&b, GGUF_VERSION);
	put_u64(&b, (uint64_t)n_tensors);
	put_u64(&b, 0); /* metadata count, patched below */
	kv_str(&b, "general.architecture", GGUF_ARCH);
	kv_str(&b, "general.name", name ? name : "");
	kv_u32(&b, "general.alignment", GGUF_ALIGNMENT);
#define PUT_FIELD(key, field, positive) kv_u32(&b, key, (uint32_t)cfg->field);
	CFG_KEYS(PUT_FIELD)
#undef PUT_FIELD
	kv_f32(&b, "goldfinch.rope.freq_base", cfg->rope_base);
	kv_f32(&b, "goldfinch.rope.rebase", cfg->rope_rebase);
	kv_f32(&b, "goldfinch.rope.rescale", cfg->rope_rescale);
	put_key(&b, "goldfinch.model_id", GGUF_U64);
	id_pos = b.n;
	put_u64(&b, model_id);
	if (vocab && vocab->n_tokens > 0) {
		kv_str(&b, "tokenizer.ggml.model", GGUF_TOKENIZER);
		put_key(&b, "tokenizer.ggml.tokens", GGUF_ARRAY);
		put_u32(&b, GGUF_STRING);
		put_u64(&b, (uint64_t)vocab->n_tokens);
		for (int32_t i = 0; i < vocab->n_tokens; i++) {
			uint32_t a = vocab->offsets[i], e = vocab->offsets[i + 1];

			if (e < a) {
				gf_tset_err(err, "%s: vocabulary offsets decrease at id %d", path, i);
				rc = -EINVAL;
				goto out_buf;
			}
			put_str(&b, vocab->bytes + a, e - a);
		}
	}
	if (!b.oom)
		for (int i = 0; i < 8; i++)
			b.p[16 + i] = (uint8_t)(b.n_kv >> (8 * i));
	for (int i = 0; i < n_tensors; i++) {
		const gf_tensor *t = &infos[i];
		int64_t numel = gf_tset_numel(t->n_dims, t->shape);
		size_t el = gf_dtype_size(t->dtype);

		if (el == 0 || numel < 0 || (uint64_t)numel * el != t->nbytes ||
		    strnlen(t->name, GF_NAME_MAX) == 0 || strnlen(t->name, GF_NAME_MAX) == GF_NAME_MAX) {
			gf_tset_err(err, "%s: tensor %.*s: bad name, type, shape or size", path,
				    GF_NAME_MAX - 1, t->name);
			rc = -EINVAL;
			goto out_buf;
		}
		put_str(&b, t->name, strlen(t->name));
		put_u32(&b, (uint32_t)t->n_dims);
		for (int d = t->n_dims - 1; d >= 0; d--) /* GGUF: innermost first */
			put_u64(&b, (uint64_t)t->shape[d]);
		put_u32(&b, (uint32_t)t->dtype);
		put_u64(&b, off);
		off = align_up(off + t->nbytes, GGUF_ALIGNMENT);
		if (t->nbytes > max_bytes)
			max_bytes = t->nbytes;
	}
	data_start = align_up(b.n, GGUF_ALIGNMENT);
	put(&b, zeros, (size_t)(data_start - b.n));
	if (b.oom) {
		gf_tset_err(err, "%s: out of memory building the header", path);
		rc = -ENOMEM;
		goto out_buf;
	}

	buf = malloc(max_bytes ? max_bytes : 1);
	tmp_len = strlen(path) + 5;
	tmp = malloc(tmp_len);
	xs = XXH64_createState();
	if (!buf || !tmp || !xs) {
		gf_tset_err(err, "%s: out of memory", path);
		rc = -ENOMEM;
		goto out_buf;
	}
	XXH64_reset(xs, 0);
	snprintf(tmp, tmp_len, "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		gf_tset_err(err, "%s: cannot create: %s", tmp, strerror(errno));
		goto out_buf;
	}
	if ((rc = write_all(fd, b.p, b.n)))
		goto out_io;
	for (int i = 0; i < n_tensors; i++) {
		const gf_tensor *t = &infos[i];
		size_t pad = (size_t)(align_up(t->nbytes, GGUF_ALIGNMENT) - t->nbytes);

		if ((rc = fill(user, i, buf, err))) {
			if (err && !err[0])
				gf_tset_err(err, "%s: tensor %s: cannot produce its data", path, t->name);
			goto out_unlink;
		}
		if (hash_model_id)
			XXH64_update(xs, buf, t->nbytes);
		if ((rc = write_all(fd, buf, t->nbytes)) || (rc = write_all(fd, zeros, pad)))
			goto out_io;
	}
	if (hash_model_id) {
		uint8_t x[8];

		model_id = XXH64_digest(xs);
		for (int i = 0; i < 8; i++)
			x[i] = (uint8_t)(model_id >> (8 * i));
		if (pwrite(fd, x, 8, (off_t)id_pos) != 8) {
			rc = -EIO;
			goto out_io;
		}
	}
	if (fsync(fd) < 0) {
		rc = -errno;
		goto out_io;
	}
	if (close(fd) < 0) {
		fd = -1;
		rc = -errno;
		goto out_io;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		rc = -errno;
		gf_tset_err(err, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
		goto out_unlink;
	}
	if ((rc = fsync_parent(path))) {
		gf_tset_err(err, "%s: cannot sync its folder: %s", path, strerror(-rc));
		goto out_buf;
	}
	if (model_id_out)
		*model_id_out = model_id;
	rc = 0;
	goto out_buf;

out_io:
	gf_tset_err(err, "%s: write failed: %s", tmp, strerror(rc < 0 ? -rc : EIO));
out_unlink:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
out_buf:
	XXH64_freeState(xs);
	free(tmp);
	free(buf);
	free(b.p);
	return rc;
}

static int fill_from_set(void *user, int idx, void *dst, char *err)
{
	const gf_tensor_set *ts = user;

	(void)err;
	if (ts->tensors[idx].nbytes)
		memcpy(dst, ts->tensors[idx].data, ts->tensors[idx].nbytes);
	return 0;
}

int gf_gguf_write(const char *path, const gf_config *cfg, const gf_tensor_set *ts,
		  const gf_vocab *vocab, const char *name, char *err)
{
	if (!path || !cfg || !ts) {
		gf_tset_err(err, "gguf write: missing argument");
		return -EINVAL;
	}
	for (int i = 0; i < ts->n_tensors; i++) {
		if (!ts->tensors[i].data && ts->tensors[i].nbytes) {
			gf_tset_err(err, "%s: tensor %s has no data", path, ts->tensors[i].name);
			return -EINVAL;
		}
	}
	return gf_gguf_write_stream(path, cfg, ts->tensors, ts->n_tensors, vocab, name,
				    fill_from_set, (void *)ts, false, NULL, err);
}

/* ---------------------------------------------------------------------------------------
 * Reader.
 */
struct rd {
	const uint8_t *p;
	size_t len, pos;
	const char *path;
	char *err;
};

static int rd_fail(struct rd *r, const char *what)
{
	gf_tset_err(r->err, "%s: %s at offset %zu", r->path, what, r->pos);
	return -EINVAL;
}

static int rd_bytes(struct rd *r, void *dst, size_t n)
{
	if (r->len - r->pos < n)
		return rd_fail(r, "file truncated");
	memcpy(dst, r->p + r->pos, n);
	r->pos += n;
	return 0;
}

static int rd_u32(struct rd *r, uint32_t *v)
{
	uint8_t x[4];
	int rc = rd_bytes(r, x, 4);

	if (!rc)
		*v = (uint32_t)x[0] | ((uint32_t)x[1] << 8) | ((uint32_t)x[2] << 16) |
		     ((uint32_t)x[3] << 24);
	return rc;
}

static int rd_u64(struct rd *r, uint64_t *v)
{
	uint32_t lo, hi;
	int rc = rd_u32(r, &lo);

	if (!rc)
		rc = rd_u32(r, &hi);
	if (!rc)
		*v = (uint64_t)lo | ((uint64_t)hi << 32);
	return rc;
}

/* A string in place: *s points into the mapping (not NUL-terminated). */
static int rd_str(struct rd *r, const char **s, size_t *n)
{
	uint64_t len;
	int rc = rd_u64(r, &len);

	if (rc)
		return rc;
	if (len > r->len - r->pos)
		return rd_fail(r, "string length runs past the end of the file");
	*s = (const char *)r->p + r->pos;
	*n = (size_t)len;
	r->pos += (size_t)len;
	return 0;
}

static size_t scalar_size(uint32_t t)
{
	switch (t) {
	case GGUF_U8:
	case GGUF_I8:
	case GGUF_BOOL:
		return 1;
	case GGUF_U16:
	case GGUF_I16:
		return 2;
	case GGUF_U32:
	case GGUF_I32:
	case GGUF_F32:
		return 4;
	case GGUF_U64:
	case GGUF_I64:
	case GGUF_F64:
		return 8;
	}
	return 0;
}

/* Skips a value of an unknown key (forward compatibility); arrays may nest, a little. */
static int skip_value(struct rd *r, uint32_t t, int depth)
{
	size_t sz = scalar_size(t);

	if (sz) {
		if (r->len - r->pos < sz)
			return rd_fail(r, "file truncated");
		r->pos += sz;
		return 0;
	}
	if (t == GGUF_STRING) {
		const char *s;
		size_t n;

		return rd_str(r, &s, &n);
	}
	if (t == GGUF_ARRAY) {
		uint32_t et;
		uint64_t count;
		int rc;

		if (depth >= 4)
			return rd_fail(r, "metadata arrays nested too deeply");
		if ((rc = rd_u32(r, &et)) || (rc = rd_u64(r, &count)))
			return rc;
		sz = scalar_size(et);
		if (sz) {
			if (count > (r->len - r->pos) / sz)
				return rd_fail(r, "metadata array runs past the end of the file");
			r->pos += (size_t)count * sz;
			return 0;
		}
		if (et != GGUF_STRING && et != GGUF_ARRAY)
			return rd_fail(r, "metadata array of an unknown type");
		/* Each element takes at least 8 bytes: bounds the loop by the file size. */
		if (count > (r->len - r->pos) / 8)
			return rd_fail(r, "metadata array runs past the end of the file");
		for (uint64_t i = 0; i < count; i++)
			if ((rc = skip_value(r, et, depth + 1)))
				return rc;
		return 0;
	}
	return rd_fail(r, "metadata value of an unknown type");
}

/* An integer metadata value of any integer type, in [0, INT32_MAX] unless wide. */
static int rd_int(struct rd *r, uint32_t t, uint64_t *out, const char *key)
{
	uint64_t v = 0;
	uint8_t x[8];
	size_t sz = scalar_size(t);
	int neg = 0, rc;

	if (!sz || t == GGUF_F32 || t == GGUF_F64 || t == GGUF_BOOL) {
		gf_tset_err(r->err, "%s: metadata %s is not an integer", r->path, key);
		return -EINVAL;
	}
	if ((rc = rd_bytes(r, x, sz)))
		return rc;
	for (size_t i = 0; i < sz; i++)
		v |= (uint64_t)x[i] << (8 * i);
	if ((t == GGUF_I8 || t == GGUF_I16 || t == GGUF_I32 || t == GGUF_I64) &&
	    (x[sz - 1] & 0x80))
		neg = 1;
	if (neg) {
		gf_tset_err(r->err, "%s: metadata %s is negative", r->path, key);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int rd_float(struct rd *r, uint32_t t, float *out, const char *key)
{
	uint8_t x[8];
	uint64_t v = 0;
	int rc;

	if (t != GGUF_F32 && t != GGUF_F64) {
		gf_tset_err(r->err, "%s: metadata %s is not a float", r->path, key);
		return -EINVAL;
	}
	if ((rc = rd_bytes(r, x, scalar_size(t))))
		return rc;
	for (size_t i = 0; i < scalar_size(t); i++)
		v |= (uint64_t)x[i] << (8 * i);
	if (t == GGUF_F32) {
		uint32_t u = (uint32_t)v;

		memcpy(out, &u, 4);
	} else {
		double d;

		memcpy(&d, &v, 8);
		*out = (float)d;
	}
	return 0;
}

static int rd_tokens(struct rd *r, gf_vocab *v)
{
	uint32_t et;
	uint64_t count, total = 0;
	size_t start;
	int rc;

	if ((rc = rd_u32(r, &et)) || (rc = rd_u64(r, &count)))
		return rc;
	if (et != GGUF_STRING)
		return rd_fail(r, "tokenizer.ggml.tokens is not an array of strings");
	if (count == 0 || count > INT32_MAX - 1 || count > (r->len - r->pos) / 8)
		return rd_fail(r, "tokenizer.ggml.tokens count does not fit the file");
	/* First pass sizes the bytes (bounded by the file), second copies them. */
	start = r->pos;
	for (uint64_t i = 0; i < count; i++) {
		const char *s;
		size_t n;

		if ((rc = rd_str(r, &s, &n)))
			return rc;
		if (n > GF_TOKEN_MAX_BYTES) {
			gf_tset_err(r->err, "%s: token %llu is %zu bytes (at most %d)", r->path,
				    (unsigned long long)i, n, GF_TOKEN_MAX_BYTES);
			return -EINVAL;
		}
		total += n;
	}
	if (total > UINT32_MAX)
		return rd_fail(r, "tokenizer.ggml.tokens too large");
	v->offsets = malloc((size_t)(count + 1) * sizeof(uint32_t));
	v->bytes = malloc(total ? (size_t)total : 1);
	if (!v->offsets || !v->bytes) {
		free(v->offsets);
		free(v->bytes);
		v->offsets = NULL;
		v->bytes = NULL;
		gf_tset_err(r->err, "%s: out of memory for the vocabulary", r->path);
		return -ENOMEM;
	}
	r->pos = start;
	total = 0;
	for (uint64_t i = 0; i < count; i++) {
		const char *s;
		size_t n;

		rd_str(r, &s, &n); /* cannot fail: checked above */
		v->offsets[i] = (uint32_t)total;
		memcpy(v->bytes + total, s, n);
		total += n;
	}
	v->offsets[count] = (uint32_t)total;
	v->n_tokens = (int32_t)count;
	return 0;
}

struct tinfo {
	const char *name;
	size_t name_len;
	int n_dims;
	int64_t shape[GF_MAX_DIMS]; /* outermost first */
	gf_dtype dtype;
	uint64_t off;
	size_t nbytes;
};

static int key_is(const char *k, size_t n, const char *lit)
{
	return strlen(lit) == n && memcmp(k, lit, n) == 0;
}

static int read_kvs(struct rd *r, gf_gguf *g, uint64_t n_kv, uint32_t *alignment)
{
	uint32_t have_cfg = 0;
	bool have_arch = false, have_tok_model = false;
	const char *tok_model = NULL;
	size_t tok_model_len = 0;
	unsigned bit;
	int rc;

	g->config.rope_rebase = 1.0f;
	g->config.rope_rescale = 1.0f;
	for (uint64_t i = 0; i < n_kv; i++) {
		const char *key, *s;
		size_t klen, slen;
		char kbuf[80];
		uint32_t t;
		uint64_t u;

		if ((rc = rd_str(r, &key, &klen)) || (rc = rd_u32(r, &t)))
			return rc;
		snprintf(kbuf, sizeof(kbuf), "%.*s", (int)(klen > 79 ? 79 : klen), key);
		for (size_t c = 0; c < strlen(kbuf); c++)
			if ((unsigned char)kbuf[c] < 0x20)
				kbuf[c] = '?';
		bit = 0;
#define MATCH_FIELD(k, field, positive)                                                  \
		if (key_is(key, klen, k)) {                                              \
			if ((rc = rd_int(r, t, &u, k)))                                  \
				return rc;                                               \
			if (u > INT32_MAX || ((positive) && u == 0)) {                   \
				gf_tset_err(r->err, "%s: metadata %s = %llu out of range", \
					    r->path, k, (unsigned long long)u);          \
				return -EINVAL;                                          \
			}                                                                \
			g->config.field = (int32_t)u;                                    \
			have_cfg |= 1u << bit;                                           \
			continue;                                                        \
		}                                                                        \
		bit++;
		CFG_KEYS(MATCH_FIELD)
#undef MATCH_FIELD
		if (key_is(key, klen, "general.architecture")) {
			if (t != GGUF_STRING)
				return rd_fail(r, "general.architecture is not a string");
			if ((rc = rd_str(r, &s, &slen)))
				return rc;
			if (!key_is(s, slen, GGUF_ARCH)) {
				gf_tset_err(r->err, "%s: architecture '%.*s' is not '" GGUF_ARCH "'",
					    r->path, (int)(slen > 40 ? 40 : slen), s);
				return -EINVAL;
			}
			have_arch = true;
		} else if (key_is(key, klen, "general.name")) {
			if (t != GGUF_STRING)
				return rd_fail(r, "general.name is not a string");
			if ((rc = rd_str(r, &s, &slen)))
				return rc;
			if (slen >= GF_NAME_MAX)
				slen = GF_NAME_MAX - 1;
			memcpy(g->name, s, slen);
			g->name[slen] = '\0';
		} else if (key_is(key, klen, "general.alignment")) {
			if ((rc = rd_int(r, t, &u, kbuf)))
				return rc;
			if (u == 0 || u > (1u << 16) || (u & (u - 1))) {
				gf_tset_err(r->err, "%s: general.alignment %llu is not a power of two "
					    "up to 65536", r->path, (unsigned long long)u);
				return -EINVAL;
			}
			*alignment = (uint32_t)u;
		} else if (key_is(key, klen, "goldfinch.rope.freq_base")) {
			if ((rc = rd_float(r, t, &g->config.rope_base, kbuf)))
				return rc;
		} else if (key_is(key, klen, "goldfinch.rope.rebase")) {
			if ((rc = rd_float(r, t, &g->config.rope_rebase, kbuf)))
				return rc;
		} else if (key_is(key, klen, "goldfinch.rope.rescale")) {
			if ((rc = rd_float(r, t, &g->config.rope_rescale, kbuf)))
				return rc;
		} else if (key_is(key, klen, "goldfinch.model_id")) {
			if (t != GGUF_U64)
				return rd_fail(r, "goldfinch.model_id is not a u64");
			if ((rc = rd_u64(r, &g->config.model_id)))
				return rc;
		} else if (key_is(key, klen, "tokenizer.ggml.model")) {
			if (t != GGUF_STRING)
				return rd_fail(r, "tokenizer.ggml.model is not a string");
			if ((rc = rd_str(r, &tok_model, &tok_model_len)))
				return rc;
			have_tok_model = true;
		} else if (key_is(key, klen, "tokenizer.ggml.tokens")) {
			if (t != GGUF_ARRAY)
				return rd_fail(r, "tokenizer.ggml.tokens is not an array");
			if (g->vocab.n_tokens)
				return rd_fail(r, "tokenizer.ggml.tokens appears twice");
			if ((rc = rd_tokens(r, &g->vocab)))
				return rc;
		} else if ((rc = skip_value(r, t, 0))) {
			return rc;
		}
	}
	if (!have_arch) {
		gf_tset_err(r->err, "%s: no general.architecture: not a goldfinch GGUF", r->path);
		return -EINVAL;
	}
	bit = 0;
#define CHECK_HAVE(k, field, positive)                                                   \
	if (!(have_cfg & (1u << bit))) {                                                 \
		gf_tset_err(r->err, "%s: metadata %s missing", r->path, k);              \
		return -EINVAL;                                                          \
	}                                                                                \
	bit++;
	CFG_KEYS(CHECK_HAVE)
#undef CHECK_HAVE
	if (g->config.first_gold > g->config.n_layer) {
		gf_tset_err(r->err, "%s: first_gold_layer %d > block_count %d", r->path,
			    g->config.first_gold, g->config.n_layer);
		return -EINVAL;
	}
	if (g->vocab.n_tokens && (!have_tok_model ||
				  !key_is(tok_model, tok_model_len, GGUF_TOKENIZER))) {
		gf_tset_err(r->err, "%s: tokenizer.ggml.model is not '" GGUF_TOKENIZER "'",
			    r->path);
		return -EINVAL;
	}
	return 0;
}

int gf_gguf_read(gf_gguf *g, const char *path, char *err)
{
	struct rd r = { .path = path, .err = err };
	struct tinfo *ti = NULL;
	uint32_t version, alignment = GGUF_ALIGNMENT;
	uint64_t n_tensors, n_kv, data_start, data_len;
	uint8_t magic[4];
	int rc;

	memset(g, 0, sizeof(*g));
	rc = gf_tset_map(path, &g->tensors.map, &g->tensors.map_len, err);
	if (rc)
		return rc;
	r.p = g->tensors.map;
	r.len = g->tensors.map_len;
	if ((rc = rd_bytes(&r, magic, 4)))
		goto out;
	if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
		gf_tset_err(err, "%s: not a GGUF file (bad magic)", path);
		rc = -EINVAL;
		goto out;
	}
	if ((rc = rd_u32(&r, &version)) || (rc = rd_u64(&r, &n_tensors)) ||
	    (rc = rd_u64(&r, &n_kv)))
		goto out;
	if (version != GGUF_VERSION) {
		gf_tset_err(err, "%s: GGUF version %u not supported (only %d)", path, version,
			    GGUF_VERSION);
		rc = -EINVAL;
		goto out;
	}
	/* A tensor info takes at least 24 bytes, a metadata pair at least 13. */
	if (n_tensors > (r.len - r.pos) / 24 || n_tensors > INT32_MAX / 2 ||
	    n_kv > (r.len - r.pos) / 13) {
		gf_tset_err(err, "%s: GGUF counts (%llu tensors, %llu metadata) do not fit the "
			    "%zu-byte file", path, (unsigned long long)n_tensors,
			    (unsigned long long)n_kv, r.len);
		rc = -EINVAL;
		goto out;
	}
	if ((rc = read_kvs(&r, g, n_kv, &alignment)))
		goto out;

	ti = calloc((size_t)n_tensors + 1, sizeof(*ti));
	if (!ti) {
		gf_tset_err(err, "%s: out of memory", path);
		rc = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < n_tensors; i++) {
		struct tinfo *t = &ti[i];
		uint32_t nd, type;
		int64_t numel;

		if ((rc = rd_str(&r, &t->name, &t->name_len)) || (rc = rd_u32(&r, &nd)))
			goto out;
		if (nd > GF_MAX_DIMS) {
			gf_tset_err(err, "%s: tensor %.*s: %u dims (at most %d)", path,
				    (int)(t->name_len > 80 ? 80 : t->name_len), t->name, nd,
				    GF_MAX_DIMS);
			rc = -EINVAL;
			goto out;
		}
		t->n_dims = (int)nd;
		for (int d = t->n_dims - 1; d >= 0; d--) { /* back to outermost first */
			uint64_t dim;

			if ((rc = rd_u64(&r, &dim)))
				goto out;
			t->shape[d] = dim > ((uint64_t)1 << 56) ? -1 : (int64_t)dim;
		}
		if ((rc = rd_u32(&r, &type)) || (rc = rd_u64(&r, &t->off)))
			goto out;
		t->dtype = (gf_dtype)type;
		numel = gf_tset_numel(t->n_dims, t->shape);
		if (gf_dtype_size(t->dtype) == 0 ||
		    (type != GF_DTYPE_F32 && type != GF_DTYPE_F16 && type != GF_DTYPE_BF16) ||
		    numel < 0) {
			gf_tset_err(err, "%s: tensor %.*s: type %u or shape not supported (f32, f16, "
				    "bf16)", path, (int)(t->name_len > 80 ? 80 : t->name_len), t->name,
				    type);
			rc = -EINVAL;
			goto out;
		}
		t->nbytes = (size_t)numel * gf_dtype_size(t->dtype);
	}
	data_start = align_up(r.pos, alignment);
	if (data_start > r.len) {
		gf_tset_err(err, "%s: data section starts past the end of the file (truncated?)",
			    path);
		rc = -EINVAL;
		goto out;
	}
	data_len = r.len - data_start;
	for (uint64_t i = 0; i < n_tensors; i++) {
		struct tinfo *t = &ti[i];
		int nl = (int)(t->name_len > 80 ? 80 : t->name_len);

		if (t->off % alignment) {
			gf_tset_err(err, "%s: tensor %.*s: offset %llu not aligned to %u", path, nl,
				    t->name, (unsigned long long)t->off, alignment);
			rc = -EINVAL;
			goto out;
		}
		if (t->off > data_len || t->nbytes > data_len - t->off) {
			gf_tset_err(err, "%s: tensor %.*s: %zu bytes at data offset %llu run past the "
				    "end of the file (truncated?)", path, nl, t->name, t->nbytes,
				    (unsigned long long)t->off);
			rc = -EINVAL;
			goto out;
		}
		rc = gf_tset_push(&g->tensors, t->name, t->name_len, t->dtype, t->n_dims, t->shape,
				  r.p + data_start + t->off, t->nbytes, path, err);
		if (rc)
			goto out;
	}
	rc = gf_tset_check_unique(&g->tensors, path, err);
out:
	free(ti);
	if (rc)
		gf_gguf_free(g);
	return rc;
}

void gf_gguf_free(gf_gguf *g)
{
	if (!g)
		return;
	gf_tensors_free(&g->tensors);
	gf_vocab_free(&g->vocab);
	memset(g, 0, sizeof(*g));
}
