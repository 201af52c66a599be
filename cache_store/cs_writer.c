/*
 * cs_writer.c — appending to a context and committing it.
 *
 * Page records are appended to the context's page file and never rewritten: a partial last
 * page written by a checkpoint is written again, complete, once it fills, and the index
 * (append-only too) says which copy is current (the last one). A commit is
 *   1. drain the page writes in flight, fsync the page file;
 *   2. append the new index entries, fsync the index;
 *   3. write the blob to a new file c<serial>.blob.<gen+1>, fsync it;
 *   4. fsync the directory (new files' names must be durable before anything points at them);
 *   5. write MANIFEST.tmp, fsync, rename over MANIFEST, fsync the directory;
 *   6. delete the previous blob.
 * Until the rename in 5 nothing committed has changed on disk, only bytes after it were
 * added; after the rename everything the new manifest needs is durable. See README.md.
 */
#include "cs_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct wbuf {
	uint8_t *buf;
	size_t len;
	bool busy;
};

struct cs_writer {
	cs_store *s;
	struct cs_ctx *ctx;        /* table entry; its persistent fields are the last commit */
	char label[40];
	char pages_name[64], idx_name[64];
	int fd_data, fd_idx;
	int dead;                  /* sticky error after a failed I/O step */
	char dead_msg[CS_ERR_LEN];
	bool sealed;
	cs_hasher *h;              /* over every appended token */
	size_t esz, row_bytes, rec_cap;
	uint8_t *page_rows;        /* [page_tokens][width]: the open page */
	uint32_t *page_tok;        /* [page_tokens] */
	uint32_t in_page;          /* tokens in the open page */
	uint32_t on_disk;          /* of those, how many a record already holds (a checkpoint) */
	uint64_t page;             /* index of the open page */
	uint64_t n_tokens;
	uint64_t data_end;         /* page file bytes written or in flight */
	struct cs_idx *pend;       /* index entries since the last commit */
	size_t n_pend, cap_pend;
	struct cs_ioq q;
	struct wbuf *bufs;         /* [depth] */
	uint32_t depth;
	uint8_t *scratch;
};

static int die(cs_writer *w, int rc, char *err)
{
	if (!w->dead) {
		w->dead = rc;
		snprintf(w->dead_msg, sizeof(w->dead_msg), "%s", err ? err : "");
	}
	return rc;
}

static int check_alive(cs_writer *w, char *err)
{
	if (!w->dead)
		return 0;
	cs_errf(err, "context %s: writer failed earlier: %s", w->label, w->dead_msg);
	return w->dead;
}

static int writer_alloc(cs_writer *w, char *err)
{
	const struct cs_ctx *c = w->ctx;
	int rc;

	w->esz = cs_dtype_size(c->dtype);
	w->row_bytes = (size_t)c->width * w->esz;
	w->rec_cap = cs_page_record_bound(c->page_tokens, c->width, w->esz);
	w->depth = w->s->cfg.io_depth;
	w->page_rows = malloc((size_t)c->page_tokens * w->row_bytes);
	w->page_tok = malloc((size_t)c->page_tokens * 4);
	w->scratch = malloc((size_t)c->page_tokens * (w->row_bytes > 4 ? w->row_bytes : 4));
	w->bufs = calloc(w->depth, sizeof(*w->bufs));
	if (!w->page_rows || !w->page_tok || !w->scratch || !w->bufs)
		goto oom;
	for (uint32_t i = 0; i < w->depth; i++) {
		w->bufs[i].buf = cs_io_alloc(w->rec_cap);
		if (!w->bufs[i].buf)
			goto oom;
	}
	rc = cs_hash_init(&w->h, c->model_id);
	if (rc)
		goto oom;
	return cs_ioq_init(&w->q, &w->s->io, w->depth, err);
oom:
	cs_errf(err, "context %s: out of memory for the writer", w->label);
	return -ENOMEM;
}

static void writer_release(cs_writer *w)
{
	cs_ioq_exit(&w->q);
	if (w->bufs)
		for (uint32_t i = 0; i < w->depth; i++)
			free(w->bufs[i].buf);
	free(w->bufs);
	free(w->page_rows);
	free(w->page_tok);
	free(w->scratch);
	free(w->pend);
	cs_hash_free(w->h);
	if (w->fd_data >= 0)
		close(w->fd_data);
	if (w->fd_idx >= 0)
		close(w->fd_idx);
	free(w);
}

static int check_params(cs_store *s, const cs_ctx_params *p, char *err)
{
	size_t esz = p ? cs_dtype_size(p->dtype) : 0;

	if (!p || !esz) {
		cs_errf(err, "%s: new context: unknown element type %d", s->dir,
			p ? (int)p->dtype : -1);
		return -EINVAL;
	}
	if (!p->width || p->width > CS_MAX_WIDTH || !p->page_tokens ||
	    p->page_tokens > CS_MAX_PAGE_TOKENS ||
	    (uint64_t)p->page_tokens * p->width * esz > CS_MAX_RAW_PAGE) {
		cs_errf(err, "%s: new context: width %u, %u tokens per page out of range", s->dir,
			p->width, p->page_tokens);
		return -EINVAL;
	}
	if (p->name && (strlen(p->name) >= CS_NAME_MAX || strpbrk(p->name, "\n\r"))) {
		cs_errf(err, "%s: new context: name longer than %d bytes or with a line break",
			s->dir, CS_NAME_MAX - 1);
		return -EINVAL;
	}
	if (s->rdonly) {
		cs_errf(err, "%s: opened read-only", s->dir);
		return -EROFS;
	}
	return 0;
}

int cs_writer_begin(cs_store *s, const cs_ctx_params *p, cs_writer **out, char *err)
{
	cs_writer *w;
	struct cs_ctx *c;
	int rc = check_params(s, p, err);

	*out = NULL;
	if (rc)
		return rc;
	w = calloc(1, sizeof(*w));
	c = calloc(1, sizeof(*c));
	if (!w || !c) {
		free(w);
		free(c);
		cs_errf(err, "%s: out of memory", s->dir);
		return -ENOMEM;
	}
	w->s = s;
	w->fd_data = w->fd_idx = -1;
	c->model_id = p->model_id;
	c->dtype = p->dtype;
	c->width = p->width;
	c->page_tokens = p->page_tokens;
	c->flags = p->no_shuffle ? 0 : CS_CTX_SHUFFLE;
	if (p->name)
		snprintf(c->name, sizeof(c->name), "%s", p->name);
	c->created_ns = c->last_use_ns = cs_now_ns();
	c->writer = true;

	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; *c->name && i < s->n_ctx; i++) {
		if (!strcmp(s->ctx[i]->name, c->name)) {
			pthread_mutex_unlock(&s->mu);
			cs_errf(err, "%s: a context named \"%s\" exists (#%" PRIu64 ")", s->dir,
				c->name, s->ctx[i]->serial);
			free(w);
			free(c);
			return -EEXIST;
		}
	}
	c->serial = s->next_serial++;
	if (s->n_ctx == s->cap_ctx) {
		size_t cap = s->cap_ctx ? 2 * s->cap_ctx : 16;
		struct cs_ctx **t = realloc(s->ctx, cap * sizeof(*t));

		if (!t) {
			pthread_mutex_unlock(&s->mu);
			free(w);
			free(c);
			cs_errf(err, "%s: out of memory", s->dir);
			return -ENOMEM;
		}
		s->ctx = t;
		s->cap_ctx = cap;
	}
	s->ctx[s->n_ctx++] = c;
	pthread_mutex_unlock(&s->mu);

	w->ctx = c;
	rc = cs_hash_tokens(c->model_id, NULL, 0, &c->key);
	/* no key worth showing before the first commit */
	snprintf(w->label, sizeof(w->label), "#%" PRIu64 " (new)", c->serial);
	cs_name_pages(w->pages_name, c->serial);
	cs_name_idx(w->idx_name, c->serial);
	if (rc)
		cs_errf(err, "context %s: out of memory for its key", w->label);
	else
		rc = writer_alloc(w, err);
	if (rc)
		goto fail;
	w->fd_data = cs_io_open_pages(&s->io, s->dirfd, w->pages_name, O_RDWR | O_CREAT | O_TRUNC);
	if (w->fd_data < 0) {
		rc = w->fd_data;
		cs_errf(err, "%s/%s: %s", s->dir, w->pages_name, strerror(-rc));
		goto fail;
	}
	w->fd_idx = openat(s->dirfd, w->idx_name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (w->fd_idx < 0) {
		rc = -errno;
		cs_errf(err, "%s/%s: %s", s->dir, w->idx_name, strerror(-rc));
		goto fail;
	}
	*out = w;
	return 0;
fail:
	cs_writer_free(w);
	return rc;
}

/* Cuts a file back to its committed length. A file shorter than that is damaged (or the
 * manifest is): -EBADMSG, and the file is not extended to what a manifest claims. */
static int cut_to(int fd, uint64_t len)
{
	struct stat st;

	if (fstat(fd, &st))
		return -errno;
	if ((uint64_t)st.st_size < len || len > (uint64_t)INT64_MAX)
		return -EBADMSG;
	if ((uint64_t)st.st_size > len && ftruncate(fd, (off_t)len))
		return -errno;
	return 0;
}

int cs_writer_resume(cs_store *s, uint64_t serial, cs_writer **out, char *err)
{
	cs_writer *w;
	struct cs_ctx *c;
	cs_reader *r = NULL;
	const char *cut;
	uint32_t pt;
	cs_key key;
	int rc;

	*out = NULL;
	if (s->rdonly) {
		cs_errf(err, "%s: opened read-only", s->dir);
		return -EROFS;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		cs_errf(err, "%s: out of memory", s->dir);
		return -ENOMEM;
	}
	w->s = s;
	w->fd_data = w->fd_idx = -1;
	pthread_mutex_lock(&s->mu);
	c = cs_store_find_locked(s, serial);
	rc = !c || !c->committed ? -ENOENT
	     : c->writer ? -EBUSY : (c->flags & CS_CTX_SEALED) ? -EINVAL : 0;
	if (rc) {
		pthread_mutex_unlock(&s->mu);
		if (c)
			cs_ctx_label(w->label, c->key, c->serial);
		cs_errf(err, rc == -ENOENT ? "%s: no context #%" PRIu64 "%.0s"
			: rc == -EBUSY ? "%s: context #%" PRIu64 " (%s) has a writer"
			: "%s: context #%" PRIu64 " (%s) is sealed", s->dir, serial, w->label);
		free(w);
		return rc;
	}
	c->writer = true;
	w->ctx = c;
	pthread_mutex_unlock(&s->mu);

	cs_ctx_label(w->label, c->key, c->serial);
	cs_name_pages(w->pages_name, c->serial);
	cs_name_idx(w->idx_name, c->serial);
	rc = writer_alloc(w, err);
	if (rc)
		goto fail;
	w->fd_data = cs_io_open_pages(&s->io, s->dirfd, w->pages_name, O_RDWR);
	w->fd_idx = openat(s->dirfd, w->idx_name, O_RDWR | O_CLOEXEC);
	if (w->fd_data < 0 || w->fd_idx < 0) {
		rc = w->fd_data < 0 ? w->fd_data : -errno;
		cs_errf(err, "context %s: %s: %s", w->label,
			w->fd_data < 0 ? w->pages_name : w->idx_name, strerror(-rc));
		goto fail;
	}
	/* bytes after the commit are garbage from the writer that died */
	cut = w->pages_name;
	rc = cut_to(w->fd_data, c->data_len);
	if (!rc) {
		cut = w->idx_name;
		rc = cut_to(w->fd_idx, c->idx_entries > INT64_MAX / CS_IDX_ENTRY
					       ? UINT64_MAX : c->idx_entries * CS_IDX_ENTRY);
	}
	if (rc) {
		cs_errf(err, "context %s: %s: %s", w->label, cut,
			rc == -EBADMSG ? "shorter than committed" : strerror(-rc));
		goto fail;
	}

	/* rebuild the hash from the committed token ids; keep a partial last page */
	pt = c->page_tokens;
	rc = cs_reader_open(s, serial, &r, err);
	for (uint64_t i = 0; !rc && i < c->n_pages; i++) {
		const cs_page *p;

		rc = cs_reader_page(r, i, &p, err);
		if (rc)
			break;
		cs_hash_update(w->h, p->tokens, p->n_tokens);
		if (p->n_tokens < pt) {
			memcpy(w->page_rows, p->rows, (size_t)p->n_tokens * w->row_bytes);
			memcpy(w->page_tok, p->tokens, (size_t)p->n_tokens * 4);
			w->in_page = w->on_disk = p->n_tokens;
		}
		cs_page_release(p);
	}
	cs_reader_close(r);
	if (rc)
		goto fail;
	key = cs_hash_final(w->h);
	if (!cs_key_equal(key, c->key)) {
		cs_errf(err, "context %s: committed tokens do not hash to the stored key",
			w->label);
		rc = -EBADMSG;
		goto fail;
	}
	w->n_tokens = c->n_tokens;
	w->page = c->n_tokens / pt;
	w->data_end = c->data_len;
	*out = w;
	return 0;
fail:
	cs_writer_free(w);
	return rc;
}

/* Waits for one page write and checks it. */
static int reap_write(cs_writer *w, char *err)
{
	uint64_t tag;
	int res, rc = cs_ioq_submit(&w->q);

	if (!rc)
		rc = cs_ioq_wait(&w->q, &tag, &res);
	if (rc) {
		cs_errf(err, "%s/%s: %s", w->s->dir, w->pages_name, strerror(-rc));
		return die(w, rc, err);
	}
	w->bufs[tag].busy = false;
	if (res < 0 || (size_t)res != w->bufs[tag].len) {
		rc = res < 0 ? res : -EIO;
		cs_errf(err, "%s/%s: write: %s", w->s->dir, w->pages_name,
			res < 0 ? strerror(-res) : "short write");
		return die(w, rc, err);
	}
	return 0;
}

static int drain(cs_writer *w, char *err)
{
	while (cs_ioq_busy(&w->q)) {
		int rc = reap_write(w, err);

		if (rc)
			return rc;
	}
	return 0;
}

/* Writes the open page (in_page tokens) as a new record at the end of the page file. */
static int write_page(cs_writer *w, char *err)
{
	const struct cs_ctx *c = w->ctx;
	struct cs_page_meta m = { .serial = c->serial, .index = w->page, .n_tokens = w->in_page,
				  .page_tokens = c->page_tokens, .width = c->width,
				  .dtype = c->dtype, .shuffle = c->flags & CS_CTX_SHUFFLE };
	struct wbuf *b = NULL;
	size_t len;
	int rc;

	while (cs_ioq_full(&w->q)) {
		rc = reap_write(w, err);
		if (rc)
			return rc;
	}
	for (uint32_t i = 0; i < w->depth && !b; i++)
		if (!w->bufs[i].busy)
			b = &w->bufs[i];
	if (w->n_pend == w->cap_pend) {
		size_t cap = w->cap_pend ? 2 * w->cap_pend : 64;
		struct cs_idx *t = realloc(w->pend, cap * sizeof(*t));

		if (!t) {
			cs_errf(err, "context %s: out of memory", w->label);
			return die(w, -ENOMEM, err);
		}
		w->pend = t;
		w->cap_pend = cap;
	}
	rc = cs_page_encode(&m, w->page_rows, w->page_tok, w->scratch, b->buf, w->rec_cap, &len);
	if (rc) {
		cs_errf(err, "context %s page %" PRIu64 ": encode failed", w->label, w->page);
		return die(w, rc, err);
	}
	rc = cs_store_reserve(w->s, w->ctx, len, err);
	if (rc)
		return die(w, rc, err);
	b->len = len;
	b->busy = true;
	rc = cs_ioq_write(&w->q, w->fd_data, b->buf, len, w->data_end, (uint64_t)(b - w->bufs),
			  w->pages_name);
	if (!rc)
		rc = cs_ioq_submit(&w->q);
	if (rc) {
		cs_errf(err, "%s/%s: write: %s", w->s->dir, w->pages_name, strerror(-rc));
		return die(w, rc, err);
	}
	w->pend[w->n_pend++] = (struct cs_idx){ .page = w->page, .offset = w->data_end,
						.disk_len = (uint32_t)len, .n_tokens = w->in_page };
	w->data_end += len;
	return 0;
}

int cs_writer_append(cs_writer *w, const void *rows, const uint32_t *tok, size_t n, char *err)
{
	const uint8_t *src = rows;
	uint32_t pt = w->ctx->page_tokens;
	int rc = check_alive(w, err);

	if (rc)
		return rc;
	if (w->sealed) {
		cs_errf(err, "context %s: sealed, no more appends", w->label);
		return -EINVAL;
	}
	if (n && (!rows || !tok)) {
		cs_errf(err, "context %s: append of %zu rows without data", w->label, n);
		return -EINVAL;
	}
	while (n) {
		size_t take = pt - w->in_page < n ? pt - w->in_page : n;

		memcpy(w->page_rows + (size_t)w->in_page * w->row_bytes, src, take * w->row_bytes);
		memcpy(w->page_tok + w->in_page, tok, take * 4);
		cs_hash_update(w->h, tok, take);
		w->in_page += (uint32_t)take;
		w->n_tokens += take;
		src += take * w->row_bytes;
		tok += take;
		n -= take;
		if (w->in_page == pt) {
			rc = write_page(w, err);
			if (rc)
				return rc;
			w->page++;
			w->in_page = w->on_disk = 0;
		}
	}
	return 0;
}

/* Step 3: the blob, in a file of its own generation. */
static int write_blob(cs_writer *w, uint64_t gen, const void *blob, size_t len, char *err)
{
	cs_store *s = w->s;
	char name[64];
	uint8_t *buf;
	int fd, rc;

	cs_name_blob(name, w->ctx->serial, gen);
	rc = cs_store_reserve(s, w->ctx, CS_BLOB_HDR + len, err);
	if (rc)
		return rc;
	buf = malloc(CS_BLOB_HDR + len);
	if (!buf) {
		cs_errf(err, "context %s: out of memory for a blob of %zu bytes", w->label, len);
		return -ENOMEM;
	}
	cs_blob_header(buf, w->ctx->serial, gen, blob, len);
	if (len)
		memcpy(buf + CS_BLOB_HDR, blob, len);
	fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		cs_errf(err, "%s/%s: %s", s->dir, name, strerror(-rc));
		goto out_buf;
	}
	rc = cs_io_pwrite(&s->io, fd, buf, CS_BLOB_HDR + len, 0, name);
	if (!rc)
		rc = cs_io_fsync(&s->io, fd, name);
	if (rc)
		cs_errf(err, "%s/%s: %s", s->dir, name, strerror(-rc));
	close(fd);
out_buf:
	free(buf);
	return rc;
}

/* -EEXIST if another sealed context holds key. With s->mu held. */
static int dup_sealed_locked(cs_writer *w, cs_key key, char *err)
{
	cs_store *s = w->s;

	for (size_t i = 0; i < s->n_ctx; i++) {
		struct cs_ctx *c = s->ctx[i];
		char label[40];

		if (c != w->ctx && c->committed && (c->flags & CS_CTX_SEALED) &&
		    cs_key_equal(c->key, key)) {
			cs_ctx_label(label, c->key, c->serial);
			cs_errf(err, "context %s: the same tokens are already stored as %s",
				w->label, label);
			return -EEXIST;
		}
	}
	return 0;
}

static int dup_sealed(cs_writer *w, cs_key key, char *err)
{
	int rc;

	pthread_mutex_lock(&w->s->mu);
	rc = dup_sealed_locked(w, key, err);
	pthread_mutex_unlock(&w->s->mu);
	return rc;
}

int cs_writer_commit(cs_writer *w, const void *blob, size_t blob_len, uint32_t flags, char *err)
{
	cs_store *s = w->s;
	struct cs_ctx next, *c = w->ctx;
	bool seal = flags & CS_COMMIT_SEAL, renamed = false, new_files;
	uint64_t old_gen = c->blob_gen;
	uint8_t *ibuf;
	cs_key key;
	int rc = check_alive(w, err);

	if (rc)
		return rc;
	if (w->sealed) {
		cs_errf(err, "context %s: already sealed", w->label);
		return -EINVAL;
	}
	if (flags & ~CS_COMMIT_SEAL) {
		cs_errf(err, "context %s: unknown commit flags %#x", w->label, flags);
		return -EINVAL;
	}
	key = cs_hash_final(w->h);
	if (seal) {
		rc = dup_sealed(w, key, err);
		if (rc)
			return rc;
	}

	/* 1. pages */
	if (w->in_page > w->on_disk) {
		rc = write_page(w, err);
		if (rc)
			return rc;
		w->on_disk = w->in_page;
	}
	rc = drain(w, err);
	if (rc)
		return rc;
	rc = cs_io_fsync(&s->io, w->fd_data, w->pages_name);
	if (rc) {
		cs_errf(err, "%s/%s: fsync: %s", s->dir, w->pages_name, strerror(-rc));
		return die(w, rc, err);
	}

	/* 2. index */
	if (w->n_pend) {
		rc = cs_store_reserve(s, c, w->n_pend * CS_IDX_ENTRY, err);
		if (rc)
			return die(w, rc, err);
		ibuf = malloc(w->n_pend * CS_IDX_ENTRY);
		if (!ibuf) {
			cs_errf(err, "context %s: out of memory", w->label);
			return die(w, -ENOMEM, err);
		}
		for (size_t i = 0; i < w->n_pend; i++)
			cs_idx_encode(ibuf + i * CS_IDX_ENTRY, &w->pend[i], c->serial);
		rc = cs_io_pwrite(&s->io, w->fd_idx, ibuf, w->n_pend * CS_IDX_ENTRY,
				  c->idx_entries * CS_IDX_ENTRY, w->idx_name);
		free(ibuf);
		if (!rc)
			rc = cs_io_fsync(&s->io, w->fd_idx, w->idx_name);
		if (rc) {
			cs_errf(err, "%s/%s: %s", s->dir, w->idx_name, strerror(-rc));
			return die(w, rc, err);
		}
	}

	/* 3. blob */
	pthread_mutex_lock(&s->mu);   /* readers update last-use and counts */
	next = *c;
	pthread_mutex_unlock(&s->mu);
	if (blob) {
		next.blob_gen = c->blob_gen + 1;
		next.blob_len = blob_len;
		next.blob_check = cs_blob_checksum(blob, blob_len);
		rc = write_blob(w, next.blob_gen, blob, blob_len, err);
		if (rc)
			goto fail_blob;
	}

	/* 4. names of new files */
	new_files = !c->committed || blob;
	if (new_files) {
		rc = cs_io_fsync(&s->io, s->dirfd, s->dir);
		if (rc) {
			cs_errf(err, "%s: fsync of the directory: %s", s->dir, strerror(-rc));
			goto fail_blob;
		}
	}

	/* 5. manifest */
	next.key = key;
	next.n_tokens = w->n_tokens;
	next.n_pages = (w->n_tokens + c->page_tokens - 1) / c->page_tokens;
	next.data_len = w->data_end;
	next.idx_entries = c->idx_entries + w->n_pend;
	next.raw_bytes = w->n_tokens * (w->row_bytes + 4);
	next.last_use_ns = cs_now_ns();
	if (seal)
		next.flags |= CS_CTX_SEALED;
	next.committed = true;
	pthread_mutex_lock(&s->mu);
	/* checked again here: another writer may have sealed the same tokens meanwhile */
	rc = seal ? dup_sealed_locked(w, key, err) : 0;
	if (!rc)
		rc = cs_manifest_commit_locked(s, &next, NULL, 0, &renamed, err);
	if (renamed) {
		/* the new state is what the directory shows: memory follows, whatever the fsync */
		uint32_t readers = c->readers;

		*c = next;
		c->readers = readers;
		c->writer = true;
		c->reserved = 0;
	}
	pthread_mutex_unlock(&s->mu);
	if (!renamed)
		goto fail_blob;
	cs_ctx_label(w->label, key, c->serial);
	w->n_pend = 0;
	if (rc)
		return die(w, rc, err);   /* keep the old blob: an older manifest may be durable */

	/* 6. */
	if (blob && old_gen) {
		char name[64];

		cs_name_blob(name, c->serial, old_gen);
		unlinkat(s->dirfd, name, 0);
	}
	w->sealed = seal;
	return 0;

fail_blob:
	if (blob) {
		char name[64];

		/* the visible manifest never named this generation */
		cs_name_blob(name, c->serial, c->blob_gen + 1);
		unlinkat(s->dirfd, name, 0);
	}
	return die(w, rc, err);
}

uint64_t cs_writer_serial(const cs_writer *w)
{
	return w->ctx->serial;
}

uint64_t cs_writer_tokens(const cs_writer *w)
{
	return w->n_tokens;
}

uint64_t cs_writer_committed(const cs_writer *w)
{
	return w->ctx->n_tokens;
}

cs_key cs_writer_key(const cs_writer *w)
{
	return cs_hash_final(w->h);
}

void cs_writer_free(cs_writer *w)
{
	cs_store *s;
	struct cs_ctx *c;

	if (!w)
		return;
	s = w->s;
	c = w->ctx;
	cs_ioq_exit(&w->q);   /* no write may land after the truncation below */
	if (!c) {
		writer_release(w);
		return;
	}
	pthread_mutex_lock(&s->mu);
	if (!c->committed) {
		cs_store_drop_locked(s, c);
		unlinkat(s->dirfd, w->pages_name, 0);
		unlinkat(s->dirfd, w->idx_name, 0);
	} else {
		/* the in-memory commit is the visible one (see cs_writer_commit), so this cuts
		 * only bytes no manifest refers to */
		if (w->fd_data >= 0 && ftruncate(w->fd_data, (off_t)c->data_len)) {
			/* left for the next open's recovery */
		}
		if (w->fd_idx >= 0 &&
		    ftruncate(w->fd_idx, (off_t)(c->idx_entries * CS_IDX_ENTRY))) {
			/* likewise */
		}
		c->writer = false;
		c->reserved = 0;
	}
	pthread_mutex_unlock(&s->mu);
	writer_release(w);
}
