#!/usr/bin/env python3
"""Checks and tables for tools/bench-peer.sh (standard library only).

  summarize.py check-llama RUN.jsonl   exit 1 unless llama-bench wrote a pp and a tg row
  summarize.py check-gf RUN.json       exit 1 unless the line is gf-bench's JSON object
  summarize.py brief-llama RUN.jsonl   one line: pp and tg tok/s
  summarize.py brief-gf RUN.json       one line: prefill, decode tok/s, read GB/s
  summarize.py table RESULTS_DIR LLAMA_MODEL.gguf
                                       the markdown tables, from RESULTS_DIR/runs.tsv

The decode bound is read_gbs (gf-bench's measure of this machine's read bandwidth, at the
same threads, around its decode) over llama.cpp's weight bytes per decoded token, taken
from the model file: every tensor's bytes, less the token embedding but one row (a decode
step reads one row of it).
"""
import json
import os
import re
import statistics as st
import struct
import sys

GF_KEYS = ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_gbs", "read_gbs", "threads")


def die(msg):
    print(f"summarize: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- run files

def llama_rows(path):
    """{'pp': tok/s, 'tg': tok/s} from one llama-bench -o jsonl file, or None."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                r = json.loads(line)
                if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0:
                    out["pp"] = float(r["avg_ts"])
                elif r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
                    out["tg"] = float(r["avg_ts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return out if "pp" in out and "tg" in out else None


def gf_row(path):
    """gf-bench's JSON object: the last non-empty line of path, or None."""
    try:
        with open(path, errors="replace") as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
        r = json.loads(lines[-1])
    except (OSError, ValueError, IndexError):
        return None
    if not isinstance(r, dict) or any(not isinstance(r.get(k), (int, float)) for k in GF_KEYS):
        return None
    return r


def gf_core(row, log_path):
    """The OpenBLAS core: the JSON's openblas_core, else the log's 'OpenBLAS core X,' line."""
    if isinstance(row.get("openblas_core"), str):
        return row["openblas_core"]
    try:
        with open(log_path, errors="replace") as f:
            m = re.search(r"OpenBLAS core ([^,\n]+)", f.read())
        return m.group(1).strip() if m else "?"
    except OSError:
        return "?"


# ---------------------------------------------------------------- GGUF sizes

# bytes per block, elements per block (ggml's type numbers)
GGML_TYPES = {0: (4, 1), 1: (2, 1), 30: (2, 1),  # F32, F16, BF16
              2: (18, 32), 8: (34, 32)}          # Q4_0, Q8_0


def gguf_tensors(path):
    """[(name, dims in ggml order, type)] from a GGUF v2/v3 header."""
    with open(path, "rb") as f:
        def rd(fmt):
            n = struct.calcsize(fmt)
            b = f.read(n)
            if len(b) != n:
                die(f"{path}: truncated GGUF header")
            return struct.unpack("<" + fmt, b)[0]

        def rstr():
            return f.read(rd("Q"))

        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

        def skip(t):
            if t in scalar:
                f.seek(struct.calcsize(scalar[t]), 1)
            elif t == 8:
                f.seek(rd("Q"), 1)
            elif t == 9:
                et, n = rd("I"), rd("Q")
                if et in scalar:
                    f.seek(n * struct.calcsize(scalar[et]), 1)
                else:
                    for _ in range(n):
                        skip(et)
            else:
                die(f"{path}: unknown GGUF value type {t}")

        if f.read(4) != b"GGUF":
            die(f"{path}: not a GGUF file")
        if rd("I") not in (2, 3):
            die(f"{path}: GGUF version not 2 or 3")
        n_tensors, n_kv = rd("Q"), rd("Q")
        for _ in range(n_kv):
            rstr()
            skip(rd("I"))
        out = []
        for _ in range(n_tensors):
            name = rstr().decode()
            dims = [rd("Q") for _ in range(rd("I"))]
            ttype = rd("I")
            rd("Q")  # offset
            out.append((name, dims, ttype))
        return out


def decode_bytes(path):
    """Weight bytes one decode step reads: all tensors, token_embd but one row."""
    total = 0
    for name, dims, ttype in gguf_tensors(path):
        if ttype not in GGML_TYPES:
            die(f"{path}: tensor {name} has ggml type {ttype}, which this script cannot size")
        bsize, bel = GGML_TYPES[ttype]
        n = 1
        for d in dims:
            n *= d
        size = n // bel * bsize
        if name == "token_embd.weight":
            size = dims[0] // bel * bsize  # one row: ne[0] elements
        total += size
    return total


# ---------------------------------------------------------------- table

def fmt(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def spread(xs):
    m = st.median(xs)
    if len(xs) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(xs))}–{fmt(max(xs))})"


def table(res, model):
    lbytes = decode_bytes(model)
    runs = []  # dicts: pair, threads, engine, mode, + figures
    with open(os.path.join(res, "runs.tsv")) as f:
        next(f)
        for line in f:
            pair, threads, engine, mode, name = line.rstrip("\n").split("\t")
            path = os.path.join(res, name)
            r = {"pair": int(pair), "threads": int(threads), "engine": engine, "mode": mode}
            if engine == "llama":
                x = llama_rows(path)
                if x is None:
                    die(f"{path}: no llama-bench pp/tg rows")
                r.update(prefill=x["pp"], decode=x["tg"], decode_gbs=x["tg"] * lbytes / 1e9)
            else:
                x = gf_row(path)
                if x is None:
                    die(f"{path}: no gf-bench JSON on the last line")
                r.update(prefill=x["prefill_tokens_per_s"], decode=x["decode_tokens_per_s"],
                         decode_gbs=x["decode_gbs"], read_gbs=x["read_gbs"], core=gf_core(x, path),
                         reported=x.get("compute"))
            runs.append(r)
    if not runs:
        die(f"{res}: no runs")

    meta = {}
    p = os.path.join(res, "meta.txt")
    if os.path.exists(p):
        for line in open(p):
            k, _, v = line.partition(": ")
            meta[k] = v.strip()
    loads = []
    p = os.path.join(res, "load.txt")
    if os.path.exists(p):
        for line in open(p):
            m = re.search(r"load average: ([\d.]+)", line)
            if m and line.startswith("pair"):
                loads.append(float(m.group(1)))

    threads = sorted({r["threads"] for r in runs})
    modes = []
    for r in runs:
        if r["engine"] == "gf" and r["mode"] not in modes:
            modes.append(r["mode"])

    def sel(engine, mode, t):
        return sorted((r for r in runs if r["engine"] == engine and r["mode"] == mode
                       and r["threads"] == t), key=lambda r: r["pair"])

    def read_gbs(t):
        return [r["read_gbs"] for r in runs if r["engine"] == "gf" and r["threads"] == t]

    out = []
    w = out.append
    w(f"# bench-peer: {meta.get('date', '?')}")
    w("")
    w(f"- host: {meta.get('host', '?')}")
    w(f"- gf: {meta.get('gf_commit', '?')}, build {meta.get('gf_build', '?')}, "
      f"model {os.path.basename(meta.get('gf_model', '?'))} (8 Finch + 1 GOLD, bf16 file)")
    w(f"- llama.cpp: {meta.get('llama_src', '?')}, model {os.path.basename(model)}; "
      f"weights read per decode token {lbytes / 1e6:.1f} MB")
    w(f"- pairs per thread count: {meta.get('pairs', '?')}; 1-minute load before the pairs: "
      + (f"{min(loads):.2f}–{max(loads):.2f}" if loads else "?"))
    if meta.get("gf_compute_flag") == "0":
        w("- this gf-bench has no --compute: its one row is labelled f32")
    w("")
    w("Medians (min–max) over the pairs. decode GB/s: weight bytes per token x decode tok/s. "
      "read GB/s: gf-bench's read bandwidth at those threads. decode bound: read GB/s over "
      f"llama.cpp's {lbytes / 1e6:.1f} MB per token (the llama.cpp row uses every gf run's "
      "read GB/s at those threads). gf B/tok: gf's own weight bytes per decode token.")
    w("")
    w("| engine | mode | threads | runs | prefill tok/s | decode tok/s | decode GB/s | read GB/s "
      "| decode bound tok/s | gf B/tok | OpenBLAS core |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in threads:
        rg = read_gbs(t)
        ll = sel("llama", "bf16", t)
        if ll:
            bound = fmt(st.median(rg) * 1e9 / lbytes) if rg else "–"
            w(f"| llama.cpp rwkv6 L8 | BF16 | {t} | {len(ll)} | {spread([r['prefill'] for r in ll])} "
              f"| {spread([r['decode'] for r in ll])} | {fmt(st.median(r['decode_gbs'] for r in ll))} "
              f"| {fmt(st.median(rg)) if rg else '–'} | {bound} | – | – |")
        for m in modes:
            g = sel("gf", m, t)
            if not g:
                continue
            label = m
            rep = {r["reported"] for r in g if r["reported"] is not None}
            if rep and rep != {m}:
                label += f" (reports {'/'.join(sorted(map(str, rep)))})"
            cores = "/".join(sorted({r["core"] for r in g}))
            bpt = st.median(r["decode_gbs"] / r["decode"] for r in g if r["decode"] > 0) * 1e9
            w(f"| gf-bench L9r9 bf16 file | {label} | {t} | {len(g)} | {spread([r['prefill'] for r in g])} "
              f"| {spread([r['decode'] for r in g])} | {fmt(st.median(r['decode_gbs'] for r in g))} "
              f"| {spread([r['read_gbs'] for r in g])} "
              f"| {fmt(st.median(r['read_gbs'] for r in g) * 1e9 / lbytes)} "
              f"| {bpt / 1e6:.0f} MB | {cores} |")
    w("")
    w("Ratios gf / llama.cpp BF16: of the medians, and the median (min–max) of each pair's own ratio.")
    w("")
    w("| gf mode | threads | prefill, medians | prefill, per pair | decode, medians | decode, per pair "
      "| decode GB/s, medians |")
    w("|---|---|---|---|---|---|---|")
    for t in threads:
        ll = {r["pair"]: r for r in sel("llama", "bf16", t)}
        if not ll:
            continue
        for m in modes:
            g = sel("gf", m, t)
            if not g:
                continue

            def med(rs, k):
                return st.median(r[k] for r in rs)

            def per_pair(k):
                xs = [r[k] / ll[r["pair"]][k] for r in g if r["pair"] in ll and ll[r["pair"]][k] > 0]
                if not xs:
                    return "–"
                if len(xs) == 1:
                    return f"{xs[0]:.2f}"
                return f"{st.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"

            lv = list(ll.values())
            w(f"| {m} | {t} | {med(g, 'prefill') / med(lv, 'prefill'):.2f} | {per_pair('prefill')} "
              f"| {med(g, 'decode') / med(lv, 'decode'):.2f} | {per_pair('decode')} "
              f"| {med(g, 'decode_gbs') / med(lv, 'decode_gbs'):.2f} |")
    print("\n".join(out))


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "check-llama":
        sys.exit(0 if llama_rows(a[1]) else 1)
    if len(a) == 2 and a[0] == "check-gf":
        sys.exit(0 if gf_row(a[1]) else 1)
    if len(a) == 2 and a[0] == "brief-llama":
        x = llama_rows(a[1]) or die(f"{a[1]}: no pp/tg rows")
        print(f"pp512 {x['pp']:.1f} tok/s, tg128 {x['tg']:.1f} tok/s")
        return
    if len(a) == 2 and a[0] == "brief-gf":
        x = gf_row(a[1]) or die(f"{a[1]}: no gf-bench JSON")
        print(f"prefill {x['prefill_tokens_per_s']:.1f} tok/s, decode {x['decode_tokens_per_s']:.1f} tok/s, "
              f"read {x['read_gbs']:.1f} GB/s" + (f", compute {x['compute']}" if "compute" in x else ""))
        return
    if len(a) == 3 and a[0] == "table":
        table(a[1], a[2])
        return
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
