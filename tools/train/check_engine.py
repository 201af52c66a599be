#!/usr/bin/env python3
"""Checks that the C engine computes what the training model computes, for the shipped shape.

    python3 tools/train/check_engine.py BUILD_DIR [--pth MODEL.pth | --gguf M.gguf] [--tokens T]

Without --pth/--gguf: a model of the shipped shape (tools/train/settings.json) with seeded
random weights of realistic scale (the reference vectors' scheme). With --pth: that
checkpoint (e.g. the trained one); with --gguf: the weights of that GGUF (e.g. the shipped
models/goldfinch-byte.gguf, read here with a small reader of its own). Weights are rounded
to bfloat16 (as shipped), saved as an official checkpoint, converted by
gf-convert --byte-vocab --dtype bf16, and run by gf-eval, full forward and --prefill (linear
prefill, then decode steps) on T tokens of text; the logits must match the PyTorch float32
forward of the same bf16 weights within 2e-5 * max|logit| (a trained model: 1e-4; its
logits are larger and sharper).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import goldfinch as gfm  # noqa: E402
import data as gfdata  # noqa: E402


@torch.no_grad()
def init_like_testdata(model, seed):
    """The reference vectors' init: every weight non-trivial, activations of unit scale."""
    g = torch.Generator().manual_seed(seed)
    C = model.cfg.n_embd
    for name, p in model.named_parameters():
        base = name.rsplit(".", 1)[-1]
        if name == "emb.weight":
            p.copy_(torch.randn(p.shape, generator=g))
        elif ".ln" in name or name.startswith("ln_out"):
            p.copy_((1.0 if base == "weight" else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
        elif "time_maa" in name and not name.endswith(("_w1", "_w2")):
            p.copy_(torch.rand(p.shape, generator=g))
        elif name.endswith("time_decay"):
            p.copy_(torch.rand(p.shape, generator=g) * 4.5 - 5)
        elif name.endswith("_w1"):
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(C))
        elif name.endswith("_w2") or name.endswith("time_faaaa"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        else:  # nn.Linear [out, in]
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))


def read_gguf(path):
    """{name: float32 tensor} from a GGUF v3 file of f32/f16/bf16 tensors (official names,
    shapes outermost first)."""
    import struct
    b = open(path, "rb").read()
    if b[:4] != b"GGUF":
        sys.exit(f"check_engine: {path}: not a GGUF file")
    off = 4
    version, n_t, n_kv = struct.unpack_from("<IQQ", b, off)
    off += 20
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    align = 32

    def string(o):
        (n,) = struct.unpack_from("<Q", b, o)
        return b[o + 8:o + 8 + n], o + 8 + n

    def skip(t, o):
        if t == 8:
            return string(o)[1]
        if t == 9:
            et, n = struct.unpack_from("<IQ", b, o)
            o += 12
            for _ in range(n):
                o = skip(et, o)
            return o
        return o + sizes[t]

    for _ in range(n_kv):
        key, off = string(off)
        (t,) = struct.unpack_from("<I", b, off)
        off += 4
        if key == b"general.alignment":
            (align,) = struct.unpack_from("<I", b, off)
        off = skip(t, off)
    infos = []
    for _ in range(n_t):
        name, off = string(off)
        (nd,) = struct.unpack_from("<I", b, off)
        dims = struct.unpack_from("<%dQ" % nd, b, off + 4)
        t, o = struct.unpack_from("<IQ", b, off + 4 + 8 * nd)
        off += 4 + 8 * nd + 12
        infos.append((name.decode(), tuple(reversed(dims)), t, o))
    base = (off + align - 1) // align * align
    sd = {}
    for name, shape, t, o in infos:
        n = int(np.prod(shape)) if shape else 1
        if t == 0:
            a = np.frombuffer(b, "<f4", n, base + o)
        elif t == 1:
            a = np.frombuffer(b, "<f2", n, base + o).astype(np.float32)
        elif t == 30:
            a = (np.frombuffer(b, "<u2", n, base + o).astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"check_engine: {path}: tensor {name}: type {t} not handled")
        sd[name] = torch.from_numpy(a.reshape(shape).copy())
    return sd


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"check_engine: {' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--pth")
    ap.add_argument("--gguf")
    ap.add_argument("--tokens", type=int, default=700)
    ap.add_argument("--prefill", type=int, default=600)
    args = ap.parse_args()
    torch.set_num_threads(2)

    if args.pth or args.gguf:
        sd = read_gguf(args.gguf) if args.gguf else torch.load(args.pth, map_location="cpu")
        cfg = gfm.Config.from_state_dict(sd)
        model = gfm.GoldFinch(cfg)
        model.load_state_dict({k: v.float() for k, v in sd.items()})
        tol = 1e-4
    else:
        s = json.load(open(os.path.join(HERE, "settings.json")))["model"]
        cfg = gfm.Config(n_layer=s["n_layer"], n_embd=s["n_embd"], vocab_size=s["vocab_size"])
        model = gfm.GoldFinch(cfg)
        init_like_testdata(model, seed=3)
        tol = 2e-5
    with torch.no_grad():  # the shipped weights are bfloat16
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.eval()

    text = open(os.path.join(HERE, "goldfinch.py"), "rb").read()
    tok = np.array(gfdata.encode(text)[:args.tokens], dtype=np.int32)
    T = len(tok)
    with torch.no_grad():
        ref = model(torch.from_numpy(tok.astype(np.int64))[None])[0].numpy()
    V = cfg.vocab_size

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        pth = os.path.join(tmp, "m.pth")
        torch.save(gfm.official_state_dict(model, torch.bfloat16), pth)
        gguf = os.path.join(tmp, "m.gguf")
        run([os.path.join(args.build, "tools", "gf-convert"), pth, gguf, "--byte-vocab",
             "--dtype", "bf16"])
        tf = os.path.join(tmp, "t.i32")
        tok.tofile(tf)
        full = os.path.join(tmp, "full.f32")
        run([os.path.join(args.build, "tools", "gf-eval"), "--model", gguf, "--tokens", tf,
             "--logits", full])
        out = np.fromfile(full, dtype="<f4").reshape(T, V)
        scale = np.abs(ref).max()
        e = np.abs(out - ref).max() / scale
        ok &= e <= tol
        print(f"  full forward, T={T}: max|C - torch| / max|torch| = {e:.2e} "
              f"{'ok' if e <= tol else 'FAIL'} (max|logit| {scale:.1f})")
        P = min(args.prefill, T - 1)
        pre = os.path.join(tmp, "pre.f32")
        run([os.path.join(args.build, "tools", "gf-eval"), "--model", gguf, "--tokens", tf,
             "--prefill", str(P), "--logits", pre])
        out = np.fromfile(pre, dtype="<f4").reshape(T - P + 1, V)
        e = np.abs(out - ref[P - 1:]).max() / scale
        ok &= e <= tol
        print(f"  prefill {P} + decode {T - P}: max|C - torch| / max|torch| = {e:.2e} "
              f"{'ok' if e <= tol else 'FAIL'}")
        agree = float((out.argmax(-1) == ref[P - 1:].argmax(-1)).mean())
        print(f"  greedy tokens agree at {agree * 100:.1f}% of decoded positions")
    print("check_engine:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
