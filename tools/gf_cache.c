/*
 * gf-cache — inspect and maintain a cache store directory (cache_store/README.md).
 *
 *   gf-cache --dir D ls                 contexts: id, name, tokens, disk bytes, ratio, last use
 *   gf-cache --dir D verify [ID]        read and check every page (all contexts, or one)
 *   gf-cache --dir D rm ID              delete a context
 *   gf-cache --dir D gc [--budget B] [--unsealed]
 *                                       remove what crashes left behind; optionally evict
 *                                       least-recently-used contexts down to B bytes, and
 *                                       drop unsealed (abandoned) contexts
 *   gf-cache --dir D bench [--model M.gguf] [--tokens N] [--mb MB] [--page P] [--threads T]
 *                                       write/read throughput and compression ratio of c
 *                                       rows from a real forward, against the raw disk
 *
 * ID: a context's name, #serial, or a prefix (>= 4 hex digits) of its key. In the store of an
 * MPI rank other than 0, the name rank 0's context has finds that rank's copy.
 * ls and verify open the store read-only (they work beside a running daemon); rm and gc
 * take the store's lock. Exit codes: 0 ok, 1 error, 2 usage, 3 corruption found,
 * 4 no such context.
 */
#include "goldfinch_version.h"
#include "cache_store.h"
#include "goldfinch.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EX_OK = 0, EX_ERR = 1, EX_USAGE = 2, EX_CORRUPT = 3, EX_NOENT = 4 };

static void usage(FILE *f)
{
	fprintf(f,
		"usage: gf-cache --dir D ls\n"
		"       gf-cache --dir D verify [ID]\n"
		"       gf-cache --dir D rm ID\n"
		"       gf-cache --dir D gc [--budget BYTES] [--unsealed]\n"
		"       gf-cache --dir D bench [--model M.gguf] [--tokens N] [--mb MB] [--page P]\n"
		"                              [--threads T] [--keep]\n"
		"ID: a context name, #serial, or a prefix (4+ hex digits) of its key; in the\n"
		"store of MPI rank 1, 2, ..., the name of rank 0's context finds its copy.\n"
		"Exit codes: 0 ok, 1 error, 2 usage, 3 corruption found, 4 no such context.\n"
		"GF_CS_IO=sync|io_uring and GF_CS_DIRECT=0|1 pick the I/O path.\n");
}

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(int code, const char *fmt, ...)
{
	va_list ap;

	fputs("gf-cache: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return code;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void human(char *out, size_t len, double bytes)
{
	static const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int i = 0;

	while (bytes >= 1024 && i < 4) {
		bytes /= 1024;
		i++;
	}
	snprintf(out, len, i ? "%.1f %s" : "%.0f %s", bytes, u[i]);
}

/* Opens an existing store (a new one only for the bench: rm and gc must not create one). */
static int open_store(cs_store **s, const char *dir, bool rdonly)
{
	char err[CS_ERR_LEN] = "", path[4096];
	cs_config cfg;
	int rc;

	snprintf(path, sizeof(path), "%s/MANIFEST", dir);
	if (!rdonly && access(path, F_OK) && !strstr(dir, "bench-store"))
		return fail(EX_NOENT, "%s: no cache store here (no MANIFEST)", dir);

	cs_config_defaults(&cfg);
	if (rdonly)
		cfg.flags = CS_OPEN_RDONLY;
	rc = cs_store_open(s, dir, &cfg, err);
	if (rc)
		return fail(rc == -ENOENT ? EX_NOENT : EX_ERR, "%s", err);
	return 0;
}

/* The store of an MPI rank other than 0 names its copy of rank 0's context #S "r0-S:NAME"
 * (daemon/rank_part.h), NAME cut to what a name holds: finds the copy of the context named id. */
static int rank_copy(cs_store *s, const char *id, uint64_t *serial)
{
	cs_ctx_info *list;
	size_t n, len = strlen(id);
	int rc = -ENOENT;

	if (cs_store_list(s, &list, &n, NULL))
		return -ENOMEM;
	for (size_t i = 0; i < n && rc; i++) {
		const char *nm = list[i].name, *p = nm + 3;

		if (strncmp(nm, "r0-", 3) || !isdigit((unsigned char)*p))
			continue;
		while (isdigit((unsigned char)*p))
			p++;
		if (*p++ != ':')
			continue;
		if (!strcmp(p, id) || (strlen(nm) == CS_NAME_MAX - 1 && !strncmp(p, id, strlen(p)) &&
				       len > strlen(p))) {
			*serial = list[i].serial;
			rc = 0;
		}
	}
	free(list);
	return rc;
}

/* Resolves ID to a serial: exact name, a rank's copy of that name, #serial, or a unique key
 * prefix. */
static int resolve(cs_store *s, const char *id, uint64_t *serial)
{
	char err[CS_ERR_LEN] = "", hex[33];
	cs_ctx_info *list, info;
	size_t n, hits = 0, len = strlen(id);
	int rc;

	if (cs_store_lookup_name(s, id, &info) == 0) {
		*serial = info.serial;
		return 0;
	}
	if (id[0] != '#' && rank_copy(s, id, serial) == 0)
		return 0;
	if (id[0] == '#') {
		char *end;
		unsigned long long v = strtoull(id + 1, &end, 10);

		if (!id[1] || *end)
			return fail(EX_USAGE, "%s: not a serial number", id);
		if (cs_store_info(s, v, &info, err))
			return fail(EX_NOENT, "%s: no such context in %s", id, cs_store_dir(s));
		*serial = v;
		return 0;
	}
	for (size_t i = 0; i < len; i++)
		if (!isxdigit((unsigned char)id[i]))
			return fail(EX_NOENT, "%s: no context of that name in %s", id, cs_store_dir(s));
	if (len < 4 || len > 32)
		return fail(EX_USAGE, "%s: give at least 4 (at most 32) hex digits of a key", id);
	rc = cs_store_list(s, &list, &n, err);
	if (rc)
		return fail(EX_ERR, "%s", err);
	for (size_t i = 0; i < n; i++) {
		cs_key_hex(list[i].key, hex);
		if (!strncasecmp(hex, id, len)) {
			*serial = list[i].serial;
			hits++;
		}
	}
	free(list);
	if (hits > 1)
		return fail(EX_USAGE, "%s: matches %zu contexts, give more digits", id, hits);
	if (!hits)
		return fail(EX_NOENT, "%s: no such context in %s", id, cs_store_dir(s));
	return 0;
}

/* ---- ls ---- */

static int by_last_use(const void *a, const void *b)
{
	const cs_ctx_info *x = a, *y = b;

	return x->last_use_ns < y->last_use_ns ? 1 : x->last_use_ns > y->last_use_ns ? -1 : 0;
}

static int cmd_ls(const char *dir)
{
	char err[CS_ERR_LEN] = "", hex[33], disk[32], when[32], shape[32];
	cs_ctx_info *list;
	uint64_t total = 0;
	cs_store *s;
	size_t n;
	int rc = open_store(&s, dir, true);

	if (rc)
		return rc;
	rc = cs_store_list(s, &list, &n, err);
	if (rc) {
		cs_store_close(s);
		return fail(EX_ERR, "%s", err);
	}
	qsort(list, n, sizeof(*list), by_last_use);
	printf("%-12s %6s  %-20s %12s %7s %-9s %10s %6s  %-19s  %s\n", "ID", "SERIAL", "NAME",
	       "TOKENS", "PAGE", "ROW", "DISK", "RATIO", "LAST USE", "STATE");
	for (size_t i = 0; i < n; i++) {
		const cs_ctx_info *x = &list[i];
		time_t t = (time_t)(x->last_use_ns / 1000000000);
		struct tm tm;

		cs_key_hex(x->key, hex);
		human(disk, sizeof(disk), (double)x->disk_bytes);
		localtime_r(&t, &tm);
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
		snprintf(shape, sizeof(shape), "%sx%u", cs_dtype_name(x->dtype), x->width);
		printf("%.12s %6" PRIu64 "  %-20.20s %12" PRIu64 " %7u %-9s %10s %6.2f  %-19s  %s\n",
		       hex, x->serial, x->name[0] ? x->name : "-", x->n_tokens, x->page_tokens, shape,
		       disk, x->disk_bytes ? (double)x->raw_bytes / (double)x->disk_bytes : 0.0,
		       when, x->sealed ? "sealed" : "open");
		total += x->disk_bytes;
	}
	human(disk, sizeof(disk), (double)total);
	printf("%zu context(s), %s on disk\n", n, disk);
	free(list);
	cs_store_close(s);
	return EX_OK;
}

/* ---- verify ---- */

/* Whether a context's manifest entry moved on: any commit changes its last use. */
static bool ctx_changed(const cs_ctx_info *a, const cs_ctx_info *b)
{
	return a->n_tokens != b->n_tokens || a->sealed != b->sealed ||
	       a->disk_bytes != b->disk_bytes || a->blob_len != b->blob_len ||
	       a->last_use_ns != b->last_use_ns || memcmp(&a->key, &b->key, sizeof(a->key));
}

/* A daemon may commit beside a read-only open: it replaces the blob file and deletes the
 * old one, or removes a whole context, after this process read the manifest. A missing file
 * is therefore damage only if the manifest still names it once read again unchanged; a
 * context gone from it was removed, and one that moved on is checked again as it is now. */
#define VERIFY_RETRIES 32

static int verify_one(cs_store **s, const char *dir, const cs_ctx_info *listed)
{
	char err[CS_ERR_LEN] = "", hex[33], size[32];
	cs_ctx_info x = *listed, now;
	cs_verify_report rep;
	int rc;

	/* the entry this store holds (an earlier context's retry may have opened it again) */
	if (cs_store_info(*s, listed->serial, &x, err))
		x = *listed;
	for (int tries = 0;; tries++) {
		rc = cs_store_verify(*s, x.serial, &rep, err);
		if (rc != -EBADMSG || !rep.missing_files)
			break;
		cs_store_close(*s);
		*s = NULL;
		rc = open_store(s, dir, true);
		if (rc)
			return rc;
		if (cs_store_info(*s, x.serial, &now, NULL)) {
			rc = -ENOENT;
			break;
		}
		if (!ctx_changed(&x, &now)) {
			rc = -EBADMSG;   /* missing from a manifest that stayed the same */
			break;
		}
		if (tries == VERIFY_RETRIES) {
			cs_key_hex(x.key, hex);
			printf("ERROR   %.12s (#%" PRIu64 "): changed %d times while being checked, "
			       "try again\n", hex, x.serial, tries + 1);
			return EX_ERR;
		}
		x = now;
	}
	cs_key_hex(x.key, hex);
	human(size, sizeof(size), (double)rep.bytes);
	if (rc == -EBADMSG) {
		printf("CORRUPT %.12s (#%" PRIu64 "): %" PRIu64 " of %" PRIu64 " records bad: %s\n",
		       hex, x.serial, rep.bad_records, rep.records, err);
		return EX_CORRUPT;
	}
	if (rc == -ENOENT) {
		/* dropped between the list and the check */
		printf("gone    %.12s (#%" PRIu64 "): removed while being checked\n", hex, x.serial);
		return EX_OK;
	}
	if (rc) {
		printf("ERROR   %.12s (#%" PRIu64 "): %s\n", hex, x.serial, err);
		return EX_ERR;
	}
	printf("ok      %.12s (#%" PRIu64 "): %" PRIu64 " records, %s\n", hex, x.serial, rep.records,
	       size);
	return EX_OK;
}

static int cmd_verify(const char *dir, const char *id)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_info *list;
	size_t n, bad = 0;
	int rc = 0, worst = EX_OK;
	cs_store *s;

	rc = open_store(&s, dir, true);
	if (rc)
		return rc;
	rc = cs_store_list(s, &list, &n, err);
	if (rc) {
		cs_store_close(s);
		return fail(EX_ERR, "%s", err);
	}
	if (id) {
		uint64_t serial;

		rc = resolve(s, id, &serial);
		for (size_t i = 0; !rc && i < n; i++)
			if (list[i].serial == serial)
				worst = verify_one(&s, dir, &list[i]);
		bad = worst != EX_OK;
		if (rc)
			worst = rc;
	} else {
		for (size_t i = 0; i < n && s; i++) {
			rc = verify_one(&s, dir, &list[i]);
			bad += rc != EX_OK;
			if (rc == EX_CORRUPT || (rc && worst == EX_OK))
				worst = rc;
		}
		printf("%zu context(s) checked, %zu with problems\n", n, bad);
	}
	free(list);
	if (s)
		cs_store_close(s);
	return worst;
}

/* ---- rm, gc ---- */

static int cmd_rm(const char *dir, const char *id)
{
	char err[CS_ERR_LEN] = "";
	uint64_t serial;
	cs_store *s;
	int rc = open_store(&s, dir, false);

	if (rc)
		return rc;
	rc = resolve(s, id, &serial);
	if (!rc && cs_store_remove(s, serial, err))
		rc = fail(EX_ERR, "%s", err);
	if (!rc)
		printf("removed #%" PRIu64 "\n", serial);
	cs_store_close(s);
	return rc;
}

/* Bytes and count of regular files in dir (but the lock, which an open creates). */
static void dir_usage(const char *dir, uint64_t *bytes, uint64_t *files)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char p[4096];

	*bytes = *files = 0;
	if (!d)
		return;
	while ((de = readdir(d))) {
		struct stat st;

		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		if (strcmp(de->d_name, "LOCK") && !stat(p, &st) && S_ISREG(st.st_mode)) {
			*bytes += (uint64_t)st.st_size;
			(*files)++;
		}
	}
	closedir(d);
}

static int cmd_gc(const char *dir, const char *budget, bool unsealed)
{
	char err[CS_ERR_LEN] = "", freed[32];
	uint64_t b0, f0, b1, f1, target = 0;
	uint32_t evicted = 0, dropped = 0;
	cs_store *s;
	int rc;

	if (budget) {
		char *end;
		double v = strtod(budget, &end);

		if (end == budget || v < 0)
			return fail(EX_USAGE, "--budget %s: not a size", budget);
		if (*end == 'K' || *end == 'k')
			v *= 1024, end++;
		else if (*end == 'M' || *end == 'm')
			v *= 1024.0 * 1024, end++;
		else if (*end == 'G' || *end == 'g')
			v *= 1024.0 * 1024 * 1024, end++;
		if (*end)
			return fail(EX_USAGE, "--budget %s: not a size (bytes, or with K, M, G)", budget);
		target = (uint64_t)v;
	}
	dir_usage(dir, &b0, &f0);
	rc = open_store(&s, dir, false);   /* the open removes what crashes left */
	if (rc)
		return rc;
	if (unsealed) {
		cs_ctx_info *list;
		size_t n;

		rc = cs_store_list(s, &list, &n, err);
		for (size_t i = 0; !rc && i < n; i++) {
			if (list[i].sealed)
				continue;
			rc = cs_store_remove(s, list[i].serial, err);
			dropped += !rc;
		}
		if (!rc)
			free(list);
	}
	if (!rc && budget)
		rc = cs_store_trim(s, target, &evicted, err);
	cs_store_close(s);
	if (rc)
		return fail(EX_ERR, "%s", err);
	dir_usage(dir, &b1, &f1);
	human(freed, sizeof(freed), b0 > b1 ? (double)(b0 - b1) : 0);
	printf("gc: %s freed, %" PRIu64 " file(s) removed, %u unsealed context(s) dropped, "
	       "%u evicted\n", freed, f0 > f1 ? f0 - f1 : 0, dropped, evicted);
	return EX_OK;
}

/* ---- bench ---- */

/* xoshiro256** seeded by splitmix64: the weights of the in-memory random model. */
struct rng {
	uint64_t s[4];
};

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rng_next(struct rng *r)
{
	uint64_t *s = r->s, res = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = s[3] << 45 | s[3] >> 19;
	return res;
}

static float rng_unit(struct rng *r)
{
	return (float)((rng_next(r) >> 40) + 1) * 0x1p-24f;
}

static float rng_normal(struct rng *r)
{
	return sqrtf(-2.0f * logf(rng_unit(r))) * cosf(6.2831853f * rng_unit(r));
}

/* A model of the official GoldFinch shape with weights drawn as gf_init documents. */
static int random_model(gf_model **m, gf_tensor_set *ts, int layers, int embd, int vocab,
			char *err)
{
	gf_config cfg;
	gf_tensor_spec *specs;
	int n_specs, rc;
	struct rng r;
	uint64_t x = 2024;

	rc = gf_config_default(&cfg, layers, embd, vocab, 3, err);
	if (rc)
		return rc;
	rc = gf_config_tensor_specs(&cfg, &specs, &n_specs);
	if (rc)
		return rc;
	for (int i = 0; i < 4; i++)
		r.s[i] = splitmix(&x);
	for (int i = 0; i < n_specs && !rc; i++) {
		const gf_tensor_spec *sp = &specs[i];
		size_t n = 1;
		float *d, fan = (float)sp->shape[sp->n_dims - 1];

		for (int k = 0; k < sp->n_dims; k++)
			n *= (size_t)sp->shape[k];
		d = malloc(n * sizeof(float));
		if (!d) {
			rc = -ENOMEM;
			break;
		}
		for (size_t k = 0; k < n; k++) {
			switch (sp->init) {
			case GF_INIT_EMB: d[k] = rng_normal(&r); break;
			case GF_INIT_LINEAR: d[k] = rng_normal(&r) / sqrtf(fan); break;
			case GF_INIT_LORA_W1: d[k] = rng_normal(&r) / sqrtf((float)embd); break;
			case GF_INIT_LORA_W2:
			case GF_INIT_FAAAA: d[k] = 0.1f * rng_normal(&r); break;
			case GF_INIT_LN_W: d[k] = 1.0f + 0.1f * rng_normal(&r); break;
			case GF_INIT_LN_B: d[k] = 0.1f * rng_normal(&r); break;
			case GF_INIT_MAA: d[k] = rng_unit(&r); break;
			case GF_INIT_DECAY: d[k] = -5.0f + 4.5f * rng_unit(&r); break;
			}
		}
		rc = gf_tensors_add_owned(ts, sp->name, GF_DTYPE_F32, sp->n_dims, sp->shape, d);
		if (rc)
			free(d);
	}
	free(specs);
	if (rc) {
		snprintf(err, GF_ERR_LEN, "random model: out of memory");
		return rc;
	}
	return gf_model_from_tensors(m, &cfg, ts, err);
}

/* Raw sequential speed of the disk under dir: O_DIRECT, 1 MiB requests, one at a time (as
 * dd with oflag=direct/iflag=direct). Falls back to buffered + fsync + fadvise where the
 * filesystem refuses O_DIRECT. */
static int raw_disk(const char *dir, uint64_t bytes, double *wr, double *rd, bool *direct)
{
	char path[4096];
	size_t blk = 1 << 20;
	uint8_t *buf = NULL;
	double t0;
	int fd;

	snprintf(path, sizeof(path), "%s/bench-raw.tmp", dir);
	if (posix_memalign((void **)&buf, 4096, blk))
		return -ENOMEM;
	for (size_t i = 0; i < blk; i++)
		buf[i] = (uint8_t)(i * 2654435761u >> 13);
	*direct = true;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
	if (fd < 0 && errno == EINVAL) {
		*direct = false;
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	}
	if (fd < 0)
		goto fail;
	t0 = now();
	for (uint64_t at = 0; at < bytes; at += blk)
		if (pwrite(fd, buf, blk, (off_t)at) != (ssize_t)blk)
			goto fail_fd;
	if (fsync(fd))
		goto fail_fd;
	*wr = (double)bytes / (now() - t0) / 1e6;
	close(fd);
	fd = open(path, O_RDONLY | (*direct ? O_DIRECT : 0));
	if (fd < 0)
		goto fail;
	if (!*direct)
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	t0 = now();
	for (uint64_t at = 0; at < bytes; at += blk)
		if (pread(fd, buf, blk, (off_t)at) != (ssize_t)blk)
			goto fail_fd;
	*rd = (double)bytes / (now() - t0) / 1e6;
	close(fd);
	unlink(path);
	free(buf);
	return 0;
fail_fd:
	close(fd);
fail:
	unlink(path);
	free(buf);
	return -errno;
}

struct bench_data {
	uint16_t *rows;     /* [n_sample][ck] f16 c rows from the forward */
	uint32_t *tok;      /* [n_sample] */
	int64_t n_sample;
	int ck;
};

/* The c rows of a real forward over n random tokens, rounded to f16. */
static int forward_sample(const char *model_path, int64_t n, struct bench_data *bd, char *err)
{
	gf_tensor_set ts = { 0 };
	gf_model *m = NULL;
	gf_workspace *ws = NULL;
	gf_state st = { 0 };
	float *c = NULL;
	int32_t *tok = NULL;
	int chunk = 128, rc;
	struct rng r = { { 1, 2, 3, 4 } };
	double t0 = now();

	rc = model_path ? gf_model_load(&m, model_path, err)
			: random_model(&m, &ts, 12, 768, 65536, err);
	if (rc)
		goto out;
	printf("model: %s, %d layers, C %d, Ck %d (loaded in %.1f s)\n",
	       model_path ? model_path : "random in memory (gf-convert --random shape)",
	       m->cfg.n_layer, m->cfg.n_embd, m->cfg.ckv_dim, now() - t0);
	bd->ck = m->cfg.ckv_dim;
	rc = gf_workspace_init(&ws, m, chunk);
	if (!rc)
		rc = gf_state_init(&st, &m->cfg);
	c = malloc((size_t)n * bd->ck * sizeof(float));
	tok = malloc((size_t)n * sizeof(*tok));
	bd->rows = malloc((size_t)n * bd->ck * 2);
	bd->tok = malloc((size_t)n * 4);
	if (rc || !c || !tok || !bd->rows || !bd->tok) {
		snprintf(err, GF_ERR_LEN, "forward: out of memory");
		rc = rc ? rc : -ENOMEM;
		goto out;
	}
	for (int64_t i = 0; i < n; i++)
		tok[i] = (int32_t)(rng_next(&r) % (uint64_t)m->cfg.vocab_size);
	t0 = now();
	for (int64_t at = 0; at < n && !rc; at += chunk) {
		int k = n - at < chunk ? (int)(n - at) : chunk;

		rc = gf_finch_chunk(m, ws, &st, tok + at, k, NULL, NULL, c + at * bd->ck);
	}
	if (rc) {
		snprintf(err, GF_ERR_LEN, "forward: gf_finch_chunk failed (%d)", rc);
		goto out;
	}
	printf("forward: %" PRId64 " tokens through the Finch stage in %.1f s\n", n, now() - t0);
	for (int64_t i = 0; i < n * bd->ck; i++)
		bd->rows[i] = gf_f32_to_f16(c[i]);
	for (int64_t i = 0; i < n; i++)
		bd->tok[i] = (uint32_t)tok[i];
	bd->n_sample = n;
out:
	free(c);
	free(tok);
	gf_state_free(&st);
	gf_workspace_free(ws);
	gf_model_free(m);
	gf_tensors_free(&ts);
	return rc;
}

struct walk {
	cs_store *s;
	uint64_t serial, first, end;
	int rc;
	char err[CS_ERR_LEN];
	double sum;   /* touches the data so nothing is optimised away */
};

static void *walk_pages(void *arg)
{
	struct walk *wk = arg;
	cs_reader *r;

	wk->rc = cs_reader_open(wk->s, wk->serial, &r, wk->err);
	for (uint64_t p = wk->first; !wk->rc && p < wk->end; p++) {
		const cs_page *pg;

		wk->rc = cs_reader_page(r, p, &pg, wk->err);
		if (wk->rc)
			break;
		wk->sum += ((const uint16_t *)pg->rows)[0] + pg->tokens[pg->n_tokens - 1];
		cs_page_release(pg);
	}
	if (r)
		cs_reader_close(r);
	return NULL;
}

struct bench_run {
	double write_mbs, read_mbs, read_mbs_mt, ratio, rows_ratio;
	uint64_t disk_bytes;
};

/* Writes n_tok tokens of sample windows into a new context, then reads it back cold. */
static int bench_store(const char *sdir, const struct bench_data *bd, uint64_t n_tok,
		       uint32_t page, bool shuffle, int threads, struct bench_run *out)
{
	char err[CS_ERR_LEN] = "";
	cs_ctx_params cp = { .model_id = 1, .dtype = CS_DTYPE_F16, .width = (uint32_t)bd->ck,
			     .page_tokens = page, .no_shuffle = !shuffle };
	double rows_bytes = (double)n_tok * bd->ck * 2, t0;
	cs_ctx_info info;
	cs_config cfg;
	cs_store *s;
	cs_writer *w;
	uint64_t serial;
	int rc;

	cs_config_defaults(&cfg);
	cfg.ram_cache_bytes = 64ull << 20;
	cfg.io_depth = 16;
	cfg.readahead_pages = 12;
	rc = cs_store_open(&s, sdir, &cfg, err);
	if (rc)
		return fail(EX_ERR, "%s", err);
	rc = cs_writer_begin(s, &cp, &w, err);
	if (rc)
		goto fail_store;
	serial = cs_writer_serial(w);
	t0 = now();
	/* each page is a window of the forward's output at a page-dependent place: real rows,
	 * no two pages alike, nothing LZ4 could find across pages */
	for (uint64_t at = 0; at < n_tok && !rc; at += page) {
		uint64_t k = n_tok - at < page ? n_tok - at : page;
		uint64_t span = (uint64_t)bd->n_sample > k ? (uint64_t)bd->n_sample - k : 1;
		uint64_t from = (at / page * 7919) % span;

		rc = cs_writer_append(w, bd->rows + from * bd->ck, bd->tok + from, k, err);
	}
	if (!rc)
		rc = cs_writer_commit(w, NULL, 0, CS_COMMIT_SEAL, err);
	out->write_mbs = rows_bytes / (now() - t0) / 1e6;
	cs_writer_free(w);
	if (rc)
		goto fail_store;
	rc = cs_store_info(s, serial, &info, err);
	if (rc)
		goto fail_store;
	out->disk_bytes = info.disk_bytes;
	out->ratio = (double)info.raw_bytes / (double)info.disk_bytes;
	out->rows_ratio = rows_bytes / (double)info.disk_bytes;
	cs_store_close(s);

	/* cold read: a fresh store object (empty page cache); O_DIRECT skips the OS cache, and
	 * for buffered stores the files are dropped from it first */
	{
		char p[4096];
		int fd;
		DIR *d = opendir(sdir);
		struct dirent *de;

		while (d && (de = readdir(d))) {
			snprintf(p, sizeof(p), "%s/%s", sdir, de->d_name);
			fd = open(p, O_RDONLY);
			if (fd >= 0) {
				fdatasync(fd);
				posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
				close(fd);
			}
		}
		if (d)
			closedir(d);
	}
	rc = cs_store_open(&s, sdir, &cfg, err);
	if (rc)
		return fail(EX_ERR, "%s", err);
	for (int pass = 0; pass < 2; pass++) {
		int nt = pass ? threads : 1;
		struct walk wk[16];
		pthread_t th[16];

		if (pass) {
			/* a fresh store again, for a cold cache */
			cs_store_close(s);
			rc = cs_store_open(&s, sdir, &cfg, err);
			if (rc)
				return fail(EX_ERR, "%s", err);
		}
		t0 = now();
		for (int i = 0; i < nt; i++) {
			wk[i] = (struct walk){ .s = s, .serial = serial,
					       .first = info.n_pages * (uint64_t)i / (uint64_t)nt,
					       .end = info.n_pages * (uint64_t)(i + 1) / (uint64_t)nt };
			pthread_create(&th[i], NULL, walk_pages, &wk[i]);
		}
		for (int i = 0; i < nt; i++) {
			pthread_join(th[i], NULL);
			if (wk[i].rc && !rc) {
				rc = wk[i].rc;
				snprintf(err, sizeof(err), "%s", wk[i].err);
			}
		}
		if (rc)
			goto fail_store;
		*(pass ? &out->read_mbs_mt : &out->read_mbs) = rows_bytes / (now() - t0) / 1e6;
	}
	rc = cs_store_remove(s, serial, err);
	if (rc)
		goto fail_store;
	cs_store_close(s);
	return 0;
fail_store:
	cs_store_close(s);
	return fail(EX_ERR, "bench: %s", err);
}

static int cmd_bench(const char *dir, const char *model, int64_t tokens, int64_t mb, long page,
		     int threads, bool keep)
{
	char err[GF_ERR_LEN] = "", sdir[4096], disk[32];
	struct bench_data bd = { 0 };
	struct bench_run on = { 0 }, off = { 0 };
	double raw_w = 0, raw_r = 0;
	uint64_t n_tok, raw_bytes = (uint64_t)mb << 20;
	bool direct = false;
	cs_store *probe;
	int rc;

	if (mkdir(dir, 0755) && errno != EEXIST)
		return fail(EX_ERR, "%s: %s", dir, strerror(errno));
	snprintf(sdir, sizeof(sdir), "%s/bench-store", dir);
	rc = raw_disk(dir, raw_bytes, &raw_w, &raw_r, &direct);
	if (rc)
		return fail(EX_ERR, "%s: raw disk test: %s", dir, strerror(-rc));
	printf("disk: raw sequential %s, 1 MiB requests, %" PRId64 " MiB: write %.0f MB/s, "
	       "read %.0f MB/s\n", direct ? "O_DIRECT" : "buffered (no O_DIRECT here)", mb, raw_w,
	       raw_r);

	rc = forward_sample(model, tokens, &bd, err);
	if (rc)
		return fail(EX_ERR, "%s", err);
	if (page > bd.n_sample)
		page = (long)bd.n_sample;
	n_tok = raw_bytes / ((uint64_t)bd.ck * 2);
	rc = open_store(&probe, sdir, false);
	if (rc)
		return rc;
	printf("store: %s, %s, %" PRIu64 " tokens of f16 c rows (%d wide) in pages of %ld\n",
	       cs_store_backend_name(probe), cs_store_direct(probe) ? "O_DIRECT" : "buffered",
	       n_tok, bd.ck, page);
	cs_store_close(probe);

	rc = bench_store(sdir, &bd, n_tok, (uint32_t)page, true, threads, &on);
	if (!rc)
		rc = bench_store(sdir, &bd, n_tok, (uint32_t)page, false, threads, &off);
	if (rc)
		goto out;
	human(disk, sizeof(disk), (double)on.disk_bytes);
	printf("shuffle+LZ4: write %.0f MB/s, read %.0f MB/s (1 reader), %.0f MB/s (%d readers), "
	       "ratio %.3f (c rows alone %.3f), %s on disk\n", on.write_mbs, on.read_mbs,
	       on.read_mbs_mt, threads, on.ratio, on.rows_ratio, disk);
	human(disk, sizeof(disk), (double)off.disk_bytes);
	printf("LZ4 only:    write %.0f MB/s, read %.0f MB/s (1 reader), %.0f MB/s (%d readers), "
	       "ratio %.3f (c rows alone %.3f), %s on disk\n", off.write_mbs, off.read_mbs,
	       off.read_mbs_mt, threads, off.ratio, off.rows_ratio, disk);
	printf("read of a cached context: %.0f%% of the raw disk read speed (1 reader), %.0f%% "
	       "(%d readers); MB/s are of raw c data\n", 100 * on.read_mbs / raw_r,
	       100 * on.read_mbs_mt / raw_r, threads);
	printf("{\"raw_write_mbs\":%.1f,\"raw_read_mbs\":%.1f,\"write_mbs\":%.1f,\"read_mbs\":%.1f,"
	       "\"read_mbs_mt\":%.1f,\"ratio\":%.4f,\"ratio_noshuffle\":%.4f,\"rows_ratio\":%.4f,"
	       "\"rows_ratio_noshuffle\":%.4f,\"tokens\":%" PRIu64 ",\"ck\":%d,\"page\":%ld}\n",
	       raw_w, raw_r, on.write_mbs, on.read_mbs, on.read_mbs_mt, on.ratio, off.ratio,
	       on.rows_ratio, off.rows_ratio, n_tok, bd.ck, page);
out:
	if (!keep) {
		DIR *d = opendir(sdir);
		struct dirent *de;
		char p[4096 + 256];

		while (d && (de = readdir(d))) {
			snprintf(p, sizeof(p), "%s/%s", sdir, de->d_name);
			unlink(p);
		}
		if (d)
			closedir(d);
		rmdir(sdir);
	}
	free(bd.rows);
	free(bd.tok);
	return rc;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	const char *dir = NULL, *cmd = NULL, *arg = NULL, *model = NULL, *budget = NULL;
	long tokens = 2048, mb = 512, page = 1024, threads = 2;
	bool unsealed = false, keep = false;

	if (gf_version_asked(argc, argv, "gf-cache"))
		return 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool has = i + 1 < argc;

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return EX_OK;
		} else if (!strcmp(a, "--dir") && has) {
			dir = argv[++i];
		} else if (!strcmp(a, "--model") && has) {
			model = argv[++i];
		} else if (!strcmp(a, "--budget") && has) {
			budget = argv[++i];
		} else if (!strcmp(a, "--unsealed")) {
			unsealed = true;
		} else if (!strcmp(a, "--keep")) {
			keep = true;
		} else if (!strcmp(a, "--tokens") && has) {
			if (!parse_long(argv[++i], 1, 1 << 24, &tokens))
				return fail(EX_USAGE, "--tokens %s: expected 1..16777216", argv[i]);
		} else if (!strcmp(a, "--mb") && has) {
			if (!parse_long(argv[++i], 1, 1 << 20, &mb))
				return fail(EX_USAGE, "--mb %s: expected 1..1048576", argv[i]);
		} else if (!strcmp(a, "--page") && has) {
			if (!parse_long(argv[++i], 1, 1 << 20, &page))
				return fail(EX_USAGE, "--page %s: expected 1..1048576", argv[i]);
		} else if (!strcmp(a, "--threads") && has) {
			if (!parse_long(argv[++i], 1, 16, &threads))
				return fail(EX_USAGE, "--threads %s: expected 1..16", argv[i]);
		} else if (a[0] == '-') {
			usage(stderr);
			return fail(EX_USAGE, "unknown option %s", a);
		} else if (!cmd) {
			cmd = a;
		} else if (!arg) {
			arg = a;
		} else {
			return fail(EX_USAGE, "unexpected argument %s", a);
		}
	}
	if (!cmd) {
		usage(stderr);
		return EX_USAGE;
	}
	if (!dir)
		return fail(EX_USAGE, "%s: --dir D is required", cmd);
	if (!strcmp(cmd, "ls") && !arg)
		return cmd_ls(dir);
	if (!strcmp(cmd, "verify"))
		return cmd_verify(dir, arg);
	if (!strcmp(cmd, "rm") && arg)
		return cmd_rm(dir, arg);
	if (!strcmp(cmd, "gc") && !arg)
		return cmd_gc(dir, budget, unsealed);
	if (!strcmp(cmd, "bench") && !arg) {
		gf_blas_prefer_avx512(argv);
		return cmd_bench(dir, model, tokens, mb, page, (int)threads, keep);
	}
	usage(stderr);
	return fail(EX_USAGE, "%s: bad command or arguments", cmd);
}
