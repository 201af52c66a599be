#!/bin/sh
# tools_tokenize — gf-tokenize end to end: encode case texts from stdin, --decode round
# trips, and the one-line errors with exit status 1.
#
# usage: tools_tokenize.sh GF_TOKENIZE VOCAB.txt CASES.jsonl [GF_CONVERT]
# With GF_CONVERT, --model is checked on a small random GGUF that embeds the vocabulary.
set -u
BIN=$1
VOCAB=$2
CASES=$3
CONVERT=${4:-}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gf_tokenize_test.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
fails=0

fail() {
	echo "FAIL: $*" >&2
	fails=$((fails + 1))
}

# The "ids" array of case NAME (encode or decode line, picked by field), one line.
case_ids() { # name field
	grep "\"name\": \"$1\"" "$CASES" | grep "\"$2\"" |
		sed 's/.*"ids": \[\([0-9, ]*\)\].*/\1/' | tr -d ','
}

# The hex field of case NAME.
case_hex() { # name field
	grep "\"name\": \"$1\"" "$CASES" | grep "\"$2\"" |
		sed "s/.*\"$2\": \"\\([0-9a-f]*\\)\".*/\\1/"
}

tohex() {
	od -An -v -tx1 | tr -d ' \n'
}

# 1. Encoding: texts given as raw bytes on stdin. The hex is turned back into bytes by
#    --decode of the single-byte tokens (id = byte + 1), so no other tool is needed.
for name in ascii_hello code_python_crlf_tabs emoji_zwj_flags_skin cjk_chinese endoftext_inline \
	control_chars spaces_run_200 mixed_20kb; do
	hex=$(case_hex "$name" utf8_hex)
	want=$(case_ids "$name" utf8_hex)
	[ -n "$hex" ] || { fail "$name: case not found"; continue; }
	echo "$hex" | sed 's/\(..\)/\1 /g' | tr ' ' '\n' | grep . |
		while read -r b; do echo $((0x$b + 1)); done >"$TMP/bytes.ids"
	"$BIN" --vocab "$VOCAB" --decode <"$TMP/bytes.ids" >"$TMP/text" ||
		{ fail "$name: decode of single-byte ids failed"; continue; }
	[ "$(tohex <"$TMP/text")" = "$hex" ] || { fail "$name: single-byte decode differs"; continue; }
	"$BIN" --vocab "$VOCAB" <"$TMP/text" >"$TMP/out" 2>"$TMP/err" ||
		{ fail "$name: encode exited $?: $(cat "$TMP/err")"; continue; }
	[ "$(cat "$TMP/out")" = "$want" ] || fail "$name: ids differ"
	# exactly one final newline, single spaces
	[ "$(tail -c 1 "$TMP/out" | tohex)" = "0a" ] || fail "$name: output does not end in a newline"
	[ "$(wc -l <"$TMP/out")" -eq 1 ] || fail "$name: output is not one line"
done

# 2. --decode of every decode case gives exactly bytes_hex (ids spread over lines and tabs).
for name in endoftext incomplete_lead_byte_e4 lone_continuation_byte_80 \
	split_multibyte_ni_as_single_bytes truncated_emoji_3_of_4_bytes longest_tokens \
	invalid_multibyte_tokens invalid_then_completed random_ids single_byte_tokens_0_to_255; do
	ids=$(case_ids "$name" bytes_hex)
	want=$(case_hex "$name" bytes_hex)
	printf '%s\n' "$ids" | tr ' ' '\n' | sed 's/^/\t/' >"$TMP/ids"
	"$BIN" --vocab "$VOCAB" --decode <"$TMP/ids" >"$TMP/bytes" 2>"$TMP/err" ||
		{ fail "$name: --decode exited $?: $(cat "$TMP/err")"; continue; }
	[ "$(tohex <"$TMP/bytes")" = "$want" ] || fail "$name: --decode bytes differ"
done

# 3. Round trip of the 20 kB case: ids -> bytes -> ids.
ids=$(case_ids mixed_20kb utf8_hex)
printf '%s\n' "$ids" | "$BIN" --vocab "$VOCAB" --decode | "$BIN" --vocab "$VOCAB" >"$TMP/rt"
[ "$(cat "$TMP/rt")" = "$ids" ] || fail "mixed_20kb: decode/encode round trip differs"

# 4. Empty input: an empty id list and a newline; empty --decode input: nothing.
[ "$("$BIN" --vocab "$VOCAB" </dev/null | tohex)" = "0a" ] || fail "empty input"
[ "$("$BIN" --vocab "$VOCAB" --decode </dev/null | wc -c)" -eq 0 ] || fail "empty --decode input"

# 5. Errors: exit status 1 and exactly one line on stderr.
expect_error() { # description, stdin text, args...
	what=$1
	input=$2
	shift 2
	printf '%s' "$input" | "$BIN" "$@" >/dev/null 2>"$TMP/err"
	rc=$?
	[ "$rc" -eq 1 ] || fail "$what: exit status $rc, want 1"
	[ "$(wc -l <"$TMP/err")" -eq 1 ] || fail "$what: stderr is not one line: $(cat "$TMP/err")"
}
expect_error "id >= vocab" "33155 65536" --vocab "$VOCAB" --decode
grep -q 65536 "$TMP/err" || fail "id >= vocab: message does not name the id"
expect_error "id not a number" "12 abc 14" --vocab "$VOCAB" --decode
grep -q abc "$TMP/err" || fail "id not a number: message does not name it"
expect_error "negative id" "-3" --vocab "$VOCAB" --decode
expect_error "huge id" "99999999999999999999999" --vocab "$VOCAB" --decode
expect_error "missing vocab" "x" --vocab "$TMP/no-such-vocab.txt"
grep -q "no-such-vocab" "$TMP/err" || fail "missing vocab: message does not name the file"
expect_error "missing model" "x" --model "$TMP/no-such-model.gguf"
expect_error "no vocab option" "x"
expect_error "both options" "x" --vocab "$VOCAB" --model "$TMP/m.gguf"
expect_error "unknown option" "x" --frobnicate
expect_error "missing option value" "x" --vocab

# 6. --model: the vocabulary embedded in a GGUF tokenizes exactly as the file does.
if [ -n "$CONVERT" ]; then
	if "$CONVERT" --random --layers 3 --embd 64 --vocab 512 --vocab-file "$VOCAB" \
		"$TMP/m.gguf" >/dev/null 2>"$TMP/err"; then
		printf '%s\n' "$(case_ids mixed_20kb utf8_hex)" |
			"$BIN" --vocab "$VOCAB" --decode >"$TMP/text"
		"$BIN" --model "$TMP/m.gguf" <"$TMP/text" >"$TMP/model.ids" ||
			fail "--model: encode failed"
		[ "$(cat "$TMP/model.ids")" = "$(case_ids mixed_20kb utf8_hex)" ] ||
			fail "--model: ids differ from the case"
		"$BIN" --model "$TMP/m.gguf" --decode <"$TMP/model.ids" | cmp -s - "$TMP/text" ||
			fail "--model --decode: bytes differ"
		expect_error "--model id >= vocab" "65536" --model "$TMP/m.gguf" --decode
	else
		fail "gf-convert could not write a GGUF: $(cat "$TMP/err")"
	fi
	if "$CONVERT" --random --layers 3 --embd 64 --vocab 512 "$TMP/novocab.gguf" \
		>/dev/null 2>&1; then
		expect_error "--model without a vocabulary" "x" --model "$TMP/novocab.gguf"
		grep -q "vocabulary" "$TMP/err" || fail "--model without a vocabulary: message"
	fi
fi

"$BIN" --help >"$TMP/help" || fail "--help exit status"
for flag in --vocab --model --decode; do
	grep -q -- "$flag" "$TMP/help" || fail "--help does not document $flag"
done

if [ "$fails" -ne 0 ]; then
	echo "$fails check(s) failed" >&2
	exit 1
fi
echo "tools_tokenize: all checks passed"
exit 0
