/*
 * tensors.c — tensor sets: lookup, ownership, and the helpers the readers share.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "goldfinch.h"
#include "tensors_internal.h"

void gf_tset_err(char *err, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	va_start(ap, fmt);
	vsnprintf(err, GF_ERR_LEN, fmt, ap);
	va_end(ap);
	/* One line: a name taken from a file could carry a newline. */
	for (char *p = err; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

int gf_tset_map(const char *path, void **map, size_t *len, char *err)
{
	struct stat st;
	void *p;
	int fd, rc;

	*map = NULL;
	*len = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		gf_tset_err(err, "%s: cannot open: %s", path, strerror(errno));
		return rc;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		gf_tset_err(err, "%s: cannot stat: %s", path, strerror(errno));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = -EINVAL;
		gf_tset_err(err, "%s: not a regular file", path);
		goto out_close;
	}
	if (st.st_size == 0) {
		rc = -EINVAL;
		gf_tset_err(err, "%s: empty file", path);
		goto out_close;
	}
	if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX / 2) {
		rc = -EFBIG;
		gf_tset_err(err, "%s: file too large to map", path);
		goto out_close;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		gf_tset_err(err, "%s: cannot map: %s", path, strerror(errno));
		goto out_close;
	}
	*map = p;
	*len = (size_t)st.st_size;
	rc = 0;
out_close:
	close(fd);
	return rc;
}

int64_t gf_tset_numel(int n_dims, const int64_t *shape)
{
	/* 2^56 elements: far beyond any model, and times 8 bytes still fits in int64. */
	const int64_t limit = (int64_t)1 << 56;
	int64_t n = 1;
	bool zero = false;

	if (n_dims < 0 || n_dims > GF_MAX_DIMS)
		return -1;
	for (int i = 0; i < n_dims; i++) {
		if (shape[i] < 0 || shape[i] > limit)
			return -1;
		if (shape[i] == 0) {
			zero = true;
			continue;
		}
		if (n > limit / shape[i])
			return -1;
		n *= shape[i];
	}
	return zero ? 0 : n;
}

static int grow(void **arr, int *cap, int need, size_t elsize)
{
	int ncap;
	void *p;

	if (need <= *cap)
		return 0;
	if (need > (1 << 28))
		return -ENOMEM;
	ncap = *cap ? *cap : 16;
	while (ncap < need)
		ncap *= 2;
	p = realloc(*arr, (size_t)ncap * elsize);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = ncap;
	return 0;
}

static int add_owned_block(gf_tensor_set *ts, void *block)
{
	if (grow((void **)&ts->owned, &ts->cap_owned, ts->n_owned + 1, sizeof(void *)))
		return -ENOMEM;
	ts->owned[ts->n_owned++] = block;
	return 0;
}

static int push_tensor(gf_tensor_set *ts, const char *name, size_t name_len, gf_dtype dtype,
		       int n_dims, const int64_t *shape, const void *data, size_t nbytes)
{
	gf_tensor *t;

	if (grow((void **)&ts->tensors, &ts->cap, ts->n_tensors + 1, sizeof(gf_tensor)))
		return -ENOMEM;
	t = &ts->tensors[ts->n_tensors++];
	memset(t, 0, sizeof(*t));
	memcpy(t->name, name, name_len);
	t->name[name_len] = '\0';
	t->dtype = dtype;
	t->n_dims = n_dims;
	for (int i = 0; i < n_dims; i++)
		t->shape[i] = shape[i];
	t->data = data;
	t->nbytes = nbytes;
	return 0;
}

static int check_name(const char *name, size_t name_len)
{
	if (name_len == 0 || name_len >= GF_NAME_MAX)
		return -1;
	if (memchr(name, '\0', name_len))
		return -1;
	return 0;
}

int gf_tset_push(gf_tensor_set *ts, const char *name, size_t name_len, gf_dtype dtype,
		 int n_dims, const int64_t *shape, const void *data, size_t nbytes,
		 const char *path, char *err)
{
	size_t el = gf_dtype_size(dtype);
	int64_t numel = gf_tset_numel(n_dims, shape);
	void *copy = NULL;

	if (check_name(name, name_len)) {
		gf_tset_err(err, "%s: tensor name '%.*s' is empty, has a NUL byte or is longer "
			    "than %d bytes", path, (int)(name_len > 60 ? 60 : name_len), name,
			    GF_NAME_MAX - 1);
		return -EINVAL;
	}
	if (el == 0 || numel < 0 || (uint64_t)numel * el != nbytes) {
		gf_tset_err(err, "%s: tensor %.*s: bad type, shape or size", path, (int)name_len,
			    name);
		return -EINVAL;
	}
	if (nbytes && ((uintptr_t)data % el) != 0) {
		/* Consumers read data as float/uint16_t arrays: give them an aligned copy. */
		copy = malloc(nbytes);
		if (!copy || add_owned_block(ts, copy)) {
			free(copy);
			gf_tset_err(err, "%s: tensor %.*s: out of memory", path, (int)name_len, name);
			return -ENOMEM;
		}
		memcpy(copy, data, nbytes);
		data = copy;
	}
	if (push_tensor(ts, name, name_len, dtype, n_dims, shape, data, nbytes)) {
		gf_tset_err(err, "%s: out of memory", path);
		return -ENOMEM;
	}
	return 0;
}

static int cmp_name_ptr(const void *a, const void *b)
{
	const gf_tensor *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

int gf_tset_check_unique(const gf_tensor_set *ts, const char *path, char *err)
{
	const gf_tensor **idx;
	int rc = 0;

	if (ts->n_tensors < 2)
		return 0;
	idx = malloc((size_t)ts->n_tensors * sizeof(*idx));
	if (!idx) {
		gf_tset_err(err, "%s: out of memory", path);
		return -ENOMEM;
	}
	for (int i = 0; i < ts->n_tensors; i++)
		idx[i] = &ts->tensors[i];
	qsort(idx, (size_t)ts->n_tensors, sizeof(*idx), cmp_name_ptr);
	for (int i = 1; i < ts->n_tensors; i++) {
		if (strcmp(idx[i - 1]->name, idx[i]->name) == 0) {
			gf_tset_err(err, "%s: tensor %s appears twice", path, idx[i]->name);
			rc = -EINVAL;
			break;
		}
	}
	free(idx);
	return rc;
}

void gf_tset_reset(gf_tensor_set *ts)
{
	for (int i = 0; i < ts->n_owned; i++)
		free(ts->owned[i]);
	free(ts->owned);
	free(ts->tensors);
	ts->owned = NULL;
	ts->n_owned = ts->cap_owned = 0;
	ts->tensors = NULL;
	ts->n_tensors = ts->cap = 0;
}

const gf_tensor *gf_tensors_find(const gf_tensor_set *ts, const char *name)
{
	if (!ts || !name)
		return NULL;
	for (int i = 0; i < ts->n_tensors; i++)
		if (strcmp(ts->tensors[i].name, name) == 0)
			return &ts->tensors[i];
	return NULL;
}

/* On failure the caller keeps ownership of data. */
int gf_tensors_add_owned(gf_tensor_set *ts, const char *name, gf_dtype dtype, int n_dims,
			 const int64_t *shape, void *data)
{
	size_t el = gf_dtype_size(dtype), name_len;
	int64_t numel;

	if (!ts || !name || !shape)
		return -EINVAL;
	name_len = strlen(name);
	numel = gf_tset_numel(n_dims, shape);
	if (check_name(name, name_len) || el == 0 || numel < 0 || (!data && numel > 0))
		return -EINVAL;
	if ((uintptr_t)data % el)
		return -EINVAL;
	if (grow((void **)&ts->tensors, &ts->cap, ts->n_tensors + 1, sizeof(gf_tensor)) ||
	    grow((void **)&ts->owned, &ts->cap_owned, ts->n_owned + 1, sizeof(void *)))
		return -ENOMEM;
	/* Both arrays have room now: neither push can fail, so ownership moves atomically. */
	push_tensor(ts, name, name_len, dtype, n_dims, shape, data, (size_t)numel * el);
	if (data)
		ts->owned[ts->n_owned++] = data;
	return 0;
}

void gf_tensors_free(gf_tensor_set *ts)
{
	if (!ts)
		return;
	gf_tset_reset(ts);
	if (ts->map)
		munmap(ts->map, ts->map_len);
	memset(ts, 0, sizeof(*ts));
}

int gf_tensors_read_any(gf_tensor_set *ts, const char *path, char *err)
{
	unsigned char head[16];
	ssize_t n;
	int fd;

	memset(ts, 0, sizeof(*ts));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int rc = -errno;

		gf_tset_err(err, "%s: cannot open: %s", path, strerror(errno));
		return rc;
	}
	do {
		n = pread(fd, head, sizeof(head), 0);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		int rc = -errno;

		gf_tset_err(err, "%s: cannot read: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	close(fd);

	if (n >= 4 && memcmp(head, "PK", 2) == 0)
		return gf_tensors_read_pth(ts, path, err);
	if (n >= 4 && memcmp(head, "GGUF", 4) == 0) {
		gf_gguf g;
		int rc = gf_gguf_read(&g, path, err);

		if (rc)
			return rc;
		*ts = g.tensors;
		memset(&g.tensors, 0, sizeof(g.tensors));
		gf_gguf_free(&g);
		return 0;
	}
	if (n >= 9 && head[8] == '{')
		return gf_tensors_read_safetensors(ts, path, err);
	gf_tset_err(err, "%s: not a .pth (zip), .safetensors or GGUF file", path);
	return -EINVAL;
}
