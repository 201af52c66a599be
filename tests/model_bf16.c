/*
 * model_bf16 — bf16 compute: oneDNN's matmul over the engine's packed bf16 weights.
 *
 *   model_bf16 [CASE_DIR...]
 *
 *   - the layout: each product equals a double-precision sum of the bf16-rounded rows times
 *     the bf16 weights (within float rounding), for shapes with n a multiple of the task
 *     width and not, k a multiple of 32 and not, with and without accumulating;
 *   - a row's bits do not depend on the other rows: a call over 256 rows against calls over
 *     its 64-row parts and over a first part of 100 rows (a padded last task), nor on the
 *     thread count (pools of 1, 2 and 3 threads);
 *   - for each reference case given (../shared/testdata/goldfinch/aN), a model loaded for
 *     bf16 compute runs the whole forward within BF16_TOL of the float64 references, and
 *     where it has oneDNN matmuls its logits differ from f32 compute's (so they really ran).
 * Exit 0 pass, 1 fail, 77 skip where this build or CPU has no bf16 compute.
 */
#include "dnnl.h"
#include "gemm.h"
#include "pool.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Measured on the reference cases: a1 8.2e-3, a2 1.9e-2 of max|ref| (their f32 weights rounded
 * to bf16 as well as the activations; a3 is small enough to run on gemm.h's kernels alone and
 * its weights are bf16 already: 1.4e-6, as f32 compute). */
#define BF16_TOL 5e-2

static float rnd(uint64_t *s)
{
	*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
	return (float)((*s >> 40) & 0xffffff) / (float)0x1000000 - 0.5f;
}

static float bf(float f)
{
	return gf_bf16_to_f32(gf_f32_to_bf16(f));
}

/* A model whose only purpose is to own oneDNN's matmuls for one matrix: its head (the
 * matmuls come from the configuration's shapes). */
static gf_model *model_for(const gf_mat *B, char *err)
{
	gf_model *m = calloc(1, sizeof(*m));
	m->compute = GF_COMPUTE_BF16;
	m->head = *B;
	m->cfg.n_embd = B->k;
	m->cfg.vocab_size = B->n;
	m->layers = calloc(1, sizeof(gf_layer));
	m->cfg.n_layer = 1;
	m->block_first = m->block_end = 0;
	if (gf_dnnl_create(m, err)) {
		free(m->layers);
		free(m);
		return NULL;
	}
	return m;
}

static void product(int k, int n, bool acc, uint64_t *s)
{
	char err[GF_ERR_LEN];
	const int M = 256, ldx = k + 1, ldy = n + 3;
	float *w = malloc(sizeof(float) * (size_t)k * n);
	for (size_t i = 0; i < (size_t)k * n; i++)
		w[i] = rnd(s);
	void *pk = aligned_alloc(64, (gf_mat_bytes(GF_DTYPE_BF16, k, n) + 63) & ~(size_t)63);
	gf_mat B;
	gf_mat_pack(&B, pk, GF_DTYPE_BF16, w, GF_DTYPE_F32, k, n, true);
	gf_model *m = model_for(&B, err);
	CHECK(m && gf_dnnl_has(m->dnnl, &B), "k %d n %d: no oneDNN matmul: %s", k, n, err);
	if (!m || !gf_dnnl_has(m->dnnl, &B)) {
		free(w), free(pk);
		return;
	}
	float *x = malloc(sizeof(float) * (size_t)M * ldx), *y0 = malloc(sizeof(float) * (size_t)M * ldy);
	float *y[4];
	for (int i = 0; i < 4; i++)
		y[i] = malloc(sizeof(float) * (size_t)M * ldy);
	for (int i = 0; i < M * ldx; i++)
		x[i] = rnd(s);
	for (int i = 0; i < M * ldy; i++)
		y0[i] = rnd(s);
	gf_pool *pool[3];
	gf_dnnl_scratch *sc[3];
	for (int t = 0; t < 3; t++) {
		CHECK(!gf_pool_init(&pool[t], t + 1) && !gf_dnnl_scratch_init(&sc[t], m, M, t + 1),
		      "pool of %d", t + 1);
	}
	/* All rows, 1, 2 and 3 threads. */
	for (int t = 0; t < 3; t++) {
		memcpy(y[t], y0, sizeof(float) * (size_t)M * ldy);
		gf_dnnl_matmul(m->dnnl, pool[t], sc[t], x, ldx, M, &B, acc, y[t], ldy);
	}
	double worst = 0;
	for (int r = 0; r < M; r += 7) /* a sample of rows: the double sums are slow */
		for (int c = 0; c < n; c++) {
			double sum = 0, mag = 0;
			for (int kk = 0; kk < k; kk++) {
				const double p = (double)bf(x[(size_t)r * ldx + kk]) * bf(w[(size_t)c * k + kk]);
				sum += p;
				mag += fabs(p);
			}
			const double base = acc ? y0[(size_t)r * ldy + c] : 0;
			const double e = fabs(y[0][(size_t)r * ldy + c] - base - sum) / (mag + fabs(base) + 1e-30);
			worst = e > worst ? e : worst;
		}
	CHECK(worst < 1e-5, "k %d n %d acc %d: relative error %.3g against the bf16 sum", k, n, acc,
	      worst);
	CHECK(!memcmp(y[0], y[1], sizeof(float) * (size_t)M * ldy) &&
		      !memcmp(y[0], y[2], sizeof(float) * (size_t)M * ldy),
	      "k %d n %d: 1, 2 and 3 threads differ", k, n);
	/* 64-row parts, from the last; then a first part of 100 rows and the rest. */
	memcpy(y[3], y0, sizeof(float) * (size_t)M * ldy);
	for (int r0 = M - 64; r0 >= 0; r0 -= 64)
		gf_dnnl_matmul(m->dnnl, pool[1], sc[1], x + (size_t)r0 * ldx, ldx, 64, &B, acc,
			       y[3] + (size_t)r0 * ldy, ldy);
	CHECK(!memcmp(y[0], y[3], sizeof(float) * (size_t)M * ldy),
	      "k %d n %d: 64-row parts differ from the whole", k, n);
	memcpy(y[3], y0, sizeof(float) * (size_t)M * ldy);
	gf_dnnl_matmul(m->dnnl, pool[0], sc[0], x, ldx, 100, &B, acc, y[3], ldy);
	gf_dnnl_matmul(m->dnnl, pool[0], sc[0], x + (size_t)100 * ldx, ldx, M - 100, &B, acc,
		       y[3] + (size_t)100 * ldy, ldy);
	int bad = 0;
	for (int r = 0; r < M; r++)
		bad += memcmp(y[0] + (size_t)r * ldy, y[3] + (size_t)r * ldy, sizeof(float) * (size_t)n) != 0;
	CHECK(bad == 0, "k %d n %d: %d rows differ when the rows are cut at 100", k, n, bad);
	for (int t = 0; t < 3; t++) {
		gf_dnnl_scratch_free(sc[t]);
		gf_pool_free(pool[t]);
	}
	for (int i = 0; i < 4; i++)
		free(y[i]);
	gf_dnnl_free(m->dnnl);
	free(m->layers), free(m);
	free(w), free(pk), free(x), free(y0);
}

static void reference_case(const char *dir)
{
	char err[GF_ERR_LEN], path[1024];
	size_t len;
	snprintf(path, sizeof(path), "%s/model.pth", dir);
	gf_tensor_set ts = { 0 };
	gf_config cfg;
	gf_model *m16, *m32;
	if (gf_tensors_read_any(&ts, path, err) || gf_config_infer(&cfg, &ts, err) ||
	    gf_model_from_tensors_flags(&m16, &cfg, &ts, GF_LOAD_COMPUTE_BF16, err) ||
	    gf_model_from_tensors_flags(&m32, &cfg, &ts, GF_LOAD_COMPUTE_F32, err)) {
		CHECK(0, "%s: %s", dir, err);
		return;
	}
	int32_t *tok = test_slurp(dir, "tokens.i32", &len);
	const int64_t T = (int64_t)(len / 4);
	float *ref = test_slurp(dir, "logits.f32", &len);
	const int V = m16->cfg.vocab_size;
	float *a = malloc(sizeof(float) * (size_t)T * V), *b = malloc(sizeof(float) * (size_t)T * V);
	CHECK(!gf_forward_full(m16, tok, T, a, NULL, NULL, NULL, err) &&
		      !gf_forward_full(m32, tok, T, b, NULL, NULL, NULL, err),
	      "%s: forward: %s", dir, err);
	double mx = 0, e16 = 0, e32 = 0;
	for (size_t i = 0; i < (size_t)T * V; i++) {
		mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
		e16 = fabs(a[i] - ref[i]) > e16 ? fabs(a[i] - ref[i]) : e16;
		e32 = fabs(b[i] - ref[i]) > e32 ? fabs(b[i] - ref[i]) : e32;
	}
	printf("%s: bf16 compute %.2e, f32 compute %.2e of max|ref| (%d tokens)\n", dir, e16 / mx,
	       e32 / mx, (int)T);
	CHECK(e16 / mx <= BF16_TOL, "%s: bf16 compute is %.3g of max|ref| off", dir, e16 / mx);
	const bool matmuls = gf_dnnl_has(m16->dnnl, &m16->head) ||
			     gf_dnnl_has(m16->dnnl, &m16->layers[0].ffn_key);
	CHECK(!matmuls || memcmp(a, b, sizeof(float) * (size_t)T * V) != 0,
	      "%s: bf16 compute gave the bits of f32 compute: it did not run", dir);
	free(a), free(b), free(tok), free(ref);
	gf_model_free(m16);
	gf_model_free(m32);
	gf_tensors_free(&ts);
}

int main(int argc, char **argv)
{
	char why[GF_ERR_LEN];
	if (!gf_compute_bf16_available(why)) {
		printf("skip: %s\n", why);
		return 77;
	}
	uint64_t s = 0x9e3779b97f4a7c15ull;
	const int shapes[][2] = { { 256, 256 }, { 768, 768 }, { 816, 768 }, { 768, 2688 },
				  { 2688, 768 }, { 300, 1100 }, { 257, 2300 } };
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
		product(shapes[i][0], shapes[i][1], i % 2 == 1, &s);
	printf("%zu products: bf16 sums, rows and threads %s\n", sizeof(shapes) / sizeof(shapes[0]),
	       test_failures ? "FAIL" : "ok");
	for (int i = 1; i < argc; i++)
		reference_case(argv[i]);
	printf("%s\n", test_failures ? "FAIL" : "ok");
	return test_failures != 0;
}
