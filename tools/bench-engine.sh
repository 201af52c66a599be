#!/bin/sh
# bench-engine.sh — makes the random models and runs every gf-engine-bench command (the
# figures of daemon/README.md and the top README). Each command ends with one JSON line; this
# script collects them in $OUT/engine-bench.jsonl.
#
#   tools/bench-engine.sh BUILD_DIR [OUT_DIR] [COMMAND...]
#
# COMMAND: memory size768 size2048 reuse decode (default: all). The models are made once in
# OUT_DIR (default /tmp/gf-engine-bench) and kept; the 24-layer 2048-wide one takes about
# 3 GB of disk and 9 GB of RAM while in use.
set -eu

build=${1:?usage: bench-engine.sh BUILD_DIR [OUT_DIR] [COMMAND...]}
out=${2:-/tmp/gf-engine-bench}
[ $# -ge 2 ] && shift 2 || shift $#
cmds=${*:-memory size768 size2048 reuse decode}

here=$(cd "$(dirname "$0")/.." && pwd)
vocab=$here/../shared/testdata/tokenizer/rwkv_vocab_v20230424.txt
conv=$build/tools/gf-convert
bench=$build/tools/gf-engine-bench
mkdir -p "$out"
jsonl=$out/engine-bench.jsonl

model() { # name layers embd [dtype]
	[ -f "$out/$1.gguf" ] && return 0
	"$conv" --random --layers "$2" --embd "$3" --vocab 65536 --dtype "${4:-f32}" \
		--vocab-file "$vocab" "$out/$1.gguf.tmp"
	mv "$out/$1.gguf.tmp" "$out/$1.gguf"
}

run() { # command args...
	printf '== gf-engine-bench'
	printf ' %s' "$@" | head -c 300
	echo
	"$bench" "$@" | tee "$out/last.log"
	last=$(tail -n 1 "$out/last.log")
	case $last in
	'{'*) echo "$last" >> "$jsonl" ;;
	*) echo "bench-engine.sh: gf-engine-bench $1 failed" >&2; exit 1 ;;
	esac
}

# Real-ish text for the size figures: the project's own sources, in a fixed order.
texts() {
	find "$here" -path "$here/build*" -prune -o \( -name '*.c' -o -name '*.h' -o -name '*.md' \) \
		-type f -print | LC_ALL=C sort | while read -r f; do printf -- '--text\n%s\n' "$f"; done
}

for c in $cmds; do
	case $c in
	memory)
		# Twice: with the store's default RAM page cache (256 MiB), which keeps the pages
		# the GOLD tail reads, and with a 4 MiB one, which leaves the ingest's own memory.
		model m6x256 6 256
		run memory-compare --model "$out/m6x256.gguf"
		run memory-compare --model "$out/m6x256.gguf" --ram-cache 4194304 ;;
	size768)
		model m12x768 12 768
		texts > "$out/texts.args"
		# shellcheck disable=SC2046
		(IFS='
'; run size --model "$out/m12x768.gguf" --tokens 20480 $(cat "$out/texts.args")) ;;
	size2048)
		model m24x2048 24 2048 bf16
		texts > "$out/texts.args"
		(IFS='
'; run size --model "$out/m24x2048.gguf" --tokens 12288 $(cat "$out/texts.args")) ;;
	reuse)
		# A bf16 file, as gf-convert recommends: re-ingesting against a question with the
		# tier off, the first question of a fresh process (its tier lacks the context) and
		# a later one.
		model m12x768b 12 768 bf16
		run reuse --model "$out/m12x768b.gguf" --tokens 100000 ;;
	decode)
		model m12x768 12 768
		run decode --model "$out/m12x768.gguf" --contexts 1000,10000,100000 ;;
	*)
		echo "bench-engine.sh: unknown command $c" >&2
		exit 2 ;;
	esac
done
echo "figures: $jsonl"
