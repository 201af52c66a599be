/*
 * tokenizer.c — the RWKV World tokenizer: greedy longest match over bytes (DESIGN.md §2,
 * testdata/README.md §2), a streaming encoder in fixed memory and a UTF-8-aware decoder.
 *
 * The trie is one array of nodes in breadth-first order: the children of a node are
 * contiguous and sorted by byte, so a node is 12 bytes and needs no child pointers. The
 * root has all 256 children (every byte is a token) and is indexed directly.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "goldfinch.h"

struct gf_trie_node {
	int32_t token;     /* id of the token ending here, -1 if none */
	uint32_t first;    /* index of the first child */
	uint16_t n_child;  /* 0..256 */
	uint8_t label;     /* the byte that leads here from the parent */
	uint8_t unused;
};

static const uint8_t *tok_bytes(const gf_vocab *v, int32_t id, size_t *len)
{
	*len = v->offsets[id + 1] - v->offsets[id];
	return v->bytes + v->offsets[id];
}

/* For qsort_r: tokens by bytes, a prefix before its extensions, then by id. */
static int cmp_tokens(const void *a, const void *b, void *ctx)
{
	const gf_vocab *v = ctx;
	int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
	size_t la, lb;
	const uint8_t *pa = tok_bytes(v, ia, &la), *pb = tok_bytes(v, ib, &lb);
	int c = memcmp(pa, pb, la < lb ? la : lb);

	if (c)
		return c;
	if (la != lb)
		return la < lb ? -1 : 1;
	return ia < ib ? -1 : ia > ib;
}

static int set_err(char *err, int rc, const char *msg, int arg)
{
	if (err)
		snprintf(err, GF_ERR_LEN, msg, arg);
	return rc;
}

/*
 * Builds the trie breadth-first from the tokens sorted by bytes: the tokens below a node
 * are one contiguous range of the sorted order, and its children split that range by the
 * byte at the node's depth.
 */
static int build_trie(gf_tokenizer *tk, char *err)
{
	const gf_vocab *v = &tk->vocab;
	int32_t *order = NULL;
	uint32_t *lo = NULL, *hi = NULL;
	uint8_t *depth = NULL;
	size_t n_order = 0, max_nodes = 1, n_nodes;
	gf_trie_node *nodes = NULL;
	int rc = -ENOMEM;

	for (int32_t i = 0; i < v->n_tokens; i++) {
		size_t len = v->offsets[i + 1] - v->offsets[i];

		if (len > GF_TOKEN_MAX_BYTES)
			return set_err(err, -EINVAL, "vocab: token %d is longer than 128 bytes", i);
		if (len) {
			n_order++;
			max_nodes += len;
		}
	}
	order = malloc((n_order ? n_order : 1) * sizeof(*order));
	nodes = malloc(max_nodes * sizeof(*nodes));
	lo = malloc(max_nodes * sizeof(*lo));
	hi = malloc(max_nodes * sizeof(*hi));
	depth = malloc(max_nodes);
	if (!order || !nodes || !lo || !hi || !depth) {
		set_err(err, rc, "vocab: out of memory building the trie (%d tokens)", v->n_tokens);
		goto free_build;
	}
	n_order = 0;
	for (int32_t i = 0; i < v->n_tokens; i++)
		if (v->offsets[i + 1] > v->offsets[i])
			order[n_order++] = i;
	qsort_r(order, n_order, sizeof(*order), cmp_tokens, (void *)v);

	nodes[0] = (gf_trie_node){ .token = -1 };
	lo[0] = 0;
	hi[0] = (uint32_t)n_order;
	depth[0] = 0;
	n_nodes = 1;
	for (size_t ni = 0; ni < n_nodes; ni++) {
		uint32_t j = lo[ni], end = hi[ni];
		size_t d = depth[ni];
		gf_trie_node *nd = &nodes[ni];
		size_t len;

		nd->first = (uint32_t)n_nodes;
		nd->n_child = 0;
		/* Exact match sorts first; equal byte strings keep the lowest id. */
		while (j < end && (tok_bytes(v, order[j], &len), len == d)) {
			if (nd->token < 0)
				nd->token = order[j];
			j++;
		}
		while (j < end) {
			uint8_t b = tok_bytes(v, order[j], &len)[d];
			uint32_t k = j + 1;

			while (k < end && tok_bytes(v, order[k], &len)[d] == b)
				k++;
			nodes[n_nodes] = (gf_trie_node){ .token = -1, .label = b };
			lo[n_nodes] = j;
			hi[n_nodes] = k;
			depth[n_nodes] = (uint8_t)(d + 1);
			n_nodes++;
			nd->n_child++;
			j = k;
		}
	}
	/* Greedy matching always progresses only if every single byte is a token. */
	if (nodes[0].n_child != 256) {
		int missing = 0;

		for (uint32_t c = 0; c < nodes[0].n_child && nodes[1 + c].label == missing; c++)
			missing++;
		rc = set_err(err, -EINVAL, "vocab: no token for the single byte 0x%02x", missing);
		goto free_build;
	}
	for (int b = 0; b < 256; b++) {
		if (nodes[1 + b].token < 0) {
			rc = set_err(err, -EINVAL, "vocab: no token for the single byte 0x%02x", b);
			goto free_build;
		}
	}
	tk->nodes = realloc(nodes, n_nodes * sizeof(*nodes));
	if (!tk->nodes)
		tk->nodes = nodes;
	nodes = NULL;
	tk->n_nodes = (int32_t)n_nodes;
	tk->cap_nodes = (int32_t)n_nodes;
	rc = 0;
free_build:
	free(nodes);
	free(depth);
	free(hi);
	free(lo);
	free(order);
	return rc;
}

int gf_tokenizer_init(gf_tokenizer *tk, const gf_vocab *vocab, char *err)
{
	int rc;

	memset(tk, 0, sizeof(*tk));
	if (err)
		err[0] = '\0';
	if (!vocab || vocab->n_tokens <= 0 || !vocab->offsets)
		return set_err(err, -EINVAL, "vocab: empty vocabulary (%d tokens)",
			       vocab ? vocab->n_tokens : 0);
	rc = gf_vocab_copy(&tk->vocab, vocab);
	if (rc)
		return set_err(err, rc, "vocab: out of memory copying %d tokens", vocab->n_tokens);
	rc = build_trie(tk, err);
	if (rc)
		gf_tokenizer_free(tk);
	return rc;
}

void gf_tokenizer_free(gf_tokenizer *tk)
{
	if (!tk)
		return;
	gf_vocab_free(&tk->vocab);
	free(tk->nodes);
	memset(tk, 0, sizeof(*tk));
}

const uint8_t *gf_tokenizer_token(const gf_tokenizer *tk, int32_t id, size_t *len)
{
	const uint8_t *b;

	*len = 0;
	if (!tk || id < 0 || id >= tk->vocab.n_tokens)
		return NULL;
	b = tok_bytes(&tk->vocab, id, len);
	return *len ? b : NULL;
}

static inline const gf_trie_node *child(const gf_trie_node *nodes, const gf_trie_node *nd,
					uint8_t b)
{
	const gf_trie_node *c = nodes + nd->first;
	uint32_t n = nd->n_child, lo, hi;

	if (n == 256)
		return c + b;
	if (n <= 8) {
		for (uint32_t i = 0; i < n; i++)
			if (c[i].label == b)
				return c + i;
		return NULL;
	}
	lo = 0;
	hi = n;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;

		if (c[mid].label < b)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && c[lo].label == b ? c + lo : NULL;
}

/*
 * Longest token at the start of s[0..n). *decided is false when the walk reached the end of
 * s on a node that still has children: more input could give a longer match. n > 0.
 */
static size_t match(const gf_tokenizer *tk, const uint8_t *s, size_t n, int32_t *id,
		    int *decided)
{
	const gf_trie_node *nodes = tk->nodes;
	const gf_trie_node *nd = nodes + 1 + s[0]; /* the root has all 256 children */
	size_t best = 1, i = 1;

	*id = nd->token;
	for (;;) {
		const gf_trie_node *c;

		if (nd->n_child == 0) {
			*decided = 1;
			break;
		}
		if (i == n) {
			*decided = 0;
			break;
		}
		c = child(nodes, nd, s[i]);
		if (!c) {
			*decided = 1;
			break;
		}
		nd = c;
		i++;
		if (nd->token >= 0) {
			best = i;
			*id = nd->token;
		}
	}
	return best;
}

void gf_encoder_init(gf_encoder *enc, const gf_tokenizer *tk)
{
	memset(enc, 0, sizeof(*enc));
	enc->tk = tk;
}

static int emit(gf_encoder *enc, int32_t id, gf_token_sink sink, void *user)
{
	enc->out[enc->n_out++] = id;
	if (enc->n_out == sizeof(enc->out) / sizeof(enc->out[0])) {
		enc->n_out = 0;
		return sink(user, enc->out, sizeof(enc->out) / sizeof(enc->out[0]));
	}
	return 0;
}

static int flush_out(gf_encoder *enc, gf_token_sink sink, void *user)
{
	size_t n = enc->n_out;

	if (!n)
		return 0;
	enc->n_out = 0;
	return sink(user, enc->out, n);
}

/* Emits every token of pending whose extent is known (all when at_end); keeps the rest. */
static int drain(gf_encoder *enc, int at_end, gf_token_sink sink, void *user)
{
	size_t p = 0;
	int rc = 0;

	while (p < enc->n_pending) {
		int32_t id;
		int decided;
		size_t len = match(enc->tk, enc->pending + p, enc->n_pending - p, &id, &decided);

		if (!decided && !at_end)
			break;
		p += len;
		rc = emit(enc, id, sink, user);
		if (rc)
			break;
	}
	memmove(enc->pending, enc->pending + p, enc->n_pending - p);
	enc->n_pending -= p;
	return rc;
}

/*
 * A token is at most GF_TOKEN_MAX_BYTES long, so with a full pending buffer (twice that)
 * every token starting in its first half is decided: what stays pending is always shorter
 * than GF_TOKEN_MAX_BYTES, and the output does not depend on how the input was cut.
 */
int gf_encoder_feed(gf_encoder *enc, const uint8_t *data, size_t n, gf_token_sink sink, void *user)
{
	int rc;

	if (!enc->tk || !sink || (n && !data))
		return -EINVAL;
	while (n) {
		size_t take = sizeof(enc->pending) - enc->n_pending;

		if (take > n)
			take = n;
		memcpy(enc->pending + enc->n_pending, data, take);
		enc->n_pending += take;
		data += take;
		n -= take;
		rc = drain(enc, 0, sink, user);
		if (rc)
			return rc;
	}
	return flush_out(enc, sink, user);
}

int gf_encoder_finish(gf_encoder *enc, gf_token_sink sink, void *user)
{
	int rc;

	if (!enc->tk || !sink)
		return -EINVAL;
	rc = drain(enc, 1, sink, user);
	enc->n_pending = 0;
	if (rc)
		return rc;
	return flush_out(enc, sink, user);
}

int gf_tokenize(const gf_tokenizer *tk, const uint8_t *data, size_t n, int32_t **ids, size_t *n_ids)
{
	size_t cap = n / 3 + 16, cnt = 0, p = 0;
	int32_t *out;

	*ids = NULL;
	*n_ids = 0;
	if (!tk || !tk->nodes || (n && !data))
		return -EINVAL;
	out = malloc(cap * sizeof(*out));
	if (!out)
		return -ENOMEM;
	while (p < n) {
		int32_t id;
		int decided;

		if (cnt == cap) {
			size_t ncap = cap + cap / 2;
			int32_t *o = realloc(out, ncap * sizeof(*o));

			if (!o) {
				free(out);
				return -ENOMEM;
			}
			out = o;
			cap = ncap;
		}
		p += match(tk, data + p, n - p, &id, &decided);
		out[cnt++] = id;
	}
	*ids = out;
	*n_ids = cnt;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */

void gf_decoder_init(gf_decoder *dec, const gf_tokenizer *tk)
{
	memset(dec, 0, sizeof(*dec));
	dec->tk = tk;
}

/* Length of the UTF-8 sequence a lead byte starts, 0 if b cannot start a multi-byte one. */
static size_t utf8_seq_len(uint8_t b)
{
	if (b >= 0xc2 && b <= 0xdf)
		return 2;
	if (b >= 0xe0 && b <= 0xef)
		return 3;
	if (b >= 0xf0 && b <= 0xf4)
		return 4;
	return 0;
}

/* Whether s[0..n) (n >= 1, s[0] a lead byte) can still grow into a valid sequence. */
static int utf8_valid_prefix(const uint8_t *s, size_t n)
{
	uint8_t lo = 0x80, hi = 0xbf;

	if (n < 2)
		return 1;
	switch (s[0]) {
	case 0xe0: lo = 0xa0; break; /* no overlong forms */
	case 0xed: hi = 0x9f; break; /* no surrogates */
	case 0xf0: lo = 0x90; break;
	case 0xf4: hi = 0x8f; break; /* nothing above U+10FFFF */
	}
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return 1;
}

/* How many bytes at the end of s[0..n) are an incomplete but still valid UTF-8 sequence. */
static size_t utf8_partial_tail(const uint8_t *s, size_t n)
{
	for (size_t k = 1; k <= 3 && k <= n; k++) {
		uint8_t b = s[n - k];
		size_t need;

		if (b >= 0x80 && b <= 0xbf)
			continue; /* continuation: the lead is further back */
		need = utf8_seq_len(b);
		if (need > k && utf8_valid_prefix(s + n - k, k))
			return k;
		return 0;
	}
	return 0;
}

int gf_decoder_push(gf_decoder *dec, int32_t id, uint8_t *out, size_t cap, size_t *n_out)
{
	const uint8_t *b;
	size_t len, n, keep;

	*n_out = 0;
	if (!dec->tk || id < 0 || id >= dec->tk->vocab.n_tokens)
		return -EINVAL;
	b = tok_bytes(&dec->tk->vocab, id, &len);
	n = dec->n_held + len;
	if (cap < n)
		return -ENOSPC;
	memcpy(out, dec->held, dec->n_held);
	memcpy(out + dec->n_held, b, len);
	keep = utf8_partial_tail(out, n);
	memcpy(dec->held, out + n - keep, keep);
	dec->n_held = keep;
	*n_out = n - keep;
	return 0;
}

int gf_decoder_flush(gf_decoder *dec, uint8_t *out, size_t cap, size_t *n_out)
{
	*n_out = 0;
	if (cap < dec->n_held)
		return -ENOSPC;
	memcpy(out, dec->held, dec->n_held);
	*n_out = dec->n_held;
	dec->n_held = 0;
	return 0;
}
