/*
 * cs_shuffle.c — the byte shuffle (Blosc's filter): element i's byte b goes to plane b,
 * position i, so that bytes of like significance sit together for LZ4. Every byte written
 * or read goes through here, so this file is built with the vectoriser on (CMakeLists.txt)
 * and the loops are written as whole-element loads and byte stores (and back), which it
 * turns into SIMD shuffles for the 2- and 4-byte cases.
 */
#include "cs_internal.h"

#include <string.h>

void cs_shuffle(uint8_t *restrict dst, const uint8_t *restrict src, size_t n, size_t esz)
{
	if (esz == 2) {
		uint8_t *restrict p0 = dst, *restrict p1 = dst + n;

		for (size_t i = 0; i < n; i++) {
			uint16_t v;

			memcpy(&v, src + 2 * i, 2);
			p0[i] = (uint8_t)v;
			p1[i] = (uint8_t)(v >> 8);
		}
		return;
	}
	if (esz == 4) {
		uint8_t *restrict p0 = dst, *restrict p1 = dst + n, *restrict p2 = dst + 2 * n,
			*restrict p3 = dst + 3 * n;

		for (size_t i = 0; i < n; i++) {
			uint32_t v;

			memcpy(&v, src + 4 * i, 4);
			p0[i] = (uint8_t)v;
			p1[i] = (uint8_t)(v >> 8);
			p2[i] = (uint8_t)(v >> 16);
			p3[i] = (uint8_t)(v >> 24);
		}
		return;
	}
	for (size_t i = 0; i < n; i++)
		for (size_t b = 0; b < esz; b++)
			dst[b * n + i] = src[i * esz + b];
}

void cs_unshuffle(uint8_t *restrict dst, const uint8_t *restrict src, size_t n, size_t esz)
{
	if (esz == 2) {
		const uint8_t *restrict p0 = src, *restrict p1 = src + n;

		for (size_t i = 0; i < n; i++) {
			uint16_t v = (uint16_t)(p0[i] | p1[i] << 8);

			memcpy(dst + 2 * i, &v, 2);
		}
		return;
	}
	if (esz == 4) {
		const uint8_t *restrict p0 = src, *restrict p1 = src + n;
		const uint8_t *restrict p2 = src + 2 * n, *restrict p3 = src + 3 * n;

		for (size_t i = 0; i < n; i++) {
			uint32_t v = (uint32_t)p0[i] | (uint32_t)p1[i] << 8 |
				     (uint32_t)p2[i] << 16 | (uint32_t)p3[i] << 24;

			memcpy(dst + 4 * i, &v, 4);
		}
		return;
	}
	for (size_t i = 0; i < n; i++)
		for (size_t b = 0; b < esz; b++)
			dst[i * esz + b] = src[b * n + i];
}
