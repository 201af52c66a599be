#!/usr/bin/env python3
"""Checks tools/train/goldfinch.py against the reference vectors of the official code.

    python3 tools/train/check_reference.py [TESTDATA_DIR]      (default ../shared/testdata)

For every case in TESTDATA_DIR/goldfinch/: loads model.pth into the training model (the
official names, unchanged), runs the full-sequence forward in float32 on the CPU and
compares logits, ckv, kcache and finch_out with the stored float64 results, with the bound
of testdata/README.md: max|out - ref| <= 2e-5 * max|ref| per array. Then checks the chunked
WKV against the per-token definition over decays from 1 - 1e-6 to exp(-9), with a few
chunk-boundary lengths. Exit 0 when everything passes, 1 otherwise.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import goldfinch as gfm  # noqa: E402

TOL = 2e-5


def rel_err(out, ref):
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(out - ref)) / (scale if scale > 0 else 1.0))


def load_model(pth, dtype=torch.float32):
    sd = torch.load(pth, map_location="cpu")
    cfg = gfm.Config.from_state_dict(sd)
    model = gfm.GoldFinch(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    return model.to(dtype).eval(), cfg


def check_case(case_dir):
    meta = json.load(open(os.path.join(case_dir, "config.json")))
    model, cfg = load_model(os.path.join(case_dir, "model.pth"))
    assert cfg.first_gold == meta["first_gold_layer"], "first gold layer"
    assert cfg.ckv_dim == meta["ckv_dim"] and cfg.dim_ffn == meta["dim_ffn"], "shape"
    T, V = meta["T"], meta["vocab_size"]
    tok = np.fromfile(os.path.join(case_dir, "tokens.i32"), dtype="<i4")
    with torch.no_grad():
        logits, aux = model(torch.from_numpy(tok.astype(np.int64))[None], return_aux=True)
    out = {
        "logits": (logits[0], (T, V)),
        "ckv": (aux["ckv"][0], (T, cfg.ckv_dim)),
        "kcache": (aux["kcache"][0], (T, cfg.dim_att)),
        "finch_out": (aux["finch_out"][0], (T, cfg.n_embd)),
    }
    ok = True
    for name, (t, shape) in out.items():
        ref = np.fromfile(os.path.join(case_dir, name + ".f32"), dtype="<f4").reshape(shape)
        e = rel_err(t.numpy(), ref)
        good = e <= TOL
        ok &= good
        print(f"  {os.path.basename(case_dir)} {name:10s} max|diff|/max|ref| = {e:.2e} "
              f"{'ok' if good else 'FAIL (bound %.0e)' % TOL}")
    return ok


def check_wkv():
    """Chunked WKV against the per-token loop, float64, over a wide range of decays."""
    g = torch.Generator().manual_seed(5)
    ok = True
    for T in (1, 15, 16, 17, 100, 257):
        B, H, N = 2, 2, 8
        r = torch.randn(B, T, H, N, generator=g, dtype=torch.float64)
        k = torch.randn(B, T, H, N, generator=g, dtype=torch.float64)
        v = torch.randn(B, T, H, N, generator=g, dtype=torch.float64)
        w = torch.rand(B, T, H, N, generator=g, dtype=torch.float64) * 16 - 13.8  # to 2.2
        logd = -torch.exp(w)
        y_ref, _ = gfm.wkv_loop(r, k, v, logd)
        y = gfm.wkv_chunked(r, k, v, logd)
        e = rel_err(y.numpy(), y_ref.numpy())
        y32 = gfm.wkv_chunked(r.float(), k.float(), v.float(), logd.float())
        e32 = rel_err(y32.numpy(), y_ref.numpy())
        good = e < 1e-12 and e32 < 1e-5
        ok &= good
        print(f"  wkv T={T:3d} chunked vs loop: float64 {e:.1e}, float32 {e32:.1e} "
              f"{'ok' if good else 'FAIL'}")
    return ok


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "testdata")
    cases_dir = os.path.join(root, "goldfinch")
    cases = sorted(d for d in os.listdir(cases_dir)
                   if os.path.isfile(os.path.join(cases_dir, d, "model.pth")))
    if not cases:
        print(f"check_reference: no cases under {cases_dir}", file=sys.stderr)
        return 1
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    ok = check_wkv()
    for c in cases:
        ok &= check_case(os.path.join(cases_dir, c))
    print("check_reference:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
