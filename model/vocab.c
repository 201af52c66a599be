/*
 * vocab.c — the RWKV World vocabulary: `<id> <python literal> <byte length>` per line.
 *
 * The literal is a Python str literal ('...' or "...", its UTF-8 encoding gives the token
 * bytes) or a bytes literal (b'...'). We decode exactly the escapes Python would, so the
 * stated byte length checks our decoding on every line.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "goldfinch.h"

/* The World vocabulary has 65529 tokens; the model's embedding has 65536 rows. */
#define VOCAB_MIN_SIZE 65536
/* Ids beyond this are surely a corrupt file, not a vocabulary: refuse before allocating. */
#define VOCAB_MAX_ID (1 << 24)

static const char endoftext[] = "<|endoftext|>";

struct entry {
	int32_t id;
	uint32_t off; /* into the pool */
	uint32_t len;
	long line;
};

struct loader {
	const char *path;
	long line;
	char *err;
	struct entry *ents;
	size_t n_ents, cap_ents;
	uint8_t *pool;
	size_t n_pool, cap_pool;
};

static int fail(struct loader *ld, int rc, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!ld->err)
		return rc;
	if (ld->line > 0)
		n = snprintf(ld->err, GF_ERR_LEN, "%s:%ld: ", ld->path, ld->line);
	else
		n = snprintf(ld->err, GF_ERR_LEN, "%s: ", ld->path);
	if (n < 0 || n >= GF_ERR_LEN)
		return rc;
	va_start(ap, fmt);
	vsnprintf(ld->err + n, GF_ERR_LEN - (size_t)n, fmt, ap);
	va_end(ap);
	return rc;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Appends one byte to out (capacity GF_TOKEN_MAX_BYTES); false when full. */
static int put(uint8_t *out, size_t *n, uint8_t b)
{
	if (*n >= GF_TOKEN_MAX_BYTES)
		return 0;
	out[(*n)++] = b;
	return 1;
}

static int put_utf8(uint8_t *out, size_t *n, uint32_t cp)
{
	if (cp < 0x80)
		return put(out, n, (uint8_t)cp);
	if (cp < 0x800)
		return put(out, n, 0xc0 | (cp >> 6)) && put(out, n, 0x80 | (cp & 0x3f));
	if (cp < 0x10000)
		return put(out, n, 0xe0 | (cp >> 12)) && put(out, n, 0x80 | ((cp >> 6) & 0x3f)) &&
		       put(out, n, 0x80 | (cp & 0x3f));
	return put(out, n, 0xf0 | (cp >> 18)) && put(out, n, 0x80 | ((cp >> 12) & 0x3f)) &&
	       put(out, n, 0x80 | ((cp >> 6) & 0x3f)) && put(out, n, 0x80 | (cp & 0x3f));
}

/*
 * Decodes the literal starting at *ps (within [*ps, end)) into out; *ps ends after the
 * closing quote. Returns 0 or -EINVAL with err set.
 */
static int parse_literal(struct loader *ld, const char **ps, const char *end, uint8_t *out,
			 size_t *n_out)
{
	const char *s = *ps;
	int is_bytes = 0;
	char q;
	size_t n = 0;

	if (s < end && (*s == 'b' || *s == 'B')) {
		is_bytes = 1;
		s++;
	}
	if (s >= end || (*s != '\'' && *s != '"'))
		return fail(ld, -EINVAL, "expected a quoted literal after the id");
	q = *s++;
	for (;;) {
		unsigned char c;
		uint32_t cp;
		int ok = 1;

		if (s >= end)
			return fail(ld, -EINVAL, "unterminated literal");
		c = (unsigned char)*s++;
		if (c == (unsigned char)q)
			break;
		if (c != '\\') {
			if (is_bytes && c >= 0x80)
				return fail(ld, -EINVAL, "non-ASCII byte 0x%02x in a bytes literal", c);
			if (!put(out, &n, c))
				goto too_long;
			continue;
		}
		if (s >= end)
			return fail(ld, -EINVAL, "unterminated literal");
		c = (unsigned char)*s++;
		switch (c) {
		case '\\': ok = put(out, &n, '\\'); break;
		case '\'': ok = put(out, &n, '\''); break;
		case '"': ok = put(out, &n, '"'); break;
		case 'a': ok = put(out, &n, 0x07); break;
		case 'b': ok = put(out, &n, 0x08); break;
		case 'f': ok = put(out, &n, 0x0c); break;
		case 'n': ok = put(out, &n, 0x0a); break;
		case 'r': ok = put(out, &n, 0x0d); break;
		case 't': ok = put(out, &n, 0x09); break;
		case 'v': ok = put(out, &n, 0x0b); break;
		case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7':
			cp = c - '0';
			for (int i = 0; i < 2 && s < end && *s >= '0' && *s <= '7'; i++)
				cp = cp * 8 + (uint32_t)(*s++ - '0');
			if (is_bytes) {
				if (cp > 0xff)
					return fail(ld, -EINVAL, "octal escape above \\377 in a bytes literal");
				ok = put(out, &n, (uint8_t)cp);
			} else {
				ok = put_utf8(out, &n, cp);
			}
			break;
		case 'x':
		case 'u':
		case 'U': {
			int digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;

			if (is_bytes && c != 'x') {
				/* Not an escape in a bytes literal: Python keeps the backslash. */
				ok = put(out, &n, '\\') && put(out, &n, c);
				break;
			}
			cp = 0;
			for (int i = 0; i < digits; i++) {
				int h = s < end ? hexval((unsigned char)*s) : -1;

				if (h < 0)
					return fail(ld, -EINVAL, "truncated \\%c escape", c);
				cp = cp * 16 + (uint32_t)h;
				s++;
			}
			if (is_bytes) {
				ok = put(out, &n, (uint8_t)cp);
				break;
			}
			if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
				return fail(ld, -EINVAL, "code point U+%04X has no UTF-8 encoding", cp);
			ok = put_utf8(out, &n, cp);
			break;
		}
		default:
			if (c == 'N' && !is_bytes)
				return fail(ld, -EINVAL, "\\N{...} escapes are not supported");
			/* Python keeps unknown escapes as they are. */
			if (c >= 0x80 && is_bytes)
				return fail(ld, -EINVAL, "non-ASCII byte 0x%02x in a bytes literal", c);
			ok = put(out, &n, '\\') && put(out, &n, c);
			break;
		}
		if (!ok)
			goto too_long;
	}
	*ps = s;
	*n_out = n;
	return 0;
too_long:
	return fail(ld, -EINVAL, "token longer than %d bytes", GF_TOKEN_MAX_BYTES);
}

/* Parses a decimal number at *ps; -1 if none or above max. */
static long parse_num(const char **ps, const char *end, long max)
{
	const char *s = *ps;
	long v = 0;

	if (s >= end || *s < '0' || *s > '9')
		return -1;
	while (s < end && *s >= '0' && *s <= '9') {
		v = v * 10 + (*s++ - '0');
		if (v > max)
			return -1;
	}
	*ps = s;
	return v;
}

static int add_entry(struct loader *ld, int32_t id, const uint8_t *b, size_t len)
{
	if (ld->n_ents == ld->cap_ents) {
		size_t cap = ld->cap_ents ? 2 * ld->cap_ents : 4096;
		struct entry *e = realloc(ld->ents, cap * sizeof(*e));

		if (!e)
			return fail(ld, -ENOMEM, "out of memory");
		ld->ents = e;
		ld->cap_ents = cap;
	}
	if (ld->n_pool + len > ld->cap_pool) {
		size_t cap = ld->cap_pool ? 2 * ld->cap_pool : 1 << 18;
		uint8_t *p;

		while (cap < ld->n_pool + len)
			cap *= 2;
		p = realloc(ld->pool, cap);
		if (!p)
			return fail(ld, -ENOMEM, "out of memory");
		ld->pool = p;
		ld->cap_pool = cap;
	}
	memcpy(ld->pool + ld->n_pool, b, len);
	ld->ents[ld->n_ents].id = id;
	ld->ents[ld->n_ents].off = (uint32_t)ld->n_pool;
	ld->ents[ld->n_ents].len = (uint32_t)len;
	ld->ents[ld->n_ents].line = ld->line;
	ld->n_ents++;
	ld->n_pool += len;
	return 0;
}

static int parse_line(struct loader *ld, const char *s, const char *end)
{
	uint8_t tok[GF_TOKEN_MAX_BYTES];
	size_t n = 0;
	long id, len;
	int rc;

	id = parse_num(&s, end, VOCAB_MAX_ID - 1);
	if (id < 0)
		return fail(ld, -EINVAL, "expected a token id below %d at the start of the line",
			    VOCAB_MAX_ID);
	if (s >= end || *s != ' ')
		return fail(ld, -EINVAL, "expected a space after id %ld", id);
	s++;
	rc = parse_literal(ld, &s, end, tok, &n);
	if (rc)
		return rc;
	if (s >= end || *s != ' ')
		return fail(ld, -EINVAL, "token %ld: expected a space after the literal", id);
	s++;
	len = parse_num(&s, end, 1 << 20);
	if (len < 0 || s != end)
		return fail(ld, -EINVAL, "token %ld: expected the byte length at the end of the line", id);
	if ((size_t)len != n)
		return fail(ld, -EINVAL, "token %ld: literal is %zu bytes but the line says %ld",
			    id, n, len);
	if (n == 0)
		return fail(ld, -EINVAL, "token %ld: empty token", id);
	return add_entry(ld, (int32_t)id, tok, n);
}

static int read_all(struct loader *ld, char **buf, size_t *len)
{
	FILE *f = fopen(ld->path, "rb");
	char *b = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;

	if (!f)
		return fail(ld, errno ? -errno : -EIO, "cannot open: %s", strerror(errno));
	for (;;) {
		size_t got;

		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 1 << 20;
			char *nb = realloc(b, ncap);

			if (!nb) {
				rc = fail(ld, -ENOMEM, "out of memory");
				goto close_file;
			}
			b = nb;
			cap = ncap;
		}
		got = fread(b + n, 1, cap - n, f);
		n += got;
		if (got == 0)
			break;
	}
	if (ferror(f))
		rc = fail(ld, -EIO, "read error");
close_file:
	fclose(f);
	if (rc) {
		free(b);
		return rc;
	}
	*buf = b;
	*len = n;
	return 0;
}

/* Lays the parsed entries out as a gf_vocab. */
static int build(struct loader *ld, gf_vocab *v)
{
	int32_t max_id = -1, n_tok;
	int have0 = 0;
	int32_t *ent_of = NULL;
	size_t total;
	int rc = -ENOMEM;

	for (size_t i = 0; i < ld->n_ents; i++) {
		if (ld->ents[i].id > max_id)
			max_id = ld->ents[i].id;
		if (ld->ents[i].id == 0)
			have0 = 1;
	}
	n_tok = max_id + 1 > VOCAB_MIN_SIZE ? max_id + 1 : VOCAB_MIN_SIZE;
	ent_of = malloc((size_t)n_tok * sizeof(*ent_of));
	v->offsets = calloc((size_t)n_tok + 1, sizeof(*v->offsets));
	if (!ent_of || !v->offsets) {
		rc = fail(ld, -ENOMEM, "out of memory");
		goto free_all;
	}
	for (int32_t i = 0; i < n_tok; i++)
		ent_of[i] = -1;
	for (size_t i = 0; i < ld->n_ents; i++) {
		int32_t id = ld->ents[i].id;

		if (ent_of[id] >= 0) {
			ld->line = ld->ents[i].line;
			rc = fail(ld, -EINVAL, "token id %d appears twice (first on line %ld)", id,
				  ld->ents[ent_of[id]].line);
			goto free_all;
		}
		ent_of[id] = (int32_t)i;
	}
	/* id 0 is <|endoftext|>: the file leaves it out, the official tokenizer adds it. */
	if (!have0 && n_tok > 0) {
		rc = add_entry(ld, 0, (const uint8_t *)endoftext, sizeof(endoftext) - 1);
		if (rc)
			goto free_all;
		ent_of[0] = (int32_t)(ld->n_ents - 1);
	}
	total = 0;
	for (int32_t i = 0; i < n_tok; i++) {
		v->offsets[i] = (uint32_t)total;
		if (ent_of[i] >= 0)
			total += ld->ents[ent_of[i]].len;
	}
	v->offsets[n_tok] = (uint32_t)total;
	v->bytes = malloc(total ? total : 1);
	if (!v->bytes) {
		rc = fail(ld, -ENOMEM, "out of memory");
		goto free_all;
	}
	for (int32_t i = 0; i < n_tok; i++)
		if (ent_of[i] >= 0)
			memcpy(v->bytes + v->offsets[i], ld->pool + ld->ents[ent_of[i]].off,
			       ld->ents[ent_of[i]].len);
	v->n_tokens = n_tok;
	free(ent_of);
	return 0;
free_all:
	free(ent_of);
	free(v->offsets);
	free(v->bytes);
	v->offsets = NULL;
	v->bytes = NULL;
	return rc;
}

int gf_vocab_load_file(gf_vocab *v, const char *path, char *err)
{
	struct loader ld = { .path = path, .err = err };
	char *buf = NULL;
	size_t len = 0;
	int rc;

	memset(v, 0, sizeof(*v));
	if (err)
		err[0] = '\0';
	rc = read_all(&ld, &buf, &len);
	if (rc)
		return rc;
	for (size_t pos = 0; pos < len;) {
		const char *s = buf + pos;
		const char *nl = memchr(s, '\n', len - pos);
		const char *end = nl ? nl : buf + len;

		ld.line++;
		pos = (size_t)(end - buf) + (nl ? 1 : 0);
		if (end > s && end[-1] == '\r')
			end--;
		if (end == s)
			continue; /* blank line */
		rc = parse_line(&ld, s, end);
		if (rc)
			goto free_loader;
	}
	if (ld.n_ents == 0) {
		ld.line = 0;
		rc = fail(&ld, -EINVAL, "no tokens");
		goto free_loader;
	}
	rc = build(&ld, v);
free_loader:
	free(buf);
	free(ld.ents);
	free(ld.pool);
	return rc;
}

int gf_vocab_copy(gf_vocab *dst, const gf_vocab *src)
{
	size_t nb;

	memset(dst, 0, sizeof(*dst));
	if (!src || src->n_tokens < 0 || (src->n_tokens > 0 && !src->offsets))
		return -EINVAL;
	nb = src->n_tokens ? src->offsets[src->n_tokens] : 0;
	dst->offsets = malloc(((size_t)src->n_tokens + 1) * sizeof(*dst->offsets));
	dst->bytes = malloc(nb ? nb : 1);
	if (!dst->offsets || !dst->bytes) {
		gf_vocab_free(dst);
		return -ENOMEM;
	}
	if (src->n_tokens)
		memcpy(dst->offsets, src->offsets, ((size_t)src->n_tokens + 1) * sizeof(*dst->offsets));
	else
		dst->offsets[0] = 0;
	if (nb)
		memcpy(dst->bytes, src->bytes, nb);
	dst->n_tokens = src->n_tokens;
	return 0;
}

void gf_vocab_free(gf_vocab *v)
{
	if (!v)
		return;
	free(v->offsets);
	free(v->bytes);
	memset(v, 0, sizeof(*v));
}
