#!/bin/sh
# client_e2e — gf and the Python client against the real goldfinchd on a temporary Unix
# socket, with a small random model: a codebase (nested folders, a binary, a .git folder)
# and a book are ingested, listed, asked about and dropped; answers must equal gf-run's
# (the engine in one process) for the same input stream, flags and seed, and the Python
# client's must equal gf's; an ingest whose client is killed resumes to the very context
# an uninterrupted ingest makes; Ctrl-C cancels; a job is listed by gf status and cancelled
# by its number from another client (protocol 1.1); exit codes for the usual failures.
#
# usage: client_e2e.sh GF GF_CLIENT_PY GOLDFINCHD GF_RUN MODEL.gguf PROTO_PYTHON_DIR
# KEEP=FILE keeps a copy of the daemon log there (for debugging).
set -u
GF=$1
PYCLIENT=$2
DAEMON=$3
GFRUN=$4
MODEL=$5
PROTO=$6
PY=/usr/bin/python3
if ! $PY -c 'import google.protobuf' 2>/dev/null; then
	echo "SKIP: $PY has no protobuf module (python3-protobuf)"
	exit 77
fi
[ -f "$MODEL" ] || { echo "FAIL: no model $MODEL (fixture client_model)"; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gf_client_e2e.XXXXXX") || exit 1
D_PID=
cleanup() {
	[ -n "${KEEP:-}" ] && cp "$TMP/daemon.log" "$KEEP"
	[ -n "$D_PID" ] && kill -KILL "$D_PID" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
fails=0
fail() {
	echo "FAIL: $*" >&2
	fails=$((fails + 1))
}
expect() { # STATUS CMD...: stdout to $TMP/out, stderr to $TMP/err
	want=$1
	shift
	"$@" >"$TMP/out" 2>"$TMP/err"
	got=$?
	if [ "$got" != "$want" ]; then
		fail "exit $got, want $want: $*"
		sed 's/^/  stderr: /' "$TMP/err" | head -5 >&2
	fi
}
json() { $PY -c "import json,sys; j=json.load(open('$TMP/out')); print(($1))"; }
run() { "$GFRUN" --model "$MODEL" --cache-dir "$TMP/runcache" --threads 1 "$@"; }
alive() { # the daemon must survive every step: stop at once, with its log, if it did not
	kill -0 "$D_PID" 2>/dev/null && return 0
	echo "FAIL: goldfinchd died ($1); the end of its log:"
	tail -15 "$TMP/daemon.log"
	exit 1
}

"$DAEMON" --model "$MODEL" --cache-dir "$TMP/cache" --listen "unix:$TMP/sock" --threads 1 \
	--checkpoint-tokens 512 --log-file "$TMP/daemon.log" &
D_PID=$!
i=0
while [ ! -S "$TMP/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$TMP/sock" ] || { echo "FAIL: goldfinchd did not start"; cat "$TMP/daemon.log"; exit 1; }
export GOLDFINCH_SERVER="unix:$TMP/sock" GF_PROTO_PYTHON_DIR="$PROTO"
G="$GF --timeout 60"

# A codebase: nested folders, a .git folder and a binary that must be skipped.
P=$TMP/proj
mkdir -p "$P/src/net" "$P/docs" "$P/.git/refs" "$P/img"
printf '#include "net/sock.h"\n\nint main(void)\n{\n\treturn serve(7433);\n}\n' >"$P/src/main.c"
printf 'int serve(int port);\n' >"$P/src/net/sock.h"
printf 'int serve(int port)\n{\n\treturn port > 0 ? 0 : -1;\n}\n' >"$P/src/net/sock.c"
printf '# Server\n\nIt serves on port 7433. Caf\303\251.\n' >"$P/docs/README.md"
printf 'ref: refs/heads/main\n' >"$P/.git/HEAD"
printf '0123abcd\n' >"$P/.git/refs/main"
printf '\211PNG\r\n\032\n\000\000\000\rIHDR\000' >"$P/img/logo.png"
{
	for f in docs/README.md src/main.c src/net/sock.c src/net/sock.h; do
		printf '### File: %s\n' "$f"
		cat "$P/$f"
		printf '\n'
	done
} >"$TMP/code.stream"
$PY -c "
import random
r = random.Random(5)
w = 'the river ran past the old mill where the miller kept his books and his cats'.split()
print('\n'.join(' '.join(r.choice(w) for _ in range(12)) for _ in range(600)))" >"$TMP/book.txt"

# 1. Server and model; its compute mode and memory against the budgets (protocol 1.2). The
#    daemon runs without --tier-mb: the tier's budget is the engine's default, 512 MiB.
expect 0 $G status --json
[ "$(json 'j["model"]["n_layer"], j["model"]["n_embd"], j["protocol"], j["jobs"]')" = "(4, 128, '1.3', [])" ] ||
	fail "status: $(cat "$TMP/out")"
[ "$(json 'j["compute"] in ("f32", "bf16"), j["kernels"] in ("avx512", "avx2", "scalar"),
	j["model"]["compute"] == j["compute"], j["weight_bytes"] > 0,
	j["weight_bytes"] == j["model"]["weight_bytes"], j["weight_bytes"] < j["rss_bytes"],
	j["tier_budget_bytes"], j["tier_bytes"] <= j["tier_budget_bytes"],
	j["page_cache_budget_bytes"] > 0, j["page_cache_bytes"] >= 0')" = \
	"(True, True, True, True, True, True, 536870912, True, True, True)" ] ||
	fail "status --json memory: $(cat "$TMP/out")"
expect 0 $G status
grep -q '^memory  *[0-9.]* [KMG]iB resident: weights [0-9.]* [KMG]*i*B, page cache [0-9.]* [KMG]*i*B of [0-9.]* [KMG]iB, tier [0-9.]* [KMG]*i*B of 512.0 MiB$' "$TMP/out" &&
	grep -Eq '^compute  *(f32|bf16) \(kernels (avx512|avx2|scalar)\)$' "$TMP/out" ||
	fail "gf status memory and compute: $(cat "$TMP/out")"
expect 0 "$PY" "$PYCLIENT" status
[ "$(json 'j["compute"] in ("f32", "bf16"), j["tier_budget_bytes"], j["weight_bytes"] > 0')" = \
	"(True, 536870912, True)" ] || fail "Python client's status: $(cat "$TMP/out")"
expect 0 "$PY" "$PYCLIENT" hello
[ "$(json 'j["protocol"], j["model"]["compute"] in ("f32", "bf16"), j["model"]["weight_bytes"] > 0')" = \
	"('1.3', True, True)" ] || fail "Python client's hello: $(cat "$TMP/out")"

alive "before step 2"
# 2. The codebase: the daemon's context has the tokens of the expected stream (its key is
#    the one gf-run gives that stream, read from stdin as plain text); gf-run given the
#    same folder walks and renders it as gf and the daemon do (one walker, gfc_walk): the
#    same key again; the Python client's walk gives the same context.
expect 0 $G --json ingest --name code "$P"
KEY=$(json 'j["key"]')
[ "$(json 'j["sealed"], j["reused"], j["tokens"] > 50')" = "(True, False, True)" ] ||
	fail "ingest code: $(cat "$TMP/out")"
grep -q "skipping $P/.git: version-control folder" "$TMP/err" || fail "no note for .git"
grep -q "skipping $P/img/logo.png: binary file" "$TMP/err" || fail "no note for the binary"
run ingest --name code "$P" >"$TMP/run.out" 2>"$TMP/run.err" || fail "gf-run ingest code"
grep -q "^ingested #[0-9]* code: .* key $(echo "$KEY" | cut -c1-12)" "$TMP/run.out" ||
	fail "gf-run's key for the folder is not gf's $KEY: $(cat "$TMP/run.out")"
grep -q "skipping $P/.git: version-control folder" "$TMP/run.err" &&
	grep -q "skipping $P/img/logo.png: binary file" "$TMP/run.err" ||
	fail "gf-run's notes differ from gf's: $(cat "$TMP/run.err")"
run ingest --name code-stream - <"$TMP/code.stream" >"$TMP/run.out" 2>&1 || fail "gf-run ingest stream"
grep -q "^reused .* key $(echo "$KEY" | cut -c1-12)" "$TMP/run.out" ||
	fail "gf-run's key for the expected stream is not gf's $KEY: $(cat "$TMP/run.out")"
expect 0 "$PY" "$PYCLIENT" ingest --name code-py "$P"
[ "$(json 'j["key"], j["reused"]')" = "('$KEY', True)" ] || fail "Python ingest: $(cat "$TMP/out")"
# The same codebase under a new name: the stored context keeps its name, and gf says which
# name to ask with.
expect 0 $G ingest --name code-again "$P"
grep -q 'stored already as "code" (#[0-9]*), so the name "code-again" was not kept; ask with: gf ask code QUESTION' "$TMP/err" ||
	fail "a reused ingest under a new name: $(cat "$TMP/out" "$TMP/err")"

alive "before step 3"
# 3. The book: as a file (its base name as the path: gf and gf-run alike), and as plain
#    text from stdin (gf and gf-run alike).
expect 0 $G -v ingest --name book "$TMP/book.txt"
grep -q '^context #[0-9]* "book": [0-9]* tokens, .* on disk, new' "$TMP/out" ||
	fail "ingest book: $(cat "$TMP/out")"
FKEY=$(sed -n 's/^gf: key \([0-9a-f]*\)$/\1/p' "$TMP/err")
run ingest --name book "$TMP/book.txt" >"$TMP/run.out" 2>&1 || fail "gf-run ingest book"
grep -q "key $(echo "${FKEY:-none}" | cut -c1-12)" "$TMP/run.out" ||
	fail "a single file: gf-run's key is not gf's ${FKEY:-(none)}: $(cat "$TMP/run.out")"
expect 0 $G --json ingest --name book-raw - <"$TMP/book.txt"
BKEY=$(json 'j["key"]')
[ "$BKEY" != "$FKEY" ] || fail "a file and its text as stdin gave the same key"
run ingest --name book-raw - <"$TMP/book.txt" >"$TMP/run.out" 2>&1 || fail "gf-run ingest book-raw"
grep -q "key $(echo "$BKEY" | cut -c1-12)" "$TMP/run.out" || fail "book keys differ"

alive "before step 4"
# 4. Contexts.
expect 0 $G contexts
grep -q '^#[0-9]* *code  *[0-9]' "$TMP/out" && grep -q '^#[0-9]* *book-raw ' "$TMP/out" ||
	fail "contexts table: $(cat "$TMP/out")"
expect 0 $G contexts --json
[ "$(json 'sorted(c["name"] for c in j if c["sealed"])')" = "['book', 'book-raw', 'code']" ] ||
	fail "contexts --json: $(cat "$TMP/out")"

alive "before step 5"
# 5. Answers: greedy on the codebase, sampled on the book; gf = gf-run = Python client.
ask_all() { # CONTEXT QUESTION FLAGS...
	ctx=$1
	q=$2
	shift 2
	expect 0 $G ask "$ctx" "$q" "$@"
	cp "$TMP/out" "$TMP/a_gf"
	[ -s "$TMP/a_gf" ] || fail "empty answer from gf ($ctx)"
	run ask "$ctx" "$q" "$@" >"$TMP/a_run" 2>"$TMP/run.err" || fail "gf-run ask $ctx: $(cat "$TMP/run.err")"
	cmp -s "$TMP/a_gf" "$TMP/a_run" || fail "gf and gf-run answers differ on $ctx $*"
	expect 0 "$PY" "$PYCLIENT" ask "$ctx" "$q" "$@"
	cmp -s "$TMP/a_gf" "$TMP/out" || fail "gf and the Python client answers differ on $ctx $*"
}
ask_all code "What port does the server use?" --temperature 0 --max-tokens 24
ask_all book-raw "Who kept the books?" --temperature 0.8 --top-p 0.9 --top-k 40 --seed 99 --max-tokens 24
expect 0 $G -v ask code "Why?" --temperature 0 --max-tokens 5
grep -q 'usage: prompt [0-9]* tokens, cached [1-9][0-9]* tokens reused, completion 5 tokens' "$TMP/err" ||
	fail "ask -v usage: $(cat "$TMP/err")"

alive "before step 6"
# 6. Exit codes.
expect 3 $G ask nosuch "q"
expect 3 "$PY" "$PYCLIENT" ask nosuch "q"
expect 3 $G drop nosuch
expect 4 $GF --server "unix:$TMP/none" contexts
expect 2 $G --bogus contexts
expect 2 $G ask code "q" --min-p 3
# No job 99 is queued or running.
expect 3 $G cancel 99
expect 3 "$PY" "$PYCLIENT" cancel 99

alive "before step 7"
# 7. Ctrl-C during a generation: Cancel, the server's Done{CANCELLED}, exit 5.
$G ask code "Tell a long story." --max-tokens 1000000 >"$TMP/long" 2>"$TMP/long.err" &
pid=$!
sleep 0.5
kill -INT $pid
wait $pid
rc=$?
[ $rc = 5 ] || fail "SIGINT during ask: exit $rc ($(cat "$TMP/long.err"))"
# The daemon logs the job's end just after it answers: give the line a moment.
i=0
while [ $i -lt 100 ] && ! grep -q 'cancelled by the client' "$TMP/daemon.log"; do
	sleep 0.05
	i=$((i + 1))
done
grep -q 'cancelled by the client' "$TMP/daemon.log" || fail "daemon saw no Cancel"

alive "before step 7b"
# 7b. From another terminal, by the job's server-wide number (protocol 1.1). An ingest
#     that waits for input (stdin from a FIFO held open): gf status lists it, gf cancel
#     stops it, its gf exits 5, and --resume completes it to the context a whole ingest of
#     the same text made (book-raw, step 3). A generation: gf -v prints its number, the
#     Python client lists it and cancels it, gf ask exits 5.
mkfifo "$TMP/fifo"
$G -v ingest --name piped - <"$TMP/fifo" >"$TMP/piped.out" 2>"$TMP/piped.err" &
pid=$!
exec 3>"$TMP/fifo"
cat "$TMP/book.txt" >&3
N=
i=0
while [ $i -lt 400 ] && [ -z "$N" ]; do
	N=$($G status --json 2>/dev/null | $PY -c '
import json, sys
j = [x for x in json.load(sys.stdin)["jobs"] if x["context"] == "piped" and x["kind"] == "ingest"
     and x["state"] == "running" and x["tokens_done"] >= 1024]
print(j[0]["job"] if j else "")')
	[ -n "$N" ] || sleep 0.05
	i=$((i + 1))
done
if [ -n "$N" ]; then
	expect 0 $G status
	grep -q "^$N  *ingest  *running  *piped  *[0-9][0-9]*  *[0-9][0-9hms]*  *unix pid [0-9]" "$TMP/out" ||
		fail "gf status does not list ingest job $N: $(cat "$TMP/out")"
	expect 0 $G cancel "$N"
	grep -q "^job $N: cancel accepted" "$TMP/out" || fail "gf cancel: $(cat "$TMP/out")"
else
	fail "the piped ingest is not listed by gf status --json"
	kill -INT $pid
fi
exec 3>&-
wait $pid
rc=$?
[ $rc = 5 ] || fail "ingest cancelled from another gf: exit $rc ($(cat "$TMP/piped.err"))"
grep -q "^gf: job ${N:-x}\$" "$TMP/piped.err" || fail "gf -v ingest printed no job number: $(cat "$TMP/piped.err")"
grep -q 'CANCELLED: ingest #[0-9]* cancelled.* at token [0-9]*, byte [0-9]*; finish it with: gf ingest --resume --name piped PATH' "$TMP/piped.err" || fail "ingest's client: $(cat "$TMP/piped.err")"
expect 3 $G cancel "${N:-0}"
expect 0 $G --json ingest --name piped --resume - <"$TMP/book.txt"
[ "$(json 'j["key"], j["sealed"]')" = "('$BKEY', True)" ] || fail "resumed piped ingest: $(cat "$TMP/out")"
$G -v ask code "Tell a long story." --max-tokens 1000000 >"$TMP/long" 2>"$TMP/long.err" &
pid=$!
N=
i=0
while [ $i -lt 400 ] && [ -z "$N" ]; do
	N=$(sed -n 's/^gf: job \([0-9][0-9]*\)$/\1/p' "$TMP/long.err")
	[ -n "$N" ] || sleep 0.05
	i=$((i + 1))
done
if [ -n "$N" ]; then
	expect 0 "$PY" "$PYCLIENT" status
	[ "$(json "[(x['kind'], x['state'], x['context']) for x in j['jobs'] if x['job'] == $N]")" = \
		"[('generate', 'running', 'code')]" ] || fail "Python client's status: $(cat "$TMP/out")"
	expect 0 "$PY" "$PYCLIENT" cancel "$N"
else
	fail "gf -v ask printed no job number: $(cat "$TMP/long.err")"
	kill -INT $pid
fi
wait $pid
rc=$?
[ $rc = 5 ] || fail "generation cancelled from the Python client: exit $rc ($(cat "$TMP/long.err"))"
grep -q 'gf: cancelled' "$TMP/long.err" || fail "gf ask: $(cat "$TMP/long.err")"

alive "before step 8"
# 8. Resume: kill the client once the daemon has committed a checkpoint; --resume sends
#    the input again from the byte the daemon names (inside a file) and ends with the
#    context an uninterrupted ingest makes (reused: the same key).
B=$TMP/big
mkdir -p "$B/a" "$B/b"
for n in 1 2 3 4 5; do head -c $((n * 7001)) "$TMP/book.txt" >"$B/a/part$n.txt"; done
cp "$TMP/book.txt" "$B/b/book.txt"
expect 0 $G --json ingest --name whole "$B"
WKEY=$(json 'j["key"]')
$G ingest --name big "$B" >/dev/null 2>&1 &
pid=$!
i=0
while [ $i -lt 400 ]; do
	$G contexts --json 2>/dev/null | $PY -c '
import json, sys
sys.exit(0 if any(c["name"] == "big" and c["tokens"] > 0 for c in json.load(sys.stdin)) else 1)' && break
	sleep 0.02
	i=$((i + 1))
done
kill -KILL $pid 2>/dev/null
wait $pid 2>/dev/null
# The daemon notices the disconnect and checkpoints; until then a resume finds the
# context busy (it still has its writer).
i=0
while [ $i -lt 200 ] && ! grep -q 'ingest "big" .*gf ingest --resume --name big\|done: context #[0-9]* "big"' "$TMP/daemon.log"; do
	sleep 0.05
	i=$((i + 1))
done
expect 0 $G -v --json ingest --name big --resume "$B"
[ "$(json 'j["key"], j["reused"]')" = "('$WKEY', True)" ] || fail "resumed ingest: $(cat "$TMP/out")"
grep -q 'resuming "big" from byte\|"big" was complete already' "$TMP/err" || fail "resume: $(cat "$TMP/err")"

alive "before step 9"
# 9. Drop.
expect 0 $G drop code
expect 3 $G ask code "q"
expect 0 "$PY" "$PYCLIENT" drop book

alive "at the end"
# The daemon is still up and stops cleanly.
kill -TERM "$D_PID"
wait "$D_PID"
rc=$?
D_PID=
[ $rc = 0 ] || fail "goldfinchd exit $rc after SIGTERM"

if [ $fails -ne 0 ]; then
	echo "client_e2e: $fails failure(s)"
	tail -20 "$TMP/daemon.log"
	exit 1
fi
echo "client_e2e: all passed"
