#!/bin/sh
# gf-convert end to end on the real checkpoints: conversions, --random, and damaged inputs.
# usage: checkpoint_cli.sh GF_CONVERT TESTDATA      exit 0 pass, 1 fail, 77 skip
set -u
conv=$1
td=$2
[ -r "$td/goldfinch/a1/model.pth" ] || { echo "skip: no test data at $td"; exit 77; }
tmp=$(mktemp -d /tmp/gf_cli_XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# ok NAME SUMMARY_PATTERN ARGS...: exit 0, the last stderr line is the summary.
ok() {
	name=$1 pat=$2
	shift 2
	if ! "$conv" "$@" 2>"$tmp/err"; then
		fail "$name: exit $? ($(cat "$tmp/err"))"
		return
	fi
	tail -n 1 "$tmp/err" | grep -q -- "$pat" || fail "$name: summary '$(cat "$tmp/err")' lacks '$pat'"
}

# bad NAME OUT ARGS...: exit 1, exactly one stderr line "gf-convert: ...", no OUT left.
bad() {
	name=$1 out=$2
	shift 2
	"$conv" "$@" >/dev/null 2>"$tmp/err"
	rc=$?
	[ $rc -eq 1 ] || fail "$name: exit $rc, expected 1"
	[ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "$name: stderr is not one line: $(cat "$tmp/err")"
	grep -q '^gf-convert: ..' "$tmp/err" || fail "$name: stderr '$(cat "$tmp/err")'"
	[ ! -e "$out" ] && [ ! -e "$out.tmp" ] || fail "$name: left $out behind"
}

same() { cmp -s "$1" "$2" || fail "$3: $1 and $2 differ"; }
differ() { cmp -s "$1" "$2" && fail "$3: $1 and $2 are identical"; }

# --help documents every option.
"$conv" --help >"$tmp/help" 2>&1 || fail "--help exit $?"
for o in --vocab --rope-base --dtype --name --random --layers --embd --ratio --seed \
	--vocab-file --threads keep f16 bf16; do
	grep -q -- "$o" "$tmp/help" || fail "--help does not mention $o"
done

# Official checkpoints.
ok a1 "layers 6, C 128, G 4, V 512, 188 tensors, params 1686784, bytes 6747136 (f32)" \
	"$td/goldfinch/a1/model.pth" "$tmp/a1.gguf"
ok a2 "layers 12, C 64, G 8, V 1024, 368 tensors" "$td/goldfinch/a2/model.pth" "$tmp/a2.gguf"
ok a3 "bytes 3373568 (bf16)" "$td/goldfinch/a3/model.pth" "$tmp/a3.gguf"
ok a3-safetensors "(bf16)" "$td/goldfinch/a3/model.safetensors" "$tmp/a3s.gguf"
same "$tmp/a3.gguf" "$tmp/a3s.gguf" ".pth and .safetensors"
# GGUF in, same GGUF out (name and all metadata kept).
ok a1-regguf "(f32)" "$tmp/a1.gguf" "$tmp/a1b.gguf"
same "$tmp/a1.gguf" "$tmp/a1b.gguf" "gguf -> gguf"
# bf16 -> f32 -> bf16 is exact; f16 is a different file.
ok a3-f32 "bytes 6747136 (f32)" "$tmp/a3.gguf" "$tmp/a3f.gguf" --dtype f32
ok a3-bf16 "(bf16)" "$tmp/a3f.gguf" "$tmp/a3b.gguf" --dtype bf16
same "$tmp/a3.gguf" "$tmp/a3b.gguf" "bf16 -> f32 -> bf16"
ok a1-f16 "bytes 3373568 (f16)" "$td/goldfinch/a1/model.pth" "$tmp/a1h.gguf" --dtype f16
# Options reach the file.
ok a1-rope "(f32)" "$td/goldfinch/a1/model.pth" "$tmp/a1r.gguf" --rope-base 10000 --name a1
differ "$tmp/a1.gguf" "$tmp/a1r.gguf" "--rope-base"
grep -q 'model_id' "$tmp/err" || fail "summary lacks the model id"
ok a1-vocab "vocab 65536 tokens" "$td/goldfinch/a1/model.pth" "$tmp/a1v.gguf" \
	--vocab "$td/tokenizer/rwkv_vocab_v20230424.txt"
grep -q 'rwkv-world' "$tmp/a1v.gguf" || fail "no tokenizer.ggml.model in a1v.gguf"
grep -q 'warning' "$tmp/err" || fail "no warning for a vocabulary larger than the model"
ok a1v-regguf "vocab 65536 tokens" "$tmp/a1v.gguf" "$tmp/a1v2.gguf"
same "$tmp/a1v.gguf" "$tmp/a1v2.gguf" "vocabulary kept through gguf -> gguf"

# Random models: odd shapes, deterministic, independent of the thread count.
ok rand1 "layers 5, C 192, G 3, V 300, 159 tensors" \
	--random --layers 5 --embd 192 --vocab 300 --ratio 4 "$tmp/r1.gguf"
ok rand1-again "(f32)" --random --layers 5 --embd 192 --vocab 300 --ratio 4 --threads 1 \
	"$tmp/r1b.gguf"
same "$tmp/r1.gguf" "$tmp/r1b.gguf" "--random determinism"
ok rand1-seed "(f32)" --random --layers 5 --embd 192 --vocab 300 --ratio 4 --seed 9 \
	"$tmp/r1c.gguf"
differ "$tmp/r1.gguf" "$tmp/r1c.gguf" "--seed"
ok rand1-regguf "layers 5, C 192, G 3" "$tmp/r1.gguf" "$tmp/r1d.gguf"
same "$tmp/r1.gguf" "$tmp/r1d.gguf" "random gguf -> gguf"
ok rand2 "layers 3, C 64, G 1, V 100, 101 tensors, params 246400, bytes 492800 (bf16)" \
	--random --layers 3 --embd 64 --vocab 100 --ratio 2 --dtype bf16 "$tmp/r2.gguf"
ok rand3 "(f16)" --random --layers 4 --embd 32 --vocab 77 --dtype f16 --seed 3 \
	--vocab-file "$td/tokenizer/rwkv_vocab_v20230424.txt" --name tiny "$tmp/r3.gguf"
grep -q 'tiny' "$tmp/r3.gguf" || fail "--name not in the file"

# Damaged inputs: exit 1, one line, nothing written.
o="$tmp/out.gguf"
for n in 0 10 100 30000 1000000 6795842; do
	head -c $n "$td/goldfinch/a1/model.pth" >"$tmp/t.pth"
	bad "truncated pth $n" "$o" "$tmp/t.pth" "$o"
done
for n in 7 9 1000 20000 3390959; do
	head -c $n "$td/goldfinch/a3/model.safetensors" >"$tmp/t.safetensors"
	bad "truncated safetensors $n" "$o" "$tmp/t.safetensors" "$o"
done
for n in 3 24 5000 100000 3386431; do
	head -c $n "$tmp/a3.gguf" >"$tmp/t.gguf"
	bad "truncated gguf $n" "$o" "$tmp/t.gguf" "$o"
done
head -c 5000 /dev/urandom >"$tmp/garbage"
bad "garbage" "$o" "$tmp/garbage" "$o"
{ printf 'PK\003\004'; head -c 5000 /dev/urandom; } >"$tmp/garbage.pth"
bad "garbage zip" "$o" "$tmp/garbage.pth" "$o"
{ printf 'GGUF\003\000\000\000'; head -c 5000 /dev/urandom; } >"$tmp/garbage.gguf"
bad "garbage gguf" "$o" "$tmp/garbage.gguf" "$o"
printf '\020\000\000\000\000\000\000\000{"a":{"dtype":"F32"}}' >"$tmp/bad.safetensors"
bad "bad safetensors header" "$o" "$tmp/bad.safetensors" "$o"
# A valid tensor file that is not a whole GoldFinch model.
cp "$tmp/a3.gguf" "$tmp/part.gguf"
printf 'blocks.0.ln1.weighX' | dd of="$tmp/part.gguf" bs=1 conv=notrunc \
	seek=$(grep -abo 'blocks.0.ln1.weight' "$tmp/part.gguf" | head -n 1 | cut -d: -f1) 2>/dev/null
bad "not a goldfinch model" "$o" "$tmp/part.gguf" "$o"

# Bad command lines.
bad "missing input" "$o" "$tmp/nonexistent.pth" "$o"
bad "output dir missing" "$tmp/no/dir/x.gguf" "$td/goldfinch/a1/model.pth" "$tmp/no/dir/x.gguf"
bad "no args" "$o"
bad "one arg" "$o" "$td/goldfinch/a1/model.pth"
bad "unknown option" "$o" "$td/goldfinch/a1/model.pth" "$o" --frobnicate 1
bad "bad dtype" "$o" "$td/goldfinch/a1/model.pth" "$o" --dtype f64
bad "bad rope" "$o" "$td/goldfinch/a1/model.pth" "$o" --rope-base abc
bad "missing vocab file" "$o" "$td/goldfinch/a1/model.pth" "$o" --vocab "$tmp/none.txt"
bad "random embd" "$o" --random --layers 3 --embd 100 --vocab 10 "$o"
bad "random missing" "$o" --random --layers 3 --vocab 10 "$o"
bad "random keep" "$o" --random --layers 3 --embd 64 --vocab 10 --dtype keep "$o"
bad "random ratio" "$o" --random --layers 2 --embd 64 --vocab 10 --ratio 1 "$o"
bad "random layers" "$o" --random --layers x --embd 64 --vocab 10 "$o"
bad "random two outputs" "$o" --random --layers 3 --embd 64 --vocab 10 "$o" "$o.2"

if [ $fails -ne 0 ]; then
	echo "$fails failures" >&2
	exit 1
fi
echo ok
