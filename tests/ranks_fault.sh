#!/bin/sh
# Fault walk over the MPI messages of an ingest: with 2 ranks, make the n-th message
# a rank sends fail, for every n the ingest path sends (begin, chunks, rows, credits,
# checkpoint and finish marks, acknowledgements, the GOLD tail, the seal, the close) on each
# rank in turn. Each time the ingest must fail with a clear error (the injected fault, or the
# rank it took down), and afterwards the stores must open and the sealed context made before
# must answer with the same bits as before.
# usage: ranks_fault.sh RANKS_EXACT GF_CONVERT WORKDIR
set -eu
prog=$1 convert=$2 work=$3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export LSAN_OPTIONS="suppressions=$(cd "$(dirname "$0")" && pwd)/mpi_lsan.supp:fast_unwind_on_malloc=0"
export OMPI_MCA_mca_base_component_disable_dlclose=1
export OMPI_MCA_btl=self,vader OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_rmaps_base_oversubscribe=1
rm -rf "$work" && mkdir -p "$work" && cd "$work"
"$convert" --random --layers 6 --embd 64 --vocab 300 --seed 4 m.gguf >/dev/null
run() { timeout 120 mpirun --oversubscribe -n 2 "$prog" m.gguf "$work/c/%r" "$@"; }
# The context every fault must leave alone: 60 tokens, 8 steps after them.
run base.out --random 68 60 7 2 >/dev/null
steps_bytes=$((8 * 300 * 4))
# How many messages each rank sends in one ingest of 48 tokens (3 chunks, 1 checkpoint).
run count.out --random 48 48 99 0 --walk count 0 0 >count.log
injected=0
for rank in 0 1; do
	total=$(sed -n "s/^rank $rank sent \([0-9]*\) messages$/\1/p" count.log)
	[ -n "$total" ] || { echo "FAIL: no message count for rank $rank"; cat count.log; exit 1; }
	n=1
	while [ "$n" -le "$total" ]; do
		rc=0
		run walk.out --random 48 48 $((1000 + rank * 100 + n)) 0 --walk "w$rank-$n" "$rank" "$n" \
			>walk.log 2>&1 || rc=$?
		[ "$rc" != 0 ] || { echo "FAIL: rank $rank message $n: the ingest did not fail"; exit 1; }
		grep -q "injected fault: message #$n of rank $rank\|rank $rank (pid [0-9]* on .*) has died" walk.log ||
			{ echo "FAIL: rank $rank message $n: no clear error"; cat walk.log; exit 1; }
		run verify.out --random 68 60 7 0 --verify >verify.log 2>&1 ||
			{ echo "FAIL: after rank $rank message $n: the store does not answer"; cat verify.log; exit 1; }
		head -c "$steps_bytes" base.out | cmp - verify.out ||
			{ echo "FAIL: after rank $rank message $n: the sealed context answers differently"; exit 1; }
		injected=$((injected + 1))
		n=$((n + 1))
	done
	echo "rank $rank: $total messages, each failed in turn: clear error, sealed context intact"
done
echo "faults injected: $injected"
