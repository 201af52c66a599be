#!/bin/sh
# goldfinchd --print-plan: one line per rank, every block owned once in order, and a one-line
# error (exit 1) when there are more ranks than blocks.
#   partition_print_plan.sh GOLDFINCHD MODEL.gguf
set -eu
d=$1
m=$2
out=$("$d" --print-plan -n 3 --model "$m")
echo "$out"
echo "$out" | grep -q "on 3 rank(s)" || { echo "FAIL: no 3-rank header"; exit 1; }
rows=$(echo "$out" | grep -cE '^ +[0-9]+ +[0-9]+\.\.')
[ "$rows" -eq 3 ] || { echo "FAIL: $rows rank rows"; exit 1; }
# the slices tile the blocks: first starts at 0, each next starts after the previous
echo "$out" | awk '/^ +[0-9]+ +[0-9]+\.\./ { split($2, r, "\\.\\."); if (r[1] != next_b) exit 1; next_b = r[2] + 1 } END { if (next_b == 0) exit 1 }' ||
	{ echo "FAIL: slices do not tile the blocks"; exit 1; }
if "$d" --print-plan -n 64 --model "$m" 2>err; then
	echo "FAIL: 64 ranks accepted"
	exit 1
fi
[ "$(wc -l <err)" -eq 1 ] || { echo "FAIL: error not one line"; cat err; exit 1; }
rm -f err
echo PASS
