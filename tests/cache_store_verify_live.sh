#!/bin/sh
# cache_store_verify_live: `gf-cache verify` beside a running goldfinchd must never report
# damage that is not there. The daemon ingests texts with a checkpoint every few hundred
# tokens (each commit writes a new blob file and deletes the old one) and drops contexts
# (their files go), while verify runs in a loop over the store; every run must exit 0.
# Then real damage is still found beside the running daemon: a page file removed from a
# sealed context is CORRUPT (exit 3).
#
# usage: cache_store_verify_live.sh GF_CACHE GOLDFINCHD GF GF_CONVERT VOCAB.txt [SECONDS]
# ITERATIONS=N runs N verifies instead of SECONDS of them (default 20 s).
# KEEP=DIR keeps the daemon log and the verify output of a failure there.
set -u
GFC=$1
DAEMON=$2
GF=$3
CONVERT=$4
VOCAB=$5
SECS=${6:-20}
ITER=${ITERATIONS:-0}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gf_verify_live.XXXXXX") || exit 1
MODEL=$TMP/model.gguf
D_PID=
I_PID=
cleanup() {
	[ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$TMP"/daemon.log "$TMP"/bad.* "$KEEP" 2>/dev/null
	[ -n "$I_PID" ] && kill "$I_PID" 2>/dev/null
	[ -n "$D_PID" ] && kill -KILL "$D_PID" 2>/dev/null
	wait 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
C=$TMP/cache
"$CONVERT" --random --layers 4 --embd 128 --vocab 65536 --vocab-file "$VOCAB" --threads 1 \
	"$MODEL" >/dev/null || { echo "FAIL: gf-convert"; exit 1; }
"$DAEMON" --model "$MODEL" --cache-dir "$C" --listen "unix:$TMP/sock" --threads 1 \
	--checkpoint-tokens 256 --log-file "$TMP/daemon.log" &
D_PID=$!
i=0
while [ ! -S "$TMP/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$TMP/sock" ] || { echo "FAIL: goldfinchd did not start"; cat "$TMP/daemon.log"; exit 1; }
export GOLDFINCH_SERVER="unix:$TMP/sock"
# Progress lines (gf prints them off a terminal) would read as an ingest's errors below.
export GOLDFINCH_PROGRESS_SECONDS=off

# The writer: ingests of new texts (never reused), each dropped two ingests later, until
# told to stop.
(
	n=0
	while [ ! -e "$TMP/stop" ]; do
		n=$((n + 1))
		seq "$n" 7 400000 | head -c 49152 >"$TMP/text.$n"
		"$GF" ingest --name "t$n" - <"$TMP/text.$n" >/dev/null 2>>"$TMP/ingest.err" ||
			echo "ingest $n failed" >>"$TMP/ingest.err"
		rm -f "$TMP/text.$n"
		[ $n -gt 2 ] && "$GF" drop "t$((n - 2))" >/dev/null 2>&1
	done
	echo "$n" >"$TMP/ingests"
) &
I_PID=$!

runs=0
bad=0
start=$(date +%s)
while :; do
	if [ "$ITER" -gt 0 ]; then
		[ $runs -ge "$ITER" ] && break
	else
		[ $(($(date +%s) - start)) -ge "$SECS" ] && break
	fi
	"$GFC" --dir "$C" verify >"$TMP/out" 2>&1
	rc=$?
	runs=$((runs + 1))
	if [ $rc -ne 0 ]; then
		bad=$((bad + 1))
		cp "$TMP/out" "$TMP/bad.$bad"
		[ $bad -le 3 ] && { echo "verify run $runs exited $rc:"; cat "$TMP/out"; }
	fi
done
touch "$TMP/stop"
wait "$I_PID"
I_PID=
secs=$(($(date +%s) - start))
ingests=$(cat "$TMP/ingests" 2>/dev/null || echo 0)
echo "$runs verify runs in $secs s beside $ingests ingests: $bad reported a problem"
fails=0
[ $bad -eq 0 ] || fails=1
[ "$ingests" -ge 2 ] || { echo "FAIL: fewer than 2 ingests ran"; fails=1; }
if [ -s "$TMP/ingest.err" ]; then
	echo "FAIL: an ingest failed:"
	head -5 "$TMP/ingest.err"
	fails=1
fi

# Damage is still damage beside the daemon: a sealed context's page file removed.
last=$("$GF" contexts --json | /usr/bin/python3 -c \
	'import json,sys; c=[x for x in json.load(sys.stdin) if x["sealed"]]; print(c[-1]["serial"] if c else "")')
if [ -n "$last" ]; then
	rm -f "$C/c$(printf '%016x' "$last").pages"
	"$GFC" --dir "$C" verify "#$last" >"$TMP/out" 2>&1
	rc=$?
	if [ $rc -ne 3 ] || ! grep -q "^CORRUPT" "$TMP/out"; then
		echo "FAIL: a missing page file gave exit $rc, not 3 (CORRUPT):"
		cat "$TMP/out"
		fails=1
	fi
else
	echo "FAIL: no sealed context to damage"
	fails=1
fi
[ $fails -eq 0 ] && echo "PASS"
exit $fails
