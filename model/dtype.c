/*
 * dtype.c — element types: sizes, names, and float16/bfloat16 <-> float32 conversion.
 *
 * The bulk converter is written as plain branch-free loops over integers so that the
 * compiler vectorises them (gcc -O2 does for these shapes); weights of a multi-GB
 * checkpoint go through it once at load.
 */
#include <string.h>

#include "goldfinch.h"

size_t gf_dtype_size(gf_dtype t)
{
	switch (t) {
	case GF_DTYPE_F32:
		return 4;
	case GF_DTYPE_F16:
	case GF_DTYPE_BF16:
		return 2;
	}
	return 0;
}

const char *gf_dtype_name(gf_dtype t)
{
	switch (t) {
	case GF_DTYPE_F32:
		return "f32";
	case GF_DTYPE_F16:
		return "f16";
	case GF_DTYPE_BF16:
		return "bf16";
	}
	return "?";
}

static inline uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static inline float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

/*
 * Half -> single. Placing the 5-bit exponent and 10-bit mantissa at the low end of the
 * single's exponent/mantissa fields gives a float equal to the half's value times 2^-112,
 * for normals and subnormals alike (a half subnormal lands on a single subnormal with the
 * same mantissa), so one exact multiply by 2^112 rebiases both. Only exponent 31 (inf,
 * NaN) needs the single's exponent forced to all ones.
 */
/* Exact, and the same bits whatever the float mode: a subnormal half is its integer
 * mantissa times 2^-24 (no float operand or result is subnormal), a normal one is rebiased by
 * one multiply of a normal float. Under DAZ, the multiply alone would read a subnormal half's
 * bits as zero, and a context's rows would read differently inside the forward (denormals
 * flushed) than outside it. */
static inline uint32_t f16_to_f32_bits(uint16_t h)
{
	uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
	uint32_t mag = ((uint32_t)h & 0x7fffu) << 13;
	uint32_t v = (h & 0x7c00u) ? f32_bits(bits_f32(mag) * 0x1p112f)
				   : f32_bits((float)(h & 0x3ffu) * 0x1p-24f);
	uint32_t infnan = (mag >= 0x0f800000u) ? 0x7f800000u : 0;

	return sign | v | infnan;
}

float gf_f16_to_f32(uint16_t h)
{
	return bits_f32(f16_to_f32_bits(h));
}

uint16_t gf_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t mag = u & 0x7fffffffu;

	if (mag > 0x7f800000u) /* NaN: keep it a (quiet) NaN */
		return sign | 0x7e00u | (uint16_t)((mag >> 13) & 0x1ffu);
	if (mag >= 0x477ff000u) /* rounds to >= 65536 (or is inf): inf */
		return sign | 0x7c00u;
	if (mag >= 0x38800000u) { /* result is a normal half */
		/* Rebias the exponent (127 -> 15), then round the 13 dropped bits to even. */
		uint32_t r = mag - 0x38000000u;
		uint32_t lsb = (r >> 13) & 1u;

		r += 0x0fffu + lsb;
		return sign | (uint16_t)(r >> 13);
	}
	if (mag < 0x33000000u) /* below half the smallest subnormal: signed zero */
		return sign;
	{
		/* Subnormal half: value = m * 2^-24 with m = mant24 >> shift, rounded to even. */
		uint32_t e = mag >> 23;               /* 102..112 */
		uint32_t mant = (mag & 0x7fffffu) | 0x800000u;
		uint32_t shift = 126u - e;            /* 14..24 */
		uint32_t q = mant >> shift;
		uint32_t rem = mant & ((1u << shift) - 1u);
		uint32_t half = 1u << (shift - 1u);

		if (rem > half || (rem == half && (q & 1u)))
			q++;
		return sign | (uint16_t)q;
	}
}

float gf_bf16_to_f32(uint16_t b)
{
	return bits_f32((uint32_t)b << 16);
}

uint16_t gf_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: quiet it rather than round it to inf */
		return (uint16_t)((u >> 16) | 0x0040u);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/*
 * Bulk converters: blocks of 16 with a constant inner trip count and restrict pointers,
 * the shape gcc's -O2 cost model vectorises (an open-ended loop it leaves scalar).
 */
#define CVT_BLOCK 16

static void bf16_to_f32_bulk(const uint16_t *restrict s, float *restrict d, size_t n)
{
	size_t i = 0;

	for (; i + CVT_BLOCK <= n; i += CVT_BLOCK)
		for (int k = 0; k < CVT_BLOCK; k++)
			d[i + k] = bits_f32((uint32_t)s[i + k] << 16);
	for (; i < n; i++)
		d[i] = bits_f32((uint32_t)s[i] << 16);
}

static void f16_to_f32_bulk(const uint16_t *restrict s, float *restrict d, size_t n)
{
	size_t i = 0;

	for (; i + CVT_BLOCK <= n; i += CVT_BLOCK)
		for (int k = 0; k < CVT_BLOCK; k++)
			d[i + k] = bits_f32(f16_to_f32_bits(s[i + k]));
	for (; i < n; i++)
		d[i] = bits_f32(f16_to_f32_bits(s[i]));
}

void gf_convert_to_f32(gf_dtype t, const void *src, float *dst, size_t n)
{
	bool is_f16 = t == GF_DTYPE_F16;

	if (n == 0)
		return;
	switch (t) {
	case GF_DTYPE_F32:
		memmove(dst, src, n * sizeof(float));
		break;
	case GF_DTYPE_BF16:
	case GF_DTYPE_F16:
		if (((uintptr_t)src & 1u) == 0) {
			if (is_f16)
				f16_to_f32_bulk(src, dst, n);
			else
				bf16_to_f32_bulk(src, dst, n);
		} else {
			/* Odd address (a packed container): read each half through memcpy. */
			for (size_t i = 0; i < n; i++) {
				uint16_t h;
				uint32_t u;

				memcpy(&h, (const char *)src + 2 * i, 2);
				u = is_f16 ? f16_to_f32_bits(h) : (uint32_t)h << 16;
				memcpy(&dst[i], &u, 4);
			}
		}
		break;
	default:
		/* Unknown type: callers validate dtypes first; leave a defined result. */
		memset(dst, 0, n * sizeof(float));
		break;
	}
}
