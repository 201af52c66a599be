/*
 * cs_store.c — the store directory: lock, manifest, recovery after a crash, the context
 * table, lookups, removal, the disk budget and verification.
 *
 * The manifest is the only truth about what is committed: a context's files may hold more
 * (bytes appended after its last commit, blobs of older or newer generations, files of
 * contexts never committed) and a writable open cuts all of that away before anything else
 * happens. Files are only ever deleted once a manifest that no longer needs them is durable.
 */
#include "cs_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

void cs_config_defaults(cs_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->ram_cache_bytes = 256ull << 20;
	cfg->io_depth = 8;
	cfg->readahead_pages = 6;
	cfg->backend = CS_IO_AUTO;
	cfg->direct = CS_DIRECT_AUTO;
}

uint64_t cs_ctx_disk_bytes(const struct cs_ctx *c)
{
	return c->data_len + c->idx_entries * CS_IDX_ENTRY +
	       (c->blob_gen ? CS_BLOB_HDR + c->blob_len : 0);
}

void cs_info_from_ctx(cs_ctx_info *o, const struct cs_ctx *c)
{
	memset(o, 0, sizeof(*o));
	o->serial = c->serial;
	o->key = c->key;
	memcpy(o->name, c->name, CS_NAME_MAX);
	o->model_id = c->model_id;
	o->dtype = c->dtype;
	o->width = c->width;
	o->page_tokens = c->page_tokens;
	o->shuffle = c->flags & CS_CTX_SHUFFLE;
	o->sealed = c->flags & CS_CTX_SEALED;
	o->n_tokens = c->n_tokens;
	o->n_pages = c->n_pages;
	o->raw_bytes = c->raw_bytes;
	o->disk_bytes = cs_ctx_disk_bytes(c);
	o->blob_len = c->blob_len;
	o->created_ns = c->created_ns;
	o->last_use_ns = c->last_use_ns;
	o->holders = c->readers + (c->writer ? 1 : 0);
}

struct cs_ctx *cs_store_find_locked(cs_store *s, uint64_t serial)
{
	for (size_t i = 0; i < s->n_ctx; i++)
		if (s->ctx[i]->serial == serial)
			return s->ctx[i];
	return NULL;
}

static int table_add(cs_store *s, struct cs_ctx *c)
{
	if (s->n_ctx == s->cap_ctx) {
		size_t cap = s->cap_ctx ? 2 * s->cap_ctx : 16;
		struct cs_ctx **t = realloc(s->ctx, cap * sizeof(*t));

		if (!t)
			return -ENOMEM;
		s->ctx = t;
		s->cap_ctx = cap;
	}
	s->ctx[s->n_ctx++] = c;
	return 0;
}

void cs_store_drop_locked(cs_store *s, struct cs_ctx *c)
{
	for (size_t i = 0; i < s->n_ctx; i++) {
		if (s->ctx[i] == c) {
			s->ctx[i] = s->ctx[--s->n_ctx];
			break;
		}
	}
	free(c);
}

static void unlink_ctx_files(cs_store *s, uint64_t serial, uint64_t blob_gen)
{
	char name[64];

	cs_name_pages(name, serial);
	unlinkat(s->dirfd, name, 0);
	cs_name_idx(name, serial);
	unlinkat(s->dirfd, name, 0);
	if (blob_gen) {
		cs_name_blob(name, serial, blob_gen);
		unlinkat(s->dirfd, name, 0);
	}
}

/* ---- manifest ---- */

static int write_manifest(cs_store *s, struct cs_ctx *const *list, size_t n, bool *renamed,
			  char *err)
{
	uint8_t *img = NULL;
	size_t len;
	uint64_t gen = s->man_gen + 1;
	int fd, rc;

	rc = cs_manifest_encode(gen, s->next_serial, list, n, &img, &len);
	if (rc) {
		cs_errf(err, "%s/%s: out of memory", s->dir, CS_MANIFEST);
		return rc;
	}
	fd = openat(s->dirfd, CS_MANIFEST_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		cs_errf(err, "%s/%s: %s", s->dir, CS_MANIFEST_TMP, strerror(-rc));
		goto out_img;
	}
	rc = cs_io_pwrite(&s->io, fd, img, len, 0, CS_MANIFEST_TMP);
	if (!rc)
		rc = cs_io_fsync(&s->io, fd, CS_MANIFEST_TMP);
	close(fd);
	if (rc) {
		cs_errf(err, "%s/%s: write: %s", s->dir, CS_MANIFEST_TMP, strerror(-rc));
		goto out_tmp;
	}
	rc = cs_io_rename(&s->io, s->dirfd, CS_MANIFEST_TMP, CS_MANIFEST);
	if (rc) {
		cs_errf(err, "%s/%s: rename: %s", s->dir, CS_MANIFEST, strerror(-rc));
		goto out_tmp;
	}
	/* visible from here on: the in-memory state must follow whatever happens next */
	*renamed = true;
	s->man_gen = gen;
	s->dirty = false;
	rc = cs_io_fsync(&s->io, s->dirfd, s->dir);
	if (rc)
		cs_errf(err, "%s: fsync of the directory: %s", s->dir, strerror(-rc));
	goto out_img;
out_tmp:
	/* nothing names it; on a full disk its blocks are what the next attempt needs */
	unlinkat(s->dirfd, CS_MANIFEST_TMP, 0);
out_img:
	free(img);
	return rc;
}

int cs_manifest_commit_locked(cs_store *s, const struct cs_ctx *repl, const uint64_t *skip,
			      size_t n_skip, bool *renamed, char *err)
{
	struct cs_ctx **list = malloc((s->n_ctx + 1) * sizeof(*list));
	bool dummy = false, placed = false;
	size_t n = 0;
	int rc;

	if (!renamed)
		renamed = &dummy;
	*renamed = false;
	if (!list) {
		cs_errf(err, "%s: out of memory", s->dir);
		return -ENOMEM;
	}
	for (size_t i = 0; i < s->n_ctx; i++) {
		struct cs_ctx *c = s->ctx[i];
		bool skipped = false;

		if (repl && c->serial == repl->serial) {
			list[n++] = (struct cs_ctx *)repl;
			placed = true;
			continue;
		}
		for (size_t k = 0; k < n_skip; k++)
			skipped |= skip[k] == c->serial;
		if (c->committed && !skipped)
			list[n++] = c;
	}
	if (repl && !placed)
		list[n++] = (struct cs_ctx *)repl;
	rc = write_manifest(s, list, n, renamed, err);
	free(list);
	return rc;
}

int cs_store_flush(cs_store *s, char *err)
{
	int rc = 0;

	if (s->rdonly)
		return 0;
	pthread_mutex_lock(&s->mu);
	if (s->dirty)
		rc = cs_manifest_commit_locked(s, NULL, NULL, 0, NULL, err);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* ---- open, recovery, close ---- */

static int read_file(struct cs_io *io, int dirfd, const char *name, uint8_t **out, size_t *len)
{
	struct stat st;
	uint8_t *buf;
	ssize_t n;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		rc = -errno;
		goto out_fd;
	}
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf) {
		rc = -ENOMEM;
		goto out_fd;
	}
	n = cs_io_read(io, fd, buf, (size_t)st.st_size, 0, name);
	if (n != st.st_size) {
		rc = n < 0 ? (int)n : -EIO;
		free(buf);
		goto out_fd;
	}
	*out = buf;
	*len = (size_t)st.st_size;
out_fd:
	close(fd);
	return rc;
}

/* Parses "c<16 hex>.pages|.idx|.blob.<gen>"; returns 1 pages, 2 idx, 3 blob, 0 other. */
static int parse_ctx_name(const char *name, uint64_t *serial, uint64_t *gen)
{
	char *end;

	if (name[0] != 'c')
		return 0;
	for (int i = 1; i <= 16; i++)
		if (!isxdigit((unsigned char)name[i]))
			return 0;
	*serial = strtoull(name + 1, &end, 16);
	if (end != name + 17)
		return 0;
	if (!strcmp(end, ".pages"))
		return 1;
	if (!strcmp(end, ".idx"))
		return 2;
	if (!strncmp(end, ".blob.", 6) && isdigit((unsigned char)end[6])) {
		*gen = strtoull(end + 6, &end, 10);
		return *end ? 0 : 3;
	}
	return 0;
}

static int has_ctx_files(int dirfd)
{
	int fd = dup(dirfd), found = 0;
	DIR *d;
	struct dirent *de;
	uint64_t serial, gen;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d)))
		found |= parse_ctx_name(de->d_name, &serial, &gen) != 0;
	closedir(d);
	return found;
}

static int truncate_to(cs_store *s, const char *name, uint64_t len, char *err)
{
	struct stat st;
	int fd = openat(s->dirfd, name, O_WRONLY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return 0; /* a missing file shows as corrupt when read */
	if (!fstat(fd, &st) && (uint64_t)st.st_size > len && ftruncate(fd, (off_t)len)) {
		rc = -errno;
		cs_errf(err, "%s/%s: truncate to %" PRIu64 ": %s", s->dir, name, len,
			strerror(-rc));
	}
	close(fd);
	return rc;
}

/* Cuts what no committed state refers to. Safe to re-run at any point. */
static int recover(cs_store *s, char *err)
{
	int fd = dup(s->dirfd), rc = 0;
	DIR *d;
	struct dirent *de;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		uint64_t serial = 0, gen = 0;
		int kind = parse_ctx_name(de->d_name, &serial, &gen);
		struct cs_ctx *c;

		if (!strcmp(de->d_name, CS_MANIFEST_TMP) || !strcmp(de->d_name, ".direct-probe")) {
			unlinkat(s->dirfd, de->d_name, 0);
			continue;
		}
		if (!kind)
			continue;   /* not ours: leave it */
		c = cs_store_find_locked(s, serial);
		if (!c || (kind == 3 && gen != c->blob_gen)) {
			unlinkat(s->dirfd, de->d_name, 0);
			continue;
		}
		if (kind == 1)
			rc = truncate_to(s, de->d_name, c->data_len, err);
		else if (kind == 2)
			rc = truncate_to(s, de->d_name, c->idx_entries * CS_IDX_ENTRY, err);
		if (rc)
			break;
	}
	closedir(d);
	return rc;
}

static int take_lock(cs_store *s, char *err)
{
	char pid[32] = "";
	int n;

	s->lockfd = openat(s->dirfd, CS_LOCKFILE, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (s->lockfd < 0) {
		n = -errno;
		cs_errf(err, "%s/%s: %s", s->dir, CS_LOCKFILE, strerror(-n));
		return n;
	}
	if (flock(s->lockfd, LOCK_EX | LOCK_NB)) {
		n = -errno;
		if (n == -EWOULDBLOCK) {
			ssize_t k = pread(s->lockfd, pid, sizeof(pid) - 1, 0);

			pid[k > 0 ? k : 0] = 0;
			pid[strcspn(pid, "\n")] = 0;
			cs_errf(err, "%s: in use by process %s", s->dir, *pid ? pid : "?");
			return -EBUSY;
		}
		cs_errf(err, "%s/%s: flock: %s", s->dir, CS_LOCKFILE, strerror(-n));
		return n;
	}
	n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(s->lockfd, 0) || pwrite(s->lockfd, pid, (size_t)n, 0) != n) {
		/* informational only: the flock is what excludes */
	}
	return 0;
}

static int load_manifest(cs_store *s, char *err)
{
	uint8_t *img = NULL;
	size_t len = 0, n = 0;
	struct cs_ctx *arr = NULL;
	char why[CS_ERR_LEN];
	int rc = read_file(&s->io, s->dirfd, CS_MANIFEST, &img, &len);

	if (rc == -ENOENT) {
		if (s->rdonly) {
			cs_errf(err, "%s: no cache store here (no %s)", s->dir, CS_MANIFEST);
			return -ENOENT;
		}
		rc = has_ctx_files(s->dirfd);
		if (rc < 0) {
			cs_errf(err, "%s: %s", s->dir, strerror(-rc));
			return rc;
		}
		if (rc) {
			/* a store writes its manifest before any context: refuse to guess */
			cs_errf(err, "%s: context files present but %s is missing", s->dir,
				CS_MANIFEST);
			return -EBADMSG;
		}
		s->next_serial = 1;
		s->man_gen = 0;
		return cs_manifest_commit_locked(s, NULL, NULL, 0, NULL, err);
	}
	if (rc) {
		cs_errf(err, "%s/%s: %s", s->dir, CS_MANIFEST, strerror(-rc));
		return rc;
	}
	rc = cs_manifest_decode(img, len, &s->man_gen, &s->next_serial, &arr, &n, why, sizeof(why));
	free(img);
	if (rc) {
		cs_errf(err, "%s/%s: %s", s->dir, CS_MANIFEST,
			rc == -EBADMSG ? why : strerror(-rc));
		return rc;
	}
	for (size_t i = 0; i < n; i++) {
		struct cs_ctx *c = malloc(sizeof(*c));

		if (!c || table_add(s, c)) {
			free(c);
			free(arr);
			cs_errf(err, "%s: out of memory", s->dir);
			return -ENOMEM;
		}
		*c = arr[i];
	}
	free(arr);
	return 0;
}

int cs_store_open(cs_store **out, const char *dir, const cs_config *cfg, char *err)
{
	cs_store *s;
	int rc;

	*out = NULL;
	if (!dir || !*dir) {
		cs_errf(err, "cache store: no directory given");
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		cs_errf(err, "%s: out of memory", dir);
		return -ENOMEM;
	}
	s->dirfd = -1;
	s->lockfd = -1;
	if (cfg)
		s->cfg = *cfg;
	else
		cs_config_defaults(&s->cfg);
	if (!s->cfg.io_depth)
		s->cfg.io_depth = 8;
	if (s->cfg.io_depth > 256)
		s->cfg.io_depth = 256;
	if (s->cfg.readahead_pages >= s->cfg.io_depth)
		s->cfg.readahead_pages = s->cfg.io_depth - 1;
	s->rdonly = s->cfg.flags & CS_OPEN_RDONLY;
	pthread_mutex_init(&s->mu, NULL);
	s->dir = strdup(dir);
	if (!s->dir) {
		rc = -ENOMEM;
		cs_errf(err, "%s: out of memory", dir);
		goto fail;
	}
	if (!s->rdonly && mkdir(dir, 0755) && errno != EEXIST) {
		rc = -errno;
		cs_errf(err, "%s: mkdir: %s", dir, strerror(-rc));
		goto fail;
	}
	s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0) {
		rc = -errno;
		cs_errf(err, "%s: %s", dir, strerror(-rc));
		goto fail;
	}
	if (!s->rdonly) {
		rc = take_lock(s, err);
		if (rc)
			goto fail;
	}
	rc = cs_io_setup(&s->io, &s->cfg, dir, s->dirfd, s->rdonly, err);
	if (rc)
		goto fail;
	rc = cs_pcache_init(&s->cache, s->cfg.ram_cache_bytes ? s->cfg.ram_cache_bytes
							       : 256ull << 20);
	if (rc) {
		cs_errf(err, "%s: out of memory", dir);
		goto fail;
	}
	rc = load_manifest(s, err);
	if (rc)
		goto fail;
	if (!s->rdonly) {
		rc = recover(s, err);
		if (rc)
			goto fail;
	}
	*out = s;
	return 0;
fail:
	s->rdonly = true;   /* nothing to persist */
	cs_store_close(s);
	return rc;
}

void cs_store_close(cs_store *s)
{
	if (!s)
		return;
	if (!s->rdonly && s->dirty && s->dirfd >= 0)
		(void)cs_store_flush(s, NULL);
	for (size_t i = 0; i < s->n_ctx; i++)
		free(s->ctx[i]);
	free(s->ctx);
	cs_pcache_free(&s->cache);
	if (s->lockfd >= 0)
		close(s->lockfd);   /* releases the flock */
	if (s->dirfd >= 0)
		close(s->dirfd);
	pthread_mutex_destroy(&s->mu);
	free(s->dir);
	free(s);
}

const char *cs_store_backend_name(const cs_store *s)
{
	return s->io.backend == CS_IO_URING ? "io_uring" : "pread";
}

bool cs_store_direct(const cs_store *s)
{
	return s->io.direct;
}

const char *cs_store_dir(const cs_store *s)
{
	return s->dir;
}

/* ---- queries ---- */

int cs_store_list(cs_store *s, cs_ctx_info **out, size_t *n, char *err)
{
	cs_ctx_info *arr;
	size_t k = 0;

	pthread_mutex_lock(&s->mu);
	arr = calloc(s->n_ctx ? s->n_ctx : 1, sizeof(*arr));
	if (!arr) {
		pthread_mutex_unlock(&s->mu);
		cs_errf(err, "%s: out of memory", s->dir);
		return -ENOMEM;
	}
	for (size_t i = 0; i < s->n_ctx; i++)
		if (s->ctx[i]->committed)
			cs_info_from_ctx(&arr[k++], s->ctx[i]);
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 1; i < k; i++) {   /* by serial; the table is unordered */
		cs_ctx_info t = arr[i];
		size_t j = i;

		for (; j > 0 && arr[j - 1].serial > t.serial; j--)
			arr[j] = arr[j - 1];
		arr[j] = t;
	}
	*out = arr;
	*n = k;
	return 0;
}

int cs_store_info(cs_store *s, uint64_t serial, cs_ctx_info *out, char *err)
{
	struct cs_ctx *c;
	int rc = 0;

	pthread_mutex_lock(&s->mu);
	c = cs_store_find_locked(s, serial);
	if (c && c->committed)
		cs_info_from_ctx(out, c);
	else
		rc = -ENOENT;
	pthread_mutex_unlock(&s->mu);
	if (rc)
		cs_errf(err, "%s: no context #%" PRIu64, s->dir, serial);
	return rc;
}

int cs_store_lookup(cs_store *s, cs_key key, cs_ctx_info *out)
{
	struct cs_ctx *best = NULL;
	int rc = -ENOENT;

	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->n_ctx; i++) {
		struct cs_ctx *c = s->ctx[i];
		bool cs, bs;

		if (!c->committed || !cs_key_equal(c->key, key))
			continue;
		cs = c->flags & CS_CTX_SEALED;
		bs = best && (best->flags & CS_CTX_SEALED);
		if (!best || (cs && !bs) || (cs == bs && c->serial > best->serial))
			best = c;
	}
	if (best) {
		cs_info_from_ctx(out, best);
		rc = 0;
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int cs_store_lookup_name(cs_store *s, const char *name, cs_ctx_info *out)
{
	int rc = -ENOENT;

	if (!name || !*name)
		return -EINVAL;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->n_ctx; i++) {
		if (s->ctx[i]->committed && !strcmp(s->ctx[i]->name, name)) {
			cs_info_from_ctx(out, s->ctx[i]);
			rc = 0;
			break;
		}
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

uint64_t cs_store_disk_used(cs_store *s)
{
	uint64_t used = 0;

	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->n_ctx; i++)
		used += (s->ctx[i]->committed ? cs_ctx_disk_bytes(s->ctx[i]) : 0) +
			s->ctx[i]->reserved;
	pthread_mutex_unlock(&s->mu);
	return used;
}

/* ---- removal and eviction ---- */

/* Removes the contexts skip[] (all committed, unheld) with one manifest write. */
static int remove_locked(cs_store *s, const uint64_t *skip, size_t n, char *err)
{
	bool renamed = false;
	int rc = cs_manifest_commit_locked(s, NULL, skip, n, &renamed, err);

	if (!renamed)
		return rc;
	for (size_t k = 0; k < n; k++) {
		struct cs_ctx *c = cs_store_find_locked(s, skip[k]);
		uint64_t gen = c->blob_gen;

		cs_store_drop_locked(s, c);
		cs_pcache_purge(&s->cache, skip[k]);
		/* an older manifest may come back after a power loss unless this one is durable:
		 * then the files stay, and the next open removes them as orphans */
		if (!rc)
			unlink_ctx_files(s, skip[k], gen);
	}
	return rc;
}

int cs_store_remove(cs_store *s, uint64_t serial, char *err)
{
	struct cs_ctx *c;
	char label[40];
	int rc;

	if (s->rdonly) {
		cs_errf(err, "%s: opened read-only", s->dir);
		return -EROFS;
	}
	pthread_mutex_lock(&s->mu);
	c = cs_store_find_locked(s, serial);
	if (!c || !c->committed) {
		pthread_mutex_unlock(&s->mu);
		cs_errf(err, "%s: no context #%" PRIu64, s->dir, serial);
		return -ENOENT;
	}
	cs_ctx_label(label, c->key, c->serial);
	if (c->readers || c->writer) {
		cs_errf(err, "context %s: held by %u reader(s)%s", label, c->readers,
			c->writer ? " and a writer" : "");
		pthread_mutex_unlock(&s->mu);
		return -EBUSY;
	}
	rc = remove_locked(s, &serial, 1, err);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static uint64_t used_locked(cs_store *s)
{
	uint64_t used = 0;

	for (size_t i = 0; i < s->n_ctx; i++)
		used += (s->ctx[i]->committed ? cs_ctx_disk_bytes(s->ctx[i]) : 0) +
			s->ctx[i]->reserved;
	return used;
}

/* Evicts LRU unheld contexts (never `keep`) until used + need <= limit. */
static int evict_locked(cs_store *s, const struct cs_ctx *keep, uint64_t limit, uint64_t need,
			uint32_t *evicted, char *err)
{
	uint64_t used = used_locked(s), *victims;
	size_t n = 0;
	int rc;

	if (evicted)
		*evicted = 0;
	if (used + need <= limit)
		return 0;
	victims = malloc((s->n_ctx + 1) * sizeof(*victims));
	if (!victims) {
		cs_errf(err, "%s: out of memory", s->dir);
		return -ENOMEM;
	}
	while (used + need > limit) {
		struct cs_ctx *lru = NULL;

		for (size_t i = 0; i < s->n_ctx; i++) {
			struct cs_ctx *c = s->ctx[i];
			bool taken = false;

			if (!c->committed || c->readers || c->writer || c == keep)
				continue;
			for (size_t k = 0; k < n; k++)
				taken |= victims[k] == c->serial;
			if (taken)
				continue;
			if (!lru || c->last_use_ns < lru->last_use_ns ||
			    (c->last_use_ns == lru->last_use_ns && c->serial < lru->serial))
				lru = c;
		}
		if (!lru) {
			cs_errf(err, "%s: disk budget %" PRIu64 " bytes: %" PRIu64
				" in use and %" PRIu64 " more needed, every other context is held",
				s->dir, limit, used, need);
			free(victims);
			return -ENOSPC;
		}
		victims[n++] = lru->serial;
		used -= cs_ctx_disk_bytes(lru);
	}
	rc = remove_locked(s, victims, n, err);
	if (!rc && evicted)
		*evicted = (uint32_t)n;
	free(victims);
	return rc;
}

int cs_store_reserve(cs_store *s, struct cs_ctx *ctx, uint64_t bytes, char *err)
{
	int rc = 0;

	pthread_mutex_lock(&s->mu);
	if (s->cfg.disk_budget)
		rc = evict_locked(s, ctx, s->cfg.disk_budget, bytes, NULL, err);
	if (!rc)
		ctx->reserved += bytes;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int cs_store_trim(cs_store *s, uint64_t target, uint32_t *evicted, char *err)
{
	int rc;

	if (s->rdonly) {
		cs_errf(err, "%s: opened read-only", s->dir);
		return -EROFS;
	}
	pthread_mutex_lock(&s->mu);
	rc = evict_locked(s, NULL, target, 0, evicted, err);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* ---- index, blob ---- */

int cs_load_index(cs_store *s, const struct cs_ctx *snap, struct cs_idx **out, char *err)
{
	char name[64], label[40];
	uint64_t n = snap->idx_entries, pos = 0, max_page = 0;
	uint8_t *raw = NULL;
	struct cs_idx *ents = NULL;
	struct stat st;
	ssize_t got;
	int fd, rc = 0;

	*out = NULL;
	cs_ctx_label(label, snap->key, snap->serial);
	cs_name_idx(name, snap->serial);
	fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = errno == ENOENT ? -EBADMSG : -errno;
		cs_errf(err, "context %s: %s: %s", label, name, strerror(errno));
		goto fail;
	}
	/* A damaged manifest may claim any count: the file bounds what is allocated. */
	if (fstat(fd, &st) || (uint64_t)st.st_size / CS_IDX_ENTRY < n) {
		close(fd);
		rc = -EBADMSG;
		cs_errf(err, "context %s: %s: shorter than committed (%" PRIu64 " entries)", label,
			name, n);
		goto fail;
	}
	ents = calloc(n ? n : 1, sizeof(*ents));
	raw = malloc(n ? n * CS_IDX_ENTRY : 1);
	if (!ents || !raw) {
		close(fd);
		rc = -ENOMEM;
		cs_errf(err, "context %s: out of memory for %" PRIu64 " index entries", label, n);
		goto fail;
	}
	got = cs_io_read(&s->io, fd, raw, n * CS_IDX_ENTRY, 0, name);
	close(fd);
	if (got != (ssize_t)(n * CS_IDX_ENTRY)) {
		rc = got < 0 ? (int)got : -EBADMSG;
		cs_errf(err, "context %s: %s: %s", label, name,
			got < 0 ? strerror((int)-got) : "shorter than committed");
		goto fail;
	}
	for (uint64_t i = 0; i < n; i++) {
		struct cs_idx *e = &ents[i];

		if (cs_idx_decode(raw + i * CS_IDX_ENTRY, e, snap->serial)) {
			cs_errf(err, "context %s: index entry %" PRIu64 ": checksum mismatch", label,
				i);
			rc = -EBADMSG;
			goto fail;
		}
		/* records tile the page file in index order; page numbers never jump ahead */
		if (e->offset != pos || !e->disk_len || e->disk_len % CS_ALIGN ||
		    e->page > max_page + (i > 0) || e->page >= snap->n_pages || !e->n_tokens ||
		    e->n_tokens > snap->page_tokens) {
			cs_errf(err, "context %s: index entry %" PRIu64 " (page %" PRIu64
				" at %" PRIu64 ") is inconsistent", label, i, e->page, e->offset);
			rc = -EBADMSG;
			goto fail;
		}
		if (e->page > max_page)
			max_page = e->page;
		pos += e->disk_len;
	}
	if (pos != snap->data_len || (snap->n_pages && max_page + 1 != snap->n_pages)) {
		cs_errf(err, "context %s: index covers %" PRIu64 " bytes and %" PRIu64
			" pages, manifest says %" PRIu64 " and %" PRIu64, label, pos,
			n ? max_page + 1 : 0, snap->data_len, snap->n_pages);
		rc = -EBADMSG;
		goto fail;
	}
	free(raw);
	*out = ents;
	return 0;
fail:
	free(raw);
	free(ents);
	return rc;
}

int cs_load_page_table(cs_store *s, const struct cs_ctx *snap, uint64_t **off, uint32_t **dlen,
		       char *err)
{
	struct cs_idx *ents;
	uint64_t np = snap->n_pages;
	char label[40];
	int rc = cs_load_index(s, snap, &ents, err);

	*off = NULL;
	*dlen = NULL;
	if (rc)
		return rc;
	*off = calloc(np ? np : 1, sizeof(**off));
	*dlen = calloc(np ? np : 1, sizeof(**dlen));
	if (!*off || !*dlen) {
		rc = -ENOMEM;
		cs_errf(err, "%s: out of memory", s->dir);
		goto out;
	}
	for (uint64_t i = 0; i < snap->idx_entries; i++) {
		(*off)[ents[i].page] = ents[i].offset;
		(*dlen)[ents[i].page] = ents[i].disk_len;
	}
	/* the last copy of each page must hold exactly the tokens the manifest implies */
	for (uint64_t i = snap->idx_entries; i-- > 0;) {
		const struct cs_idx *e = &ents[i];
		uint64_t want = e->page + 1 < np ? snap->page_tokens
						 : snap->n_tokens - e->page * snap->page_tokens;

		if ((*off)[e->page] == e->offset && e->n_tokens != want) {
			cs_ctx_label(label, snap->key, snap->serial);
			cs_errf(err, "context %s: page %" PRIu64 " holds %u tokens, expected %" PRIu64,
				label, e->page, e->n_tokens, want);
			rc = -EBADMSG;
			goto out;
		}
	}
out:
	if (rc) {
		free(*off);
		free(*dlen);
		*off = NULL;
		*dlen = NULL;
	}
	free(ents);
	return rc;
}

int cs_read_blob_fd(struct cs_io *io, int fd, const struct cs_ctx *snap, void **blob, size_t *len,
		    char *err)
{
	uint8_t hdr[CS_BLOB_HDR];
	char why[CS_ERR_LEN], label[40], name[64];
	uint8_t *buf = NULL;
	struct stat st;
	ssize_t n;
	int rc;

	*blob = NULL;
	*len = 0;
	cs_ctx_label(label, snap->key, snap->serial);
	if (!snap->blob_gen)
		return 0;
	cs_name_blob(name, snap->serial, snap->blob_gen);
	/* A damaged manifest may claim any length: the file bounds what is allocated. */
	if (snap->blob_len > SIZE_MAX - 1 || fstat(fd, &st) ||
	    (uint64_t)st.st_size < CS_BLOB_HDR || (uint64_t)st.st_size - CS_BLOB_HDR < snap->blob_len) {
		cs_errf(err, "context %s: %s: truncated (blob of %" PRIu64 " bytes)", label, name,
			snap->blob_len);
		return -EBADMSG;
	}
	n = cs_io_read(io, fd, hdr, CS_BLOB_HDR, 0, name);
	if (n != CS_BLOB_HDR) {
		cs_errf(err, "context %s: %s: %s", label, name,
			n < 0 ? strerror((int)-n) : "truncated");
		return n < 0 ? (int)n : -EBADMSG;
	}
	buf = malloc(snap->blob_len ? snap->blob_len : 1);
	if (!buf) {
		cs_errf(err, "context %s: out of memory for a blob of %" PRIu64 " bytes", label,
			snap->blob_len);
		return -ENOMEM;
	}
	n = cs_io_read(io, fd, buf, snap->blob_len, CS_BLOB_HDR, name);
	if (n != (ssize_t)snap->blob_len) {
		cs_errf(err, "context %s: %s: %s", label, name,
			n < 0 ? strerror((int)-n) : "truncated");
		free(buf);
		return n < 0 ? (int)n : -EBADMSG;
	}
	rc = cs_blob_check(hdr, snap->serial, snap->blob_gen, buf, snap->blob_len,
			   snap->blob_check, why, sizeof(why));
	if (rc) {
		cs_errf(err, "context %s: blob: %s", label, why);
		free(buf);
		return rc;
	}
	if (!snap->blob_len) {
		free(buf);
		buf = NULL;
	}
	*blob = buf;
	*len = snap->blob_len;
	return 0;
}

/* Opens the blob file of a committed context under s->mu, so a commit cannot delete it
 * between the look-up and the open. */
static int open_blob_locked(cs_store *s, const struct cs_ctx *c, bool *missing, char *err)
{
	char name[64], label[40];
	int fd;

	cs_name_blob(name, c->serial, c->blob_gen);
	fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		if (missing)
			*missing = e == ENOENT;
		cs_ctx_label(label, c->key, c->serial);
		cs_errf(err, "context %s: %s: %s", label, name, strerror(e));
		return e == ENOENT ? -EBADMSG : -e;
	}
	return fd;
}

int cs_open_blob_locked(cs_store *s, const struct cs_ctx *c, char *err)
{
	return c->blob_gen ? open_blob_locked(s, c, NULL, err) : -1;
}

int cs_store_read_blob(cs_store *s, uint64_t serial, void **blob, size_t *len, char *err)
{
	struct cs_ctx snap, *c;
	int fd, rc;

	*blob = NULL;
	*len = 0;
	pthread_mutex_lock(&s->mu);
	c = cs_store_find_locked(s, serial);
	if (!c || !c->committed) {
		pthread_mutex_unlock(&s->mu);
		cs_errf(err, "%s: no context #%" PRIu64, s->dir, serial);
		return -ENOENT;
	}
	snap = *c;
	fd = cs_open_blob_locked(s, c, err);
	pthread_mutex_unlock(&s->mu);
	if (!snap.blob_gen)
		return 0;
	if (fd < 0)
		return fd;
	rc = cs_read_blob_fd(&s->io, fd, &snap, blob, len, err);
	close(fd);
	return rc;
}

/* ---- verification ---- */

static int hold(cs_store *s, uint64_t serial, struct cs_ctx *snap, char *err)
{
	struct cs_ctx *c;

	pthread_mutex_lock(&s->mu);
	c = cs_store_find_locked(s, serial);
	if (!c || !c->committed) {
		pthread_mutex_unlock(&s->mu);
		cs_errf(err, "%s: no context #%" PRIu64, s->dir, serial);
		return -ENOENT;
	}
	c->readers++;
	*snap = *c;
	pthread_mutex_unlock(&s->mu);
	return 0;
}

static void unhold(cs_store *s, uint64_t serial)
{
	struct cs_ctx *c;

	pthread_mutex_lock(&s->mu);
	c = cs_store_find_locked(s, serial);
	if (c)
		c->readers--;
	pthread_mutex_unlock(&s->mu);
}

struct vslot {
	uint8_t *buf;
	uint64_t entry;
};

int cs_store_verify(cs_store *s, uint64_t serial, cs_verify_report *rep, char *err)
{
	struct cs_ctx snap;
	struct cs_idx *ents = NULL;
	struct cs_ioq q;
	struct vslot *slots = NULL;
	cs_verify_report dummy;
	char label[40], name[64], why[CS_ERR_LEN], first[CS_ERR_LEN] = "";
	size_t esz, cap;
	uint8_t *scratch = NULL;
	uint64_t next = 0, done = 0;
	uint32_t depth;
	int rc, fd = -1, first_rc = 0;

	if (!rep)
		rep = &dummy;
	memset(rep, 0, sizeof(*rep));
	rc = hold(s, serial, &snap, err);
	if (rc)
		return rc;
	cs_ctx_label(label, snap.key, snap.serial);
	esz = cs_dtype_size(snap.dtype);
	cap = cs_page_record_bound(snap.page_tokens, snap.width, esz);
	depth = s->cfg.io_depth;

	rc = cs_load_index(s, &snap, &ents, err);
	if (rc) {
		if (rc == -EBADMSG)
			rep->bad_records++;
		/* a file once gone never comes back (serials are never reused) */
		cs_name_idx(name, serial);
		if (rc == -EBADMSG && faccessat(s->dirfd, name, F_OK, 0) && errno == ENOENT)
			rep->missing_files++;
		goto out_hold;
	}
	cs_name_pages(name, serial);
	fd = cs_io_open_pages(&s->io, s->dirfd, name, O_RDONLY);
	if (fd < 0) {
		rep->bad_records += fd == -ENOENT;
		rep->missing_files += fd == -ENOENT;
		rc = fd == -ENOENT ? -EBADMSG : fd;
		cs_errf(err, "context %s: %s: %s", label, name, strerror(-fd));
		goto out_ents;
	}
	rc = cs_ioq_init(&q, &s->io, depth, err);
	if (rc)
		goto out_fd;
	slots = calloc(depth, sizeof(*slots));
	scratch = malloc((size_t)snap.page_tokens * (snap.width * esz + 4));
	if (!slots || !scratch) {
		rc = -ENOMEM;
		cs_errf(err, "%s: out of memory", s->dir);
		goto out_q;
	}
	for (uint32_t i = 0; i < depth; i++) {
		slots[i].buf = cs_io_alloc(cap);
		if (!slots[i].buf) {
			rc = -ENOMEM;
			cs_errf(err, "%s: out of memory", s->dir);
			goto out_q;
		}
	}
	while (done < snap.idx_entries) {
		uint64_t tag;
		int res;

		/* keep the queue full, in file order */
		while (next < snap.idx_entries && !cs_ioq_full(&q)) {
			uint32_t k;

			for (k = 0; k < depth && slots[k].entry; k++)
				;
			slots[k].entry = next + 1;
			rc = cs_ioq_read(&q, fd, slots[k].buf, ents[next].disk_len,
					 ents[next].offset, k, name);
			if (rc) {
				cs_errf(err, "context %s: read: %s", label, strerror(-rc));
				goto out_q;
			}
			next++;
		}
		rc = cs_ioq_submit(&q);
		if (!rc)
			rc = cs_ioq_wait(&q, &tag, &res);
		if (rc) {
			cs_errf(err, "context %s: read: %s", label, strerror(-rc));
			goto out_q;
		}
		{
			const struct cs_idx *e = &ents[slots[tag].entry - 1];
			struct cs_page_meta m = { .serial = snap.serial, .index = e->page,
						  .n_tokens = e->n_tokens,
						  .page_tokens = snap.page_tokens,
						  .width = snap.width, .dtype = snap.dtype };
			int prc;

			slots[tag].entry = 0;
			rep->records++;
			if (res < 0) {
				prc = res;
				snprintf(why, sizeof(why), "read: %s", strerror(-res));
			} else if ((uint32_t)res != e->disk_len) {
				prc = -EBADMSG;
				snprintf(why, sizeof(why), "short read (%d of %u bytes)", res,
					 e->disk_len);
			} else {
				rep->bytes += (uint64_t)res;
				prc = cs_page_decode(&m, slots[tag].buf, e->disk_len, scratch, NULL,
						     NULL, why, sizeof(why));
			}
			if (prc) {
				rep->bad_records++;
				if (!first_rc) {
					first_rc = prc;
					cs_errf(first, "context %s page %" PRIu64
						" (record at %" PRIu64 "): corrupt: %s", label, e->page,
						e->offset, why);
				}
			}
			done++;
		}
	}
	if (snap.blob_gen) {
		void *blob;
		size_t blen;
		bool missing = false;
		int bfd;

		pthread_mutex_lock(&s->mu);
		bfd = open_blob_locked(s, &snap, &missing, why);
		pthread_mutex_unlock(&s->mu);
		rep->missing_files += missing;
		rc = bfd < 0 ? bfd : cs_read_blob_fd(&s->io, bfd, &snap, &blob, &blen, why);
		if (bfd >= 0)
			close(bfd);
		if (!rc)
			free(blob);
		else if (!first_rc) {
			first_rc = rc;
			snprintf(first, sizeof(first), "%s", why);
		}
		if (rc)
			rep->bad_records++;
	}
	rc = first_rc;
	if (rc)
		cs_errf(err, "%s", first);
out_q:
	cs_ioq_exit(&q);
	if (slots)
		for (uint32_t i = 0; i < depth; i++)
			free(slots[i].buf);
	free(slots);
	free(scratch);
out_fd:
	close(fd);
out_ents:
	free(ents);
out_hold:
	unhold(s, serial);
	return rc;
}

void cs_store_cache_usage(cs_store *s, uint64_t *bytes, uint64_t *limit)
{
	pthread_mutex_lock(&s->cache.mu);
	*bytes = s->cache.bytes;
	*limit = s->cache.limit;
	pthread_mutex_unlock(&s->cache.mu);
}
