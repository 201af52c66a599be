/*
 * gemm.c — packed weights and the kernels over them; see gemm.h.
 *
 * A kernel call computes a tile of MR rows by one panel (64 columns): MR x 4 vector
 * accumulators live in registers for the whole pass down the panel's k rows, and every
 * weight vector loaded is used by MR rows. In a prefill the panel's k rows are taken in
 * blocks of KBLOCK that stay in L2 while every row tile passes over them (the accumulators
 * go to y between blocks and come back: exact, f32 both ways). In decode (a few rows) each
 * panel is read once from memory, so it is prefetched well ahead with the non-temporal hint:
 * the lines then bypass the outer caches and one core reads about 1.4x faster than with
 * plain loads (measured here, Zen 5: 39 against 28 GB/s).
 *
 * The kernels are written per instruction set with target attributes, so the library needs
 * no special flags and a CPU without AVX-512 never runs AVX-512 code.
 */
#include "gemm.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KBLOCK 1024       /* k rows of a panel that stay in L2 across a prefill's row tiles */
#define PREFETCH_BYTES 4096 /* how far ahead of the loads a streamed panel is prefetched */

/* ---- the CPU ----------------------------------------------------------------------------- */

static unsigned long long xcr0(void)
{
	unsigned lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((unsigned long long)hi << 32) | lo;
}

/* The highest kernel set this CPU and OS run, ignoring GOLDFINCH_ISA. */
static int cpu_isa(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid_count(1, 0, &a, &b, &c, &d))
		return GF_ISA_SCALAR;
	const bool fma = c & (1u << 12), f16c = c & (1u << 29), osxsave = c & (1u << 27);
	if (!osxsave || !fma || !f16c)
		return GF_ISA_SCALAR;
	const unsigned long long x = xcr0();
	if ((x & 0x6) != 0x6) /* XMM and YMM state */
		return GF_ISA_SCALAR;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 5))) /* AVX2 */
		return GF_ISA_SCALAR;
	const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31); /* F DQ BW VL */
	if ((b & avx512) == avx512 && (x & 0xe6) == 0xe6) /* opmask, ZMM_Hi256, Hi16_ZMM */
		return GF_ISA_AVX512;
	return GF_ISA_AVX2;
}

int gf_isa_detect(void)
{
	int isa = cpu_isa();
	const char *cap = getenv("GOLDFINCH_ISA");
	if (cap && !strcmp(cap, "scalar"))
		isa = GF_ISA_SCALAR;
	else if (cap && !strcmp(cap, "avx2") && isa > GF_ISA_AVX2)
		isa = GF_ISA_AVX2;
	return isa;
}

const char *gf_isa_name(int isa)
{
	return isa == GF_ISA_AVX512 ? "avx512" : isa == GF_ISA_AVX2 ? "avx2" : "scalar";
}

bool gf_cpu_has_avx512_bf16(void)
{
	unsigned a, b, c, d;
	if (cpu_isa() != GF_ISA_AVX512 || !__get_cpuid_count(7, 1, &a, &b, &c, &d))
		return false;
	return a & (1u << 5);
}

/* ---- packing ------------------------------------------------------------------------------- */

int gf_mat_kp(gf_dtype t, int k)
{
	return t == GF_DTYPE_BF16 ? (k + 31) & ~31 : k;
}

size_t gf_mat_bytes(gf_dtype t, int k, int n)
{
	const size_t panels = (size_t)(n + GF_PANEL - 1) / GF_PANEL;
	return panels * (size_t)gf_mat_kp(t, k) * GF_PANEL * gf_dtype_size(t);
}

static float src_elem(const void *src, gf_dtype t, size_t i)
{
	switch (t) {
	case GF_DTYPE_F16:
		return gf_f16_to_f32(((const uint16_t *)src)[i]);
	case GF_DTYPE_BF16:
		return gf_bf16_to_f32(((const uint16_t *)src)[i]);
	default:
		return ((const float *)src)[i];
	}
}

void gf_mat_pack_panels(void *dst, gf_dtype t, const void *src, gf_dtype src_t, int k, int n,
			bool nk, int p0, int p1)
{
	const int kp = gf_mat_kp(t, k);
	const size_t es = gf_dtype_size(t), ses = gf_dtype_size(src_t);
	for (int p = p0; p < p1; p++) {
		char *pan = (char *)dst + (size_t)p * kp * GF_PANEL * es;
		const int c1 = n - p * GF_PANEL < GF_PANEL ? n - p * GF_PANEL : GF_PANEL;
		for (int c = 0; c < c1; c++) {
			const int col = p * GF_PANEL + c;
			/* nk: the column is a source row, relative to row p0*64 */
			const size_t at0 = nk ? (size_t)(col - p0 * GF_PANEL) * k : (size_t)col;
			const size_t step = nk ? 1 : (size_t)n;
			for (int kk = 0; kk < k; kk++) {
				const size_t at = at0 + (size_t)kk * step;
				const size_t to = t == GF_DTYPE_BF16 ?
					(size_t)(kk / 2) * 2 * GF_PANEL + (size_t)c * 2 + (kk & 1) :
					(size_t)kk * GF_PANEL + c;
				if (t == src_t) {
					memcpy(pan + to * es, (const char *)src + at * ses, es);
					continue;
				}
				const float f = src_elem(src, src_t, at);
				if (t == GF_DTYPE_F32)
					((float *)pan)[to] = f;
				else if (t == GF_DTYPE_BF16)
					((uint16_t *)pan)[to] = gf_f32_to_bf16(f);
				else
					((uint16_t *)pan)[to] = gf_f32_to_f16(f);
			}
		}
	}
}

void gf_mat_pack(gf_mat *B, void *dst, gf_dtype t, const void *src, gf_dtype src_t, int k,
		 int n, bool nk)
{
	memset(dst, 0, gf_mat_bytes(t, k, n));
	gf_mat_pack_panels(dst, t, src, src_t, k, n, nk, 0, (n + GF_PANEL - 1) / GF_PANEL);
	B->p = dst;
	B->dtype = t;
	B->k = k;
	B->n = n;
	B->kp = gf_mat_kp(t, k);
}

/* ---- scalar kernels -------------------------------------------------------------------------
 * The reference arithmetic, and the path of a CPU without AVX2: fmaf per element, k in order. */

static float mat_elem(const gf_mat *B, const char *pan, int kk, int c)
{
	switch (B->dtype) {
	case GF_DTYPE_F16:
		return gf_f16_to_f32(((const uint16_t *)pan)[(size_t)kk * GF_PANEL + c]);
	case GF_DTYPE_BF16:
		return gf_bf16_to_f32(((const uint16_t *)pan)[(size_t)(kk / 2) * 2 * GF_PANEL +
							      (size_t)c * 2 + (kk & 1)]);
	default:
		return ((const float *)pan)[(size_t)kk * GF_PANEL + c];
	}
}

static void gemm_scalar(const gf_mat *B, const float *x, int ldx, int m, float *y, int ldy,
			bool accumulate, int p0, int p1)
{
	const size_t pstride = (size_t)B->kp * GF_PANEL * gf_dtype_size(B->dtype);
	for (int p = p0; p < p1; p++) {
		const char *pan = (const char *)B->p + (size_t)p * pstride;
		const int c1 = B->n - p * GF_PANEL < GF_PANEL ? B->n - p * GF_PANEL : GF_PANEL;
		for (int i = 0; i < m; i++)
			for (int c = 0; c < c1; c++) {
				float *yo = y + (size_t)i * ldy + p * GF_PANEL + c;
				float acc = accumulate ? *yo : 0.0f;
				for (int kk = 0; kk < B->k; kk++)
					acc = fmaf(x[(size_t)i * ldx + kk], mat_elem(B, pan, kk, c), acc);
				*yo = acc;
			}
	}
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#define INLINE static inline __attribute__((always_inline))

/* Prefetches the `lines` cache lines at `at` + PREFETCH_BYTES with the non-temporal hint. */
#define PREFETCH_AHEAD(at, lines)                                                        \
	do {                                                                             \
		for (int l_ = 0; l_ < (lines); l_++)                                     \
			_mm_prefetch((const char *)(at) + PREFETCH_BYTES + 64 * l_,      \
				     _MM_HINT_NTA);                                      \
	} while (0)

/* ---- AVX-512 ------------------------------------------------------------------------------ */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

/* Four vectors of a panel row: f32 loaded, f16 widened. */
INLINE T512 __m512 ld512(const int dt, const char *pan, size_t elem)
{
	if (dt == GF_DTYPE_F32)
		return _mm512_loadu_ps((const float *)pan + elem);
	return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)pan + elem)));
}

/* MR rows x one panel, rows [k0, k1) of it, for f32 and f16 panels ([k][64]). */
INLINE T512 void tile512(const int MR, const int dt, const float *x, int ldx, const char *pan,
			 int k0, int k1, float *y, int ldy, bool from_y, const __mmask16 *mk,
			 bool stream)
{
	__m512 acc[6][4];
#pragma GCC unroll 6
	for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			acc[i][j] = from_y ? _mm512_maskz_loadu_ps(mk[j], y + (size_t)i * ldy + 16 * j) :
					     _mm512_setzero_ps();
	const size_t es = dt == GF_DTYPE_F32 ? 4 : 2;
	for (int kk = k0; kk < k1; kk++) {
		const size_t e = (size_t)kk * GF_PANEL;
		if (stream)
			PREFETCH_AHEAD(pan + e * es, (int)es);
		const __m512 b0 = ld512(dt, pan, e), b1 = ld512(dt, pan, e + 16);
		const __m512 b2 = ld512(dt, pan, e + 32), b3 = ld512(dt, pan, e + 48);
#pragma GCC unroll 6
		for (int i = 0; i < MR; i++) {
			const __m512 a = _mm512_set1_ps(x[(size_t)i * ldx + kk]);
			acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
			acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
			acc[i][2] = _mm512_fmadd_ps(a, b2, acc[i][2]);
			acc[i][3] = _mm512_fmadd_ps(a, b3, acc[i][3]);
		}
	}
#pragma GCC unroll 6
	for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			_mm512_mask_storeu_ps(y + (size_t)i * ldy + 16 * j, mk[j], acc[i][j]);
}

/* MR rows x one bf16 panel ([k/2][64][2]): each 32-bit lane holds a column's values at k
 * (low half) and k+1 (high half); a bf16 is the top half of its float, so widening is one
 * shift or one mask. k0 is even. */
INLINE T512 void tile512_bf16(const int MR, const float *x, int ldx, const char *pan, int k0,
			      int k1, float *y, int ldy, bool from_y, const __mmask16 *mk,
			      bool stream)
{
	__m512 acc[4][4];
	const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 4
	for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			acc[i][j] = from_y ? _mm512_maskz_loadu_ps(mk[j], y + (size_t)i * ldy + 16 * j) :
					     _mm512_setzero_ps();
	const uint16_t *p16 = (const uint16_t *)pan;
	int kk = k0;
	for (; kk + 1 < k1; kk += 2) {
		const uint16_t *row = p16 + (size_t)kk * GF_PANEL;
		if (stream)
			PREFETCH_AHEAD(row, 4);
		const __m512i r0 = _mm512_loadu_si512(row), r1 = _mm512_loadu_si512(row + 32);
		const __m512i r2 = _mm512_loadu_si512(row + 64), r3 = _mm512_loadu_si512(row + 96);
		__m512 b0 = _mm512_castsi512_ps(_mm512_slli_epi32(r0, 16));
		__m512 b1 = _mm512_castsi512_ps(_mm512_slli_epi32(r1, 16));
		__m512 b2 = _mm512_castsi512_ps(_mm512_slli_epi32(r2, 16));
		__m512 b3 = _mm512_castsi512_ps(_mm512_slli_epi32(r3, 16));
#pragma GCC unroll 4
		for (int i = 0; i < MR; i++) {
			const __m512 a = _mm512_set1_ps(x[(size_t)i * ldx + kk]);
			acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
			acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
			acc[i][2] = _mm512_fmadd_ps(a, b2, acc[i][2]);
			acc[i][3] = _mm512_fmadd_ps(a, b3, acc[i][3]);
		}
		b0 = _mm512_castsi512_ps(_mm512_and_si512(r0, high));
		b1 = _mm512_castsi512_ps(_mm512_and_si512(r1, high));
		b2 = _mm512_castsi512_ps(_mm512_and_si512(r2, high));
		b3 = _mm512_castsi512_ps(_mm512_and_si512(r3, high));
#pragma GCC unroll 4
		for (int i = 0; i < MR; i++) {
			const __m512 a = _mm512_set1_ps(x[(size_t)i * ldx + kk + 1]);
			acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
			acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
			acc[i][2] = _mm512_fmadd_ps(a, b2, acc[i][2]);
			acc[i][3] = _mm512_fmadd_ps(a, b3, acc[i][3]);
		}
	}
	if (kk < k1) { /* an odd k: its last row has the low halves only */
		const uint16_t *row = p16 + (size_t)kk * GF_PANEL;
		__m512 b[4];
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			b[j] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(row + 32 * j), 16));
#pragma GCC unroll 4
		for (int i = 0; i < MR; i++) {
			const __m512 a = _mm512_set1_ps(x[(size_t)i * ldx + kk]);
#pragma GCC unroll 4
			for (int j = 0; j < 4; j++)
				acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
		}
	}
#pragma GCC unroll 4
	for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			_mm512_mask_storeu_ps(y + (size_t)i * ldy + 16 * j, mk[j], acc[i][j]);
}

#define MR512 6
#define MR512_BF16 4

/* Rows [i, i + r) of a panel, r <= the tile height, as a call with r a constant. */
static T512 void rows512(int dt, int r, const float *x, int ldx, const char *pan, int k0,
			 int k1, float *y, int ldy, bool from_y, const __mmask16 *mk, bool stream)
{
#define TILE(R)                                                                             \
	case R:                                                                             \
		if (dt == GF_DTYPE_BF16)                                                    \
			tile512_bf16((R) < 4 ? (R) : 4, x, ldx, pan, k0, k1, y, ldy, from_y, mk, \
				     stream);                                               \
		else if (dt == GF_DTYPE_F16)                                                \
			tile512(R, GF_DTYPE_F16, x, ldx, pan, k0, k1, y, ldy, from_y, mk,   \
				stream);                                                    \
		else                                                                        \
			tile512(R, GF_DTYPE_F32, x, ldx, pan, k0, k1, y, ldy, from_y, mk,   \
				stream);                                                    \
		break;
	switch (r) {
		TILE(1)
		TILE(2)
		TILE(3)
		TILE(4)
		TILE(5)
		TILE(6)
	default:
		break;
	}
#undef TILE
}

static T512 void gemm512(const gf_mat *B, const float *x, int ldx, int m, float *y, int ldy,
			 bool accumulate, int p0, int p1, bool stream)
{
	const int dt = B->dtype, K = B->k;
	const int mr = dt == GF_DTYPE_BF16 ? MR512_BF16 : MR512;
	const size_t pstride = (size_t)B->kp * GF_PANEL * gf_dtype_size(B->dtype);
	/* Few rows read each panel once: no point keeping k blocks for the next tile. */
	const int kb = m <= mr ? K : KBLOCK;
	for (int p = p0; p < p1; p++) {
		const char *pan = (const char *)B->p + (size_t)p * pstride;
		const int cols = B->n - p * GF_PANEL;
		__mmask16 mk[4];
		for (int j = 0; j < 4; j++) {
			const int c = cols - 16 * j;
			mk[j] = c >= 16 ? (__mmask16)0xffff : c > 0 ? (__mmask16)((1u << c) - 1) : 0;
		}
		float *yp = y + (size_t)p * GF_PANEL;
		for (int k0 = 0; k0 < K; k0 += kb) {
			const int k1 = K - k0 < kb ? K : k0 + kb;
			for (int i = 0; i < m; i += mr)
				rows512(dt, m - i < mr ? m - i : mr, x + (size_t)i * ldx, ldx,
					pan, k0, k1, yp + (size_t)i * ldy, ldy, accumulate || k0 > 0, mk,
					stream);
		}
	}
}

/* ---- AVX2 ----------------------------------------------------------------------------------
 * 16 vector registers: a tile is MR rows by half a panel (32 columns, 4 vectors). A partial
 * last panel goes through a 64-column scratch tile, so loads and stores stay whole vectors. */

#define T256 __attribute__((target("avx2,fma,f16c")))

INLINE T256 __m256 ld256(const int dt, const char *pan, size_t elem)
{
	if (dt == GF_DTYPE_F32)
		return _mm256_loadu_ps((const float *)pan + elem);
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)pan + elem)));
}

/* MR rows x 32 columns starting at column c0 of an f32 or f16 panel. */
INLINE T256 void tile256(const int MR, const int dt, const float *x, int ldx, const char *pan,
			 int c0, int k0, int k1, float *y, int ldy, bool from_y, bool stream)
{
	__m256 acc[3][4];
#pragma GCC unroll 3
	for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			acc[i][j] = from_y ? _mm256_loadu_ps(y + (size_t)i * ldy + c0 + 8 * j) :
					     _mm256_setzero_ps();
	const size_t es = dt == GF_DTYPE_F32 ? 4 : 2;
	for (int kk = k0; kk < k1; kk++) {
		const size_t e = (size_t)kk * GF_PANEL + (size_t)c0;
		if (stream)
			PREFETCH_AHEAD(pan + e * es, (int)es / 2);
		__m256 a[3];
#pragma GCC unroll 3
		for (int i = 0; i < MR; i++)
			a[i] = _mm256_broadcast_ss(x + (size_t)i * ldx + kk);
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++) {
			const __m256 b = ld256(dt, pan, e + 8 * (size_t)j);
#pragma GCC unroll 3
			for (int i = 0; i < MR; i++)
				acc[i][j] = _mm256_fmadd_ps(a[i], b, acc[i][j]);
		}
	}
#pragma GCC unroll 3
	for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			_mm256_storeu_ps(y + (size_t)i * ldy + c0 + 8 * j, acc[i][j]);
}

/* MR rows x 32 columns of a bf16 panel: a vector of 16 halves holds 8 columns at k and k+1. */
INLINE T256 void tile256_bf16(const int MR, const float *x, int ldx, const char *pan, int c0,
			      int k0, int k1, float *y, int ldy, bool from_y, bool stream)
{
	__m256 acc[2][4];
	const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 2
	for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			acc[i][j] = from_y ? _mm256_loadu_ps(y + (size_t)i * ldy + c0 + 8 * j) :
					     _mm256_setzero_ps();
	const uint16_t *p16 = (const uint16_t *)pan;
	int kk = k0;
	for (; kk < k1; kk += 2) {
		const bool pair = kk + 1 < k1;
		const uint16_t *row = p16 + (size_t)kk * GF_PANEL + 2 * (size_t)c0;
		if (stream)
			PREFETCH_AHEAD(row, 2);
		__m256 ae[2], ao[2];
#pragma GCC unroll 2
		for (int i = 0; i < MR; i++) {
			ae[i] = _mm256_broadcast_ss(x + (size_t)i * ldx + kk);
			ao[i] = pair ? _mm256_broadcast_ss(x + (size_t)i * ldx + kk + 1) :
				       _mm256_setzero_ps();
		}
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++) {
			const __m256i r = _mm256_loadu_si256((const __m256i *)(row + 16 * j));
			const __m256 be = _mm256_castsi256_ps(_mm256_slli_epi32(r, 16));
#pragma GCC unroll 2
			for (int i = 0; i < MR; i++)
				acc[i][j] = _mm256_fmadd_ps(ae[i], be, acc[i][j]);
			if (pair) {
				const __m256 bo = _mm256_castsi256_ps(_mm256_and_si256(r, high));
#pragma GCC unroll 2
				for (int i = 0; i < MR; i++)
					acc[i][j] = _mm256_fmadd_ps(ao[i], bo, acc[i][j]);
			}
		}
	}
#pragma GCC unroll 2
	for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++)
			_mm256_storeu_ps(y + (size_t)i * ldy + c0 + 8 * j, acc[i][j]);
}

#define MR256 3
#define MR256_BF16 2

static T256 void rows256(int dt, int r, const float *x, int ldx, const char *pan, int k0, int k1,
			 float *y, int ldy, bool from_y, bool stream)
{
	for (int c0 = 0; c0 < GF_PANEL; c0 += 32) {
#define TILE(R)                                                                               \
	case R:                                                                               \
		if (dt == GF_DTYPE_BF16)                                                      \
			tile256_bf16((R) < 2 ? (R) : 2, x, ldx, pan, c0, k0, k1, y, ldy, from_y, \
				     stream);                                                 \
		else if (dt == GF_DTYPE_F16)                                                  \
			tile256(R, GF_DTYPE_F16, x, ldx, pan, c0, k0, k1, y, ldy, from_y, stream); \
		else                                                                          \
			tile256(R, GF_DTYPE_F32, x, ldx, pan, c0, k0, k1, y, ldy, from_y, stream); \
		break;
		switch (r) {
			TILE(1)
			TILE(2)
			TILE(3)
		default:
			break;
		}
#undef TILE
	}
}

static T256 void gemm256(const gf_mat *B, const float *x, int ldx, int m, float *y, int ldy,
			 bool accumulate, int p0, int p1, bool stream)
{
	const int dt = B->dtype, K = B->k;
	const int mr = dt == GF_DTYPE_BF16 ? MR256_BF16 : MR256;
	const size_t pstride = (size_t)B->kp * GF_PANEL * gf_dtype_size(B->dtype);
	const int kb = m <= mr ? K : KBLOCK;
	float tmp[MR256 * GF_PANEL];
	for (int p = p0; p < p1; p++) {
		const char *pan = (const char *)B->p + (size_t)p * pstride;
		const int cols = B->n - p * GF_PANEL;
		float *yp = y + (size_t)p * GF_PANEL;
		for (int i = 0; i < m; i += mr) {
			const int r = m - i < mr ? m - i : mr;
			float *yt = yp + (size_t)i * ldy;
			int ld = ldy;
			if (cols < GF_PANEL) { /* the partial last panel: through tmp */
				memset(tmp, 0, sizeof(tmp));
				if (accumulate)
					for (int t = 0; t < r; t++)
						memcpy(tmp + t * GF_PANEL, yt + (size_t)t * ldy,
						       sizeof(float) * (size_t)cols);
				yt = tmp;
				ld = GF_PANEL;
			}
			for (int k0 = 0; k0 < K; k0 += kb) {
				const int k1 = K - k0 < kb ? K : k0 + kb;
				rows256(dt, r, x + (size_t)i * ldx, ldx, pan, k0, k1, yt, ld,
					accumulate || k0 > 0, stream);
			}
			if (cols < GF_PANEL)
				for (int t = 0; t < r; t++)
					memcpy(yp + (size_t)(i + t) * ldy, tmp + t * GF_PANEL,
					       sizeof(float) * (size_t)cols);
		}
	}
}

#endif /* x86-64 */

void gf_gemm_panels(int isa, const gf_mat *B, const float *x, int ldx, int m, float *y, int ldy,
		    bool accumulate, int p0, int p1, bool stream)
{
	if (m < 1 || p0 >= p1)
		return;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	if (isa == GF_ISA_AVX512) {
		gemm512(B, x, ldx, m, y, ldy, accumulate, p0, p1, stream);
		return;
	}
	if (isa == GF_ISA_AVX2) {
		gemm256(B, x, ldx, m, y, ldy, accumulate, p0, p1, stream);
		return;
	}
#else
	(void)isa;
	(void)stream;
#endif
	gemm_scalar(B, x, ldx, m, y, ldy, accumulate, p0, p1);
}
