#!/bin/sh
# cluster_server_file — goldfinchd --server-file and gf --server-file, without SLURM.
#
# The daemon (relative paths, port 0 twice, a metrics port 0, a token) writes a file that
# names what it listens on: this node's name for the wildcard address, the ports the
# kernel picked (not the metrics one), absolute paths; gf finds the daemon through it, by
# flag or $GOLDFINCH_SERVER_FILE, in the documented precedence, falling through addresses
# that do not answer; missing, stale, malformed and newer-format files fail with exit 4
# and a message naming the file; the file goes at a clean stop, but not when another
# daemon has replaced it, and stays (stale) after SIGKILL.
#
# usage: cluster_server_file.sh GOLDFINCHD GF GF_CONVERT VOCAB
set -u
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
DAEMON=$(abs "$1")
GF=$(abs "$2")
CONVERT=$(abs "$3")
VOCAB=$(abs "$4")
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gf_cluster_sf.XXXXXX") || exit 1
D_PID=
cleanup() {
	[ -n "$D_PID" ] && kill -KILL "$D_PID" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
fails=0
fail() {
	echo "FAIL: $*"
	fails=$((fails + 1))
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
# Starts goldfinchd in $TMP with the given flags (relative paths are relative to $TMP) and
# waits for its server file sf.
start() {
	(cd "$TMP" && exec "$DAEMON" --model model.gguf --cache-dir cache --threads 1 \
		--log-file daemon.log "$@") &
	D_PID=$!
	i=0
	while [ ! -f "$TMP/sf" ] && kill -0 $D_PID 2>/dev/null && [ $i -lt 200 ]; do
		sleep 0.05
		i=$((i + 1))
	done
	[ -f "$TMP/sf" ] || { echo "FAIL: no server file; the log:"; tail -5 "$TMP/daemon.log"; exit 1; }
}
stop() { # exit status wanted
	kill -TERM $D_PID
	wait $D_PID
	rc=$?
	[ $rc = "$1" ] || fail "goldfinchd exited $rc, want $1: $(tail -2 "$TMP/daemon.log")"
	D_PID=
}

"$CONVERT" --random --layers 2 --embd 64 --vocab 65536 --vocab-file "$VOCAB" --threads 1 \
	"$TMP/model.gguf" >"$TMP/out" 2>&1 || { echo "FAIL: gf-convert: $(cat "$TMP/out")"; exit 1; }
printf 'secret-%s\n' "$$" >"$TMP/token"
printf 'wrong\n' >"$TMP/wrong"
HOST=$(hostname)

# 1. What the file says.
unset SLURM_JOB_ID GOLDFINCH_SERVER GOLDFINCH_SERVER_FILE GOLDFINCH_TOKEN_FILE
start --listen 0.0.0.0:0 --listen 127.0.0.1:0 --listen unix:sock --metrics 127.0.0.1:0 \
	--auth-token-file token --server-file sf
P1=$(sed -n 's/.*listening on tcp 0\.0\.0\.0:\([0-9]*\).*/\1/p' "$TMP/daemon.log")
P2=$(sed -n 's/.*listening on tcp 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/daemon.log")
PM=$(sed -n 's/.*metrics on http:\/\/127\.0\.0\.1:\([0-9]*\)\/metrics.*/\1/p' "$TMP/daemon.log")
printf 'format 1.0\naddress tcp:%s:%s\naddress tcp:127.0.0.1:%s\naddress unix:%s/sock\nauth-token-file %s/token\nhost %s\npid %s\n' \
	"$HOST" "$P1" "$P2" "$TMP" "$TMP" "$HOST" "$D_PID" >"$TMP/want"
grep -v '^#' "$TMP/sf" >"$TMP/got"
cmp -s "$TMP/got" "$TMP/want" || fail "server file:
$(cat "$TMP/got")
want:
$(cat "$TMP/want")"
[ -n "$PM" ] && [ "$PM" != "$P1" ] && [ "$PM" != "$P2" ] || fail "metrics port $PM, listeners $P1 $P2"
for f in "$TMP"/sf?*; do
	[ -e "$f" ] && fail "a temporary file beside the server file: $f"
done
grep -q "server file sf written" "$TMP/daemon.log" || fail "the log does not name the server file"

# 2. gf through it: flag, environment, precedence, the token it names.
expect 0 "$GF" --server-file "$TMP/sf" -v status
grep -q "^gf: tcp:" "$TMP/err" || fail "gf -v does not say which address: $(head -1 "$TMP/err")"
expect 0 env GOLDFINCH_SERVER_FILE="$TMP/sf" "$GF" contexts
expect 0 env GOLDFINCH_SERVER=unix:/nonexistent "$GF" --server-file "$TMP/sf" status
expect 4 env GOLDFINCH_SERVER=unix:/nonexistent GOLDFINCH_SERVER_FILE="$TMP/sf" "$GF" status
expect 0 env GOLDFINCH_SERVER_FILE="$TMP/sf" "$GF" --server "unix:$TMP/sock" --auth-token-file "$TMP/token" status
expect 6 "$GF" --server-file "$TMP/sf" --auth-token-file "$TMP/wrong" status
expect 0 env GOLDFINCH_TOKEN_FILE="$TMP/wrong" "$GF" --server-file "$TMP/sf" status
expect 2 "$GF" --server-file "$TMP/sf" --server "unix:$TMP/sock" status
expect 2 "$GF" status --server-file
# Addresses that do not answer are skipped; the file's token goes with each.
printf '# hand-made\nformat 1.7\nfuture-key some value\naddress unix:%s/none\naddress tcp:127.0.0.1:%s\nauth-token-file %s/token\n' \
	"$TMP" "$P2" "$TMP" >"$TMP/sf2"
expect 0 "$GF" --server-file "$TMP/sf2" -v status
grep -q "^gf: tcp:127.0.0.1:$P2:" "$TMP/err" || fail "fallback to the second address: $(head -1 "$TMP/err")"

# 3. Files that cannot be used: exit 4, a message naming the file and why.
check_bad() { # FILE-CONTENT WORDS
	printf '%b' "$1" >"$TMP/bad"
	expect 4 "$GF" --server-file "$TMP/bad" status
	grep -q "server file $TMP/bad.*$2" "$TMP/err" || fail "bad server file ($2): $(cat "$TMP/err")"
}
check_bad 'address unix:/x\n' 'no "format" line'
check_bad 'format 2.0\naddress unix:/x\n' 'format 2.0, this client reads 1.x'
check_bad 'format 1.0\n' 'no address'
check_bad 'format 1.0\naddress nocolon\n' 'line 2: server address "nocolon"'
check_bad 'format 1.0\naddress\n' 'line 2: "address" without a value'
check_bad 'format 1.0\naddress unix:/nonexistent/a\naddress unix:/nonexistent/b\n' 'no address answered, the last: connecting to unix:/nonexistent/b'
expect 4 "$GF" --server-file "$TMP/none" status
grep -q "server file $TMP/none: No such file" "$TMP/err" || fail "missing file: $(cat "$TMP/err")"

# 4. A clean stop removes it; one replaced by another daemon's stays.
stop 0
[ ! -e "$TMP/sf" ] || fail "the server file outlived a clean stop"
start --listen unix:sock --server-file sf
cp "$TMP/sf" "$TMP/sf.other" && mv "$TMP/sf.other" "$TMP/sf"
stop 0
[ -e "$TMP/sf" ] || fail "the daemon removed a server file it did not write"
rm -f "$TMP/sf"

# 5. SIGKILL leaves it: stale, and gf says so. The SLURM job is named when there is one.
SLURM_JOB_ID=4242 start --listen unix:sock --server-file=sf
grep -qx 'slurm-job 4242' "$TMP/sf" || fail "no slurm-job line: $(cat "$TMP/sf")"
kill -KILL $D_PID
wait $D_PID 2>/dev/null
D_PID=
expect 4 "$GF" --server-file "$TMP/sf" status
grep -q "server file $TMP/sf (pid [0-9]* on .*, SLURM job 4242): connecting to unix:$TMP/sock: .*stale if that daemon has stopped" "$TMP/err" ||
	fail "stale file message: $(cat "$TMP/err")"
rm -f "$TMP/sf"

# 6. The daemon's side of the flag: bad uses, and a file it cannot write (exit 1, no file).
expect 2 "$DAEMON" --model "$TMP/model.gguf" --cache-dir "$TMP/cache" --server-file
grep -q -- "--server-file (missing): needs a file name" "$TMP/err" || fail "--server-file without a value: $(cat "$TMP/err")"
expect 0 "$DAEMON" --model "$TMP/model.gguf" --cache-dir "$TMP/cache" --server-file "$TMP/x" --print-config
grep -qx "server-file = $TMP/x" "$TMP/out" || fail "--print-config: $(cat "$TMP/out")"
expect 1 "$DAEMON" --model "$TMP/model.gguf" --cache-dir "$TMP/cache" --listen "unix:$TMP/sock" \
	--server-file "$TMP/nodir/sf"
grep -q "cannot start: --server-file $TMP/nodir/sf.tmp.[0-9]*: No such file or directory" "$TMP/err" ||
	fail "unwritable server file: $(cat "$TMP/err")"
[ ! -e "$TMP/sock" ] || fail "the socket outlived a failed start"

[ $fails = 0 ] && echo "cluster_server_file: all checks passed"
[ $fails = 0 ]
