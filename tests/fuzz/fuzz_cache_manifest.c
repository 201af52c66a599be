/*
 * fuzz_cache_manifest.c — the cache store's manifest decoder (cs_manifest_decode in
 * cache_store/cs_format.c): header, entry size, counts, checksums and the consistency
 * checks of every entry.
 *
 * Input: byte 0 holds options (bit 0: keep the checksums; otherwise the harness recomputes
 * the entries' and the header's XXH3 so that mutations reach the checks behind them); the
 * rest is the MANIFEST image.
 *
 * Checks: an accepted manifest holds entries that satisfy the invariants the rest of the
 * store relies on (page count, row bytes, serials below next_serial and unique, names
 * terminated); re-encoding the entries and decoding again gives the same contexts.
 */
#include "fuzz_common.h"
#include "cs_internal.h"

#include <string.h>
#include <xxhash.h>

static void same_ctx(const struct cs_ctx *a, const struct cs_ctx *b)
{
	FUZZ_CHECK(a->serial == b->serial && a->key.hi == b->key.hi && a->key.lo == b->key.lo &&
		   a->model_id == b->model_id && a->dtype == b->dtype && a->width == b->width &&
		   a->page_tokens == b->page_tokens && a->flags == b->flags &&
		   a->n_tokens == b->n_tokens && a->n_pages == b->n_pages &&
		   a->data_len == b->data_len && a->idx_entries == b->idx_entries &&
		   a->raw_bytes == b->raw_bytes && a->blob_gen == b->blob_gen &&
		   a->blob_len == b->blob_len && a->blob_check == b->blob_check &&
		   a->created_ns == b->created_ns && a->last_use_ns == b->last_use_ns &&
		   !strcmp(a->name, b->name),
		   "context #%llu changed in the round trip", (unsigned long long)a->serial);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *img, *img2;
	size_t len, n = 0, n2 = 0, len2;
	uint64_t gen = 0, next = 0, gen2, next2;
	struct cs_ctx *ctx = NULL, *ctx2 = NULL, **ptrs;
	char why[CS_ERR_LEN] = "";
	int rc;

	if (size < 1)
		return 0;
	len = size - 1;
	img = malloc(len ? len : 1);
	FUZZ_CHECK(img, "out of memory");
	memcpy(img, data + 1, len);
	if (!(data[0] & 1) && len >= CS_MAN_HDR) {
		cs_put64(img + 40, XXH3_64bits(img + CS_MAN_HDR, len - CS_MAN_HDR));
		cs_put64(img + 56, XXH3_64bits(img, 56));
	}
	rc = cs_manifest_decode(img, len, &gen, &next, &ctx, &n, why, sizeof(why));
	if (rc) {
		FUZZ_CHECK(rc == -EBADMSG, "decode: %d", rc);
		fuzz_check_err(why, sizeof(why), "cs_manifest_decode");
		FUZZ_CHECK(!ctx && !n, "contexts returned with an error");
		free(img);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		const struct cs_ctx *c = &ctx[i];
		size_t es = cs_dtype_size(c->dtype);

		FUZZ_CHECK(strnlen(c->name, CS_NAME_MAX) < CS_NAME_MAX, "name not terminated");
		FUZZ_CHECK(es && c->width >= 1 && c->width <= CS_MAX_WIDTH && c->page_tokens >= 1 &&
			   c->page_tokens <= CS_MAX_PAGE_TOKENS &&
			   (uint64_t)c->page_tokens * c->width * es <= CS_MAX_RAW_PAGE,
			   "bad shape accepted");
		FUZZ_CHECK(c->n_pages == c->n_tokens / c->page_tokens +
					 (c->n_tokens % c->page_tokens != 0),
			   "n_pages %llu for %llu tokens of %u", (unsigned long long)c->n_pages,
			   (unsigned long long)c->n_tokens, c->page_tokens);
		FUZZ_CHECK(c->serial < next && c->idx_entries >= c->n_pages &&
			   c->data_len % CS_ALIGN == 0, "inconsistent entry accepted");
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(ctx[j].serial != c->serial, "serial %llu twice",
				   (unsigned long long)c->serial);
	}
	ptrs = malloc((n ? n : 1) * sizeof(*ptrs));
	FUZZ_CHECK(ptrs, "out of memory");
	for (size_t i = 0; i < n; i++)
		ptrs[i] = &ctx[i];
	FUZZ_CHECK(cs_manifest_encode(gen, next, ptrs, n, &img2, &len2) == 0, "encode");
	rc = cs_manifest_decode(img2, len2, &gen2, &next2, &ctx2, &n2, why, sizeof(why));
	FUZZ_CHECK(rc == 0, "re-encoded manifest does not decode: %s", why);
	FUZZ_CHECK(gen2 == gen && next2 == next && n2 == n, "header changed in the round trip");
	for (size_t i = 0; i < n; i++)
		same_ctx(&ctx[i], &ctx2[i]);
	free(ctx2);
	free(img2);
	free(ptrs);
	free(ctx);
	free(img);
	return 0;
}
