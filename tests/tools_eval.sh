#!/bin/sh
# The real CLI tools end to end on one reference case: gf-convert (from .pth, and from
# .safetensors where the case has one), gf-eval full forward and --prefill mode, the cache
# dump, and the one-line errors for bad input.
#   tools_eval.sh BUILD_DIR CASE_DIR
set -eu
build=$1
case_dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
convert=$build/tools/gf-convert
eval_=$build/tools/gf-eval
cmp=$build/tests/f32_compare
cfg=$case_dir/config.json
T=$(python3 -c "import json;print(json.load(open('$cfg'))['T'])")
P=$(python3 -c "import json;print(json.load(open('$cfg'))['P'])")
V=$(python3 -c "import json;print(json.load(open('$cfg'))['vocab_size'])")
CK=$(python3 -c "import json;print(json.load(open('$cfg'))['ckv_dim'])")

check_case() { # $1 = checkpoint file
	"$convert" "$case_dir/$1" "$tmp/m.gguf" 2>"$tmp/convert.err"
	"$eval_" --model "$tmp/m.gguf" --tokens "$case_dir/tokens.i32" --logits "$tmp/full.f32"
	"$cmp" "$tmp/full.f32" "$case_dir/logits.f32"
	# --compute f32 said outright: the exact mode, whatever GOLDFINCH_COMPUTE says.
	"$eval_" --model "$tmp/m.gguf" --tokens "$case_dir/tokens.i32" --prefill "$P" \
		--logits "$tmp/pre.f32" --dump-cache "$tmp/c.f32" --compute f32
	# Row 0 is position P-1 (the prefill's last); rows 1.. are the decoded positions P..T-1.
	"$cmp" "$tmp/pre.f32" "$case_dir/logits.f32" --count "$V" --b-offset $(( (P - 1) * V ))
	"$cmp" "$tmp/pre.f32" "$case_dir/decode_logits.f32" --a-offset "$V"
	"$cmp" "$tmp/c.f32" "$case_dir/ckv.f32" --count $(( T * CK ))
}

check_case model.pth
[ -f "$case_dir/model.safetensors" ] && check_case model.safetensors

# Bad input: each a non-zero exit and one line on stderr.
expect_error() { # $1 = what, rest = command
	what=$1
	shift
	if "$@" >/dev/null 2>"$tmp/err"; then
		echo "FAIL: $what: exit 0"
		exit 1
	fi
	lines=$(wc -l <"$tmp/err")
	if [ "$lines" -ne 1 ]; then
		echo "FAIL: $what: $lines lines on stderr:"
		cat "$tmp/err"
		exit 1
	fi
	echo "ok: $what: $(cat "$tmp/err")"
}
python3 -c "import struct,sys;sys.stdout.buffer.write(struct.pack('<3i',1,2,$V))" >"$tmp/bad.i32"
: >"$tmp/empty.i32"
head -c 1000 "$tmp/m.gguf" >"$tmp/trunc.gguf"
head -c 5000 "$case_dir/model.pth" >"$tmp/trunc.pth"
expect_error "token id = vocab" "$eval_" --model "$tmp/m.gguf" --tokens "$tmp/bad.i32" --logits "$tmp/x"
expect_error "empty input" "$eval_" --model "$tmp/m.gguf" --tokens "$tmp/empty.i32" --logits "$tmp/x"
expect_error "truncated gguf" "$eval_" --model "$tmp/trunc.gguf" --tokens "$case_dir/tokens.i32" --logits "$tmp/x"
expect_error "truncated pth" "$convert" "$tmp/trunc.pth" "$tmp/y.gguf"
expect_error "unknown compute mode" "$eval_" --model "$tmp/m.gguf" --tokens "$case_dir/tokens.i32" --logits "$tmp/x" --compute f8
expect_error "prefill beyond input" "$eval_" --model "$tmp/m.gguf" --tokens "$case_dir/tokens.i32" --prefill $((T + 1)) --logits "$tmp/x"
echo PASS
