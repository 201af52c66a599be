/*
 * fuzz_gguf.c — the GGUF v3 reader (model/gguf.c) and what the daemon does with a GGUF:
 * gf_gguf_read (metadata, tensor infos, alignment, the embedded vocabulary), the tokenizer
 * built from its vocabulary, the configuration inferred from its tensors, and
 * gf_model_load (metadata against tensors, the weights bound) followed by a two-token
 * forward of small models. The input is the file.
 *
 * Checks: on success every tensor is whole and readable (fuzz_check_tensor_set), the
 * vocabulary's offsets are monotonic within its bytes, and gf_model_load agrees with
 * gf_gguf_read + gf_config_infer: it may refuse more, never accept what they refuse.
 */
#include "fuzz_common.h"
#include "fuzz_tensors.h"

#include <string.h>

static void check_vocab(const gf_vocab *v)
{
	gf_tokenizer tk;
	char err[GF_ERR_LEN] = "";

	if (!v->n_tokens)
		return;
	FUZZ_CHECK(v->n_tokens > 0 && v->offsets && v->bytes, "vocabulary without arrays");
	FUZZ_CHECK(v->offsets[0] == 0, "first offset %u", v->offsets[0]);
	for (int32_t i = 0; i < v->n_tokens; i++)
		FUZZ_CHECK(v->offsets[i + 1] >= v->offsets[i] &&
			   v->offsets[i + 1] - v->offsets[i] <= GF_TOKEN_MAX_BYTES,
			   "token %d: offsets %u..%u", i, v->offsets[i], v->offsets[i + 1]);
	fuzz_touch(v->bytes, v->offsets[v->n_tokens]);
	if (gf_tokenizer_init(&tk, v, err)) {
		fuzz_check_err(err, sizeof(err), "gf_tokenizer_init");
		return;
	}
	/* Every single byte is a token (the init checks it): the name must encode. */
	int32_t *ids = NULL;
	size_t n_ids = 0;
	static const uint8_t text[] = "GoldFinch \xe4\xb8\xad\xff\x00 <|endoftext|>";

	FUZZ_CHECK(gf_tokenize(&tk, text, sizeof(text) - 1, &ids, &n_ids) == 0 && n_ids > 0,
		   "encode with a vocabulary the tokenizer accepted");
	free(ids);
	gf_tokenizer_free(&tk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_memfile(data, size);
	gf_gguf g;
	gf_config cfg;
	gf_model *m = NULL;
	char err[GF_ERR_LEN] = "";
	int rc = gf_gguf_read(&g, path, err), rc_infer = -1, rc_load;

	if (rc) {
		fuzz_check_err(err, sizeof(err), "gf_gguf_read");
		FUZZ_CHECK(g.tensors.n_tensors == 0 && !g.tensors.map && !g.vocab.offsets,
			   "state left after an error");
	} else {
		FUZZ_CHECK(g.config.first_gold <= g.config.n_layer, "first_gold %d > n_layer %d",
			   g.config.first_gold, g.config.n_layer);
		FUZZ_CHECK(strnlen(g.name, GF_NAME_MAX) < GF_NAME_MAX, "name not terminated");
		if (g.tensors.n_tensors)
			fuzz_check_tensor_set(&g.tensors, "gguf");
		check_vocab(&g.vocab);
		rc_infer = gf_config_infer(&cfg, &g.tensors, err);
		gf_gguf_free(&g);
	}
	rc_load = gf_model_load(&m, path, err);
	if (rc_load) {
		fuzz_check_err(err, sizeof(err), "gf_model_load");
	} else {
		FUZZ_CHECK(rc == 0 && rc_infer == 0, "gf_model_load accepted a file that "
			   "gf_gguf_read (%d) or gf_config_infer (%d) refused", rc, rc_infer);
		fuzz_try_forward(m);
		gf_model_free(m);
	}
	return 0;
}
