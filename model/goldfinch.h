/*
 * goldfinch.h — the GoldFinch model engine: checkpoints, GGUF, tokenizer, forward, sampling.
 *
 * The math is ../shared/DESIGN.md §1-2. Conventions for every function here:
 *   - returns 0 or a negative errno-style code (-EINVAL bad input, -EIO I/O, -ENOMEM ...);
 *   - `err`, where taken, is a caller buffer of GF_ERR_LEN bytes (may be NULL) that receives
 *     a one-line message naming what and where ("a1.pth: tensor emb.weight: shape ...");
 *   - every object with an *_init/_load has a NULL-safe *_free;
 *   - nothing here keeps global mutable state: different objects may be used from different
 *     threads at once; one object is not thread-safe unless its comment says so.
 * Shapes are in comments, outermost dimension first (PyTorch/C order).
 */
#ifndef GOLDFINCH_H
#define GOLDFINCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GF_ERR_LEN 256
#define GF_NAME_MAX 96
#define GF_MAX_DIMS 4

/* Writes a one-line message into err (GF_ERR_LEN bytes; nothing when err is NULL) and
 * returns rc, so that `return gf_error(err, -EINVAL, "tensor %s: missing", name);` reads as
 * what it does. */
int gf_error(char *err, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------------------------------------
 * Element types. The values are GGML's type ids so GGUF files carry them unchanged.
 */
typedef enum gf_dtype {
	GF_DTYPE_F32 = 0,
	GF_DTYPE_F16 = 1,
	GF_DTYPE_BF16 = 30,
} gf_dtype;

size_t gf_dtype_size(gf_dtype t);        /* bytes per element; 0 for an unknown type */
const char *gf_dtype_name(gf_dtype t);   /* "f32", "f16", "bf16", or "?" */
float gf_f16_to_f32(uint16_t h);
uint16_t gf_f32_to_f16(float f);         /* round to nearest even */
float gf_bf16_to_f32(uint16_t b);
uint16_t gf_f32_to_bf16(float f);        /* round to nearest even */
/* Converts n elements of type t at src to float32. */
void gf_convert_to_f32(gf_dtype t, const void *src, float *dst, size_t n);

/* ------------------------------------------------------------------------------------------
 * Tensor sets: named tensors read from a checkpoint (.pth, .safetensors) or a GGUF file.
 * Data stays in the file mapping where it can (the set owns the mapping), so reading a
 * multi-GB checkpoint costs no copy.
 */
typedef struct gf_tensor {
	char name[GF_NAME_MAX];
	gf_dtype dtype;
	int n_dims;
	int64_t shape[GF_MAX_DIMS]; /* outermost first, as PyTorch prints it */
	const void *data;           /* little-endian, contiguous row-major; in the set's backing */
	size_t nbytes;
} gf_tensor;

typedef struct gf_tensor_set {
	gf_tensor *tensors; /* [n_tensors], in file order */
	int n_tensors;
	int cap;
	void *map;          /* read-only mapping backing the data (munmap on free), or NULL */
	size_t map_len;
	void **owned;       /* heap blocks owned by the set (freed on free) */
	int n_owned;
	int cap_owned;
} gf_tensor_set;

/* Official PyTorch checkpoint: zip archive + pickle (protocol 2) of an OrderedDict
 * name -> tensor; float32, bfloat16 and float16 storages. Only the pickle opcodes a
 * state_dict uses are accepted; anything else is -EINVAL with the opcode and offset. */
int gf_tensors_read_pth(gf_tensor_set *ts, const char *path, char *err);
/* .safetensors: 8-byte header length, JSON header (cJSON), data. F32, F16, BF16. */
int gf_tensors_read_safetensors(gf_tensor_set *ts, const char *path, char *err);
/* Picks the reader from the file's first bytes (zip, GGUF or safetensors). */
int gf_tensors_read_any(gf_tensor_set *ts, const char *path, char *err);
const gf_tensor *gf_tensors_find(const gf_tensor_set *ts, const char *name);
/* Appends a tensor whose data the set takes ownership of (heap block from malloc). */
int gf_tensors_add_owned(gf_tensor_set *ts, const char *name, gf_dtype dtype, int n_dims,
			 const int64_t *shape, void *data);
void gf_tensors_free(gf_tensor_set *ts);

/* ------------------------------------------------------------------------------------------
 * Vocabulary: token id -> bytes. Ids 0..n_tokens-1; id 0 is <|endoftext|>; ids with no
 * token have length 0.
 */
#define GF_TOKEN_MAX_BYTES 128

typedef struct gf_vocab {
	int32_t n_tokens;
	uint32_t *offsets; /* [n_tokens + 1]: token i is bytes[offsets[i] .. offsets[i+1]) */
	uint8_t *bytes;
} gf_vocab;

/* Reads the RWKV World vocabulary text format (`<id> <python literal> <byte length>` per
 * line, str or bytes literals); the result has max(65536, max id + 1) entries. */
int gf_vocab_load_file(gf_vocab *v, const char *path, char *err);
int gf_vocab_copy(gf_vocab *dst, const gf_vocab *src);
void gf_vocab_free(gf_vocab *v);

/* ------------------------------------------------------------------------------------------
 * Model configuration, inferred from tensor names and shapes (never hard-coded).
 * C = n_embd, A = dim_att, F = dim_ffn, N = head_size, H = n_head, G = first_gold,
 * Ck = ckv_dim, V = vocab_size. LoRA ranks are read from their tensors.
 */
typedef struct gf_config {
	int32_t n_layer, n_embd, dim_att, dim_ffn, head_size, n_head, vocab_size;
	int32_t first_gold;   /* G: blocks [0, G) are Finch-C2, [G, n_layer) are GOLD */
	int32_t ckv_dim;      /* Ck = C/16 */
	int32_t lora_maa;     /* Finch time_maa_w1 is [C][5*lora_maa] */
	int32_t lora_decay;   /* time_decay_w1 [C][lora_decay] */
	int32_t lora_value2;  /* time_value2_w1 [C][lora_value2] */
	int32_t lora_maa_q;   /* GOLD time_maa_q_w1 [C][lora_maa_q] */
	int32_t lora_maa_kv;  /* GOLD time_maa_kv_w1 [C][2*lora_maa_kv] */
	int32_t lora_key;     /* GOLD time_key_w1 [A][lora_key] */
	int32_t lora_value;   /* GOLD time_value_w1 [C][lora_value] */
	float rope_base;      /* 0 = no RoPE (the paper's models) */
	float rope_rebase;    /* 1 unless the checkpoint's config says otherwise */
	float rope_rescale;   /* 1 unless ... */
	uint64_t model_id;    /* content hash of the weights (xxh64), written by gf-convert */
} gf_config;

/* Infers every field but the rope ones and model_id (left 0) from the tensors and checks
 * that every tensor the model needs is present with the shape the config implies, and that
 * no unknown tensor is present. err names the tensor at fault. */
int gf_config_infer(gf_config *cfg, const gf_tensor_set *ts, char *err);
/* Fills cfg for a model of the official GoldFinch shape: n_layer, n_embd, vocab and ratio
 * R (G = floor(n_layer*(R-1)/R)), dim_ffn = floor(3.5*C/32)*32, head size 64 (C if C < 64),
 * and the official LoRA ranks. For gf-convert --random. */
int gf_config_default(gf_config *cfg, int n_layer, int n_embd, int vocab, int ratio, char *err);

/* How a tensor is initialised by gf-convert --random (the scheme of ../shared/testdata,
 * which keeps activations and logits at a realistic scale). */
typedef enum gf_init {
	GF_INIT_EMB,      /* N(0, 1) */
	GF_INIT_LINEAR,   /* N(0, 1/sqrt(fan_in)), fan_in = last dim */
	GF_INIT_LORA_W1,  /* N(0, 1/sqrt(C)) */
	GF_INIT_LORA_W2,  /* N(0, 0.1) */
	GF_INIT_LN_W,     /* 1 + 0.1 N(0,1) */
	GF_INIT_LN_B,     /* 0.1 N(0,1) */
	GF_INIT_MAA,      /* U(0, 1) */
	GF_INIT_DECAY,    /* U(-5, -0.5) */
	GF_INIT_FAAAA,    /* N(0, 0.1) */
} gf_init;

typedef struct gf_tensor_spec {
	char name[GF_NAME_MAX];
	int n_dims;
	int64_t shape[GF_MAX_DIMS];
	gf_init init;
} gf_tensor_spec;

/* Every tensor a model of cfg has, in the official state_dict order. *specs is malloc'd
 * (caller frees). */
int gf_config_tensor_specs(const gf_config *cfg, gf_tensor_spec **specs, int *n_specs);

/* W = 2*(n_layer - G) + 1: how many Finch-stage outputs the GOLD tail needs. */
int gf_config_tail_window(const gf_config *cfg);

/* ------------------------------------------------------------------------------------------
 * GGUF v3 files (architecture "goldfinch"): hyper-parameters as goldfinch.* metadata, the
 * tensors under their official state_dict names (dims stored innermost first, as GGUF
 * does), data aligned to general.alignment (32) for mmap, and the vocabulary as
 * tokenizer.ggml.tokens (raw bytes, one string per id).
 */
typedef struct gf_gguf {
	gf_tensor_set tensors; /* data points into the read-only mapping */
	gf_config config;
	gf_vocab vocab;        /* n_tokens 0 when the file has none */
	char name[GF_NAME_MAX];/* general.name, may be empty */
} gf_gguf;

int gf_gguf_write(const char *path, const gf_config *cfg, const gf_tensor_set *ts,
		  const gf_vocab *vocab /* NULL: none */, const char *name, char *err);
int gf_gguf_read(gf_gguf *g, const char *path, char *err);
void gf_gguf_free(gf_gguf *g);

/* ------------------------------------------------------------------------------------------
 * The model: configuration plus weights. Every matrix is packed at load into panels of 64
 * columns (gf_mat; layout in model/gemm.h) in the type the file stores it in — f32, f16 or
 * bf16, widened in registers as the products run — or in bf16 for bf16 compute
 * (GF_LOAD_COMPUTE_BF16). Vectors (norms, mixes, decays) are float32. The packed weights live
 * in huge pages where the kernel gives them (gf_model_load_slice).
 * Shapes below are the official state_dict's: nn.Linear weights [out][in], LoRA matrices
 * [in][out]; a gf_mat holds B [k][n] for y = x . B, i.e. W^T of an nn.Linear weight.
 */
typedef struct gf_mat {
	const void *p;    /* packed panels; NULL: not loaded */
	gf_dtype dtype;   /* of the packed elements */
	int32_t k, n;     /* B is [k][n] */
	int32_t kp;       /* k rows as stored per panel (bf16: rounded up to 32) */
} gf_mat;

typedef struct gf_layer {
	int is_gold;
	const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;            /* [C] */
	/* Finch-C2 time mix (is_gold == 0) */
	const float *maa_x, *maa_r, *maa_k, *maa_v, *maa_w, *maa_v2; /* [C] */
	gf_mat maa_w1;                                           /* [C][5*Dm] */
	gf_mat maa_w2[5];                                        /* [5][Dm][C], one per slice */
	const float *time_decay;                                 /* [A] */
	gf_mat decay_w1, decay_w2;                               /* [C][Dd], [Dd][A] */
	gf_mat value2_w1, value2_w2;                             /* [C][Dv2], [Dv2][A] */
	gf_mat att_receptance, att_key, att_value;               /* [A][C] */
	/* GOLD time mix (is_gold == 1) */
	const float *maa_q, *maa_v_cache, *maa_gk, *maa_gv;      /* [C]: time_maa_q/_v_cache/_k/_v */
	gf_mat maa_q_w1, maa_q_w2;                               /* [C][Dq], [Dq][C] */
	gf_mat maa_kv_w1;                                        /* [C][2*Dkv] */
	gf_mat maa_kv_w2[2];                                     /* [2][Dkv][C] */
	gf_mat key_w1, key_w2;                                   /* [A][Dk], [Dk][A] */
	gf_mat value_w1, value_w2;                               /* [C][Dval], [Dval][A] */
	gf_mat att_query;                                        /* [A][C] */
	const float *ln_q_w, *ln_q_b, *ln_k_w, *ln_k_b, *ln_v_w, *ln_v_b; /* [A] */
	/* both */
	gf_mat att_output;                                       /* [C][A] */
	const float *ln_x_w, *ln_x_b;                            /* [A] */
	const float *ffn_maa_k, *ffn_maa_r;                      /* [C] */
	gf_mat ffn_key;                                          /* [F][C] */
	gf_mat ffn_receptance;                                   /* [C][C] */
	gf_mat ffn_value;                                        /* [C][F] */
} gf_layer;

/* How the chunk GEMMs of a prefill compute (decode always multiplies float32 activations by
 * the stored weights). F32: float32 activations times the stored weights, exactly, with the
 * kernels of model/gemm.h. BF16: activations rounded to bf16 and multiplied by bf16 weights
 * through oneDNN's matmul (AVX512-BF16 CPUs only; about twice as fast, less exact). */
typedef enum gf_compute {
	GF_COMPUTE_F32 = 0,
	GF_COMPUTE_BF16 = 1,
} gf_compute;
const char *gf_compute_name(gf_compute c);   /* "f32" or "bf16" */
/* Whether this machine can run bf16 compute (built with oneDNN, a CPU with AVX512-BF16). When
 * not, why not in `why` (GF_ERR_LEN bytes, may be NULL). */
bool gf_compute_bf16_available(char *why);
/* Parses "f32", "bf16" or "auto" (bf16 where available, else f32); -EINVAL otherwise, and for
 * "bf16" where it is not available, with the reason. */
int gf_compute_parse(const char *s, gf_compute *out, char *err);
/* The GF_LOAD_COMPUTE_* flag of a compute mode. */
unsigned gf_compute_load_flag(gf_compute c);
/* The mode of loads and tools that are not told one: GOLDFINCH_COMPUTE (f32, bf16 or auto)
 * where set, else GF_COMPUTE_DEFAULT_NAME; bf16 only where available. */
gf_compute gf_compute_default(void);
#define GF_COMPUTE_DEFAULT_NAME "f32"

typedef struct gf_dnnl gf_dnnl;

typedef struct gf_model {
	gf_config cfg;
	const void *emb;                 /* [V][C] rows, in emb_dtype */
	gf_dtype emb_dtype;
	const float *ln0_w, *ln0_b;      /* [C] */
	const float *ln_out_w, *ln_out_b;/* [C] */
	gf_mat head;                     /* [V][C] */
	gf_mat w_kv_cache_a;             /* [Ck][C] */
	gf_mat w_kv_cache_b;             /* [A][C + Ck] */
	gf_layer *layers;                /* [n_layer]; only [block_first, block_end) bound */
	int block_first, block_end;      /* the blocks this instance holds (all, unless sliced) */
	gf_compute compute;              /* how prefill chunks multiply (see gf_compute) */
	int isa;                         /* the kernels' instruction set (model/gemm.h) */
	gf_dnnl *dnnl;                   /* oneDNN's matmuls, with bf16 compute; else NULL */
	gf_gguf gguf;                    /* the file's mapping (the tensors' source) */
	void **owned;                    /* heap blocks of weights, without an arena */
	int n_owned, cap_owned;
	/* With huge pages (see gf_model_load_slice) every bound weight is packed here, in
	 * 2 MiB pages. */
	char *arena;
	size_t arena_len, arena_used;
	void *arena_map;                 /* the reservation the arena is aligned within */
	size_t arena_map_len;
	int arena_fd;                    /* the file, while loading: weights are read from it */
	uint64_t weight_bytes;           /* bytes of weights bound (packed, vectors, emb) */
} gf_model;

/* Loads a GGUF written by gf-convert. The vocabulary stays in m->gguf.vocab. */
int gf_model_load(gf_model **out, const char *gguf_path, char *err);
/* Loads only what blocks [b0, b1) need (b1 < 0: to the end): an MPI rank's slice. Weights
 * of other blocks stay unbound (NULL), unread and, for bf16/f16 files, not upcast. */
int gf_model_load_blocks(gf_model **out, const char *gguf_path, int b0, int b1, char *err);
/* gf_model_load_blocks plus, with GF_LOAD_GOLD_KV, what rebuilding the keys and values of
 * every GOLD block takes (the embedding, ln0, w_kv_cache_b and each GOLD block's key/value
 * weights): for ranks that attend over spans of layers they do not own. */
#define GF_LOAD_GOLD_KV 1u
/* By default the weights a load binds are packed into memory the kernel backs with 2 MiB
 * pages where it offers transparent huge pages: a decode step streams every weight once,
 * and through 4 KiB pages it reads about a tenth slower (one TLB miss every 4 KiB).
 * GF_LOAD_MAPPED packs them into ordinary pages instead, as does GOLDFINCH_HUGE_PAGES=0 in
 * the environment or a kernel with huge pages off. The bits computed are the same either way. */
#define GF_LOAD_MAPPED 2u
/* With GF_LOAD_PREV_FFN, also block b0-1's channel mix: the rank after a pipeline boundary
 * finishes the rows the rank before it left (gf_blocks_split). */
#define GF_LOAD_PREV_FFN 4u
/* With GF_LOAD_NEXT_ATT, also the inputs of block b1's time mix (a Finch block): the rank
 * before a pipeline boundary computes rows of them for the next (gf_time_mix_ahead). */
#define GF_LOAD_NEXT_ATT 8u
/* With GF_LOAD_COMPUTE_BF16, bf16 compute (gf_compute): every matrix is held in bf16 (rounded
 * from a f32 or f16 file) and oneDNN's matmuls are made for the big ones. -ENOTSUP, with the
 * reason, where gf_compute_bf16_available says no. */
#define GF_LOAD_COMPUTE_BF16 16u
/* GF_LOAD_COMPUTE_F32 asks f32 compute; a load that names neither takes gf_compute_default(). */
#define GF_LOAD_COMPUTE_F32 32u
int gf_model_load_slice(gf_model **out, const char *gguf_path, int b0, int b1, unsigned flags,
			char *err);
/* Binds weights from any tensor set (checkpoint or GGUF) after gf_config_infer. */
int gf_model_from_tensors(gf_model **out, const gf_config *cfg, const gf_tensor_set *ts, char *err);
/* The same with GF_LOAD_COMPUTE_* flags. */
int gf_model_from_tensors_flags(gf_model **out, const gf_config *cfg, const gf_tensor_set *ts,
				unsigned flags, char *err);
void gf_model_free(gf_model *m);
/* "avx512", "avx2" or "scalar": the instruction set of the model's kernels (the CPU's best,
 * capped by GOLDFINCH_ISA where set: a way to run and test the other paths). */
const char *gf_model_isa_name(const gf_model *m);
/* Bytes of weights one decode step reads (every matrix once, as stored, one embedding row). */
uint64_t gf_model_decode_bytes(const gf_model *m);

/* ------------------------------------------------------------------------------------------
 * Recurrent state of one sequence: what a context snapshot stores besides the cache.
 * Layout equals testdata's state_after_prompt.f32.
 */
typedef struct gf_state {
	float *shift;   /* [n_layer][2][C]: [l][0] last ln1(x) into time mix, [l][1] last ln2(x) */
	float *wkv;     /* [G][H][N][N]: S[h][i][j], i = value channel, j = key channel */
	float *tail;    /* [W][C]: Finch-stage outputs of the last n_tail positions, oldest first;
			 * what the GOLD tail of the next prefill needs (W = gf_config_tail_window) */
	int32_t n_tail;
	int64_t n_pos;  /* tokens consumed */
} gf_state;

int gf_state_init(gf_state *st, const gf_config *cfg);   /* zeroed */
void gf_state_reset(gf_state *st, const gf_config *cfg);
int gf_state_copy(gf_state *dst, const gf_state *src, const gf_config *cfg); /* dst initialised */
size_t gf_state_floats(const gf_config *cfg);             /* shift + wkv (not tail) */
void gf_state_free(gf_state *st);

/* ------------------------------------------------------------------------------------------
 * Expanded keys/values of the GOLD blocks, in RAM, for positions [0, n_pos). Rebuilt from
 * the per-token cache (c, tok) only — DESIGN.md fact 1. Keeps (c, tok) too so that the
 * next position's token shift can be computed.
 */
typedef struct gf_kv {
	int64_t n_pos, cap;  /* cap: a multiple of GF_KV_BLOCK */
	float *c;        /* [cap][Ck] */
	int32_t *tok;    /* [cap] */
	float *k, *v;    /* [n_gold][cap / GF_KV_BLOCK] blocks (gf_kv_block_bytes, f32) */
	int n_gold;
	int dim;         /* A */
	size_t block_floats; /* of one key or value block */
} gf_kv;

int gf_kv_init(gf_kv *kv, const gf_config *cfg, int64_t initial_cap);
void gf_kv_free(gf_kv *kv);
void gf_kv_reset(gf_kv *kv);

/* Scratch buffers for one sequence's forward, sized once for chunks of up to max_chunk
 * tokens: the forward functions allocate nothing. Every forward function computes with
 * denormal floats flushed to zero and gives the calling thread its float mode back. A workspace
 * uses its model's oneDNN engine: free it before the model. */
typedef struct gf_workspace gf_workspace;
int gf_workspace_init(gf_workspace **out, const gf_model *m, int max_chunk);
/* The same with a pool of `threads` threads (the caller included) instead of OpenBLAS's
 * thread count: for callers that run several workspaces at once. */
int gf_workspace_init_threads(gf_workspace **out, const gf_model *m, int max_chunk, int threads);
void gf_workspace_free(gf_workspace *ws);
int gf_workspace_max_chunk(const gf_workspace *ws);

/* Finch stage (blocks 0..G-1) over n <= max_chunk tokens continuing st (updates the Finch
 * layers' shift and wkv state; not st->n_pos). Outputs, each optional (NULL):
 * x0_out [n][C] = ln0(emb[tok]), x_out [n][C] = residual after block G-1, c_out [n][Ck]. */
int gf_finch_chunk(const gf_model *m, gf_workspace *ws, gf_state *st, const int32_t *tok,
		   int n, float *x0_out, float *x_out, float *c_out);

/* Appends n positions (their c rows and tokens) to kv, expanding the key and value rows of
 * every GOLD layer the model holds (a sliced model: its own). Grows kv as needed (the only
 * allocation, amortised). */
int gf_kv_append(const gf_model *m, gf_workspace *ws, gf_kv *kv, const float *c,
		 const int32_t *tok, int64_t n);

/* Keys and values are visited in blocks of this many positions, aligned to multiples of it
 * (an online softmax across blocks). */
#define GF_KV_BLOCK 256

/* A block of keys (or of values) of one GOLD layer, laid out for the attention's products on
 * the engine's kernels (model/gemm.h panels), in f32 or bf16, heads one after the other:
 *   keys:   per head, K_h^T packed as a matrix of k = N dims by n = GF_KV_BLOCK keys;
 *   values: per head, V_h packed as a matrix of k = GF_KV_BLOCK keys by n = N dims.
 * Zeroed where unwritten. gf_kv_block_put writes rows (position-major floats, as
 * gf_kv_rebuild gives them) [row0, row0 + n) of a key block and a value block; bf16 is
 * rounded to nearest even (gf_f32_to_bf16). */
size_t gf_kv_block_bytes(const gf_config *c, gf_dtype t);
void gf_kv_block_put(const gf_config *c, gf_dtype t, const float *k, const float *v, int ld,
		     int row0, int n, void *kblock, void *vblock);

/* Where the GOLD blocks read the keys and values of cached positions [0, n_pos): expanded
 * rows in RAM (gf_kv), or rows rebuilt block by block from the per-token cache (c, tok)
 * wherever it lives (the paged store of daemon/). */
typedef struct gf_kv_source gf_kv_source;
struct gf_kv_source {
	int64_t n_pos;
	/* Keys and values of GOLD block g (0 = block G) for positions [first, first + n),
	 * first a multiple of GF_KV_BLOCK, n <= GF_KV_BLOCK: a key block and a value block
	 * (gf_kv_block_bytes, of kv_dtype) whose first n positions hold them, valid until the
	 * next call. A source that rebuilds may use gf_workspace_kv_scratch(ws), gf_kv_rebuild
	 * and gf_kv_block_put. */
	int (*get)(gf_kv_source *src, gf_workspace *ws, int g, int64_t first, int n,
		   const void **k, const void **v);
	void *user;
	/* GF_DTYPE_F32 (0: a zeroed source) or GF_DTYPE_BF16: keys and values rounded to bf16
	 * (nearest even), half the bytes of an expanded tier. A source gives
	 * every block in one type, so that where a block comes from never changes the bits. */
	gf_dtype kv_dtype;
	/* Optional (NULL: attend here through get): the whole attention of GOLD block g for n
	 * queries q [n][A] at positions p0.., y [n][A] out; for ranks that share the spans
	 * (gf_attn_spans) and must give the same bits as attending here. */
	int (*attend)(gf_kv_source *src, gf_workspace *ws, int g, const float *q, int64_t p0,
		      int n, float *y);
};

/* A source over every position of kv. */
void gf_kv_source_ram(gf_kv_source *src, const gf_kv *kv);

/* Attention is computed in spans of whole key blocks (at most GF_ATTN_MAX_SPANS of them):
 * each span's partial softmax — per query and head the max, the denominator and the
 * unnormalised output — is computed from scratch, and the partials are merged in span order.
 * The spans depend only on the number of keys, so MPI ranks can each compute some of them
 * and the merge still gives the bits of one process. A partial is gf_attn_partial_floats
 * floats: max [n*H], sum [n*H], y [n*H*N]. */
#define GF_ATTN_MAX_SPANS 64
int64_t gf_attn_span_blocks(int64_t n_keys);
int gf_attn_n_spans(int64_t n_keys);
size_t gf_attn_partial_floats(const gf_config *c, int n);
/* Partials of spans [s0, s1) for the n queries q [n][A] at p0.. (n_keys = p0 + n) of GOLD
 * block g (0 = block G), back to back in partials. Needs g's key/value weights. */
int gf_attn_spans(const gf_model *m, gf_workspace *ws, gf_kv_source *src, int g,
		  const float *q, int64_t p0, int n, int s0, int s1, float *partials);
/* An accumulator is a partial: init, merge the spans' partials in span order, finish. */
void gf_attn_acc_init(const gf_config *c, int n, float *acc);
void gf_attn_acc_merge(const gf_config *c, int n, float *acc, const float *partial);
void gf_attn_acc_finish(const gf_config *c, int n, const float *acc, float *y);

/* Two scratch blocks of [GF_KV_BLOCK][A] floats in ws, for a source to rebuild into. */
void gf_workspace_kv_scratch(gf_workspace *ws, float **k, float **v);

/* Rebuilds keys and values of GOLD block g for n <= GF_KV_BLOCK positions pos0.. from their
 * cache rows: c [n_rows][Ck] and tok [n_rows], where n_rows = n + has_prev and row 0 is the
 * position before pos0 when has_prev (pos0 > 0 requires it: the token shift reads it).
 * k, v: [n][A] out. */
int gf_kv_rebuild(const gf_model *m, gf_workspace *ws, int g, const float *c,
		  const int32_t *tok, int has_prev, int64_t pos0, int n, float *k, float *v);
/* gf_kv_rebuild in its two parts, for a caller that rebuilds several GOLD layers over the same
 * positions: the key stream (kc and rms(x0) of the n + 1 rows, layer-independent and most of
 * the work) into stream [gf_key_stream_floats], then each layer's keys and values from it.
 * The same bits as gf_kv_rebuild. */
size_t gf_key_stream_floats(const gf_config *c, int n);
int gf_key_stream(const gf_model *m, gf_workspace *ws, const float *c, const int32_t *tok,
		  int has_prev, int64_t pos0, int n, float *stream);
int gf_kv_expand(const gf_model *m, gf_workspace *ws, int g, const float *stream, int64_t pos0,
		 int n, float *k, float *v);

/* GOLD blocks + head over n <= max_chunk query positions p0..p0+n-1 whose Finch-stage
 * outputs are x_in [n][C]. The GOLD layers' shift state in st is the state before p0 (zero
 * it for a window start). src must hold positions 0..p0+n-1; the query at p sees keys 0..p.
 * logits [n][V] for every row, or only the last row ([V]) when last_only; NULL for none.
 * Errors of src->get are returned as they are. */
int gf_gold_chunk(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv_source *src,
		  const float *x_in, int64_t p0, int n, float *logits, bool last_only);

/* Zeroes the GOLD blocks' shift state and runs them over the state's window of the last
 * n_tail Finch outputs (DESIGN.md fact 3): exact logits of position st->n_pos - 1 and exact
 * GOLD shift states. src must hold positions 0..st->n_pos-1. */
int gf_gold_tail(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv_source *src,
		 float *logits_last);

/* Appends n Finch-stage output rows x [n][C] to the state's window of the last W. */
void gf_state_push_tail(const gf_config *cfg, gf_state *st, const float *x, int n);

/* ---- Slices of the forward, for a rank that owns blocks [b0, b1) --------------
 * gf_finch_chunk = gf_embed, gf_blocks(0, G), gf_cache_rows; gf_gold_chunk = gf_blocks(G, L),
 * gf_head. Composed, the slices give the same bits as the whole. */

/* x [n][C] = ln0(emb[tok]). -EINVAL for a token outside the vocabulary. */
int gf_embed(const gf_model *m, const int32_t *tok, int n, float *x);
/* Runs blocks [b0, b1) on n <= max_chunk rows of the residual stream x [n][C], in place:
 * Finch blocks carry their state in st; GOLD blocks treat the rows as positions p0.. and
 * attend through src (may be NULL when the range holds no GOLD block). */
int gf_blocks(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv_source *src, float *x,
	      int64_t p0, int n, int b0, int b1);
/* A pipeline boundary that moves (daemon/rank_part.c), with the bits of gf_blocks. Rows of two
 * stretches of work can go either side of it: the channel mix of the sending rank's last
 * block, and the row-parallel products of the next rank's first time mix.
 * gf_blocks_split runs Finch blocks [b0, b1) on x [n][C] and advances st as gf_blocks does,
 * but: block b1-1's channel mix runs on rows [0, keep) only (rows [keep, n) stay that
 * block's time-mix output, and carry [C], unless NULL, gets what their shift needs; keep = n
 * for all of them), and where ahead is not NULL, block b0's time-mix products for rows
 * [ahead_from, n) are taken from it instead of computed. gf_channel_mix_rest completes rows
 * [rows, n) of such an x, in place, in a model that holds block b's channel mix
 * (GF_LOAD_PREV_FFN). gf_time_mix_ahead computes the products of block b's time mix for rows
 * [from, n) of its input x [n][C] (the rank before b's output) into ahead, of
 * gf_ahead_floats(n - from) floats, in a model that holds that time mix
 * (GF_LOAD_NEXT_ATT); from >= 1 (its first row's token shift is row from-1). n, keep and
 * from are multiples of gf_split_step() (GF_SPLIT_ROWS: the bits stay those of the whole in
 * every shape and compute mode); -EINVAL otherwise, and for a GOLD block or a block whose
 * weights are not loaded. */
#define GF_SPLIT_ROWS 64
typedef struct gf_split {
	int keep;           /* rows of block b1-1's channel mix run here (n: all) */
	float *carry;       /* [C] or NULL */
	int ahead_from;     /* rows [ahead_from, n) of block b0's time-mix products given */
	const float *ahead; /* from gf_time_mix_ahead, or NULL: none given */
} gf_split;
int gf_split_step(const gf_config *c);
int gf_blocks_split(const gf_model *m, gf_workspace *ws, gf_state *st, float *x, int64_t p0,
		    int n, int b0, int b1, const gf_split *s);
int gf_channel_mix_rest(const gf_model *m, gf_workspace *ws, int b, float *x, int n, int rows,
			const float *carry);
size_t gf_ahead_floats(const gf_config *c, int rows);
int gf_time_mix_ahead(const gf_model *m, gf_workspace *ws, int b, const float *x, int n, int from,
		      float *ahead);
/* c [n][Ck] of the residual stream after block G-1. */
void gf_cache_rows(const gf_model *m, gf_workspace *ws, const float *x, int n, float *c);
/* logits [n][V] = head(ln_out(x)) for n <= max_chunk rows. */
void gf_head(const gf_model *m, gf_workspace *ws, const float *x, int n, float *logits);

/* Full forward over T tokens from an empty state, exact at every position: logits [T][V];
 * optional c_out [T][Ck], kc_out [T][A], finch_out [T][C]. For tests and gf-eval. */
int gf_forward_full(const gf_model *m, const int32_t *tok, int64_t T, float *logits,
		    float *c_out, float *kc_out, float *finch_out, char *err);

/* Linear prefill (DESIGN.md §2) of n tokens continuing st/kv: the Finch stage in chunks,
 * kv appended, then the GOLD tail over the last W positions only. logits_last [V]: exact
 * logits of the last token. st and kv end as after an exact forward. */
int gf_prefill(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv *kv,
	       const int32_t *tok, int64_t n, float *logits_last);

/* One decode step: token through every block, its cache row appended to kv. */
int gf_decode_step(const gf_model *m, gf_workspace *ws, gf_state *st, gf_kv *kv, int32_t tok,
		   float *logits);

/* ---- Batched decode: one token of each of B sequences in one step --------------------------
 * Every weight matrix is read once for all B rows; each row is its own sequence (its state,
 * position and key/value source; any mix of contexts and lengths). A row's arithmetic is that
 * of the sequence's step alone (gf_decode_step, or gf_finch_chunk + gf_gold_chunk of one
 * row): its logits are bit-identical whatever B, the other rows, the thread count or the
 * instruction set, in either compute mode (the rows always take the kernels of model/gemm.h,
 * never oneDNN). 1 <= B <= the workspace's max_chunk; a state (or kv) appears once. The
 * workspace is the caller's for the call, as for every forward function. */

/* Finch stage of tok[s] for each sequence st[s] (its Finch shift and wkv state advanced; not
 * n_pos): x_out [B][C] (Finch-stage outputs) and c_out [B][Ck] (cache rows), each optional.
 * -EINVAL for a bad batch or a token outside the vocabulary (nothing advanced then). */
int gf_finch_batch(const gf_model *m, gf_workspace *ws, gf_state *const *st, const int32_t *tok,
		   int B, float *x_out, float *c_out);
/* GOLD blocks and head for rows x_in [B][C]: row s is sequence s's position st[s]->n_pos - 1
 * (its token already counted in n_pos and its cache row in src[s], which holds positions
 * 0..st[s]->n_pos-1). logits [B][V] (NULL: none). Returns 0, or the first failing row's code
 * (of src->get); rcs [B] (NULL: not wanted) gets every row's code (all -EINVAL for a batch
 * refused before it ran; untouched when B or the states are wrong). A failed row's logits and
 * GOLD shift state are garbage, the other rows' are exact. */
int gf_gold_batch(const gf_model *m, gf_workspace *ws, gf_state *const *st,
		  gf_kv_source *const *src, const float *x_in, int B, float *logits, int *rcs);
/* gf_decode_step for B sequences (st[s] with kv[s]): logits [B][V]. */
int gf_decode_batch(const gf_model *m, gf_workspace *ws, gf_state *const *st, gf_kv *const *kv,
		    const int32_t *tok, int B, float *logits);

/* ------------------------------------------------------------------------------------------
 * OpenBLAS set-up. Debian's OpenBLAS picks AVX2 kernels on AVX-512 CPUs it does not know;
 * gf_blas_prefer_avx512(argv) re-executes the program once with OPENBLAS_CORETYPE=SkylakeX
 * when the CPU and OS support AVX-512 and the user has not chosen a core type. Call it first
 * thing in main, before MPI_Init. Returns only if no re-exec was needed or it failed.
 */
void gf_blas_prefer_avx512(char **argv);
void gf_blas_set_threads(int n);   /* n <= 0: leave OpenBLAS's default */
int gf_blas_threads(void);
const char *gf_blas_corename(void);

/* ------------------------------------------------------------------------------------------
 * World tokenizer: greedy longest match over bytes (a byte trie), no pre-splitting.
 */
typedef struct gf_trie_node gf_trie_node;
typedef struct gf_tokenizer {
	gf_vocab vocab;          /* own copy */
	gf_trie_node *nodes;     /* trie over token bytes */
	int32_t n_nodes, cap_nodes;
} gf_tokenizer;

int gf_tokenizer_init(gf_tokenizer *tk, const gf_vocab *vocab, char *err);
void gf_tokenizer_free(gf_tokenizer *tk);
/* Token bytes of id (NULL and *len 0 for an id out of range or without bytes). */
const uint8_t *gf_tokenizer_token(const gf_tokenizer *tk, int32_t id, size_t *len);

/* Receives ids as the encoder finalises them; a non-zero return stops the encoder and is
 * returned by feed/finish. */
typedef int (*gf_token_sink)(void *user, const int32_t *ids, size_t n);

/* Streaming encoder: input of any size, in pieces, in fixed memory. Output is identical to
 * encoding the concatenated input in one go. */
typedef struct gf_encoder {
	const gf_tokenizer *tk;
	uint8_t pending[2 * GF_TOKEN_MAX_BYTES];
	size_t n_pending;
	int32_t out[256];
	size_t n_out;
} gf_encoder;

void gf_encoder_init(gf_encoder *enc, const gf_tokenizer *tk);
int gf_encoder_feed(gf_encoder *enc, const uint8_t *data, size_t n, gf_token_sink sink, void *user);
int gf_encoder_finish(gf_encoder *enc, gf_token_sink sink, void *user);
/* One-shot encode into a malloc'd array (*ids, caller frees). */
int gf_tokenize(const gf_tokenizer *tk, const uint8_t *data, size_t n, int32_t **ids, size_t *n_ids);

/* Streaming decoder for text shown to people: emits only whole UTF-8 sequences, holding back
 * a trailing partial one until the next ids complete it; bytes that can never form valid
 * UTF-8 are passed through as they are (the output equals the concatenated token bytes). */
typedef struct gf_decoder {
	const gf_tokenizer *tk;
	uint8_t held[8];
	size_t n_held;
} gf_decoder;

void gf_decoder_init(gf_decoder *dec, const gf_tokenizer *tk);
/* Appends the bytes now complete to out (capacity cap >= GF_TOKEN_MAX_BYTES + 8); *n_out set.
 * -EINVAL for an id out of range. */
int gf_decoder_push(gf_decoder *dec, int32_t id, uint8_t *out, size_t cap, size_t *n_out);
int gf_decoder_flush(gf_decoder *dec, uint8_t *out, size_t cap, size_t *n_out);

/* ------------------------------------------------------------------------------------------
 * Sampling, with the parameter names LLM servers use. temperature <= 0 means greedy.
 * Order: penalties, then temperature, top_k, top_p, min_p, then a draw from the seeded RNG.
 */
typedef struct gf_sampling {
	float temperature;       /* 1.0 default; <= 0 greedy */
	int32_t top_k;           /* 0 = off */
	float top_p;             /* 1.0 = off */
	float min_p;             /* 0.0 = off */
	float presence_penalty;  /* subtracted once from the logit of every token already seen */
	float frequency_penalty; /* subtracted per occurrence */
	uint64_t seed;
} gf_sampling;

void gf_sampling_defaults(gf_sampling *p);
/* Validates ranges (temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1 ...). */
int gf_sampling_check(const gf_sampling *p, char *err);

typedef struct gf_sampler {
	gf_sampling p;
	int32_t vocab;
	uint64_t rng[4];      /* xoshiro256** state */
	uint32_t *counts;     /* [vocab] occurrences, for the penalties */
	int32_t *idx;         /* [vocab] scratch */
	float *prob;          /* [vocab] scratch */
} gf_sampler;

int gf_sampler_init(gf_sampler *s, int32_t vocab, const gf_sampling *p);
void gf_sampler_free(gf_sampler *s);
/* Records a token of the context or the answer for the penalties. */
void gf_sampler_accept(gf_sampler *s, int32_t tok);
/* Picks the next token from logits [vocab] (modified in place). */
int32_t gf_sampler_sample(gf_sampler *s, float *logits);

#ifdef __cplusplus
}
#endif
#endif /* GOLDFINCH_H */
