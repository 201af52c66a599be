#!/bin/sh
# engine_cli — gf-run end to end on real files.
#   engine_cli.sh GF_RUN ENGINE_DUMP TEXT_MODEL.gguf TMP_DIR
# (ids.gguf beside TEXT_MODEL.gguf is a model without a vocabulary.)
#  - ingest of a nested directory: the stream is exactly the documented format, the one
#    goldfinchd makes of `gf ingest` (that stream written by hand and ingested from stdin
#    as plain text is the same context: reused); version-control folders and binary files
#    (a NUL byte, invalid UTF-8) are left out with a note, other dot-names are kept; a
#    single file is rendered under its base name, as gf sends it; ls shows the context;
#  - ask: greedy answers are repeatable and the same by name, #serial and key prefix;
#    seeded sampling is repeatable; --stop cuts the answer before the stop string;
#  - a second ingest of the same files reports the stored context as reused;
#  - errors: exit 1 (runtime), 2 (usage), 3 (no such context), one line on stderr each;
#  - --help names every option.
set -eu
run=$1
dump=$2
model=$3
tmp=$4
ids_model=$(dirname "$model")/ids.gguf
rm -rf "$tmp"
mkdir -p "$tmp/proj/src/util" "$tmp/proj/docs" "$tmp/proj/.git"
cd "$tmp"
printf '# Project\nA tiny codebase for gf-run.\n' >proj/README.md
printf 'int main(void)\n{\n\treturn helper(41);\n}\n' >proj/src/main.c
printf 'static inline int helper(int x) { return x + 1; }\n' >proj/src/util/helpers.h
printf 'Notes: the answer is 42.\n' >proj/docs/notes.txt
: >proj/empty.txt
printf 'secret\n' >proj/.git/config
printf 'PNG\000\001\002binary' >proj/logo.bin
printf 'root = true\n' >proj/.editorconfig
printf 'caf\351 latin-1\n' >proj/latin1.txt
store="$tmp/store"
R() { "$run" --model "$model" --cache-dir "$store" --chunk 32 --page-tokens 64 "$@"; }

fail() {
	echo "FAIL: $*"
	exit 1
}

# ---- ingest, and the stream format ----
R ingest --name proj proj >ingest1.out 2>ingest1.err
cat ingest1.out ingest1.err
grep -q '^ingested #1 proj: ' ingest1.out || fail "ingest summary"
for skipped in "proj/.git: version-control folder" "proj/logo.bin: binary file" \
	"proj/latin1.txt: binary file"; do
	grep -q "^gf-run: skipping $skipped\$" ingest1.err || fail "no note: skipping $skipped"
done
tokens=$(sed -n 's/^ingested #1 proj: \([0-9]*\) tokens.*/\1/p' ingest1.out)
{
	for f in .editorconfig README.md docs/notes.txt empty.txt src/main.c src/util/helpers.h; do
		printf '### File: %s\n' "$f"
		cat "proj/$f"
		printf '\n'
	done
} >expected.txt
R ingest - <expected.txt >format.out
cat format.out
grep -q '^reused #1 proj: ' format.out || fail "the documented stream format is not what ingest reads"
echo "ok: the stream is the documented format ($tokens tokens)"
# A single file: under its base name, as gf sends it (stdin is the way to take it as is).
R ingest --name notes proj/docs/notes.txt >single.out
{ printf '### File: notes.txt\n'; cat proj/docs/notes.txt; printf '\n'; } | R ingest - >single2.out
grep -q '^reused #[0-9]* notes: ' single2.out || fail "a single file is not rendered under its base name: $(cat single.out single2.out)"
echo "ok: a single file is rendered as gf sends it"

R ls >ls.out
cat ls.out
awk -v t="$tokens" '$1 == 1 && $2 == "proj" && $3 == t && $7 == "sealed" { ok = 1 } END { exit !ok }' ls.out ||
	fail "ls does not show the context"
key=$(awk '$2 == "proj" { print $6 }' ls.out)

# ---- ask ----
q='### Question: what does main return?'
R ask proj "$q" --temperature 0 --max-tokens 24 >a1.out 2>a1.err
R ask proj "$q" --temperature 0 --max-tokens 24 >a2.out 2>/dev/null
R ask '#1' "$q" --temperature 0 --max-tokens 24 >a3.out 2>/dev/null
R ask "$key" "$q" --temperature 0 --max-tokens 24 >a4.out 2>/dev/null
cat a1.err
[ -s a1.out ] || fail "empty answer"
cmp a1.out a2.out || fail "greedy answers differ"
cmp a1.out a3.out || fail "answer by #serial differs"
cmp a1.out a4.out || fail "answer by key prefix differs"
grep -q 'first token' a1.err || fail "no timings on stderr"
echo "ok: greedy answer repeatable ($(wc -c <a1.out) bytes)"
R ask proj "$q" --temperature 0.8 --top-k 40 --top-p 0.9 --min-p 0.01 --presence-penalty 0.5 \
	--frequency-penalty 0.2 --seed 7 --max-tokens 24 >s1.out 2>/dev/null
R ask proj "$q" --temperature 0.8 --top-k 40 --top-p 0.9 --min-p 0.01 --presence-penalty 0.5 \
	--frequency-penalty 0.2 --seed 7 --max-tokens 24 >s2.out 2>/dev/null
cmp s1.out s2.out || fail "seeded sampling differs"
echo "ok: seeded sampling repeatable"
R ask proj "$q" --max-tokens 0 >m0.out 2>/dev/null
[ ! -s m0.out ] || fail "--max-tokens 0 printed an answer"
python3 - "$run" "$model" "$store" "$q" <<'EOF'
import subprocess, sys
run, model, store, q = sys.argv[1:5]
base = [run, '--model', model, '--cache-dir', store, '--chunk', '32', 'ask', 'proj', q,
        '--temperature', '0', '--max-tokens', '24']
full = subprocess.run(base, capture_output=True, check=True).stdout
# A stop string from the middle of the answer (no NUL: it must pass as an argument).
for i in range(4, max(4, len(full) - 3)):
    stop = full[i:i + 3]
    if b'\0' not in stop:
        break
else:
    print('FAIL: no usable stop string in', full)
    sys.exit(1)
want = full[:full.find(stop)]
got = subprocess.run(base + ['--stop', 'never-appears', '--stop', stop], capture_output=True,
                     check=True).stdout
if got != want:
    print('FAIL: --stop %r: got %r, want %r' % (stop, got, want))
    sys.exit(1)
print('ok: --stop %r cuts the answer to %d of %d bytes' % (stop, len(got), len(full)))
EOF

# ---- the same files again ----
R ingest proj >ingest2.out
cat ingest2.out
grep -q '^reused #1 proj: ' ingest2.out || fail "second ingest not reported as reused"

# ---- errors: exit code and one line on stderr ----
expect() { # $1 = exit code, $2 = what, rest = command
	want=$1
	what=$2
	shift 2
	rc=0
	"$@" >/dev/null 2>err.txt || rc=$?
	[ "$rc" -eq "$want" ] || fail "$what: exit $rc, want $want: $(cat err.txt)"
	[ "$(wc -l <err.txt)" -eq 1 ] || fail "$what: $(wc -l <err.txt) lines on stderr: $(cat err.txt)"
	echo "ok: $what: exit $rc: $(cat err.txt)"
}
expect 1 "missing file" R ingest proj/nosuch.txt
expect 1 "empty input" R ingest - </dev/null
expect 1 "nothing to ingest" R ingest proj/logo.bin
expect 2 "stdin twice" R ingest - -
expect 1 "name taken" R ingest --name proj proj/src
expect 1 "resume of a complete context" R ingest --resume --name proj proj
expect 1 "model without vocabulary" "$run" --model "$ids_model" --cache-dir "$tmp/store_ids" ingest proj
expect 1 "missing model" "$run" --model "$tmp/nosuch.gguf" --cache-dir "$tmp/store2" ingest proj
expect 1 "ls of a missing store" "$run" --cache-dir "$tmp/nosuch" ls
expect 3 "unknown context name" R ask nosuch "$q"
expect 3 "unknown serial" R ask '#99' "$q"
expect 3 "unknown key prefix" R ask ffffffffff "$q"
expect 3 "no store" "$run" --model "$model" --cache-dir "$tmp/nosuch" ask proj "$q"
expect 2 "bad flag" R ingest --bogus proj
expect 2 "bad value" R ask proj "$q" --temperature -1
expect 2 "bad dtype" R --c-dtype f8 ingest proj
expect 2 "missing value" R ask proj "$q" --max-tokens
expect 2 "missing question" R ask proj
expect 2 "ask option on ingest" R ingest --top-k 3 proj
expect 2 "no command" R
expect 2 "unknown command" R frobnicate
expect 2 "no cache dir" "$run" --model "$model" ingest proj
expect 2 "empty question" R ask proj ""

# ---- --help ----
"$run" --help >help.txt
for opt in --model --cache-dir --threads --chunk --page-tokens --c-dtype --checkpoint-tokens \
	--tier-mb --name --resume --max-tokens --temperature --top-k --top-p --min-p \
	--presence-penalty --frequency-penalty --seed --stop "### File: "; do
	grep -q -- "$opt" help.txt || fail "--help does not mention $opt"
done
echo "ok: --help names every option"
echo PASS
