/*
 * partition.h — which MPI rank owns which blocks (DESIGN.md §4).
 *
 * A plan gives each rank one contiguous slice of blocks, in rank order: rank 0 also runs the
 * front end and the embedding, the last rank also the head. It balances a cost model over a
 * workload: Finch blocks cost per ingested token; every block costs per decoded token, and
 * GOLD blocks also per decoded token times the context length (attention over every cached
 * position); the head costs per decoded token. The plan minimises the largest
 * cost / weight over the ranks (weights let a faster node take more), which for a pipeline
 * is what bounds throughput.
 *
 * Pure functions: no I/O but part_plan_print, no global state; any thread.
 * Functions return 0 or -errno with a one-line message in err (PART_ERR_LEN bytes, may be
 * NULL).
 */
#ifndef GF_PARTITION_H
#define GF_PARTITION_H

#include <stdint.h>
#include <stdio.h>

#define PART_ERR_LEN 256
#define PART_MAX_RANKS 1024
#define PART_MAX_BLOCKS 1024

/* The model's shape, as far as cost goes (model/goldfinch.h's gf_config has all of it). */
typedef struct part_shape {
	int n_layer;      /* blocks */
	int first_gold;   /* G: blocks [0, G) are Finch, [G, n_layer) GOLD */
	int n_embd;       /* C = dim_att */
	int dim_ffn;      /* F */
	int vocab;        /* V */
	int ckv_dim;      /* Ck */
} part_shape;

/* What the plan is balanced for. Only ratios matter. */
typedef struct part_workload {
	double ingest_tokens;   /* tokens ingested through the Finch stage */
	double decode_tokens;   /* tokens generated */
	double context_tokens;  /* typical context length while generating */
} part_workload;

/* The default: a 1M-token book, then 1,000 tokens of answers about it. */
void part_workload_default(part_workload *w);

typedef struct part_plan {
	int n_ranks;
	int n_layer, first_gold;
	int first[PART_MAX_RANKS];   /* rank r owns blocks [first[r], first[r+1]) */
	double cost[PART_MAX_RANKS]; /* modelled cost of rank r (flops over the workload) */
	double weight[PART_MAX_RANKS];
	double total_cost;
} part_plan;

/* Modelled cost of block b over the workload, and of the head. */
double part_block_cost(const part_shape *s, const part_workload *w, int b);
double part_head_cost(const part_shape *s, const part_workload *w);

/* Plans n_ranks slices. weights[r] > 0 is rank r's relative speed (NULL: all equal). Every
 * rank gets at least one block, so n_ranks <= n_layer. */
int part_plan_make(part_plan *p, const part_shape *s, const part_workload *w, int n_ranks,
		   const double *weights, char *err);

/* Blocks of rank r: [*first, *end). */
void part_rank_blocks(const part_plan *p, int r, int *first, int *end);
/* The rank that owns block b. */
int part_owner(const part_plan *p, int b);
/* The rank that emits the cache rows (owns block G-1). */
int part_emitter(const part_plan *p);
/* 1 if rank r owns a GOLD block (keeps a copy of the cache pages). */
int part_has_gold(const part_plan *p, int r);
/* max over ranks of cost/weight, divided by its ideal (total / total weight): 1 is perfect. */
double part_imbalance(const part_plan *p);

/* Moving boundaries (daemon/rank_part.c). In a chain of pipeline ranks 0..chain-1, boundary r
 * is a stretch of work of boundary_ns that ranks r and r+1 share: rank r runs the first part,
 * rank r+1 the rest. above_ns is the chain's work before it (ranks 0..r without their
 * boundaries' work, and every boundary before r whole), below_ns its work after it; mine_ns
 * and next_ns are ranks r's and r+1's own, without it. The work kept that gives ranks 0..r
 * their even share of the whole, (r + 1) / chain: every boundary set this way from the same
 * figures makes every rank's time the same at once. Where a boundary cannot move as far as
 * that (its range is used up), the share would leave a rank the slowest, so the work kept
 * is at most what makes ranks r and r+1 equal. In ns, outside 0..boundary_ns where no part
 * of the boundary reaches it. */
double part_boundary_target(double above_ns, double below_ns, double mine_ns, double next_ns,
			    double boundary_ns, int r, int chain);

/* The boundary's work as rows: n rows of row_ns (the sending rank's last channel mix) then
 * u rows of ahead_ns (the next rank's first time-mix products). The row position, 0..n+u, at
 * which rank r keeps `work` (clamped to the range). */
double part_boundary_position(double work, int n, double row_ns, int u, double ahead_ns);

/* A position (clamped to 0..n) as a multiple of step (n a multiple of step): what rounding
 * leaves out is carried in *residue (0 to start) to the next chunk's choice, so that over
 * chunks the rows average the target rather than the nearest step. */
int part_boundary_rows(double target, double *residue, int n, int step);

/* A table of the plan, one line per rank, for --print-plan. */
void part_plan_print(const part_plan *p, const part_shape *s, FILE *f);

#endif
