#!/bin/sh
# engine_sigkill — a gf-run ingest killed at random moments and resumed ends exactly as an
# uninterrupted one.
#   engine_sigkill.sh GF_RUN ENGINE_DUMP TEXT_MODEL.gguf TEXT_SOURCE TMP_DIR
# The input is a directory of two text files cut from TEXT_SOURCE (so the stream has file
# headers and a resume may start inside either file). An uninterrupted ingest into one store
# is the reference and sets the time scale. In another store the same ingest is started
# with --resume three times; each run is interrupted (SIGKILL, SIGINT, SIGKILL) at a random
# moment after it committed a checkpoint of its own; a last --resume finishes it. Then both
# contexts must be byte-identical (c rows, tokens, snapshot, key: engine_dump + cmp) and
# answer the same question the same way (ask --temperature 0). GF_TEST_SEED fixes the
# random moments (the seed is printed).
set -eu
run=$1
dump=$2
model=$3
src=$4
tmp=$5
rm -rf "$tmp"
mkdir -p "$tmp/in/sub"
head -c 240000 "$src" >"$tmp/in/a.txt"
tail -c +240001 "$src" | head -c 120000 >"$tmp/in/sub/b.txt"
opts="--model $model --threads 1 --chunk 64 --page-tokens 500 --checkpoint-tokens 2048"

now() { date +%s.%N; }
tokens_in() { # $1 = store: committed tokens of context t (0 when none yet)
	n=$("$run" --cache-dir "$1" ls 2>/dev/null | awk '$2 == "t" { print $3 }') || true
	echo "${n:-0}"
}

t0=$(now)
# shellcheck disable=SC2086
"$run" $opts --cache-dir "$tmp/ref" ingest --name t "$tmp/in" >"$tmp/ref.out"
t1=$(now)
ref_time=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
echo "reference: $(cat "$tmp/ref.out") in ${ref_time}s"

seed=${GF_TEST_SEED:-$(date +%s)}
echo "seed $seed"
interrupted=0
finished=no
for round in 1 2 3; do
	case $round in 2) sig=INT ;; *) sig=KILL ;; esac
	before=$(tokens_in "$tmp/kill")
	# shellcheck disable=SC2086
	"$run" $opts --cache-dir "$tmp/kill" ingest --resume --name t "$tmp/in" \
		>"$tmp/run$round.out" 2>"$tmp/run$round.err" &
	pid=$!
	# Wait for a checkpoint of this run (or its end).
	while kill -0 "$pid" 2>/dev/null && [ "$(tokens_in "$tmp/kill")" -le "$before" ]; do
		sleep 0.02
	done
	delay=$(awk -v s="$seed" -v r="$round" -v t="$ref_time" \
		'BEGIN { srand((s % 100000) * 7 + r); printf "%.3f", rand() * t / 4 }')
	sleep "$delay"
	kill -s "$sig" "$pid" 2>/dev/null || true
	rc=0
	wait "$pid" || rc=$?
	echo "round $round: SIG$sig ${delay}s after the checkpoint at $(tokens_in "$tmp/kill") tokens: exit $rc"
	if [ "$rc" -eq 0 ]; then
		echo "  the ingest ended before the signal: $(cat "$tmp/run$round.out")"
		finished=yes
		break
	fi
	if [ "$sig" = INT ]; then
		if [ "$rc" -ne 1 ] || ! grep -q "resume with: " "$tmp/run$round.err" ||
			[ "$(wc -l <"$tmp/run$round.err")" -gt 2 ]; then
			echo "FAIL: SIGINT: exit $rc, stderr:"
			cat "$tmp/run$round.err"
			exit 1
		fi
		echo "  $(tail -n 1 "$tmp/run$round.err")"
	elif [ "$rc" -ne 137 ]; then
		echo "FAIL: SIGKILL: exit $rc, stderr:"
		cat "$tmp/run$round.err"
		exit 1
	fi
	interrupted=$((interrupted + 1))
done
if [ $finished = no ]; then
	# shellcheck disable=SC2086
	"$run" $opts --cache-dir "$tmp/kill" ingest --resume --name t "$tmp/in" >"$tmp/final.out"
	echo "resumed: $(cat "$tmp/final.out")"
fi
if [ $interrupted -lt 2 ]; then
	echo "FAIL: only $interrupted of 3 runs were interrupted mid-way"
	exit 1
fi

"$dump" "$tmp/ref" t "$tmp/ref.dump"
"$dump" "$tmp/kill" t "$tmp/kill.dump"
if ! cmp "$tmp/ref.dump" "$tmp/kill.dump"; then
	echo "FAIL: the resumed context differs from the uninterrupted one"
	exit 1
fi
echo "ok: contexts byte-identical ($(wc -c <"$tmp/ref.dump") bytes of rows, tokens, snapshot)"
"$run" --cache-dir "$tmp/kill" ls

q="### Question: what comes next?"
# shellcheck disable=SC2086
"$run" $opts --cache-dir "$tmp/ref" ask t "$q" --temperature 0 --max-tokens 16 \
	>"$tmp/ref.answer" 2>/dev/null
# shellcheck disable=SC2086
"$run" $opts --cache-dir "$tmp/kill" ask t "$q" --temperature 0 --max-tokens 16 \
	>"$tmp/kill.answer" 2>/dev/null
if [ ! -s "$tmp/ref.answer" ] || ! cmp "$tmp/ref.answer" "$tmp/kill.answer"; then
	echo "FAIL: answers differ (or are empty)"
	exit 1
fi
echo "ok: same answer ($(wc -c <"$tmp/ref.answer") bytes)"
echo PASS
