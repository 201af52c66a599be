/*
 * cache_store.h — crash-safe, LZ4-compressed page store for the per-token cache (c rows and
 * token ids) of GoldFinch contexts, on local disk through io_uring. ../shared/DESIGN.md §3;
 * the on-disk format and the crash-safety argument are in cache_store/README.md.
 *
 * Model of use:
 *   - a store is one directory, owned by one process (an flock on DIR/LOCK); each MPI rank
 *     opens its own directory. Read-only opens (CS_OPEN_RDONLY, for gf-cache ls/verify)
 *     take no lock and write nothing.
 *   - a context is a token stream cut into pages of page_tokens consecutive tokens (fixed at
 *     creation with the element type and the row width). It is keyed by a content hash of
 *     (model id, token ids) (cs_hash_*), may carry a user name, and carries an opaque blob
 *     (the daemon's snapshot) replaced on each commit.
 *   - a writer appends rows; cs_writer_commit makes everything appended so far, with a new
 *     blob, durable and visible at once (a checkpoint); a crash at any instant leaves the
 *     last commit intact; cs_writer_resume continues from it. Sealing (the last commit)
 *     makes the context complete and unique by key.
 *   - readers see the committed state of a context as of cs_reader_open, through a RAM page
 *     cache of decompressed pages shared by every reader of the store (reference counted),
 *     with read-ahead when they walk pages in order.
 *   - a branch (cs_branch) is a copy-on-write continuation of a context that lives only in
 *     RAM: a generation appends its own tokens there, the stored context never changes, and
 *     the branch's pages are gone when it is freed.
 *   - a disk budget evicts whole least-recently-used contexts that nobody holds open.
 *
 * Conventions: every function returns 0 or a negative errno (-EINVAL bad argument, -ENOENT
 * no such context, -EEXIST duplicate, -EBUSY held, -ENOSPC budget, -EIO I/O, -EBADMSG
 * corrupt data, -EROFS read-only store, -ENOMEM); `err`, where taken, is a caller buffer of
 * CS_ERR_LEN bytes (may be NULL) that receives one line naming what and where, e.g.
 * "context 3fa9c0d2e1b4 (#7) page 812: payload checksum mismatch". Corrupt data is never
 * returned as data. No global mutable state.
 *
 * Thread-safety: a cs_store may be used from any number of threads at once (an internal
 * lock). A cs_writer, cs_reader or cs_branch belongs to one thread at a time; open one
 * reader per thread (they are cheap and share the page cache). Page views (cs_page) may be
 * passed between threads and are valid until released.
 */
#ifndef CACHE_STORE_H
#define CACHE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CS_ERR_LEN 256        /* equals GF_ERR_LEN of model/goldfinch.h */
#define CS_NAME_MAX 128       /* user names: 1..127 bytes, no NUL, no newline */
#define CS_FORMAT_MAJOR 1     /* bumped when an old reader can no longer read new files */
#define CS_FORMAT_MINOR 0     /* bumped for additive changes old readers can ignore */

/* Element types of c rows; the values are gf_dtype's (GGML type ids). */
typedef enum cs_dtype {
	CS_DTYPE_F32 = 0,
	CS_DTYPE_F16 = 1,
	CS_DTYPE_BF16 = 30,
} cs_dtype;

size_t cs_dtype_size(cs_dtype t);        /* bytes per element; 0 for an unknown type */
const char *cs_dtype_name(cs_dtype t);   /* "f32", "f16", "bf16" or "?" */

/* ------------------------------------------------------------------------------------------
 * Content keys: XXH3-128 of a fixed prefix, the model id and the token ids (u32 LE).
 * Streaming and one-shot hashes of the same tokens are equal however the stream is cut.
 */
typedef struct cs_key {
	uint64_t hi, lo;
} cs_key;

typedef struct cs_hasher cs_hasher;

int cs_hash_init(cs_hasher **out, uint64_t model_id);
/* Token ids are u32; an int32_t array may be passed by cast (same bits). */
void cs_hash_update(cs_hasher *h, const uint32_t *tok, size_t n);
/* Key of every token so far; updates may continue afterwards. */
cs_key cs_hash_final(const cs_hasher *h);
void cs_hash_reset(cs_hasher *h, uint64_t model_id);
void cs_hash_free(cs_hasher *h);
int cs_hash_tokens(uint64_t model_id, const uint32_t *tok, size_t n, cs_key *out);

bool cs_key_equal(cs_key a, cs_key b);
/* 32 lowercase hex digits + NUL (hi first). */
void cs_key_hex(cs_key k, char out[33]);

/* ------------------------------------------------------------------------------------------
 * The store.
 */
typedef enum cs_backend {
	CS_IO_AUTO = 0,   /* io_uring unless env GF_CS_IO=sync; pread/pwrite if io_uring fails */
	CS_IO_URING,      /* io_uring or fail */
	CS_IO_SYNC,       /* pread/pwrite */
} cs_backend;

typedef enum cs_direct {
	CS_DIRECT_AUTO = 0, /* O_DIRECT if a probe at open succeeds, unless env GF_CS_DIRECT=0 */
	CS_DIRECT_OFF,      /* buffered I/O */
	CS_DIRECT_ON,       /* O_DIRECT or fail with -EINVAL (the filesystem refuses it) */
} cs_direct;

/* Fault points for crash tests: every write, fsync and rename the store issues, and (when
 * asked for in cs_config.fault_ops) every read of a page, index, blob or manifest file. */
typedef enum cs_fault_op {
	CS_FAULT_WRITE = 1,
	CS_FAULT_FSYNC,
	CS_FAULT_RENAME,
	CS_FAULT_READ,
} cs_fault_op;

#define CS_FAULT_OPS_DEFAULT ((1u << CS_FAULT_WRITE) | (1u << CS_FAULT_FSYNC) | (1u << CS_FAULT_RENAME))
#define CS_FAULT_OPS_ALL (CS_FAULT_OPS_DEFAULT | (1u << CS_FAULT_READ))

/* Called before each step of the ops in cs_config.fault_ops with a counter starting at 0 at
 * open (path: the file's name, or the directory's for its fsync). A non-zero return makes
 * that step fail with -EIO (a write first writes half its bytes, as a torn write would).
 * Honoured only by a library built with CS_FAULT_INJECTION (the test library gfcache_fi);
 * the ordinary library ignores it. Called with store locks held: it must not call back into
 * the store. Allocations are failed by the tests themselves (tests/hardening_fault.c wraps
 * malloc and friends at link time). */
typedef int (*cs_fault_fn)(void *arg, uint64_t id, cs_fault_op op, const char *path);

#define CS_OPEN_RDONLY 1u   /* no lock, no recovery, no writes: for inspection tools */

typedef struct cs_config {
	uint64_t disk_budget;      /* bytes of context files; 0 = unlimited */
	uint64_t ram_cache_bytes;  /* decompressed pages kept unpinned; default 256 MiB */
	uint32_t io_depth;         /* requests in flight per reader and writer, 1..256; default 8 */
	uint32_t readahead_pages;  /* pages a sequential reader keeps in flight (io_uring only);
				    * 0 = none; default 6; at most io_depth - 1 */
	cs_backend backend;
	cs_direct direct;
	uint32_t flags;            /* CS_OPEN_* */
	cs_fault_fn fault;         /* see cs_fault_fn; NULL = none */
	void *fault_arg;
	uint32_t fault_ops;        /* 1 << op for each op to number; 0 = CS_FAULT_OPS_DEFAULT */
} cs_config;

void cs_config_defaults(cs_config *cfg);

typedef struct cs_store cs_store;

/* The RAM page cache: bytes of decompressed pages held now (referenced or not) and its limit
 * for unreferenced ones (cs_config.ram_cache_bytes). Thread-safe. */
void cs_store_cache_usage(cs_store *s, uint64_t *bytes, uint64_t *limit);

/* Opens (creating if absent, unless RDONLY) the store in dir. A writable open takes the
 * directory's lock (-EBUSY if another process holds it), removes what a crash left behind
 * (files of uncommitted contexts, bytes appended after the last commit, temporaries) and
 * probes O_DIRECT once. cfg NULL = defaults. */
int cs_store_open(cs_store **out, const char *dir, const cs_config *cfg, char *err);
/* Persists last-use times if they changed (errors ignored: call cs_store_flush first to
 * see them) and frees. Every reader, writer and branch must be closed first. NULL-safe. */
void cs_store_close(cs_store *s);
/* Writes the manifest if last-use times changed since the last commit. */
int cs_store_flush(cs_store *s, char *err);

const char *cs_store_backend_name(const cs_store *s);  /* "io_uring" or "pread" */
bool cs_store_direct(const cs_store *s);               /* page files use O_DIRECT */
const char *cs_store_dir(const cs_store *s);

/* What ls shows, and what a lookup returns. A snapshot: it may change right after. */
typedef struct cs_ctx_info {
	uint64_t serial;          /* store-local number, never reused; names the files */
	cs_key key;               /* content key of the committed tokens */
	char name[CS_NAME_MAX];   /* "" when none */
	uint64_t model_id;
	cs_dtype dtype;
	uint32_t width;           /* numbers per row */
	uint32_t page_tokens;
	bool shuffle;             /* pages byte-shuffled before LZ4 */
	bool sealed;              /* complete (committed with CS_COMMIT_SEAL) */
	uint64_t n_tokens;        /* committed */
	uint64_t n_pages;         /* ceil(n_tokens / page_tokens) */
	uint64_t raw_bytes;       /* rows + token ids, uncompressed */
	uint64_t disk_bytes;      /* page, index and blob files */
	uint64_t blob_len;
	int64_t created_ns;       /* CLOCK_REALTIME */
	int64_t last_use_ns;
	uint32_t holders;         /* open readers and writers in this process */
} cs_ctx_info;

/* Every committed context, ordered by serial. *out is malloc'd (caller frees); *n may be 0. */
int cs_store_list(cs_store *s, cs_ctx_info **out, size_t *n, char *err);
int cs_store_info(cs_store *s, uint64_t serial, cs_ctx_info *out, char *err);
/* Committed context with this key (sealed preferred, then the most recent); -ENOENT. */
int cs_store_lookup(cs_store *s, cs_key key, cs_ctx_info *out);
int cs_store_lookup_name(cs_store *s, const char *name, cs_ctx_info *out);
/* Deletes a context nobody holds (-EBUSY otherwise). */
int cs_store_remove(cs_store *s, uint64_t serial, char *err);
/* Bytes of all context files (committed and being written). */
uint64_t cs_store_disk_used(cs_store *s);
/* Evicts least-recently-used unheld contexts until usage <= target. *evicted may be NULL. */
int cs_store_trim(cs_store *s, uint64_t target, uint32_t *evicted, char *err);

typedef struct cs_verify_report {
	uint64_t records;       /* page records checked, superseded copies included */
	uint64_t bad_records;
	uint64_t bytes;         /* bytes read */
	uint64_t missing_files; /* files the manifest names that were not there (counted in
				 * bad_records too) */
} cs_verify_report;

/* Reads every record of the context's page file up to the committed length (superseded
 * copies of rewritten partial pages too), its index and its blob, and checks them all.
 * 0 if all is well, -EBADMSG naming the first bad page (rep counts them all).
 * Beside a running writer (a CS_OPEN_RDONLY store), a file may be missing only because the
 * writer replaced it (a blob) or removed the context after this open read the manifest:
 * when rep->missing_files is set, open the store again and verify again; a file missing
 * from a manifest that did not change is real damage. */
int cs_store_verify(cs_store *s, uint64_t serial, cs_verify_report *rep, char *err);

/* Reads the committed blob of a context: *blob malloc'd (caller frees; NULL when empty). */
int cs_store_read_blob(cs_store *s, uint64_t serial, void **blob, size_t *len, char *err);

/* ------------------------------------------------------------------------------------------
 * Writing. A writer holds its context (no eviction, no removal, no second writer).
 * Appends are buffered into pages; full pages are compressed and written in the background
 * (io_depth in flight); nothing is visible to readers or durable before a commit.
 */
typedef struct cs_writer cs_writer;

typedef struct cs_ctx_params {
	uint64_t model_id;
	cs_dtype dtype;
	uint32_t width;        /* numbers per row, 1..65536 */
	uint32_t page_tokens;  /* 1..1048576; records are 4 KiB-aligned: aim at >= 64 KiB of rows */
	bool no_shuffle;       /* store pages unshuffled (benchmarks; the format records it) */
	const char *name;      /* NULL or "" for none; unique in the store (-EEXIST) */
} cs_ctx_params;

/* New, empty context. It exists on disk from its first commit on. */
int cs_writer_begin(cs_store *s, const cs_ctx_params *p, cs_writer **out, char *err);
/* Continues an unsealed committed context after its last commit (e.g. after a crash): the
 * content hash is rebuilt by reading the committed token ids; a partial last page is read
 * back into the writer. -EBUSY if another writer holds it, -EINVAL if sealed. */
int cs_writer_resume(cs_store *s, uint64_t serial, cs_writer **out, char *err);
/* Appends n rows ([n][width] elements of the context's dtype) and their token ids. */
int cs_writer_append(cs_writer *w, const void *rows, const uint32_t *tok, size_t n, char *err);

#define CS_COMMIT_SEAL 1u  /* last commit: the context becomes complete; no more appends */

/* Makes every appended token and the blob durable and visible, atomically. blob NULL keeps
 * the previous blob; a non-NULL blob of length 0 stores an empty one. With CS_COMMIT_SEAL,
 * -EEXIST (nothing changed) if another sealed context has the same key. After any error
 * but -EEXIST/-EINVAL the writer is dead (every call returns the error): free it and
 * resume from the last commit. */
int cs_writer_commit(cs_writer *w, const void *blob, size_t blob_len, uint32_t flags, char *err);

uint64_t cs_writer_serial(const cs_writer *w);
uint64_t cs_writer_tokens(const cs_writer *w);    /* appended, committed or not */
uint64_t cs_writer_committed(const cs_writer *w); /* tokens as of the last commit */
cs_key cs_writer_key(const cs_writer *w);         /* of every appended token */
/* Releases the context. Appends after the last commit are discarded; a context never
 * committed is deleted. NULL-safe. */
void cs_writer_free(cs_writer *w);

/* ------------------------------------------------------------------------------------------
 * Reading. A reader holds its context (no eviction, no removal) and sees the committed state
 * as of its open, whatever commits follow.
 */
typedef struct cs_reader cs_reader;

/* A decompressed page, read-only. A cached page stays valid until cs_page_release, even
 * after its reader is closed or its context removed; release it before closing the store.
 * A branch's own page stays valid until the branch is freed. */
typedef struct cs_page {
	const void *rows;         /* [n_tokens][width] elements of the context's dtype */
	const uint32_t *tokens;   /* [n_tokens] */
	uint64_t index;           /* page number in the context */
	uint64_t first_token;     /* index * page_tokens */
	uint32_t n_tokens;        /* page_tokens, fewer on the last page */
} cs_page;

int cs_reader_open(cs_store *s, uint64_t serial, cs_reader **out, char *err);
void cs_reader_info(const cs_reader *r, cs_ctx_info *out);
/* Page `index` < n_pages, from the page cache or the disk; walking pages in increasing order
 * keeps the next readahead_pages reads in flight. */
int cs_reader_page(cs_reader *r, uint64_t index, const cs_page **out, char *err);
/* Copies tokens [first, first+n) into rows ([n][width]) and tok ([n]); either may be NULL. */
int cs_reader_read(cs_reader *r, uint64_t first, uint64_t n, void *rows, uint32_t *tok, char *err);
/* The blob of the reader's snapshot (even if a commit replaced it since). *blob malloc'd. */
int cs_reader_blob(cs_reader *r, void **blob, size_t *len, char *err);
/* One-pass mode: pages this reader brings into the page cache leave it when released (a
 * page another reader had cached stays), so a scan of a long context neither grows the
 * cache nor evicts the pages other readers come back to. Read-ahead still applies. */
void cs_reader_set_streaming(cs_reader *r, bool on);
void cs_reader_close(cs_reader *r);   /* NULL-safe */

void cs_page_release(const cs_page *p);  /* NULL-safe */

/* ------------------------------------------------------------------------------------------
 * Branches: copy-on-write continuation of a reader's snapshot, in RAM only. Pages below the
 * base's last page come from the base (the page cache); the base's partial last page is
 * copied on the branch's first append and extended in RAM; later pages are the branch's
 * own. Nothing is ever written to disk. The base reader must outlive the branch, and is
 * used by the branch: same thread.
 */
typedef struct cs_branch cs_branch;

int cs_branch_init(cs_branch **out, cs_reader *base, char *err);
/* A branch over no context: every page its own, from token 0 (a generation that starts
 * from the model's initial state). Rows are `width` elements of `dtype`. */
int cs_branch_init_empty(cs_branch **out, uint32_t page_tokens, uint32_t width, cs_dtype dtype,
			 char *err);
int cs_branch_append(cs_branch *b, const void *rows, const uint32_t *tok, size_t n, char *err);
uint64_t cs_branch_tokens(const cs_branch *b);   /* base tokens + appended */
/* As cs_reader_page over base + appended tokens. A branch-owned page view stays valid
 * (its first n_tokens rows unchanged) until the branch is freed; release it all the same. */
int cs_branch_page(cs_branch *b, uint64_t index, const cs_page **out, char *err);
int cs_branch_read(cs_branch *b, uint64_t first, uint64_t n, void *rows, uint32_t *tok, char *err);
void cs_branch_free(cs_branch *b);   /* NULL-safe */

#ifdef __cplusplus
}
#endif
#endif /* CACHE_STORE_H */
