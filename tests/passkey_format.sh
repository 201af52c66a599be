#!/bin/sh
# gf-passkey builds the very haystack the model was trained on (tools/train/passkey.py), at
# several lengths and seeds; and its bad input gives one line and a non-zero exit.
# And gf-convert --byte-vocab embeds the byte vocabulary the model was trained with.
#   passkey_format.sh GF_PASSKEY GF_CONVERT GF_TOKENIZE SOURCE_DIR
set -eu
passkey=$1
convert=$2
tokenize=$3
src=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for n in 1000 4096 100000; do
	for seed in 1 2 3 77; do
		"$passkey" --print-haystack --tokens $n --seed $seed >"$tmp/c.txt" 2>"$tmp/p"
		read -r _ depth _ key <"$tmp/p"
		python3 "$src/tools/train/passkey.py" $n "$depth" "$key" >"$tmp/py.txt"
		cmp "$tmp/c.txt" "$tmp/py.txt" || { echo "FAIL: haystack N=$n seed=$seed differs"; exit 1; }
		[ "$(wc -c <"$tmp/c.txt")" -eq $n ] || { echo "FAIL: haystack N=$n has the wrong size"; exit 1; }
		# --print-context: the same less the 39-byte question
		"$passkey" --print-context --tokens $n --seed $seed >"$tmp/ctx.txt" 2>/dev/null
		head -c $((n - 39)) "$tmp/c.txt" | cmp -s - "$tmp/ctx.txt" ||
			{ echo "FAIL: --print-context N=$n seed=$seed is not the haystack's context"; exit 1; }
	done
done

# The byte vocabulary: byte b is id b+1, the literal <|endoftext|> id 0, and every byte
# decodes back to itself.
"$convert" --random --layers 3 --embd 64 --vocab 257 --byte-vocab --seed 5 "$tmp/bytes.gguf" 2>/dev/null
ids=$(printf 'ab\n<|endoftext|>\377' | "$tokenize" --model "$tmp/bytes.gguf")
[ "$ids" = "98 99 11 0 256" ] || { echo "FAIL: byte vocabulary encodes as '$ids'"; exit 1; }
seq 1 256 | "$tokenize" --model "$tmp/bytes.gguf" --decode >"$tmp/all.bin"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)))' | cmp - "$tmp/all.bin" ||
	{ echo "FAIL: byte vocabulary does not decode ids 1..256 to the bytes 0..255"; exit 1; }

expect_error() { # $1 = exit code wanted, $2 = what, rest = command
	want=$1
	what=$2
	shift 2
	set +e
	"$@" >/dev/null 2>"$tmp/err"
	got=$?
	set -e
	if [ $got -ne "$want" ]; then
		echo "FAIL: $what: exit $got, wanted $want"
		exit 1
	fi
	if [ "$(wc -l <"$tmp/err")" -ne 1 ] || ! grep -q '^gf-passkey: ' "$tmp/err"; then
		echo "FAIL: $what: stderr is not one 'gf-passkey: ...' line:"
		cat "$tmp/err"
		exit 1
	fi
}
"$convert" --random --layers 3 --embd 64 --vocab 300 --seed 5 "$tmp/novocab.gguf" 2>/dev/null
expect_error 1 "model without a byte vocabulary" "$passkey" --model "$tmp/novocab.gguf" --trials 1 --tokens 2000 --cache-dir "$tmp/c1"
expect_error 1 "missing model" "$passkey" --model "$tmp/none.gguf" --trials 1 --cache-dir "$tmp/c2"
expect_error 2 "no model" "$passkey" --trials 1
expect_error 2 "bad --tokens" "$passkey" --model x --tokens 12x
expect_error 2 "tokens below the minimum" "$passkey" --print-haystack --tokens 999
expect_error 2 "min-correct over trials" "$passkey" --model x --trials 3 --min-correct 4
expect_error 2 "unknown option" "$passkey" --model x --frobnicate 1
if "$convert" --random --layers 3 --embd 64 --vocab 257 --byte-vocab --vocab-file x "$tmp/x.gguf" 2>"$tmp/err" ||
	! grep -q 'exclude each other' "$tmp/err"; then
	echo "FAIL: --byte-vocab with --vocab-file was not refused"
	exit 1
fi
echo "passkey_format: ok"
