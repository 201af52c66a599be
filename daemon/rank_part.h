/*
 * rank_part.h — one rank's part of an ingest or a session in a multi-rank goldfinchd
 * (DESIGN.md §4). Every rank, rank 0 included, runs its slice of blocks through
 * the same code; rank 0 additionally drives the streams (server_backend_mpi.c).
 *
 * The pipeline, per stream:
 *   - chunks of the residual stream flow down the ranks that own Finch blocks (rank 0 embeds),
 *     each rank leaving rows of its last channel mix to the next as their paces require (the
 *     moving boundary, rank_part.c);
 *     the emitter (owner of block G-1) turns each chunk into cache rows (c, tok) and sends
 *     them to every other rank in an ingest (each keeps a replica of the pages in its own
 *     store, so a rank's store is self-contained) and to the GOLD ranks in a session;
 *   - a mark follows the chunks: checkpoint, finish (commit, then the GOLD tail runs from the
 *     emitter's window down the GOLD ranks) or a question's tail;
 *   - a decode step runs the whole chain; the last rank sends the logits to rank 0.
 * Flow control: a rank sends at most GFR_CREDITS chunks ahead of what its successor has
 * consumed. Work that needs rows not yet received (a GOLD block's attention, a commit) waits
 * for them, holding other messages back in order.
 *
 * A rank's copy of rank 0's context #S is named "r0-S:NAME" in its store ("r0-S" when
 * unnamed, and in stores written before copies carried the name); its snapshot holds the
 * state of its own blocks (gfe_slice_code). Rank 0 commits every checkpoint last and seals
 * last: a context is usable once rank 0 has sealed it, and then every rank has.
 *
 * Threads: a part belongs to one thread at a time.
 */
#ifndef GFD_RANK_PART_H
#define GFD_RANK_PART_H

#include "engine_internal.h"
#include "mpi_link.h"
#include "partition.h"

#define GFR_CREDITS 8   /* default; GOLDFINCH_PIPELINE_CHUNKS overrides (1..64) */

/* Whether rank `rank` of the plan finishes rows of its predecessor's last block (and so
 * loads that block's channel mix): GOLDFINCH_BOUNDARY=0 turns the moving boundary off. */
bool gfr_takes_boundary(const part_plan *plan, int rank);
/* Whether rank `rank` may also compute rows of the next rank's first time mix (and so loads
 * that time mix's inputs): the boundary's range upwards. GOLDFINCH_BOUNDARY=down keeps it
 * to the channel mix (work moves down the chain only). */
bool gfr_gives_ahead(const part_plan *plan, int rank);

/* What every part of this process shares. */
typedef struct gfr_ctx {
	gfe_engine *e;          /* the engine over this rank's blocks and store */
	gfm_link *link;
	part_plan plan;
	int rank, size;
	int b0, b1;             /* this rank's blocks */
	int G, L;
	int emitter;            /* the rank that owns block G-1 */
	bool has_gold;          /* b1 > G */
	bool has_finch;         /* b0 < G */
	int credits;            /* chunks in flight between two ranks */
	bool share_tail;        /* the ingest's GOLD tail shares its attention over every rank */
	int split_step;         /* the boundary with the next rank moves in steps of this many
				 * rows of a chunk (0: fixed); see rank_part.c */
	bool ahead;             /* ...into the next rank's first time mix too */
	bool split_test;        /* tests: move it every chunk, whatever the timings say */
} gfr_ctx;

void gfr_ctx_init(gfr_ctx *x, gfe_engine *e, gfm_link *link, const part_plan *plan);

typedef struct gfr_part gfr_part;

/* Parts; box is the stream's mailbox (the part does not own it). serial is the local one. */
int gfr_part_begin(gfr_ctx *x, uint32_t stream, gfm_box *box, const char *name,
		   gfr_part **out, char *err);
int gfr_part_resume(gfr_ctx *x, uint32_t stream, gfm_box *box, uint64_t serial,
		    gfr_part **out, char *err);
int gfr_part_session(gfr_ctx *x, uint32_t stream, gfm_box *box, uint64_t serial,
		     gfr_part **out, char *err);
void gfr_part_free(gfr_part *p);

uint64_t gfr_part_serial(const gfr_part *p);
uint64_t gfr_part_pos(const gfr_part *p);         /* positions through this rank */
uint64_t gfr_part_committed(const gfr_part *p);
uint64_t gfr_part_base_tokens(const gfr_part *p); /* a session's stored context */
uint64_t gfr_part_input_bytes(const gfr_part *p); /* a resumed ingest's, from its snapshot */
cs_writer *gfr_part_writer(gfr_part *p);

/* Time this rank spent computing (math and page writes) for the stream. */
uint64_t gfr_part_compute_ns(const gfr_part *p);

/* The local name of rank 0's context serial. */
/* The name of a rank's copy of rank 0's context #serial0: "r0-S", then ":" and rank 0's name
 * (len bytes, cut to fit CS_NAME_MAX) when it has one, so that gf-cache finds a rank's copy
 * by the name the user gave. */
void gfr_part_name(char *buf, size_t cap, uint64_t serial0, const char *name, size_t len);
/* Rank 0's serial from a copy's name ("r0-S" or "r0-S:NAME"); -EINVAL for other names. */
int gfr_part_parse(const char *name, uint64_t *serial0);
/* This rank's copy of rank 0's context #serial0 (either form of name); -ENOENT. */
int gfr_part_lookup(cs_store *s, uint64_t serial0, cs_ctx_info *out);

/* Runs this rank's slice on n rows (rank 0: tok only, x is scratch [n][C]) at position pos and
 * passes the result on (credits permitting). */
int gfr_part_chunk(gfr_part *p, uint64_t pos, const int32_t *tok, float *x, int n, int mode,
		   char *err);
/* Marks: rank 0 starts them; other ranks get them from the stream. */
int gfr_part_mark(gfr_part *p, int kind, uint64_t pos, char *err);
/* Starts the GOLD tail from this rank's window (the emitter). */
int gfr_part_tail_start(gfr_part *p, char *err);
/* Commits this rank's part at its current position (seal: for good). */
int gfr_part_commit(gfr_part *p, uint64_t input_bytes, bool seal, char *err);

/* The messages of the stream that arrive while this rank waits: rows, credits, acks,
 * logits, errors are taken at once; work is held back for gfr_part_next. */
typedef struct gfr_wait {
	int acks;               /* ACKs received */
	int ack_status;         /* the first failed one's status */
	int ack_rank;
	uint64_t ack_pos;       /* the highest position acknowledged by any (RESUME checks) */
	char ack_err[GF_ERR_LEN];
	bool have_logits;
	float *logits;          /* [V], owned by the part */
	uint32_t rank_ms[PART_MAX_RANKS]; /* compute time of each rank, from its seal ack */
} gfr_wait;
gfr_wait *gfr_part_wait_state(const gfr_part *p);

/* Waits until the condition: rows received up to pos / `count` acks / logits. -EPIPE with
 * the link's failure, or the first error a rank sent, in err. */
int gfr_part_wait_rows(gfr_part *p, uint64_t pos, char *err);
int gfr_part_wait_acks(gfr_part *p, int count, char *err);
int gfr_part_wait_logits(gfr_part *p, char *err);
/* Takes `count` acks whatever they say (errors too); stops only if the link fails. */
void gfr_part_drain_acks(gfr_part *p, int count);

/* Ranks >= 1: serves one stream until it closes (the thread body). The first message is in
 * the box. */
void gfr_serve_stream(gfr_ctx *x, gfm_box *box, uint32_t stream);

/* Sends an ACK for what `acked` asked (to rank 0). */
void gfr_ack(gfr_ctx *x, uint32_t stream, uint32_t acked, uint64_t pos, int status,
	     const char *err);

#endif /* GFD_RANK_PART_H */
