/*
 * engine_dump — writes everything a context holds to one file, for `cmp` between two stores:
 * a header (tokens, row type, width, page size, sealed, key), every c row, every token id,
 * then the snapshot blob. Reads the store read-only (no lock).
 *
 *   engine_dump CACHE_DIR CONTEXT OUT     CONTEXT: a name or #serial
 *
 * Exit 0 ok, 1 error (one line on stderr).
 */
#include "cache_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	char err[CS_ERR_LEN] = "";
	cs_store *s = NULL;
	cs_reader *r = NULL;
	cs_ctx_info info;
	void *rows = NULL, *blob = NULL;
	uint32_t *tok = NULL;
	size_t blob_len = 0;
	FILE *f = NULL;
	int rc = 1;

	if (argc != 4) {
		fprintf(stderr, "usage: engine_dump CACHE_DIR CONTEXT OUT\n");
		return 1;
	}
	cs_config cfg;
	cs_config_defaults(&cfg);
	cfg.flags = CS_OPEN_RDONLY;
	if (cs_store_open(&s, argv[1], &cfg, err))
		goto fail;
	if (argv[2][0] == '#') {
		if (cs_store_info(s, strtoull(argv[2] + 1, NULL, 10), &info, err))
			goto fail;
	} else if (cs_store_lookup_name(s, argv[2], &info)) {
		snprintf(err, sizeof(err), "%s: no context of that name", argv[2]);
		goto fail;
	}
	if (cs_reader_open(s, info.serial, &r, err))
		goto fail;
	const size_t row_bytes = (size_t)info.width * cs_dtype_size(info.dtype);
	rows = malloc(info.n_tokens * row_bytes + 1);
	tok = malloc(info.n_tokens * sizeof(uint32_t) + 1);
	if (!rows || !tok) {
		snprintf(err, sizeof(err), "out of memory for %" PRIu64 " tokens", info.n_tokens);
		goto fail;
	}
	if (cs_reader_read(r, 0, info.n_tokens, rows, tok, err) ||
	    cs_reader_blob(r, &blob, &blob_len, err))
		goto fail;
	f = fopen(argv[3], "wb");
	if (!f) {
		snprintf(err, sizeof(err), "%s: cannot create", argv[3]);
		goto fail;
	}
	uint64_t head[8] = { info.n_tokens, (uint64_t)info.dtype, info.width, info.page_tokens,
			     info.sealed, info.key.hi, info.key.lo, blob_len };
	if (fwrite(head, sizeof(head), 1, f) != 1 ||
	    fwrite(rows, 1, info.n_tokens * row_bytes, f) != info.n_tokens * row_bytes ||
	    fwrite(tok, sizeof(uint32_t), info.n_tokens, f) != info.n_tokens ||
	    (blob_len && fwrite(blob, 1, blob_len, f) != blob_len) || fclose(f)) {
		f = NULL;
		snprintf(err, sizeof(err), "%s: write failed", argv[3]);
		goto fail;
	}
	f = NULL;
	rc = 0;
fail:
	if (rc)
		fprintf(stderr, "engine_dump: %s\n", err);
	if (f)
		fclose(f);
	free(rows);
	free(tok);
	free(blob);
	cs_reader_close(r);
	cs_store_close(s);
	return rc;
}
