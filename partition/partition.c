/*
 * partition.c — see partition.h.
 *
 * The balanced contiguous partition is the classic linear-partition problem; with at most a
 * thousand blocks and ranks, an exact dynamic programme over (rank, first block) is instant
 * and needs no heuristics: best[r][b] = the smallest possible largest cost/weight when ranks
 * r.. own blocks b.. .
 */
#include "partition.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, int rc, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, PART_ERR_LEN, fmt, ap);
		va_end(ap);
	}
	return rc;
}

void part_workload_default(part_workload *w)
{
	w->ingest_tokens = 1e6;
	w->decode_tokens = 1e3;
	w->context_tokens = 1e6;
}

/* Flops of one token through block b's matrix products (2 per weight) and, for a GOLD
 * block, the attention of one query over `ctx` keys and the rebuild of one key/value row. */
static double block_step_flops(const part_shape *s, int b)
{
	const double C = s->n_embd, F = s->dim_ffn;
	const double cmix = 2.0 * (2.0 * C * F + C * C);
	if (b < s->first_gold)
		return cmix + 2.0 * (5.0 * C * C + 2.0 * C * 160 + 4.0 * C * 64);
	return cmix + 2.0 * (2.0 * C * C + 2.0 * C * 32 + 6.0 * C * 64);
}

double part_block_cost(const part_shape *s, const part_workload *w, int b)
{
	double step = block_step_flops(s, b);
	double cost = w->decode_tokens * step;
	if (b < s->first_gold)
		cost += w->ingest_tokens * step;
	else
		cost += w->decode_tokens * 4.0 * s->n_embd * w->context_tokens; /* q.k and p.v */
	return cost;
}

double part_head_cost(const part_shape *s, const part_workload *w)
{
	return w->decode_tokens * 2.0 * (double)s->vocab * s->n_embd;
}

/* Cost of blocks [a, e) with the head if e is the last block. */
static double slice_cost(const double *prefix, const part_shape *s, double head, int a, int e)
{
	return prefix[e] - prefix[a] + (e == s->n_layer ? head : 0.0);
}

int part_plan_make(part_plan *p, const part_shape *s, const part_workload *w, int n_ranks,
		   const double *weights, char *err)
{
	const int L = s->n_layer, R = n_ranks;
	if (L < 1 || L > PART_MAX_BLOCKS || s->first_gold < 0 || s->first_gold > L)
		return fail(err, -EINVAL, "model of %d blocks (first GOLD %d) cannot be planned", L,
			    s->first_gold);
	if (R < 1 || R > PART_MAX_RANKS)
		return fail(err, -EINVAL, "%d ranks: must be 1..%d", R, PART_MAX_RANKS);
	if (R > L)
		return fail(err, -EINVAL, "%d ranks for %d blocks: every rank needs at least one block",
			    R, L);
	for (int r = 0; weights && r < R; r++)
		if (!(weights[r] > 0) || !isfinite(weights[r]))
			return fail(err, -EINVAL, "weight of rank %d must be a positive number", r);

	double prefix[PART_MAX_BLOCKS + 1];
	prefix[0] = 0;
	for (int b = 0; b < L; b++)
		prefix[b + 1] = prefix[b] + part_block_cost(s, w, b);
	const double head = part_head_cost(s, w);

	/* best[b]: the smallest possible largest cost/weight when ranks r.. own blocks b..L-1,
	 * rolled over r from the last rank down; cut[r][b]: where rank r's slice then ends. */
	const double INF = 1e300;
	const int last = R - 1;
	double best[PART_MAX_BLOCKS + 1], next[PART_MAX_BLOCKS + 1];
	int *cut = malloc(sizeof(int) * (size_t)R * (size_t)(L + 1));
	if (!cut)
		return fail(err, -ENOMEM, "out of memory planning %d ranks", R);
	const double wl = weights ? weights[last] : 1.0;
	for (int b = 0; b <= L; b++) {
		best[b] = b < L ? slice_cost(prefix, s, head, b, L) / wl : INF;
		cut[(size_t)last * (L + 1) + b] = L;
	}
	for (int r = last - 1; r >= 0; r--) {
		const double wr = weights ? weights[r] : 1.0;
		for (int b = 0; b <= L; b++) {
			next[b] = INF;
			cut[(size_t)r * (L + 1) + b] = b + 1;
			/* rank r takes [b, e), ranks r+1.. take [e, L); each keeps >= 1 block */
			for (int e = b + 1; e <= L - (last - r); e++) {
				double here = slice_cost(prefix, s, head, b, e) / wr;
				double v = here > best[e] ? here : best[e];
				if (v < next[b]) {
					next[b] = v;
					cut[(size_t)r * (L + 1) + b] = e;
				}
			}
		}
		memcpy(best, next, sizeof(best));
	}

	memset(p, 0, sizeof(*p));
	p->n_ranks = R;
	p->n_layer = L;
	p->first_gold = s->first_gold;
	for (int r = 0, b = 0; r < R; r++) {
		const int e = cut[(size_t)r * (L + 1) + b];
		p->first[r] = b;
		p->weight[r] = weights ? weights[r] : 1.0;
		p->cost[r] = slice_cost(prefix, s, head, b, e);
		p->total_cost += p->cost[r];
		b = e;
	}
	free(cut);
	return 0;
}

void part_rank_blocks(const part_plan *p, int r, int *first, int *end)
{
	*first = p->first[r];
	*end = r + 1 < p->n_ranks ? p->first[r + 1] : p->n_layer;
}

int part_owner(const part_plan *p, int b)
{
	int r = 0;
	while (r + 1 < p->n_ranks && p->first[r + 1] <= b)
		r++;
	return r;
}

int part_emitter(const part_plan *p)
{
	return part_owner(p, p->first_gold > 0 ? p->first_gold - 1 : 0);
}

int part_has_gold(const part_plan *p, int r)
{
	int a, e;
	part_rank_blocks(p, r, &a, &e);
	return e > p->first_gold;
}

double part_imbalance(const part_plan *p)
{
	double wsum = 0, worst = 0;
	for (int r = 0; r < p->n_ranks; r++) {
		wsum += p->weight[r];
		double v = p->cost[r] / p->weight[r];
		worst = v > worst ? v : worst;
	}
	double ideal = p->total_cost / wsum;
	return ideal > 0 ? worst / ideal : 1.0;
}

void part_plan_print(const part_plan *p, const part_shape *s, FILE *f)
{
	fprintf(f, "plan: %d blocks (Finch 0..%d, GOLD %d..%d) on %d rank(s), imbalance %.3f\n",
		p->n_layer, p->first_gold - 1, p->first_gold, p->n_layer - 1, p->n_ranks,
		part_imbalance(p));
	fprintf(f, "rank  blocks    finch gold  share   roles\n");
	for (int r = 0; r < p->n_ranks; r++) {
		int a, e;
		part_rank_blocks(p, r, &a, &e);
		int nf = 0, ng = 0;
		for (int b = a; b < e; b++)
			b < s->first_gold ? nf++ : ng++;
		char roles[96] = "";
		if (r == 0)
			strcat(roles, "front-end embedding ");
		if (r == part_emitter(p))
			strcat(roles, "emits-cache ");
		if (ng)
			strcat(roles, "pages ");
		if (r == p->n_ranks - 1)
			strcat(roles, "head");
		fprintf(f, "%4d  %3d..%-3d  %5d %4d  %5.1f%%  %s\n", r, a, e - 1, nf, ng,
			100.0 * p->cost[r] / p->total_cost, roles);
	}
}

double part_boundary_target(double above_ns, double below_ns, double mine_ns, double next_ns,
			    double boundary_ns, int r, int chain)
{
	const double whole = above_ns + boundary_ns + below_ns;
	const double chain_work = (double)(r + 1) / chain * whole - above_ns;
	/* mine + work = next + (boundary - work) */
	const double pair_work = (next_ns - mine_ns + boundary_ns) / 2;
	return chain_work < pair_work ? chain_work : pair_work;
}

double part_boundary_position(double work, int n, double row_ns, int u, double ahead_ns)
{
	if (work <= 0 || row_ns <= 0)
		return 0;
	if (work <= n * row_ns || u <= 0 || ahead_ns <= 0)
		return work / row_ns < n ? work / row_ns : n;
	const double more = (work - n * row_ns) / ahead_ns;
	return n + (more < u ? more : u);
}

int part_boundary_rows(double target, double *residue, int n, int step)
{
	const double best = target < 0 ? 0 : target > n ? n : target;
	/* A step is a large share of a rank's work (at 8 ranks of a 24-layer model, about 6%):
	 * held to whole steps, a pair stays up to half a step apart, and a row of 8 ranks the sum
	 * of such gaps. Carrying what rounding left out makes the average the even split. */
	const double want = best + *residue;
	int rows = (int)floor(want / step + 0.5) * step;
	rows = rows < 0 ? 0 : rows > n / step * step ? n / step * step : rows;
	const double left = want - rows;
	*residue = left < -step ? -step : left > step ? step : left;
	return rows;
}
