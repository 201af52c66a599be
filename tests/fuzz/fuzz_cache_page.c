/*
 * fuzz_cache_page.c — the page record decoder of the cache store (cs_page_decode in
 * cache_store/cs_format.c): header, checksums, section sizes, LZ4 and the byte shuffle.
 *
 * Input: byte 0 holds options, the rest is the record:
 *   bit 0  keep the record's checksums as they are (otherwise the harness recomputes both
 *          XXH3 sums, so that mutations reach the code behind them);
 *   bit 1  use the input's length as the record length (otherwise padded with zeros to a
 *          multiple of 4096, as records are on disk);
 *   bit 2  the index promises one token more than the record holds (the mismatch path).
 * What the index promises (serial, page, tokens, width, dtype) is read from the record's
 * own header, bounded as the manifest bounds it.
 *
 * Checks: decoding into buffers and checking only (NULL outputs) agree; a decoded page
 * re-encoded by cs_page_encode decodes to the same rows and tokens.
 */
#include "fuzz_common.h"
#include "cs_internal.h"

#include <string.h>
#include <xxhash.h>

/* Pages larger than this are skipped: they only cost time (the store allows 256 MiB). */
#define MAX_RAW (4u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cs_page_meta m;
	uint8_t opts, *rec, *scratch, *rows, *rows2, *enc;
	uint32_t *tok, *tok2;
	size_t len, disk_len, esz, rb, tb, cap, enc_len;
	char why[CS_ERR_LEN] = "", why2[CS_ERR_LEN] = "";
	int rc, rc2;

	if (size < 1)
		return 0;
	opts = data[0];
	data++;
	len = size - 1;
	disk_len = opts & 2 ? len : cs_round_up(len > CS_PAGE_HDR ? len : CS_PAGE_HDR, CS_ALIGN);
	if (disk_len < CS_PAGE_HDR)
		disk_len = CS_PAGE_HDR; /* the reader never passes less than a header */
	rec = calloc(1, disk_len);
	FUZZ_CHECK(rec, "out of memory");
	memcpy(rec, data, len < disk_len ? len : disk_len);

	memset(&m, 0, sizeof(m));
	m.serial = cs_get64(rec + 8);
	m.index = cs_get64(rec + 16);
	m.n_tokens = cs_get32(rec + 24);
	m.page_tokens = cs_get32(rec + 28);
	m.width = cs_get32(rec + 32);
	m.dtype = (cs_dtype)rec[36];
	m.shuffle = rec[37] & CS_PAGE_SHUFFLED;
	esz = cs_dtype_size(m.dtype);
	if (!esz || !m.width || m.width > CS_MAX_WIDTH || !m.page_tokens ||
	    m.page_tokens > CS_MAX_PAGE_TOKENS || !m.n_tokens || m.n_tokens > m.page_tokens ||
	    (uint64_t)m.n_tokens * (m.width * esz + 4) > MAX_RAW)
		goto free_rec;
	if (opts & 4)
		m.n_tokens++;
	if (!(opts & 1) && disk_len >= CS_ALIGN) {
		cs_put64(rec + 48, XXH3_64bits(rec + CS_PAGE_HDR, disk_len - CS_PAGE_HDR));
		cs_put64(rec + 56, XXH3_64bits(rec, 56));
	}
	rb = (size_t)m.n_tokens * m.width * esz;
	tb = (size_t)m.n_tokens * 4;
	/* The least the contract asks (cs_internal.h), so that a write past it is caught. */
	scratch = malloc(rb > tb ? rb : tb);
	rows = malloc(rb ? rb : 1);
	tok = malloc(tb);
	FUZZ_CHECK(scratch && rows && tok, "out of memory");
	rc = cs_page_decode(&m, rec, disk_len, scratch, rows, tok, why, sizeof(why));
	rc2 = cs_page_decode(&m, rec, disk_len, scratch, NULL, NULL, why2, sizeof(why2));
	FUZZ_CHECK(rc == rc2, "decode %d, check-only decode %d", rc, rc2);
	FUZZ_CHECK(rc == 0 || rc == -EBADMSG, "decode: %d", rc);
	if (rc) {
		fuzz_check_err(why, sizeof(why), "cs_page_decode");
		FUZZ_CHECK(!strcmp(why, why2), "decode and check-only differ: %s / %s", why, why2);
		goto free_bufs;
	}
	fuzz_touch(rows, rb);
	fuzz_touch(tok, tb);

	/* Round trip through the encoder. */
	cap = cs_page_record_bound(m.page_tokens, m.width, esz);
	enc = malloc(cap);
	rows2 = malloc(rb ? rb : 1);
	tok2 = malloc(tb);
	FUZZ_CHECK(enc && rows2 && tok2, "out of memory");
	FUZZ_CHECK(cs_page_encode(&m, rows, tok, scratch, enc, cap, &enc_len) == 0,
		   "re-encode of a decoded page");
	rc = cs_page_decode(&m, enc, enc_len, scratch, rows2, tok2, why, sizeof(why));
	FUZZ_CHECK(rc == 0, "re-encoded page does not decode: %s", why);
	FUZZ_CHECK(!memcmp(rows, rows2, rb) && !memcmp(tok, tok2, tb),
		   "re-encoded page decodes differently");
	free(tok2);
	free(rows2);
	free(enc);
free_bufs:
	free(tok);
	free(rows);
	free(scratch);
free_rec:
	free(rec);
	return 0;
}
