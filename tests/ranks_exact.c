/*
 * ranks_exact — one scenario through goldfinchd's backend, as one process or as P MPI ranks
 * (mpirun -n P ranks_exact ...): an ingest stopped at a checkpoint and resumed, sealed; a
 * session stepping one token at a time; a session with a question then a greedy answer.
 * Rank 0 writes every logit and generated token to OUT; tests/ranks_exact.sh runs it with
 * P = 1..4 and compares the outputs and the page files byte for byte, and with the
 * reference vectors when given.
 *
 * usage: ranks_exact MODEL.gguf CACHE_DIR OUT (--ref CASE_DIR | --random T P SEED) GEN [MODE]
 * MODE (tests/ranks_fault.sh): --walk NAME R N: only an ingest of the first P tokens under
 * the name NAME, with the N-th message rank R sends failing (N 0: none; prints how many
 * messages each rank sent); --verify: the stored context "exact" stepped through again,
 * its logits written to OUT (they must equal the first part of a full run's).
 */
#include "ranks.h"
#include "server_backend_mpi.h"
#include "test_util.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double max_abs(const float *a, size_t n)
{
	double m = 0;
	for (size_t i = 0; i < n; i++)
		m = fmax(m, fabs((double)a[i]));
	return m;
}

static double max_diff(const float *a, const float *b, size_t n)
{
	double m = 0;
	for (size_t i = 0; i < n; i++)
		m = fmax(m, fabs((double)a[i] - (double)b[i]));
	return m;
}

int main(int argc, char **argv)
{
	char err[GF_ERR_LEN] = "";
	if (argc < 6) {
		fprintf(stderr, "usage: ranks_exact MODEL CACHE_DIR OUT (--ref DIR | --random T P SEED) GEN\n");
		return 2;
	}
	const char *model = argv[1], *cache = argv[2], *out_path = argv[3];
	int32_t *tok = NULL;
	float *ref_decode = NULL;
	size_t T = 0, P = 0;
	int gen, argi;
	if (!strcmp(argv[4], "--ref")) {
		size_t len;
		tok = test_slurp(argv[5], "tokens.i32", &len);
		T = len / sizeof(int32_t);
		ref_decode = test_slurp(argv[5], "decode_logits.f32", &len);
		/* decode_logits begins at the case's P (config.json). */
		char *cfg = test_slurp(argv[5], "config.json", &len);
		const char *pp = strstr(cfg, "\"P\":");
		if (!pp) {
			fprintf(stderr, "ranks_exact: cannot read the case in %s\n", argv[5]);
			return 1;
		}
		P = strtoul(pp + 4, NULL, 10);
		free(cfg);
		gen = atoi(argv[6]);
		argi = 7;
	} else if (!strcmp(argv[4], "--random") && argc >= 9) {
		T = strtoul(argv[5], NULL, 10);
		P = strtoul(argv[6], NULL, 10);
		uint64_t seed = strtoull(argv[7], NULL, 10);
		gen = atoi(argv[8]);
		argi = 9;
		tok = malloc(T * sizeof(int32_t));
		for (size_t i = 0; i < T && tok; i++) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			tok[i] = (int32_t)(seed >> 33);
		}
	} else {
		fprintf(stderr, "ranks_exact: bad arguments\n");
		return 2;
	}

	const char *walk_name = NULL;
	int fault_rank = -1;
	uint64_t fault_n = 0;
	bool verify = false;
	if (argi + 3 < argc && !strcmp(argv[argi], "--walk")) {
		walk_name = argv[argi + 1];
		fault_rank = atoi(argv[argi + 2]);
		fault_n = strtoull(argv[argi + 3], NULL, 10);
	} else if (argi < argc && !strcmp(argv[argi], "--verify")) {
		verify = true;
	}
	/* A rank that fails makes the launcher stop the others: let this one report first. */
	signal(SIGTERM, SIG_IGN);
	gfd_local_config lc = {
		/* f32 rows against the reference (f16 rows round c: ~6e-5); f16 otherwise. */
		.model_path = model, .cache_dir = cache,
		.c_dtype = ref_decode ? CS_DTYPE_F32 : CS_DTYPE_F16,
		.checkpoint_tokens = 32, .threads = 1, .chunk = 16,
		/* float keys and values, as the references' (bf16 ones: ~1.5e-3) */
		.kv_dtype_set = ref_decode, .kv_dtype = GF_DTYPE_F32,
	};
	/* Chunks of a size a pipeline's boundary can split (the --boundary case of the script). */
	const char *chunk = getenv("RANKS_EXACT_CHUNK");
	if (chunk && atoi(chunk) > 0)
		lc.chunk = lc.checkpoint_tokens = atoi(chunk);
	gfd_ranks ranks;
	int rc = gfd_ranks_start(&ranks, &lc, NULL, err);
	if (rc) {
		fprintf(stderr, "ranks_exact: %s\n", err);
		return 1;
	}
	if (ranks.size > 1 && ranks.rank == fault_rank && fault_n)
		gfm_link_fail_send_at(ranks.link, fault_n);
	if (ranks.size > 1 && ranks.rank > 0) {
		rc = gfd_ranks_serve(&ranks, err);
		if (walk_name)
			printf("rank %d sent %llu messages\n", ranks.rank,
			       (unsigned long long)gfm_link_sends(ranks.link));
		if (rc)
			fprintf(stderr, "ranks_exact: rank %d: %s\n", ranks.rank, err);
		gfd_ranks_end(&ranks);
		free(tok);
		free(ref_decode);
		return rc ? 1 : 0;
	}
	gfd_backend be;
	rc = ranks.size > 1 ? gfd_backend_mpi_open(&be, ranks.e, ranks.link, &ranks.plan, &lc, err)
			    : gfd_backend_local_open(&be, &lc, err);
	if (rc) {
		fprintf(stderr, "ranks_exact: %s\n", err);
		return 1;
	}
	const gfd_backend_ops *ops = be.ops;
	gfd_backend_info info;
	ops->info(be.self, &info);
	const int V = info.cfg.vocab_size;
	for (size_t i = 0; i < T && !ref_decode; i++)
		tok[i] %= V;
	FILE *out = fopen(out_path, "wb");
	float *logits = malloc(sizeof(float) * (size_t)V);
	CHECK(out && logits, "cannot open %s", out_path);
	if (test_failures)
		goto done;

	if (walk_name) {
		/* One ingest, the path the fault walk covers: begin, chunks, checkpoints, seal. */
		gfd_ingest *wi = NULL;
		cs_ctx_info wc;
		bool wr;
		rc = ops->ingest_begin(be.self, walk_name, &wi, err);
		if (!rc)
			rc = ops->ingest_tokens(wi, tok, P, err);
		if (!rc)
			rc = ops->ingest_finish(wi, &wc, &wr, err);
		if (wi)
			ops->ingest_free(wi);
		if (ranks.size > 1)
			printf("rank 0 sent %llu messages\n", (unsigned long long)gfm_link_sends(ranks.link));
		if (rc) {
			fprintf(stderr, "ranks_exact: %s\n", err);
			test_failures++;
		}
		goto done;
	}
	if (verify) {
		/* The stored context "exact" answers as it did. */
		gfd_session *vs = NULL;
		cs_ctx_info vc;
		CHECK(ops->lookup_name(be.self, "exact", &vc) == 0 && vc.sealed, "no sealed \"exact\"");
		CHECK(!test_failures && ops->session_open(be.self, vc.serial, &vs, err) == 0, "%s", err);
		for (size_t t = P; t < T && !test_failures; t++) {
			CHECK(ops->session_step(vs, tok[t], logits, err) == 0, "%s", err);
			fwrite(logits, sizeof(float), (size_t)V, out);
		}
		ops->session_free(vs);
		goto done;
	}
	/* Ingest the first P tokens: in odd pieces, stopped after a checkpoint, resumed. */
	gfd_ingest *in = NULL;
	gfd_ingest_state st;
	CHECK(ops->ingest_begin(be.self, "exact", &in, err) == 0, "%s", err);
	const size_t half = P / 2;
	for (size_t t = 0; t < half; t += 7)
		CHECK(ops->ingest_tokens(in, tok + t, t + 7 < half ? 7 : half - t, err) == 0, "%s", err);
	CHECK(ops->ingest_checkpoint(in, err) == 0, "%s", err);
	ops->ingest_state(in, &st);
	ops->ingest_free(in);
	in = NULL;
	CHECK(st.committed > 0 && st.committed <= half, "%s", err);
	CHECK(ops->ingest_resume(be.self, st.serial, &in, err) == 0, "%s", err);
	if (test_failures)
		goto done;
	CHECK(ops->ingest_tokens(in, tok + st.committed, P - st.committed, err) == 0, "%s", err);
	cs_ctx_info ctx;
	bool reused = true;
	CHECK(ops->ingest_finish(in, &ctx, &reused, err) == 0, "%s", err);
	ops->ingest_free(in);
	CHECK(!reused && ctx.n_tokens == P && ctx.sealed, "%s", err);
	if (test_failures) {
		fprintf(stderr, "ranks_exact: ingest: %s\n", err);
		goto done;
	}

	/* Steps, one token at a time, against the reference's decode logits. */
	gfd_session *s = NULL;
	double worst = 0;
	CHECK(ops->session_open(be.self, ctx.serial, &s, err) == 0, "%s", err);
	for (size_t t = P; t < T && !test_failures; t++) {
		CHECK(ops->session_step(s, tok[t], logits, err) == 0, "%s", err);
		fwrite(logits, sizeof(float), (size_t)V, out);
		if (ref_decode) {
			const float *ref = ref_decode + (t - P) * (size_t)V;
			worst = fmax(worst, max_diff(logits, ref, (size_t)V) / max_abs(ref, (size_t)V));
		}
	}
	ops->session_free(s);
	if (ref_decode) {
		printf("ranks %d: decode steps %zu..%zu: max |diff| / max |ref| = %.2e\n", ranks.size,
		       P, T - 1, worst);
		CHECK(worst <= 2e-5, "%s", err);
	}
	/* A question (the rest of the tokens at once), then a greedy answer. */
	CHECK(ops->session_open(be.self, ctx.serial, &s, err) == 0, "%s", err);
	CHECK(ops->session_prefill(s, tok + P, T - P, logits, err) == 0, "%s", err);
	if (ref_decode && !test_failures) {
		const float *ref = ref_decode + (T - 1 - P) * (size_t)V;
		double e = max_diff(logits, ref, (size_t)V) / max_abs(ref, (size_t)V);
		printf("ranks %d: question of %zu tokens: last logits %.2e\n", ranks.size, T - P, e);
		CHECK(e <= 2e-5, "%s", err);
	}
	for (int g = 0; g < gen && !test_failures; g++) {
		fwrite(logits, sizeof(float), (size_t)V, out);
		int32_t best = 0;
		for (int v = 1; v < V; v++)
			if (logits[v] > logits[best])
				best = v;
		fwrite(&best, sizeof(best), 1, out);
		CHECK(ops->session_step(s, best, logits, err) == 0, "%s", err);
	}
	ops->session_free(s);
	if (test_failures)
		fprintf(stderr, "ranks_exact: %s\n", err);
	else
		printf("ranks %d: %zu tokens ingested (resumed at %llu), %zu steps, %d generated\n",
		       ranks.size, P, (unsigned long long)st.committed, T - P, gen);
done:
	if (out)
		fclose(out);
	gfd_backend_close(&be);
	gfd_ranks_end(&ranks);
	free(logits);
	free(tok);
	free(ref_decode);
	return test_failures ? 1 : 0;
}
