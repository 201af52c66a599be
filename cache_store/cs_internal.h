/*
 * cs_internal.h — what the files of cache_store/ share. Not installed, not for users.
 * The on-disk layouts below are the format of README.md; change both together.
 */
#ifndef CS_INTERNAL_H
#define CS_INTERNAL_H

#include "cache_store.h"

#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/types.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the cache store's format is little-endian and written with memcpy: port the codec first"
#endif

/* ---- format constants (README.md "Format") ---- */
#define CS_ALIGN 4096u          /* page records start and end on this boundary */
#define CS_PAGE_HDR 64u
#define CS_IDX_ENTRY 32u
#define CS_BLOB_HDR 48u
#define CS_MAN_HDR 64u
#define CS_MAN_ENTRY 256u       /* entry size written by this minor version */
#define CS_MAN_ENTRY_MIN 256u   /* smallest entry size a 1.x manifest may declare */
#define CS_MAX_WIDTH 65536u
#define CS_MAX_PAGE_TOKENS 1048576u
#define CS_MAX_RAW_PAGE (256u << 20)  /* rows of one page, uncompressed */

#define CS_PAGE_SHUFFLED 0x01u
#define CS_PAGE_ROWS_RAW 0x02u   /* rows section stored uncompressed (LZ4 did not help) */
#define CS_PAGE_TOK_RAW 0x04u

#define CS_CTX_SEALED 0x01u
#define CS_CTX_SHUFFLE 0x02u

#define CS_MANIFEST "MANIFEST"
#define CS_MANIFEST_TMP "MANIFEST.tmp"
#define CS_LOCKFILE "LOCK"

/* ---- errors ---- */
void cs_errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "3fa9c0d2e1b4 (#7)": how messages name a context. */
void cs_ctx_label(char out[40], cs_key key, uint64_t serial);
int64_t cs_now_ns(void);
uint64_t cs_round_up(uint64_t v, uint64_t a);

/* ---- little-endian field access (host is little-endian, see above) ---- */
static inline void cs_put16(uint8_t *p, uint16_t v) { __builtin_memcpy(p, &v, 2); }
static inline void cs_put32(uint8_t *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void cs_put64(uint8_t *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }

static inline uint16_t cs_get16(const uint8_t *p)
{
	uint16_t v;

	__builtin_memcpy(&v, p, 2);
	return v;
}

static inline uint32_t cs_get32(const uint8_t *p)
{
	uint32_t v;

	__builtin_memcpy(&v, p, 4);
	return v;
}

static inline uint64_t cs_get64(const uint8_t *p)
{
	uint64_t v;

	__builtin_memcpy(&v, p, 8);
	return v;
}

/* ---- I/O (cs_io.c: the one place that picks io_uring or pread/pwrite, and O_DIRECT) ---- */
struct cs_io {
	cs_backend backend;      /* resolved: CS_IO_URING or CS_IO_SYNC */
	bool uring_forced;       /* asked for io_uring explicitly: no silent fallback */
	bool direct;             /* page files opened with O_DIRECT */
	cs_fault_fn fault;
	void *fault_arg;
	uint32_t fault_ops;      /* 1 << op: the ops numbered (CS_FAULT_OPS_DEFAULT when 0) */
	uint64_t fault_next;     /* atomically incremented */
};

/* Resolves backend and direct mode for a store in dir (probing both once). */
int cs_io_setup(struct cs_io *io, const cs_config *cfg, const char *dir, int dirfd, bool rdonly,
		char *err);
/* Opens a page file (O_DIRECT when io->direct). flags: O_RDONLY or O_RDWR|O_CREAT... */
int cs_io_open_pages(const struct cs_io *io, int dirfd, const char *name, int flags);
/* 0 or -errno; the fault check is made first (see cs_fault_fn). */
int cs_io_fault(struct cs_io *io, cs_fault_op op, const char *path);
int cs_io_pwrite(struct cs_io *io, int fd, const void *buf, size_t len, uint64_t off,
		 const char *path);
int cs_io_fsync(struct cs_io *io, int fd, const char *path);
int cs_io_rename(struct cs_io *io, int dirfd, const char *from, const char *to);
/* Reads up to len bytes; returns the count (short only at end of file) or -errno. */
ssize_t cs_io_pread(int fd, void *buf, size_t len, uint64_t off);
/* cs_io_pread behind a fault check (CS_FAULT_READ): what the store's own files go through. */
ssize_t cs_io_read(struct cs_io *io, int fd, void *buf, size_t len, uint64_t off,
		   const char *path);
void *cs_io_alloc(size_t len);   /* CS_ALIGN-aligned, zeroed; free() it */

/* A queue of reads and writes with several in flight (io_uring), or run one by one at
 * submission (pread/pwrite) with the same interface. One thread at a time. */
struct cs_ioslot {
	int state;          /* 0 free, 1 queued/in flight, 2 done */
	int op;             /* 0 read, 1 write */
	int fd;
	uint8_t *buf;
	size_t len, done;
	uint64_t off;
	uint64_t tag;
	int res;            /* bytes transferred or -errno, when done */
};

struct cs_ioq {
	struct cs_io *io;
	bool uring;
	struct io_uring ring;
	uint32_t depth;
	uint32_t busy;       /* slots not free */
	uint32_t unsubmitted;
	struct cs_ioslot *slots;
};

int cs_ioq_init(struct cs_ioq *q, struct cs_io *io, uint32_t depth, char *err);
void cs_ioq_exit(struct cs_ioq *q);
static inline bool cs_ioq_full(const struct cs_ioq *q) { return q->busy == q->depth; }
static inline uint32_t cs_ioq_busy(const struct cs_ioq *q) { return q->busy; }
/* Queue a read/write (a slot must be free: -EBUSY otherwise). Both pass the fault check; a
 * failed check completes the request with -EIO (a write after writing half of it). */
int cs_ioq_read(struct cs_ioq *q, int fd, void *buf, size_t len, uint64_t off, uint64_t tag,
		const char *path);
int cs_ioq_write(struct cs_ioq *q, int fd, const void *buf, size_t len, uint64_t off,
		 uint64_t tag, const char *path);
/* Sends queued requests to the kernel. */
int cs_ioq_submit(struct cs_ioq *q);
/* Waits for one request to finish: its tag, and its result (bytes, short only at end of file,
 * or -errno). -EAGAIN when nothing is queued or in flight. */
int cs_ioq_wait(struct cs_ioq *q, uint64_t *tag, int *res);

/* ---- format codecs (cs_format.c) ---- */
struct cs_page_meta {
	uint64_t serial, index;
	uint32_t n_tokens, page_tokens, width;
	cs_dtype dtype;
	bool shuffle;
};

/* Largest record a page of these dimensions can need. */
size_t cs_page_record_bound(uint32_t page_tokens, uint32_t width, size_t esz);
/* Encodes into out (cap bytes, zeroed padding written); scratch >= n_tokens *
 * max(width*esz, 4) bytes. */
int cs_page_encode(const struct cs_page_meta *m, const void *rows, const uint32_t *tok,
		   void *scratch, uint8_t *out, size_t cap, size_t *disk_len);
/* Checks a record against what the index promised (m) and decodes it into rows
 * ([n][width]) and tok ([n]) (either NULL: check only, decompressing into scratch).
 * scratch >= n_tokens * max(width*esz, 4) bytes (a shuffled token section is decompressed
 * there too). -EBADMSG with the reason in why (no context prefix). */
int cs_page_decode(const struct cs_page_meta *m, const uint8_t *rec, size_t disk_len,
		   void *scratch, void *rows, uint32_t *tok, char *why, size_t why_len);
struct cs_idx {
	uint64_t page, offset;
	uint32_t disk_len, n_tokens;
};
void cs_idx_encode(uint8_t out[CS_IDX_ENTRY], const struct cs_idx *e, uint64_t serial);
int cs_idx_decode(const uint8_t in[CS_IDX_ENTRY], struct cs_idx *e, uint64_t serial);

void cs_blob_header(uint8_t out[CS_BLOB_HDR], uint64_t serial, uint64_t gen,
		    const void *blob, uint64_t len);
/* Checks header and payload; 0 or -EBADMSG with why. */
int cs_blob_check(const uint8_t hdr[CS_BLOB_HDR], uint64_t serial, uint64_t gen,
		  const void *blob, uint64_t len, uint64_t expect_check, char *why, size_t why_len);
uint64_t cs_blob_checksum(const void *blob, uint64_t len);

/* A context as the manifest records it, plus its run-time state. */
struct cs_ctx {
	/* persistent */
	uint64_t serial;
	cs_key key;
	char name[CS_NAME_MAX];
	uint64_t model_id;
	cs_dtype dtype;
	uint32_t width, page_tokens;
	uint32_t flags;          /* CS_CTX_* */
	uint64_t n_tokens, n_pages;
	uint64_t data_len;       /* committed bytes of the page file */
	uint64_t idx_entries;    /* committed entries of the index file */
	uint64_t raw_bytes;
	uint64_t blob_gen;       /* 0: no blob */
	uint64_t blob_len;
	uint64_t blob_check;
	int64_t created_ns, last_use_ns;
	/* run time */
	bool committed;          /* in the manifest */
	uint32_t readers;
	bool writer;
	uint64_t reserved;       /* bytes its writer wrote beyond the commit */
};

uint64_t cs_ctx_disk_bytes(const struct cs_ctx *c);

/* Manifest image: hdr + n entries. out malloc'd. */
int cs_manifest_encode(uint64_t gen, uint64_t next_serial, struct cs_ctx *const *ctx, size_t n,
		       uint8_t **out, size_t *len);
/* Parses an image into a malloc'd array of contexts (committed = true). */
int cs_manifest_decode(const uint8_t *buf, size_t len, uint64_t *gen, uint64_t *next_serial,
		       struct cs_ctx **ctx, size_t *n, char *why, size_t why_len);

/* Byte shuffle: n elements of esz bytes into esz planes of n bytes, and back. */
void cs_shuffle(uint8_t *restrict dst, const uint8_t *restrict src, size_t n, size_t esz);
void cs_unshuffle(uint8_t *restrict dst, const uint8_t *restrict src, size_t n, size_t esz);

/* File names of a context's files. */
void cs_name_pages(char out[64], uint64_t serial);
void cs_name_idx(char out[64], uint64_t serial);
void cs_name_blob(char out[64], uint64_t serial, uint64_t gen);

/* ---- RAM page cache (cs_reader.c) ---- */
struct cs_cpage;
struct cs_pcache {
	pthread_mutex_t mu;
	struct cs_cpage **buckets;
	size_t n_buckets, n_entries;
	struct cs_cpage *lru_head, *lru_tail;  /* unreferenced entries, most recent first */
	uint64_t bytes, limit;
};
int cs_pcache_init(struct cs_pcache *c, uint64_t limit);
void cs_pcache_free(struct cs_pcache *c);
void cs_pcache_purge(struct cs_pcache *c, uint64_t serial);

/* ---- the store (cs_store.c) ---- */
struct cs_store {
	char *dir;
	int dirfd;
	int lockfd;
	bool rdonly;
	cs_config cfg;
	struct cs_io io;
	pthread_mutex_t mu;            /* everything below, and manifest writes */
	struct cs_ctx **ctx;
	size_t n_ctx, cap_ctx;
	uint64_t next_serial;
	uint64_t man_gen;
	bool dirty;                    /* last-use times newer than the manifest */
	struct cs_pcache cache;
};

/* With s->mu held. */
struct cs_ctx *cs_store_find_locked(cs_store *s, uint64_t serial);
void cs_info_from_ctx(cs_ctx_info *out, const struct cs_ctx *c);
/* Writes the manifest with `repl` in place of the entry of the same serial (added if absent;
 * NULL: none) and without the contexts in skip[]. Updates s only once the rename happened.
 * With s->mu held. renamed (may be NULL) tells whether the new manifest became visible. */
int cs_manifest_commit_locked(cs_store *s, const struct cs_ctx *repl, const uint64_t *skip,
			      size_t n_skip, bool *renamed, char *err);
/* Reserves bytes for ctx's writer within the budget, evicting if needed. */
int cs_store_reserve(cs_store *s, struct cs_ctx *ctx, uint64_t bytes, char *err);
/* Drops a context from the table and unlinks its files (it is not in the manifest). */
void cs_store_drop_locked(cs_store *s, struct cs_ctx *c);
/* Reads and checks every committed index entry of snap: *out [idx_entries], malloc'd. */
int cs_load_index(cs_store *s, const struct cs_ctx *snap, struct cs_idx **out, char *err);
/* Reads and validates the committed index of c: page table off/dlen [n_pages]. */
int cs_load_page_table(cs_store *s, const struct cs_ctx *snap, uint64_t **off, uint32_t **dlen,
		       char *err);
/* fd of c's committed blob file (-1 when it has none), opened under s->mu. */
int cs_open_blob_locked(cs_store *s, const struct cs_ctx *c, char *err);
/* Reads and checks the blob of snap from its open file fd. */
int cs_read_blob_fd(struct cs_io *io, int fd, const struct cs_ctx *snap, void **blob, size_t *len,
		    char *err);

#endif /* CS_INTERNAL_H */
