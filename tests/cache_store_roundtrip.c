/*
 * cache_store_roundtrip: every element type and several page sizes and lengths, many
 * contexts in one store, on every I/O mode the machine has; lookups by key and name; the
 * streaming hasher; reopening after close; bad arguments.
 */
#include "cache_store_common.h"

#include <errno.h>
#include <string.h>

static const cs_dtype dtypes[] = { CS_DTYPE_F32, CS_DTYPE_F16, CS_DTYPE_BF16 };
static const uint32_t page_sizes[] = { 1, 7, 64, 300 };

struct written {
	uint64_t serial, seed, n;
	bool sealed;
	char name[32];
};

static void test_hasher(void)
{
	uint32_t tok[1000];
	cs_hasher *h;
	cs_key a, b, c;

	cst_tokens(5, 0, 1000, tok);
	CHECK(cs_hash_tokens(42, tok, 1000, &a) == 0, "hash");
	CHECK(cs_hash_init(&h, 42) == 0, "init");
	for (size_t at = 0, k = 1; at < 1000; k = k * 3 % 101 + 1) {
		size_t n = k < 1000 - at ? k : 1000 - at;

		cs_hash_update(h, tok + at, n);
		at += n;
		if (at == 500) {
			CHECK(cs_hash_tokens(42, tok, 500, &c) == 0, "hash");
			CHECK(cs_key_equal(cs_hash_final(h), c), "digest mid-stream");
		}
	}
	b = cs_hash_final(h);
	CHECK(cs_key_equal(a, b), "streaming != one-shot");
	cs_hash_reset(h, 43);
	cs_hash_update(h, tok, 1000);
	CHECK(!cs_key_equal(a, cs_hash_final(h)), "model id ignored");
	cs_hash_free(h);
	CHECK(cs_hash_tokens(42, tok, 999, &c) == 0 && !cs_key_equal(a, c), "length ignored");
}

static void bad_args(cs_store *s)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_params p = { .model_id = 1, .dtype = (cs_dtype)7, .width = 4, .page_tokens = 8 };
	cs_writer *w;
	cs_reader *r;

	CHECK(cs_writer_begin(s, &p, &w, err) == -EINVAL && w == NULL, "bad dtype accepted");
	CHECK(strchr(err, '\n') == NULL && strlen(err) > 0, "error message: %s", err);
	p.dtype = CS_DTYPE_F16;
	p.width = 0;
	CHECK(cs_writer_begin(s, &p, &w, err) == -EINVAL, "width 0 accepted");
	p.width = 4;
	p.page_tokens = 0;
	CHECK(cs_writer_begin(s, &p, &w, err) == -EINVAL, "page 0 accepted");
	CHECK(cs_reader_open(s, 999999, &r, err) == -ENOENT, "missing context opened");
	CHECK(cs_store_remove(s, 999999, err) == -ENOENT, "missing context removed");
	CHECK(cs_writer_resume(s, 999999, &w, err) == -ENOENT, "missing context resumed");
}

static void check_all(cs_store *s, struct written *ws, size_t n)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_info *list, info;
	size_t n_list;
	int rc = cs_store_list(s, &list, &n_list, err);

	CHECK_RC(rc, err);
	CHECK(n_list == n, "%zu contexts listed, %zu written", n_list, n);
	for (size_t i = 0; i < n; i++) {
		cs_verify_report rep;

		cst_check_ctx(s, ws[i].serial, ws[i].seed, ws[i].n, true);
		CHECK(cs_store_info(s, ws[i].serial, &info, err) == 0, "%s", err);
		CHECK(info.sealed == ws[i].sealed, "sealed flag");
		CHECK(list[i].serial == ws[i].serial, "list order");
		CHECK(cs_store_lookup_name(s, ws[i].name, &info) == 0 && info.serial == ws[i].serial,
		      "lookup by name %s", ws[i].name);
		CHECK(cs_store_lookup(s, list[i].key, &info) == 0 && cs_key_equal(info.key, list[i].key),
		      "lookup by key");
		rc = cs_store_verify(s, ws[i].serial, &rep, err);
		CHECK_RC(rc, err);
		CHECK(rep.records >= info.n_pages && rep.bad_records == 0, "verify counts");
		CHECK(info.disk_bytes >= (info.n_pages ? 4096 : 0), "disk bytes");
	}
	free(list);
}

static int run_mode(const cst_mode *m)
{
	char err[CS_ERR_LEN] = "", *dir = cst_tmpdir("cs_roundtrip");
	struct written ws[64];
	size_t n_ws = 0;
	cs_store *s;
	int rc = cst_open(&s, dir, m, NULL);

	if (rc == 77) {
		cst_rmrf(dir);
		free(dir);
		return 77;
	}
	printf("%s: backend %s, O_DIRECT %s\n", m->name, cs_store_backend_name(s),
	       cs_store_direct(s) ? "yes" : "no");
	bad_args(s);
	for (size_t d = 0; d < 3; d++) {
		for (size_t p = 0; p < 4; p++) {
			uint32_t pt = page_sizes[p];
			uint64_t lens[5] = { 1, pt > 1 ? pt - 1 : 2, pt, 3 * (uint64_t)pt + 5,
					      pt == 1 ? 150 : 1000 };

			for (size_t k = 0; k < 5; k += (p % 2 ? 2 : 1)) {
				struct written *x = &ws[n_ws++];
				uint32_t width = (uint32_t)(1 + (d * 7 + p * 13 + k) % 48);
				cs_ctx_params cp = { .model_id = 1000 + d, .dtype = dtypes[d],
						     .width = width, .page_tokens = pt,
						     .no_shuffle = k == 3 };
				cs_writer *w;
				size_t bl;
				uint8_t blob[3000];

				x->seed = n_ws * 7919 + 1;
				x->n = lens[k];
				x->sealed = k % 2 == 0;
				snprintf(x->name, sizeof(x->name), "ctx-%zu", n_ws);
				cp.name = x->name;
				rc = cs_writer_begin(s, &cp, &w, err);
				CHECK_RC(rc, err);
				x->serial = cs_writer_serial(w);
				cst_append(w, cp.dtype, width, x->seed, 0, x->n, x->seed);
				CHECK(cs_writer_tokens(w) == x->n, "tokens");
				bl = cst_blob_len(x->seed, x->n);
				cst_blob(x->seed, x->n, blob, bl);
				rc = cs_writer_commit(w, blob, bl, x->sealed ? CS_COMMIT_SEAL : 0, err);
				CHECK_RC(rc, err);
				CHECK(cs_writer_committed(w) == x->n, "committed");
				cs_writer_free(w);
			}
		}
	}
	/* an empty context: committed with a blob and no tokens */
	{
		struct written *x = &ws[n_ws++];
		cs_ctx_params cp = { .model_id = 7, .dtype = CS_DTYPE_F16, .width = 3,
				     .page_tokens = 5, .name = "empty" };
		cs_writer *w;
		uint8_t blob[3000];
		size_t bl;

		x->seed = 31337;
		x->n = 0;
		x->sealed = true;
		snprintf(x->name, sizeof(x->name), "empty");
		rc = cs_writer_begin(s, &cp, &w, err);
		CHECK_RC(rc, err);
		x->serial = cs_writer_serial(w);
		bl = cst_blob_len(x->seed, 0);
		cst_blob(x->seed, 0, blob, bl);
		rc = cs_writer_commit(w, blob, bl, CS_COMMIT_SEAL, err);
		CHECK_RC(rc, err);
		cs_writer_free(w);
	}
	CHECK(n_ws <= 64, "too many");
	check_all(s, ws, n_ws);

	/* a second context named like a first one is refused; a same-key seal too */
	{
		cs_ctx_params cp = { .model_id = 1000, .dtype = CS_DTYPE_F32, .width = 1,
				     .page_tokens = 1, .name = ws[0].name };
		cs_writer *w;

		CHECK(cs_writer_begin(s, &cp, &w, err) == -EEXIST, "duplicate name accepted");
		cp.name = NULL;
		cp.width = ws[0].n ? 1 : 1;
		rc = cs_writer_begin(s, &cp, &w, err);
		CHECK_RC(rc, err);
		cst_append(w, CS_DTYPE_F32, 1, ws[0].seed, 0, ws[0].n, 3);
		CHECK(cs_writer_commit(w, NULL, 0, CS_COMMIT_SEAL, err) == -EEXIST,
		      "second sealed copy of the same tokens accepted");
		cs_writer_free(w);   /* never committed: deleted */
	}

	rc = cs_store_flush(s, err);
	CHECK_RC(rc, err);
	cs_store_close(s);
	/* reopen: everything the same */
	rc = cst_open(&s, dir, m, NULL);
	CHECK(rc == 0, "reopen");
	check_all(s, ws, n_ws);

	/* remove every other context; the rest survive another reopen */
	{
		size_t k = 0;

		for (size_t i = 0; i < n_ws; i++) {
			if (i % 2) {
				rc = cs_store_remove(s, ws[i].serial, err);
				CHECK_RC(rc, err);
			} else {
				ws[k++] = ws[i];
			}
		}
		n_ws = k;
	}
	cs_store_close(s);
	rc = cst_open(&s, dir, m, NULL);
	CHECK(rc == 0, "reopen");
	check_all(s, ws, n_ws);
	cs_store_close(s);

	/* read-only open beside nothing: lists and reads, refuses writes */
	{
		cs_config cfg;
		cs_writer *w;
		cs_ctx_params cp = { .model_id = 1, .dtype = CS_DTYPE_F16, .width = 2,
				     .page_tokens = 4 };

		cst_config(&cfg, m);
		cfg.flags = CS_OPEN_RDONLY;
		rc = cs_store_open(&s, dir, &cfg, err);
		CHECK_RC(rc, err);
		cst_check_ctx(s, ws[0].serial, ws[0].seed, ws[0].n, true);
		CHECK(cs_writer_begin(s, &cp, &w, err) == -EROFS, "read-only store wrote");
		CHECK(cs_store_remove(s, ws[0].serial, err) == -EROFS, "read-only store removed");
		cs_store_close(s);
	}
	cst_rmrf(dir);
	free(dir);
	return 0;
}

int main(void)
{
	int ran = 0;

	test_hasher();
	for (int i = 0; i < 4; i++)
		ran += run_mode(&cst_modes[i]) == 0;
	if (!ran)
		return 77;
	printf("roundtrip: %d mode(s) passed\n", ran);
	return 0;
}
