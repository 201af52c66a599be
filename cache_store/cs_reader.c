/*
 * cs_reader.c — reading committed contexts: the RAM page cache shared by all readers of a
 * store, readers with read-ahead, and RAM-only copy-on-write branches.
 *
 * Page cache: decompressed pages keyed by (context serial, record offset). Serials are never
 * reused and page files are append-only, so a key names the same bytes for as long as the
 * store is open. Referenced pages are pinned; unreferenced ones sit on an LRU list and are
 * freed when the cache exceeds its limit (pinned pages may push it over: the limit bounds
 * what is kept, not what readers hold).
 *
 * Readers never wait for each other: a read-ahead in flight belongs to the reader that
 * issued it; a second reader that wants the same page reads it itself (a race costs one
 * duplicate read), and the first copy inserted wins.
 */
#include "cs_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cs_cpage {
	cs_page pub;                /* first: cs_page_release recovers the entry from it */
	struct cs_pcache *cache;    /* NULL for a branch's own page */
	uint64_t serial, offset;
	uint32_t refs;
	bool linked;                /* in the hash table (else freed on its last release) */
	bool in_lru;
	bool drop;                  /* brought in by a streaming reader: uncached on release */
	size_t bytes;
	struct cs_cpage *hnext, *lprev, *lnext;
	uint8_t *mem;               /* rows, then token ids */
};

/* ---- page cache ---- */

static size_t bucket_of(const struct cs_pcache *c, uint64_t serial, uint64_t offset)
{
	uint64_t h = (serial * 0x9e3779b97f4a7c15ull) ^ (offset / CS_ALIGN * 0xc2b2ae3d27d4eb4full);

	return (size_t)((h ^ (h >> 29)) & (c->n_buckets - 1));
}

int cs_pcache_init(struct cs_pcache *c, uint64_t limit)
{
	memset(c, 0, sizeof(*c));
	c->n_buckets = 256;
	c->buckets = calloc(c->n_buckets, sizeof(*c->buckets));
	if (!c->buckets)
		return -ENOMEM;
	c->limit = limit;
	pthread_mutex_init(&c->mu, NULL);
	return 0;
}

static void entry_free(struct cs_cpage *e)
{
	free(e);
}

static void lru_unlink(struct cs_pcache *c, struct cs_cpage *e)
{
	if (!e->in_lru)
		return;
	if (e->lprev)
		e->lprev->lnext = e->lnext;
	else
		c->lru_head = e->lnext;
	if (e->lnext)
		e->lnext->lprev = e->lprev;
	else
		c->lru_tail = e->lprev;
	e->lprev = e->lnext = NULL;
	e->in_lru = false;
}

static void lru_push(struct cs_pcache *c, struct cs_cpage *e)
{
	e->lprev = NULL;
	e->lnext = c->lru_head;
	if (c->lru_head)
		c->lru_head->lprev = e;
	c->lru_head = e;
	if (!c->lru_tail)
		c->lru_tail = e;
	e->in_lru = true;
}

static void hash_unlink(struct cs_pcache *c, struct cs_cpage *e)
{
	struct cs_cpage **pp = &c->buckets[bucket_of(c, e->serial, e->offset)];

	while (*pp && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = e->hnext;
	e->hnext = NULL;
	e->linked = false;
	c->n_entries--;
	c->bytes -= e->bytes;
}

static void trim_locked(struct cs_pcache *c)
{
	while (c->bytes > c->limit && c->lru_tail) {
		struct cs_cpage *e = c->lru_tail;

		lru_unlink(c, e);
		hash_unlink(c, e);
		entry_free(e);
	}
}

static void grow_locked(struct cs_pcache *c)
{
	size_t nb = c->n_buckets * 2;
	struct cs_cpage **b = calloc(nb, sizeof(*b)), **old = c->buckets;
	size_t onb = c->n_buckets;

	if (!b)
		return;   /* longer chains, still correct */
	c->buckets = b;
	c->n_buckets = nb;
	for (size_t i = 0; i < onb; i++) {
		struct cs_cpage *e = old[i], *next;

		for (; e; e = next) {
			size_t k = bucket_of(c, e->serial, e->offset);

			next = e->hnext;
			e->hnext = b[k];
			b[k] = e;
		}
	}
	free(old);
}

static struct cs_cpage *find_locked(struct cs_pcache *c, uint64_t serial, uint64_t offset)
{
	struct cs_cpage *e = c->buckets[bucket_of(c, serial, offset)];

	while (e && (e->serial != serial || e->offset != offset))
		e = e->hnext;
	return e;
}

static struct cs_cpage *pcache_get(struct cs_pcache *c, uint64_t serial, uint64_t offset)
{
	struct cs_cpage *e;

	pthread_mutex_lock(&c->mu);
	e = find_locked(c, serial, offset);
	if (e) {
		if (!e->refs++)
			lru_unlink(c, e);
	}
	pthread_mutex_unlock(&c->mu);
	return e;
}

static bool pcache_has(struct cs_pcache *c, uint64_t serial, uint64_t offset)
{
	bool has;

	pthread_mutex_lock(&c->mu);
	has = find_locked(c, serial, offset) != NULL;
	pthread_mutex_unlock(&c->mu);
	return has;
}

/* Inserts e (or finds the copy another reader inserted first, freeing e); returns the
 * cached entry referenced once if ref, else NULL. */
static struct cs_cpage *pcache_insert(struct cs_pcache *c, struct cs_cpage *e, bool ref)
{
	struct cs_cpage *have;

	pthread_mutex_lock(&c->mu);
	have = find_locked(c, e->serial, e->offset);
	if (have) {
		entry_free(e);
		e = have;
		if (ref && !e->refs++)
			lru_unlink(c, e);
	} else {
		size_t k;

		if (c->n_entries >= c->n_buckets)
			grow_locked(c);
		k = bucket_of(c, e->serial, e->offset);
		e->hnext = c->buckets[k];
		c->buckets[k] = e;
		e->linked = true;
		e->cache = c;
		c->n_entries++;
		c->bytes += e->bytes;
		e->refs = ref ? 1 : 0;
		if (!ref)
			lru_push(c, e);
		trim_locked(c);   /* may free e at once when unreferenced */
	}
	pthread_mutex_unlock(&c->mu);
	return ref ? e : NULL;
}

void cs_page_release(const cs_page *p)
{
	struct cs_cpage *e = (struct cs_cpage *)p;
	struct cs_pcache *c;

	if (!e || !e->cache)
		return;
	c = e->cache;
	pthread_mutex_lock(&c->mu);
	if (--e->refs == 0) {
		if (e->linked && e->drop) {
			/* A one-pass scan read it: keep it from growing the cache and evicting
			 * the pages other readers come back to. */
			hash_unlink(c, e);
			entry_free(e);
		} else if (e->linked) {
			lru_push(c, e);
			trim_locked(c);
		} else {
			entry_free(e);
		}
	}
	pthread_mutex_unlock(&c->mu);
}

void cs_pcache_purge(struct cs_pcache *c, uint64_t serial)
{
	pthread_mutex_lock(&c->mu);
	for (size_t i = 0; i < c->n_buckets; i++) {
		struct cs_cpage *e = c->buckets[i], *next;

		for (; e; e = next) {
			next = e->hnext;
			if (e->serial != serial)
				continue;
			hash_unlink(c, e);
			if (!e->refs) {
				lru_unlink(c, e);
				entry_free(e);
			}
		}
	}
	pthread_mutex_unlock(&c->mu);
}

void cs_pcache_free(struct cs_pcache *c)
{
	if (!c->buckets)
		return;
	for (size_t i = 0; i < c->n_buckets; i++) {
		struct cs_cpage *e = c->buckets[i], *next;

		for (; e; e = next) {
			next = e->hnext;
			entry_free(e);
		}
	}
	free(c->buckets);
	c->buckets = NULL;
	pthread_mutex_destroy(&c->mu);
}

static struct cs_cpage *entry_alloc(uint32_t cap_tokens, size_t row_bytes)
{
	size_t rows = cs_round_up((uint64_t)cap_tokens * row_bytes, 16);
	size_t bytes = sizeof(struct cs_cpage) + 16 + rows + (size_t)cap_tokens * 4;
	struct cs_cpage *e = malloc(bytes);   /* no calloc: every byte is about to be written */

	if (!e)
		return NULL;
	memset(e, 0, sizeof(*e));
	e->mem = (uint8_t *)cs_round_up((uintptr_t)(e + 1), 16);
	e->bytes = bytes;
	e->pub.rows = e->mem;
	e->pub.tokens = (const uint32_t *)(e->mem + rows);
	return e;
}

/* ---- readers ---- */

struct rslot {
	uint8_t *buf;
	uint64_t page;
	bool busy;
};

struct cs_reader {
	cs_store *s;
	struct cs_ctx snap;         /* the committed state this reader sees */
	char label[40];
	char pages_name[64];        /* for fault points */
	int fd, blob_fd;
	uint64_t *off;              /* [n_pages] record offset of each page */
	uint32_t *dlen;             /* [n_pages] record length */
	struct cs_ioq q;
	struct rslot *slots;        /* [depth] */
	uint32_t depth, ra;
	size_t esz, row_bytes, rec_cap;
	uint8_t *scratch;
	uint64_t next_seq;          /* page after the last one asked for */
	bool stream;                /* one pass: pages it brings in leave the cache on release */
};

static uint32_t page_tokens_of(const struct cs_ctx *c, uint64_t page)
{
	return page + 1 < c->n_pages ? c->page_tokens
				     : (uint32_t)(c->n_tokens - page * c->page_tokens);
}

void cs_reader_set_streaming(cs_reader *r, bool on)
{
	r->stream = on;
}

int cs_reader_open(cs_store *s, uint64_t serial, cs_reader **out, char *err)
{
	cs_reader *r;
	struct cs_ctx *c;
	char name[64];
	int rc;

	*out = NULL;
	r = calloc(1, sizeof(*r));
	if (!r) {
		cs_errf(err, "%s: out of memory", s->dir);
		return -ENOMEM;
	}
	r->s = s;
	r->fd = -1;
	r->blob_fd = -1;
	pthread_mutex_lock(&s->mu);
	c = cs_store_find_locked(s, serial);
	if (!c || !c->committed) {
		pthread_mutex_unlock(&s->mu);
		cs_errf(err, "%s: no context #%" PRIu64, s->dir, serial);
		free(r);
		return -ENOENT;
	}
	r->blob_fd = cs_open_blob_locked(s, c, err);
	if (c->blob_gen && r->blob_fd < 0) {
		rc = r->blob_fd;
		pthread_mutex_unlock(&s->mu);
		free(r);
		return rc;
	}
	c->readers++;
	if (!s->rdonly) {
		c->last_use_ns = cs_now_ns();
		s->dirty = true;
	}
	r->snap = *c;
	pthread_mutex_unlock(&s->mu);

	cs_ctx_label(r->label, r->snap.key, r->snap.serial);
	r->esz = cs_dtype_size(r->snap.dtype);
	r->row_bytes = (size_t)r->snap.width * r->esz;
	r->rec_cap = cs_page_record_bound(r->snap.page_tokens, r->snap.width, r->esz);
	r->depth = s->cfg.io_depth;
	/* read-ahead needs requests in flight: the pread backend reads on demand */
	r->ra = s->io.backend == CS_IO_URING ? s->cfg.readahead_pages : 0;
	rc = cs_load_page_table(s, &r->snap, &r->off, &r->dlen, err);
	if (rc)
		goto fail;
	cs_name_pages(name, serial);
	memcpy(r->pages_name, name, sizeof(r->pages_name));
	r->fd = cs_io_open_pages(&s->io, s->dirfd, name, O_RDONLY);
	if (r->fd < 0) {
		rc = r->fd == -ENOENT ? -EBADMSG : r->fd;
		cs_errf(err, "context %s: %s: %s", r->label, name, strerror(-r->fd));
		goto fail;
	}
	rc = cs_ioq_init(&r->q, &s->io, r->depth, err);
	if (rc)
		goto fail;
	r->slots = calloc(r->depth, sizeof(*r->slots));
	r->scratch = malloc((size_t)r->snap.page_tokens * (r->row_bytes + 4));
	if (!r->slots || !r->scratch) {
		rc = -ENOMEM;
		cs_errf(err, "%s: out of memory", s->dir);
		goto fail;
	}
	for (uint32_t i = 0; i < r->depth; i++) {
		r->slots[i].buf = cs_io_alloc(r->rec_cap);
		if (!r->slots[i].buf) {
			rc = -ENOMEM;
			cs_errf(err, "%s: out of memory", s->dir);
			goto fail;
		}
	}
	*out = r;
	return 0;
fail:
	cs_reader_close(r);
	return rc;
}

void cs_reader_info(const cs_reader *r, cs_ctx_info *out)
{
	cs_info_from_ctx(out, &r->snap);
}

void cs_reader_close(cs_reader *r)
{
	struct cs_ctx *c;

	if (!r)
		return;
	cs_ioq_exit(&r->q);
	if (r->slots)
		for (uint32_t i = 0; i < r->depth; i++)
			free(r->slots[i].buf);
	free(r->slots);
	free(r->scratch);
	free(r->off);
	free(r->dlen);
	if (r->fd >= 0)
		close(r->fd);
	if (r->blob_fd >= 0)
		close(r->blob_fd);
	pthread_mutex_lock(&r->s->mu);
	c = cs_store_find_locked(r->s, r->snap.serial);
	if (c && c->readers)
		c->readers--;
	pthread_mutex_unlock(&r->s->mu);
	free(r);
}

static int submit_page(cs_reader *r, uint64_t page)
{
	uint32_t k;

	for (k = 0; k < r->depth && r->slots[k].busy; k++)
		;
	if (k == r->depth)
		return -EBUSY;
	r->slots[k].busy = true;
	r->slots[k].page = page;
	return cs_ioq_read(&r->q, r->fd, r->slots[k].buf, r->dlen[page], r->off[page], k,
			   r->pages_name);
}

static struct rslot *inflight(cs_reader *r, uint64_t page)
{
	for (uint32_t k = 0; k < r->depth; k++)
		if (r->slots[k].busy && r->slots[k].page == page)
			return &r->slots[k];
	return NULL;
}

/* Turns a finished read into a cache entry. -EBADMSG with err naming the page. */
static int decode_slot(cs_reader *r, struct rslot *sl, int res, struct cs_cpage **out, char *err)
{
	uint64_t page = sl->page;
	struct cs_page_meta m = { .serial = r->snap.serial, .index = page,
				  .n_tokens = page_tokens_of(&r->snap, page),
				  .page_tokens = r->snap.page_tokens, .width = r->snap.width,
				  .dtype = r->snap.dtype };
	struct cs_cpage *e;
	char why[CS_ERR_LEN];
	int rc;

	*out = NULL;
	if (res < 0) {
		cs_errf(err, "context %s page %" PRIu64 ": read: %s", r->label, page,
			strerror(-res));
		return res;
	}
	if ((uint32_t)res != r->dlen[page]) {
		cs_errf(err, "context %s page %" PRIu64 ": corrupt: short read (%d of %u bytes)",
			r->label, page, res, r->dlen[page]);
		return -EBADMSG;
	}
	e = entry_alloc(m.n_tokens, r->row_bytes);
	if (!e) {
		cs_errf(err, "context %s page %" PRIu64 ": out of memory", r->label, page);
		return -ENOMEM;
	}
	rc = cs_page_decode(&m, sl->buf, r->dlen[page], r->scratch, e->mem,
			    (uint32_t *)e->pub.tokens, why, sizeof(why));
	if (rc) {
		cs_errf(err, "context %s page %" PRIu64 ": corrupt: %s", r->label, page, why);
		entry_free(e);
		return rc;
	}
	e->serial = r->snap.serial;
	e->offset = r->off[page];
	e->pub.index = page;
	e->pub.first_token = page * r->snap.page_tokens;
	e->pub.n_tokens = m.n_tokens;
	*out = e;
	return 0;
}

/* Waits for one read; a read-ahead is decoded into the cache (its errors are left for when
 * the page is asked for); the page `want` is returned referenced in *got. */
static int reap_one(cs_reader *r, uint64_t want, struct cs_cpage **got, char *err)
{
	uint64_t tag;
	int res, rc = cs_ioq_submit(&r->q);
	struct rslot *sl;
	struct cs_cpage *e;

	if (!rc)
		rc = cs_ioq_wait(&r->q, &tag, &res);
	if (rc) {
		cs_errf(err, "context %s: read: %s", r->label, strerror(-rc));
		return rc;
	}
	sl = &r->slots[tag];
	if (sl->page == want && got) {
		rc = decode_slot(r, sl, res, &e, err);
		sl->busy = false;
		if (rc)
			return rc;
		e->drop = r->stream;
		*got = pcache_insert(&r->s->cache, e, true);
		return 0;
	}
	if (!decode_slot(r, sl, res, &e, NULL)) {
		e->drop = r->stream;
		pcache_insert(&r->s->cache, e, false);
	}
	sl->busy = false;
	return 0;
}

static void read_ahead(cs_reader *r, uint64_t page)
{
	uint64_t end = page + r->ra;

	if (end >= r->snap.n_pages)
		end = r->snap.n_pages - 1;
	for (uint64_t j = page + 1; j <= end && !cs_ioq_full(&r->q); j++) {
		if (inflight(r, j) || pcache_has(&r->s->cache, r->snap.serial, r->off[j]))
			continue;
		if (submit_page(r, j))
			break;
	}
}

int cs_reader_page(cs_reader *r, uint64_t index, const cs_page **out, char *err)
{
	struct cs_cpage *e = NULL;
	bool seq = index == r->next_seq;
	int rc;

	*out = NULL;
	if (index >= r->snap.n_pages) {
		cs_errf(err, "context %s: page %" PRIu64 " out of range (%" PRIu64 " pages)",
			r->label, index, r->snap.n_pages);
		return -EINVAL;
	}
	r->next_seq = index + 1;
	e = pcache_get(&r->s->cache, r->snap.serial, r->off[index]);
	if (e) {
		if (seq && r->ra) {
			read_ahead(r, index);
			rc = cs_ioq_submit(&r->q);
			if (rc) {
				cs_page_release(&e->pub);
				cs_errf(err, "context %s: read: %s", r->label, strerror(-rc));
				return rc;
			}
		}
		*out = &e->pub;
		return 0;
	}
	if (!inflight(r, index)) {
		while (cs_ioq_full(&r->q)) {
			rc = reap_one(r, UINT64_MAX, NULL, err);
			if (rc)
				return rc;
		}
		rc = submit_page(r, index);
		if (rc) {
			cs_errf(err, "context %s page %" PRIu64 ": read: %s", r->label, index,
				strerror(-rc));
			return rc;
		}
	}
	if (seq && r->ra)
		read_ahead(r, index);
	while (!e) {
		rc = reap_one(r, index, &e, err);
		if (rc)
			return rc;
	}
	*out = &e->pub;
	return 0;
}

/* Copies tokens [first, first+n) page by page out of whatever serves the pages (a reader or
 * a branch): rows ([n][width], row_bytes each) and tok ([n]), either may be NULL. */
typedef int (*page_fn)(void *src, uint64_t index, const cs_page **out, char *err);

static int copy_range(void *src, page_fn get, uint64_t pt, size_t row_bytes, uint64_t first,
		      uint64_t n, void *rows, uint32_t *tok, char *err)
{
	while (n) {
		const cs_page *p;
		uint64_t at = first % pt, take;
		int rc = get(src, first / pt, &p, err);

		if (rc)
			return rc;
		take = p->n_tokens - at < n ? p->n_tokens - at : n;
		if (rows) {
			memcpy(rows, (const uint8_t *)p->rows + at * row_bytes, take * row_bytes);
			rows = (uint8_t *)rows + take * row_bytes;
		}
		if (tok) {
			memcpy(tok, p->tokens + at, take * 4);
			tok += take;
		}
		cs_page_release(p);
		first += take;
		n -= take;
	}
	return 0;
}

static int reader_page_fn(void *src, uint64_t index, const cs_page **out, char *err)
{
	return cs_reader_page(src, index, out, err);
}

int cs_reader_read(cs_reader *r, uint64_t first, uint64_t n, void *rows, uint32_t *tok, char *err)
{
	uint32_t pt = r->snap.page_tokens;

	if (first > r->snap.n_tokens || n > r->snap.n_tokens - first) {
		cs_errf(err, "context %s: tokens [%" PRIu64 ", +%" PRIu64 ") out of range (%" PRIu64
			" tokens)", r->label, first, n, r->snap.n_tokens);
		return -EINVAL;
	}
	return copy_range(r, reader_page_fn, pt, r->row_bytes, first, n, rows, tok, err);
}

int cs_reader_blob(cs_reader *r, void **blob, size_t *len, char *err)
{
	*blob = NULL;
	*len = 0;
	if (!r->snap.blob_gen)
		return 0;
	return cs_read_blob_fd(&r->s->io, r->blob_fd, &r->snap, blob, len, err);
}

/* ---- branches ---- */

struct cs_branch {
	cs_reader *base;            /* NULL: a branch over no context (cs_branch_init_empty) */
	const char *label;          /* for errors: the base's, or "(none)" */
	uint32_t pt;
	size_t row_bytes;
	uint64_t base_tokens, n_tokens;
	uint64_t first_own;         /* page index of own[0] */
	struct cs_cpage **own;
	size_t n_own, cap_own;
};

int cs_branch_init(cs_branch **out, cs_reader *base, char *err)
{
	cs_branch *b = calloc(1, sizeof(*b));

	*out = NULL;
	if (!b) {
		cs_errf(err, "context %s: out of memory", base->label);
		return -ENOMEM;
	}
	b->base = base;
	b->label = base->label;
	b->pt = base->snap.page_tokens;
	b->row_bytes = base->row_bytes;
	b->base_tokens = b->n_tokens = base->snap.n_tokens;
	b->first_own = base->snap.n_tokens / b->pt;
	*out = b;
	return 0;
}

int cs_branch_init_empty(cs_branch **out, uint32_t page_tokens, uint32_t width, cs_dtype dtype,
			 char *err)
{
	cs_branch *b;

	*out = NULL;
	if (!page_tokens || !width) {
		cs_errf(err, "branch over no context: %u tokens a page, %u wide", page_tokens, width);
		return -EINVAL;
	}
	b = calloc(1, sizeof(*b));
	if (!b) {
		cs_errf(err, "branch over no context: out of memory");
		return -ENOMEM;
	}
	b->label = "(none)";
	b->pt = page_tokens;
	b->row_bytes = (size_t)width * cs_dtype_size(dtype);
	*out = b;
	return 0;
}

/* Pages of the base, 0 for a branch over no context. */
static uint64_t base_pages(const cs_branch *b)
{
	return b->base ? b->base->snap.n_pages : 0;
}

uint64_t cs_branch_tokens(const cs_branch *b)
{
	return b->n_tokens;
}

/* A new own page; the base's partial last page is copied into it. */
static int branch_new_page(cs_branch *b, char *err)
{
	uint64_t index = b->first_own + b->n_own;
	struct cs_cpage *e;
	int rc;

	if (b->n_own == b->cap_own) {
		size_t cap = b->cap_own ? 2 * b->cap_own : 8;
		struct cs_cpage **t = realloc(b->own, cap * sizeof(*t));

		if (!t)
			goto oom;
		b->own = t;
		b->cap_own = cap;
	}
	e = entry_alloc(b->pt, b->row_bytes);
	if (!e)
		goto oom;
	e->pub.index = index;
	e->pub.first_token = index * b->pt;
	if (index < base_pages(b)) {
		const cs_page *p;

		rc = cs_reader_page(b->base, index, &p, err);
		if (rc) {
			entry_free(e);
			return rc;
		}
		memcpy(e->mem, p->rows, (size_t)p->n_tokens * b->row_bytes);
		memcpy((uint32_t *)e->pub.tokens, p->tokens, (size_t)p->n_tokens * 4);
		e->pub.n_tokens = p->n_tokens;
		cs_page_release(p);
	}
	b->own[b->n_own++] = e;
	return 0;
oom:
	cs_errf(err, "context %s: branch: out of memory", b->label);
	return -ENOMEM;
}

int cs_branch_append(cs_branch *b, const void *rows, const uint32_t *tok, size_t n, char *err)
{
	const uint8_t *src = rows;

	while (n) {
		uint64_t page = b->n_tokens / b->pt;
		struct cs_cpage *e;
		uint32_t fill;
		size_t take;
		int rc;

		if (page - b->first_own == b->n_own) {
			rc = branch_new_page(b, err);
			if (rc)
				return rc;
		}
		e = b->own[page - b->first_own];
		fill = (uint32_t)(b->n_tokens - page * b->pt);
		take = b->pt - fill < n ? b->pt - fill : n;
		memcpy(e->mem + (size_t)fill * b->row_bytes, src, take * b->row_bytes);
		memcpy((uint32_t *)e->pub.tokens + fill, tok, take * 4);
		e->pub.n_tokens = fill + (uint32_t)take;
		src += take * b->row_bytes;
		tok += take;
		n -= take;
		b->n_tokens += take;
	}
	return 0;
}

int cs_branch_page(cs_branch *b, uint64_t index, const cs_page **out, char *err)
{
	*out = NULL;
	if (index < b->first_own || (index - b->first_own >= b->n_own &&
				     index < base_pages(b)))
		return cs_reader_page(b->base, index, out, err);
	if (index - b->first_own < b->n_own) {
		*out = &b->own[index - b->first_own]->pub;
		return 0;
	}
	cs_errf(err, "context %s: branch page %" PRIu64 " out of range (%" PRIu64 " tokens)",
		b->label, index, b->n_tokens);
	return -EINVAL;
}

static int branch_page_fn(void *src, uint64_t index, const cs_page **out, char *err)
{
	return cs_branch_page(src, index, out, err);
}

int cs_branch_read(cs_branch *b, uint64_t first, uint64_t n, void *rows, uint32_t *tok, char *err)
{
	if (first > b->n_tokens || n > b->n_tokens - first) {
		cs_errf(err, "context %s: branch tokens [%" PRIu64 ", +%" PRIu64 ") out of range (%"
			PRIu64 " tokens)", b->label, first, n, b->n_tokens);
		return -EINVAL;
	}
	return copy_range(b, branch_page_fn, b->pt, b->row_bytes, first, n, rows, tok, err);
}

void cs_branch_free(cs_branch *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->n_own; i++)
		entry_free(b->own[i]);
	free(b->own);
	free(b);
}
