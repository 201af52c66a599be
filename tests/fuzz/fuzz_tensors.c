/*
 * fuzz_tensors.c — see fuzz_tensors.h.
 */
#include "fuzz_tensors.h"
#include "fuzz_common.h"

#include <string.h>

/* Sizes a fuzzed model may have for the forward to run on every input: a few ms. */
#define SMALL_WEIGHTS (1u << 20)

void fuzz_try_forward(const gf_model *m)
{
	const gf_config *c = &m->cfg;
	int32_t tok[2];
	float *logits;
	char err[GF_ERR_LEN] = "";
	int rc;

	if (gf_model_decode_bytes(m) > SMALL_WEIGHTS * sizeof(float) || c->vocab_size < 1 ||
	    c->vocab_size > 4096 || c->n_layer > 16)
		return;
	logits = malloc(2 * (size_t)c->vocab_size * sizeof(float));
	FUZZ_CHECK(logits, "out of memory");
	tok[0] = 0;
	tok[1] = c->vocab_size - 1;
	rc = gf_forward_full(m, tok, 2, logits, NULL, NULL, NULL, err);
	if (rc)
		fuzz_check_err(err, sizeof(err), "gf_forward_full");
	else
		fuzz_touch(logits, 2 * (size_t)c->vocab_size * sizeof(float));
	free(logits);
}

void fuzz_check_tensor_set(const gf_tensor_set *ts, const char *what)
{
	gf_config cfg;
	gf_model *m = NULL;
	char err[GF_ERR_LEN] = "";

	FUZZ_CHECK(ts->n_tensors > 0, "%s: success with no tensors", what);
	for (int i = 0; i < ts->n_tensors; i++) {
		const gf_tensor *t = &ts->tensors[i];
		size_t nl = strnlen(t->name, GF_NAME_MAX), el = gf_dtype_size(t->dtype);
		uint64_t numel = 1;

		FUZZ_CHECK(nl > 0 && nl < GF_NAME_MAX, "%s: tensor %d: bad name", what, i);
		FUZZ_CHECK(t->n_dims >= 0 && t->n_dims <= GF_MAX_DIMS, "%s: %s: %d dims", what,
			   t->name, t->n_dims);
		FUZZ_CHECK(el != 0, "%s: %s: dtype %d", what, t->name, (int)t->dtype);
		for (int d = 0; d < t->n_dims; d++) {
			FUZZ_CHECK(t->shape[d] >= 0, "%s: %s: negative dim", what, t->name);
			FUZZ_CHECK(!__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel),
				   "%s: %s: element count overflows", what, t->name);
		}
		FUZZ_CHECK(numel <= SIZE_MAX / el && numel * el == t->nbytes,
			   "%s: %s: %zu bytes for %llu elements", what, t->name, t->nbytes,
			   (unsigned long long)numel);
		FUZZ_CHECK(!t->nbytes || ((uintptr_t)t->data % el) == 0, "%s: %s: data misaligned",
			   what, t->name);
		if (t->nbytes)
			fuzz_touch(t->data, t->nbytes);
		FUZZ_CHECK(gf_tensors_find(ts, t->name) == t, "%s: %s: not found by name (twice?)",
			   what, t->name);
	}
	if (gf_config_infer(&cfg, ts, err)) {
		fuzz_check_err(err, sizeof(err), "gf_config_infer");
		return;
	}
	if (gf_model_from_tensors(&m, &cfg, ts, err)) {
		fuzz_check_err(err, sizeof(err), "gf_model_from_tensors");
		return;
	}
	fuzz_try_forward(m);
	gf_model_free(m);
}
