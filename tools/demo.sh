#!/bin/sh
# The main job on the embedded default: set up, make the default model, tokenize a bundled
# text (this project's own README), run it through the engine and print what it measured.
# Until the project's trained model ships (issue 8), the default is a seeded random model of
# the paper's small shape (12 layers, n_embd 768, the World vocabulary's 65,536 ids).
set -eu
cd "$(dirname "$0")/.."
tools/setup.sh build
mkdir -p build/demo
vocab=../shared/testdata/tokenizer/rwkv_vocab_v20230424.txt
model=build/demo/goldfinch-small-random.gguf
if [ ! -f "$model" ]; then
	if [ -f "$vocab" ]; then
		build/tools/gf-convert --random --layers 12 --embd 768 --vocab 65536 --vocab-file "$vocab" "$model"
	else
		build/tools/gf-convert --random --layers 12 --embd 768 --vocab 65536 "$model"
	fi
fi
if [ -f "$vocab" ]; then
	build/tools/gf-tokenize --model "$model" <README.md >build/demo/readme.ids
	python3 -c "import struct,sys; ids=[int(x) for x in open('build/demo/readme.ids').read().split()]; open('build/demo/readme.i32','wb').write(struct.pack('<%di'%len(ids),*ids)); print('README.md: %d tokens'%len(ids))"
	build/tools/gf-eval --model "$model" --tokens build/demo/readme.i32 --prefill 64 --logits build/demo/logits.f32
	echo "logits of README.md written to build/demo/logits.f32"
fi
build/tools/gf-bench --model "$model" --tokens 1024 --decode-tokens 16
