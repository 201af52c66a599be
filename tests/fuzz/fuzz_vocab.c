/*
 * fuzz_vocab.c — the vocabulary file parser (model/vocab.c: `<id> <python literal>
 * <byte length>` lines, str and bytes literals with every escape Python has) and the
 * tokenizer built from whatever it accepts (model/tokenizer.c: the byte trie).
 *
 * Input: the vocabulary file.
 * Checks: an accepted vocabulary has at least 65536 entries, monotonic offsets, tokens of
 * at most GF_TOKEN_MAX_BYTES, and id 0 (<|endoftext|> unless the file gives it); when the
 * tokenizer accepts it, encoding the file's own text and decoding the ids gives the text
 * back.
 */
#include "fuzz_common.h"
#include "goldfinch.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_memfile(data, size);
	gf_vocab v;
	gf_tokenizer tk;
	char err[GF_ERR_LEN] = "";
	int32_t *ids;
	size_t n_ids, pos = 0;

	if (gf_vocab_load_file(&v, path, err)) {
		fuzz_check_err(err, sizeof(err), "gf_vocab_load_file");
		FUZZ_CHECK(!v.offsets && !v.bytes, "state left after an error");
		return 0;
	}
	FUZZ_CHECK(v.n_tokens >= 65536 && v.offsets[0] == 0, "%d tokens", v.n_tokens);
	for (int32_t i = 0; i < v.n_tokens; i++)
		FUZZ_CHECK(v.offsets[i + 1] >= v.offsets[i] &&
			   v.offsets[i + 1] - v.offsets[i] <= GF_TOKEN_MAX_BYTES,
			   "token %d: offsets %u..%u", i, v.offsets[i], v.offsets[i + 1]);
	FUZZ_CHECK(v.offsets[1] > 0, "id 0 has no bytes");
	fuzz_touch(v.bytes, v.offsets[v.n_tokens]);

	if (gf_tokenizer_init(&tk, &v, err)) {
		fuzz_check_err(err, sizeof(err), "gf_tokenizer_init");
		gf_vocab_free(&v);
		return 0;
	}
	FUZZ_CHECK(gf_tokenize(&tk, data, size, &ids, &n_ids) == 0, "gf_tokenize");
	for (size_t i = 0; i < n_ids; i++) {
		size_t len;
		const uint8_t *b = gf_tokenizer_token(&tk, ids[i], &len);

		FUZZ_CHECK(b && pos + len <= size && !memcmp(b, data + pos, len),
			   "id %d at byte %zu is not the input's bytes", ids[i], pos);
		pos += len;
	}
	FUZZ_CHECK(pos == size, "ids cover %zu of %zu bytes", pos, size);
	free(ids);
	gf_tokenizer_free(&tk);
	gf_vocab_free(&v);
	return 0;
}
