#!/bin/sh
# A fuzzing campaign over the targets of tests/fuzz (README.md, "Campaign").
#
# Usage: tests/fuzz/campaign.sh BUILD_FUZZ OUT SECONDS [TARGET...]
#   BUILD_FUZZ  a build configured with -DGF_FUZZ=ON (clang)
#   OUT         where corpora, logs and crashing inputs go (kept between runs: a second
#               campaign continues from the corpus the first one grew)
#   SECONDS     time per target
# Runs JOBS targets at a time (default 2) under nice -n 19, each from its committed seed
# corpus plus OUT/corpus/TARGET, and prints one line of figures per target: executions, the
# final cov/ft of libFuzzer's stats, corpus size, crashing inputs. A target that crashes
# stops early: its input is in OUT/artifacts/TARGET/ (fix, then run the target again).
set -eu
[ $# -ge 3 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
build=$1 out=$2 secs=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
targets=${*:-"frame request pth safetensors gguf tokenizer vocab cache_page cache_manifest cache_store"}
jobs=${JOBS:-2}
mkdir -p "$out/logs"

run_one() {
	t=$1
	mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
	dict=""
	[ -f "$here/dict/$t.dict" ] && dict="-dict=$here/dict/$t.dict"
	# shellcheck disable=SC2086
	nice -n 19 "$build/tests/fuzz_$t" "$out/corpus/$t" "$here/corpus/$t" $dict \
		-max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$out/artifacts/$t/" >"$out/logs/$t.log" 2>&1 || true
}

# JOBS workers take targets in turn.

for w in $(seq 1 "$jobs"); do
	(
		k=0
		for t in $targets; do
			[ $((k % jobs + 1)) -eq "$w" ] && run_one "$t"
			k=$((k + 1))
		done
	) &

done
wait

printf '%-15s %12s %8s %8s %7s %8s %s\n' target execs exec/s cov ft corpus crashes
for t in $targets; do
	log="$out/logs/$t.log"
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	last=$(grep -a -E '^#[0-9]+' "$log" | tail -1)
	cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
	ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
	n=$(ls "$out/corpus/$t" | wc -l)
	crashes=$(ls "$out/artifacts/$t" | wc -l)
	printf '%-15s %12s %8s %8s %7s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
		"${ft:-?}" "$n" "$crashes"
done
