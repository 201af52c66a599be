/*
 * ranks.h — goldfinchd's process start-up when launched by mpirun or srun --mpi=pmix:
 * MPI, the partition plan, this rank's engine over its blocks and its own store
 * (--cache-dir with %r replaced by the rank, or DIR/rank<r> without %r), the link between
 * the ranks. Without a launcher nothing here touches MPI.
 */
#ifndef GFD_RANKS_H
#define GFD_RANKS_H

#include "engine.h"
#include "mpi_link.h"
#include "partition.h"
#include "server_backend.h"

#include <stdbool.h>

typedef struct gfd_ranks {
	bool mpi;               /* MPI initialised */
	int rank, size;         /* 0 and 1 without a launcher */
	part_plan plan;
	char cache_dir[4096];   /* this rank's store (--cache-dir with %r replaced) */
	gfe_engine *e;          /* size > 1: this rank's slice */
	gfm_link *link;
	int reconciled;         /* stale copies removed at start */
} gfd_ranks;

bool gfd_ranks_launched(void);
/* The plan goldfinchd uses for n ranks of the model. */
int gfd_ranks_plan(part_plan *plan, const char *model_path, int n_ranks,
		   const part_workload *workload /* NULL: part_workload_default */, char *err);
/* Initialises MPI when launched; with size > 1 opens this rank's engine and the link. */
int gfd_ranks_start(gfd_ranks *r, const gfd_local_config *lc, const part_workload *workload,
		    char *err);
/* Ranks >= 1: serve until rank 0 shuts down. */
int gfd_ranks_serve(gfd_ranks *r, char *err);
bool gfd_ranks_failed(const gfd_ranks *r);
/* Stops the link, closes the engine, finalises MPI (not after a failure). */
void gfd_ranks_end(gfd_ranks *r);
void gfd_ranks_describe(const gfd_ranks *r, char *buf, size_t cap);

#endif
