#!/bin/sh
# cluster_slurm — goldfinchd under SLURM end to end on a real one-node SLURM cluster, brought up on this
# machine from Debian's packages by cluster/slurm-one-node.sh and always torn down.
#
#  1. reference: goldfinchd in one process, without SLURM: a codebase and a book ingested,
#     a greedy and a seeded answer about the codebase;
#  2. SLURM up; gf-slurm submit: goldfinch.sbatch runs goldfinchd with RANKS ranks through
#     `srun --mpi=pmix`; its server file names tcp:HOST:PORT, the token file and the job;
#  3. through the server file: the codebase ingested (the reference's key), both answers
#     equal the reference's; a book ingest left waiting for input half-way;
#  4. plain `scancel` (SIGTERM): the daemon checkpoints the book, exits 0 and removes its
#     server file; its gf ingest exits 7 (shutting down);
#  5. the job submitted again on the same cache: the codebase listed and answering from
#     the store (cached tokens, no ingest), the book resumed to the reference's key;
#  6. gf-slurm stop: the job ends COMPLETED, the daemon exited 0.
# Exit 77 only where SLURM cannot be installed (not root, no apt-get, the install failed).
#
# usage: cluster_slurm.sh GOLDFINCHD GF GF_CONVERT VOCAB CLUSTER_DIR [RANKS]
# KEEP=DIR keeps the logs (SLURM's, the jobs', the reference daemon's) in DIR.
set -u
DAEMON=$1
GF=$2
CONVERT=$3
VOCAB=$4
CLUSTER=$5
RANKS=${6:-2}
ONE=$CLUSTER/slurm-one-node.sh
# One cluster on this machine at a time, in a fixed place, so that a run that was killed
# before its teardown is cleaned up by the next one.
STATE=${GF_CLUSTER_STATE:-/run/gf-cluster-slurm}
T0=$(date +%s)
elapsed() { echo "$(($(date +%s) - T0)) s"; }
phase() { echo "== $* ($(elapsed))"; }

"$ONE" install
rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || { echo "FAIL: slurm-one-node.sh install: exit $rc"; exit 1; }
for p in "$DAEMON" "$GF" "$CONVERT"; do
	[ -x "$p" ] || { echo "FAIL: $p not built"; exit 1; }
done

mkdir -p "$STATE" || exit 1
exec 9>"$STATE.lock"
flock -w 900 9 || { echo "FAIL: another cluster test holds $STATE.lock"; exit 1; }
"$ONE" down "$STATE/slurm"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gf_cluster_slurm.XXXXXX") || exit 1
REF_PID=
INGEST_PID=
cleanup() {
	trap - EXIT INT TERM HUP
	exec 3>&- 2>/dev/null
	[ -n "$INGEST_PID" ] && kill -KILL "$INGEST_PID" 2>/dev/null
	[ -n "$REF_PID" ] && kill -KILL "$REF_PID" 2>/dev/null
	t=$(date +%s)
	"$ONE" down "$STATE/slurm"
	echo "== SLURM torn down in $(($(date +%s) - t)) s"
	# Daemons the jobs started (their pids were in the server files) must be gone with
	# the jobs; a survivor would keep the cache locked.
	for pid in $(cat "$TMP/daemon.pids" 2>/dev/null); do
		kill -0 "$pid" 2>/dev/null && { echo "FAIL: goldfinchd $pid outlived its job"; kill -KILL "$pid"; }
	done
	if [ -n "${KEEP:-}" ]; then
		mkdir -p "$KEEP" && cp -r "$STATE/slurm/log" "$TMP"/submit/*.log "$TMP"/ref.log "$KEEP"/ 2>/dev/null
	fi
	rm -rf "$TMP" "$STATE/slurm"
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted"; exit 1' INT TERM HUP

fails=0
fail() {
	echo "FAIL: $*"
	fails=$((fails + 1))
}
# Ends the test at once (the trap tears SLURM down): the next steps need this one.
fatal() {
	echo "FAIL: $*"
	[ -n "${JOB:-}" ] && { echo "--- the job's output:"; tail -25 "$TMP/submit/goldfinch-$JOB.log" 2>/dev/null; }
	exit 1
}
expect() { # STATUS CMD...: stdout to $TMP/out, stderr to $TMP/err
	want=$1
	shift
	"$@" >"$TMP/out" 2>"$TMP/err"
	got=$?
	if [ "$got" != "$want" ]; then
		fail "exit $got, want $want: $*"
		sed 's/^/  stderr: /' "$TMP/err" | head -5
	fi
}
# JSON of gf, squeezed: no blanks (names and keys here have none).
squeeze() { tr -d ' \t\n' <"$TMP/out"; }
json_key() { squeeze | sed -n 's/^{"serial":[0-9]*,"key":"\([0-9a-f]*\)".*/\1/p'; }

# ---- 1. the reference, one process, no SLURM ------------------------------------------
phase "1. reference answers from goldfinchd without SLURM"
"$CONVERT" --random --layers 4 --embd 128 --vocab 65536 --vocab-file "$VOCAB" --threads 1 \
	"$TMP/model.gguf" >"$TMP/out" 2>&1 || fatal "gf-convert: $(cat "$TMP/out")"
P=$TMP/proj
mkdir -p "$P/src/net" "$P/docs"
printf '#include "net/sock.h"\n\nint main(void)\n{\n\treturn serve(7433);\n}\n' >"$P/src/main.c"
printf 'int serve(int port);\n' >"$P/src/net/sock.h"
printf 'int serve(int port)\n{\n\treturn port > 0 ? 0 : -1;\n}\n' >"$P/src/net/sock.c"
printf '# Server\n\nIt serves on port 7433.\n' >"$P/docs/README.md"
# A book of about 60 KB; its first half is sent before the job is cancelled.
awk 'BEGIN { split("the river ran past the old mill where the miller kept his books and his cats", w, " ");
	s = 7; for (l = 0; l < 1200; l++) { line = "";
		for (i = 0; i < 9; i++) { s = (s * 1103515245 + 12345) % 2147483648; line = line w[1 + int(s / 65536) % 16] " " }
		print line } }' >"$TMP/book.txt"
head -c 30000 "$TMP/book.txt" >"$TMP/book.half"
QUESTION="What port does the server use?"
GREEDY="--temperature 0 --max-tokens 24"
SEEDED="--temperature 0.8 --top-k 40 --seed 7 --max-tokens 24"

"$DAEMON" --model "$TMP/model.gguf" --cache-dir "$TMP/refcache" --listen "unix:$TMP/ref.sock" \
	--threads 1 --checkpoint-tokens 1024 --log-file "$TMP/ref.log" &
REF_PID=$!
R="$GF --server unix:$TMP/ref.sock --timeout 120"
i=0
while [ ! -S "$TMP/ref.sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$TMP/ref.sock" ] || fatal "the reference goldfinchd did not start: $(tail -3 "$TMP/ref.log")"
expect 0 $R --json ingest --name code "$P"
REF_CODE=$(json_key)
expect 0 $R --json ingest --name book - <"$TMP/book.txt"
REF_BOOK=$(json_key)
# shellcheck disable=SC2086 # GREEDY and SEEDED are lists of flags
$R ask code "$QUESTION" $GREEDY >"$TMP/ref.greedy" || fail "reference greedy answer"
# shellcheck disable=SC2086
$R ask code "$QUESTION" $SEEDED >"$TMP/ref.seeded" || fail "reference seeded answer"
kill -TERM $REF_PID
wait $REF_PID || fail "the reference goldfinchd did not exit 0"
REF_PID=
[ -n "$REF_CODE" ] && [ -n "$REF_BOOK" ] && [ -s "$TMP/ref.greedy" ] && [ -s "$TMP/ref.seeded" ] ||
	fatal "no reference keys or answers"

# ---- 2. SLURM, and the daemon as a job ------------------------------------------------
phase "2. SLURM up, goldfinchd submitted with $RANKS rank(s)"
# 9>&-: the daemons it starts must not inherit the lock (a test killed before its clean-up
# would leave them holding it, and the next run waits for the lock in vain).
"$ONE" up "$STATE/slurm" 9>&- || fatal "slurm-one-node.sh up"
. "$STATE/slurm/env"
mkdir -p "$TMP/submit" "$TMP/bin"
ln -s "$DAEMON" "$TMP/bin/goldfinchd"
ln -s "$GF" "$TMP/bin/gf"
export GF_BIN_DIR="$TMP/bin"
SF=$TMP/submit/goldfinch.server
S="$GF --server-file $SF --timeout 120"
# Under srun the daemon starts MPI even with one rank. In a sanitizer build, LeakSanitizer
# would report what Open MPI allocates in MPI_Init and keeps: suppressed by library, which
# needs whole stacks and components that stay loaded. (No effect on other builds.)
SUPP=$(cd "$(dirname "$0")" && pwd)/mpi_lsan.supp
# A checkpoint interval longer than the book: what the stop commits is the stop's own.
submit() {
	(
		cd "$TMP/submit" || exit 1
		export LSAN_OPTIONS="suppressions=$SUPP:fast_unwind_on_malloc=0"
		export OMPI_MCA_mca_base_component_disable_dlclose=1
		"$CLUSTER/gf-slurm" submit --ranks-per-node "$RANKS" --cpus-per-rank 1 --mem 2G \
			--time 10 --cache-dir "$TMP/nodelocal/cache" --token-file "$TMP/token" \
			--daemon-args "--checkpoint-tokens 65536" --wait --timeout 120 "$TMP/model.gguf"
	) >"$TMP/submit.out" 2>&1 || fatal "gf-slurm submit: $(cat "$TMP/submit.out")"
	JOB=$(cat "$SF.job")
	sed -n 's/^pid //p' "$SF" >>"$TMP/daemon.pids"
	echo "   $(tail -1 "$TMP/submit.out")"
}
submit
JOB1=$JOB
grep -qx "address tcp:$(hostname):[1-9][0-9]*" "$SF" || fail "server file address: $(cat "$SF")"
grep -qx "auth-token-file $TMP/token" "$SF" || fail "server file token: $(cat "$SF")"
grep -qx "slurm-job $JOB" "$SF" || fail "server file job: $(cat "$SF")"
[ "$(stat -c %a "$TMP/token")" = 600 ] || fail "the token file is not mode 600"
expect 0 $S --json status
squeeze | grep -q "\"ranks\":$RANKS," ||
	fatal "the daemon does not serve with $RANKS rank(s): $(squeeze | sed -n 's/.*\("ranks":[0-9]*\).*/\1/p')"
# Without the token (the server file's) the daemon refuses: it listens beyond loopback.
expect 6 "$GF" --server "$(sed -n 's/^address tcp://p' "$SF" | head -1)" status

# ---- 3. ingest and ask through the server file ----------------------------------------
phase "3. ingest and answers through the server file"
expect 0 $S --json ingest --name code "$P"
[ "$(json_key)" = "$REF_CODE" ] || fail "the job's codebase key $(json_key) is not the reference's $REF_CODE"
# shellcheck disable=SC2086
expect 0 $S ask code "$QUESTION" $GREEDY
cmp -s "$TMP/out" "$TMP/ref.greedy" || fail "greedy answer differs: job \"$(cat "$TMP/out")\" reference \"$(cat "$TMP/ref.greedy")\""
# shellcheck disable=SC2086
expect 0 env GOLDFINCH_SERVER_FILE="$SF" "$GF" --timeout 120 ask code "$QUESTION" $SEEDED
cmp -s "$TMP/out" "$TMP/ref.seeded" || fail "seeded answer differs: job \"$(cat "$TMP/out")\" reference \"$(cat "$TMP/ref.seeded")\""

# The book: half of it, then the ingest waits for the rest (a FIFO held open).
mkfifo "$TMP/fifo"
$S ingest --name book - <"$TMP/fifo" >"$TMP/book.out" 2>"$TMP/book.err" &
INGEST_PID=$!
exec 3>"$TMP/fifo"
cat "$TMP/book.half" >&3
# Until the daemon has taken every token of the half (the count stops moving).
last=-1
i=0
n=0
while [ $i -lt 200 ] && kill -0 $INGEST_PID 2>/dev/null; do
	$S status --json >"$TMP/out" 2>/dev/null
	n=$(squeeze | sed -n 's/.*"kind":"ingest"[^}]*"tokens_done":\([0-9]*\).*/\1/p')
	[ -n "$n" ] && [ "$n" -gt 1024 ] && [ "$n" = "$last" ] && break
	last=${n:--1}
	sleep 0.3
	i=$((i + 1))
done
[ "$n" = "$last" ] && [ "$n" -gt 1024 ] || fatal "the book ingest did not progress: $(cat "$TMP/book.err")"
echo "   book ingest waiting for input at $n tokens"

# ---- 4. scancel: SIGTERM, a clean stop with a checkpoint -------------------------------
phase "4. scancel $JOB"
scancel "$JOB" || fail "scancel $JOB"
i=0
while [ -n "$(squeue -h -j "$JOB" 2>/dev/null)" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
[ -z "$(squeue -h -j "$JOB" 2>/dev/null)" ] || fatal "job $JOB still in the queue 60 s after scancel"
echo "   job $JOB gone after $((i / 10)) s"
# gf reads its input with blocking reads: it sees the end of the ingest once its input
# ends. By then the daemon may have closed the connection: the server's SHUTTING_DOWN
# (exit 7) or a broken connection (exit 4).
exec 3>&-
wait $INGEST_PID
rc=$?
INGEST_PID=
[ $rc = 7 ] || [ $rc = 4 ] || fail "the interrupted gf ingest exited $rc, want 7 or 4: $(cat "$TMP/book.err")"
LOG1=$TMP/submit/goldfinch-$JOB.log
grep -q 'goldfinchd: shutting down (SIGTERM)' "$LOG1" || fail "job $JOB: the daemon saw no SIGTERM"
grep -q 'cancelled: ingest "book" .* ([1-9][0-9]* committed).*shutting down at token [1-9][0-9]*, byte [1-9][0-9]*; finish it with: gf ingest --resume --name book' "$LOG1" ||
	fail "job $JOB: no checkpoint of the book at the stop: $(grep '"book"' "$LOG1" | tail -2)"
grep -q 'goldfinchd: exit 0$' "$LOG1" || fail "job $JOB: the daemon did not exit 0: $(tail -3 "$LOG1")"
# Every rank: srun's status (a sanitizer's report would make it non-zero too).
grep -q 'goldfinch.sbatch: goldfinchd exited with status 0$' "$LOG1" ||
	fail "job $JOB: a rank did not exit 0: $(tail -3 "$LOG1")"
[ ! -e "$SF" ] || fail "the server file outlived the daemon"
[ "$(scontrol show job "$JOB" | sed -n 's/.*JobState=\([A-Z]*\).*/\1/p')" = CANCELLED ] ||
	fail "job $JOB: state is not CANCELLED"

# ---- 5. submitted again: the committed contexts, no re-ingest -------------------------
phase "5. resubmitted on the same cache"
submit
[ "$JOB" != "$JOB1" ] || fatal "no new job"
expect 0 $S --json contexts
squeeze >"$TMP/contexts"
grep -q "\"key\":\"$REF_CODE\",\"name\":\"code\",[^}]*\"sealed\":true" "$TMP/contexts" ||
	fail "the codebase is not listed after the restart: $(cat "$TMP/contexts")"
grep -q '"name":"book"[^}]*"sealed":false' "$TMP/contexts" ||
	fail "the interrupted book is not listed as resumable: $(cat "$TMP/contexts")"
# shellcheck disable=SC2086
expect 0 $S -v ask code "$QUESTION" $GREEDY
cmp -s "$TMP/out" "$TMP/ref.greedy" || fail "greedy answer after the restart differs: \"$(cat "$TMP/out")\""
grep -q 'cached [1-9][0-9]* tokens reused' "$TMP/err" || fail "the answer did not reuse the stored context: $(cat "$TMP/err")"
# shellcheck disable=SC2086
expect 0 $S ask code "$QUESTION" $SEEDED
cmp -s "$TMP/out" "$TMP/ref.seeded" || fail "seeded answer after the restart differs"
LOG2=$TMP/submit/goldfinch-$JOB.log
grep -q 'accepted: ingest' "$LOG2" && fail "job $JOB ingested something before the resume"
expect 0 $S -v --json ingest --name book --resume - <"$TMP/book.txt"
[ "$(json_key)" = "$REF_BOOK" ] || fail "the resumed book's key $(json_key) is not the reference's $REF_BOOK"
grep -q 'resuming "book" from byte [1-9]' "$TMP/err" || fail "the book did not resume: $(cat "$TMP/err")"

# ---- 6. gf-slurm stop -----------------------------------------------------------------
phase "6. gf-slurm stop"
(cd "$TMP/submit" && "$CLUSTER/gf-slurm" stop --timeout 60) >"$TMP/out" 2>&1 || fail "gf-slurm stop: $(cat "$TMP/out")"
grep -q "job $JOB: COMPLETED" "$TMP/out" || fail "gf-slurm stop: $(cat "$TMP/out")"
grep -q 'goldfinchd: exit 0$' "$LOG2" && grep -q 'goldfinch.sbatch: goldfinchd exited with status 0$' "$LOG2" ||
	fail "job $JOB: the daemon did not exit 0: $(tail -3 "$LOG2")"
[ ! -e "$SF" ] || fail "the server file outlived the second daemon"

phase "done, $fails failure(s)"
[ $fails = 0 ]
