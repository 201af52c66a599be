/*
 * gf-ranks-bench — ingest speed of goldfinchd's backend as one process or as P MPI ranks:
 * random tokens through the whole ingest (pipeline, pages on every rank's store,
 * checkpoints, the GOLD tail, the seal). Prints one JSON line from rank 0: tokens/s, and
 * per rank the time spent computing over the wall time (the pipeline's efficiency).
 *
 * usage: [mpirun -n P] gf-ranks-bench MODEL.gguf CACHE_DIR [--tokens N] [--threads T]
 *        [--chunk C] [--plan-workload I:D:C] [--seed S] [--compute f32|bf16|auto]
 * --compute: how prefill chunks multiply (default gf_compute_default(): GOLDFINCH_COMPUTE,
 * else f32); every rank takes rank 0's, as goldfinchd's do.
 * CACHE_DIR takes %r for the rank (or gets /rank<r> under MPI); it is emptied first by the
 * caller (tools/bench-ranks.sh). Every rank ends with a line on stderr: its user CPU time and,
 * where the CPU has counters, the clock it ran at and its instructions per cycle (a rank
 * that is slower than one process on the same blocks: a lower clock, or less done per cycle).
 */
#include "goldfinch_version.h"
#include "bench_util.h"
#include "ranks.h"
#include "server_backend_mpi.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void print_counters(bench_counters *bc, int rank)
{
	double cpu, ghz, ipc;
	struct rusage ru;
	bench_counters_stop(bc, &cpu, &ghz, &ipc);
	getrusage(RUSAGE_SELF, &ru);
	const double sys = (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
	if (ghz > 0)
		fprintf(stderr, "rank %d: user CPU %.3f s at %.2f GHz, %.2f instructions per cycle; kernel %.3f s, %ld page faults\n",
			rank, cpu, ghz, ipc, sys, ru.ru_minflt + ru.ru_majflt);
	else
		fprintf(stderr, "rank %d: user CPU %.3f s (no hardware counters here); kernel %.3f s, %ld page faults\n",
			rank, cpu, sys, ru.ru_minflt + ru.ru_majflt);
}

int main(int argc, char **argv)
{
	if (gf_version_asked(argc, argv, "gf-ranks-bench"))
		return 0;

	char err[GF_ERR_LEN] = "";
	const bool help = argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
	if (help || argc < 3 || argv[1][0] == '-') {
		fprintf(help ? stdout : stderr, "usage: [mpirun -n P] gf-ranks-bench MODEL.gguf CACHE_DIR [--tokens N] [--threads T] [--chunk C] [--plan-workload I:D:C] [--seed S] [--compute f32|bf16|auto]\n"
				"  --compute: f32 (exact) or bf16 (AVX512-BF16 CPUs, faster ingest); default %s\n",
			gf_compute_name(gf_compute_default()));
		return help ? 0 : 2;
	}
	gfd_local_config lc = { .model_path = argv[1], .cache_dir = argv[2],
				.c_dtype = CS_DTYPE_F16, .threads = 1, .compute_set = true,
				.compute = gf_compute_default() };
	uint64_t n_tokens = 65536, seed = 1;
	part_workload w;
	part_workload_default(&w);
	for (int i = 3; i + 1 < argc; i += 2) {
		const char *f = argv[i], *v = argv[i + 1];
		if (!strcmp(f, "--tokens"))
			n_tokens = strtoull(v, NULL, 10);
		else if (!strcmp(f, "--threads"))
			lc.threads = atoi(v);
		else if (!strcmp(f, "--chunk"))
			lc.chunk = atoi(v);
		else if (!strcmp(f, "--seed"))
			seed = strtoull(v, NULL, 10);
		else if (!strcmp(f, "--compute")) {
			if (gf_compute_parse(v, &lc.compute, err)) {
				fprintf(stderr, "gf-ranks-bench: --compute: %s\n", err);
				return 2;
			}
		}
		else if (!strcmp(f, "--plan-workload") &&
			 sscanf(v, "%lf:%lf:%lf", &w.ingest_tokens, &w.decode_tokens, &w.context_tokens) == 3)
			;
		else {
			fprintf(stderr, "gf-ranks-bench: bad option %s %s\n", f, v);
			return 2;
		}
	}
	bench_counters counters;
	bench_counters_start(&counters);
	gfd_ranks ranks;
	if (gfd_ranks_start(&ranks, &lc, &w, err)) {
		fprintf(stderr, "gf-ranks-bench: %s\n", err);
		return 1;
	}
	if (ranks.size > 1 && ranks.rank > 0) {
		int rc = gfd_ranks_serve(&ranks, err);
		if (rc)
			fprintf(stderr, "gf-ranks-bench: rank %d: %s\n", ranks.rank, err);
		const int rank = ranks.rank;
		gfd_ranks_end(&ranks);
		print_counters(&counters, rank);
		return rc ? 1 : 0;
	}
	gfd_backend be;
	int rc = ranks.size > 1 ? gfd_backend_mpi_open(&be, ranks.e, ranks.link, &ranks.plan, &lc, err)
				: gfd_backend_local_open(&be, &lc, err);
	if (rc) {
		fprintf(stderr, "gf-ranks-bench: %s\n", err);
		gfd_ranks_end(&ranks);
		return 1;
	}
	gfd_backend_info info;
	be.ops->info(be.self, &info);
	const size_t piece = 4096;
	int32_t *tok = malloc(piece * sizeof(int32_t));
	gfd_ingest *in = NULL;
	cs_ctx_info ctx;
	bool reused;
	double t0 = now_s(), secs[PART_MAX_RANKS];
	rc = tok ? be.ops->ingest_begin(be.self, NULL, &in, err) : -ENOMEM;
	const double t_begun = now_s();
	for (uint64_t done = 0; !rc && done < n_tokens; done += piece) {
		const size_t n = n_tokens - done < piece ? (size_t)(n_tokens - done) : piece;
		for (size_t i = 0; i < n; i++) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			tok[i] = (int32_t)((seed >> 33) % (uint64_t)info.cfg.vocab_size);
		}
		rc = be.ops->ingest_tokens(in, tok, n, err);
	}
	const double t_fed = now_s();
	if (!rc)
		rc = be.ops->ingest_finish(in, &ctx, &reused, err);
	const double wall = now_s() - t0;
	int n_ranks = 1;
	secs[0] = wall;
	if (!rc && ranks.size > 1)
		n_ranks = gfd_ingest_compute_seconds(in, secs, PART_MAX_RANKS);
	be.ops->ingest_free(in);
	if (rc) {
		fprintf(stderr, "gf-ranks-bench: %s\n", err);
	} else {
		printf("{\"ranks\":%d,\"threads\":%d,\"tokens\":%llu,\"seconds\":%.3f,"
		       "\"tokens_per_s\":%.1f,\"efficiency\":[",
		       ranks.size, lc.threads, (unsigned long long)n_tokens, wall,
		       (double)n_tokens / wall);
		for (int r = 0; r < n_ranks; r++)
			printf("%s%.3f", r ? "," : "", secs[r] / wall);
		/* Where rank 0's wall time went: starting the ingest on every rank, feeding the
		 * tokens (the pipeline), finishing (the drain, commits, the GOLD tail, the seal). */
		printf("],\"phases_s\":[%.3f,%.3f,%.3f],\"blocks\":[", t_begun - t0,
		       t_fed - t_begun, t0 + wall - t_fed);
		for (int r = 0; r < ranks.size; r++) {
			int b0 = 0, b1 = info.cfg.n_layer;
			if (ranks.size > 1)
				part_rank_blocks(&ranks.plan, r, &b0, &b1);
			printf("%s\"%d..%d\"", r ? "," : "", b0, b1 - 1);
		}
		printf("],\"compute\":\"%s\",\"kernels\":\"%s\",\"model\":\"%s\"}\n",
		       gf_compute_name(info.compute), info.kernels, info.model_name);
	}
	free(tok);
	gfd_backend_close(&be);
	gfd_ranks_end(&ranks);
	print_counters(&counters, 0);
	return rc ? 1 : 0;
}
