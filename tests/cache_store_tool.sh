#!/bin/sh
# cache_store_tool: gf-cache ls, verify, rm, gc on a copy of the format fixture, with the
# exit codes they promise (0 ok, 1 error, 2 usage, 3 corruption, 4 no such context).
# usage: cache_store_tool.sh GF_CACHE FIXTURE_DIR TMP_BASE
set -u
G=$1
FIX=$2
mkdir -p "$3"
D=$(mktemp -d "$3/cs_tool.XXXXXX") || exit 1
trap 'rm -rf "$D"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() { # expect CODE CMD...: runs CMD, checks its exit code, keeps its output in $D/out
	code=$1; shift
	"$@" >"$D/out" 2>&1
	rc=$?
	[ "$rc" = "$code" ] || { cat "$D/out" >&2; fail "$* exited $rc, expected $code"; }
}
S=$D/store
mkdir "$S" && cp "$FIX"/* "$S"/ || fail "copy fixture"

expect 0 "$G" --dir "$S" ls
grep -q golden-f16 "$D/out" || fail "ls does not show the context"
grep -q "1 context(s)" "$D/out" || fail "ls summary"
ID=$(awk 'NR==2 {print $1}' "$D/out")
[ ${#ID} -eq 12 ] || fail "short id '$ID'"
expect 0 "$G" --dir "$S" verify
expect 0 "$G" --dir "$S" verify "$ID"
expect 0 "$G" --dir "$S" verify '#1'
expect 0 "$G" --dir "$S" verify golden-f16
expect 4 "$G" --dir "$S" verify ffffffff
expect 4 "$G" --dir "$S" verify no-such-name
expect 2 "$G" --dir "$S" verify abc
expect 2 "$G" --dir "$S"
expect 2 "$G" ls
expect 2 "$G" --dir "$S" frobnicate
expect 2 "$G" --dir "$S" rm
expect 4 "$G" --dir "$D/nothing-here" rm x
[ ! -e "$D/nothing-here" ] || fail "rm created a store"
[ "$(wc -l <"$D/out")" = 1 ] || fail "error is not one line"

# a flipped byte in the page file: verify says so and exits 3
P=$S/c0000000000000001.pages
cp "$P" "$D/pages.bak"
printf '\377' | dd of="$P" bs=1 seek=5000 conv=notrunc 2>/dev/null
expect 3 "$G" --dir "$S" verify
grep -q "CORRUPT $ID" "$D/out" || fail "verify output: $(cat "$D/out")"
grep -q "page 1 (record at 4096)" "$D/out" || fail "verify does not name the page: $(cat "$D/out")"
cp "$D/pages.bak" "$P"
expect 0 "$G" --dir "$S" verify

# gc removes what a crash leaves, and nothing else
echo junk >"$S/c00000000000000ff.pages"
echo junk >"$S/MANIFEST.tmp"
echo mine >"$S/notes.txt"
expect 0 "$G" --dir "$S" gc
[ ! -e "$S/c00000000000000ff.pages" ] && [ ! -e "$S/MANIFEST.tmp" ] || fail "gc left orphans"
[ -e "$S/notes.txt" ] || fail "gc removed a file not its own"
grep -q "2 file(s) removed" "$D/out" || fail "gc output: $(cat "$D/out")"
expect 0 "$G" --dir "$S" verify

# a store held by another process: rm refuses (1) but ls still works
if command -v flock >/dev/null 2>&1; then
	flock "$S/LOCK" sleep 3 &
	sleep 0.5
	expect 1 "$G" --dir "$S" rm golden-f16
	grep -q "in use" "$D/out" || fail "busy message: $(cat "$D/out")"
	expect 0 "$G" --dir "$S" ls
	wait
fi

expect 0 "$G" --dir "$S" gc --budget 1G
expect 2 "$G" --dir "$S" gc --budget lots
expect 0 "$G" --dir "$S" rm "$ID"
expect 0 "$G" --dir "$S" ls
grep -q "0 context(s)" "$D/out" || fail "context not removed"
expect 4 "$G" --dir "$S" rm "$ID"
[ -z "$(ls "$S" | grep '^c')" ] || fail "files of the removed context left: $(ls "$S")"
echo "gf-cache: ok"
