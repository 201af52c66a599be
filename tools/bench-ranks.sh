#!/bin/sh
# Ingest speed of the multi-rank daemon against one process: P = 1 with 1 and 2
# OpenBLAS threads, then P = 2.. ranks of 1 thread each, on one host. Prints gf-ranks-bench's
# JSON lines. Figures on shared machines are noisy: compare ratios from one run.
# usage: [BIND=core] tools/bench-ranks.sh [BUILD_DIR] [MAX_RANKS] [TOKENS] [LAYERS] [EMBD]
# BIND=core pins each rank to a core (a host with a core per rank: the lent 16-core host ran
# `BIND=core tools/bench-ranks.sh build 8 32768 24 1024`); the default leaves placement to the
# OS (a small machine, oversubscribed). GOLDFINCH_RANK_STATS=1 adds each rank's breakdown.
#
# SCALE=1 measures the speed-up itself on a host whose pace drifts (the lent 16-core one drifts
# by up to 30% within minutes): each P = 2, 4, .. MAX_RANKS run sits between two one-process
# runs of P1_TOKENS (default 4096) tokens and is divided by their mean; then MAX_RANKS
# independent one-process runs start together (pinned with BIND=core), no MPI: what the cores
# give with that many busy, the ceiling for the pipeline. Issue 6's figures:
# `SCALE=1 BIND=core tools/bench-ranks.sh build 8 65536 24 1024`.
set -eu
B=${1:-build} maxp=${2:-2} tokens=${3:-32768} layers=${4:-12} embd=${5:-512}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl=self,vader OMPI_MCA_mpi_yield_when_idle=1
work=${TMPDIR:-/tmp}/gf-bench-ranks.$$
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
model=$work/m.gguf
"$B/tools/gf-convert" --random --layers "$layers" --embd "$embd" --vocab 4096 --seed 1 "$model" >/dev/null
# The plan balances ingest only: that is what this measures.
plan="--plan-workload 1:0:1"
rate() { sed -n 's/.*"tokens_per_s":\([0-9.]*\).*/\1/p'; }
# P ranks of one thread each over $tokens tokens.
ranks() {
	rm -rf "$work/c"
	# -x names a variable that must exist: pass the stats switch only when it is set.
	mpirun --oversubscribe --bind-to "${BIND:-none}" ${GOLDFINCH_RANK_STATS:+-x GOLDFINCH_RANK_STATS} -n "$1" \
		"$B/tools/gf-ranks-bench" "$model" "$work/c/%r" --tokens "$tokens" --threads 1 $plan
}
# One process of one thread over $p1 tokens in cache dir $2, on core $1 where BIND=core.
one_on() {
	pin=
	if [ "${BIND:-none}" = core ]; then pin="taskset -c $1"; fi
	rm -rf "$work/$2"
	$pin "$B/tools/gf-ranks-bench" "$model" "$work/$2" --tokens "$p1" --threads 1 2>"$work/$2.err" | rate
}
if [ "${SCALE:-0}" = 1 ]; then
	p1=${P1_TOKENS:-4096}
	# Its own lines go to a file, shown when it fails.
	one() {
		r=$(one_on 0 c1)
		[ -n "$r" ] || { cat "$work/c1.err" >&2; echo "bench-ranks.sh: one process failed" >&2; exit 1; }
		echo "$r"
	}
	before=$(one)
	echo "P=1: $before tokens/s ($p1 tokens)"
	p=2
	while [ "$p" -le "$maxp" ]; do
		line=$(ranks "$p")
		echo "$line"
		after=$(one)
		echo "$line" | rate | awk -v p="$p" -v a="$before" -v b="$after" -v n="$p1" '{
			m = (a + b) / 2; printf "P=%d: %s tokens/s, %.2fx one process (%s and %s tokens/s at %d tokens, before and after), %.2f of P\n", p, $1, $1 / m, a, b, n, $1 / m / p }'
		before=$after
		p=$((p * 2))
	done
	k=0
	while [ "$k" -lt "$maxp" ]; do
		one_on "$k" "i$k" > "$work/i$k.rate" &
		k=$((k + 1))
	done
	wait
	for f in "$work"/i*.rate; do
		[ -s "$f" ] || { cat "${f%.rate}.err" >&2; echo "bench-ranks.sh: an independent process failed" >&2; exit 1; }
	done
	cat "$work"/i*.rate | awk -v n="$maxp" -v one="$before" '{ s += $1; l = l " " $1 } END {
		printf "%d independent processes together, no MPI:%s; sum %.1f tokens/s, %.2fx the last one-process run\n", n, l, s, s / one }'
	exit 0
fi
for t in 1 2; do
	rm -rf "$work/c"
	OPENBLAS_NUM_THREADS=$t "$B/tools/gf-ranks-bench" "$model" "$work/c" --tokens "$tokens" --threads "$t"
done
p=2
while [ "$p" -le "$maxp" ]; do
	ranks "$p"
	p=$((p * 2))
done
