/*
 * gf-convert — makes the GGUF files the daemon loads: from an official checkpoint (.pth,
 * .safetensors, or another GGUF), or a seeded random model of any GoldFinch shape.
 *
 * Tensors are written in the official state_dict order (gf_config_tensor_specs) whatever
 * the input's order, so the same weights always give the same file and the same model_id
 * (xxh64 of all tensor bytes as written). Tensors are produced one at a time by the
 * streaming GGUF writer: a multi-GB model never sits in memory whole.
 */
#include "goldfinch_version.h"
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "goldfinch.h"
#include "tensors_internal.h"

#define MAX_THREADS 64
/* Random models are generated in blocks with their own RNG stream each, so the values
 * do not depend on the number of threads. */
#define RAND_BLOCK 65536

static void usage(FILE *f)
{
	fprintf(f,
		"usage: gf-convert IN OUT.gguf [--vocab FILE | --byte-vocab] [--rope-base B] [--dtype D]\n"
		"                  [--name NAME]\n"
		"       gf-convert --random --layers L --embd C --vocab V [--ratio R] [--seed S]\n"
		"                  [--dtype D] [--vocab-file FILE | --byte-vocab] [--rope-base B]\n"
		"                  [--name NAME]\n"
		"                  [--threads T] OUT.gguf\n"
		"\n"
		"Converts a GoldFinch checkpoint to the GGUF v3 file the daemon loads.\n"
		"IN is an official PyTorch checkpoint (.pth, torch.save of the state_dict), a\n"
		".safetensors file or a GGUF; the kind is told from the file's first bytes. The\n"
		"configuration is inferred from tensor names and shapes, which are checked\n"
		"against the full GoldFinch tensor list. Tensors are written in state_dict order;\n"
		"goldfinch.model_id is the xxh64 (seed 0) of all tensor bytes as written.\n"
		"\n"
		"  --vocab FILE      RWKV World vocabulary (rwkv_vocab_v20230424.txt) to embed as\n"
		"                    tokenizer.ggml.tokens (a GGUF input keeps its own otherwise);\n"
		"                    --vocab-file FILE is the same\n"
		"  --byte-vocab      embed the byte vocabulary instead: 257 tokens, id 0 is\n"
		"                    <|endoftext|> and ids 1..256 are the single bytes 0..255, the\n"
		"                    ids the World vocabulary gives them (for byte-level models\n"
		"                    such as models/goldfinch-byte.gguf)\n"
		"  --rope-base B     RoPE frequency base (0 = no RoPE, the default; a GGUF input\n"
		"                    keeps its own otherwise)\n"
		"  --dtype D         keep (default), f32, f16 or bf16: element type of the output\n"
		"  --name NAME       general.name (default: IN's file name without extension)\n"
		"\n"
		"--random writes a model with seeded random weights (the init scheme of the\n"
		"reference test vectors: embeddings N(0,1), linear N(0,1/sqrt(fan_in)), ...):\n"
		"  --layers L        number of blocks (2..1024)\n"
		"  --embd C          width, a multiple of 16 (and of 64 from 64 up)\n"
		"  --vocab V         vocabulary size (rows of emb and head)\n"
		"  --ratio R         inv_other_layer_ratio: G = floor(L*(R-1)/R) Finch blocks (3)\n"
		"  --seed S          RNG seed, unsigned 64-bit (0)\n"
		"  --dtype D         f32 (default), f16 or bf16\n"
		"  --vocab-file FILE vocabulary to embed, as --vocab above (or --byte-vocab)\n"
		"  --threads T       generator threads (default: online CPUs, at most %d); the\n"
		"                    output does not depend on T\n"
		"\n"
		"A one-line summary goes to stderr. Any error prints one line to stderr and\n"
		"exits 1; nothing is left at OUT.gguf (it is written to OUT.gguf.tmp, then renamed).\n",
		MAX_THREADS);
}

static int die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int die(const char *fmt, ...)
{
	char line[GF_ERR_LEN + 256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	for (char *p = line; *p; p++)
		if (*p == '\n')
			*p = ' ';
	fprintf(stderr, "gf-convert: %s\n", line);
	return 1;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static int parse_dtype(const char *s, bool allow_keep, int *out)
{
	if (allow_keep && strcmp(s, "keep") == 0)
		*out = -1;
	else if (strcmp(s, "f32") == 0)
		*out = GF_DTYPE_F32;
	else if (strcmp(s, "f16") == 0)
		*out = GF_DTYPE_F16;
	else if (strcmp(s, "bf16") == 0)
		*out = GF_DTYPE_BF16;
	else
		return -1;
	return 0;
}

/* Converts n floats to dtype t at dst. */
static void from_f32(gf_dtype t, const float *src, void *dst, size_t n)
{
	uint16_t *d = dst;

	switch (t) {
	case GF_DTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	case GF_DTYPE_F16:
		for (size_t i = 0; i < n; i++)
			d[i] = gf_f32_to_f16(src[i]);
		break;
	case GF_DTYPE_BF16:
		for (size_t i = 0; i < n; i++)
			d[i] = gf_f32_to_bf16(src[i]);
		break;
	}
}

/* The byte vocabulary: id 0 <|endoftext|> (as vocab.c makes it for the World vocabulary),
 * ids 1..256 the single bytes 0..255. Greedy longest match over it reads every byte as its
 * own token except the literal "<|endoftext|>", which is id 0, as with the World tokenizer. */
static int byte_vocab(gf_vocab *v)
{
	static const char eot[] = "<|endoftext|>";
	const uint32_t n_eot = sizeof(eot) - 1;

	memset(v, 0, sizeof(*v));
	v->offsets = malloc(258 * sizeof(*v->offsets));
	v->bytes = malloc(n_eot + 256);
	if (!v->offsets || !v->bytes) {
		gf_vocab_free(v);
		return -ENOMEM;
	}
	memcpy(v->bytes, eot, n_eot);
	v->offsets[0] = 0;
	v->offsets[1] = n_eot;
	for (int b = 0; b < 256; b++) {
		v->bytes[n_eot + b] = (uint8_t)b;
		v->offsets[b + 2] = n_eot + (uint32_t)b + 1;
	}
	v->n_tokens = 257;
	return 0;
}

static void print_summary(const char *out, const gf_config *cfg, const gf_tensor *infos, int n,
			  const gf_vocab *vocab, uint64_t model_id)
{
	uint64_t params = 0, bytes = 0;
	bool mixed = false;

	for (int i = 0; i < n; i++) {
		params += infos[i].nbytes / gf_dtype_size(infos[i].dtype);
		bytes += infos[i].nbytes;
		mixed |= infos[i].dtype != infos[0].dtype;
	}
	fprintf(stderr, "gf-convert: %s: layers %d, C %d, G %d, V %d, %d tensors, params %llu, "
		"bytes %llu (%s), vocab %d tokens, model_id %016llx\n", out, cfg->n_layer,
		cfg->n_embd, cfg->first_gold, cfg->vocab_size, n, (unsigned long long)params,
		(unsigned long long)bytes, mixed ? "mixed" : gf_dtype_name(infos[0].dtype),
		vocab ? vocab->n_tokens : 0, (unsigned long long)model_id);
}

/* ---------------------------------------------------------------------------------------
 * Checkpoint conversion.
 */
struct conv {
	const gf_tensor **src; /* [n], in output order */
	const gf_tensor *infos;
};

static int fill_convert(void *user, int idx, void *dst, char *err)
{
	struct conv *c = user;
	const gf_tensor *s = c->src[idx];
	gf_dtype to = c->infos[idx].dtype;
	size_t n = s->nbytes / gf_dtype_size(s->dtype);
	float tmp[4096];

	(void)err;
	if (n == 0)
		return 0;
	if (s->dtype == to) {
		memcpy(dst, s->data, s->nbytes);
		return 0;
	}
	if (to == GF_DTYPE_F32) {
		gf_convert_to_f32(s->dtype, s->data, dst, n);
		return 0;
	}
	for (size_t i = 0; i < n; i += 4096) {
		size_t k = n - i < 4096 ? n - i : 4096;

		gf_convert_to_f32(s->dtype, (const char *)s->data + i * gf_dtype_size(s->dtype),
				  tmp, k);
		from_f32(to, tmp, (char *)dst + i * gf_dtype_size(to), k);
	}
	return 0;
}

static const char *base_stem(const char *path, char *buf, size_t len)
{
	const char *b = strrchr(path, '/');
	char *dot;

	snprintf(buf, len, "%s", b ? b + 1 : path);
	dot = strrchr(buf, '.');
	if (dot && dot != buf)
		*dot = '\0';
	return buf;
}

static int cmd_convert(const char *in, const char *out, const char *vocab_path, bool bytes,
		       const char *rope_base, int dtype, const char *name)
{
	char err[GF_ERR_LEN] = "", stem[GF_NAME_MAX];
	gf_gguf g;
	gf_tensor_set *ts = &g.tensors;
	gf_vocab vfile = { 0 };
	const gf_vocab *vocab = NULL;
	gf_config cfg;
	gf_tensor_spec *specs = NULL;
	gf_tensor *infos = NULL;
	struct conv c = { 0 };
	uint64_t model_id = 0;
	bool from_gguf = false;
	FILE *f;
	char magic[4] = { 0 };
	int n_specs = 0, rc = 1;

	memset(&g, 0, sizeof(g));
	f = fopen(in, "rb");
	if (!f)
		return die("%s: cannot open: %s", in, strerror(errno));
	from_gguf = fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
	fclose(f);
	if (from_gguf ? gf_gguf_read(&g, in, err) : gf_tensors_read_any(ts, in, err))
		return die("%s", err);
	if (gf_config_infer(&cfg, ts, err)) {
		rc = die("%s: %s", in, err);
		goto out;
	}
	if (from_gguf) {
		cfg.rope_base = g.config.rope_base;
		cfg.rope_rebase = g.config.rope_rebase;
		cfg.rope_rescale = g.config.rope_rescale;
		if (g.vocab.n_tokens)
			vocab = &g.vocab;
	}
	if (rope_base) {
		char *end;
		double b = strtod(rope_base, &end);

		if (end == rope_base || *end || !isfinite(b) || b < 0 || b > 1e30) {
			rc = die("--rope-base %s: not a non-negative number", rope_base);
			goto out;
		}
		cfg.rope_base = (float)b;
	}
	if (vocab_path) {
		if (gf_vocab_load_file(&vfile, vocab_path, err)) {
			rc = die("%s", err);
			goto out;
		}
		vocab = &vfile;
	} else if (bytes) {
		if (byte_vocab(&vfile)) {
			rc = die("out of memory");
			goto out;
		}
		vocab = &vfile;
	}
	if (vocab && vocab->n_tokens > cfg.vocab_size)
		fprintf(stderr, "gf-convert: warning: the vocabulary has %d tokens, the model only "
			"%d ids\n", vocab->n_tokens, cfg.vocab_size);

	if (gf_config_tensor_specs(&cfg, &specs, &n_specs)) {
		rc = die("out of memory");
		goto out;
	}
	infos = calloc((size_t)n_specs, sizeof(*infos));
	c.src = calloc((size_t)n_specs, sizeof(*c.src));
	if (!infos || !c.src) {
		rc = die("out of memory");
		goto out;
	}
	for (int i = 0; i < n_specs; i++) {
		const gf_tensor *t = gf_tensors_find(ts, specs[i].name);

		if (!t) { /* gf_config_infer has checked; a mismatch is a bug */
			rc = die("%s: tensor %s: missing", in, specs[i].name);
			goto out;
		}
		c.src[i] = t;
		infos[i] = *t;
		infos[i].data = NULL;
		if (dtype >= 0) {
			infos[i].dtype = (gf_dtype)dtype;
			infos[i].nbytes = t->nbytes / gf_dtype_size(t->dtype) * gf_dtype_size(dtype);
		}
	}
	c.infos = infos;
	if (!name)
		name = from_gguf && g.name[0] ? g.name : base_stem(in, stem, sizeof(stem));
	if (gf_gguf_write_stream(out, &cfg, infos, n_specs, vocab, name, fill_convert, &c, true,
				 &model_id, err)) {
		rc = die("%s", err);
		goto out;
	}
	print_summary(out, &cfg, infos, n_specs, vocab, model_id);
	rc = 0;
out:
	free(c.src);
	free(infos);
	free(specs);
	gf_vocab_free(&vfile);
	gf_gguf_free(&g);
	return rc;
}

/* ---------------------------------------------------------------------------------------
 * Random models.
 */
static inline uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

struct rng {
	uint64_t s[4];
};

static void rng_seed(struct rng *r, uint64_t seed, uint64_t stream, uint64_t block)
{
	uint64_t x = seed ^ splitmix64(&(uint64_t){ stream * 0x632be59bd9b4e019ull + block });

	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

/* xoshiro256** */
static inline uint64_t rng_next(struct rng *r)
{
	uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return res;
}

/* Fills x[n] with N(mean, sd) (Box-Muller, both outputs used) or U(lo, hi). */
static void gen_normal(struct rng *r, float *x, size_t n, float mean, float sd)
{
	for (size_t i = 0; i < n; i += 2) {
		uint64_t a = rng_next(r);
		/* Two 24-bit uniforms per draw; u1 in (0, 1] keeps the log finite. */
		float u1 = (float)((a >> 40) + 1) * 0x1p-24f;
		float u2 = (float)((a >> 16) & 0xffffff) * 0x1p-24f;
		float rad = sqrtf(-2.0f * logf(u1)) * sd;
		float th = 6.2831853071795864f * u2;

		x[i] = mean + rad * cosf(th);
		if (i + 1 < n)
			x[i + 1] = mean + rad * sinf(th);
	}
}

static void gen_uniform(struct rng *r, float *x, size_t n, float lo, float hi)
{
	for (size_t i = 0; i < n; i++)
		x[i] = lo + (hi - lo) * ((float)(rng_next(r) >> 40) * 0x1p-24f);
}

struct rgen {
	const gf_config *cfg;
	const gf_tensor_spec *specs;
	const gf_tensor *infos;
	uint64_t seed;
	int n_threads;
	/* The tensor being generated; workers take blocks by atomic counter. */
	int idx;
	void *dst;
	size_t n_blocks;
	size_t next_block;
};

static void gen_block(const struct rgen *g, size_t blk, float *tmp)
{
	const gf_tensor_spec *s = &g->specs[g->idx];
	const gf_tensor *t = &g->infos[g->idx];
	size_t n_total = t->nbytes / gf_dtype_size(t->dtype);
	size_t first = blk * RAND_BLOCK, n = n_total - first < RAND_BLOCK ? n_total - first :
									  RAND_BLOCK;
	struct rng r;
	float fan_in;

	rng_seed(&r, g->seed, (uint64_t)g->idx, blk);
	switch (s->init) {
	case GF_INIT_EMB:
		gen_normal(&r, tmp, n, 0.0f, 1.0f);
		break;
	case GF_INIT_LINEAR:
		fan_in = (float)(s->n_dims ? s->shape[s->n_dims - 1] : 1);
		gen_normal(&r, tmp, n, 0.0f, 1.0f / sqrtf(fan_in));
		break;
	case GF_INIT_LORA_W1:
		gen_normal(&r, tmp, n, 0.0f, 1.0f / sqrtf((float)g->cfg->n_embd));
		break;
	case GF_INIT_LORA_W2:
	case GF_INIT_FAAAA:
		gen_normal(&r, tmp, n, 0.0f, 0.1f);
		break;
	case GF_INIT_LN_W:
		gen_normal(&r, tmp, n, 1.0f, 0.1f);
		break;
	case GF_INIT_LN_B:
		gen_normal(&r, tmp, n, 0.0f, 0.1f);
		break;
	case GF_INIT_MAA:
		gen_uniform(&r, tmp, n, 0.0f, 1.0f);
		break;
	case GF_INIT_DECAY:
		gen_uniform(&r, tmp, n, -5.0f, -0.5f);
		break;
	default:
		memset(tmp, 0, n * sizeof(float));
		break;
	}
	from_f32(t->dtype, tmp, (char *)g->dst + first * gf_dtype_size(t->dtype), n);
}

static void *gen_worker(void *arg)
{
	struct rgen *g = arg;
	float *tmp = malloc(RAND_BLOCK * sizeof(float));

	if (!tmp)
		return (void *)1;
	for (;;) {
		size_t blk = __atomic_fetch_add(&g->next_block, 1, __ATOMIC_RELAXED);

		if (blk >= g->n_blocks)
			break;
		gen_block(g, blk, tmp);
	}
	free(tmp);
	return NULL;
}

static int fill_random(void *user, int idx, void *dst, char *err)
{
	struct rgen *g = user;
	const gf_tensor *t = &g->infos[idx];
	size_t n = t->nbytes / gf_dtype_size(t->dtype);
	pthread_t th[MAX_THREADS];
	int n_th, started = 0, failed = 0;

	g->idx = idx;
	g->dst = dst;
	g->n_blocks = (n + RAND_BLOCK - 1) / RAND_BLOCK;
	g->next_block = 0;
	n_th = g->n_threads < (int)g->n_blocks ? g->n_threads : (int)g->n_blocks;
	if (n_th <= 1) {
		failed = gen_worker(g) != NULL;
	} else {
		for (int i = 0; i < n_th; i++) {
			if (pthread_create(&th[i], NULL, gen_worker, g))
				break;
			started++;
		}
		if (started == 0)
			failed = gen_worker(g) != NULL; /* no threads: do it here */
		for (int i = 0; i < started; i++) {
			void *ret;

			pthread_join(th[i], &ret);
			failed |= ret != NULL;
		}
	}
	if (failed) {
		gf_tset_err(err, "tensor %s: out of memory generating it", t->name);
		return -ENOMEM;
	}
	return 0;
}

static int cmd_random(const char *out, long layers, long embd, long vocab_size, long ratio,
		      uint64_t seed, int dtype, const char *vocab_path, bool bytes,
		      const char *rope_base, const char *name, long threads)
{
	char err[GF_ERR_LEN] = "", defname[GF_NAME_MAX];
	gf_config cfg;
	gf_tensor_spec *specs = NULL;
	gf_tensor *infos = NULL;
	gf_vocab vfile = { 0 };
	struct rgen g = { 0 };
	uint64_t model_id = 0;
	int n_specs = 0, rc = 1;

	if (gf_config_default(&cfg, (int)layers, (int)embd, (int)vocab_size, (int)ratio, err))
		return die("%s", err);
	if (rope_base) {
		char *end;
		double b = strtod(rope_base, &end);

		if (end == rope_base || *end || !isfinite(b) || b < 0 || b > 1e30)
			return die("--rope-base %s: not a non-negative number", rope_base);
		cfg.rope_base = (float)b;
	}
	if (vocab_path || bytes) {
		if (vocab_path ? gf_vocab_load_file(&vfile, vocab_path, err) : byte_vocab(&vfile))
			return die("%s", vocab_path ? err : "out of memory");
		if (vfile.n_tokens > cfg.vocab_size)
			fprintf(stderr, "gf-convert: warning: the vocabulary has %d tokens, the model "
				"only %d ids\n", vfile.n_tokens, cfg.vocab_size);
	}
	if (gf_config_tensor_specs(&cfg, &specs, &n_specs)) {
		rc = die("out of memory");
		goto out;
	}
	infos = calloc((size_t)n_specs, sizeof(*infos));
	if (!infos) {
		rc = die("out of memory");
		goto out;
	}
	for (int i = 0; i < n_specs; i++) {
		int64_t numel = gf_tset_numel(specs[i].n_dims, specs[i].shape);

		if (numel < 0) {
			rc = die("tensor %s: bad shape", specs[i].name);
			goto out;
		}
		snprintf(infos[i].name, sizeof(infos[i].name), "%s", specs[i].name);
		infos[i].dtype = (gf_dtype)dtype;
		infos[i].n_dims = specs[i].n_dims;
		memcpy(infos[i].shape, specs[i].shape, sizeof(infos[i].shape));
		infos[i].nbytes = (size_t)numel * gf_dtype_size((gf_dtype)dtype);
	}
	if (threads <= 0) {
		threads = sysconf(_SC_NPROCESSORS_ONLN);
		if (threads < 1)
			threads = 1;
		if (threads > MAX_THREADS)
			threads = MAX_THREADS;
	}
	g.cfg = &cfg;
	g.specs = specs;
	g.infos = infos;
	g.seed = seed;
	g.n_threads = (int)threads;
	if (!name) {
		snprintf(defname, sizeof(defname), "goldfinch-random-L%ld-C%ld-V%ld-R%ld-s%llu",
			 layers, embd, vocab_size, ratio, (unsigned long long)seed);
		name = defname;
	}
	if (gf_gguf_write_stream(out, &cfg, infos, n_specs, vfile.n_tokens ? &vfile : NULL, name,
				 fill_random, &g, true, &model_id, err)) {
		rc = die("%s", err);
		goto out;
	}
	print_summary(out, &cfg, infos, n_specs, vfile.n_tokens ? &vfile : NULL, model_id);
	rc = 0;
out:
	free(infos);
	free(specs);
	gf_vocab_free(&vfile);
	return rc;
}

/* ---------------------------------------------------------------------------------------
 * Command line.
 */
int main(int argc, char **argv)
{
	const char *pos[2] = { NULL, NULL }, *vocab_opt = NULL, *vocab_file = NULL;
	const char *rope_base = NULL, *name = NULL, *dtype_s = NULL;
	long layers = -1, embd = -1, ratio = 3, threads = 0;
	unsigned long long seed = 0;
	bool random = false, bytes = false;
	int n_pos = 0, dtype;

	if (gf_version_asked(argc, argv, "gf-convert"))
		return 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(a, "--random") == 0)
			random = true;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--random") == 0)
			continue;
		if (strcmp(a, "--byte-vocab") == 0) {
			bytes = true;
			continue;
		}
		if (strncmp(a, "--", 2) != 0 || strcmp(a, "--") == 0) {
			if (n_pos >= 2)
				return die("unexpected argument '%s' (see --help)", a);
			pos[n_pos++] = a;
			continue;
		}
		if (!v)
			return die("%s needs a value (see --help)", a);
		i++;
		if (strcmp(a, "--vocab") == 0) {
			vocab_opt = v;
		} else if (strcmp(a, "--vocab-file") == 0) {
			vocab_file = v;
		} else if (strcmp(a, "--rope-base") == 0) {
			rope_base = v;
		} else if (strcmp(a, "--dtype") == 0) {
			dtype_s = v;
		} else if (strcmp(a, "--name") == 0) {
			name = v;
		} else if (strcmp(a, "--layers") == 0 && random) {
			if (parse_long(v, 1, 1 << 20, &layers))
				return die("--layers %s: not a positive integer", v);
		} else if (strcmp(a, "--embd") == 0 && random) {
			if (parse_long(v, 1, 1 << 20, &embd))
				return die("--embd %s: not a positive integer", v);
		} else if (strcmp(a, "--ratio") == 0 && random) {
			if (parse_long(v, 1, 1 << 20, &ratio))
				return die("--ratio %s: not a positive integer", v);
		} else if (strcmp(a, "--threads") == 0 && random) {
			if (parse_long(v, 1, MAX_THREADS, &threads))
				return die("--threads %s: not an integer in 1..%d", v, MAX_THREADS);
		} else if (strcmp(a, "--seed") == 0 && random) {
			char *end;

			errno = 0;
			seed = strtoull(v, &end, 0);
			if (errno || end == v || *end || v[0] == '-')
				return die("--seed %s: not an unsigned 64-bit integer", v);
		} else {
			return die("unknown option %s%s (see --help)", a,
				   random ? "" : " (without --random)");
		}
	}
	if (bytes && (vocab_opt && !random ? vocab_opt : vocab_file))
		return die("--byte-vocab and a vocabulary file exclude each other");
	if (name && strlen(name) >= GF_NAME_MAX)
		return die("--name: longer than %d bytes", GF_NAME_MAX - 1);

	if (random) {
		long vocab_size = -1;

		if (n_pos != 1)
			return die("--random takes exactly one output file (see --help)");
		if (layers < 0 || embd < 0 || !vocab_opt)
			return die("--random needs --layers, --embd and --vocab (see --help)");
		if (parse_long(vocab_opt, 1, 1 << 30, &vocab_size))
			return die("--vocab %s: not a positive integer (with --random it is the "
				   "vocabulary size; --vocab-file embeds a vocabulary)", vocab_opt);
		dtype = GF_DTYPE_F32;
		if (dtype_s && parse_dtype(dtype_s, false, &dtype))
			return die("--dtype %s: must be f32, f16 or bf16", dtype_s);
		return cmd_random(pos[0], layers, embd, vocab_size, ratio, seed, dtype, vocab_file,
				  bytes, rope_base, name, threads);
	}
	if (n_pos != 2)
		return die("expected IN and OUT.gguf (see --help)");
	dtype = -1;
	if (dtype_s && parse_dtype(dtype_s, true, &dtype))
		return die("--dtype %s: must be keep, f32, f16 or bf16", dtype_s);
	return cmd_convert(pos[0], pos[1], vocab_file ? vocab_file : vocab_opt, bytes, rope_base,
			   dtype, name);
}
