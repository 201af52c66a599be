/*
 * server_backend_mpi.h — goldfinchd over several MPI ranks (DESIGN.md §4).
 *
 * Every rank opens a gfe_engine over its own slice of blocks (gfe_config.block_first/end,
 * from a partition/ plan) and its own store (--cache-dir with %r for the rank), and starts a
 * gfm_link. Then rank 0 serves the network through gfd_backend_mpi_open's table, and every
 * other rank calls gfd_rank_serve until rank 0 shuts down. See rank_part.h for the pipeline
 * and the commit order, daemon/README.md for failures.
 */
#ifndef GFD_SERVER_BACKEND_MPI_H
#define GFD_SERVER_BACKEND_MPI_H

#include "engine.h"
#include "mpi_link.h"
#include "partition.h"
#include "server_backend.h"

/* Rank 0. The backend does not own e or link (the caller frees them after close). */
int gfd_backend_mpi_open(gfd_backend *out, gfe_engine *e, gfm_link *link, const part_plan *plan,
			 const gfd_local_config *cfg, char *err);

/* After ingest_finish of an MPI backend's ingest: each rank's time computing (math and page
 * writes), seconds[0..n). Returns the number of ranks. */
int gfd_ingest_compute_seconds(const gfd_ingest *in, double *seconds, int n);

/* Ranks >= 1: serves streams until rank 0 sends shutdown (0) or the link fails (-EPIPE). */
int gfd_rank_serve(gfe_engine *e, gfm_link *link, const part_plan *plan, char *err);

/* At start, before the link: ranks >= 1 drop their copies of contexts that rank 0's
 * catalogue (serials) no longer has. Returns how many were removed. */
int gfd_rank_reconcile(gfe_engine *e, int rank, const uint64_t *serials, size_t n);

#endif
