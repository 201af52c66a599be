/*
 * model_tokenizer — the World vocabulary loader, tokenizer, streaming encoder and decoder
 * against the official TRIE_TOKENIZER's cases (testdata/tokenizer/cases.jsonl).
 *
 * usage: model_tokenizer VOCAB.txt CASES.jsonl
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "goldfinch.h"

static int failures;

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond)) {                                                  \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
			fprintf(stderr, __VA_ARGS__);                           \
			fputc('\n', stderr);                                    \
			failures++;                                             \
		}                                                               \
	} while (0)

static uint64_t rng_state = 0x1234567887654321ull;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state % n);
}

static char *read_text(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *b;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	b = malloc((size_t)n + 1);
	if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		b = NULL;
	}
	fclose(f);
	if (b) {
		b[n] = '\0';
		*len = (size_t)n;
	}
	return b;
}

/* Decodes a hex string into a malloc'd buffer. */
static uint8_t *unhex(const char *hex, size_t *n)
{
	size_t len = strlen(hex);
	uint8_t *b = malloc(len / 2 + 1);

	for (size_t i = 0; i < len / 2; i++) {
		unsigned v;

		sscanf(hex + 2 * i, "%2x", &v);
		b[i] = (uint8_t)v;
	}
	*n = len / 2;
	return b;
}

static int32_t *json_ids(const cJSON *arr, size_t *n)
{
	size_t cnt = (size_t)cJSON_GetArraySize(arr), i = 0;
	int32_t *ids = malloc((cnt ? cnt : 1) * sizeof(*ids));
	const cJSON *it;

	cJSON_ArrayForEach(it, arr)
		ids[i++] = (int32_t)it->valuedouble;
	*n = cnt;
	return ids;
}

/* ---- encoder plumbing ---- */

struct collect {
	int32_t *ids;
	size_t n, cap;
	int calls, bad_batch, stop_after; /* stop_after > 0: return 7 on that call */
};

static int sink(void *user, const int32_t *ids, size_t n)
{
	struct collect *c = user;

	c->calls++;
	if (n == 0 || n > 256)
		c->bad_batch = 1;
	if (c->n + n > c->cap) {
		c->cap = (c->n + n) * 2;
		c->ids = realloc(c->ids, c->cap * sizeof(*c->ids));
	}
	memcpy(c->ids + c->n, ids, n * sizeof(*ids));
	c->n += n;
	if (c->stop_after && c->calls == c->stop_after)
		return 7;
	return 0;
}

/* Encodes data fed in pieces whose ends are cuts[0..n_cuts) (ascending), then the rest. */
static int encode_split(const gf_tokenizer *tk, const uint8_t *data, size_t n, const size_t *cuts,
			size_t n_cuts, struct collect *c)
{
	gf_encoder enc;
	size_t at = 0;
	int rc;

	c->n = 0;
	c->calls = 0;
	c->bad_batch = 0;
	gf_encoder_init(&enc, tk);
	for (size_t i = 0; i <= n_cuts; i++) {
		size_t end = i < n_cuts ? cuts[i] : n;

		rc = gf_encoder_feed(&enc, data + at, end - at, sink, c);
		if (rc)
			return rc;
		at = end;
	}
	return gf_encoder_finish(&enc, sink, c);
}

static int same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
	return na == nb && (na == 0 || memcmp(a, b, na * sizeof(*a)) == 0);
}

static void test_encode_case(const gf_tokenizer *tk, const char *name, const uint8_t *text,
			     size_t n, const int32_t *want, size_t n_want)
{
	struct collect c = { 0 };
	int32_t *ids = NULL;
	size_t n_ids = 0, cuts[64];
	int rc;

	rc = gf_tokenize(tk, text, n, &ids, &n_ids);
	CHECK(rc == 0 && same_ids(ids, n_ids, want, n_want),
	      "encode %s: one-shot gives %zu ids, want %zu", name, n_ids, n_want);
	for (size_t i = 0; rc == 0 && i < n_ids && i < n_want; i++) {
		if (ids[i] != want[i]) {
			CHECK(0, "encode %s: id %zu is %d, want %d", name, i, ids[i], want[i]);
			break;
		}
	}
	free(ids);

	/* Whole input in one piece. */
	rc = encode_split(tk, text, n, NULL, 0, &c);
	CHECK(rc == 0 && same_ids(c.ids, c.n, want, n_want) && !c.bad_batch,
	      "encode %s: streaming in one piece differs", name);

	if (n <= 600) {
		/* Every single cut position, then byte by byte. */
		for (size_t cut = 0; cut <= n; cut++) {
			cuts[0] = cut;
			rc = encode_split(tk, text, n, cuts, 1, &c);
			if (rc || !same_ids(c.ids, c.n, want, n_want)) {
				CHECK(0, "encode %s: streaming split at byte %zu differs", name, cut);
				break;
			}
		}
		{
			gf_encoder enc;

			c.n = 0;
			gf_encoder_init(&enc, tk);
			for (size_t i = 0; i < n; i++)
				gf_encoder_feed(&enc, text + i, 1, sink, &c);
			gf_encoder_finish(&enc, sink, &c);
			CHECK(same_ids(c.ids, c.n, want, n_want),
			      "encode %s: streaming byte by byte differs", name);
		}
	} else {
		/* Random cuts: many small pieces and a few large ones. */
		for (int round = 0; round < 40; round++) {
			size_t k = 0, at = 0, max_piece = round % 2 ? 300 : 3000;

			while (k < 64) {
				at += 1 + rnd((uint32_t)max_piece);
				if (at >= n)
					break;
				cuts[k++] = at;
			}
			rc = encode_split(tk, text, n, cuts, k, &c);
			if (rc || !same_ids(c.ids, c.n, want, n_want) || c.bad_batch) {
				CHECK(0, "encode %s: streaming with random cuts (round %d) differs",
				      name, round);
				break;
			}
		}
	}
	free(c.ids);
}

/* Is s[0..n) valid UTF-8 (no overlongs, surrogates or values above U+10FFFF)? */
static int valid_utf8(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t b = s[i];
		size_t need;
		uint8_t lo = 0x80, hi = 0xbf;

		if (b < 0x80) {
			i++;
			continue;
		}
		if (b >= 0xc2 && b <= 0xdf)
			need = 1;
		else if (b >= 0xe0 && b <= 0xef)
			need = 2;
		else if (b >= 0xf0 && b <= 0xf4)
			need = 3;
		else
			return 0;
		if (b == 0xe0)
			lo = 0xa0;
		if (b == 0xed)
			hi = 0x9f;
		if (b == 0xf0)
			lo = 0x90;
		if (b == 0xf4)
			hi = 0x8f;
		if (i + need >= n)
			return 0;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return 0;
		for (size_t k = 2; k <= need; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return 0;
		i += need + 1;
	}
	return 1;
}

/* Decodes ids with the streaming decoder; checks every chunk when whole is valid UTF-8. */
static void test_decode(const gf_tokenizer *tk, const char *name, const int32_t *ids, size_t n,
			const uint8_t *want, size_t n_want, int want_valid)
{
	uint8_t chunk[GF_TOKEN_MAX_BYTES + 8];
	uint8_t *all = malloc(n_want + 1), *cat = malloc(n_want + 1);
	size_t n_all = 0, n_cat = 0, got;
	gf_decoder dec;
	int ok = 1, rc;

	gf_decoder_init(&dec, tk);
	for (size_t i = 0; i < n; i++) {
		size_t len;
		const uint8_t *b = gf_tokenizer_token(tk, ids[i], &len);

		if (n_cat + len > n_want) {
			ok = 0;
			break;
		}
		if (len)
			memcpy(cat + n_cat, b, len);
		n_cat += len;
		rc = gf_decoder_push(&dec, ids[i], chunk, sizeof(chunk), &got);
		if (rc || n_all + got > n_want) {
			ok = 0;
			break;
		}
		if (want_valid && !valid_utf8(chunk, got)) {
			CHECK(0, "decode %s: chunk after id %zu is not whole UTF-8", name, i);
			ok = 0;
		}
		memcpy(all + n_all, chunk, got);
		n_all += got;
	}
	if (ok) {
		rc = gf_decoder_flush(&dec, chunk, sizeof(chunk), &got);
		if (rc || n_all + got > n_want)
			ok = 0;
		else
			memcpy(all + n_all, chunk, got);
		n_all += got;
	}
	CHECK(ok && n_cat == n_want && memcmp(cat, want, n_want) == 0,
	      "decode %s: token bytes differ from bytes_hex", name);
	CHECK(ok && n_all == n_want && memcmp(all, want, n_want) == 0,
	      "decode %s: streaming decoder output differs from bytes_hex", name);
	CHECK(valid_utf8(want, n_want) == want_valid, "decode %s: valid_utf8 flag disagrees", name);
	free(all);
	free(cat);
}

static void test_cases(const gf_tokenizer *tk, const char *path)
{
	size_t len, n_enc = 0, n_dec = 0;
	char *text = read_text(path, &len);
	char *line, *save = NULL;

	CHECK(text != NULL, "cannot read %s", path);
	if (!text)
		return;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		cJSON *j = cJSON_Parse(line);
		const cJSON *name = cJSON_GetObjectItem(j, "name");
		const cJSON *ids = cJSON_GetObjectItem(j, "ids");
		const cJSON *u8 = cJSON_GetObjectItem(j, "utf8_hex");
		const cJSON *bh = cJSON_GetObjectItem(j, "bytes_hex");
		size_t n_ids, nb;
		int32_t *idv;
		uint8_t *b;

		CHECK(j && cJSON_IsString(name) && cJSON_IsArray(ids), "bad case line in %s", path);
		if (!j || !cJSON_IsString(name) || !cJSON_IsArray(ids)) {
			cJSON_Delete(j);
			continue;
		}
		idv = json_ids(ids, &n_ids);
		if (cJSON_IsString(u8)) {
			b = unhex(u8->valuestring, &nb);
			test_encode_case(tk, name->valuestring, b, nb, idv, n_ids);
			/* Round trip: the ids decode back to the text. */
			test_decode(tk, name->valuestring, idv, n_ids, b, nb, 1);
			free(b);
			n_enc++;
		} else if (cJSON_IsString(bh)) {
			const cJSON *valid = cJSON_GetObjectItem(j, "valid_utf8");

			b = unhex(bh->valuestring, &nb);
			test_decode(tk, name->valuestring, idv, n_ids, b, nb, cJSON_IsTrue(valid));
			if (strcmp(name->valuestring, "split_multibyte_ni_as_single_bytes") == 0) {
				/* e4, bd are held back; the third byte completes U+4F60. */
				gf_decoder dec;
				uint8_t out[GF_TOKEN_MAX_BYTES + 8];
				size_t g[3];

				gf_decoder_init(&dec, tk);
				for (int i = 0; i < 3; i++)
					gf_decoder_push(&dec, idv[i], out, sizeof(out), &g[i]);
				CHECK(g[0] == 0 && g[1] == 0 && g[2] == 3 &&
				      memcmp(out, "\xe4\xbd\xa0", 3) == 0,
				      "decode: U+4F60 from single bytes gives chunks %zu %zu %zu",
				      g[0], g[1], g[2]);
			}
			free(b);
			n_dec++;
		}
		free(idv);
		cJSON_Delete(j);
	}
	CHECK(n_enc == 40 && n_dec == 17, "%s: %zu encode and %zu decode cases, want 40 and 17",
	      path, n_enc, n_dec);
	free(text);
}

static void test_vocab(const gf_vocab *v)
{
	size_t len;

	CHECK(v->n_tokens == 65536, "vocab has %d tokens, want 65536", v->n_tokens);
	if (v->n_tokens != 65536)
		return;
#define TOK(i) (v->bytes + v->offsets[i])
#define LEN(i) (v->offsets[(i) + 1] - v->offsets[i])
	CHECK(LEN(0) == 13 && memcmp(TOK(0), "<|endoftext|>", 13) == 0, "id 0 is not <|endoftext|>");
	CHECK(LEN(1) == 1 && TOK(1)[0] == 0, "id 1 is not the byte 0x00");
	CHECK(LEN(129) == 1 && TOK(129)[0] == 0x80, "id 129 is not the byte 0x80 (b'\\x80')");
	CHECK(LEN(9808) == 3 && memcmp(TOK(9808), "\xe2\x80\x8b", 3) == 0, "id 9808 is not U+200B");
	CHECK(LEN(40) == 1 && TOK(40)[0] == '\'', "id 40 is not \"'\"");
	len = LEN(65529);
	CHECK(len == 128, "id 65529 is %zu bytes, want 128", len);
	for (int i = 65530; i < 65536; i++)
		CHECK(LEN(i) == 0, "id %d should have no bytes", i);
#undef TOK
#undef LEN
}

/* Writes content to a new temporary file named into path; returns path, or NULL. */
static const char *temp_file(char *path, size_t cap, const char *content)
{
	const char *dir = getenv("TMPDIR");
	int fd;

	snprintf(path, cap, "%s/gf_vocab_XXXXXX", dir && *dir ? dir : "/tmp");
	fd = mkstemp(path);
	if (fd < 0)
		return NULL;
	if (write(fd, content, strlen(content)) != (ssize_t)strlen(content)) {
		close(fd);
		return NULL;
	}
	close(fd);
	return path;
}

static void expect_load_error(const char *content, const char *want_in_msg, const char *what)
{
	char path[512], err[GF_ERR_LEN] = "";
	gf_vocab v;
	int rc;

	if (!temp_file(path, sizeof(path), content)) {
		CHECK(0, "cannot write a temporary file");
		return;
	}
	rc = gf_vocab_load_file(&v, path, err);
	CHECK(rc == -EINVAL, "%s: load returned %d, want -EINVAL", what, rc);
	CHECK(strstr(err, path) != NULL && strstr(err, want_in_msg) != NULL && !strchr(err, '\n'),
	      "%s: error '%s' should name the file and contain '%s'", what, err, want_in_msg);
	gf_vocab_free(&v);
	unlink(path);
}

/* A vocabulary of the 256 single bytes plus the given extra tokens (ids 257...). */
static void small_vocab(gf_vocab *v, const char **extra, int n_extra, int skip_byte)
{
	size_t total = 0;
	int n = 257 + n_extra;

	for (int i = 0; i < n_extra; i++)
		total += strlen(extra[i]);
	v->n_tokens = n;
	v->offsets = calloc((size_t)n + 1, sizeof(*v->offsets));
	v->bytes = malloc(256 + total);
	total = 0;
	for (int i = 0; i < n; i++) {
		v->offsets[i] = (uint32_t)total;
		if (i >= 1 && i <= 256 && i - 1 != skip_byte)
			v->bytes[total++] = (uint8_t)(i - 1);
		else if (i > 256) {
			memcpy(v->bytes + total, extra[i - 257], strlen(extra[i - 257]));
			total += strlen(extra[i - 257]);
		}
	}
	v->offsets[n] = (uint32_t)total;
}

/* Greedy longest match by brute force, the definition the trie must agree with. */
static size_t naive_encode(const gf_vocab *v, const uint8_t *s, size_t n, int32_t *out)
{
	size_t cnt = 0, p = 0;

	while (p < n) {
		size_t best = 0;
		int32_t id = -1;

		for (int32_t i = 0; i < v->n_tokens; i++) {
			size_t len = v->offsets[i + 1] - v->offsets[i];

			if (len > best && len <= n - p && memcmp(v->bytes + v->offsets[i], s + p, len) == 0) {
				best = len;
				id = i;
			}
		}
		out[cnt++] = id;
		p += best;
	}
	return cnt;
}

static void test_small_vocabs(void)
{
	static const char *extra[] = { "ab", "abc", "abcabc", "bca", "cab", "abab", "aa", "aaa",
				       "aaaaaaa", "ba", "cc", "ccc", "bcbcbcb", "abc" /* dup */ };
	const int n_extra = (int)(sizeof(extra) / sizeof(extra[0]));
	char err[GF_ERR_LEN] = "";
	gf_vocab v;
	gf_tokenizer tk;
	int rc;

	/* A vocabulary that cannot encode some byte is refused. */
	small_vocab(&v, extra, n_extra, 0x41);
	rc = gf_tokenizer_init(&tk, &v, err);
	CHECK(rc == -EINVAL && strstr(err, "0x41"), "missing byte: rc %d err '%s'", rc, err);
	gf_tokenizer_free(&tk);
	gf_vocab_free(&v);

	small_vocab(&v, extra, n_extra, -1);
	rc = gf_tokenizer_init(&tk, &v, err);
	CHECK(rc == 0, "small vocab: %s", err);
	if (rc == 0) {
		uint8_t s[300];
		int32_t want[300], *ids;
		size_t n_want, n_ids;

		for (int round = 0; round < 300; round++) {
			size_t n = rnd(sizeof(s));

			for (size_t i = 0; i < n; i++)
				s[i] = "abcx"[rnd(round % 2 ? 3 : 4)];
			n_want = naive_encode(&v, s, n, want);
			rc = gf_tokenize(&tk, s, n, &ids, &n_ids);
			/* naive keeps the first of equal tokens: "abc" is id 258, not its dup */
			CHECK(rc == 0 && same_ids(ids, n_ids, want, n_want),
			      "small vocab: trie and brute force disagree (round %d)", round);
			free(ids);
			if (round % 5 == 0)
				test_encode_case(&tk, "small vocab random", s, n, want, n_want);
			if (failures)
				break;
		}
	}
	gf_tokenizer_free(&tk);
	gf_vocab_free(&v);
}

static void test_loader_errors(const char *vocab_path)
{
	char path[512], err[GF_ERR_LEN] = "";
	gf_vocab v;
	int rc;

	expect_load_error("1 'ab' 3\n", ":1:", "length mismatch");
	expect_load_error("1 'a' 1\n2 '\\x4' 1\n", ":2:", "truncated \\x escape");
	expect_load_error("1 'a' 1\n2 'b' 1\n\n4 'ab\n", ":4:", "unterminated literal");
	expect_load_error("1 'a' 1\n1 'b' 1\n", "twice", "duplicate id");
	expect_load_error("1 '\\ud800' 3\n", ":1:", "surrogate");
	expect_load_error("x 'a' 1\n", ":1:", "missing id");
	expect_load_error("1 a 1\n", ":1:", "unquoted literal");
	expect_load_error("1 'a' 1 junk\n", ":1:", "trailing junk");
	expect_load_error("", "no tokens", "empty file");
	expect_load_error("1 b'\xc3\xa9' 2\n", ":1:", "non-ASCII in bytes literal");

	snprintf(path, sizeof(path), "%s.does-not-exist", vocab_path);
	rc = gf_vocab_load_file(&v, path, err);
	CHECK(rc == -ENOENT && strstr(err, path), "missing file: rc %d err '%s'", rc, err);
	gf_vocab_free(&v);

	/* Escapes as Python reads them: \u in a bytes literal is no escape, octal, \U, "...". */
	if (temp_file(path, sizeof(path),
		      "1 b'\\u00e9' 6\n2 '\\u00e9' 2\n3 '\\101\\0' 2\r\n4 \"'\\\"\" 2\n"
		      "5 '\\U0001F600' 4\n6 '\xc3\xa9t\xc3\xa9' 5\n7 b'\\xff\\q' 3\n70000 'z' 1\n")) {
		rc = gf_vocab_load_file(&v, path, err);
		CHECK(rc == 0, "escape vocab: %s", err);
		if (rc == 0) {
#define IS(i, s) (v.offsets[(i) + 1] - v.offsets[i] == sizeof(s) - 1 && \
		  memcmp(v.bytes + v.offsets[i], s, sizeof(s) - 1) == 0)
			CHECK(v.n_tokens == 70001, "escape vocab: %d tokens, want 70001", v.n_tokens);
			CHECK(IS(1, "\\u00e9"), "b'\\u00e9' should stay 6 bytes");
			CHECK(IS(2, "\xc3\xa9"), "'\\u00e9' should be c3 a9");
			CHECK(IS(3, "A\0"), "octal escapes");
			CHECK(IS(4, "'\""), "double-quoted literal");
			CHECK(IS(5, "\xf0\x9f\x98\x80"), "\\U escape");
			CHECK(IS(6, "\xc3\xa9t\xc3\xa9"), "raw UTF-8 in a str literal");
			CHECK(IS(7, "\xff\\q"), "bytes \\xff and unknown escape");
			CHECK(IS(0, "<|endoftext|>"), "id 0 added");
			CHECK(IS(69999, ""), "id 69999 empty");
			CHECK(IS(70000, "z"), "id 70000");
#undef IS
		}
		gf_vocab_free(&v);
		unlink(path);
	}
}

static void test_api_edges(const gf_tokenizer *tk, const gf_vocab *v)
{
	uint8_t out[GF_TOKEN_MAX_BYTES + 8];
	size_t len, got;
	gf_decoder dec;
	gf_vocab cp;
	struct collect c = { .stop_after = 1 };
	gf_encoder enc;
	uint8_t text[4000];
	int32_t *ids;
	size_t n_ids;
	int rc;

	CHECK(gf_tokenizer_token(tk, -1, &len) == NULL && len == 0, "token(-1)");
	CHECK(gf_tokenizer_token(tk, 65536, &len) == NULL && len == 0, "token(65536)");
	CHECK(gf_tokenizer_token(tk, 65530, &len) == NULL && len == 0, "token(65530) has no bytes");
	CHECK(gf_tokenizer_token(tk, 0, &len) != NULL && len == 13, "token(0)");

	gf_decoder_init(&dec, tk);
	CHECK(gf_decoder_push(&dec, -1, out, sizeof(out), &got) == -EINVAL, "decoder id -1");
	CHECK(gf_decoder_push(&dec, 65536, out, sizeof(out), &got) == -EINVAL, "decoder id 65536");
	CHECK(gf_decoder_push(&dec, 65530, out, sizeof(out), &got) == 0 && got == 0,
	      "decoder id without bytes");
	CHECK(gf_decoder_push(&dec, 65529, out, 10, &got) == -ENOSPC, "decoder small buffer");

	CHECK(gf_vocab_copy(&cp, v) == 0 && cp.n_tokens == v->n_tokens &&
	      memcmp(cp.offsets, v->offsets, ((size_t)v->n_tokens + 1) * sizeof(uint32_t)) == 0 &&
	      memcmp(cp.bytes, v->bytes, v->offsets[v->n_tokens]) == 0, "vocab copy differs");
	gf_vocab_free(&cp);
	gf_vocab_free(&cp); /* free twice / NULL-safe */
	gf_vocab_free(NULL);
	gf_tokenizer_free(NULL);

	/* A sink that stops: its value comes back from feed. */
	for (size_t i = 0; i < sizeof(text); i++)
		text[i] = (uint8_t)('a' + i % 7 + (i % 13 == 0 ? 0x20 : 0));
	gf_encoder_init(&enc, tk);
	rc = gf_encoder_feed(&enc, text, sizeof(text), sink, &c);
	CHECK(rc == 7 && c.calls == 1 && c.n == 256, "stopping sink: rc %d calls %d", rc, c.calls);
	free(c.ids);

	/* Empty input: no ids, and finish on a fresh encoder calls no sink. */
	rc = gf_tokenize(tk, text, 0, &ids, &n_ids);
	CHECK(rc == 0 && n_ids == 0, "empty input gives %zu ids", n_ids);
	free(ids);

	/* Random id sequences: the decoder's output is always the concatenated bytes. */
	for (int round = 0; round < 200; round++) {
		int32_t rid[40];
		uint8_t want[40 * GF_TOKEN_MAX_BYTES];
		size_t nw = 0;

		for (int i = 0; i < 40; i++) {
			rid[i] = (int32_t)(round % 2 ? rnd(65536) : 1 + rnd(256));
			gf_tokenizer_token(tk, rid[i], &len);
			memcpy(want + nw, v->bytes + v->offsets[rid[i]], len);
			nw += len;
		}
		test_decode(tk, "random ids", rid, 40, want, nw, valid_utf8(want, nw));
	}
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN] = "";
	gf_vocab v;
	gf_tokenizer tk;
	int rc;

	if (argc != 3) {
		fprintf(stderr, "usage: %s VOCAB.txt CASES.jsonl\n", argv[0]);
		return 1;
	}
	rc = gf_vocab_load_file(&v, argv[1], err);
	if (rc) {
		fprintf(stderr, "FAIL: %s\n", err);
		return 1;
	}
	test_vocab(&v);
	rc = gf_tokenizer_init(&tk, &v, err);
	if (rc) {
		fprintf(stderr, "FAIL: tokenizer init: %s\n", err);
		gf_vocab_free(&v);
		return 1;
	}
	test_cases(&tk, argv[2]);
	test_api_edges(&tk, &v);
	test_loader_errors(argv[1]);
	test_small_vocabs();
	gf_tokenizer_free(&tk);
	gf_vocab_free(&v);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("model_tokenizer: all checks passed\n");
	return 0;
}
