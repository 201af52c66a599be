#!/bin/sh
# conventions_cli: every program prints the one project version for --version; goldfinchd
# takes each setting from its GOLDFINCH_* variable, the flag winning, and llama-server's
# spellings (-m, -t, --host, --port).
# usage: conventions_cli.sh VERSION GOLDFINCHD PROGRAM...
set -u
VERSION=$1
D=$2
shift 2
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
for p in "$D" "$@"; do
	out=$("$p" --version 2>&1)
	rc=$?
	name=$(basename "$p")
	[ $rc -eq 0 ] || fail "$name --version exited $rc"
	case "$out" in
	"$name $VERSION" | "$name $VERSION "*) ;;
	*) fail "$name --version printed '$out', not '$name $VERSION'" ;;
	esac
	[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || fail "$name --version: more than one line"
done

# Unset what the caller's shell may carry.
for v in $("$D" --help | awk '$1 ~ /^GOLDFINCH_/ {print $1}'); do unset "$v"; done
cfg() { "$D" --print-config "$@" 2>&1; }
has() { # has OUTPUT LINE
	printf '%s\n' "$1" | grep -qxF "$2"
}

# Each variable alone gives its setting.
out=$(GOLDFINCH_MODEL=/m.gguf GOLDFINCH_CACHE_DIR=/c GOLDFINCH_MAX_JOBS=5 GOLDFINCH_THREADS=3 \
	GOLDFINCH_TIER_MB=64 GOLDFINCH_DISK_BUDGET=2G GOLDFINCH_CHECKPOINT_TOKENS=8K \
	GOLDFINCH_C_DTYPE=bf16 GOLDFINCH_MAX_QUEUE=9 GOLDFINCH_MAX_FRAME=1M \
	GOLDFINCH_MAX_CONTEXT_TOKENS=1M GOLDFINCH_METRICS=127.0.0.1:9999 \
	GOLDFINCH_LOG_FILE=/tmp/x.log GOLDFINCH_AUTH_TOKEN_FILE=/t GOLDFINCH_COMPUTE=f32 \
	GOLDFINCH_HTTP=127.0.0.1:8088 GOLDFINCH_LISTEN=unix:/a.sock,127.0.0.1:1234 cfg)
for line in "model = /m.gguf" "cache-dir = /c" "max-jobs = 5" "threads = 3" "tier-mb = 64" \
	"disk-budget = 2147483648" "checkpoint-tokens = 8192" "c-dtype = bf16" "max-queue = 9" \
	"max-frame = 1048576" "max-context-tokens = 1048576" "metrics = 127.0.0.1:9999" \
	"log-file = /tmp/x.log" "auth-token-file = /t" "compute = f32" "listen = unix:/a.sock" \
	"listen = 127.0.0.1:1234" "http = 127.0.0.1:8088"; do
	has "$out" "$line" || fail "from the environment: no '$line' in: $out"
done

# The flag wins over its variable, every other variable still counts.
out=$(GOLDFINCH_MODEL=/env.gguf GOLDFINCH_CACHE_DIR=/c GOLDFINCH_MAX_JOBS=5 GOLDFINCH_THREADS=3 \
	GOLDFINCH_LISTEN=unix:/env.sock cfg --model /flag.gguf --max-jobs=7 -t 2 --listen unix:/flag.sock)
for line in "model = /flag.gguf" "cache-dir = /c" "max-jobs = 7" "threads = 2" "listen = unix:/flag.sock"; do
	has "$out" "$line" || fail "flags over the environment: no '$line' in: $out"
done
printf '%s\n' "$out" | grep -q env.sock && fail "--listen did not replace \$GOLDFINCH_LISTEN: $out"

# llama-server's spellings: -m, -t, --host and --port (each alone, and from the environment).
out=$(cfg -m /m.gguf --cache-dir /c -t 4 --host 0.0.0.0 --port 8080)
has "$out" "model = /m.gguf" && has "$out" "threads = 4" && has "$out" "listen = 0.0.0.0:8080" ||
	fail "-m -t --host --port: $out"
out=$(cfg -m /m.gguf --cache-dir /c --port 8081)
has "$out" "listen = 127.0.0.1:8081" || fail "--port alone: $out"
out=$(cfg -m /m.gguf --cache-dir /c --host ::1)
has "$out" "listen = [::1]:7433" || fail "--host alone (IPv6): $out"
out=$(GOLDFINCH_HOST=127.0.0.2 GOLDFINCH_PORT=9000 cfg -m /m.gguf --cache-dir /c --port 9001)
has "$out" "listen = 127.0.0.2:9001" || fail "--port over \$GOLDFINCH_PORT, \$GOLDFINCH_HOST kept: $out"
out=$(cfg -m /m.gguf --cache-dir /c)
has "$out" "listen = 127.0.0.1:7433" || fail "default listener: $out"

# A bad value from the environment names the variable: exit 2, one line.
out=$(GOLDFINCH_MAX_JOBS=0 "$D" -m /m --cache-dir /c --print-config 2>&1)
rc=$?
[ $rc -eq 2 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] &&
	printf '%s' "$out" | grep -q 'GOLDFINCH_MAX_JOBS' || fail "bad \$GOLDFINCH_MAX_JOBS: exit $rc: $out"
# ... unless its flag is given: then the variable is not read at all.
out=$(GOLDFINCH_MAX_JOBS=0 cfg -m /m --cache-dir /c --max-jobs 3)
has "$out" "max-jobs = 3" || fail "bad variable, good flag: $out"
out=$(GOLDFINCH_THREADS=x cfg -m /m --cache-dir /c -t 1)
has "$out" "threads = 1" || fail "bad \$GOLDFINCH_THREADS, -t 1: $out"
out=$(cfg -m /m --cache-dir /c --port 70000)
printf '%s' "$out" | grep -q -- '--port 70000' || fail "--port 70000: $out"

# --help documents every variable beside its flag.
help=$("$D" --help)
for f in model cache-dir listen host port auth-token-file max-frame max-jobs max-queue \
	max-context-tokens disk-budget threads checkpoint-tokens c-dtype tier-mb compute metrics \
	log-file plan-workload; do
	v=GOLDFINCH_$(echo "$f" | tr 'a-z-' 'A-Z_')
	printf '%s\n' "$help" | grep -q "^  $v  *--$f\$" || fail "--help does not map $v to --$f"
done
printf '%s\n' "$help" | grep -q "^  GOLDFINCH_WRITE_SERVER_FILE  *--server-file\$" ||
	fail "--help does not map GOLDFINCH_WRITE_SERVER_FILE"
[ $fails -eq 0 ] && echo PASS
exit $fails
