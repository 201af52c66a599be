/*
 * f32_compare — compares two raw float32 files the way ../shared/testdata/README.md says:
 * max|a - b| / max|b| <= tol over the compared range.
 *
 *   f32_compare A B [--a-offset N] [--b-offset N] [--count N] [--tol T]
 *
 * Offsets and count are in floats; count defaults to the rest of the shorter file.
 * Exit 0 within tolerance, 1 outside it or on any error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *load(const char *path, long *n)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "f32_compare: cannot open %s\n", path);
		return NULL;
	}
	fseek(f, 0, SEEK_END);
	long bytes = ftell(f);
	fseek(f, 0, SEEK_SET);
	float *p = malloc((size_t)bytes + 4);
	if (!p || fread(p, 1, (size_t)bytes, f) != (size_t)bytes) {
		fprintf(stderr, "f32_compare: cannot read %s\n", path);
		fclose(f);
		free(p);
		return NULL;
	}
	fclose(f);
	*n = bytes / 4;
	return p;
}

int main(int argc, char **argv)
{
	long ao = 0, bo = 0, count = -1;
	double tol = 2e-5;
	if (argc < 3) {
		fprintf(stderr, "usage: f32_compare A B [--a-offset N] [--b-offset N] [--count N] [--tol T]\n");
		return 1;
	}
	for (int i = 3; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--a-offset"))
			ao = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--b-offset"))
			bo = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--count"))
			count = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--tol"))
			tol = atof(argv[i + 1]);
		else {
			fprintf(stderr, "f32_compare: unknown option %s\n", argv[i]);
			return 1;
		}
	}
	long na, nb;
	float *a = load(argv[1], &na), *b = load(argv[2], &nb);
	if (!a || !b)
		return 1;
	if (count < 0)
		count = (na - ao) < (nb - bo) ? na - ao : nb - bo;
	if (count <= 0 || ao + count > na || bo + count > nb) {
		fprintf(stderr, "f32_compare: range out of the files (%ld and %ld floats)\n", na, nb);
		return 1;
	}
	double maxref = 0, maxdiff = 0;
	for (long i = 0; i < count; i++) {
		double d = fabs((double)a[ao + i] - b[bo + i]);
		if (isnan(d))
			d = INFINITY;
		maxdiff = d > maxdiff ? d : maxdiff;
		maxref = fabs(b[bo + i]) > maxref ? fabs(b[bo + i]) : maxref;
	}
	double rel = maxref > 0 ? maxdiff / maxref : maxdiff;
	printf("%s vs %s: %ld floats, max|diff|/max|ref| = %.3e (tol %.1e) %s\n", argv[1], argv[2],
	       count, rel, tol, rel <= tol ? "ok" : "FAIL");
	free(a);
	free(b);
	return rel <= tol ? 0 : 1;
}
