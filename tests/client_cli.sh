#!/bin/sh
# client_cli — gf and the Python client (gf_client.py) against a fake server in Python
# (client_fake_server.py), which records what the clients send: the directory walk and its
# rendering, pieces, flags, exit codes, the auth token, SIGINT cancels, and resume after a
# dropped connection. No model needed; the real daemon is client_e2e.sh.
#
# usage: client_cli.sh GF GF_CLIENT_PY FAKE_SERVER_PY PROTO_PYTHON_DIR
set -u
GF=$1
PYCLIENT=$2
FAKE=$3
PROTO=$4
PY=/usr/bin/python3
if ! $PY -c 'import google.protobuf' 2>/dev/null; then
	echo "SKIP: $PY has no protobuf module (python3-protobuf)"
	exit 77
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gf_client_cli.XXXXXX") || exit 1
SRV_PID=
cleanup() {
	[ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
fails=0
fail() {
	echo "FAIL: $*" >&2
	fails=$((fails + 1))
}
# expect STATUS CMD...: runs CMD (stdout to $TMP/out, stderr to $TMP/err), checks its status.
expect() {
	want=$1
	shift
	"$@" >"$TMP/out" 2>"$TMP/err"
	got=$?
	if [ "$got" != "$want" ]; then
		fail "exit $got, want $want: $*"
		sed 's/^/  stderr: /' "$TMP/err" | head -5 >&2
	fi
}
json() { # python expression over the JSON in $TMP/out, bound to j
	$PY -c "import json,sys; j=json.load(open('$TMP/out')); print(($1))"
}

LOG=$TMP/log
mkdir -p "$LOG"
echo "s3cret" >"$TMP/token"
$PY "$FAKE" --socket "$TMP/sock" --logdir "$LOG" --proto-dir "$PROTO" --token s3cret &
SRV_PID=$!
i=0
while [ ! -S "$TMP/sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$TMP/sock" ] || { echo "FAIL: fake server did not start"; exit 1; }
export GOLDFINCH_SERVER="unix:$TMP/sock" GOLDFINCH_TOKEN_FILE="$TMP/token"
export GF_PROTO_PYTHON_DIR="$PROTO"

# A small codebase: nested folders, a .git folder, a binary, a Latin-1 file, an empty file.
P=$TMP/proj
mkdir -p "$P/src/util" "$P/docs" "$P/.git/objects" "$P/assets" "$P/empty"
printf 'int main(void)\n{\n\treturn helper();\n}\n' >"$P/src/main.c"
printf 'static inline int helper(void) { return 42; }\n' >"$P/src/util/helper.h"
printf '# Project\n\nUnicode: caf\303\251 \342\202\254 \360\237\230\200\n' >"$P/docs/README.md"
printf 'ref: refs/heads/main\n' >"$P/.git/HEAD"
printf 'x\001\000\002blob' >"$P/.git/objects/ab"
printf '\211PNG\r\n\032\n\000\000\000\rIHDR' >"$P/assets/logo.png"
printf 'caf\351\n' >"$P/docs/latin1.txt"
: >"$P/src/empty.txt"
# A book of a few hundred KiB, so that it goes in several 64 KiB pieces.
$PY -c "
import sys
words = 'the quick brown fox jumps over the lazy dog and keeps running far away'.split()
out = []
for i in range(40000):
    out.append(words[(i * 7) % len(words)])
    if i % 13 == 12: out.append('\n')
sys.stdout.write(' '.join(out) + '\n')" >"$TMP/book.txt"

# 1. Directory ingest: files in sorted order with relative paths; skips with notes.
expect 0 "$GF" ingest --name code "$P"
grep -q 'context #1 "code"' "$TMP/out" || fail "ingest output: $(cat "$TMP/out")"
for skipped in .git assets/logo.png docs/latin1.txt; do
	grep -q "skipping $P/$skipped" "$TMP/err" || fail "no note for $skipped"
done
{
	for f in docs/README.md src/empty.txt src/main.c src/util/helper.h; do
		printf '### File: %s\n' "$f"
		cat "$P/$f"
		printf '\n'
	done
} >"$TMP/expected"
cmp -s "$TMP/expected" "$LOG/code.rendered" || fail "rendered codebase differs from expected"
grep -q '^file src/main.c 37$' "$LOG/code.pieces" || fail "FileStart size: $(cat "$LOG/code.pieces")"

# 2. The Python client walks the same tree the same way: same key, reused.
expect 0 "$PY" "$PYCLIENT" ingest --name code-py "$P"
[ "$(json 'j["reused"]')" = True ] || fail "Python ingest of the same tree not reused"
cmp -s "$LOG/code.rendered" "$LOG/code-py.rendered" || fail "Python client rendered differently"

# 3. A text file given directly (a file, base name) and the same text from stdin (plain).
expect 0 "$GF" --json ingest --name book "$TMP/book.txt"
[ "$(json 'j["name"], j["sealed"], j["reused"]')" = "('book', True, False)" ] ||
	fail "ingest --json: $(cat "$TMP/out")"
{ printf '### File: book.txt\n'; cat "$TMP/book.txt"; printf '\n'; } >"$TMP/expected"
cmp -s "$TMP/expected" "$LOG/book.rendered" || fail "rendered book differs"
[ "$(grep -c '^text 65536$' "$LOG/book.pieces")" = 2 ] && grep -q '^text 55080$' "$LOG/book.pieces" ||
	fail "book not in 64 KiB pieces: $(cat "$LOG/book.pieces")"
grep -q 'piece over 64 KiB' "$LOG/events.log" 2>/dev/null && fail "a piece over 64 KiB"
expect 0 "$GF" ingest --name book-stdin - <"$TMP/book.txt"
cmp -s "$TMP/book.txt" "$LOG/book-stdin.rendered" || fail "stdin not sent as plain text"
expect 0 "$PY" "$PYCLIENT" ingest --name book-py - <"$TMP/book.txt"
cmp -s "$TMP/book.txt" "$LOG/book-py.rendered" || fail "Python stdin not sent as plain text"

# 4. Contexts, as a table and as JSON.
expect 0 "$GF" contexts
head -1 "$TMP/out" | grep -q 'SERIAL.*NAME.*TOKENS.*DISK.*SEALED.*LAST USE' || fail "table header"
grep -q '^#3 *book ' "$TMP/out" || fail "table row: $(cat "$TMP/out")"
expect 0 "$GF" contexts --json
[ "$(json 'len(j), j[0]["name"], j[0]["sealed"]')" = "(5, 'code', True)" ] ||
	fail "contexts --json: $(cat "$TMP/out")"
expect 0 "$PY" "$PYCLIENT" contexts
[ "$(json 'len(j)')" = 5 ] || fail "Python contexts"

# 5. Ask: the flags reach the server; gf and the Python client print the same bytes.
set -- --temperature 0 --seed 7 --top-k 5 --top-p 0.5 --min-p 0.1 --max-tokens 100 \
	--presence-penalty 0.25 --frequency-penalty -0.5 --stop STOPHERE --stop zzz
expect 0 "$GF" ask code "what is main" "$@"
cp "$TMP/out" "$TMP/ans_gf"
grep -q '^\[[0-9a-f]\{8\}\] what is main? (max_tokens=100 temperature=0 top_k=5 top_p=0.5 min_p=0.1 presence_penalty=0.25 frequency_penalty=-0.5 seed=7 stop=STOPHERE|zzz) Answer: é lorem ipsum dolor sit amet, STOPHERE$' "$TMP/ans_gf" ||
	fail "gf ask answer: $(cat "$TMP/ans_gf")"
expect 0 "$PY" "$PYCLIENT" ask code "what is main" "$@"
cmp -s "$TMP/ans_gf" "$TMP/out" || fail "Python client's answer differs from gf's"
expect 0 "$GF" -v ask "#1" "what is main" --max-tokens 4
[ "$(cat "$TMP/out")" = "$(head -c 12 "$TMP/ans_gf")" ] || fail "max-tokens 4: $(cat "$TMP/out")"
grep -q 'done: length' "$TMP/err" && grep -q 'usage: prompt 12 tokens' "$TMP/err" ||
	fail "ask -v: $(cat "$TMP/err")"
KEY=$("$GF" contexts --json | $PY -c 'import json,sys; print(json.load(sys.stdin)[0]["key"][:10])')
expect 0 "$GF" ask "$KEY" "what is main" --max-tokens 4
expect 0 "$GF" ask --max-tokens 2 code -- "-dash question"

# 6. Exit codes.
expect 3 "$GF" ask nosuch "q"
grep -q 'gf: server: NOT_FOUND: context "nosuch": not found' "$TMP/err" || fail "message: $(cat "$TMP/err")"
expect 3 "$PY" "$PYCLIENT" ask nosuch "q"
expect 4 "$GF" --server "unix:$TMP/nothing" status
expect 4 "$PY" "$PYCLIENT" --server "unix:$TMP/nothing" status
expect 4 "$GF" --server 127.0.0.1:1 contexts
expect 2 "$GF" --bogus status
expect 2 "$GF" ask code
expect 2 "$GF" ask code q --top-p 2
expect 2 "$GF" ask code q --temperature -1
expect 2 "$GF" ask code q --seed x
expect 2 "$GF" contexts --name x
expect 2 "$GF" frobnicate
expect 2 "$GF" ingest "$TMP/missing"
expect 2 "$GF" ingest --resume "$P"
expect 2 "$GF" ingest "$P/assets"
expect 2 "$GF" --server nocolon status
expect 1 "$GF" ingest --name code "$P"
grep -q 'BAD_REQUEST' "$TMP/err" || fail "duplicate name: $(cat "$TMP/err")"
GOLDFINCH_TOKEN_FILE= expect 6 "$GF" status
echo wrong >"$TMP/badtoken"
expect 6 "$GF" --auth-token-file "$TMP/badtoken" status
expect 6 "$GF" --auth-token-file "$TMP/missing-token" status
GOLDFINCH_TOKEN_FILE= expect 6 "$PY" "$PYCLIENT" status
# The fake server speaks protocol 1.0 (no server-wide job numbers): gf sends the 1.0
# Cancel{target}, gets NOT_FOUND and says why; so does the Python client.
expect 3 "$GF" cancel 5
grep -q 'Ctrl-C' "$TMP/err" && grep -q 'protocol 1.0' "$TMP/err" || fail "cancel hint: $(cat "$TMP/err")"
expect 3 "$PY" "$PYCLIENT" cancel 5
expect 0 "$GF" --help
grep -q 'Exit status' "$TMP/out" && grep -q 'gf cancel JOB' "$TMP/out" || fail "help text"
expect 4 "$GF" --timeout 0.5 ask code hang

# 7. Status.
expect 0 "$GF" status --json
[ "$(json 'j["server"], j["protocol"], j["contexts"], j["model"]["n_layer"]')" = "('fake 0.1', '1.0', 5, 4)" ] ||
	fail "status --json: $(cat "$TMP/out")"
expect 0 "$GF" status
grep -q '^jobs  *0 running, 0 queued, 2 at most' "$TMP/out" || fail "status: $(cat "$TMP/out")"
# A server before protocol 1.2 sends no compute mode or memory parts: the resident set
# alone, no compute line, and null in the JSON of both clients.
grep -q '^memory  *1.0 MiB resident$' "$TMP/out" && ! grep -q '^compute' "$TMP/out" ||
	fail "status of a 1.0 server: $(cat "$TMP/out")"
expect 0 "$GF" status --json
[ "$(json 'j["compute"], j["tier_budget_bytes"], j["weight_bytes"], j["model"]["compute"]')" = \
	"(None, None, None, None)" ] || fail "status --json of a 1.0 server: $(cat "$TMP/out")"
expect 0 "$PY" "$PYCLIENT" status
[ "$(json 'j["compute"], j["tier_budget_bytes"], j["contexts"]')" = "(None, None, 5)" ] ||
	fail "Python client's status of a 1.0 server: $(cat "$TMP/out")"

# 8. Ctrl-C: gf sends Cancel and exits 5 once the server acknowledges.
"$GF" ask code slow >"$TMP/out" 2>"$TMP/err" &
pid=$!
sleep 0.7
kill -INT $pid
wait $pid
rc=$?
[ $rc = 5 ] || fail "SIGINT during ask: exit $rc"
grep -q 'cancel generate' "$LOG/events.log" || fail "server saw no Cancel of the generation"
[ -s "$TMP/out" ] || fail "no tokens before the cancel"
head -c 500000 "$TMP/book.txt" >"$TMP/slow.txt"
"$GF" ingest --name slow1 "$TMP/slow.txt" >"$TMP/out" 2>"$TMP/err" &
pid=$!
sleep 0.5
kill -INT $pid
wait $pid
rc=$?
[ $rc = 5 ] || fail "SIGINT during ingest: exit $rc ($(cat "$TMP/err"))"
grep -q 'cancel ingest slow1' "$LOG/events.log" || fail "server saw no Cancel of the ingest"

# 9. Resume: the server drops the connection mid-ingest (checkpoint at a multiple of 7000
#    bytes, inside some file); --resume sends the rest from there; the result is the same
#    stream as an uninterrupted ingest. Files of various sizes so the cut lands mid-file.
R=$TMP/big
mkdir -p "$R/a" "$R/b"
for n in 1 2 3 4 5 6 7 8 9; do head -c $((n * 9001)) "$TMP/book.txt" >"$R/a/f$n.txt"; done
cp "$TMP/book.txt" "$R/b/book.txt"
expect 0 "$GF" ingest --name whole "$R"
# stderr is no terminal here: no bar drawn over itself, and lines at most every 5 s (none in
# an ingest this short); GOLDFINCH_PROGRESS_SECONDS=0 prints one line per progress message.
! grep -q "$(printf '\r')" "$TMP/err" && ! grep -q '^gf: ingest' "$TMP/err" ||
	fail "progress of a short ingest off a terminal: $(cat "$TMP/err")"
expect 0 env GOLDFINCH_PROGRESS_SECONDS=0 "$GF" ingest --name progress1 "$R"
grep -q '^gf: ingest [0-9]*%: [0-9]* tokens, 1000 tokens/s, ETA ' "$TMP/err" ||
	fail "progress lines off a terminal: $(cat "$TMP/err")"
expect 0 env GOLDFINCH_PROGRESS_SECONDS=off "$GF" ingest --name progress2 "$R"
! grep -q '^gf: ingest' "$TMP/err" || fail "GOLDFINCH_PROGRESS_SECONDS=off: $(cat "$TMP/err")"
expect 4 "$GF" ingest --name crash1 "$R"
grep -q 'checkpoint crash1' "$LOG/events.log" || fail "no checkpoint"
expect 0 "$GF" --json ingest --name crash1 --resume "$R"
cmp -s "$LOG/whole.rendered" "$LOG/crash1.rendered" || fail "gf resume: stream differs"
[ "$(json 'j["reused"]')" = True ] || fail "resumed ingest not identical to the whole one"
expect 4 "$PY" "$PYCLIENT" ingest --name crash2 "$R"
expect 0 "$PY" "$PYCLIENT" ingest --name crash2 --resume "$R"
cmp -s "$LOG/whole.rendered" "$LOG/crash2.rendered" || fail "Python resume: stream differs"
expect 3 "$GF" ingest --name nothing-to-resume --resume "$R"

# 10. Drop.
expect 0 "$GF" drop code
[ "$(cat "$TMP/out")" = "dropped #1" ] || fail "drop output: $(cat "$TMP/out")"
expect 3 "$GF" ask code q
expect 3 "$GF" drop code
expect 0 "$PY" "$PYCLIENT" drop code-py
expect 3 "$PY" "$PYCLIENT" drop code-py

if [ $fails -ne 0 ]; then
	echo "client_cli: $fails failure(s)"
	exit 1
fi
echo "client_cli: all passed"
