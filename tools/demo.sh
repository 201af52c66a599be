#!/bin/sh
# The main job on the embedded default: set up (packages, build), make the default model,
# start goldfinchd, ingest this project's own source tree with the gf client, ask a question
# about it, show the answer and the cache figures, and stop the daemon cleanly.
#
# The default model is a seeded random GoldFinch (8 layers, n_embd 256, the World vocabulary)
# until the project's trained model ships (issue 8): its answers are not meaningful yet, but
# everything on the path is real — tokenizer, Finch stage, pages on disk, GOLD attention.
# Override with GF_DEMO_MODEL=path/to/model.gguf.
set -eu
cd "$(dirname "$0")/.."
tools/setup.sh build
demo=build/demo
mkdir -p "$demo"
vocab=../shared/testdata/tokenizer/rwkv_vocab_v20230424.txt
model=${GF_DEMO_MODEL:-$demo/goldfinch-default.gguf}
if [ ! -f "$model" ]; then
	[ -f "$vocab" ] || { echo "demo: $vocab not found (a clone has ../shared beside it)" >&2; exit 1; }
	build/tools/gf-convert --random --layers 8 --embd 256 --vocab 65536 --seed 1 \
		--vocab-file "$vocab" --name goldfinch-default "$model"
fi

sock=$(mktemp -u /tmp/goldfinch-demo.XXXXXX.sock)
rm -rf "$demo/cache"
build/daemon/goldfinchd --model "$model" --cache-dir "$demo/cache" --listen "unix:$sock" \
	--log-file "$demo/goldfinchd.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -f "$sock"' EXIT INT TERM
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "demo: goldfinchd did not start; see $demo/goldfinchd.log" >&2; exit 1; }
export GOLDFINCH_SERVER="unix:$sock"

echo "== gf ingest (this project's source tree)"
build/client/gf ingest --name goldfinch-src cache_store protocol partition
echo "== gf ask goldfinch-src"
build/client/gf -v ask goldfinch-src "Which file defines cs_writer_commit? Answer:" \
	--max-tokens 32 --temperature 0
echo
echo "== gf contexts"
build/client/gf contexts
echo "== gf status"
build/client/gf status
