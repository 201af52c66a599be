/*
 * pth.c — reader for PyTorch checkpoints (torch.save of a state_dict).
 *
 * The file is a zip archive whose entries are stored, not compressed: `<dir>/data.pkl` is a
 * pickle of an OrderedDict name -> tensor and `<dir>/data/<key>` holds each storage's raw
 * bytes. We map the file read-only, walk the central directory (ZIP64 included) and point
 * the tensors at the storage bytes in place.
 *
 * The pickle is run by a small stack machine that knows only the opcodes and callables a
 * state_dict uses; it never executes anything. Every read is bounds-checked and every
 * allocation is bounded by the pickle's length (each opcode makes at most one value), so a
 * truncated or hostile file yields an error, never a crash.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "goldfinch.h"
#include "tensors_internal.h"

/* ---------------------------------------------------------------------------------------
 * Little-endian readers. Callers have checked the bounds.
 */
static inline uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static inline uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

/* ---------------------------------------------------------------------------------------
 * Zip.
 */
#define ZIP_LOCAL_SIG 0x04034b50u
#define ZIP_CENTRAL_SIG 0x02014b50u
#define ZIP_EOCD_SIG 0x06054b50u
#define ZIP64_LOCATOR_SIG 0x07064b50u
#define ZIP64_EOCD_SIG 0x06064b50u

struct zip_entry {
	const char *name;
	uint32_t name_len;
	uint16_t method, flags;
	uint64_t csize, usize, local_off;
};

struct zip {
	const uint8_t *base;
	size_t len;
	const char *path;
	struct zip_entry *e; /* sorted by name */
	size_t n;
};

static int cmp_entry(const void *a, const void *b)
{
	const struct zip_entry *x = a, *y = b;
	uint32_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
	int c = memcmp(x->name, y->name, n);

	if (c)
		return c;
	return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Fills the 64-bit fields flagged as 0xffffffff from a ZIP64 extended-information field. */
static int zip64_extra(struct zip_entry *e, const uint8_t *ex, size_t ex_len, bool need_u,
		       bool need_c, bool need_o)
{
	size_t i = 0;

	while (i + 4 <= ex_len) {
		uint16_t id = rd16(ex + i), sz = rd16(ex + i + 2);
		const uint8_t *d = ex + i + 4;
		size_t k = 0;

		if (i + 4 + sz > ex_len)
			return -1;
		if (id == 0x0001) {
			if (need_u) {
				if (k + 8 > sz)
					return -1;
				e->usize = rd64(d + k);
				k += 8;
			}
			if (need_c) {
				if (k + 8 > sz)
					return -1;
				e->csize = rd64(d + k);
				k += 8;
			}
			if (need_o) {
				if (k + 8 > sz)
					return -1;
				e->local_off = rd64(d + k);
			}
			return 0;
		}
		i += 4 + (size_t)sz;
	}
	return (need_u || need_c || need_o) ? -1 : 0;
}

static int zip_open(struct zip *z, const uint8_t *base, size_t len, const char *path, char *err)
{
	size_t eocd = 0, scan_lo, p;
	uint64_t n_entries, cd_size, cd_off;
	bool found = false;

	memset(z, 0, sizeof(*z));
	z->base = base;
	z->len = len;
	z->path = path;
	if (len < 22) {
		gf_tset_err(err, "%s: too short for a zip archive (%zu bytes)", path, len);
		return -EINVAL;
	}
	/* The end record sits in the last 22 + 65535 (comment) bytes. */
	scan_lo = len > 22 + 65535 ? len - 22 - 65535 : 0;
	for (p = len - 22 + 1; p-- > scan_lo;) {
		if (rd32(base + p) == ZIP_EOCD_SIG && p + 22 + rd16(base + p + 20) <= len) {
			eocd = p;
			found = true;
			break;
		}
	}
	if (!found) {
		gf_tset_err(err, "%s: zip end-of-central-directory record not found (truncated?)",
			    path);
		return -EINVAL;
	}
	n_entries = rd16(base + eocd + 10);
	cd_size = rd32(base + eocd + 12);
	cd_off = rd32(base + eocd + 16);
	if (rd16(base + eocd + 4) != 0 || rd16(base + eocd + 6) != 0) {
		gf_tset_err(err, "%s: multi-disk zip archives are not supported", path);
		return -EINVAL;
	}
	if (eocd >= 20 && rd32(base + eocd - 20) == ZIP64_LOCATOR_SIG) {
		uint64_t off64 = rd64(base + eocd - 20 + 8);

		if (off64 > eocd - 20 || eocd - 20 - off64 < 56 ||
		    rd32(base + off64) != ZIP64_EOCD_SIG) {
			gf_tset_err(err, "%s: bad ZIP64 end-of-central-directory record", path);
			return -EINVAL;
		}
		n_entries = rd64(base + off64 + 32);
		cd_size = rd64(base + off64 + 40);
		cd_off = rd64(base + off64 + 48);
		eocd = (size_t)off64; /* the central directory ends before this record */
	} else if (n_entries == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
		gf_tset_err(err, "%s: zip needs ZIP64 records but has none", path);
		return -EINVAL;
	}
	if (cd_off > eocd || cd_size > eocd - cd_off) {
		gf_tset_err(err, "%s: zip central directory (offset %llu, %llu bytes) is outside "
			    "the file", path, (unsigned long long)cd_off, (unsigned long long)cd_size);
		return -EINVAL;
	}
	if (n_entries == 0 || n_entries > cd_size / 46) {
		gf_tset_err(err, "%s: zip central directory claims %llu entries in %llu bytes",
			    path, (unsigned long long)n_entries, (unsigned long long)cd_size);
		return -EINVAL;
	}
	z->e = calloc((size_t)n_entries, sizeof(*z->e));
	if (!z->e) {
		gf_tset_err(err, "%s: out of memory", path);
		return -ENOMEM;
	}
	p = (size_t)cd_off;
	for (uint64_t i = 0; i < n_entries; i++) {
		const uint8_t *c = base + p;
		struct zip_entry *e = &z->e[i];
		size_t nlen, elen, clen, end = (size_t)(cd_off + cd_size);
		uint32_t cs, us, lo;

		if (p + 46 > end || rd32(c) != ZIP_CENTRAL_SIG) {
			gf_tset_err(err, "%s: zip central directory entry %llu at offset %zu is "
				    "damaged", path, (unsigned long long)i, p);
			goto out_free;
		}
		nlen = rd16(c + 28);
		elen = rd16(c + 30);
		clen = rd16(c + 32);
		if (p + 46 + nlen + elen + clen > end) {
			gf_tset_err(err, "%s: zip central directory entry %llu runs past the "
				    "directory", path, (unsigned long long)i);
			goto out_free;
		}
		e->name = (const char *)c + 46;
		e->name_len = (uint32_t)nlen;
		e->flags = rd16(c + 8);
		e->method = rd16(c + 10);
		cs = rd32(c + 20);
		us = rd32(c + 24);
		lo = rd32(c + 42);
		e->csize = cs;
		e->usize = us;
		e->local_off = lo;
		if (zip64_extra(e, c + 46 + nlen, elen, us == 0xffffffffu, cs == 0xffffffffu,
				lo == 0xffffffffu)) {
			gf_tset_err(err, "%s: zip entry '%.*s': bad ZIP64 extra field", path,
				    (int)(nlen > 80 ? 80 : nlen), e->name);
			goto out_free;
		}
		p += 46 + nlen + elen + clen;
	}
	z->n = (size_t)n_entries;
	qsort(z->e, z->n, sizeof(*z->e), cmp_entry);
	return 0;
out_free:
	free(z->e);
	z->e = NULL;
	return -EINVAL;
}

static const struct zip_entry *zip_find(const struct zip *z, const char *name, size_t name_len)
{
	struct zip_entry key = { .name = name, .name_len = (uint32_t)name_len };

	return bsearch(&key, z->e, z->n, sizeof(*z->e), cmp_entry);
}

/* The bytes of a stored entry, validated against its local header and the file size. */
static int zip_data(const struct zip *z, const struct zip_entry *e, const uint8_t **data,
		    uint64_t *size, char *err)
{
	const int nl = (int)(e->name_len > 80 ? 80 : e->name_len);
	uint64_t off = e->local_off, start;

	if (e->flags & 1u) {
		gf_tset_err(err, "%s: zip entry '%.*s' is encrypted", z->path, nl, e->name);
		return -EINVAL;
	}
	if (e->method != 0) {
		gf_tset_err(err, "%s: zip entry '%.*s' is compressed (method %u); only stored "
			    "entries are supported (torch.save writes them stored)", z->path, nl,
			    e->name, e->method);
		return -EINVAL;
	}
	if (e->csize != e->usize) {
		gf_tset_err(err, "%s: zip entry '%.*s' is stored but its sizes differ", z->path,
			    nl, e->name);
		return -EINVAL;
	}
	if (off > z->len || z->len - off < 30 || rd32(z->base + off) != ZIP_LOCAL_SIG) {
		gf_tset_err(err, "%s: zip entry '%.*s': local header at offset %llu is missing",
			    z->path, nl, e->name, (unsigned long long)off);
		return -EINVAL;
	}
	start = off + 30 + rd16(z->base + off + 26) + rd16(z->base + off + 28);
	if (start > z->len || e->csize > z->len - start) {
		gf_tset_err(err, "%s: zip entry '%.*s' (%llu bytes at offset %llu) runs past the "
			    "end of the file (%zu bytes; truncated?)", z->path, nl, e->name,
			    (unsigned long long)e->csize, (unsigned long long)start, z->len);
		return -EINVAL;
	}
	*data = z->base + start;
	*size = e->csize;
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * Pickle machine.
 */
enum pv_kind {
	PV_NONE,
	PV_BOOL,
	PV_INT,
	PV_FLOAT,
	PV_STR,
	PV_TUPLE,  /* kids[a .. a+n) */
	PV_LIST,   /* pair chain from a (value only), n items */
	PV_DICT,   /* pair chain from a, tail b, n items */
	PV_GLOBAL, /* s = module (slen), s2 = name (s2len), g = which */
	PV_PERSID, /* a = the persistent id (a tuple) */
	PV_TENSOR, /* a = the args tuple of _rebuild_tensor_v2 */
};

enum pv_global {
	G_OTHER,
	G_ORDERED_DICT,
	G_REBUILD_TENSOR_V2,
	G_REBUILD_PARAMETER,
	G_STORAGE_F32,
	G_STORAGE_BF16,
	G_STORAGE_F16,
};

struct pv {
	uint8_t kind, g;
	int32_t a, b, n;
	int64_t i;
	const char *s, *s2;
	uint32_t slen, s2len;
};

struct pair {
	int32_t key, val, next;
};

/* Nesting and memo caps. Real state_dict pickles stay far below: their stack holds at most
 * 2 * 1000 items (pickle batches SETITEMS by 1000) and a handful of marks. */
#define PKL_MAX_STACK (1 << 20)
#define PKL_MAX_MARKS (1 << 16)
#define PKL_MAX_MEMO (1 << 24)
/* Values, tuple slots and dict pairs: a 1.5B model's pickle makes about 15 000 values. */
#define PKL_MAX_VALUES (1 << 22)

struct pkl {
	const uint8_t *d;
	size_t len, pos, op_pos;
	const char *path;
	char *err;
	struct pv *v;
	int32_t n_v, cap_v;
	int32_t *kids;
	int32_t n_kids, cap_kids;
	struct pair *pairs;
	int32_t n_pairs, cap_pairs;
	int32_t *stack;
	int32_t n_stack, cap_stack;
	int32_t *marks;
	int32_t n_marks, cap_marks;
	int32_t *memo; /* -1: unset */
	int32_t cap_memo, next_memo;
};

static int pgrow(void **arr, int32_t *cap, int64_t need, size_t elsize, int64_t limit)
{
	int64_t ncap;
	void *p;

	if (need <= *cap)
		return 0;
	if (need > limit)
		return -E2BIG;
	ncap = *cap ? *cap : 64;
	while (ncap < need)
		ncap *= 2;
	if (ncap > limit)
		ncap = limit;
	p = realloc(*arr, (size_t)ncap * elsize);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = (int32_t)ncap;
	return 0;
}

static int pkl_fail(struct pkl *k, int rc, const char *what)
{
	gf_tset_err(k->err, "%s: data.pkl: %s at offset %zu", k->path, what, k->op_pos);
	return rc;
}

static int pkl_oom(struct pkl *k, int rc)
{
	return pkl_fail(k, rc, rc == -E2BIG ? "pickle too deeply nested or too large" :
			"out of memory");
}

static int new_val(struct pkl *k, enum pv_kind kind, int32_t *out)
{
	int rc = pgrow((void **)&k->v, &k->cap_v, (int64_t)k->n_v + 1, sizeof(*k->v),
		       PKL_MAX_VALUES);

	if (rc)
		return pkl_oom(k, rc);
	memset(&k->v[k->n_v], 0, sizeof(*k->v));
	k->v[k->n_v].kind = (uint8_t)kind;
	*out = k->n_v++;
	return 0;
}

static int push(struct pkl *k, int32_t v)
{
	int rc = pgrow((void **)&k->stack, &k->cap_stack, (int64_t)k->n_stack + 1,
		       sizeof(int32_t), PKL_MAX_STACK);

	if (rc)
		return pkl_oom(k, rc);
	k->stack[k->n_stack++] = v;
	return 0;
}

static int push_new(struct pkl *k, enum pv_kind kind, int32_t *out)
{
	int32_t v;
	int rc = new_val(k, kind, &v);

	if (rc)
		return rc;
	if (out)
		*out = v;
	return push(k, v);
}

static int32_t fence(const struct pkl *k)
{
	return k->n_marks ? k->marks[k->n_marks - 1] : 0;
}

static int pop(struct pkl *k, int32_t *v)
{
	if (k->n_stack <= fence(k))
		return pkl_fail(k, -EINVAL, "pickle stack underflow");
	*v = k->stack[--k->n_stack];
	return 0;
}

/* Pops the items above the last mark, and the mark: [*first, n_stack_before). */
static int pop_mark(struct pkl *k, int32_t *first)
{
	if (k->n_marks == 0)
		return pkl_fail(k, -EINVAL, "pickle has no MARK to pop to");
	*first = k->marks[--k->n_marks];
	return 0;
}

static int need(struct pkl *k, size_t n)
{
	if (k->len - k->pos < n)
		return pkl_fail(k, -EINVAL, "pickle truncated");
	return 0;
}

static int make_tuple(struct pkl *k, const int32_t *items, int32_t n)
{
	int32_t v;
	int rc = pgrow((void **)&k->kids, &k->cap_kids, (int64_t)k->n_kids + n, sizeof(int32_t),
		       PKL_MAX_VALUES);

	if (rc)
		return pkl_oom(k, rc);
	/* items may point into the stack, which new_val does not move. */
	if (n)
		memcpy(k->kids + k->n_kids, items, (size_t)n * sizeof(int32_t));
	rc = new_val(k, PV_TUPLE, &v);
	if (rc)
		return rc;
	k->v[v].a = k->n_kids;
	k->v[v].n = n;
	k->n_kids += n;
	return push(k, v);
}

static int add_pair(struct pkl *k, int32_t coll, int32_t key, int32_t val)
{
	struct pv *c;
	int32_t p;
	int rc = pgrow((void **)&k->pairs, &k->cap_pairs, (int64_t)k->n_pairs + 1,
		       sizeof(struct pair), PKL_MAX_VALUES);

	if (rc)
		return pkl_oom(k, rc);
	p = k->n_pairs++;
	k->pairs[p] = (struct pair){ key, val, -1 };
	c = &k->v[coll];
	if (c->n == 0)
		c->a = p;
	else
		k->pairs[c->b].next = p;
	c->b = p;
	c->n++;
	return 0;
}

static int memo_put(struct pkl *k, uint64_t idx)
{
	int32_t old = k->cap_memo;
	int rc;

	if (k->n_stack <= fence(k))
		return pkl_fail(k, -EINVAL, "memo put with an empty stack");
	/* Real pickles number memo slots 0, 1, 2...: an index beyond the pickle's length
	 * can only come from a damaged file. */
	if (idx >= PKL_MAX_MEMO || idx > k->len)
		return pkl_fail(k, -EINVAL, "pickle memo index out of range");
	rc = pgrow((void **)&k->memo, &k->cap_memo, (int64_t)idx + 1, sizeof(int32_t),
		   PKL_MAX_MEMO);
	if (rc)
		return pkl_oom(k, rc);
	for (int32_t i = old; i < k->cap_memo; i++)
		k->memo[i] = -1;
	k->memo[idx] = k->stack[k->n_stack - 1];
	if (idx + 1 > (uint64_t)k->next_memo)
		k->next_memo = (int32_t)(idx + 1);
	return 0;
}

static int memo_get(struct pkl *k, uint64_t idx)
{
	if (idx >= (uint64_t)k->cap_memo || k->memo[idx] < 0)
		return pkl_fail(k, -EINVAL, "pickle memo get of an unset slot");
	return push(k, k->memo[idx]);
}

static bool str_is(const char *s, uint32_t n, const char *lit)
{
	return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static int make_global(struct pkl *k, const char *mod, uint32_t mlen, const char *name,
		       uint32_t nlen)
{
	int32_t v;
	struct pv *g;
	int rc = new_val(k, PV_GLOBAL, &v);

	if (rc)
		return rc;
	g = &k->v[v];
	g->s = mod;
	g->slen = mlen;
	g->s2 = name;
	g->s2len = nlen;
	g->g = G_OTHER;
	if (str_is(mod, mlen, "collections") && str_is(name, nlen, "OrderedDict"))
		g->g = G_ORDERED_DICT;
	else if (str_is(mod, mlen, "torch._utils") && str_is(name, nlen, "_rebuild_tensor_v2"))
		g->g = G_REBUILD_TENSOR_V2;
	else if (str_is(mod, mlen, "torch._utils") && str_is(name, nlen, "_rebuild_parameter"))
		g->g = G_REBUILD_PARAMETER;
	else if (str_is(mod, mlen, "torch") && str_is(name, nlen, "FloatStorage"))
		g->g = G_STORAGE_F32;
	else if (str_is(mod, mlen, "torch") && str_is(name, nlen, "BFloat16Storage"))
		g->g = G_STORAGE_BF16;
	else if (str_is(mod, mlen, "torch") && str_is(name, nlen, "HalfStorage"))
		g->g = G_STORAGE_F16;
	return push(k, v);
}

/* GLOBAL's argument: "module\nname\n". */
static int op_global(struct pkl *k)
{
	const char *mod = (const char *)k->d + k->pos, *name, *nl;
	size_t rest = k->len - k->pos;

	nl = memchr(mod, '\n', rest);
	if (!nl)
		return pkl_fail(k, -EINVAL, "pickle GLOBAL truncated");
	name = nl + 1;
	rest -= (size_t)(name - mod);
	nl = memchr(name, '\n', rest);
	if (!nl)
		return pkl_fail(k, -EINVAL, "pickle GLOBAL truncated");
	k->pos = (size_t)((const uint8_t *)nl + 1 - k->d);
	return make_global(k, mod, (uint32_t)(name - 1 - mod), name, (uint32_t)(nl - name));
}

static int op_reduce(struct pkl *k)
{
	int32_t args, fn, v;
	struct pv *f, *a;
	int rc;

	if ((rc = pop(k, &args)) || (rc = pop(k, &fn)))
		return rc;
	f = &k->v[fn];
	a = &k->v[args];
	if (f->kind != PV_GLOBAL)
		return pkl_fail(k, -EINVAL, "pickle REDUCE of something that is not a global");
	if (a->kind != PV_TUPLE)
		return pkl_fail(k, -EINVAL, "pickle REDUCE with arguments that are not a tuple");
	switch (f->g) {
	case G_ORDERED_DICT:
		if (a->n != 0)
			return pkl_fail(k, -EINVAL, "OrderedDict() with arguments");
		return push_new(k, PV_DICT, NULL);
	case G_REBUILD_TENSOR_V2:
		if (a->n < 4)
			return pkl_fail(k, -EINVAL, "_rebuild_tensor_v2 with fewer than 4 arguments");
		if ((rc = new_val(k, PV_TENSOR, &v)))
			return rc;
		k->v[v].a = args;
		return push(k, v);
	case G_REBUILD_PARAMETER:
		/* _rebuild_parameter(data, requires_grad, hooks): the tensor itself. */
		if (a->n < 1 || k->v[k->kids[a->a]].kind != PV_TENSOR)
			return pkl_fail(k, -EINVAL, "_rebuild_parameter without a tensor");
		return push(k, k->kids[a->a]);
	default: {
		char what[200];

		snprintf(what, sizeof(what), "pickle calls %.*s.%.*s, which a state_dict does "
			 "not use,", (int)(f->slen > 60 ? 60 : f->slen), f->s,
			 (int)(f->s2len > 60 ? 60 : f->s2len), f->s2);
		return pkl_fail(k, -EINVAL, what);
	}
	}
}

static int op_setitems(struct pkl *k, bool one)
{
	int32_t first, dict;
	int rc;

	if (one) {
		int32_t key, val;

		if ((rc = pop(k, &val)) || (rc = pop(k, &key)))
			return rc;
		if (k->n_stack <= fence(k) || k->v[k->stack[k->n_stack - 1]].kind != PV_DICT)
			return pkl_fail(k, -EINVAL, "pickle SETITEM on something not a dict");
		return add_pair(k, k->stack[k->n_stack - 1], key, val);
	}
	if ((rc = pop_mark(k, &first)))
		return rc;
	if ((k->n_stack - first) % 2 != 0)
		return pkl_fail(k, -EINVAL, "pickle SETITEMS with an odd number of items");
	if (first <= fence(k) || k->v[k->stack[first - 1]].kind != PV_DICT)
		return pkl_fail(k, -EINVAL, "pickle SETITEMS on something not a dict");
	dict = k->stack[first - 1];
	for (int32_t i = first; i < k->n_stack; i += 2)
		if ((rc = add_pair(k, dict, k->stack[i], k->stack[i + 1])))
			return rc;
	k->n_stack = first;
	return 0;
}

static int op_appends(struct pkl *k, bool one)
{
	int32_t first, list;
	int rc;

	if (one) {
		int32_t val;

		if ((rc = pop(k, &val)))
			return rc;
		if (k->n_stack <= fence(k) || k->v[k->stack[k->n_stack - 1]].kind != PV_LIST)
			return pkl_fail(k, -EINVAL, "pickle APPEND on something not a list");
		return add_pair(k, k->stack[k->n_stack - 1], -1, val);
	}
	if ((rc = pop_mark(k, &first)))
		return rc;
	if (first <= fence(k) || k->v[k->stack[first - 1]].kind != PV_LIST)
		return pkl_fail(k, -EINVAL, "pickle APPENDS on something not a list");
	list = k->stack[first - 1];
	for (int32_t i = first; i < k->n_stack; i++)
		if ((rc = add_pair(k, list, -1, k->stack[i])))
			return rc;
	k->n_stack = first;
	return 0;
}

static int op_str(struct pkl *k, size_t n)
{
	int32_t v;
	int rc;

	if ((rc = need(k, n)))
		return rc;
	if (n > UINT32_MAX)
		return pkl_fail(k, -EINVAL, "pickle string too long");
	if ((rc = push_new(k, PV_STR, &v)))
		return rc;
	k->v[v].s = (const char *)k->d + k->pos;
	k->v[v].slen = (uint32_t)n;
	k->pos += n;
	return 0;
}

static int op_int(struct pkl *k, int64_t x)
{
	int32_t v;
	int rc = push_new(k, PV_INT, &v);

	if (!rc)
		k->v[v].i = x;
	return rc;
}

/* Runs the pickle to STOP; *result is the value left on top. */
static int pkl_run(struct pkl *k, int32_t *result)
{
	const uint8_t *d = k->d;
	int rc;

	for (;;) {
		uint8_t op;
		int32_t v, first;

		k->op_pos = k->pos;
		if ((rc = need(k, 1)))
			return rc;
		op = d[k->pos++];
		switch (op) {
		case 0x80: /* PROTO */
			if ((rc = need(k, 1)))
				return rc;
			if (d[k->pos] > 5)
				return pkl_fail(k, -EINVAL, "pickle protocol above 5");
			k->pos++;
			break;
		case 0x95: /* FRAME: framing is transparent to us */
			if ((rc = need(k, 8)))
				return rc;
			k->pos += 8;
			break;
		case 'c': /* GLOBAL */
			if ((rc = op_global(k)))
				return rc;
			break;
		case 0x93: { /* STACK_GLOBAL */
			int32_t m, n;

			if ((rc = pop(k, &n)) || (rc = pop(k, &m)))
				return rc;
			if (k->v[m].kind != PV_STR || k->v[n].kind != PV_STR)
				return pkl_fail(k, -EINVAL, "pickle STACK_GLOBAL of non-strings");
			if ((rc = make_global(k, k->v[m].s, k->v[m].slen, k->v[n].s, k->v[n].slen)))
				return rc;
			break;
		}
		case 'q': /* BINPUT */
			if ((rc = need(k, 1)) || (rc = memo_put(k, d[k->pos])))
				return rc;
			k->pos += 1;
			break;
		case 'r': /* LONG_BINPUT */
			if ((rc = need(k, 4)) || (rc = memo_put(k, rd32(d + k->pos))))
				return rc;
			k->pos += 4;
			break;
		case 0x94: /* MEMOIZE */
			if ((rc = memo_put(k, (uint64_t)k->next_memo)))
				return rc;
			break;
		case 'h': /* BINGET */
			if ((rc = need(k, 1)) || (rc = memo_get(k, d[k->pos])))
				return rc;
			k->pos += 1;
			break;
		case 'j': /* LONG_BINGET */
			if ((rc = need(k, 4)) || (rc = memo_get(k, rd32(d + k->pos))))
				return rc;
			k->pos += 4;
			break;
		case '(': /* MARK */
			rc = pgrow((void **)&k->marks, &k->cap_marks, (int64_t)k->n_marks + 1,
				   sizeof(int32_t), PKL_MAX_MARKS);
			if (rc)
				return pkl_oom(k, rc);
			k->marks[k->n_marks++] = k->n_stack;
			break;
		case '}': /* EMPTY_DICT */
			if ((rc = push_new(k, PV_DICT, NULL)))
				return rc;
			break;
		case ']': /* EMPTY_LIST */
			if ((rc = push_new(k, PV_LIST, NULL)))
				return rc;
			break;
		case ')': /* EMPTY_TUPLE */
			if ((rc = make_tuple(k, NULL, 0)))
				return rc;
			break;
		case 't': { /* TUPLE */
			int32_t n;

			if ((rc = pop_mark(k, &first)))
				return rc;
			n = k->n_stack - first;
			k->n_stack = first;
			/* The popped items stay in the array until the next push overwrites
			 * them, and make_tuple copies them before it pushes. */
			if ((rc = make_tuple(k, k->stack + first, n)))
				return rc;
			break;
		}
		case 0x85: /* TUPLE1 */
		case 0x86: /* TUPLE2 */
		case 0x87: { /* TUPLE3 */
			int32_t n = op - 0x84;

			if (k->n_stack - fence(k) < n)
				return pkl_fail(k, -EINVAL, "pickle stack underflow");
			k->n_stack -= n;
			if ((rc = make_tuple(k, k->stack + k->n_stack, n)))
				return rc;
			break;
		}
		case 'J': /* BININT */
			if ((rc = need(k, 4)))
				return rc;
			rc = op_int(k, (int32_t)rd32(d + k->pos));
			k->pos += 4;
			if (rc)
				return rc;
			break;
		case 'K': /* BININT1 */
			if ((rc = need(k, 1)))
				return rc;
			rc = op_int(k, d[k->pos]);
			k->pos += 1;
			if (rc)
				return rc;
			break;
		case 'M': /* BININT2 */
			if ((rc = need(k, 2)))
				return rc;
			rc = op_int(k, rd16(d + k->pos));
			k->pos += 2;
			if (rc)
				return rc;
			break;
		case 0x8a: { /* LONG1: n-byte little-endian two's complement */
			uint64_t x = 0;
			uint8_t n;

			if ((rc = need(k, 1)))
				return rc;
			n = d[k->pos++];
			if (n > 8)
				return pkl_fail(k, -EINVAL, "pickle LONG1 wider than 64 bits");
			if ((rc = need(k, n)))
				return rc;
			for (uint8_t i = 0; i < n; i++)
				x |= (uint64_t)d[k->pos + i] << (8 * i);
			if (n > 0 && n < 8 && (d[k->pos + n - 1] & 0x80))
				x |= ~(uint64_t)0 << (8 * n); /* sign-extend */
			k->pos += n;
			if ((rc = op_int(k, (int64_t)x)))
				return rc;
			break;
		}
		case 'G': { /* BINFLOAT: big-endian double */
			uint64_t x = 0;

			if ((rc = need(k, 8)))
				return rc;
			for (int i = 0; i < 8; i++)
				x = (x << 8) | d[k->pos + i];
			k->pos += 8;
			/* Kept as its bit pattern: no state_dict value we read is a float. */
			if ((rc = push_new(k, PV_FLOAT, &v)))
				return rc;
			k->v[v].i = (int64_t)x;
			break;
		}
		case 'X': /* BINUNICODE */
			if ((rc = need(k, 4)))
				return rc;
			k->pos += 4;
			if ((rc = op_str(k, rd32(d + k->pos - 4))))
				return rc;
			break;
		case 0x8c: /* SHORT_BINUNICODE */
			if ((rc = need(k, 1)))
				return rc;
			k->pos += 1;
			if ((rc = op_str(k, d[k->pos - 1])))
				return rc;
			break;
		case 'Q': { /* BINPERSID */
			int32_t pid;

			if ((rc = pop(k, &pid)))
				return rc;
			if ((rc = push_new(k, PV_PERSID, &v)))
				return rc;
			k->v[v].a = pid;
			break;
		}
		case 'R': /* REDUCE */
			if ((rc = op_reduce(k)))
				return rc;
			break;
		case 's': /* SETITEM */
			if ((rc = op_setitems(k, true)))
				return rc;
			break;
		case 'u': /* SETITEMS */
			if ((rc = op_setitems(k, false)))
				return rc;
			break;
		case 'a': /* APPEND */
			if ((rc = op_appends(k, true)))
				return rc;
			break;
		case 'e': /* APPENDS */
			if ((rc = op_appends(k, false)))
				return rc;
			break;
		case 'b': /* BUILD: sets the object's __dict__ (OrderedDict's _metadata); unused */
			if ((rc = pop(k, &v)))
				return rc;
			if (k->n_stack <= fence(k))
				return pkl_fail(k, -EINVAL, "pickle BUILD with nothing to build");
			break;
		case 0x88: /* NEWTRUE */
		case 0x89: /* NEWFALSE */
			if ((rc = push_new(k, PV_BOOL, &v)))
				return rc;
			k->v[v].i = op == 0x88;
			break;
		case 'N': /* NONE */
			if ((rc = push_new(k, PV_NONE, NULL)))
				return rc;
			break;
		case '.': /* STOP */
			if (k->n_stack < 1)
				return pkl_fail(k, -EINVAL, "pickle STOP with an empty stack");
			*result = k->stack[k->n_stack - 1];
			return 0;
		default: {
			gf_tset_err(k->err, "%s: pickle opcode 0x%02x at offset %zu not supported in "
				    "a state_dict", k->path, op, k->op_pos);
			return -EINVAL;
		}
		}
	}
}

static void pkl_free(struct pkl *k)
{
	free(k->v);
	free(k->kids);
	free(k->pairs);
	free(k->stack);
	free(k->marks);
	free(k->memo);
}

/* ---------------------------------------------------------------------------------------
 * From the pickle's values to tensors.
 */
struct tctx {
	struct pkl *k;
	const struct zip *z;
	const char *prefix; /* "<dir>/" of data.pkl */
	size_t prefix_len;
	gf_tensor_set *ts;
	const char *path;
	char *err;
};

static const struct pv *kid(const struct pkl *k, const struct pv *tuple, int i)
{
	return &k->v[k->kids[tuple->a + i]];
}

static int int_tuple(const struct pkl *k, const struct pv *t, int64_t *out, int *n)
{
	if (t->kind != PV_TUPLE || t->n > GF_MAX_DIMS)
		return -1;
	for (int i = 0; i < t->n; i++) {
		const struct pv *x = kid(k, t, i);

		if (x->kind != PV_INT)
			return -1;
		out[i] = x->i;
	}
	*n = t->n;
	return 0;
}

static int add_tensor(struct tctx *c, const struct pv *key, const struct pv *val)
{
	const struct pkl *k = c->k;
	const struct pv *args, *pers, *pid, *stype, *skey, *snumel;
	int64_t shape[GF_MAX_DIMS], stride[GF_MAX_DIMS], off, numel, expect;
	int n_dims, n_stride;
	gf_dtype dtype;
	size_t el;
	char ename[512];
	const struct zip_entry *e;
	const uint8_t *sdata;
	uint64_t ssize;
	int nl, rc;

	if (key->kind != PV_STR) {
		gf_tset_err(c->err, "%s: state_dict key is not a string", c->path);
		return -EINVAL;
	}
	nl = (int)(key->slen > 80 ? 80 : key->slen);
	if (val->kind != PV_TENSOR) {
		gf_tset_err(c->err, "%s: tensor %.*s: value is not a tensor", c->path, nl, key->s);
		return -EINVAL;
	}
	args = &k->v[val->a];
	pers = kid(k, args, 0);
	if (pers->kind != PV_PERSID || k->v[pers->a].kind != PV_TUPLE || k->v[pers->a].n < 5) {
		gf_tset_err(c->err, "%s: tensor %.*s: storage is not a ('storage', type, key, "
			    "location, numel) persistent id", c->path, nl, key->s);
		return -EINVAL;
	}
	pid = &k->v[pers->a];
	stype = kid(k, pid, 1);
	skey = kid(k, pid, 2);
	snumel = kid(k, pid, 4);
	if (kid(k, pid, 0)->kind != PV_STR || !str_is(kid(k, pid, 0)->s, kid(k, pid, 0)->slen,
						      "storage") ||
	    stype->kind != PV_GLOBAL || skey->kind != PV_STR || snumel->kind != PV_INT ||
	    snumel->i < 0) {
		gf_tset_err(c->err, "%s: tensor %.*s: malformed storage persistent id", c->path,
			    nl, key->s);
		return -EINVAL;
	}
	switch (stype->g) {
	case G_STORAGE_F32:
		dtype = GF_DTYPE_F32;
		break;
	case G_STORAGE_BF16:
		dtype = GF_DTYPE_BF16;
		break;
	case G_STORAGE_F16:
		dtype = GF_DTYPE_F16;
		break;
	default:
		gf_tset_err(c->err, "%s: tensor %.*s: storage type %.*s.%.*s not supported "
			    "(float32, bfloat16 and float16 are)", c->path, nl, key->s,
			    (int)(stype->slen > 40 ? 40 : stype->slen), stype->s,
			    (int)(stype->s2len > 40 ? 40 : stype->s2len), stype->s2);
		return -EINVAL;
	}
	el = gf_dtype_size(dtype);
	if (kid(k, args, 1)->kind != PV_INT ||
	    int_tuple(k, kid(k, args, 2), shape, &n_dims) ||
	    int_tuple(k, kid(k, args, 3), stride, &n_stride) || n_dims != n_stride) {
		gf_tset_err(c->err, "%s: tensor %.*s: bad offset, size or stride (at most %d "
			    "dims)", c->path, nl, key->s, GF_MAX_DIMS);
		return -EINVAL;
	}
	off = kid(k, args, 1)->i;
	numel = gf_tset_numel(n_dims, shape);
	if (numel < 0 || off < 0 || off > ((int64_t)1 << 56)) {
		gf_tset_err(c->err, "%s: tensor %.*s: bad shape or storage offset", c->path, nl,
			    key->s);
		return -EINVAL;
	}
	expect = 1;
	for (int i = n_dims - 1; i >= 0; i--) {
		if (shape[i] != 1 && stride[i] != expect) {
			gf_tset_err(c->err, "%s: tensor %.*s is not contiguous (dim %d has stride "
				    "%lld, expected %lld)", c->path, nl, key->s, i,
				    (long long)stride[i], (long long)expect);
			return -EINVAL;
		}
		expect *= shape[i];
	}
	if (c->prefix_len + 5 + skey->slen >= sizeof(ename)) {
		gf_tset_err(c->err, "%s: tensor %.*s: storage key too long", c->path, nl, key->s);
		return -EINVAL;
	}
	memcpy(ename, c->prefix, c->prefix_len);
	memcpy(ename + c->prefix_len, "data/", 5);
	memcpy(ename + c->prefix_len + 5, skey->s, skey->slen);
	e = zip_find(c->z, ename, c->prefix_len + 5 + skey->slen);
	if (!e) {
		gf_tset_err(c->err, "%s: tensor %.*s: storage entry %.*s missing from the archive",
			    c->path, nl, key->s, (int)(skey->slen > 40 ? 40 : skey->slen), skey->s);
		return -EINVAL;
	}
	if ((rc = zip_data(c->z, e, &sdata, &ssize, c->err)))
		return rc;
	if ((uint64_t)snumel->i > ssize / el) {
		gf_tset_err(c->err, "%s: tensor %.*s: storage of %lld elements does not fit in its "
			    "%llu-byte entry", c->path, nl, key->s, (long long)snumel->i,
			    (unsigned long long)ssize);
		return -EINVAL;
	}
	if (numel > 0 && (off > snumel->i || numel > snumel->i - off)) {
		gf_tset_err(c->err, "%s: tensor %.*s: %lld elements at offset %lld overrun its "
			    "storage of %lld", c->path, nl, key->s, (long long)numel, (long long)off,
			    (long long)snumel->i);
		return -EINVAL;
	}
	return gf_tset_push(c->ts, key->s, key->slen, dtype, n_dims, shape,
			    numel ? sdata + (size_t)off * el : sdata, (size_t)numel * el, c->path,
			    c->err);
}

/* Finds "<dir>/data.pkl" (one folder level, any folder name). */
static const struct zip_entry *find_pkl(const struct zip *z)
{
	for (size_t i = 0; i < z->n; i++) {
		const struct zip_entry *e = &z->e[i];
		const char *slash;

		if (e->name_len < 9 || memcmp(e->name + e->name_len - 9, "/data.pkl", 9) != 0)
			continue;
		slash = memchr(e->name, '/', e->name_len);
		if (slash == e->name + e->name_len - 9)
			return e;
	}
	return NULL;
}

int gf_tensors_read_pth(gf_tensor_set *ts, const char *path, char *err)
{
	struct zip z;
	struct pkl k;
	struct tctx c;
	const struct zip_entry *pe, *bo;
	const uint8_t *pkl_data, *bo_data;
	uint64_t pkl_size, bo_size;
	char name[300];
	int32_t root;
	size_t plen;
	int rc;

	memset(ts, 0, sizeof(*ts));
	memset(&k, 0, sizeof(k));
	rc = gf_tset_map(path, &ts->map, &ts->map_len, err);
	if (rc)
		return rc;
	rc = zip_open(&z, ts->map, ts->map_len, path, err);
	if (rc)
		goto out_unmap;
	pe = find_pkl(&z);
	if (!pe) {
		gf_tset_err(err, "%s: no <dir>/data.pkl in the zip archive: not a torch.save file",
			    path);
		rc = -EINVAL;
		goto out_zip;
	}
	plen = pe->name_len - 8; /* "<dir>/" */
	if ((rc = zip_data(&z, pe, &pkl_data, &pkl_size, err)))
		goto out_zip;
	if (plen + 16 < sizeof(name)) {
		memcpy(name, pe->name, plen);
		memcpy(name + plen, "byteorder", 9);
		bo = zip_find(&z, name, plen + 9);
		if (bo) {
			if ((rc = zip_data(&z, bo, &bo_data, &bo_size, err)))
				goto out_zip;
			if (bo_size != 6 || memcmp(bo_data, "little", 6) != 0) {
				gf_tset_err(err, "%s: checkpoint is not little-endian", path);
				rc = -EINVAL;
				goto out_zip;
			}
		}
	}

	k.d = pkl_data;
	k.len = (size_t)pkl_size;
	k.path = path;
	k.err = err;
	if ((rc = pkl_run(&k, &root)))
		goto out_pkl;
	if (k.v[root].kind != PV_DICT) {
		gf_tset_err(err, "%s: data.pkl does not hold a dict (not a state_dict)", path);
		rc = -EINVAL;
		goto out_pkl;
	}
	c = (struct tctx){ &k, &z, pe->name, plen, ts, path, err };
	for (int32_t p = k.v[root].n ? k.v[root].a : -1; p >= 0; p = k.pairs[p].next) {
		rc = add_tensor(&c, &k.v[k.pairs[p].key], &k.v[k.pairs[p].val]);
		if (rc)
			goto out_pkl;
	}
	if (ts->n_tensors == 0) {
		gf_tset_err(err, "%s: state_dict holds no tensors", path);
		rc = -EINVAL;
		goto out_pkl;
	}
	rc = gf_tset_check_unique(ts, path, err);
out_pkl:
	pkl_free(&k);
out_zip:
	free(z.e);
out_unmap:
	if (rc)
		gf_tensors_free(ts);
	return rc;
}
