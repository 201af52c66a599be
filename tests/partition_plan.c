/*
 * partition_plan — unit tests of partition/: the plan is optimal (against brute force over
 * every contiguous split on small shapes), respects weights, covers every block once in
 * order, names the emitter and the GOLD ranks, and refuses impossible requests. Exit 0/1.
 */
#include "partition.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond, ...)                                                                     \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			printf("FAIL %s:%d: ", __FILE__, __LINE__);                          \
			printf(__VA_ARGS__);                                                 \
			printf("\n");                                                        \
			failures++;                                                          \
		}                                                                            \
	} while (0)

/* The best largest cost/weight over every way to cut L blocks into R non-empty slices. */
static double brute(const part_shape *s, const part_workload *w, int R, const double *wt,
		    int r, int b)
{
	const int L = s->n_layer;
	if (r == R - 1) {
		double c = part_head_cost(s, w);
		for (int i = b; i < L; i++)
			c += part_block_cost(s, w, i);
		return c / (wt ? wt[r] : 1);
	}
	double best = INFINITY;
	for (int e = b + 1; e <= L - (R - 1 - r); e++) {
		double c = 0;
		for (int i = b; i < e; i++)
			c += part_block_cost(s, w, i);
		c /= wt ? wt[r] : 1;
		double rest = brute(s, w, R, wt, r + 1, e);
		double v = c > rest ? c : rest;
		best = v < best ? v : best;
	}
	return best;
}

static double plan_max(const part_plan *p)
{
	double m = 0;
	for (int r = 0; r < p->n_ranks; r++)
		m = fmax(m, p->cost[r] / p->weight[r]);
	return m;
}

int main(void)
{
	char err[PART_ERR_LEN];
	part_plan p;
	part_workload w;
	part_workload_default(&w);
	part_shape small = { 12, 8, 768, 2688, 65536, 48 };

	/* Optimal against brute force, for several shapes, workloads, rank counts, weights. */
	part_shape shapes[] = { { 6, 4, 128, 448, 512, 8 }, { 9, 6, 256, 896, 1000, 16 },
				{ 10, 5, 64, 224, 50, 4 }, small };
	part_workload loads[] = { { 1e6, 1e3, 1e6 }, { 1e6, 0, 0 }, { 0, 1e3, 1e5 }, { 1e4, 1e4, 1e3 } };
	double weights[] = { 1.0, 2.0, 0.5, 1.5 };
	for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++)
		for (size_t li = 0; li < sizeof(loads) / sizeof(loads[0]); li++)
			for (int R = 1; R <= 4; R++)
				for (int wt = 0; wt < 2; wt++) {
					const part_shape *s = &shapes[si];
					int rc = part_plan_make(&p, s, &loads[li], R, wt ? weights : NULL, err);
					CHECK(rc == 0, "plan L%d R%d: %s", s->n_layer, R, err);
					if (rc)
						continue;
					double want = brute(s, &loads[li], R, wt ? weights : NULL, 0, 0);
					double got = plan_max(&p);
					CHECK(fabs(got - want) <= 1e-9 * want + 1e-12,
					      "L%d R%d load %zu weights %d: max %g, optimum %g", s->n_layer,
					      R, li, wt, got, want);
					/* contiguous, in order, every block once, none empty */
					int covered = 0;
					for (int r = 0; r < R; r++) {
						int a, e;
						part_rank_blocks(&p, r, &a, &e);
						CHECK(a == covered && e > a, "rank %d slice %d..%d", r, a, e);
						covered = e;
					}
					CHECK(covered == s->n_layer, "covered %d of %d", covered, s->n_layer);
				}

	/* One rank holds everything; as many ranks as blocks, one each. */
	CHECK(part_plan_make(&p, &small, &w, 1, NULL, err) == 0 && part_imbalance(&p) == 1.0,
	      "one rank");
	CHECK(part_plan_make(&p, &small, &w, 12, NULL, err) == 0, "12 ranks: %s", err);
	for (int r = 0; r < 12; r++)
		CHECK(p.first[r] == r, "12 ranks: rank %d starts at %d", r, p.first[r]);

	/* Roles: the emitter owns block G-1; GOLD ranks are those past it. */
	CHECK(part_plan_make(&p, &small, &w, 4, NULL, err) == 0, "4 ranks: %s", err);
	int a, e;
	part_rank_blocks(&p, part_emitter(&p), &a, &e);
	CHECK(a <= 7 && 7 < e, "emitter owns blocks %d..%d, not block 7", a, e - 1);
	CHECK(part_owner(&p, 0) == 0 && part_owner(&p, 11) == 3, "owners of the ends");
	CHECK(part_has_gold(&p, 3) && !part_has_gold(&p, 0), "GOLD ranks");
	/* A book-ingest workload balances the Finch stage over the ranks. */
	CHECK(part_imbalance(&p) < 1.6, "imbalance %.3f", part_imbalance(&p));

	/* Weights: a rank twice as fast takes about twice the work. */
	double w2[2] = { 2.0, 1.0 };
	part_shape even = { 24, 16, 2048, 7168, 65536, 128 };
	part_workload ingest_only = { 1e6, 0, 0 };
	CHECK(part_plan_make(&p, &even, &ingest_only, 2, w2, err) == 0, "weights: %s", err);
	CHECK(p.cost[0] > 1.6 * p.cost[1] && p.cost[0] < 2.6 * p.cost[1], "weighted costs %g %g",
	      p.cost[0], p.cost[1]);

	/* Impossible requests are refused with a message. */
	CHECK(part_plan_make(&p, &small, &w, 13, NULL, err) == -EINVAL && strstr(err, "13 ranks"),
	      "13 ranks for 12 blocks: %s", err);
	CHECK(part_plan_make(&p, &small, &w, 0, NULL, err) == -EINVAL, "0 ranks");
	double bad[2] = { 1.0, -1.0 };
	CHECK(part_plan_make(&p, &small, &w, 2, bad, err) == -EINVAL && strstr(err, "rank 1"),
	      "negative weight: %s", err);

	/* Moving boundaries: a chain of 8 ranks, 256-row channel mixes. Bases made from chosen
	 * keeps and an even time of 1000 a rank give those keeps back, each from its prefix. */
	enum { CHAIN = 8, ROWS = 256 };
	const int want_keep[CHAIN - 1] = { 200, 150, 230, 100, 180, 64, 128 };
	for (int pass = 0; pass < 2; pass++) {
		const double row = pass ? 2.0 : 1.0, even = 1000 * row;
		double base[CHAIN], prefix = 0, total = 0;
		for (int r = 0; r < CHAIN; r++) {
			const double kept = r < CHAIN - 1 ? want_keep[r] : 0;
			const double helped = r > 0 ? ROWS - want_keep[r - 1] : 0;
			base[r] = even - (kept + helped) * row;
			total += base[r];
		}
		for (int r = 0; r < CHAIN - 1; r++) {
			prefix += base[r];
			const double above = prefix + r * ROWS * row;
			const double below = total - prefix + (CHAIN - 2 - r) * ROWS * row;
			/* Ranks r and r+1 without boundary r's rows. */
			const double mine = even - want_keep[r] * row;
			const double next = even - (ROWS - want_keep[r]) * row;
			const double t = part_boundary_target(above, below, mine, next, ROWS * row, r, CHAIN);
			CHECK(fabs(t / row - want_keep[r]) < 1e-9, "row cost %g, boundary %d: %g rows, want %d",
			      row, r, t / row, want_keep[r]);
		}
	}
	/* Equal ranks: each runs its own blocks whole (the last has no boundary rows of its own
	 * to give away, so its base is a whole channel mix more). */
	{
		double prefix = 0, total = 7 * 744.0 + 1000;
		for (int r = 0; r < CHAIN - 1; r++) {
			prefix += 744;
			const double t = part_boundary_target(prefix + r * ROWS,
							      total - prefix + (CHAIN - 2 - r) * ROWS, 744,
							      1000, ROWS, r, CHAIN);
			CHECK(fabs(t - ROWS) < 1e-9, "equal ranks, boundary %d: %g rows, want all", r, t);
		}
	}
	/* The last rank twice as slow as the rest: out of reach, every boundary above all rows. */
	{
		double prefix = 0, total = 7 * 744.0 + 2000;
		for (int r = 0; r < CHAIN - 1; r++) {
			prefix += 744;
			const double t = part_boundary_target(prefix + r * ROWS,
							      total - prefix + (CHAIN - 2 - r) * ROWS, 744,
							      r == CHAIN - 2 ? 2000 : 1000, ROWS, r, CHAIN);
			CHECK(t >= ROWS, "slow last rank, boundary %d: %g rows, want all %d", r, t, ROWS);
		}
	}
	/* Rank 5 of 8 30% slower, boundaries of a channel mix alone: the ranks before it cannot
	 * take its work (work moves down only), so its even share of the chain would leave it
	 * the slowest; it gives the next rank what makes the two equal, and those before it keep
	 * all their rows. */
	{
		double base[CHAIN], total = 0, prefix = 0;
		for (int r = 0; r < CHAIN; r++) {
			base[r] = r == CHAIN - 1 ? 1000 : r == 5 ? 1.3 * 744 : 744;
			total += base[r];
		}
		for (int r = 0; r < CHAIN - 1; r++) {
			prefix += base[r];
			const double above = prefix + r * ROWS, below = total - prefix + (CHAIN - 2 - r) * ROWS;
			const double next = base[r + 1] + (r + 1 < CHAIN - 1 ? ROWS : 0);
			const double t = part_boundary_target(above, below, base[r], next, ROWS, r, CHAIN);
			if (r < 5)
				CHECK(t >= ROWS, "slow rank 5, boundary %d: %g rows, want all", r, t);
			else if (r == 5)
				CHECK(fabs(t - (1000 - 1.3 * 744 + ROWS) / 2) < 1e-9,
				      "slow rank 5, its boundary: %g rows, want rank 6's time", t);
		}
	}

	/* With the range upwards too (each boundary also holds 192 rows of the next rank's first
	 * time-mix products, half a channel-mix row each), a 10% slower rank 5 is relieved from
	 * both sides: every boundary at the chain's even share is a fixed point of the rule,
	 * every rank's time comes out the same, and boundary 4 sits in rank 5's time mix. */
	{
		enum { UP = 192 };
		const double B = ROWS + UP * 0.5, even = 1012.5;
		double base[CHAIN], w[CHAIN], total = 0, prefix = 0;
		for (int r = 0; r < CHAIN; r++) {
			/* Work 1000 a rank (1100 for rank 5), without its boundaries' parts. */
			base[r] = (r == 5 ? 1100 : 1000) - (r < CHAIN - 1 ? ROWS : 0) - (r > 0 ? UP * 0.5 : 0);
			total += base[r];
		}
		for (int r = 0; r < CHAIN - 1; r++) {
			prefix += base[r];
			w[r] = (r + 1) * even - (prefix + r * B);
		}
		prefix = 0;
		for (int r = 0; r < CHAIN - 1; r++) {
			prefix += base[r];
			const double above = prefix + r * B, below = total - prefix + (CHAIN - 2 - r) * B;
			const double mine = base[r] + (r > 0 ? B - w[r - 1] : 0);
			const double next = base[r + 1] + (r + 1 < CHAIN - 1 ? w[r + 1] : 0);
			const double t = part_boundary_target(above, below, mine, next, B, r, CHAIN);
			CHECK(fabs(t - w[r]) < 1e-9 && t > 0 && t < B, "both ways, boundary %d: %g, want %g", r, t, w[r]);
			CHECK(fabs(mine + t - even) < 1e-9, "both ways, rank %d: %g, want %g", r, mine + t, even);
		}
		const double at4 = part_boundary_position(w[4], ROWS, 1, UP, 0.5);
		CHECK(fabs(at4 - (ROWS + (w[4] - ROWS) / 0.5)) < 1e-9 && at4 > ROWS,
		      "boundary 4 at row %g, want past the channel mix", at4);
	}
	/* Work as a row position: channel-mix rows, then time-mix rows, clamped at both ends. */
	CHECK(part_boundary_position(100, 256, 2, 192, 1) == 50, "in the channel mix");
	CHECK(part_boundary_position(512 + 30, 256, 2, 192, 1) == 286, "in the time mix");
	CHECK(part_boundary_position(1e9, 256, 2, 192, 1) == 448 &&
	      part_boundary_position(1e9, 256, 2, 0, 1) == 256 &&
	      part_boundary_position(-5, 256, 2, 192, 1) == 0, "clamped");

	/* Rounding the target to steps of 64. */
	double res = 0;
	CHECK(part_boundary_rows(128, &res, 256, 64) == 128 && res == 0, "a step: as it is");
	CHECK(part_boundary_rows(9000, &res, 256, 64) == 256, "far over: all rows");
	res = 0;
	CHECK(part_boundary_rows(-500, &res, 256, 64) == 0, "far under: none");
	res = 0;
	/* Between steps (168 rows): whole steps each chunk, averaging 168. */
	long sum = 0;
	int lo = 256, hi = 0, rows;
	for (int i = 0; i < 100; i++) {
		rows = part_boundary_rows(168, &res, 256, 64);
		sum += rows;
		lo = rows < lo ? rows : lo;
		hi = rows > hi ? rows : hi;
		CHECK(rows % 64 == 0 && res >= -32 && res <= 32, "chunk %d: %d rows, residue %g", i, rows, res);
	}
	CHECK(lo == 128 && hi == 192 && fabs(sum / 100.0 - 168) < 0.33,
	      "168 between steps: rows %d..%d, average %g", lo, hi, sum / 100.0);
	/* Held at a clamp, the residue does not wind up: back to the middle at once. */
	for (int i = 0; i < 50; i++)
		part_boundary_rows(9000, &res, 256, 64);
	rows = part_boundary_rows(128, &res, 256, 64);
	CHECK(rows == 128, "after the clamp: %d rows (residue %g)", rows, res);

	part_plan_make(&p, &small, &w, 4, NULL, err);
	part_plan_print(&p, &small, stdout);
	printf("%s\n", failures ? "FAIL" : "PASS");
	return failures ? 1 : 0;
}
