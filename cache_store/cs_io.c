/*
 * cs_io.c — the one place that decides how the store talks to the disk: io_uring or
 * pread/pwrite, O_DIRECT or buffered, and where fault injection hooks in.
 *
 * io_uring is used when io_uring_queue_init works (a kernel or a sandbox may refuse it);
 * the pread/pwrite backend runs each request at submission behind the same queue interface,
 * so every caller and every test runs unchanged on both. O_DIRECT is probed once per store
 * with an aligned write and read (tmpfs and some overlay filesystems refuse it); page
 * records are always CS_ALIGN-aligned so one on-disk format serves both modes.
 */
#include "cs_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void cs_errf(char *err, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	va_start(ap, fmt);
	vsnprintf(err, CS_ERR_LEN, fmt, ap);
	va_end(ap);
	/* one line, always */
	for (char *p = err; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

int64_t cs_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t cs_round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

void *cs_io_alloc(size_t len)
{
	void *p = NULL;

	if (len == 0)
		len = CS_ALIGN;
	if (posix_memalign(&p, CS_ALIGN, cs_round_up(len, CS_ALIGN)))
		return NULL;
	memset(p, 0, cs_round_up(len, CS_ALIGN));
	return p;
}

/* ---- backend and O_DIRECT selection ---- */

static int probe_uring(void)
{
	struct io_uring ring;
	int rc = io_uring_queue_init(2, &ring, 0);

	if (rc == 0)
		io_uring_queue_exit(&ring);
	return rc;
}

/* 1 if O_DIRECT works in the directory, 0 if the filesystem refuses it, -errno otherwise. */
static int probe_direct(int dirfd, bool rdonly)
{
	static const char probe[] = ".direct-probe";
	uint8_t *buf = cs_io_alloc(CS_ALIGN);
	int ok = 0, fd;

	if (!buf)
		return -ENOMEM;
	if (rdonly) {
		/* read-only: the manifest must be readable with O_DIRECT */
		fd = openat(dirfd, CS_MANIFEST, O_RDONLY | O_DIRECT | O_CLOEXEC);
		if (fd >= 0) {
			ok = pread(fd, buf, CS_ALIGN, 0) >= 0;
			close(fd);
		}
		free(buf);
		return ok;
	}
	fd = openat(dirfd, probe, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0644);
	if (fd < 0) {
		free(buf);
		return errno == EINVAL ? 0 : -errno;
	}
	memset(buf, 0x5a, CS_ALIGN);
	if (pwrite(fd, buf, CS_ALIGN, 0) == (ssize_t)CS_ALIGN &&
	    pread(fd, buf, CS_ALIGN, 0) == (ssize_t)CS_ALIGN)
		ok = 1;
	close(fd);
	unlinkat(dirfd, probe, 0);
	free(buf);
	return ok;
}

int cs_io_setup(struct cs_io *io, const cs_config *cfg, const char *dir, int dirfd, bool rdonly,
		char *err)
{
	cs_backend be = cfg->backend;
	cs_direct dm = cfg->direct;
	const char *env;
	int rc;

	memset(io, 0, sizeof(*io));
	io->fault = cfg->fault;
	io->fault_arg = cfg->fault_arg;
	io->fault_ops = cfg->fault_ops ? cfg->fault_ops : CS_FAULT_OPS_DEFAULT;

	if (be == CS_IO_AUTO && (env = getenv("GF_CS_IO")) && *env) {
		if (!strcmp(env, "sync") || !strcmp(env, "pread"))
			be = CS_IO_SYNC;
		else if (!strcmp(env, "uring") || !strcmp(env, "io_uring"))
			be = CS_IO_URING;
		else {
			cs_errf(err, "GF_CS_IO=%s: expected io_uring or sync", env);
			return -EINVAL;
		}
	}
	if (be == CS_IO_AUTO || be == CS_IO_URING) {
		rc = probe_uring();
		if (rc < 0 && be == CS_IO_URING) {
			cs_errf(err, "%s: io_uring_queue_init: %s", dir, strerror(-rc));
			return rc;
		}
		io->uring_forced = be == CS_IO_URING;
		be = rc < 0 ? CS_IO_SYNC : CS_IO_URING;
	} else if (be != CS_IO_SYNC) {
		cs_errf(err, "%s: unknown I/O backend %d", dir, (int)be);
		return -EINVAL;
	}
	io->backend = be;

	if (dm == CS_DIRECT_AUTO && (env = getenv("GF_CS_DIRECT")) && *env)
		dm = strcmp(env, "0") ? CS_DIRECT_ON : CS_DIRECT_OFF;
	if (dm == CS_DIRECT_OFF) {
		io->direct = false;
		return 0;
	}
	rc = probe_direct(dirfd, rdonly);
	if (rc < 0) {
		cs_errf(err, "%s: O_DIRECT probe: %s", dir, strerror(-rc));
		return rc;
	}
	if (!rc && dm == CS_DIRECT_ON) {
		cs_errf(err, "%s: the filesystem refuses O_DIRECT", dir);
		return -EINVAL;
	}
	io->direct = rc == 1;
	return 0;
}

int cs_io_open_pages(const struct cs_io *io, int dirfd, const char *name, int flags)
{
	int fd = openat(dirfd, name, flags | O_CLOEXEC | (io->direct ? O_DIRECT : 0), 0644);

	return fd < 0 ? -errno : fd;
}

/* ---- fault injection and the commit-path primitives ---- */

int cs_io_fault(struct cs_io *io, cs_fault_op op, const char *path)
{
#ifdef CS_FAULT_INJECTION
	if (io->fault && (io->fault_ops & (1u << op))) {
		uint64_t id = __atomic_fetch_add(&io->fault_next, 1, __ATOMIC_RELAXED);

		if (io->fault(io->fault_arg, id, op, path))
			return -EIO;
	}
#else
	(void)io;
	(void)op;
	(void)path;
#endif
	return 0;
}

static int pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* What a write that fails part-way leaves: its first half (whole blocks under O_DIRECT). */
static void torn_write(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	size_t half = len / 2;
	int fl = fcntl(fd, F_GETFL);

	if (fl >= 0 && (fl & O_DIRECT))
		half = half / CS_ALIGN * CS_ALIGN;
	if (half)
		(void)pwrite_all(fd, buf, half, off);
}

int cs_io_pwrite(struct cs_io *io, int fd, const void *buf, size_t len, uint64_t off,
		 const char *path)
{
	int rc = cs_io_fault(io, CS_FAULT_WRITE, path);

	if (rc) {
		torn_write(fd, buf, len, off);
		return rc;
	}
	return pwrite_all(fd, buf, len, off);
}

int cs_io_fsync(struct cs_io *io, int fd, const char *path)
{
	int rc = cs_io_fault(io, CS_FAULT_FSYNC, path);

	if (rc)
		return rc;
	return fsync(fd) ? -errno : 0;
}

int cs_io_rename(struct cs_io *io, int dirfd, const char *from, const char *to)
{
	int rc = cs_io_fault(io, CS_FAULT_RENAME, to);

	if (rc)
		return rc;
	return renameat(dirfd, from, dirfd, to) ? -errno : 0;
}

ssize_t cs_io_pread(int fd, void *buf, size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + got, len - got, (off_t)(off + got));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

ssize_t cs_io_read(struct cs_io *io, int fd, void *buf, size_t len, uint64_t off,
		   const char *path)
{
	int rc = cs_io_fault(io, CS_FAULT_READ, path);

	return rc ? rc : cs_io_pread(fd, buf, len, off);
}

/* ---- request queue ---- */

int cs_ioq_init(struct cs_ioq *q, struct cs_io *io, uint32_t depth, char *err)
{
	int rc;

	memset(q, 0, sizeof(*q));
	q->io = io;
	q->depth = depth ? depth : 1;
	q->slots = calloc(q->depth, sizeof(*q->slots));
	if (!q->slots) {
		cs_errf(err, "out of memory for %u I/O slots", q->depth);
		return -ENOMEM;
	}
	if (io->backend == CS_IO_URING) {
		rc = io_uring_queue_init(q->depth, &q->ring, 0);
		if (rc < 0 && io->uring_forced) {
			cs_errf(err, "io_uring_queue_init(%u): %s", q->depth, strerror(-rc));
			free(q->slots);
			q->slots = NULL;
			return rc;
		}
		/* a ring can fail later than the probe (locked-memory or ring limits): this
		 * queue then runs on pread/pwrite, which behave the same */
		q->uring = rc == 0;
	}
	return 0;
}

void cs_ioq_exit(struct cs_ioq *q)
{
	uint64_t tag;
	int res;

	if (!q->slots)
		return;
	/* the kernel may still write into caller buffers: let every request finish first */
	while (q->busy && cs_ioq_wait(q, &tag, &res) == 0)
		;
	if (q->uring)
		io_uring_queue_exit(&q->ring);
	free(q->slots);
	q->slots = NULL;
}

static struct cs_ioslot *slot_get(struct cs_ioq *q)
{
	for (uint32_t i = 0; i < q->depth; i++)
		if (q->slots[i].state == 0)
			return &q->slots[i];
	return NULL;
}

static void slot_run_sync(struct cs_ioslot *sl)
{
	if (sl->op == 0) {
		ssize_t n = cs_io_pread(sl->fd, sl->buf, sl->len, sl->off);

		sl->res = n < 0 ? (int)n : (int)n;
	} else {
		int rc = pwrite_all(sl->fd, sl->buf, sl->len, sl->off);

		sl->res = rc ? rc : (int)sl->len;
	}
	sl->state = 2;
}

static int slot_prep(struct cs_ioq *q, struct cs_ioslot *sl)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);

	if (!sqe) {
		/* the ring has depth entries and we never queue more: submit and retry once */
		int rc = io_uring_submit(&q->ring);

		if (rc < 0)
			return rc;
		q->unsubmitted = 0;
		sqe = io_uring_get_sqe(&q->ring);
		if (!sqe)
			return -EBUSY;
	}
	if (sl->op == 0)
		io_uring_prep_read(sqe, sl->fd, sl->buf + sl->done, (unsigned)(sl->len - sl->done),
				   sl->off + sl->done);
	else
		io_uring_prep_write(sqe, sl->fd, sl->buf + sl->done, (unsigned)(sl->len - sl->done),
				    sl->off + sl->done);
	io_uring_sqe_set_data64(sqe, (uint64_t)(sl - q->slots));
	q->unsubmitted++;
	return 0;
}

static int queue_req(struct cs_ioq *q, int op, int fd, void *buf, size_t len, uint64_t off,
		     uint64_t tag, bool failed)
{
	struct cs_ioslot *sl = slot_get(q);
	int rc;

	if (!sl)
		return -EBUSY;
	if (len > (size_t)INT32_MAX)
		return -EINVAL;
	*sl = (struct cs_ioslot){ .state = 1, .op = op, .fd = fd, .buf = buf, .len = len,
				  .off = off, .tag = tag };
	q->busy++;
	if (failed) {
		sl->res = -EIO;
		sl->state = 2;
		return 0;
	}
	if (!q->uring) {
		slot_run_sync(sl);
		return 0;
	}
	rc = slot_prep(q, sl);
	if (rc) {
		sl->state = 0;
		q->busy--;
	}
	return rc;
}

int cs_ioq_read(struct cs_ioq *q, int fd, void *buf, size_t len, uint64_t off, uint64_t tag,
		const char *path)
{
	if (cs_ioq_full(q))
		return -EBUSY;
	return queue_req(q, 0, fd, buf, len, off, tag, cs_io_fault(q->io, CS_FAULT_READ, path) != 0);
}

int cs_ioq_write(struct cs_ioq *q, int fd, const void *buf, size_t len, uint64_t off,
		 uint64_t tag, const char *path)
{
	bool failed = false;

	if (cs_ioq_full(q))
		return -EBUSY;
	if (cs_io_fault(q->io, CS_FAULT_WRITE, path)) {
		torn_write(fd, buf, len, off);
		failed = true;
	}
	return queue_req(q, 1, fd, (void *)buf, len, off, tag, failed);
}

int cs_ioq_submit(struct cs_ioq *q)
{
	int rc;

	if (!q->uring || !q->unsubmitted)
		return 0;
	rc = io_uring_submit(&q->ring);
	if (rc < 0)
		return rc;
	q->unsubmitted = 0;
	return 0;
}

static void slot_finish(struct cs_ioq *q, struct cs_ioslot *sl, uint64_t *tag, int *res)
{
	*tag = sl->tag;
	*res = sl->res;
	sl->state = 0;
	q->busy--;
}

int cs_ioq_wait(struct cs_ioq *q, uint64_t *tag, int *res)
{
	struct io_uring_cqe *cqe;
	struct cs_ioslot *sl;
	int rc;

	for (;;) {
		bool inflight = false;

		for (uint32_t i = 0; i < q->depth; i++) {
			if (q->slots[i].state == 2) {
				slot_finish(q, &q->slots[i], tag, res);
				return 0;
			}
			if (q->slots[i].state == 1)
				inflight = true;
		}
		if (!inflight || !q->uring)
			return -EAGAIN;
		rc = cs_ioq_submit(q);
		if (rc < 0)
			return rc;
		do {
			rc = io_uring_wait_cqe(&q->ring, &cqe);
		} while (rc == -EINTR);
		if (rc < 0)
			return rc;
		sl = &q->slots[io_uring_cqe_get_data64(cqe)];
		rc = cqe->res;
		io_uring_cqe_seen(&q->ring, cqe);
		if (rc == -EINTR || rc == -EAGAIN) {
			rc = slot_prep(q, sl);
			if (rc) {
				sl->res = rc;
				sl->state = 2;
			}
			continue;
		}
		if (rc < 0) {
			sl->res = rc;
			sl->state = 2;
		} else if (rc == 0) {
			/* end of file: a short read; a write that makes no progress failed */
			sl->res = sl->op == 0 ? (int)sl->done : -EIO;
			sl->state = 2;
		} else {
			sl->done += (size_t)rc;
			if (sl->done == sl->len) {
				sl->res = (int)sl->len;
				sl->state = 2;
			} else {
				rc = slot_prep(q, sl);
				if (rc) {
					sl->res = rc;
					sl->state = 2;
				}
			}
		}
	}
}
