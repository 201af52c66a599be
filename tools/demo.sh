#!/bin/sh
# The main job on the embedded default: set up (packages, build), start goldfinchd on the
# project's trained model (models/goldfinch-byte.gguf), ingest a 100,000-token
# haystack with a pass key hidden in it and ask for the key; then ingest this project's own
# source tree and ask about it; show the cache figures and stop the daemon cleanly.
#
# The default model is small (3.3M parameters, byte-level, trained 13 minutes): it finds a
# pass key in a million tokens, but its answers about source trees are unreliable (the
# which-file question needs two hops it has not learnt; tools/train/README.md).
# Override with GF_DEMO_MODEL=path/to/model.gguf.
set -eu
cd "$(dirname "$0")/.."
tools/setup.sh build
demo=build/demo
mkdir -p "$demo"
model=${GF_DEMO_MODEL:-models/goldfinch-byte.gguf}
[ -f "$model" ] || { echo "demo: $model not found" >&2; exit 1; }

sock=$(mktemp -u /tmp/goldfinch-demo.XXXXXX.sock)
rm -rf "$demo/cache"
build/daemon/goldfinchd --model "$model" --cache-dir "$demo/cache" --listen "unix:$sock" \
	--log-file "$demo/goldfinchd.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -f "$sock"' EXIT INT TERM
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "demo: goldfinchd did not start; see $demo/goldfinchd.log" >&2; exit 1; }
export GOLDFINCH_SERVER="unix:$sock"

echo "== a 100,000-token haystack with a pass key hidden in it"
build/tools/gf-passkey --print-context --tokens 100000 --seed 7 >"$demo/haystack.txt" 2>"$demo/passkey.txt"
build/client/gf ingest --name haystack - <"$demo/haystack.txt"
echo "(hidden: $(cat "$demo/passkey.txt"))"
echo "== gf ask haystack: What is the pass key?"
build/client/gf -v ask haystack "$(printf '\nWhat is the pass key? The pass key is ')" \
	--max-tokens 6 --temperature 0
echo
echo "== gf ingest (this project's source tree)"
build/client/gf ingest --name goldfinch-src cache_store protocol partition
echo "== gf ask goldfinch-src (a question this small model often gets wrong)"
nl='
'
build/client/gf -v ask goldfinch-src "$(printf '\nQ: Which file defines cs_writer_commit?\nA: ')" \
	--max-tokens 40 --temperature 0 --stop "$nl"
echo
echo "== gf contexts"
build/client/gf contexts
echo "== gf status"
build/client/gf status
