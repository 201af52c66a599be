"""GoldFinch in plain PyTorch, for training (../../../shared/DESIGN.md section 1).

Module and parameter names are the official ones, so `model.state_dict()` saved with
`torch.save` is an official-format checkpoint that gf-convert reads like any other.

Two things differ from the official training code, neither changing the maths:
  - the Finch-C2 WKV recurrence runs as a chunked, parallel computation in float32
    (`wkv_chunked`) instead of the CUDA kernel; `wkv_loop` is the per-token definition it is
    checked against;
  - the per-token log-decay -exp(w) is clamped at -10 in the chunked form only (its
    factorised exponentials must stay inside float32). A channel that decays by exp(-10) or
    faster forgets everything in one token either way: the C engine, which does not clamp,
    differs from it by less than 5e-5 on such channels.

Works with PyTorch 1.13 (CPU checks here) and 2.x (training on the GPU host).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5
RMS_EPS = 1e-8
LOGD_MIN = -10.0       # clamp of -exp(w) in the chunked WKV (see above)
WKV_CHUNK = 16         # tokens per chunk of the chunked WKV: 8 * 10 < 88 keeps exp() finite


class Config:
    """Hyper-parameters of the official shape (gf_config_default in model/config.c)."""

    def __init__(self, n_layer=6, n_embd=192, vocab_size=257, ratio=3, head_size=64,
                 rope_base=0.0):
        self.n_layer = n_layer
        self.n_embd = n_embd
        self.dim_att = n_embd
        self.dim_ffn = max(32, int(3.5 * n_embd / 32) * 32)
        self.head_size = min(head_size, n_embd)
        self.n_head = n_embd // self.head_size
        self.vocab_size = vocab_size
        self.ratio = ratio
        self.first_gold = n_layer * (ratio - 1) // ratio
        self.ckv_dim = n_embd // 16
        self.lora_maa = 32
        self.lora_decay = 64
        self.lora_value2 = 64
        self.lora_maa_q = 32
        self.lora_maa_kv = 32
        self.lora_key = 64
        self.lora_value = max(n_embd // 16, 64)
        self.rope_base = rope_base

    def as_dict(self):
        return dict(self.__dict__)

    @classmethod
    def from_state_dict(cls, sd):
        """Infers the shape from tensor names and shapes, as gf_config_infer does."""
        vocab, C = sd["emb.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        G = sum(1 for b in range(n_layer) if f"blocks.{b}.att.time_decay" in sd)
        # ratio R with floor(L*(R-1)/R) == G
        ratio = next(r for r in range(2, 65) if n_layer * (r - 1) // r == G)
        cfg = cls(n_layer=n_layer, n_embd=C, vocab_size=vocab, ratio=ratio)
        cfg.dim_ffn = sd["blocks.0.ffn.key.weight"].shape[0]
        cfg.lora_maa = sd["blocks.0.att.time_maa_w1"].shape[1] // 5
        cfg.lora_decay = sd["blocks.0.att.time_decay_w1"].shape[1]
        cfg.lora_value2 = sd["blocks.0.att.time_value2_w1"].shape[1]
        g = f"blocks.{G}.att."
        cfg.lora_maa_q = sd[g + "time_maa_q_w1"].shape[1]
        cfg.lora_maa_kv = sd[g + "time_maa_kv_w1"].shape[1] // 2
        cfg.lora_key = sd[g + "time_key_w1"].shape[1]
        cfg.lora_value = sd[g + "time_value_w1"].shape[1]
        return cfg


def shift(x):
    """shift(z)[t] = z[t-1], zero before position 0. x: [B, T, C]."""
    return F.pad(x, (0, 0, 1, -1))


def rms(x):
    return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + RMS_EPS)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in float32 (or float64) whatever autocast hands it."""

    def forward(self, x):
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype),
                                self.bias.to(x.dtype), self.eps)


def _p(*shape):
    return nn.Parameter(torch.zeros(*shape))


# ---------------------------------------------------------------------------------------
# WKV (Finch-C2): y_t[i] = sum_j r_t[j] S_t[i][j];  S_{t+1}[i][j] = S_t[i][j] d_t[j] + k_t[j] v_t[i]
# with S_0 = 0. r, k, v, logd: [B, T, H, N]; logd = log d = -exp(w) <= 0.

def wkv_loop(r, k, v, logd, state=None):
    """The definition, one token at a time (float64-friendly; for checks and decoding).
    state: [B, H, N, N] (i = value channel, j = key channel) or None. Returns y, state."""
    B, T, H, N = r.shape
    S = torch.zeros(B, H, N, N, dtype=r.dtype, device=r.device) if state is None else state
    d = torch.exp(logd)
    ys = []
    for t in range(T):
        ys.append(torch.einsum("bhj,bhij->bhi", r[:, t], S))
        S = S * d[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
    return torch.stack(ys, 1), S


def _scan_affine(D, U):
    """Inclusive scan of S_c = S_{c-1} * D_c + U_c over dim 2 (Hillis-Steele, log2 steps).
    D: [B, H, n, 1, N] (multiplies the key channel j), U: [B, H, n, N, N]."""
    n = U.shape[2]
    step = 1
    while step < n:
        U = torch.cat([U[:, :, :step], U[:, :, step:] + U[:, :, :-step] * D[:, :, step:]], 2)
        D = torch.cat([D[:, :, :step], D[:, :, step:] * D[:, :, :-step]], 2)
        step *= 2
    return U


def wkv_chunked(r, k, v, logd, chunk=WKV_CHUNK):
    """Same result as wkv_loop from a zero state, computed in parallel over chunks.
    Computes in float32 (float64 for float64 inputs); returns y [B, T, H, N] in that type.

    Within a chunk, pair (t, s<t) weighs exp(b_t - bi_s) with b the exclusive and bi the
    inclusive cumulative log-decay. It is factorised around the chunk's middle position, so
    each factor's exponent spans at most chunk/2 tokens (<= 80 with the clamp: finite in
    float32). Across chunks, the state at each chunk start comes from an associative scan."""
    with torch.autocast(r.device.type, enabled=False):  # float32 matmuls, not bf16
        return _wkv_chunked(r, k, v, logd, chunk)


def _wkv_chunked(r, k, v, logd, chunk):
    B, T, H, N = r.shape
    dt = torch.float64 if r.dtype == torch.float64 else torch.float32
    r, k, v = r.to(dt), k.to(dt), v.to(dt)
    logd = logd.to(dt).clamp(min=LOGD_MIN)
    pad = (-T) % chunk
    if pad:
        r, k, v, logd = (F.pad(z, (0, 0, 0, 0, 0, pad)) for z in (r, k, v, logd))
    nc = (T + pad) // chunk
    L = chunk

    def rs(z):  # [B, T, H, N] -> [B, H, nc, L, N]
        return z.view(B, nc, L, H, N).permute(0, 3, 1, 2, 4)

    r, k, v, logd = rs(r), rs(k), rs(v), rs(logd)
    bi = torch.cumsum(logd, 3)          # inclusive: sum_{m <= t}
    b = bi - logd                       # exclusive: sum_{m < t}
    ref = b[:, :, :, L // 2:L // 2 + 1]  # [B, H, nc, 1, N]
    rq = r * torch.exp(b - ref)
    kq = k * torch.exp(ref - bi)
    A = rq @ kq.transpose(-1, -2)       # [B, H, nc, L(t), L(s)]
    mask = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    A = torch.where(mask, A, torch.zeros((), dtype=A.dtype, device=A.device))
    y = A @ v                           # intra-chunk part

    total = bi[:, :, :, L - 1:L]        # [B, H, nc, 1, N]: log-decay over the whole chunk
    kd = k * torch.exp(total - bi)      # weight of s in the state at the chunk's end
    U = v.transpose(-1, -2) @ kd        # [B, H, nc, N(i), N(j)]
    Sinc = _scan_affine(torch.exp(total), U)
    Sex = torch.cat([torch.zeros_like(Sinc[:, :, :1]), Sinc[:, :, :-1]], 2)
    y = y + (r * torch.exp(b)) @ Sex.transpose(-1, -2)
    y = y.permute(0, 2, 3, 1, 4).reshape(B, nc * L, H, N)
    return y[:, :T]


# ---------------------------------------------------------------------------------------
# Blocks.

class ChannelMix(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, Fd = cfg.n_embd, cfg.dim_ffn
        self.time_maa_k = _p(1, 1, C)
        self.time_maa_r = _p(1, 1, C)
        self.key = nn.Linear(C, Fd, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def forward(self, x):
        d = shift(x) - x
        k = torch.relu(self.key(x + d * self.time_maa_k)) ** 2
        return torch.sigmoid(self.receptance(x + d * self.time_maa_r)) * self.value(k)


class FinchTimeMix(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, A, H, N = cfg.n_embd, cfg.dim_att, cfg.n_head, cfg.head_size
        self.cfg = cfg
        for n in ("x", "r", "k", "v", "w", "v2"):
            setattr(self, "time_maa_" + n, _p(1, 1, C))
        self.time_maa_w2 = _p(5, cfg.lora_maa, C)
        self.time_maa_w1 = _p(C, 5 * cfg.lora_maa)
        self.time_decay = _p(1, 1, A)
        self.time_decay_w1 = _p(C, cfg.lora_decay)
        self.time_decay_w2 = _p(cfg.lora_decay, A)
        self.time_value2_w1 = _p(C, cfg.lora_value2)
        self.time_value2_w2 = _p(cfg.lora_value2, A)
        self.time_faaaa = _p(H, N)   # official, unused by Finch-C2 (u = 0)
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_x = LayerNorm(A, eps=LN_EPS)

    def mix(self, x, xprev):
        """Everything but the recurrence: r, k, v, logd [B,T,H,N], v2 [B,T,A]."""
        B, T, C = x.shape
        H, N, D = self.cfg.n_head, self.cfg.head_size, self.cfg.lora_maa
        d = xprev - x
        m = torch.tanh((x + d * self.time_maa_x) @ self.time_maa_w1).view(B, T, 5, D)
        m = torch.einsum("btjd,jdc->jbtc", m, self.time_maa_w2)
        mr, mk, mv, mw, mv2 = m.unbind(0)
        xr = x + d * (self.time_maa_r + mr)
        xk = x + d * (self.time_maa_k + mk)
        xv = x + d * (self.time_maa_v + mv)
        xw = x + d * (self.time_maa_w + mw)
        xv2 = x + d * (self.time_maa_v2 + mv2)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        v2 = self.value(xv2) + torch.tanh(xv2 @ self.time_value2_w1) @ self.time_value2_w2
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        logd = -torch.exp(w.to(dt))
        k = k.to(dt) * -torch.expm1(logd)   # k * (1 - decay)
        sh = (B, T, H, N)
        return r.view(sh), k.view(sh), v.view(sh), logd.view(sh), v2

    def forward(self, x):
        B, T, C = x.shape
        r, k, v, logd, v2 = self.mix(x, shift(x))
        y = wkv_chunked(r, k, v, logd).reshape(B, T, -1)
        return self.output(self.ln_x(y.to(x.dtype) + v2.to(x.dtype)))


def rope(x, base, pos0=0):
    """RoPE on [B, H, T, N]: channel pairs (2i, 2i+1), angle = position * base^(-2i/N)."""
    B, H, T, N = x.shape
    inv = base ** (-torch.arange(0, N, 2, dtype=torch.float64, device=x.device) / N)
    ang = torch.arange(pos0, pos0 + T, dtype=torch.float64, device=x.device)[:, None] * inv
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


def causal_attention(q, k, v):
    """Softmax attention, query t sees keys 0..t, scale 1/sqrt(N). [B, H, T, N]."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    s = s.masked_fill(mask, float("-inf"))
    return torch.softmax(s, -1) @ v


class GoldTimeMix(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, A = cfg.n_embd, cfg.dim_att
        self.cfg = cfg
        for n in ("x", "q", "v_cache", "k", "v"):
            setattr(self, "time_maa_" + n, _p(1, 1, C))
        self.time_maa_q_w1 = _p(C, cfg.lora_maa_q)
        self.time_maa_q_w2 = _p(cfg.lora_maa_q, C)
        self.time_maa_kv_w1 = _p(C, 2 * cfg.lora_maa_kv)
        self.time_maa_kv_w2 = _p(2, cfg.lora_maa_kv, C)
        self.time_key_w1 = _p(A, cfg.lora_key)
        self.time_key_w2 = _p(cfg.lora_key, A)
        self.time_value_w1 = _p(C, cfg.lora_value)
        self.time_value_w2 = _p(cfg.lora_value, A)
        self.query = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_q = LayerNorm(A, eps=LN_EPS)
        self.ln_k = LayerNorm(A, eps=LN_EPS)
        self.ln_v = LayerNorm(A, eps=LN_EPS)
        self.ln_x = LayerNorm(A, eps=LN_EPS)

    def query_of(self, x, xprev):
        d = xprev - x
        mq = torch.tanh((x + d * self.time_maa_x) @ self.time_maa_q_w1) @ self.time_maa_q_w2
        return self.ln_q(self.query(x + d * (self.time_maa_q + mq)))

    def keys_values(self, x0, kc):
        """Keys and values of every position from the cache alone: x0 [B,T,C], kc [B,T,A]."""
        D = self.cfg.lora_maa_kv
        xn = rms(x0)
        dxn = shift(xn) - xn
        m = torch.tanh((xn + dxn * self.time_maa_v_cache) @ self.time_maa_kv_w1)
        mk = m[..., :D] @ self.time_maa_kv_w2[0]
        mv = m[..., D:] @ self.time_maa_kv_w2[1]
        k = kc + (shift(kc) - kc) * (self.time_maa_k + mk)
        k = k + torch.tanh(k @ self.time_key_w1) @ self.time_key_w2
        k = self.ln_k(k)
        v = xn + dxn * (self.time_maa_v + mv)
        v = v + torch.tanh(v @ self.time_value_w1) @ self.time_value_w2
        return k, self.ln_v(v)

    def forward(self, x, x0, kc):
        B, T, C = x.shape
        H, N = self.cfg.n_head, self.cfg.head_size
        q = self.query_of(x, shift(x))
        k, v = self.keys_values(x0, kc)

        def heads(z):
            return z.view(B, T, H, N).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        if self.cfg.rope_base:
            q, k = rope(q, self.cfg.rope_base), rope(k, self.cfg.rope_base)
        dt = torch.bfloat16 if q.is_cuda else q.dtype
        y = causal_attention(q.to(dt), k.to(dt), v.to(dt))
        y = y.transpose(1, 2).reshape(B, T, H * N)
        return self.output(self.ln_x(y.to(x.dtype)))


class Block(nn.Module):
    def __init__(self, cfg, idx):
        super().__init__()
        C = cfg.n_embd
        self.ln1 = LayerNorm(C, eps=LN_EPS)
        self.ln2 = LayerNorm(C, eps=LN_EPS)
        if idx == 0:
            self.ln0 = LayerNorm(C, eps=LN_EPS)
        self.is_gold = idx >= cfg.first_gold
        self.att = GoldTimeMix(cfg) if self.is_gold else FinchTimeMix(cfg)
        self.ffn = ChannelMix(cfg)


class GoldFinch(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C, A, V = cfg.n_embd, cfg.dim_att, cfg.vocab_size
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.ln_out = LayerNorm(C, eps=LN_EPS)
        self.head = nn.Linear(C, V, bias=False)
        self.w_kv_cache_a = nn.Linear(C, cfg.ckv_dim, bias=False)
        self.w_kv_cache_b = nn.Linear(C + cfg.ckv_dim, A, bias=False)

    def forward(self, tok, return_aux=False):
        """Full-sequence forward from an empty state. tok [B, T] -> logits [B, T, V]."""
        x0 = self.blocks[0].ln0(self.emb(tok))
        x = x0
        G = self.cfg.first_gold
        for blk in self.blocks[:G]:
            x = x + blk.att(blk.ln1(x))
            x = x + blk.ffn(blk.ln2(x))
        finch_out = x
        c = self.w_kv_cache_a(x)
        kc = rms(self.w_kv_cache_b(torch.cat([x0, c.to(x0.dtype)], -1)).to(x0.dtype))
        for blk in self.blocks[G:]:
            x = x + blk.att(blk.ln1(x), x0, kc)
            x = x + blk.ffn(blk.ln2(x))
        logits = self.head(self.ln_out(x))
        if return_aux:
            return logits, dict(ckv=c, kcache=kc, finch_out=finch_out)
        return logits


# ---------------------------------------------------------------------------------------
# Initialisation for training from scratch (RWKV-6 style; the reference vectors' random
# scheme is only for tests).

@torch.no_grad()
def init_weights(model, seed=0):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    C, A, L = cfg.n_embd, cfg.dim_att, cfg.n_layer

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t, a):
        t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * a)

    normal(model.emb.weight, 0.02)
    normal(model.head.weight, 0.5 / math.sqrt(C))
    normal(model.w_kv_cache_a.weight, 1 / math.sqrt(C))
    normal(model.w_kv_cache_b.weight, 1 / math.sqrt(C + cfg.ckv_dim))
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            mod.weight.fill_(1.0)
            mod.bias.zero_()
    ddd = torch.arange(C, dtype=torch.float32) / C
    for i, blk in enumerate(model.blocks):
        r01 = i / max(L - 1, 1)
        r10 = 1.0 - i / L
        att, ffn = blk.att, blk.ffn
        ffn.time_maa_k.copy_((1 - ddd ** r10).view(1, 1, C))
        ffn.time_maa_r.copy_((1 - ddd ** r10).view(1, 1, C))
        normal(ffn.key.weight, 1 / math.sqrt(C))
        ffn.receptance.weight.zero_()
        ffn.value.weight.zero_()
        att.output.weight.zero_()
        if not blk.is_gold:
            att.time_maa_x.copy_((1 - ddd ** r10).view(1, 1, C))
            att.time_maa_w.copy_((1 - ddd ** r10).view(1, 1, C))
            att.time_maa_k.copy_((1 - ddd ** r10).view(1, 1, C))
            att.time_maa_v.copy_((1 - (ddd ** r10 + 0.3 * r01)).view(1, 1, C))
            att.time_maa_v2.copy_((1 - (ddd ** r10 + 0.3 * r01)).view(1, 1, C))
            att.time_maa_r.copy_((1 - ddd ** (0.5 * r10)).view(1, 1, C))
            att.time_maa_w1.zero_()
            uniform(att.time_maa_w2, 1e-2)
            n = torch.arange(A, dtype=torch.float32)
            att.time_decay.copy_((-6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r01)).view(1, 1, A))
            att.time_decay_w1.zero_()
            uniform(att.time_decay_w2, 1e-2)
            att.time_value2_w1.zero_()
            uniform(att.time_value2_w2, 1e-2)
            att.time_faaaa.zero_()
            for lin in (att.receptance, att.key, att.value):
                normal(lin.weight, 1 / math.sqrt(C))
        else:
            for n_ in ("x", "q", "v_cache", "k", "v"):
                getattr(att, "time_maa_" + n_).copy_((1 - ddd ** r10).view(1, 1, C))
            att.time_maa_q_w1.zero_()
            uniform(att.time_maa_q_w2, 1e-2)
            att.time_maa_kv_w1.zero_()
            uniform(att.time_maa_kv_w2, 1e-2)
            att.time_key_w1.zero_()
            uniform(att.time_key_w2, 1e-2)
            att.time_value_w1.zero_()
            uniform(att.time_value_w2, 1e-2)
            normal(att.query.weight, 1 / math.sqrt(C))


def official_state_dict(model, dtype=None):
    """state_dict with the official names (the module tree already uses them), contiguous,
    optionally cast (e.g. torch.bfloat16 for shipping)."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        sd[k] = v.to(dtype) if dtype is not None else v.clone()
    return sd
