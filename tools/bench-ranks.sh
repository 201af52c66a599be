#!/bin/sh
# Ingest speed of the multi-rank daemon against one process (issue 6): P = 1 with 1 and 2
# OpenBLAS threads, then P = 2.. ranks of 1 thread each, on one host. Prints gf-ranks-bench's
# JSON lines. Figures on shared machines are noisy: compare ratios from one run.
# usage: [BIND=core] tools/bench-ranks.sh [BUILD_DIR] [MAX_RANKS] [TOKENS] [LAYERS] [EMBD]
# BIND=core pins each rank to a core (a host with a core per rank: issue 6's 16-core host ran
# `BIND=core tools/bench-ranks.sh build 8 32768 24 1024`); the default leaves placement to the
# OS (a small machine, oversubscribed). GOLDFINCH_RANK_STATS=1 adds each rank's breakdown.
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
for t in 1 2; do
	rm -rf "$work/c"
	OPENBLAS_NUM_THREADS=$t "$B/tools/gf-ranks-bench" "$model" "$work/c" --tokens "$tokens" --threads "$t"
done
p=2
while [ "$p" -le "$maxp" ]; do
	rm -rf "$work/c"
	# -x names a variable that must exist: pass the stats switch only when it is set.
	mpirun --oversubscribe --bind-to "${BIND:-none}" ${GOLDFINCH_RANK_STATS:+-x GOLDFINCH_RANK_STATS} -n "$p" \
		"$B/tools/gf-ranks-bench" "$model" "$work/c/%r" \
		--tokens "$tokens" --threads 1 $plan
	p=$((p * 2))
done
