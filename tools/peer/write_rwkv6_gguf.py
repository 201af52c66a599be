#!/usr/bin/env python3
"""Write an RWKV-6 ("rwkv6" arch) GGUF with random weights that llama.cpp loads.

Used by tools/bench-peer.sh to give llama.cpp a model of the same shape as the project's
Finch stage. It imports llama.cpp's own gguf-py (nothing of it is copied here), so the file
is laid out exactly as llama.cpp's own converter would lay it out.

Names, shapes and metadata follow Rwkv6Model in llama.cpp's convert_hf_to_gguf.py and
LLM_ARCH_RWKV6 in src/llama-arch.cpp / src/llama-model.cpp (llama.cpp c392e509).
numpy shapes are the reverse of ggml's ne[] order (gguf-py reverses them on write).

Precision as the converter does it: with --dtype bf16/f16 only the 2-D matrices
(r, k, v, g, output, ffn key/value/receptance, token_embd, output head) are 16-bit;
norms, lerps, time_mix_first/decay and the LoRA matrices (w1, w2, decay_w1/w2) stay F32.

gguf-py imports sentencepiece at import time and never uses it here, so a stub module
on PYTHONPATH is enough (bench-peer.sh writes one into its work folder):
  PYTHONPATH=LLAMA_SRC/gguf-py:WORK/pystub /usr/bin/python3 tools/peer/write_rwkv6_gguf.py \
    --layers 8 --embd 768 --ffn 2688 --vocab 65536 --dtype bf16 \
    --vocab-file ../shared/testdata/tokenizer/rwkv_vocab_v20230424.txt out.gguf
"""
import argparse
import ast

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--ffn", type=int, default=0, help="0: int(embd*3.5)//32*32")
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    ap.add_argument("--vocab-file", default=None, help="rwkv_vocab_v20230424.txt (else synthetic tokens)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    C, L, V = a.embd, a.layers, a.vocab
    F = a.ffn or int((C * 3.5) // 32 * 32)
    head = 64
    mix_dim = 64 if C == 4096 else 32
    decay_dim = 128 if C == 4096 else 64
    rng = np.random.default_rng(a.seed)

    def normal(shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def uniform(shape, lo, hi):
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[a.dtype]

    w = gguf.GGUFWriter(a.out, "rwkv6")
    w.add_name(f"rwkv6-random-L{L}-C{C}")
    w.add_context_length(1048576)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_layer_norm_eps(1e-5)
    w.add_rescale_every_n_layers(0)
    w.add_wkv_head_size(head)
    w.add_time_mix_extra_dim(mix_dim)
    w.add_time_decay_extra_dim(decay_dim)
    w.add_feed_forward_length(F)
    w.add_file_type(ftype)
    w.add_head_count(0)  # required by llama.cpp, unused

    # Tokenizer, as Rwkv6Model.set_vocab writes it.
    tokens = [b"<s>"]
    types = [gguf.TokenType.CONTROL]
    if a.vocab_file:
        with open(a.vocab_file, "r", encoding="utf-8") as f:
            for line in f:
                parts = line.split(" ")
                tok = ast.literal_eval(" ".join(parts[1:-1]))
                tok = tok.encode("utf-8") if isinstance(tok, str) else tok
                assert len(tok) == int(parts[-1])
                tokens.append(repr(tok)[2:-1].encode("utf-8"))
                types.append(gguf.TokenType.NORMAL)
                if len(tokens) == V:
                    break
    else:
        for b in range(min(256, V - 1)):
            tokens.append(repr(bytes([b]))[2:-1].encode("utf-8"))
            types.append(gguf.TokenType.NORMAL)
    for i in range(len(tokens), V):
        tokens.append(f"[PAD{i}]".encode("utf-8"))
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("rwkv")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if V > 261:
        w.add_eot_token_id(261)

    def put(name, arr, big=False):
        """big: a 2-D matrix the converter stores in the file's 16-bit type."""
        if big and a.dtype == "f16":
            w.add_tensor(name, arr.astype(np.float16))
        elif big and a.dtype == "bf16":
            # raw_dtype only (no raw_shape): gguf-py derives the shape from the byte array.
            w.add_tensor(name, gguf.quants.quantize(arr, QT.BF16), raw_dtype=QT.BF16)
        else:
            w.add_tensor(name, arr)

    ones = lambda n: np.ones(n, dtype=np.float32)
    zeros = lambda n: np.zeros(n, dtype=np.float32)
    put("token_embd.weight", normal((V, C), 1.0), big=True)
    put("token_embd_norm.weight", ones(C))
    put("token_embd_norm.bias", zeros(C))
    for i in range(L):
        p = f"blk.{i}."
        put(p + "attn_norm.weight", ones(C))
        put(p + "attn_norm.bias", zeros(C))
        put(p + "attn_norm_2.weight", ones(C))
        put(p + "attn_norm_2.bias", zeros(C))
        put(p + "time_mix_lerp_x.weight", uniform((1, 1, C), 0, 1))
        put(p + "time_mix_lerp_fused.weight", uniform((5, 1, 1, C), 0, 1))
        put(p + "time_mix_w1.weight", normal((mix_dim * 5, C), 0.01))
        put(p + "time_mix_w2.weight", normal((5, C, mix_dim), 0.01))
        put(p + "time_mix_first.weight", normal((C // head, head), 0.1))
        put(p + "time_mix_decay.weight", uniform((C,), -6, -1))
        put(p + "time_mix_decay_w1.weight", normal((decay_dim, C), 0.01))
        put(p + "time_mix_decay_w2.weight", normal((C, decay_dim), 0.01))
        for m in ("key", "value", "receptance", "gate"):
            put(p + f"time_mix_{m}.weight", normal((C, C), C ** -0.5), big=True)
        put(p + "time_mix_ln.weight", ones(C))
        put(p + "time_mix_ln.bias", zeros(C))
        put(p + "time_mix_output.weight", normal((C, C), C ** -0.5), big=True)
        put(p + "channel_mix_lerp_k.weight", uniform((1, 1, C), 0, 1))
        put(p + "channel_mix_lerp_r.weight", uniform((1, 1, C), 0, 1))
        put(p + "channel_mix_key.weight", normal((F, C), C ** -0.5), big=True)
        put(p + "channel_mix_value.weight", normal((C, F), F ** -0.5), big=True)
        put(p + "channel_mix_receptance.weight", normal((C, C), C ** -0.5), big=True)
    put("output_norm.weight", ones(C))
    put("output_norm.bias", zeros(C))
    put("output.weight", normal((V, C), C ** -0.5), big=True)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
