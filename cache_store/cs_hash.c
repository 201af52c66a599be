/*
 * cs_hash.c — content keys: XXH3-128 over "GFCSKEY1", the model id (u64 LE) and the token
 * ids (u32 LE). The prefix keeps keys apart from any other XXH3 use of the same bytes; the
 * model id makes the same text under two models two contexts. XXH3's streaming state gives
 * the same digest however the input is cut, so the ingest path hashes as tokens stream by.
 */
#include "cs_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <xxhash.h>

struct cs_hasher {
	XXH3_state_t *st;
};

static void hash_start(XXH3_state_t *st, uint64_t model_id)
{
	static const char prefix[8] = { 'G', 'F', 'C', 'S', 'K', 'E', 'Y', '1' };
	uint8_t mid[8];

	XXH3_128bits_reset(st);
	XXH3_128bits_update(st, prefix, sizeof(prefix));
	cs_put64(mid, model_id);
	XXH3_128bits_update(st, mid, sizeof(mid));
}

int cs_hash_init(cs_hasher **out, uint64_t model_id)
{
	cs_hasher *h = calloc(1, sizeof(*h));

	*out = NULL;
	if (!h)
		return -ENOMEM;
	h->st = XXH3_createState();
	if (!h->st) {
		free(h);
		return -ENOMEM;
	}
	hash_start(h->st, model_id);
	*out = h;
	return 0;
}

void cs_hash_reset(cs_hasher *h, uint64_t model_id)
{
	hash_start(h->st, model_id);
}

void cs_hash_update(cs_hasher *h, const uint32_t *tok, size_t n)
{
	if (n)
		XXH3_128bits_update(h->st, tok, n * sizeof(*tok));
}

cs_key cs_hash_final(const cs_hasher *h)
{
	XXH128_hash_t d = XXH3_128bits_digest(h->st);

	return (cs_key){ .hi = d.high64, .lo = d.low64 };
}

void cs_hash_free(cs_hasher *h)
{
	if (!h)
		return;
	XXH3_freeState(h->st);
	free(h);
}

int cs_hash_tokens(uint64_t model_id, const uint32_t *tok, size_t n, cs_key *out)
{
	cs_hasher *h;
	int rc = cs_hash_init(&h, model_id);

	if (rc)
		return rc;
	cs_hash_update(h, tok, n);
	*out = cs_hash_final(h);
	cs_hash_free(h);
	return 0;
}

bool cs_key_equal(cs_key a, cs_key b)
{
	return a.hi == b.hi && a.lo == b.lo;
}

void cs_key_hex(cs_key k, char out[33])
{
	snprintf(out, 33, "%016" PRIx64 "%016" PRIx64, k.hi, k.lo);
}
