/*
 * safetensors.c — reader for .safetensors files: an 8-byte little-endian header length, a
 * JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data; offsets are relative to the end of the header. Tensors point into the
 * read-only mapping.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "goldfinch.h"
#include "tensors_internal.h"

/* The format's own cap on the header (the reference implementation refuses larger). */
#define ST_MAX_HEADER (100u << 20)

struct span {
	uint64_t begin, end;
	int idx;
};

static int cmp_span(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	return (x->end > y->end) - (x->end < y->end);
}

/* A JSON number that is a non-negative integer exactly representable in a double. */
static int json_u64(const cJSON *j, uint64_t *out)
{
	double d;

	if (!cJSON_IsNumber(j))
		return -1;
	d = j->valuedouble;
	if (!isfinite(d) || d < 0 || d > 9007199254740992.0 || floor(d) != d)
		return -1;
	*out = (uint64_t)d;
	return 0;
}

static int parse_dtype(const char *s, gf_dtype *t)
{
	if (strcmp(s, "F32") == 0)
		*t = GF_DTYPE_F32;
	else if (strcmp(s, "F16") == 0)
		*t = GF_DTYPE_F16;
	else if (strcmp(s, "BF16") == 0)
		*t = GF_DTYPE_BF16;
	else
		return -1;
	return 0;
}

int gf_tensors_read_safetensors(gf_tensor_set *ts, const char *path, char *err)
{
	const uint8_t *base;
	uint64_t hlen, data_len;
	cJSON *root = NULL, *item;
	struct span *spans = NULL;
	int n_spans = 0, n_items = 0, rc;

	memset(ts, 0, sizeof(*ts));
	rc = gf_tset_map(path, &ts->map, &ts->map_len, err);
	if (rc)
		return rc;
	base = ts->map;
	if (ts->map_len < 10) {
		gf_tset_err(err, "%s: too short for a safetensors file (%zu bytes)", path,
			    ts->map_len);
		rc = -EINVAL;
		goto out;
	}
	hlen = (uint64_t)base[0] | ((uint64_t)base[1] << 8) | ((uint64_t)base[2] << 16) |
	       ((uint64_t)base[3] << 24) | ((uint64_t)base[4] << 32) | ((uint64_t)base[5] << 40) |
	       ((uint64_t)base[6] << 48) | ((uint64_t)base[7] << 56);
	if (hlen < 2 || hlen > ts->map_len - 8 || hlen > ST_MAX_HEADER) {
		gf_tset_err(err, "%s: safetensors header length %llu does not fit the %zu-byte "
			    "file (truncated?)", path, (unsigned long long)hlen, ts->map_len);
		rc = -EINVAL;
		goto out;
	}
	data_len = ts->map_len - 8 - hlen;
	root = cJSON_ParseWithLength((const char *)base + 8, (size_t)hlen);
	if (!root || !cJSON_IsObject(root)) {
		gf_tset_err(err, "%s: safetensors header is not a JSON object", path);
		rc = -EINVAL;
		goto out;
	}
	cJSON_ArrayForEach(item, root)
		n_items++;
	spans = calloc((size_t)n_items + 1, sizeof(*spans));
	if (!spans) {
		gf_tset_err(err, "%s: out of memory", path);
		rc = -ENOMEM;
		goto out;
	}

	cJSON_ArrayForEach(item, root) {
		const char *name = item->string ? item->string : "";
		const cJSON *jt, *js, *jo, *x;
		int64_t shape[GF_MAX_DIMS];
		uint64_t b, e, numel;
		int n_dims = 0;
		gf_dtype dtype;
		int64_t n;

		if (strcmp(name, "__metadata__") == 0)
			continue;
		if (!cJSON_IsObject(item)) {
			gf_tset_err(err, "%s: tensor %.80s: header entry is not an object", path, name);
			rc = -EINVAL;
			goto out;
		}
		jt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
		js = cJSON_GetObjectItemCaseSensitive(item, "shape");
		jo = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
		if (!cJSON_IsString(jt) || !cJSON_IsArray(js) || !cJSON_IsArray(jo)) {
			gf_tset_err(err, "%s: tensor %.80s: needs dtype, shape and data_offsets", path,
				    name);
			rc = -EINVAL;
			goto out;
		}
		if (parse_dtype(jt->valuestring, &dtype)) {
			gf_tset_err(err, "%s: tensor %.80s: dtype %.20s not supported (F32, F16 and "
				    "BF16 are)", path, name, jt->valuestring);
			rc = -EINVAL;
			goto out;
		}
		if (cJSON_GetArraySize(js) > GF_MAX_DIMS) {
			gf_tset_err(err, "%s: tensor %.80s: %d dims (at most %d)", path, name,
				    cJSON_GetArraySize(js), GF_MAX_DIMS);
			rc = -EINVAL;
			goto out;
		}
		cJSON_ArrayForEach(x, js) {
			uint64_t d;

			if (json_u64(x, &d) || d > ((uint64_t)1 << 56)) {
				gf_tset_err(err, "%s: tensor %.80s: shape holds a value that is not a "
					    "non-negative integer", path, name);
				rc = -EINVAL;
				goto out;
			}
			shape[n_dims++] = (int64_t)d;
		}
		n = gf_tset_numel(n_dims, shape);
		if (cJSON_GetArraySize(jo) != 2 || json_u64(cJSON_GetArrayItem(jo, 0), &b) ||
		    json_u64(cJSON_GetArrayItem(jo, 1), &e) || n < 0) {
			gf_tset_err(err, "%s: tensor %.80s: bad data_offsets or shape", path, name);
			rc = -EINVAL;
			goto out;
		}
		numel = (uint64_t)n;
		if (b > e || e > data_len) {
			gf_tset_err(err, "%s: tensor %.80s: data_offsets [%llu, %llu] outside the "
				    "%llu data bytes (truncated?)", path, name, (unsigned long long)b,
				    (unsigned long long)e, (unsigned long long)data_len);
			rc = -EINVAL;
			goto out;
		}
		if (e - b != numel * gf_dtype_size(dtype)) {
			gf_tset_err(err, "%s: tensor %.80s: %llu bytes in data_offsets, but shape and "
				    "dtype need %llu", path, name, (unsigned long long)(e - b),
				    (unsigned long long)(numel * gf_dtype_size(dtype)));
			rc = -EINVAL;
			goto out;
		}
		rc = gf_tset_push(ts, name, strlen(name), dtype, n_dims, shape,
				  base + 8 + hlen + b, (size_t)(e - b), path, err);
		if (rc)
			goto out;
		if (e > b)
			spans[n_spans++] = (struct span){ b, e, ts->n_tensors - 1 };
	}
	if (ts->n_tensors == 0) {
		gf_tset_err(err, "%s: safetensors file holds no tensors", path);
		rc = -EINVAL;
		goto out;
	}
	/* Tensors must not share bytes: a damaged header could alias them. */
	qsort(spans, (size_t)n_spans, sizeof(*spans), cmp_span);
	for (int i = 1; i < n_spans; i++) {
		if (spans[i].begin < spans[i - 1].end) {
			gf_tset_err(err, "%s: tensors %s and %s overlap in the data", path,
				    ts->tensors[spans[i - 1].idx].name, ts->tensors[spans[i].idx].name);
			rc = -EINVAL;
			goto out;
		}
	}
	rc = gf_tset_check_unique(ts, path, err);
out:
	free(spans);
	cJSON_Delete(root);
	if (rc)
		gf_tensors_free(ts);
	return rc;
}
