/*
 * ranks.c — goldfinchd as one of several MPI ranks: start-up (MPI, the plan, this rank's
 * engine and store, the link), the serve loop of ranks >= 1, and the end. See ranks.h.
 */
#include "ranks.h"

#include "engine_internal.h"
#include "rank_part.h"
#include "server_backend_mpi.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool gfd_ranks_launched(void)
{
	/* Open MPI's mpirun and srun --mpi=pmix both set these; without them we are one
	 * process and do not touch MPI at all (no singleton start-up cost, no daemon). */
	return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

/* DIR with %r replaced by the rank; without %r, several ranks each get DIR/rank<r>. */
static int rank_dir(char *out, size_t cap, const char *dir, int rank, int size)
{
	const char *r = strstr(dir, "%r");
	int n;
	if (r)
		n = snprintf(out, cap, "%.*s%d%s", (int)(r - dir), dir, rank, r + 2);
	else if (size > 1)
		n = snprintf(out, cap, "%s/rank%d", dir, rank);
	else
		n = snprintf(out, cap, "%s", dir);
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* The parents of a rank's directory (DIR in DIR/rank1 or DIR/%r), as mkdir -p would. */
static void make_parents(const char *path)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		mkdir(buf, 0700);
		*p = '/';
	}
}

int gfd_ranks_plan(part_plan *plan, const char *model_path, int n_ranks,
		   const part_workload *workload, char *err)
{
	gf_gguf g;
	char perr[PART_ERR_LEN];
	int rc = gf_gguf_read(&g, model_path, err);
	if (rc)
		return rc;
	const gf_config *c = &g.config;
	part_shape shape = { c->n_layer, c->first_gold, c->n_embd, c->dim_ffn, c->vocab_size,
			     c->ckv_dim };
	part_workload w;
	part_workload_default(&w);
	if (workload)
		w = *workload;
	rc = part_plan_make(plan, &shape, &w, n_ranks, NULL, perr);
	gf_gguf_free(&g);
	if (rc)
		return gf_error(err, rc, "%s: %s", model_path, perr);
	return 0;
}

int gfd_ranks_start(gfd_ranks *r, const gfd_local_config *lc, const part_workload *workload,
		    char *err)
{
	memset(r, 0, sizeof(*r));
	r->size = 1;
	/* One process: %r is 0 (so `mpirun -n 1` and no launcher name the same directory). */
	if (rank_dir(r->cache_dir, sizeof(r->cache_dir), lc->cache_dir, 0, 1))
		return gf_error(err, -ENAMETOOLONG, "--cache-dir %s: too long", lc->cache_dir);
	if (strcmp(r->cache_dir, lc->cache_dir))
		make_parents(r->cache_dir);
	if (!gfd_ranks_launched())
		return 0;
	int provided = 0;
	if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
		return gf_error(err, -EIO, "MPI_Init_thread failed");
	r->mpi = true;
	MPI_Comm_rank(MPI_COMM_WORLD, &r->rank);
	MPI_Comm_size(MPI_COMM_WORLD, &r->size);
	if (r->size == 1)
		return 0; /* mpirun -n 1: the one-process daemon */
	if (provided < MPI_THREAD_SERIALIZED)
		return gf_error(err, -ENOTSUP, "this MPI gives thread level %d; goldfinchd needs MPI_THREAD_SERIALIZED",
				provided);
	int rc = gfd_ranks_plan(&r->plan, lc->model_path, r->size, workload, err);
	if (rc)
		return rc;
	if ((rc = rank_dir(r->cache_dir, sizeof(r->cache_dir), lc->cache_dir, r->rank, r->size)))
		return gf_error(err, rc, "--cache-dir %s: too long", lc->cache_dir);
	make_parents(r->cache_dir);
	gfe_config ec;
	gfd_local_engine_config(lc, &ec);
	ec.cache_dir = r->cache_dir;
	part_rank_blocks(&r->plan, r->rank, &ec.block_first, &ec.block_end);
	/* Every rank helps with the ingest's GOLD tail (rank_part.c: a share of the spans). */
	ec.gold_kv_all = r->size > 1;
	/* A rank after a boundary that moves finishes its predecessor's last channel mix. */
	ec.prev_ffn = gfr_takes_boundary(&r->plan, r->rank);
	/* ...and one before it computes rows of that rank's first time mix. */
	ec.next_att = gfr_gives_ahead(&r->plan, r->rank);
	/* Every rank computes in rank 0's mode: the pipeline's rows and the cache pages must be
	 * those of one process, and "auto" (or GOLDFINCH_COMPUTE) may resolve otherwise on a
	 * node of another CPU. A rank that cannot run it fails its open below, with the reason. */
	int compute = (int)ec.compute;
	MPI_Bcast(&compute, 1, MPI_INT, 0, MPI_COMM_WORLD);
	ec.compute = compute == GF_COMPUTE_BF16 ? GF_COMPUTE_BF16 : GF_COMPUTE_F32;
	char why[GF_ERR_LEN];
	rc = gfe_open(&r->e, &ec, why);
	/* Every rank must get here, or the others would wait for it in the collectives below. */
	int ok = rc == 0, all_ok = 0;
	MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
	if (rc)
		return gf_error(err, rc, "rank %d: %s", r->rank, why);
	if (!all_ok)
		return gf_error(err, -EIO, "rank %d: another rank could not start (see its message)",
				r->rank);
	/* Rank 0's catalogue decides which copies the other ranks keep. */
	uint64_t n = 0, *serials = NULL;
	cs_ctx_info *list = NULL;
	size_t count = 0;
	if (r->rank == 0 && !cs_store_list(r->e->store, &list, &count, NULL))
		n = count;
	MPI_Bcast(&n, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
	serials = calloc(n ? n : 1, sizeof(uint64_t));
	if (!serials) {
		free(list);
		return gf_error(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; r->rank == 0 && i < n; i++)
		serials[i] = list[i].serial;
	free(list);
	MPI_Bcast(serials, (int)n, MPI_UINT64_T, 0, MPI_COMM_WORLD);
	r->reconciled = gfd_rank_reconcile(r->e, r->rank, serials, n);
	free(serials);
	if ((rc = gfm_link_start(&r->link, MPI_COMM_WORLD, err)))
		return rc;
	return 0;
}

int gfd_ranks_serve(gfd_ranks *r, char *err)
{
	return gfd_rank_serve(r->e, r->link, &r->plan, err);
}

bool gfd_ranks_failed(const gfd_ranks *r)
{
	return r->link && gfm_link_failure(r->link)[0];
}

void gfd_ranks_end(gfd_ranks *r)
{
	const bool failed = gfd_ranks_failed(r);
	gfm_link_stop(r->link);
	gfe_close(r->e);
	/* A dead peer would hang MPI_Finalize: leave, and let the launcher clean up. */
	if (r->mpi && !failed)
		MPI_Finalize();
	memset(r, 0, sizeof(*r));
}

void gfd_ranks_describe(const gfd_ranks *r, char *buf, size_t cap)
{
	int b0, b1;
	part_rank_blocks(&r->plan, r->rank, &b0, &b1);
	snprintf(buf, cap, "rank %d of %d: blocks %d..%d%s%s, cache %s, %d stale copies removed",
		 r->rank, r->size, b0, b1 - 1, part_emitter(&r->plan) == r->rank ? ", emits the cache" : "",
		 part_has_gold(&r->plan, r->rank) ? ", GOLD" : "", r->cache_dir, r->reconciled);
}
