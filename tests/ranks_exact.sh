#!/bin/sh
# Runs tests/ranks_exact.c as one process and under mpirun with 2, 3 and 4 ranks, and checks
# that every rank count gives the same bits: logits, generated tokens, and the page files of
# the context in every rank's store. Bit-identical is the bar here: every rank runs the same
# float32 code on the same chunk shapes with one OpenBLAS thread, so nothing changes the
# order of a reduction (a different thread count could).
# --boundary: a model wide enough (n_embd 256) and chunks long enough (128 rows) for the
# boundary between two ranks to move (rank_part.c), moved at every chunk
# (GOLDFINCH_BOUNDARY=test): the bits must not change.
# usage: ranks_exact.sh RANKS_EXACT GF_CONVERT WORKDIR (--ref CASE_DIR | --random | --boundary)
set -eu
prog=$1 convert=$2 work=$3 mode=$4
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
# Under ASan: what Open MPI allocates in MPI_Init and keeps is not ours (suppressed by library).
export LSAN_OPTIONS="suppressions=$(cd "$(dirname "$0")" && pwd)/mpi_lsan.supp:fast_unwind_on_malloc=0"
export OMPI_MCA_mca_base_component_disable_dlclose=1
# One host, oversubscribed: keep Open MPI off the network and out of busy-waiting.
export OMPI_MCA_btl=self,vader OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_rmaps_base_oversubscribe=1
rm -rf "$work" && mkdir -p "$work"
if [ "$mode" = --ref ]; then
	"$convert" "$5/model.pth" "$work/m.gguf" >/dev/null
	set -- --ref "$5" 12
elif [ "$mode" = --boundary ]; then
	"$convert" --random --layers 6 --embd 256 --vocab 300 --ratio 2 --seed 12 "$work/m.gguf" >/dev/null
	export RANKS_EXACT_CHUNK=128 GOLDFINCH_BOUNDARY=test
	set -- --random 1000 900 6 8
else
	"$convert" --random --layers 7 --embd 64 --vocab 300 --seed 11 "$work/m.gguf" >/dev/null
	set -- --random 700 600 5 12
fi
"$prog" "$work/m.gguf" "$work/c1" "$work/out1" "$@"
for n in 2 3 4; do
	timeout 240 mpirun --oversubscribe ${GOLDFINCH_BOUNDARY:+-x GOLDFINCH_BOUNDARY -x RANKS_EXACT_CHUNK} \
		-n $n "$prog" "$work/m.gguf" "$work/c$n/%r" "$work/out$n" "$@"
	cmp "$work/out1" "$work/out$n" || { echo "FAIL: $n ranks: logits or tokens differ from one process"; exit 1; }
	for r in $(seq 0 $((n - 1))); do
		for f in "$work/c1"/c*.pages "$work/c1"/c*.idx; do
			cmp "$f" "$work/c$n/$r/$(basename "$f")" ||
				{ echo "FAIL: $n ranks: rank $r's $(basename "$f") differs from one process's"; exit 1; }
		done
	done
	echo "$n ranks: logits, tokens and every rank's pages identical to one process"
done
