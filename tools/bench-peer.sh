#!/bin/bash
# bench-peer.sh — the project's engine against llama.cpp's RWKV-6 on the CPU, same shape,
# same machine, run by run in alternation.
#
#   tools/bench-peer.sh LLAMA_SRC [--build GF_BUILD_DIR] [--work DIR] [--pairs N]
#                       [--threads "1 2"] [--compute "f32 bf16"]
#
#   LLAMA_SRC   a plain llama.cpp source tree (no git needed; tested with c392e509)
#   --build     the project's build folder with tools/gf-bench and tools/gf-convert
#               (default: build/ of this repository)
#   --work      where everything is written (default /tmp/gf-peer); never the repository
#   --pairs     alternating pairs per thread count (default 5)
#   --threads   thread counts (default "1 2")
#   --compute   gf-bench --compute modes (default "f32 bf16"); only passed when
#               gf-bench --help offers --compute, otherwise one gf row labelled f32
#
# What it does:
#   1. builds llama.cpp's llama-bench (Release, -DLLAMA_CURL=OFF, default CPU backend) in
#      WORK/llama-build, or reuses that build (an incremental build, no-op if up to date);
#   2. installs what it needs on Debian 12 if missing (apt-get, with sudo when not root);
#   3. writes the models into WORK unless they are there (delete them to regenerate):
#        rwkv6-L8-C768-bf16.gguf  llama.cpp rwkv6, 8 layers, C 768, F 2688, V 65536, the
#                                 2-D matrices in BF16 as llama.cpp's converter stores them
#                                 (tools/peer/write_rwkv6_gguf.py, with llama.cpp's gguf-py)
#        gf-L9r9-bf16.gguf        gf-convert --random --layers 9 --ratio 9 ... --dtype bf16:
#                                 8 Finch + 1 GOLD block, whose decode reads about the bytes
#                                 of llama.cpp's 8 layers
#   4. per thread count T, N pairs of: `uptime`, llama-bench -p 512 -n 128 -t T -r 1, then
#      gf-bench --threads T [--compute C] for each mode C;
#   5. prints the table (tools/peer/summarize.py): medians (min-max) of prefill and decode
#      tok/s, decode GB/s, read GB/s, the decode bound read_gbs / llama.cpp's weight bytes per
#      token, the OpenBLAS core, and the gf/llama ratios.
#
# Outputs, in WORK/results-<timestamp>/: every run's raw stdout/stderr (pNN-tT-llama.jsonl
# and .log, pNN-tT-gf-C.log and .json = its last line), runs.tsv (the index of runs),
# load.txt (uptime before each pair), meta.txt (versions, commands) and summary.md (the
# table as printed).
#
# Exits non-zero with one line on stderr on any failure.
set -eu

die() {
	echo "bench-peer: $*" >&2
	exit 1
}

usage() {
	sed -n '5,6p' "$0" | sed 's/^# //' >&2
	exit 2
}

REPO=$(cd "$(dirname "$0")/.." && pwd)
LLAMA_SRC=""
GF_BUILD="$REPO/build"
WORK=/tmp/gf-peer
PAIRS=5
THREADS="1 2"
COMPUTE="f32 bf16"
while [ $# -gt 0 ]; do
	case $1 in
	--build) [ $# -ge 2 ] || usage; GF_BUILD=$2; shift 2 ;;
	--work) [ $# -ge 2 ] || usage; WORK=$2; shift 2 ;;
	--pairs) [ $# -ge 2 ] || usage; PAIRS=$2; shift 2 ;;
	--threads) [ $# -ge 2 ] || usage; THREADS=$2; shift 2 ;;
	--compute) [ $# -ge 2 ] || usage; COMPUTE=$2; shift 2 ;;
	-h | --help) usage ;;
	-*) die "unknown option $1" ;;
	*) [ -z "$LLAMA_SRC" ] || die "one LLAMA_SRC only (got $LLAMA_SRC and $1)"; LLAMA_SRC=$1; shift ;;
	esac
done
[ -n "$LLAMA_SRC" ] || usage
case $PAIRS in '' | *[!0-9]* | 0) die "--pairs wants a positive integer, got '$PAIRS'" ;; esac
for t in $THREADS; do
	case $t in '' | *[!0-9]* | 0) die "--threads wants positive integers, got '$THREADS'" ;; esac
done
[ -n "$THREADS" ] || die "--threads is empty"
[ -n "$COMPUTE" ] || die "--compute is empty"

[ -d "$LLAMA_SRC" ] || die "no llama.cpp source tree at $LLAMA_SRC"
LLAMA_SRC=$(cd "$LLAMA_SRC" && pwd)
if [ ! -f "$LLAMA_SRC/CMakeLists.txt" ] || [ ! -f "$LLAMA_SRC/examples/llama-bench/llama-bench.cpp" ] ||
	[ ! -d "$LLAMA_SRC/gguf-py/gguf" ]; then
	die "$LLAMA_SRC is not a llama.cpp source tree (no CMakeLists.txt, llama-bench or gguf-py)"
fi
[ -d "$GF_BUILD" ] || die "no build folder at $GF_BUILD (tools/setup.sh builds one)"
GF_BUILD=$(cd "$GF_BUILD" && pwd)
GB=$GF_BUILD/tools/gf-bench
GC=$GF_BUILD/tools/gf-convert
[ -x "$GB" ] || die "$GF_BUILD has no tools/gf-bench (tools/setup.sh builds it)"
[ -x "$GC" ] || die "$GF_BUILD has no tools/gf-convert (tools/setup.sh builds it)"
VOCAB=$REPO/../shared/testdata/tokenizer/rwkv_vocab_v20230424.txt
[ -f "$VOCAB" ] || die "no tokenizer vocab at $VOCAB (../shared beside the repository)"

# Checked before anything is created: nothing of this script goes into the repository.
WORK=$(realpath -m "$WORK")
case $WORK/ in "$(realpath "$REPO")"/*) die "--work $WORK is inside the repository; pick a folder outside it" ;; esac
mkdir -p "$WORK" || die "cannot create $WORK"

# Debian's own python, on purpose: apt's python3-numpy lands there, while a python3 found
# first on PATH (pyenv, a venv) may have no numpy.
PY=/usr/bin/python3
PACKAGES="build-essential cmake python3 python3-numpy python3-yaml"  # gguf-py imports yaml
missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "bench-peer: installing$missing" >&2
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update -qq || die "apt-get update failed"
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
		die "apt-get install$missing failed"
fi
# Keep Python from leaving __pycache__ in the repository or in the llama.cpp tree.
export PYTHONDONTWRITEBYTECODE=1

# 1. llama-bench. A build folder made from another source tree is not reused: cmake
# would refuse it, and its numbers would be another llama.cpp's.
LB_DIR=$WORK/llama-build
LB=$LB_DIR/bin/llama-bench
if [ -f "$LB_DIR/CMakeCache.txt" ]; then
	home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$LB_DIR/CMakeCache.txt")
	[ "$home" = "$LLAMA_SRC" ] || die "$LB_DIR was configured from $home, not $LLAMA_SRC; use another --work"
else
	echo "bench-peer: configuring llama.cpp in $LB_DIR" >&2
	cmake -S "$LLAMA_SRC" -B "$LB_DIR" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
		>"$WORK/llama-configure.log" 2>&1 || die "llama.cpp cmake configure failed (see $WORK/llama-configure.log)"
fi
if [ -x "$LB" ]; then
	echo "bench-peer: reusing $LB (incremental build)" >&2
else
	echo "bench-peer: building llama-bench (minutes: about 10 on 2 slow cores)" >&2
fi
cmake --build "$LB_DIR" --target llama-bench -j"$(nproc)" >"$WORK/llama-build.log" 2>&1 ||
	die "llama-bench build failed (see $WORK/llama-build.log)"
[ -x "$LB" ] || die "the build gave no $LB"

# 2. The sentencepiece stub: gguf-py's vocab module imports it at import time; writing an
# rwkv6 file never calls it.
mkdir -p "$WORK/pystub"
cat >"$WORK/pystub/sentencepiece.py" <<'EOF'
# Written by tools/bench-peer.sh: gguf-py imports sentencepiece at import time; the rwkv6
# writer never uses it.
class SentencePieceProcessor:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("sentencepiece stub (tools/bench-peer.sh): not available")
EOF

# 3. Models, each written under a temporary name and renamed, so that an interrupted run
# never leaves a partial file that a later run would reuse.
LM=$WORK/rwkv6-L8-C768-bf16.gguf
GM=$WORK/gf-L9r9-bf16.gguf
if [ ! -s "$LM" ]; then
	echo "bench-peer: writing $LM" >&2
	PYTHONPATH="$LLAMA_SRC/gguf-py:$WORK/pystub" "$PY" "$REPO/tools/peer/write_rwkv6_gguf.py" \
		--layers 8 --embd 768 --ffn 2688 --vocab 65536 --dtype bf16 --vocab-file "$VOCAB" \
		"$WORK/partial-rwkv6.gguf" >"$WORK/write-rwkv6.log" 2>&1 ||
		die "writing the rwkv6 model failed (see $WORK/write-rwkv6.log)"
	mv "$WORK/partial-rwkv6.gguf" "$LM"
fi
if [ ! -s "$GM" ]; then
	echo "bench-peer: writing $GM" >&2
	"$GC" --random --layers 9 --ratio 9 --embd 768 --vocab 65536 --seed 1 --dtype bf16 \
		"$WORK/partial-gf.gguf" >"$WORK/write-gf.log" 2>&1 ||
		die "gf-convert --random failed (see $WORK/write-gf.log)"
	mv "$WORK/partial-gf.gguf" "$GM"
fi

# gf-bench's --compute is newer than some builds: pass it only where it exists.
if "$GB" --help 2>&1 | grep -q -- '--compute'; then
	HAVE_COMPUTE=1
	MODES=$COMPUTE
else
	HAVE_COMPUTE=0
	MODES=f32
	echo "bench-peer: this gf-bench has no --compute; one gf row per pair, labelled f32" >&2
fi

# 4. Runs.
RES=$WORK/results-$(date +%Y%m%d-%H%M%S)
mkdir "$RES" || die "cannot create $RES"
SUM="$PY $REPO/tools/peer/summarize.py"
{
	echo "date: $(date -u +%FT%TZ)"
	echo "host: $(uname -srm), $(nproc) cpus, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
	echo "llama_src: $LLAMA_SRC"
	echo "llama_bench: $LB"
	echo "gf_build: $GF_BUILD"
	echo "gf_commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (working tree differs)')"
	echo "gf_compute_flag: $HAVE_COMPUTE"
	echo "llama_model: $LM"
	echo "gf_model: $GM"
	echo "pairs: $PAIRS"
	echo "threads: $THREADS"
	echo "modes: $MODES"
	echo "llama_cmd: llama-bench -m $LM -p 512 -n 128 -t T -r 1 -o jsonl"
	echo "gf_cmd: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE gf-bench --model $GM --threads T$([ $HAVE_COMPUTE = 1 ] && echo ' --compute C')"
} >"$RES/meta.txt"
printf 'pair\tthreads\tengine\tmode\tfile\n' >"$RES/runs.tsv"

for t in $THREADS; do
	for p in $(seq 1 "$PAIRS"); do
		base=$(printf '%s/p%02d-t%s' "$RES" "$p" "$t")
		echo "pair $p threads $t $(date +%s) $(uptime)" | tee -a "$RES/load.txt" >&2

		"$LB" -m "$LM" -p 512 -n 128 -t "$t" -r 1 -o jsonl >"$base-llama.jsonl" 2>"$base-llama.log" ||
			die "llama-bench failed, pair $p, $t threads (see $base-llama.log)"
		$SUM check-llama "$base-llama.jsonl" || die "llama-bench printed no pp/tg JSON, pair $p, $t threads (see $base-llama.jsonl)"
		printf '%s\t%s\tllama\tbf16\t%s\n' "$p" "$t" "$(basename "$base-llama.jsonl")" >>"$RES/runs.tsv"
		echo "  llama t$t: $($SUM brief-llama "$base-llama.jsonl")" >&2

		for c in $MODES; do
			flag=""
			[ "$HAVE_COMPUTE" = 1 ] && flag="--compute $c"
			# The caller's OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set in some shells) would stop
			# gf-bench from re-executing itself onto OpenBLAS's AVX-512 kernels, as it does for
			# a user whose environment does not set them; that halves sgemm.
			# shellcheck disable=SC2086
			env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$GB" --model "$GM" --threads "$t" $flag \
				>"$base-gf-$c.log" 2>&1 || die "gf-bench failed, pair $p, $t threads, $c (see $base-gf-$c.log)"
			tail -n 1 "$base-gf-$c.log" >"$base-gf-$c.json"
			$SUM check-gf "$base-gf-$c.json" || die "gf-bench printed no JSON, pair $p, $t threads, $c (see $base-gf-$c.log)"
			printf '%s\t%s\tgf\t%s\t%s\n' "$p" "$t" "$c" "$(basename "$base-gf-$c.log")" >>"$RES/runs.tsv"
			echo "  gf $c t$t: $($SUM brief-gf "$base-gf-$c.json")" >&2
		done
	done
done
echo "end $(date +%s) $(uptime)" >>"$RES/load.txt"

# 5. Table.
$SUM table "$RES" "$LM" >"$RES/summary.md" || die "summarize.py failed on $RES"
cat "$RES/summary.md"
echo "bench-peer: raw outputs in $RES" >&2
