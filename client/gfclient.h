/*
 * gfclient.h — libgfclient: a blocking client of goldfinchd (protocol/README.md).
 *
 * One gfc_conn is one connection: gfc_init parses the options (server address, token file),
 * gfc_connect connects and exchanges Hello. Then one request at a time: gfc_call for the
 * requests answered by a single message (status, contexts, drop), gfc_generate for a
 * streamed answer, gfc_ingest_* for an ingest, whose input is sent in pieces. While a call
 * sends, it also reads: progress and tokens reach the caller's callback as they arrive, and
 * an Error from the server stops the sending at once.
 *
 * Cancelling: options.cancel_fd (a signalfd for SIGINT, or a pipe) is watched in every wait.
 * When it becomes readable during a job, the client sends Cancel for that job and keeps
 * waiting for the server's acknowledgement (Done{CANCELLED} or Error{CANCELLED}); readable
 * again, or readable outside a job, the call returns -ECANCELED at once. Each event
 * consumes one read of up to 128 bytes (one signalfd_siginfo); end of file on it (a pipe
 * whose writer closed) stops the watching.
 *
 * Returns: 0 or -errno, with one line in `err` (GFC_ERR_LEN bytes, may be NULL). An Error
 * from the server gives "server: CODE: message" and the errno of its code (NOT_FOUND
 * -ENOENT, UNAUTHENTICATED -EACCES, VERSION -EPROTONOSUPPORT, TOO_LARGE -E2BIG, BUSY -EBUSY,
 * CANCELLED -ECANCELED, NO_SPACE -ENOSPC, SHUTTING_DOWN -ESHUTDOWN, BAD_REQUEST -EINVAL,
 * others -EIO); gfc_server_error() then says which code it was, and gfc_exit_status()
 * turns any result into the exit codes of `gf`.
 *
 * Ownership: responses handed to callbacks are valid during the callback only; those
 * handed out through `proto_response **` belong to the caller (proto_response_free).
 * Thread-safety: a gfc_conn belongs to one thread; different connections are independent.
 * The library installs no signal handlers and never raises SIGPIPE (MSG_NOSIGNAL).
 */
#ifndef GF_CLIENT_H
#define GF_CLIENT_H

#include "protocol.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GFC_ERR_LEN 256
#define GFC_DEFAULT_SERVER "127.0.0.1:7433"
#define GFC_ENV_SERVER "GOLDFINCH_SERVER"
#define GFC_ENV_TOKEN_FILE "GOLDFINCH_TOKEN_FILE"
#define GFC_ENV_SERVER_FILE "GOLDFINCH_SERVER_FILE"
/* Bytes of input per IngestData.text piece (less when the server's max_frame is smaller). */
#define GFC_PIECE_BYTES (64u << 10)
/* Connect and Hello are bounded by this many seconds even when no timeout is set. */
#define GFC_CONNECT_TIMEOUT_S 30
/* Largest response frame this client accepts. */
#define GFC_MAX_RESPONSE (64u << 20)

/* Exit codes of gf, for scripts (gfc_exit_status). */
enum {
	GFC_EXIT_OK = 0,
	GFC_EXIT_SERVER = 1,      /* the server reported an error (BAD_REQUEST, INTERNAL, ...) */
	GFC_EXIT_USAGE = 2,       /* bad flag or argument, unreadable input path */
	GFC_EXIT_NOT_FOUND = 3,   /* unknown context or job (NOT_FOUND) */
	GFC_EXIT_CONNECTION = 4,  /* no server, timeout, broken connection or protocol, VERSION */
	GFC_EXIT_CANCELLED = 5,   /* cancelled (Ctrl-C, Cancel, Done{CANCELLED}) */
	GFC_EXIT_AUTH = 6,        /* UNAUTHENTICATED, or the token file cannot be read */
	GFC_EXIT_LIMIT = 7,       /* BUSY, TOO_LARGE, NO_SPACE, SHUTTING_DOWN */
};

/*
 * The server file: what `goldfinchd --server-file FILE` writes once it listens (atomically:
 * a reader never sees half of it) and removes when it stops cleanly, so that a client on
 * another machine (a login node, for a daemon in a SLURM job) finds it. Text, one
 * "key value" per line; '#' starts a comment line. Keys:
 *   format 1.0                  required; a major other than 1 is refused, a higher minor
 *                               may add keys, which readers ignore
 *   address ADDR                one or more, tried in order: tcp:HOST:PORT, tcp:[V6]:PORT,
 *                               unix:/path (the "tcp:" prefix is optional)
 *   auth-token-file PATH        the token file clients must send (absolute path)
 *   host, pid, slurm-job        who wrote it, for messages
 * Address precedence: options.server, options.server_file, $GOLDFINCH_SERVER,
 * $GOLDFINCH_SERVER_FILE, GFC_DEFAULT_SERVER. Token file precedence: options.auth_token_file,
 * the server file's auth-token-file (when the address came from a server file),
 * $GOLDFINCH_TOKEN_FILE.
 */
#define GFC_SERVER_FILE_MAJOR 1
#define GFC_SERVER_FILE_MAX (64u << 10)   /* bytes; a larger file is refused */

typedef struct gfc_options {
	const char *server;          /* "unix:/path", "/path", "host:port", "[v6]:port",
				      * "tcp:host:port"; NULL: see the precedence above */
	const char *server_file;     /* a server file to read the address from (above) */
	const char *auth_token_file; /* NULL: the server file's, else $GOLDFINCH_TOKEN_FILE,
				      * else no token */
	double timeout_s;            /* > 0: fail when the server sends nothing (and takes
				      * nothing) for this long; <= 0: no limit */
	int cancel_fd;               /* -1: none. See the top of this file */
	const char *client_name;     /* Hello.client; NULL: "libgfclient" */
} gfc_options;

void gfc_options_default(gfc_options *o);

typedef struct gfc_conn gfc_conn;

/* Resolves the server address (reading the server file, if one is used) and reads the
 * token file; connects nothing yet. -EINVAL: bad address; -EACCES: token file unreadable
 * or empty; server file: -ENOENT missing, -EIO unreadable, -EBADMSG malformed or of another
 * major format (err says why). */
int gfc_init(gfc_conn **out, const gfc_options *o, char *err);
/* Connects and exchanges Hello. Fails with -EPROTONOSUPPORT when the server's major
 * version differs, with the mapped errno of a server Error (UNAUTHENTICATED: -EACCES).
 * With a server file, its addresses are tried in order until one connects; the error of
 * the last one is returned, naming the file. */
int gfc_connect(gfc_conn *c, char *err);
void gfc_close(gfc_conn *c);   /* NULL-safe; the server cancels the jobs of a closed connection */

/* As resolved by gfc_init; with a server file, the address connected to (before
 * gfc_connect: the file's first). */
const char *gfc_server_address(const gfc_conn *c);
const Goldfinch__V1__HelloReply *gfc_hello(const gfc_conn *c); /* NULL before gfc_connect */
/* The ErrorCode of the server Error that failed the last call, 0 if it failed locally (or
 * did not fail). */
int gfc_server_error(const gfc_conn *c);
/* The exit code of gf for result rc of the last call on c (c may be NULL). */
int gfc_exit_status(const gfc_conn *c, int rc);
/* Maps an ErrorCode to -errno, and to an exit code. */
int gfc_code_errno(int code);
int gfc_code_exit(int code);

/* Called for each response to the request being waited on, as it arrives: progress,
 * tokens, responses of kinds this client does not know, and the final one (not an Error:
 * that is the call's return value). Return 0 to go on or -errno to stop waiting: the call
 * returns that value (the connection is then unusable: close it). */
typedef int (*gfc_response_fn)(void *user, const proto_response *r);

/* Sends req (its id is set here) and waits for its final response, which goes to *final
 * when final is not NULL (caller frees). fn may be NULL. */
int gfc_call(gfc_conn *c, proto_request *req, gfc_response_fn fn, void *user,
	     proto_response **final, char *err);
int gfc_status(gfc_conn *c, proto_response **out, char *err);        /* (*out)->status */
int gfc_list_contexts(gfc_conn *c, proto_response **out, char *err); /* (*out)->contexts */
int gfc_drop(gfc_conn *c, const char *context, uint64_t *serial, char *err);
/* Generate: tokens go to fn as they are sampled; the Done to *done (may be NULL). */
int gfc_generate(gfc_conn *c, const Goldfinch__V1__Generate *g, gfc_response_fn fn,
		 void *user, proto_response **done, char *err);
/* Sends Cancel for the job being waited on (from a callback; the wait goes on until the
 * server acknowledges). 0 if sent or already sent; -ENOENT if no job. */
int gfc_cancel_job(gfc_conn *c, char *err);
/* Sends Cancel{target} and waits `wait_ms` for an answer: the Error it gets if any
 * (NOT_FOUND: no such job on this connection). Request ids are per connection (README), so
 * this cancels only jobs started on c. Returns 0 if no error came back in time. */
int gfc_cancel(gfc_conn *c, uint64_t target, int wait_ms, char *err);
/* Protocol 1.1: cancels the job with server-wide number `job` (StatusReply.jobs,
 * IngestProgress.job, the first Token.job), whichever connection started it, and waits for
 * the server's CancelAccepted: 0. -ENOENT (NOT_FOUND) when no such job is queued or
 * running; -EPROTONOSUPPORT, without sending anything, when the server speaks 1.0. The
 * job's own client then gets Done{CANCELLED} or Error{CANCELLED}. */
int gfc_cancel_number(gfc_conn *c, uint64_t job, char *err);

/* ---- Ingest --------------------------------------------------------------------------
 * gfc_ingest_start, then any mix of gfc_ingest_text and gfc_ingest_file (a file's text
 * follows it as gfc_ingest_text), then gfc_ingest_end, which waits for ContextReady.
 * Progress goes to fn during all of them. After a failure the ingest is over (close c).
 */
/* With s->resume, waits for the server's first progress message and sets *resume_from to
 * its bytes_done: the byte of the rendered input stream to send again from (README); or to
 * GFC_RESUME_COMPLETE when the server answers that the ingest had completed after all
 * (ContextReady at once): then send nothing, gfc_ingest_end hands out that answer. */
#define GFC_RESUME_COMPLETE UINT64_MAX
int gfc_ingest_start(gfc_conn *c, const Goldfinch__V1__IngestStart *s, gfc_response_fn fn,
		     void *user, uint64_t *resume_from, char *err);
int gfc_ingest_text(gfc_conn *c, const void *data, size_t n, char *err);
int gfc_ingest_file(gfc_conn *c, const char *path, uint64_t size, char *err);
int gfc_ingest_end(gfc_conn *c, proto_response **ready, char *err); /* (*ready)->context_ready */

/* ---- Input files ---------------------------------------------------------------------
 * What `gf ingest` sends (and what `gf-run ingest` reads: one policy for both): regular
 * text files, found by walking directories in sorted (bytewise) order. Skipped with a note: version-control folders (.git .hg .svn .bzr
 * _darcs CVS .jj), binary files (a NUL byte or invalid UTF-8 in the first GFC_SNIFF_BYTES),
 * symbolic links to folders, and anything that is not a regular file or a folder.
 */
#define GFC_SNIFF_BYTES 8192
#define GFC_FILE_HEADER "### File: "   /* the server's rendering: header path "\n" text "\n" */

typedef struct gfc_file {
	char *path;     /* to open */
	char *rel;      /* FileStart.path: relative to the walked folder; a file named directly:
			 * its base name */
	uint64_t size;  /* at walk time */
} gfc_file;

typedef struct gfc_filelist {
	gfc_file *files;
	size_t n, cap;
} gfc_filelist;

/* note(user, path, why) is told about each thing skipped (may be NULL). */
typedef void (*gfc_note_fn)(void *user, const char *path, const char *why);

void gfc_filelist_init(gfc_filelist *fl);
void gfc_filelist_free(gfc_filelist *fl);   /* NULL-safe */
/* Appends the text files of `path` (a file or a folder). -ENOENT etc. when path itself
 * cannot be read; unreadable things inside a folder are noted and skipped. A file named
 * directly is taken unless it is binary. */
int gfc_walk(gfc_filelist *fl, const char *path, gfc_note_fn note, void *user, char *err);
/* 1 if buf (the first n bytes of a file, `truncated` when the file goes on) looks like
 * text: no NUL byte and valid UTF-8, a sequence cut by the end of a truncated buffer
 * allowed. */
int gfc_is_text(const uint8_t *buf, size_t n, bool truncated);
/* The UTF-8 sequence that starts at s[0] (a byte >= 0x80; n >= 1): *len is its length (2..4;
 * 0 when s[0] cannot start one) and the return value the bytes of it that are well formed
 * within n, at least 1 (Unicode's maximal subpart: what one U+FFFD replaces). */
size_t gfc_utf8_prefix(const uint8_t *s, size_t n, size_t *len);
/* A folder of a version-control system, which a walk skips (".git", ...). */
bool gfc_is_vcs_dir(const char *name);
/* Bytes of the rendered stream a file makes: header + path + "\n" + size + "\n". */
uint64_t gfc_rendered_size(const char *rel, uint64_t size);

#ifdef __cplusplus
}
#endif
#endif /* GF_CLIENT_H */
