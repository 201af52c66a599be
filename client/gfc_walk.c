/*
 * gfc_walk.c — which files of a codebase an ingest sends, in which order (gfclient.h).
 *
 * The order must be the same on every run and every machine, so that the same tree gives
 * the same rendered stream and hence the same content key (the server reuses a context
 * only when the tokens are identical): names are sorted bytewise (strcmp), never by locale
 * or by the file system's directory order.
 */
#include "gfc_internal.h"
#include "gfclient.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Folders of version-control systems: their content is history, not the codebase. */
static const char *const vcs_dirs[] = { ".git", ".hg", ".svn", ".bzr", "_darcs", "CVS", ".jj" };

bool gfc_is_vcs_dir(const char *name)
{
	for (size_t i = 0; i < sizeof(vcs_dirs) / sizeof(vcs_dirs[0]); i++)
		if (!strcmp(name, vcs_dirs[i]))
			return true;
	return false;
}

void gfc_filelist_init(gfc_filelist *fl)
{
	memset(fl, 0, sizeof(*fl));
}

void gfc_filelist_free(gfc_filelist *fl)
{
	if (!fl)
		return;
	for (size_t i = 0; i < fl->n; i++) {
		free(fl->files[i].path);
		free(fl->files[i].rel);
	}
	free(fl->files);
	memset(fl, 0, sizeof(*fl));
}

uint64_t gfc_rendered_size(const char *rel, uint64_t size)
{
	return strlen(GFC_FILE_HEADER) + strlen(rel) + 1 + size + 1;
}

/* Well-formed UTF-8 as the Unicode standard's table 3-7 defines it: the second byte's
 * range depends on the first (no overlongs, surrogates or code points above U+10FFFF), so
 * a sequence is judged as soon as its bytes are seen, and one cut by the end of the buffer
 * is judged on the bytes it has. */
size_t gfc_utf8_prefix(const uint8_t *s, size_t n, size_t *len)
{
	const uint8_t b = s[0];
	uint8_t lo = 0x80, hi = 0xbf;   /* range of the second byte */
	*len = 0;
	if (b >= 0xc2 && b <= 0xdf)
		*len = 2;
	else if (b >= 0xe0 && b <= 0xef)
		*len = 3, lo = b == 0xe0 ? 0xa0 : 0x80, hi = b == 0xed ? 0x9f : 0xbf;
	else if (b >= 0xf0 && b <= 0xf4)
		*len = 4, lo = b == 0xf0 ? 0x90 : 0x80, hi = b == 0xf4 ? 0x8f : 0xbf;
	size_t k = 1;
	for (; k < *len && k < n; k++) {
		const uint8_t c = s[k];
		if (k == 1 ? c < lo || c > hi : (c & 0xc0) != 0x80)
			break;
	}
	return k;
}

int gfc_is_text(const uint8_t *s, size_t n, bool truncated)
{
	size_t i = 0;

	while (i < n) {
		uint8_t b = s[i];
		if (b == 0)
			return 0;
		if (b < 0x80) {
			i++;
			continue;
		}
		size_t len;
		const size_t k = gfc_utf8_prefix(s + i, n - i, &len);
		if (len == 0)
			return 0;   /* a continuation byte first, C0, C1, F5.. */
		if (k < len)    /* cut by the sniff window, not by the file, or ill-formed */
			return i + k >= n ? truncated : 0;
		i += len;
	}
	return 1;
}

static int add_file(gfc_filelist *fl, const char *path, const char *rel, uint64_t size)
{
	if (fl->n == fl->cap) {
		size_t cap = fl->cap ? fl->cap * 2 : 64;
		gfc_file *f = realloc(fl->files, cap * sizeof(*f));
		if (!f)
			return -ENOMEM;
		fl->files = f;
		fl->cap = cap;
	}
	gfc_file *f = &fl->files[fl->n];
	f->path = strdup(path);
	f->rel = strdup(rel);
	f->size = size;
	if (!f->path || !f->rel) {
		free(f->path);
		free(f->rel);
		return -ENOMEM;
	}
	fl->n++;
	return 0;
}

/* 1 text, 0 binary, -errno unreadable. */
static int sniff(const char *path, uint64_t size)
{
	uint8_t buf[GFC_SNIFF_BYTES];
	size_t n = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	if (fd < 0)
		return -errno;
	while (n < sizeof(buf)) {
		ssize_t r = read(fd, buf + n, sizeof(buf) - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			close(fd);
			return -e;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	return gfc_is_text(buf, n, size > n);
}

static void note_skip(gfc_note_fn note, void *user, const char *path, const char *why)
{
	if (note)
		note(user, path, why);
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *join(const char *dir, const char *name)
{
	size_t d = strlen(dir);
	bool slash = d && dir[d - 1] != '/';
	char *s = malloc(d + slash + strlen(name) + 1);

	if (s)
		sprintf(s, "%s%s%s", dir, slash ? "/" : "", name);
	return s;
}

static int walk_dir(gfc_filelist *fl, const char *dir, const char *rel, gfc_note_fn note,
		    void *user, char *err);

/* One entry of a folder: path to open, rel to send. */
static int walk_entry(gfc_filelist *fl, const char *path, const char *rel, const char *name,
		      gfc_note_fn note, void *user, char *err)
{
	struct stat st;

	if (lstat(path, &st)) {
		note_skip(note, user, path, strerror(errno));
		return 0;
	}
	if (S_ISLNK(st.st_mode)) {
		/* Links to files are followed; links to folders are not (loops). */
		if (stat(path, &st)) {
			note_skip(note, user, path, "broken symbolic link");
			return 0;
		}
		if (S_ISDIR(st.st_mode)) {
			note_skip(note, user, path, "symbolic link to a folder");
			return 0;
		}
	}
	if (S_ISDIR(st.st_mode)) {
		if (gfc_is_vcs_dir(name)) {
			note_skip(note, user, path, "version-control folder");
			return 0;
		}
		return walk_dir(fl, path, rel, note, user, err);
	}
	if (!S_ISREG(st.st_mode)) {
		note_skip(note, user, path, "not a regular file");
		return 0;
	}
	int t = sniff(path, (uint64_t)st.st_size);
	if (t < 0) {
		note_skip(note, user, path, strerror(-t));
		return 0;
	}
	if (!t) {
		note_skip(note, user, path, "binary file");
		return 0;
	}
	return add_file(fl, path, rel, (uint64_t)st.st_size);
}

static int walk_dir(gfc_filelist *fl, const char *dir, const char *rel, gfc_note_fn note,
		    void *user, char *err)
{
	DIR *d = opendir(dir);
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;

	if (!d) {
		note_skip(note, user, dir, strerror(errno));
		return 0;
	}
	for (;;) {
		errno = 0;
		struct dirent *e = readdir(d);
		if (!e) {
			if (errno)
				note_skip(note, user, dir, strerror(errno));
			break;
		}
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 32;
			char **nn = realloc(names, nc * sizeof(*nn));
			if (!nn) {
				rc = -ENOMEM;
				goto free_names;
			}
			names = nn;
			cap = nc;
		}
		names[n] = strdup(e->d_name);
		if (!names[n]) {
			rc = -ENOMEM;
			goto free_names;
		}
		n++;
	}
	if (n)
		qsort(names, n, sizeof(*names), cmp_names);
	for (size_t i = 0; i < n && !rc; i++) {
		char *path = join(dir, names[i]);
		char *r = *rel ? join(rel, names[i]) : strdup(names[i]);
		if (!path || !r)
			rc = -ENOMEM;
		else
			rc = walk_entry(fl, path, r, names[i], note, user, err);
		free(path);
		free(r);
	}
free_names:
	if (rc == -ENOMEM)
		gfc_seterr(err, "walking %s: out of memory", dir);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return rc;
}

int gfc_walk(gfc_filelist *fl, const char *path, gfc_note_fn note, void *user, char *err)
{
	struct stat st;

	if (stat(path, &st)) {
		int e = errno;
		gfc_seterr(err, "%s: %s", path, strerror(e));
		return -e;
	}
	if (S_ISDIR(st.st_mode))
		return walk_dir(fl, path, "", note, user, err);
	if (!S_ISREG(st.st_mode)) {
		gfc_seterr(err, "%s: not a regular file or a folder", path);
		return -EINVAL;
	}
	int t = sniff(path, (uint64_t)st.st_size);
	if (t < 0) {
		gfc_seterr(err, "%s: %s", path, strerror(-t));
		return t;
	}
	if (!t) {
		note_skip(note, user, path, "binary file");
		return 0;
	}
	/* A file named directly is sent under its base name. */
	size_t len = strlen(path);
	while (len > 1 && path[len - 1] == '/')
		len--;
	const char *base = path + len;
	while (base > path && base[-1] != '/')
		base--;
	char *rel = strndup(base, (size_t)(path + len - base));
	if (!rel)
		return -ENOMEM;
	int rc = add_file(fl, path, rel, (uint64_t)st.st_size);
	free(rel);
	if (rc)
		gfc_seterr(err, "%s: out of memory", path);
	return rc;
}
