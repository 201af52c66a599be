/*
 * blas.c — choosing OpenBLAS's kernels and threads.
 *
 * Debian's OpenBLAS 0.3.21 does not know Zen 5 and falls back to its Haswell (AVX2) kernels,
 * half the speed of its SkylakeX (AVX-512) kernels on that CPU. The core type can only be
 * chosen through OPENBLAS_CORETYPE before the library initialises, which happens when it is
 * loaded — before main — so the one way to choose it for users is to re-execute once.
 */
#include "goldfinch.h"

#include <cblas.h>
#include <cpuid.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* OpenBLAS's own API, declared in its cblas.h. */
extern char *openblas_get_corename(void);
extern int openblas_get_num_threads(void);
extern void openblas_set_num_threads(int);

/* True when the CPU has the AVX-512 subsets SkylakeX kernels use and the OS saves ZMM state. */
static int cpu_has_avx512(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !(c & (1u << 27))) /* OSXSAVE */
		return 0;
	unsigned lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	(void)hi;
	if ((lo & 0xe6) != 0xe6) /* XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM */
		return 0;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return 0;
	const unsigned need = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31); /* F DQ BW VL */
	return (b & need) == need;
}

void gf_blas_prefer_avx512(char **argv)
{
	if (getenv("OPENBLAS_CORETYPE") || getenv("GF_NO_REEXEC") || !cpu_has_avx512())
		return;
	/* Already on AVX-512 kernels (a newer OpenBLAS that knows this CPU): nothing to do. */
	const char *core = openblas_get_corename();
	if (core && (strstr(core, "Skylake") || strstr(core, "Cooperlake") ||
		     strstr(core, "Sapphire") || strstr(core, "skylake") ||
		     strstr(core, "cooperlake") || strstr(core, "sapphire")))
		return;
	if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) != 0)
		return;
	execv("/proc/self/exe", argv);
	/* exec failed: carry on with the kernels we have. */
	unsetenv("OPENBLAS_CORETYPE");
}

void gf_blas_set_threads(int n)
{
	if (n > 0)
		openblas_set_num_threads(n);
}

int gf_blas_threads(void)
{
	return openblas_get_num_threads();
}

const char *gf_blas_corename(void)
{
	const char *c = openblas_get_corename();
	return c ? c : "unknown";
}
