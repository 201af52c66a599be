/*
 * mpi_link.h — messages between the ranks of a multi-rank goldfinchd (DESIGN.md §4).
 *
 * One thread per process (the link's) makes every MPI call, so MPI needs only
 * MPI_THREAD_SERIALIZED and a rank computing a chunk never stalls another rank's sends: the
 * link thread posts non-blocking sends from an outbox and receives every incoming message at
 * once into the mailbox of its stream. Computing threads send with gfm_send (never blocks)
 * and wait on their mailbox with gfm_box_pop.
 *
 * A stream is one ingest or one session, numbered by rank 0; its messages keep their order
 * per sender (MPI's non-overtaking rule on one tag). Flow control is the callers' (credits,
 * rank_part.c): the link buffers whatever arrives.
 *
 * Failure: the link thread watches the other ranks that run on its host (their pids, taken
 * at start) and MPI's return codes; when a peer is gone the link fails for good, every pop
 * returns -EPIPE and gfm_link_failure() names the rank. (A peer on another host is caught by
 * the launcher, which ends the job: see daemon/README.md.)
 *
 * Thread-safety: every function may be called from any thread.
 */
#ifndef GFD_MPI_LINK_H
#define GFD_MPI_LINK_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

enum gfm_type {
	GFM_BEGIN = 1,  /* open an ingest part: aux = rank 0's serial; payload: name (may be empty) */
	GFM_RESUME,     /* reopen an ingest part at rank 0's checkpoint: aux = serial, pos = tokens */
	GFM_OPEN,       /* open a session part: aux = serial */
	GFM_CHUNK,      /* rows of the residual stream: pos, n, aux = mode | (rows + 1) << 32;
			 * tok[n] + x[n][C] + the chain's work before this rank (a double, ns),
			 * + carry[C] when rows (the rows of the sender's last block's channel mix
			 * it ran, the rest left to this rank) is given */
	GFM_ROWS,       /* cache rows from the emitter: pos, n; tok[n] + c[n][Ck] (float32) */
	GFM_MARK,       /* down the pipeline after the chunks up to pos: aux = mark kind */
	GFM_TAILX,      /* the GOLD tail's window: pos = its first position, n; x[n][C] */
	GFM_LOGITS,     /* last rank to rank 0: [V] floats */
	GFM_CREDIT,     /* a chunk consumed: the sender may send one more; payload (or none):
			 * 3 doubles, the chain's work from here down, this rank's own, and the
			 * time here of one row of the sender's last channel mix (ns, 0: unknown) */
	GFM_ACK,        /* to rank 0: status, pos; payload: the error text when status < 0 */
	GFM_SEAL,       /* seal the part (phase one of the seal) */
	GFM_CLOSE,      /* end of the stream: free the part (an ingest keeps its checkpoint) */
	GFM_DROP,       /* end of the stream and remove the part's context */
	GFM_REMOVE,     /* control: remove the part of rank 0's context aux */
	GFM_SHUTDOWN,   /* control: leave the serve loop */
	GFM_ERROR,      /* a rank's stream failed: status, payload the message */
	GFM_TAILQ,      /* GOLD tail queries to a rank sharing the attention: pos = p0, n,
			 * aux = g << 32 | first span << 16 | end span; q[n][A] */
	GFM_TAILP,      /* its answer: the same header, status; the spans' partials (or the
			 * error text when status < 0) */
};

/* Chunk modes and mark kinds (hdr.aux). */
enum { GFM_MODE_INGEST = 0, GFM_MODE_PREFILL = 1, GFM_MODE_STEP = 2 };
enum { GFM_MARK_CHECKPOINT = 1, GFM_MARK_FINISH = 2, GFM_MARK_QTAIL = 3 };

typedef struct gfm_hdr {
	uint32_t type;
	uint32_t stream;   /* 0: control */
	int32_t status;
	uint32_t n;
	uint64_t pos;
	uint64_t aux;
} gfm_hdr;

typedef struct gfm_msg {
	gfm_hdr h;
	int source;          /* sending rank */
	size_t len;          /* payload bytes */
	void *payload;       /* points into the same allocation */
	struct gfm_msg *next;
} gfm_msg;

void gfm_msg_free(gfm_msg *m);

typedef struct gfm_link gfm_link;
typedef struct gfm_box gfm_box;

/* Starts the link thread on comm (MPI initialised with at least MPI_THREAD_SERIALIZED; the
 * caller makes no MPI call until gfm_link_stop). Collective: every rank calls it. */
int gfm_link_start(gfm_link **out, MPI_Comm comm, char *err);
/* Stops the thread (pending sends are completed first); then the caller may MPI_Finalize. */
void gfm_link_stop(gfm_link *l);
int gfm_link_rank(const gfm_link *l);
int gfm_link_size(const gfm_link *l);

/* Queues a message (header + payload copied). 0, -ENOMEM, or -EPIPE once the link failed. */
int gfm_send(gfm_link *l, int dest, const gfm_hdr *h, const void *payload, size_t len);
/* Same with a payload in two or three parts (e.g. tokens then floats). */
int gfm_send2(gfm_link *l, int dest, const gfm_hdr *h, const void *a, size_t alen,
	      const void *b, size_t blen);
int gfm_send3(gfm_link *l, int dest, const gfm_hdr *h, const void *a, size_t alen,
	      const void *b, size_t blen, const void *c, size_t clen);

/* The mailbox of stream id (created on first use); messages of a stream that has no box yet
 * wait in it until it is opened. gfm_box_close drops what is left. */
gfm_box *gfm_box_open(gfm_link *l, uint32_t stream);
void gfm_box_close(gfm_link *l, gfm_box *b);
/* Next message, waiting up to timeout_ms (< 0: forever). 0 with *out set; -ETIMEDOUT; -EPIPE
 * when the link has failed (the message: gfm_link_failure). */
int gfm_box_pop(gfm_box *b, int timeout_ms, gfm_msg **out);

/* Control messages (stream 0) and the first message of every stream not yet opened arrive
 * here on ranks >= 1: the serve loop reads them. */
int gfm_control_pop(gfm_link *l, int timeout_ms, gfm_msg **out);

/* A stream id no other stream of this link has used (rank 0 allocates them). */
uint32_t gfm_new_stream(gfm_link *l);

/* Fault injection (tests): the n-th message this process sends from now (1-based) fails,
 * which fails the link as a real MPI error would. 0 turns it off. */
void gfm_link_fail_send_at(gfm_link *l, uint64_t n);
/* Messages this process has queued since the link started (the fault ids there are). */
uint64_t gfm_link_sends(gfm_link *l);

/* "" while healthy; else one line naming the rank that failed. */
const char *gfm_link_failure(gfm_link *l);
/* Fails the link by hand (a fatal error seen by a caller); the first reason stays. */
void gfm_link_fail(gfm_link *l, const char *why);

#endif /* GFD_MPI_LINK_H */
