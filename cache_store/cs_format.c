/*
 * cs_format.c — encoders and decoders of everything the store puts on disk: page records,
 * index entries, blob headers and the manifest. Layouts are documented in README.md; every
 * decoder treats its input as hostile (a flipped bit, a truncated file) and says what is
 * wrong rather than returning doubtful data.
 */
#include "cs_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <lz4.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static const uint8_t page_magic[4] = { 'G', 'F', 'P', 'G' };
static const uint8_t blob_magic[4] = { 'G', 'F', 'B', 'L' };
static const uint8_t man_magic[8] = { 'G', 'F', 'C', 'S', 'M', 'A', 'N', 'F' };

size_t cs_dtype_size(cs_dtype t)
{
	switch (t) {
	case CS_DTYPE_F32:
		return 4;
	case CS_DTYPE_F16:
	case CS_DTYPE_BF16:
		return 2;
	}
	return 0;
}

const char *cs_dtype_name(cs_dtype t)
{
	switch (t) {
	case CS_DTYPE_F32:
		return "f32";
	case CS_DTYPE_F16:
		return "f16";
	case CS_DTYPE_BF16:
		return "bf16";
	}
	return "?";
}

void cs_ctx_label(char out[40], cs_key key, uint64_t serial)
{
	char hex[33];

	cs_key_hex(key, hex);
	snprintf(out, 40, "%.12s (#%" PRIu64 ")", hex, serial);
}

void cs_name_pages(char out[64], uint64_t serial)
{
	snprintf(out, 64, "c%016" PRIx64 ".pages", serial);
}

void cs_name_idx(char out[64], uint64_t serial)
{
	snprintf(out, 64, "c%016" PRIx64 ".idx", serial);
}

void cs_name_blob(char out[64], uint64_t serial, uint64_t gen)
{
	snprintf(out, 64, "c%016" PRIx64 ".blob.%" PRIu64, serial, gen);
}

/* ---- page records ----
 *  0 magic "GFPG"      4 u16 major    6 u16 minor    8 u64 serial     16 u64 page index
 * 24 u32 n_tokens     28 u32 page_tokens            32 u32 width      36 u8 dtype
 * 37 u8 flags         38 u16 zero    40 u32 token section bytes      44 u32 rows section bytes
 * 48 u64 XXH3-64 of bytes [64, record end)  56 u64 XXH3-64 of bytes [0, 56)
 * then the token section, the rows section, zeros up to a multiple of CS_ALIGN.
 */

size_t cs_page_record_bound(uint32_t page_tokens, uint32_t width, size_t esz)
{
	/* a section LZ4 cannot shrink is stored raw, so raw sizes bound the record */
	return cs_round_up(CS_PAGE_HDR + (uint64_t)page_tokens * 4 +
			   (uint64_t)page_tokens * width * esz, CS_ALIGN);
}

/* Writes one section at dst: LZ4 of the (optionally shuffled) bytes, or the bytes as they
 * are when LZ4 does not shrink them (*raw). Returns its size. The shuffle goes straight to
 * dst so that incompressible data, the common case for c rows, costs no extra copy. */
static size_t put_section(const uint8_t *src, size_t len, size_t esz, bool shuffle,
			  uint8_t *scratch, uint8_t *dst, bool *raw)
{
	const uint8_t *from = src;
	int n;

	if (shuffle && esz > 1) {
		cs_shuffle(dst, src, len / esz, esz);
		from = dst;
	}
	n = len > 1 ? LZ4_compress_default((const char *)from, (char *)scratch, (int)len,
					   (int)len - 1) : 0;
	if (n > 0) {
		memcpy(dst, scratch, (size_t)n);
		*raw = false;
		return (size_t)n;
	}
	if (from != dst)
		memcpy(dst, src, len);
	*raw = true;
	return len;
}

int cs_page_encode(const struct cs_page_meta *m, const void *rows, const uint32_t *tok,
		   void *scratch, uint8_t *out, size_t cap, size_t *disk_len)
{
	size_t esz = cs_dtype_size(m->dtype);
	size_t rb = (size_t)m->n_tokens * m->width * esz, tb = (size_t)m->n_tokens * 4;
	size_t ct, cr, total, disk;
	uint8_t flags = m->shuffle ? CS_PAGE_SHUFFLED : 0;
	bool raw;

	if (!esz || !m->n_tokens || m->n_tokens > m->page_tokens ||
	    cap < cs_page_record_bound(m->n_tokens, m->width, esz))
		return -EINVAL;
	ct = put_section((const uint8_t *)tok, tb, 4, m->shuffle, scratch, out + CS_PAGE_HDR, &raw);
	if (raw)
		flags |= CS_PAGE_TOK_RAW;
	cr = put_section(rows, rb, esz, m->shuffle, scratch, out + CS_PAGE_HDR + ct, &raw);
	if (raw)
		flags |= CS_PAGE_ROWS_RAW;
	total = CS_PAGE_HDR + ct + cr;
	disk = cs_round_up(total, CS_ALIGN);
	memset(out + total, 0, disk - total);

	memset(out, 0, CS_PAGE_HDR);
	memcpy(out, page_magic, 4);
	cs_put16(out + 4, CS_FORMAT_MAJOR);
	cs_put16(out + 6, CS_FORMAT_MINOR);
	cs_put64(out + 8, m->serial);
	cs_put64(out + 16, m->index);
	cs_put32(out + 24, m->n_tokens);
	cs_put32(out + 28, m->page_tokens);
	cs_put32(out + 32, m->width);
	out[36] = (uint8_t)m->dtype;
	out[37] = flags;
	cs_put32(out + 40, (uint32_t)ct);
	cs_put32(out + 44, (uint32_t)cr);
	cs_put64(out + 48, XXH3_64bits(out + CS_PAGE_HDR, disk - CS_PAGE_HDR));
	cs_put64(out + 56, XXH3_64bits(out, 56));
	*disk_len = disk;
	return 0;
}

static int bad(char *why, size_t why_len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int bad(char *why, size_t why_len, const char *fmt, ...)
{
	va_list ap;

	if (why && why_len) {
		va_start(ap, fmt);
		vsnprintf(why, why_len, fmt, ap);
		va_end(ap);
	}
	return -EBADMSG;
}

/* Reads one section into dst (NULL: check only, into scratch). A raw shuffled section is
 * unshuffled straight from the record. */
static int get_section(const uint8_t *src, size_t clen, bool raw, size_t len, size_t esz,
		       bool shuffled, uint8_t *scratch, uint8_t *dst)
{
	bool planes = shuffled && esz > 1;

	if (raw) {
		if (clen != len)
			return -1;
		if (!dst)
			return 0;
		if (planes)
			cs_unshuffle(dst, src, len / esz, esz);
		else
			memcpy(dst, src, len);
		return 0;
	}
	if (LZ4_decompress_safe((const char *)src, (char *)(planes || !dst ? scratch : dst),
				(int)clen, (int)len) != (int)len)
		return -1;
	if (dst && planes)
		cs_unshuffle(dst, scratch, len / esz, esz);
	return 0;
}

int cs_page_decode(const struct cs_page_meta *m, const uint8_t *rec, size_t disk_len,
		   void *scratch, void *rows, uint32_t *tok, char *why, size_t why_len)
{
	size_t esz = cs_dtype_size(m->dtype);
	size_t rb = (size_t)m->n_tokens * m->width * esz, tb = (size_t)m->n_tokens * 4;
	uint32_t ct, cr;
	uint8_t flags;
	bool shuffled;

	if (disk_len < CS_ALIGN || disk_len % CS_ALIGN)
		return bad(why, why_len, "record length %zu is not a multiple of %u", disk_len,
			   CS_ALIGN);
	if (memcmp(rec, page_magic, 4))
		return bad(why, why_len, "bad page magic");
	if (XXH3_64bits(rec, 56) != cs_get64(rec + 56))
		return bad(why, why_len, "header checksum mismatch");
	if (cs_get16(rec + 4) != CS_FORMAT_MAJOR)
		return bad(why, why_len, "page format %u.%u, this reader knows %u.x",
			   cs_get16(rec + 4), cs_get16(rec + 6), CS_FORMAT_MAJOR);
	if (XXH3_64bits(rec + CS_PAGE_HDR, disk_len - CS_PAGE_HDR) != cs_get64(rec + 48))
		return bad(why, why_len, "payload checksum mismatch");
	if (cs_get64(rec + 8) != m->serial || cs_get64(rec + 16) != m->index)
		return bad(why, why_len, "record holds page %" PRIu64 " of #%" PRIu64,
			   cs_get64(rec + 16), cs_get64(rec + 8));
	if (cs_get32(rec + 24) != m->n_tokens || cs_get32(rec + 28) != m->page_tokens ||
	    cs_get32(rec + 32) != m->width || rec[36] != (uint8_t)m->dtype)
		return bad(why, why_len,
			   "record shape %u tokens of %u, width %u, dtype %u; index says %u of %u, "
			   "width %u, dtype %u", cs_get32(rec + 24), cs_get32(rec + 28),
			   cs_get32(rec + 32), rec[36], m->n_tokens, m->page_tokens, m->width,
			   (unsigned)m->dtype);
	flags = rec[37];
	ct = cs_get32(rec + 40);
	cr = cs_get32(rec + 44);
	if (flags & ~(CS_PAGE_SHUFFLED | CS_PAGE_ROWS_RAW | CS_PAGE_TOK_RAW) ||
	    (uint64_t)ct + cr > disk_len - CS_PAGE_HDR)
		return bad(why, why_len, "bad section sizes %u + %u in a record of %zu", ct, cr,
			   disk_len);
	shuffled = flags & CS_PAGE_SHUFFLED;
	if (get_section(rec + CS_PAGE_HDR, ct, flags & CS_PAGE_TOK_RAW, tb, 4, shuffled, scratch,
			(uint8_t *)tok))
		return bad(why, why_len, "token section does not decompress to %zu bytes", tb);
	if (get_section(rec + CS_PAGE_HDR + ct, cr, flags & CS_PAGE_ROWS_RAW, rb, esz, shuffled,
			scratch, rows))
		return bad(why, why_len, "rows section does not decompress to %zu bytes", rb);
	return 0;
}

/* ---- index entries: u64 page, u64 offset, u32 disk_len, u32 n_tokens, u64 XXH3-64 ---- */

void cs_idx_encode(uint8_t out[CS_IDX_ENTRY], const struct cs_idx *e, uint64_t serial)
{
	cs_put64(out, e->page);
	cs_put64(out + 8, e->offset);
	cs_put32(out + 16, e->disk_len);
	cs_put32(out + 20, e->n_tokens);
	cs_put64(out + 24, XXH3_64bits_withSeed(out, 24, serial));
}

int cs_idx_decode(const uint8_t in[CS_IDX_ENTRY], struct cs_idx *e, uint64_t serial)
{
	if (XXH3_64bits_withSeed(in, 24, serial) != cs_get64(in + 24))
		return -EBADMSG;
	e->page = cs_get64(in);
	e->offset = cs_get64(in + 8);
	e->disk_len = cs_get32(in + 16);
	e->n_tokens = cs_get32(in + 20);
	return 0;
}

/* ---- blob files: header then the blob ----
 *  0 magic "GFBL"  4 u16 major  6 u16 minor  8 u64 serial  16 u64 generation  24 u64 length
 * 32 u64 XXH3-64 of the blob   40 u64 XXH3-64 of bytes [0, 40)
 */

uint64_t cs_blob_checksum(const void *blob, uint64_t len)
{
	return XXH3_64bits(len ? blob : "", len);
}

void cs_blob_header(uint8_t out[CS_BLOB_HDR], uint64_t serial, uint64_t gen,
		    const void *blob, uint64_t len)
{
	memset(out, 0, CS_BLOB_HDR);
	memcpy(out, blob_magic, 4);
	cs_put16(out + 4, CS_FORMAT_MAJOR);
	cs_put16(out + 6, CS_FORMAT_MINOR);
	cs_put64(out + 8, serial);
	cs_put64(out + 16, gen);
	cs_put64(out + 24, len);
	cs_put64(out + 32, cs_blob_checksum(blob, len));
	cs_put64(out + 40, XXH3_64bits(out, 40));
}

int cs_blob_check(const uint8_t hdr[CS_BLOB_HDR], uint64_t serial, uint64_t gen,
		  const void *blob, uint64_t len, uint64_t expect_check, char *why, size_t why_len)
{
	if (memcmp(hdr, blob_magic, 4) || XXH3_64bits(hdr, 40) != cs_get64(hdr + 40))
		return bad(why, why_len, "blob header damaged");
	if (cs_get16(hdr + 4) != CS_FORMAT_MAJOR)
		return bad(why, why_len, "blob format %u.%u, this reader knows %u.x",
			   cs_get16(hdr + 4), cs_get16(hdr + 6), CS_FORMAT_MAJOR);
	if (cs_get64(hdr + 8) != serial || cs_get64(hdr + 16) != gen || cs_get64(hdr + 24) != len)
		return bad(why, why_len, "blob header names #%" PRIu64 " generation %" PRIu64
			   " of %" PRIu64 " bytes", cs_get64(hdr + 8), cs_get64(hdr + 16),
			   cs_get64(hdr + 24));
	if (cs_blob_checksum(blob, len) != cs_get64(hdr + 32) || cs_get64(hdr + 32) != expect_check)
		return bad(why, why_len, "blob checksum mismatch");
	return 0;
}

/* ---- manifest ----
 * header: 0 "GFCSMANF"  8 u16 major  10 u16 minor  12 u32 entry size  16 u64 generation
 *         24 u64 next serial  32 u64 entries  40 u64 XXH3-64 of the entries  48 u32 record
 *         alignment  52 u32 zero  56 u64 XXH3-64 of bytes [0, 56)
 * entry:  0 serial  8 key.hi  16 key.lo  24 model_id  32 n_tokens  40 n_pages  48 data_len
 *         56 idx_entries  64 raw_bytes  72 blob_gen  80 blob_len  88 blob XXH3-64
 *         96 i64 created_ns  104 i64 last_use_ns (all u64 unless said)  112 u32 page_tokens
 *         116 u32 width  120 u32 dtype  124 u32 flags  128 name, NUL-padded to 128 bytes
 */

int cs_manifest_encode(uint64_t gen, uint64_t next_serial, struct cs_ctx *const *ctx, size_t n,
		       uint8_t **out, size_t *len)
{
	size_t total = CS_MAN_HDR + n * CS_MAN_ENTRY;
	uint8_t *buf = calloc(1, total), *e;

	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct cs_ctx *c = ctx[i];

		e = buf + CS_MAN_HDR + i * CS_MAN_ENTRY;
		cs_put64(e, c->serial);
		cs_put64(e + 8, c->key.hi);
		cs_put64(e + 16, c->key.lo);
		cs_put64(e + 24, c->model_id);
		cs_put64(e + 32, c->n_tokens);
		cs_put64(e + 40, c->n_pages);
		cs_put64(e + 48, c->data_len);
		cs_put64(e + 56, c->idx_entries);
		cs_put64(e + 64, c->raw_bytes);
		cs_put64(e + 72, c->blob_gen);
		cs_put64(e + 80, c->blob_len);
		cs_put64(e + 88, c->blob_check);
		cs_put64(e + 96, (uint64_t)c->created_ns);
		cs_put64(e + 104, (uint64_t)c->last_use_ns);
		cs_put32(e + 112, c->page_tokens);
		cs_put32(e + 116, c->width);
		cs_put32(e + 120, (uint32_t)c->dtype);
		cs_put32(e + 124, c->flags);
		memcpy(e + 128, c->name, strnlen(c->name, CS_NAME_MAX - 1));
	}
	memcpy(buf, man_magic, 8);
	cs_put16(buf + 8, CS_FORMAT_MAJOR);
	cs_put16(buf + 10, CS_FORMAT_MINOR);
	cs_put32(buf + 12, CS_MAN_ENTRY);
	cs_put64(buf + 16, gen);
	cs_put64(buf + 24, next_serial);
	cs_put64(buf + 32, n);
	cs_put64(buf + 40, XXH3_64bits(buf + CS_MAN_HDR, total - CS_MAN_HDR));
	cs_put32(buf + 48, CS_ALIGN);
	cs_put64(buf + 56, XXH3_64bits(buf, 56));
	*out = buf;
	*len = total;
	return 0;
}

int cs_manifest_decode(const uint8_t *buf, size_t len, uint64_t *gen, uint64_t *next_serial,
		       struct cs_ctx **out, size_t *n_out, char *why, size_t why_len)
{
	struct cs_ctx *ctx;
	uint64_t n, esz;

	*out = NULL;
	*n_out = 0;
	if (len < CS_MAN_HDR || memcmp(buf, man_magic, 8))
		return bad(why, why_len, "not a cache store manifest");
	if (XXH3_64bits(buf, 56) != cs_get64(buf + 56))
		return bad(why, why_len, "header checksum mismatch");
	if (cs_get16(buf + 8) != CS_FORMAT_MAJOR)
		return bad(why, why_len, "format %u.%u, this reader knows %u.x", cs_get16(buf + 8),
			   cs_get16(buf + 10), CS_FORMAT_MAJOR);
	esz = cs_get32(buf + 12);
	n = cs_get64(buf + 32);
	if (esz < CS_MAN_ENTRY_MIN || cs_get32(buf + 48) != CS_ALIGN ||
	    n > (len - CS_MAN_HDR) / esz || CS_MAN_HDR + n * esz != len)
		return bad(why, why_len, "%" PRIu64 " entries of %" PRIu64 " bytes in %zu bytes",
			   n, esz, len);
	if (XXH3_64bits(buf + CS_MAN_HDR, len - CS_MAN_HDR) != cs_get64(buf + 40))
		return bad(why, why_len, "entries checksum mismatch");
	*gen = cs_get64(buf + 16);
	*next_serial = cs_get64(buf + 24);
	ctx = calloc(n ? n : 1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *e = buf + CS_MAN_HDR + i * esz;
		struct cs_ctx *c = &ctx[i];
		size_t es;

		c->serial = cs_get64(e);
		c->key.hi = cs_get64(e + 8);
		c->key.lo = cs_get64(e + 16);
		c->model_id = cs_get64(e + 24);
		c->n_tokens = cs_get64(e + 32);
		c->n_pages = cs_get64(e + 40);
		c->data_len = cs_get64(e + 48);
		c->idx_entries = cs_get64(e + 56);
		c->raw_bytes = cs_get64(e + 64);
		c->blob_gen = cs_get64(e + 72);
		c->blob_len = cs_get64(e + 80);
		c->blob_check = cs_get64(e + 88);
		c->created_ns = (int64_t)cs_get64(e + 96);
		c->last_use_ns = (int64_t)cs_get64(e + 104);
		c->page_tokens = cs_get32(e + 112);
		c->width = cs_get32(e + 116);
		c->dtype = (cs_dtype)cs_get32(e + 120);
		c->flags = cs_get32(e + 124);
		memcpy(c->name, e + 128, CS_NAME_MAX);
		c->committed = true;
		es = cs_dtype_size(c->dtype);
		/* Lengths must also fit an off_t and their products a u64: the readers size
		 * files and allocations from them. */
		if (c->name[CS_NAME_MAX - 1] || !es || !c->width || c->width > CS_MAX_WIDTH ||
		    !c->page_tokens || c->page_tokens > CS_MAX_PAGE_TOKENS ||
		    (uint64_t)c->page_tokens * c->width * es > CS_MAX_RAW_PAGE ||
		    c->n_tokens > INT64_MAX / ((uint64_t)CS_MAX_WIDTH * 4 + 4) ||
		    c->n_pages != (c->n_tokens + c->page_tokens - 1) / c->page_tokens ||
		    c->data_len % CS_ALIGN || c->data_len > INT64_MAX ||
		    c->serial >= *next_serial ||
		    c->raw_bytes != c->n_tokens * ((uint64_t)c->width * es + 4) ||
		    c->idx_entries < c->n_pages || c->idx_entries > INT64_MAX / CS_IDX_ENTRY ||
		    c->blob_len > INT64_MAX - CS_BLOB_HDR ||
		    (c->flags & ~(CS_CTX_SEALED | CS_CTX_SHUFFLE))) {
			bad(why, why_len, "entry %" PRIu64 " (#%" PRIu64 ") is inconsistent", i,
			    c->serial);
			free(ctx);
			return -EBADMSG;
		}
		for (uint64_t j = 0; j < i; j++) {
			if (ctx[j].serial == c->serial) {
				bad(why, why_len, "context #%" PRIu64 " listed twice", c->serial);
				free(ctx);
				return -EBADMSG;
			}
		}
	}
	*out = ctx;
	*n_out = (size_t)n;
	return 0;
}
