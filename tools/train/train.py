#!/usr/bin/env python3
"""Trains the byte-level GoldFinch that ships as models/goldfinch-byte.gguf.

    python3 tools/train/train.py --out DIR [--settings tools/train/settings.json]
                                 [--seconds S] [--resume DIR] [--smoke]

Runs on one GPU (bf16 autocast; the WKV recurrence and its state in float32) or, for a
smoke test, on the CPU. The schedule follows wall-clock time: warm-up over warmup_frac of
`train_seconds`, then a cosine from lr to lr_final at the end of it. Writes to DIR:
  model.pth        official state_dict (float32): gf-convert takes it like any checkpoint
  model-bf16.pth   the same in bfloat16 (what ships)
  opt_m.pt, opt_v.pt, state.json   optimiser moments and counters, for --resume
  log.txt, summary.json            the loss curve, timings and the pass-key evaluation
Then evaluates: held-out bits per byte, and the pass-key test (data.passkey_text, the bytes
the C test uses) at each eval length, teacher-forced (argmax at every answer digit given
the digits before it: what greedy decoding answers).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data as gfdata  # noqa: E402
import goldfinch as gfm  # noqa: E402

LOG = None


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    if LOG:
        LOG.write(s + "\n")
        LOG.flush()


class Batches(torch.utils.data.IterableDataset):
    """Endless batches of B*T = tokens_per_step tokens, T drawn per batch."""

    def __init__(self, corpus, dcfg):
        self.corpus = corpus
        self.d = dcfg

    def __iter__(self):
        wi = torch.utils.data.get_worker_info()
        wid = wi.id if wi else 0
        seed = [self.d["seed"], wid, 0]  # one fixed stream per worker
        tasks = gfdata.Tasks(self.corpus, self.d["mix"], seed, self.d.get("whichfile_c", 0.0))
        rng = np.random.default_rng(seed + [7])
        Ts = [int(t) for t in self.d["lengths"]]
        p = np.array(list(self.d["lengths"].values()), dtype=np.float64)
        p /= p.sum()
        while True:
            T = Ts[int(rng.choice(len(Ts), p=p))]
            B = max(1, self.d["tokens_per_step"] // T)
            xs, ws, kinds = [], [], []
            for _ in range(B):
                k, x, w = tasks.sample(T)
                xs.append(x)
                ws.append(w)
                kinds.append(k)
            yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ws)), kinds


def lr_at(frac, o):
    if frac < o["warmup_frac"]:
        return o["lr"] * max(frac / o["warmup_frac"], 0.01)
    f = min(1.0, (frac - o["warmup_frac"]) / (1 - o["warmup_frac"]))
    return o["lr_final"] + 0.5 * (o["lr"] - o["lr_final"]) * (1 + math.cos(math.pi * f))


def autocast(dev):
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def passkey_eval(model, dev, lengths, trials, seed):
    """Exact-match rate of the pass-key answer at each length, depths spread over [0, 1]."""
    model.eval()
    rng = np.random.default_rng(seed)
    res = {}
    for n in lengths:
        ok, t0 = [], time.time()
        try:
            ok = _passkey_trials(model, dev, rng, n, trials)
        except RuntimeError as e:  # e.g. out of memory at the longest length
            log(f"eval passkey {n}: {str(e).splitlines()[0]}")
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            continue
        res[n] = ok
        log(f"eval passkey {n:8d} tokens: {sum(ok)}/{trials} "
            f"({''.join('1' if o else '0' for o in ok)}; depths {(0.5 / trials):.2f}..) "
            f"{time.time() - t0:.1f}s")
    model.train()
    return res


def _passkey_trials(model, dev, rng, n, trials):
    ok = []
    for i in range(trials):
        key = gfdata._digits(rng, 5)
        depth = (i + 0.5) / trials
        ctx, q = gfdata.passkey_text(n, depth, key)
        ids = gfdata.encode(ctx + q + key + b".")
        x = torch.from_numpy(ids.astype(np.int64))[None].to(dev)
        with autocast(dev):
            logits = model(x[:, :-1])
        na = len(key)
        pred = logits[0, -(na + 1):-1].float().argmax(-1).cpu().numpy()
        tgt = ids[-na - 1:-1]
        ok.append(bool((pred == tgt).all()))
        del logits
    return ok


@torch.no_grad()
def val_bpb(model, dev, corpus, T=16384, n=8):
    model.eval()
    rng = np.random.default_rng(5)
    tot, cnt = 0.0, 0
    for _ in range(n):
        x = torch.from_numpy(corpus.slice(rng, T + 1).astype(np.int64))[None].to(dev)
        with autocast(dev):
            logits = model(x[:, :-1])
        tot += F.cross_entropy(logits.float().view(-1, logits.shape[-1]), x[0, 1:],
                               reduction="sum").item()
        cnt += T
    model.train()
    return tot / cnt / math.log(2)


@torch.no_grad()
def whichfile_eval(model, dev, corpus, S, T=32768, n=12):
    """Exact-match rate of "Which file defines X?" answers on held-out files."""
    if len(corpus.files) < 2:
        return []
    model.eval()
    tasks = gfdata.Tasks(corpus, {"whichfile": 1}, [S["eval"]["seed"], 3],
                         S["data"].get("whichfile_c", 0.0))
    ok = []
    for _ in range(n):
        x, w = tasks.whichfile(T)
        if not (w > 1).any():
            continue
        xt = torch.from_numpy(x.astype(np.int64))[None].to(dev)
        with autocast(dev):
            pred = model(xt[:, :-1])[0].float().argmax(-1).cpu().numpy()
        hit = pred == x[1:]
        ans = w > 1
        # each answer is one run of weighted targets
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ans.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            ok.append(bool(hit[a:b].all()))
    model.train()
    log(f"eval whichfile {T} tokens: {sum(ok)}/{len(ok)} answers exact")
    return ok


def save(model, opt, state, out):
    sd = gfm.official_state_dict(model)
    torch.save(sd, os.path.join(out, "model.pth"))
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()},
               os.path.join(out, "model-bf16.pth"))
    names = {id(p): n for n, p in model.named_parameters()}
    m, v = {}, {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                m[names[id(p)]] = st["exp_avg"].cpu()
                v[names[id(p)]] = st["exp_avg_sq"].cpu()
                state["opt_step"] = float(st["step"])
    torch.save(m, os.path.join(out, "opt_m.pt"))
    torch.save(v, os.path.join(out, "opt_v.pt"))
    json.dump(state, open(os.path.join(out, "state.json"), "w"), indent=1)


def main():
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", default=os.path.join(HERE, "settings.json"))
    ap.add_argument("--seconds", type=float, help="override train_seconds")
    ap.add_argument("--resume", help="directory of a previous run's outputs")
    ap.add_argument("--smoke", action="store_true", help="tiny lengths, a few steps (CPU)")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--data-seed", type=int, help="override data.seed (a resumed run: new data)")
    ap.add_argument("--set", action="append", default=[],
                    help="override a setting, e.g. data.lengths='{\"65536\": 1}' (JSON value)")
    args = ap.parse_args()
    S = json.load(open(args.settings))
    os.makedirs(args.out, exist_ok=True)
    LOG = open(os.path.join(args.out, "log.txt"), "a")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        S["data"].update(lengths={"512": 0.5, "1024": 0.5}, tokens_per_step=4096, workers=2,
                         max_corpus_bytes=4_000_000)
        S["eval"].update(lengths=[512, 2048], trials=2)
    if args.seconds is not None:
        S["train_seconds"] = args.seconds
    if args.data_seed is not None:
        S["data"]["seed"] = args.data_seed
    for kv in args.set:
        key, val = kv.split("=", 1)
        node = S
        path = key.split(".")
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = json.loads(val)
    log(f"train: device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}), "
        f"torch {torch.__version__}, settings {json.dumps(S)}")
    torch.backends.cuda.matmul.allow_tf32 = True

    t_start = time.time()
    files = gfdata.read_corpus(S["data"]["max_corpus_bytes"], log=log,
                               sources=S["data"].get("sources"))
    train_files = [f for f in files if not gfdata.held_out(f[0])]
    val_files = [f for f in files if gfdata.held_out(f[0])]
    corpus = gfdata.Corpus(train_files, strict_defs=S["data"].get("strict_defs", False))
    val = gfdata.Corpus(val_files)
    log(f"data: {len(corpus.c_files)} C-family files for whichfile")
    log(f"data: {len(files)} files, train {len(corpus) / 1e6:.1f}M tokens, "
        f"held out {len(val) / 1e6:.2f}M, read in {time.time() - t_start:.1f}s")

    M = S["model"]
    cfg = gfm.Config(n_layer=M["n_layer"], n_embd=M["n_embd"], vocab_size=M["vocab_size"],
                     ratio=M["ratio"], rope_base=M["rope_base"])
    model = gfm.GoldFinch(cfg)
    gfm.init_weights(model, seed=S["init_seed"])
    state = {"step": 0, "tokens": 0, "seconds": 0.0, "runs": []}
    if args.resume:
        sd = torch.load(os.path.join(args.resume, "model.pth"), map_location="cpu")
        model.load_state_dict(sd)
        state = json.load(open(os.path.join(args.resume, "state.json")))
        log(f"resume: {args.resume}: step {state['step']}, tokens {state['tokens']}")
    model.to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {json.dumps(cfg.as_dict())}, {n_params} parameters")

    O = S["optim"]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    kw = dict(lr=O["lr"], betas=tuple(O["betas"]), eps=O["eps"])
    if dev.type == "cuda":
        kw["fused"] = True
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": O["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], **kw)
    if args.resume:
        mm = torch.load(os.path.join(args.resume, "opt_m.pt"))
        vv = torch.load(os.path.join(args.resume, "opt_v.pt"))
        for n, p in model.named_parameters():
            if n in mm:
                # fused AdamW keeps "step" on the parameters' device
                step_dev = dev if kw.get("fused") else "cpu"
                opt.state[p] = {"step": torch.tensor(state.get("opt_step", 1.0),
                                                     dtype=torch.float32, device=step_dev),
                                "exp_avg": mm[n].to(dev), "exp_avg_sq": vv[n].to(dev)}

    nw = S["data"]["workers"]
    loader = torch.utils.data.DataLoader(
        Batches(corpus, S["data"]), batch_size=None, num_workers=nw,
        pin_memory=dev.type == "cuda", **({"prefetch_factor": 4} if nw else {}))
    budget = S["train_seconds"]
    t0 = time.time()
    last_log = t0
    acc = {"loss": 0.0, "lm": 0.0, "lm_n": 0, "ans_ok": 0, "ans_n": 0, "tok": 0, "n": 0}
    by_kind = {}
    curve = []
    it = iter(loader)
    micro = {}  # T -> micro-batches per step, raised when a step runs out of memory
    step0 = state["step"]
    while True:
        el = time.time() - t0
        if el >= budget or (args.smoke and state["step"] - step0 >= 30):
            break
        lr = lr_at(el / budget, O)
        for g in opt.param_groups:
            g["lr"] = lr
        x, w, kinds = next(it)
        x = x.to(dev, non_blocking=True).long()
        w = w.to(dev, non_blocking=True)
        T = x.shape[1] - 1
        n_micro = micro.get(T, 1)
        opt.zero_grad(set_to_none=True)
        try:
            wsum = w.sum()
            loss, ce_all, okk_all = 0.0, [], []
            for xs, ws in zip(x.chunk(n_micro), w.chunk(n_micro)):
                with autocast(dev):
                    logits = model(xs[:, :-1])
                ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                     xs[:, 1:].reshape(-1), reduction="none").view_as(ws)
                part = (ce * ws).sum() / wsum
                part.backward()
                loss += part.item()
                with torch.no_grad():
                    ce_all.append(ce.detach())
                    okk_all.append(logits.argmax(-1) == xs[:, 1:])
                del logits
        except RuntimeError as e:
            if "out of memory" not in str(e) or n_micro >= x.shape[0]:
                raise
            micro[T] = n_micro * 2
            log(f"out of memory at T={T} B={x.shape[0]}: now {micro[T]} micro-batches")
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), O["grad_clip"])
        opt.step()
        state["step"] += 1
        state["tokens"] += x.shape[0] * (x.shape[1] - 1)
        with torch.no_grad():
            ce = torch.cat(ce_all)
            lm = w == 1
            ans = w > 1
            okk = torch.cat(okk_all) & ans
            acc["loss"] += loss
            acc["lm"] += (ce * lm).sum().item()
            acc["lm_n"] += lm.sum().item()
            acc["ans_ok"] += okk.sum().item()
            acc["ans_n"] += ans.sum().item()
            acc["tok"] += x.shape[0] * (x.shape[1] - 1)
            acc["n"] += 1
            for b, k in enumerate(kinds):
                d = by_kind.setdefault(k, [0, 0])
                d[0] += okk[b].sum().item()
                d[1] += ans[b].sum().item()
        now = time.time()
        if now - last_log >= (2 if args.smoke else 15) or state["step"] == step0 + 1:
            n = max(acc["n"], 1)
            rec = dict(step=state["step"], t=round(now - t0, 1), T=x.shape[1] - 1,
                       B=x.shape[0], lr=round(lr, 6), loss=round(acc["loss"] / n, 4),
                       lm_bpb=round(acc["lm"] / max(acc["lm_n"], 1) / math.log(2), 4),
                       ans_acc=round(acc["ans_ok"] / max(acc["ans_n"], 1), 4),
                       kind_acc={k: round(v[0] / max(v[1], 1), 3) for k, v in by_kind.items()},
                       tok_s=round(acc["tok"] / (now - last_log)), gnorm=round(float(gn), 3),
                       mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1)
                       if dev.type == "cuda" else 0)
            curve.append(rec)
            log("step " + json.dumps(rec))
            acc = {k: 0 for k in acc}
            by_kind = {}
            last_log = now
    train_s = time.time() - t0
    state["seconds"] += train_s
    state["runs"].append({"seconds": round(train_s, 1), "steps": state["step"] - step0})
    log(f"train: {state['step'] - step0} steps in {train_s:.0f}s this run; "
        f"total {state['step']} steps, {state['tokens'] / 1e6:.0f}M tokens, {state['seconds']:.0f}s")
    save(model, opt, state, args.out)
    log(f"saved to {args.out}")

    summary = {"state": state, "curve": curve}
    if not args.no_eval:
        summary["val_bpb"] = val_bpb(model, dev, val, T=2048 if args.smoke else 16384)
        log(f"eval held-out bits/byte: {summary['val_bpb']:.4f}")
        E = S["eval"]
        summary["passkey"] = passkey_eval(model, dev, E["lengths"], E["trials"], E["seed"])
        summary["whichfile"] = whichfile_eval(model, dev, val, S, T=2048 if args.smoke else 32768)
    json.dump(summary, open(os.path.join(args.out, "summary.json"), "w"), indent=1)
    log(f"done in {time.time() - t_start:.0f}s")
    os._exit(0)  # do not wait for the data workers


if __name__ == "__main__":
    main()
