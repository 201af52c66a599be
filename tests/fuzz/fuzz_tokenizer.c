/*
 * fuzz_tokenizer.c — the World tokenizer (model/tokenizer.c) over the real vocabulary:
 * encode (one-shot and streaming) and decode (streaming, UTF-8 aware).
 *
 * Input: the text to encode; the same bytes read as little-endian u16 ids are decoded;
 * byte 0 also seeds how the streaming encoder's input is cut.
 *
 * Checks, each against an independent reference:
 *   - the token bytes of the ids concatenate back to the input (lossless);
 *   - greedy longest match: no vocabulary entry longer than the chosen token matches at its
 *     position (a hash set of every token and every prefix of one, built from the
 *     vocabulary, not from the trie);
 *   - the streaming encoder fed in pieces gives the ids of the one-shot encode;
 *   - the streaming decoder gives back the input, whatever the UTF-8 boundaries;
 *   - decoding arbitrary ids gives the concatenation of their bytes, and ids out of range
 *     are refused with -EINVAL.
 */
#include "fuzz_common.h"
#include "fuzz_vocab_path.h"

#include <errno.h>
#include <string.h>

static gf_tokenizer tk;

/* ---- a hash set of every token's bytes and every prefix of them: the reference for longest
 * match, built from the vocabulary alone (not from the trie under test) ---------------------- */

struct hent {
	const uint8_t *p; /* NULL: empty slot */
	uint8_t len;
	bool is_token;
};

static struct hent *hslots;
static size_t hmask;

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
	uint64_t h = 1469598103934665603ull ^ n;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

static struct hent *hset_find(const uint8_t *p, size_t n)
{
	for (size_t s = hash_bytes(p, n) & hmask;; s = (s + 1) & hmask)
		if (!hslots[s].p || (hslots[s].len == n && !memcmp(hslots[s].p, p, n)))
			return &hslots[s];
}

static void hset_build(void)
{
	size_t cap = 1, total = 0;

	for (int32_t id = 0; id < tk.vocab.n_tokens; id++)
		total += tk.vocab.offsets[id + 1] - tk.vocab.offsets[id];
	while (cap < 2 * total + 2)
		cap <<= 1;
	hslots = calloc(cap, sizeof(*hslots));
	FUZZ_CHECK(hslots, "out of memory");
	hmask = cap - 1;
	for (int32_t id = 0; id < tk.vocab.n_tokens; id++) {
		size_t len;
		const uint8_t *b = gf_tokenizer_token(&tk, id, &len);

		for (size_t l = 1; b && l <= len; l++) {
			struct hent *e = hset_find(b, l);

			e->p = b;
			e->len = (uint8_t)l;
			e->is_token |= l == len;
		}
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	gf_vocab v;
	char err[GF_ERR_LEN];

	(void)argc;
	(void)argv;
	fuzz_load_world_vocab(&v);
	FUZZ_CHECK(gf_tokenizer_init(&tk, &v, err) == 0, "%s", err);
	gf_vocab_free(&v);
	hset_build();
	return 0;
}

/* ---- streaming encode -------------------------------------------------------------------- */

struct collect {
	int32_t *ids;
	size_t n, cap;
};

static int sink(void *user, const int32_t *ids, size_t n)
{
	struct collect *c = user;

	if (c->n + n > c->cap) {
		size_t cap = (c->n + n) * 2;
		int32_t *p = realloc(c->ids, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		c->ids = p;
		c->cap = cap;
	}
	memcpy(c->ids + c->n, ids, n * sizeof(*ids));
	c->n += n;
	return 0;
}

static void check_stream(const uint8_t *data, size_t size, const int32_t *ids, size_t n_ids)
{
	struct collect c = { 0 };
	gf_encoder enc;
	uint32_t seed = size ? data[0] * 2654435761u + 7 : 7;
	size_t off = 0;

	gf_encoder_init(&enc, &tk);
	while (off < size) {
		size_t n;

		seed = seed * 1103515245u + 12345u;
		n = (seed >> 16) % 4 == 0 ? 1 + (seed >> 20) % 600 : 1 + (seed >> 20) % 7;
		if (n > size - off)
			n = size - off;
		FUZZ_CHECK(gf_encoder_feed(&enc, data + off, n, sink, &c) == 0, "encoder feed");
		off += n;
	}
	FUZZ_CHECK(gf_encoder_finish(&enc, sink, &c) == 0, "encoder finish");
	FUZZ_CHECK(c.n == n_ids, "streaming encode gave %zu ids, one-shot %zu", c.n, n_ids);
	FUZZ_CHECK(!n_ids || !memcmp(c.ids, ids, n_ids * sizeof(*ids)),
		   "streaming encode differs from one-shot");
	free(c.ids);
}

/* ---- decode -------------------------------------------------------------------------------- */

/* Decodes ids with the streaming decoder; out receives the bytes (cap >= their total). */
static size_t decode(const int32_t *ids, size_t n_ids, uint8_t *out, size_t cap)
{
	gf_decoder dec;
	uint8_t chunk[GF_TOKEN_MAX_BYTES + 8];
	size_t total = 0, n;

	gf_decoder_init(&dec, &tk);
	for (size_t i = 0; i < n_ids; i++) {
		int rc = gf_decoder_push(&dec, ids[i], chunk, sizeof(chunk), &n);

		if (ids[i] < 0 || ids[i] >= tk.vocab.n_tokens) {
			FUZZ_CHECK(rc == -EINVAL && n == 0, "id %d out of range: %d", ids[i], rc);
			continue;
		}
		FUZZ_CHECK(rc == 0, "decoder push of id %d: %d", ids[i], rc);
		FUZZ_CHECK(total + n <= cap, "decoder emitted more than its tokens hold");
		memcpy(out + total, chunk, n);
		total += n;
	}
	FUZZ_CHECK(gf_decoder_flush(&dec, chunk, sizeof(chunk), &n) == 0, "decoder flush");
	FUZZ_CHECK(total + n <= cap, "decoder flushed more than its tokens hold");
	memcpy(out + total, chunk, n);
	return total + n;
}

static void check_decode_ids(const uint8_t *data, size_t size)
{
	size_t n_ids = size / 2 + 2, want_len = 0, got;
	int32_t *ids = malloc(n_ids * sizeof(*ids));
	uint8_t *want, *got_buf;

	FUZZ_CHECK(ids, "out of memory");
	for (size_t i = 0; i < size / 2; i++)
		ids[i] = (int32_t)(data[2 * i] | data[2 * i + 1] << 8);
	ids[size / 2] = -1 - (int32_t)(size % 3);           /* refused */
	ids[size / 2 + 1] = tk.vocab.n_tokens + (int32_t)size; /* refused */
	want = malloc(n_ids * GF_TOKEN_MAX_BYTES + 1);
	got_buf = malloc(n_ids * GF_TOKEN_MAX_BYTES + 1);
	FUZZ_CHECK(want && got_buf, "out of memory");
	for (size_t i = 0; i < n_ids; i++) {
		size_t len;
		const uint8_t *b = gf_tokenizer_token(&tk, ids[i], &len);

		if (b) {
			memcpy(want + want_len, b, len);
			want_len += len;
		}
	}
	got = decode(ids, n_ids, got_buf, n_ids * GF_TOKEN_MAX_BYTES + 1);
	FUZZ_CHECK(got == want_len && !memcmp(got_buf, want, got),
		   "decoding %zu ids gave %zu bytes, their tokens hold %zu", n_ids, got, want_len);
	free(got_buf);
	free(want);
	free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int32_t *ids;
	size_t n_ids, pos = 0;
	uint8_t *back;

	if (!tk.nodes)
		LLVMFuzzerInitialize(NULL, NULL);
	FUZZ_CHECK(gf_tokenize(&tk, data, size, &ids, &n_ids) == 0, "gf_tokenize");
	FUZZ_CHECK(n_ids <= size, "%zu ids for %zu bytes", n_ids, size);
	for (size_t i = 0; i < n_ids; i++) {
		size_t len;
		const uint8_t *b = gf_tokenizer_token(&tk, ids[i], &len);

		FUZZ_CHECK(b && len > 0, "id %d has no bytes", ids[i]);
		FUZZ_CHECK(pos + len <= size && !memcmp(b, data + pos, len),
			   "id %d at byte %zu is not the input's bytes", ids[i], pos);
		/* Longer candidates exist only while the bytes are a prefix of some token. */
		for (size_t l = len + 1; l <= GF_TOKEN_MAX_BYTES && pos + l <= size; l++) {
			const struct hent *e = hset_find(data + pos, l);

			if (!e->p)
				break;
			FUZZ_CHECK(!e->is_token,
				   "at byte %zu a %zu-byte token matches, the encoder took %zu", pos,
				   l, len);
		}
		pos += len;
	}
	FUZZ_CHECK(pos == size, "ids cover %zu of %zu bytes", pos, size);
	check_stream(data, size, ids, n_ids);

	back = malloc(size + 1);
	FUZZ_CHECK(back, "out of memory");
	FUZZ_CHECK(decode(ids, n_ids, back, size + 1) == size && !memcmp(back, data, size),
		   "decode(encode(x)) != x");
	free(back);
	free(ids);
	check_decode_ids(data, size);
	return 0;
}
