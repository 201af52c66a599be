/*
 * dnnl.c — bf16 compute through oneDNN's matmul; see dnnl.h.
 *
 * oneDNN (Debian's libdnnl, OpenMP runtime) is called from the engine's own pool threads, one
 * task per call, each call on one OpenMP thread: the pool already holds the thread budget,
 * and a fixed task per call is what makes the bits independent of the thread count.
 * Everything a call needs (primitives, memory objects, streams, scratchpads) is made up front,
 * so a prefill allocates nothing.
 */
#include "dnnl.h"
#include "gemm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef GF_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#include <immintrin.h>

/* libgomp's, which oneDNN runs on: the calling thread's team size for its next calls. */
extern void omp_set_num_threads(int n);

#define MAX_PRIMS 64

struct prim {
	int k, width;            /* a task: GF_DNNL_ROWS rows x width columns of a k-deep product */
	dnnl_primitive_t p;
	dnnl_memory_desc_t src, wei, dst, pad;
	size_t pad_bytes;
};

struct gf_dnnl {
	dnnl_engine_t eng;
	struct prim prims[MAX_PRIMS];
	int n_prims;
	int max_k;
	size_t max_pad;
};

struct scratch_part {
	dnnl_stream_t stream;
	float *tile;             /* [GF_DNNL_ROWS][GF_DNNL_COLS] */
	void *pad;               /* the scratchpad of any primitive */
	dnnl_memory_t (*mem)[4]; /* [n_prims][src, wei, dst, pad] */
};

struct gf_dnnl_scratch {
	const gf_dnnl *d;
	uint16_t *xb;            /* [max_rows rounded up to GF_DNNL_ROWS][max_k] bf16 rows */
	int max_rows;
	int n_parts;
	int n_prims;             /* memory objects per part, kept so that freeing needs no model */
	struct scratch_part *parts;
};

static const struct prim *find_prim(const gf_dnnl *d, int k, int width)
{
	for (int i = 0; i < d->n_prims; i++)
		if (d->prims[i].k == k && d->prims[i].width == width)
			return &d->prims[i];
	return NULL;
}

static int prim_index(const gf_dnnl *d, const struct prim *p)
{
	return (int)(p - d->prims);
}

static bool eligible(const gf_mat *B)
{
	return B->p && B->dtype == GF_DTYPE_BF16 && B->k >= 128 && B->n >= 128;
}

/* The widths of B's tasks: GF_DNNL_COLS, then what is left. */
static void widths(const gf_mat *B, int *full, int *tail)
{
	*full = B->n < GF_DNNL_COLS ? B->n : GF_DNNL_COLS;
	*tail = B->n % GF_DNNL_COLS ? B->n % GF_DNNL_COLS : *full;
}

static int make_prim(gf_dnnl *d, int k, int width, char *err)
{
	if (find_prim(d, k, width))
		return 0;
	if (d->n_prims == MAX_PRIMS)
		return gf_error(err, -E2BIG, "bf16 compute: more than %d matrix shapes", MAX_PRIMS);
	struct prim *p = &d->prims[d->n_prims];
	dnnl_dims_t sd = { GF_DNNL_ROWS, k }, wd = { k, width }, dd = { GF_DNNL_ROWS, width };
	dnnl_matmul_desc_t md;
	dnnl_primitive_attr_t attr = NULL;
	dnnl_primitive_desc_t pd = NULL;
	int rc = 0;
	if (dnnl_memory_desc_init_by_tag(&p->src, 2, sd, dnnl_bf16, dnnl_ab) ||
	    dnnl_memory_desc_init_by_tag(&p->wei, 2, wd, dnnl_bf16, dnnl_BA16a64b2a) ||
	    dnnl_memory_desc_init_by_tag(&p->dst, 2, dd, dnnl_f32, dnnl_ab) ||
	    dnnl_matmul_desc_init(&md, &p->src, &p->wei, NULL, &p->dst) ||
	    dnnl_primitive_attr_create(&attr) ||
	    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) ||
	    dnnl_primitive_desc_create(&pd, &md, attr, d->eng, NULL)) {
		rc = gf_error(err, -ENOTSUP, "bf16 compute: oneDNN has no matmul for %dx%dx%d bf16",
			      GF_DNNL_ROWS, k, width);
		goto done;
	}
	const dnnl_memory_desc_t *pad = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
	p->pad = *pad;
	p->pad_bytes = dnnl_memory_desc_get_size(pad);
	if (dnnl_primitive_create(&p->p, pd)) {
		rc = gf_error(err, -ENOMEM, "bf16 compute: making the %dx%dx%d matmul failed",
			      GF_DNNL_ROWS, k, width);
		goto done;
	}
	p->k = k;
	p->width = width;
	d->n_prims++;
	if (k > d->max_k)
		d->max_k = k;
	if (p->pad_bytes > d->max_pad)
		d->max_pad = p->pad_bytes;
done:
	dnnl_primitive_desc_destroy(pd);
	dnnl_primitive_attr_destroy(attr);
	return rc;
}

static int add_mat(gf_dnnl *d, const gf_mat *B, char *err)
{
	if (!eligible(B))
		return 0;
	int full, tail;
	widths(B, &full, &tail);
	int rc = make_prim(d, B->k, full, err);
	return rc ? rc : make_prim(d, B->k, tail, err);
}

/* A shape of the model's big matrices: y [.][n] = x [.][k] . B. */
static int add_shape(gf_dnnl *d, int k, int n, char *err)
{
	const gf_mat B = { .p = d, .dtype = GF_DTYPE_BF16, .k = k, .n = n };
	return add_mat(d, &B, err);
}

/* The primitives come from the configuration alone, in one order, so that every model of one
 * configuration (an MPI rank's slice, the blocks either side of a boundary) has the same list
 * and a workspace made for one serves them all (gf_dnnl_matmul looks them up by shape). */
int gf_dnnl_create(gf_model *m, char *err)
{
	const gf_config *c = &m->cfg;
	gf_dnnl *d = calloc(1, sizeof(*d));
	if (!d)
		return gf_error(err, -ENOMEM, "out of memory");
	if (dnnl_engine_create(&d->eng, dnnl_cpu, 0)) {
		free(d);
		return gf_error(err, -ENOTSUP, "bf16 compute: oneDNN has no CPU engine");
	}
	const int C = c->n_embd, A = c->dim_att, F = c->dim_ffn;
	const int shapes[][2] = { { C, c->vocab_size }, { C + c->ckv_dim, A }, { C, A },
				  { A, C }, { C, F }, { C, C }, { F, C } };
	int rc = 0;
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]) && !rc; i++)
		rc = add_shape(d, shapes[i][0], shapes[i][1], err);
	if (rc) {
		gf_dnnl_free(d);
		return rc;
	}
	m->dnnl = d;
	return 0;
}

void gf_dnnl_free(gf_dnnl *d)
{
	if (!d)
		return;
	for (int i = 0; i < d->n_prims; i++)
		dnnl_primitive_destroy(d->prims[i].p);
	dnnl_engine_destroy(d->eng);
	free(d);
}

bool gf_dnnl_has(const gf_dnnl *d, const gf_mat *B)
{
	if (!eligible(B))
		return false;
	int full, tail;
	widths(B, &full, &tail);
	return find_prim(d, B->k, full) && find_prim(d, B->k, tail);
}

bool gf_dnnl_scratch_has(const gf_dnnl_scratch *s, const gf_mat *B)
{
	return s && gf_dnnl_has(s->d, B);
}

int gf_dnnl_scratch_init(gf_dnnl_scratch **out, const gf_model *m, int max_rows, int n_parts)
{
	const gf_dnnl *d = m->dnnl;
	*out = NULL;
	if (!d)
		return 0;
	gf_dnnl_scratch *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->d = d;
	s->max_rows = max_rows;
	s->n_parts = n_parts;
	s->n_prims = d->n_prims;
	const size_t rows = ((size_t)max_rows + GF_DNNL_ROWS - 1) / GF_DNNL_ROWS * GF_DNNL_ROWS;
	s->xb = aligned_alloc(64, (rows * (size_t)d->max_k * 2 + 63) & ~(size_t)63);
	s->parts = calloc((size_t)n_parts, sizeof(*s->parts));
	if (!s->xb || !s->parts)
		goto fail;
	for (int i = 0; i < n_parts; i++) {
		struct scratch_part *p = &s->parts[i];
		p->tile = aligned_alloc(64, sizeof(float) * GF_DNNL_ROWS * GF_DNNL_COLS);
		p->pad = aligned_alloc(64, (d->max_pad + 64) & ~(size_t)63);
		p->mem = calloc((size_t)d->n_prims, sizeof(*p->mem));
		if (!p->tile || !p->pad || !p->mem ||
		    dnnl_stream_create(&p->stream, d->eng, dnnl_stream_default_flags))
			goto fail;
		for (int j = 0; j < d->n_prims; j++) {
			const struct prim *pr = &d->prims[j];
			if (dnnl_memory_create(&p->mem[j][0], &pr->src, d->eng, DNNL_MEMORY_NONE) ||
			    dnnl_memory_create(&p->mem[j][1], &pr->wei, d->eng, DNNL_MEMORY_NONE) ||
			    dnnl_memory_create(&p->mem[j][2], &pr->dst, d->eng, DNNL_MEMORY_NONE) ||
			    dnnl_memory_create(&p->mem[j][3], &pr->pad, d->eng, p->pad))
				goto fail;
		}
	}
	*out = s;
	return 0;
fail:
	gf_dnnl_scratch_free(s);
	return -ENOMEM;
}

void gf_dnnl_scratch_free(gf_dnnl_scratch *s)
{
	if (!s)
		return;
	for (int i = 0; s->parts && i < s->n_parts; i++) {
		struct scratch_part *p = &s->parts[i];
		for (int j = 0; p->mem && j < s->n_prims; j++)
			for (int a = 0; a < 4; a++)
				if (p->mem[j][a])
					dnnl_memory_destroy(p->mem[j][a]);
		free(p->mem);
		if (p->stream)
			dnnl_stream_destroy(p->stream);
		free(p->tile);
		free(p->pad);
	}
	free(s->parts);
	free(s->xb);
	free(s);
}

/* Rows rounded to bf16 (nearest even) with AVX512-BF16, zero rows up to a whole task. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void
to_bf16(const float *x, int ldx, int n, int k, uint16_t *xb)
{
	const int rows = (n + GF_DNNL_ROWS - 1) / GF_DNNL_ROWS * GF_DNNL_ROWS;
	for (int i = 0; i < n; i++) {
		const float *src = x + (size_t)i * ldx;
		uint16_t *dst = xb + (size_t)i * k;
		int j = 0;
		for (; j + 32 <= k; j += 32) {
			const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + j + 16),
							      _mm512_loadu_ps(src + j));
			_mm512_storeu_si512(dst + j, (__m512i)v);
		}
		for (; j < k; j++)
			dst[j] = gf_f32_to_bf16(src[j]);
	}
	memset(xb + (size_t)n * k, 0, sizeof(uint16_t) * (size_t)(rows - n) * k);
}

struct mm_job {
	gf_dnnl_scratch *s;       /* its primitives (s->d) are the ones run */
	const gf_mat *B;
	const struct prim *full, *tail;
	int n, n_col_tasks, n_tasks;
	bool accumulate;
	float *y;
	int ldy;
};

static void run_tasks(void *arg, int part, int n_parts)
{
	const struct mm_job *j = arg;
	const gf_dnnl *d = j->s->d;
	struct scratch_part *sp = &j->s->parts[part];
	const int t0 = (int)((int64_t)j->n_tasks * part / n_parts);
	const int t1 = (int)((int64_t)j->n_tasks * (part + 1) / n_parts);
	const int K = j->B->k, N = j->B->n;
	omp_set_num_threads(1);
	for (int t = t0; t < t1; t++) {
		const int r0 = t / j->n_col_tasks * GF_DNNL_ROWS;
		const int c0 = t % j->n_col_tasks * GF_DNNL_COLS;
		const struct prim *p = N - c0 >= GF_DNNL_COLS ? j->full : j->tail;
		const int rows = j->n - r0 < GF_DNNL_ROWS ? j->n - r0 : GF_DNNL_ROWS;
		const bool direct = !j->accumulate && p->width == N && j->ldy == N && rows == GF_DNNL_ROWS;
		float *dst = direct ? j->y + (size_t)r0 * j->ldy : sp->tile;
		dnnl_memory_t *mem = sp->mem[prim_index(d, p)];
		dnnl_memory_set_data_handle(mem[0], j->s->xb + (size_t)r0 * K);
		/* Panels are c0/64 apart in kp*64 elements: column c0 starts at c0*kp. */
		dnnl_memory_set_data_handle(mem[1], (uint16_t *)j->B->p + (size_t)c0 * j->B->kp);
		dnnl_memory_set_data_handle(mem[2], dst);
		const dnnl_exec_arg_t args[4] = { { DNNL_ARG_SRC, mem[0] },
						  { DNNL_ARG_WEIGHTS, mem[1] },
						  { DNNL_ARG_DST, mem[2] },
						  { DNNL_ARG_SCRATCHPAD, mem[3] } };
		dnnl_primitive_execute(p->p, sp->stream, 4, args);
		dnnl_stream_wait(sp->stream);
		if (direct)
			continue;
		for (int i = 0; i < rows; i++) {
			float *yr = j->y + (size_t)(r0 + i) * j->ldy + c0;
			const float *tr = sp->tile + (size_t)i * p->width;
			if (j->accumulate)
				for (int c = 0; c < p->width; c++)
					yr[c] += tr[c];
			else
				memcpy(yr, tr, sizeof(float) * (size_t)p->width);
		}
	}
}

void gf_dnnl_matmul(const gf_dnnl *d, gf_pool *pool, gf_dnnl_scratch *s, const float *x, int ldx,
		    int n, const gf_mat *B, bool accumulate, float *y, int ldy)
{
	int full, tail;
	(void)d; /* the scratch's own, of the same configuration: same shapes, same primitives */
	widths(B, &full, &tail);
	struct mm_job j = { s, B, find_prim(s->d, B->k, full), find_prim(s->d, B->k, tail), n,
			    (B->n + GF_DNNL_COLS - 1) / GF_DNNL_COLS, 0, accumulate, y, ldy };
	j.n_tasks = (n + GF_DNNL_ROWS - 1) / GF_DNNL_ROWS * j.n_col_tasks;
	to_bf16(x, ldx, n, B->k, s->xb);
	if (s->n_parts > 1 && j.n_tasks > 1)
		gf_pool_run_n(pool, run_tasks, &j, s->n_parts);
	else
		run_tasks(&j, 0, 1);
}

#else /* no oneDNN */

int gf_dnnl_create(gf_model *m, char *err)
{
	(void)m;
	return gf_error(err, -ENOTSUP, "bf16 compute: built without oneDNN");
}

void gf_dnnl_free(gf_dnnl *d)
{
	(void)d;
}

bool gf_dnnl_has(const gf_dnnl *d, const gf_mat *B)
{
	(void)d;
	(void)B;
	return false;
}

int gf_dnnl_scratch_init(gf_dnnl_scratch **out, const gf_model *m, int max_rows, int n_parts)
{
	(void)m;
	(void)max_rows;
	(void)n_parts;
	*out = NULL;
	return 0;
}

void gf_dnnl_scratch_free(gf_dnnl_scratch *s)
{
	(void)s;
}

bool gf_dnnl_scratch_has(const gf_dnnl_scratch *s, const gf_mat *B)
{
	(void)s;
	(void)B;
	return false;
}

void gf_dnnl_matmul(const gf_dnnl *d, gf_pool *pool, gf_dnnl_scratch *s, const float *x, int ldx,
		    int n, const gf_mat *B, bool accumulate, float *y, int ldy)
{
	(void)d, (void)pool, (void)s, (void)x, (void)ldx, (void)n, (void)B, (void)accumulate;
	(void)y, (void)ldy;
}

#endif

const char *gf_compute_name(gf_compute c)
{
	return c == GF_COMPUTE_BF16 ? "bf16" : "f32";
}

bool gf_compute_bf16_available(char *why)
{
#ifndef GF_HAVE_DNNL
	gf_error(why, -ENOTSUP, "this build has no oneDNN (libdnnl-dev)");
	return false;
#else
	if (!gf_cpu_has_avx512_bf16()) {
		gf_error(why, -ENOTSUP, "this CPU has no AVX512-BF16");
		return false;
	}
	if (gf_isa_detect() != GF_ISA_AVX512) {
		gf_error(why, -ENOTSUP, "GOLDFINCH_ISA keeps the kernels below AVX-512");
		return false;
	}
	return true;
#endif
}

int gf_compute_parse(const char *s, gf_compute *out, char *err)
{
	char why[GF_ERR_LEN];
	if (!strcmp(s, "f32")) {
		*out = GF_COMPUTE_F32;
		return 0;
	}
	if (!strcmp(s, "auto")) {
		*out = gf_compute_bf16_available(NULL) ? GF_COMPUTE_BF16 : GF_COMPUTE_F32;
		return 0;
	}
	if (strcmp(s, "bf16"))
		return gf_error(err, -EINVAL, "compute '%s': expected f32, bf16 or auto", s);
	if (!gf_compute_bf16_available(why))
		return gf_error(err, -ENOTSUP, "compute bf16: %s", why);
	*out = GF_COMPUTE_BF16;
	return 0;
}

unsigned gf_compute_load_flag(gf_compute c)
{
	return c == GF_COMPUTE_BF16 ? GF_LOAD_COMPUTE_BF16 : GF_LOAD_COMPUTE_F32;
}

gf_compute gf_compute_default(void)
{
	const char *env = getenv("GOLDFINCH_COMPUTE");
	gf_compute c;
	if (env && *env && !strcmp(env, "bf16"))
		env = "auto"; /* asked, but only where it runs */
	if (env && *env && !gf_compute_parse(env, &c, NULL))
		return c;
	return gf_compute_parse(GF_COMPUTE_DEFAULT_NAME, &c, NULL) ? GF_COMPUTE_F32 : c;
}
