#!/usr/bin/env python3
"""The PyTorch reference trainer for docs/PERFORMANCE.md's training curves.

It trains mamba-slm's hybrid model (Mamba-2 + attention + SwiGLU, tied embeddings) from the same
train config JSON that `mamba-slm train` reads, re-implemented in plain fp32 PyTorch:

- model: RMSNorm, Mamba-2 (in_proj → [z | xBC | dt], causal depthwise conv + SiLU over xBC, the
  chunked SSD of mamba_ssm's ssd_minimal, D skip, gated RMSNorm rmsnorm(y·silu(z))·w, out_proj),
  attention (fused qkv_proj, rotate-half RoPE, causal GQA softmax attention, o_proj), SwiGLU
  (gate_up_proj = [gate | up], down_proj), with mamba-slm's native parameter names, so a native
  model directory loads as it is;
- data: the train split's windows in mamba-slm's DataLoader order (xoshiro256** seeded through
  splitmix64, one Fisher-Yates permutation per epoch, src/data/loader.h), the val split's first
  eval_batches windows in order, read from the same llm.c-layout shards;
- initialisation: --init DIR loads a model directory (e.g. from `mamba-slm train --save-init`);
  --reinit SEED instead draws mamba-slm's scheme (src/nn/*.cpp init) from torch's generator;
- optimizer: torch.optim.AdamW (single-tensor path) with the config's betas, eps and weight
  decay; decay on every .weight except norms, none on norms, biases, A_log, D and dt_bias (the
  ParamSpec decay flags of src/nn); clip_grad_norm_ on the global norm; the learning rate set per
  step from src/train/schedule.cpp's formula (warmup + cosine / wsd / constant).

It writes RUN_DIR/metrics.jsonl with the records and fields of mamba-slm's, and the final weights
as a native model directory RUN_DIR/final/ that `mamba-slm eval` reads.

    torch_train.py --config run.json --init INIT_DIR --out RUN_DIR [--threads 2] [--set key=value ...]
    torch_train.py --config run.json --init INIT_DIR --check     # initial loss on the first batch only
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# Data: src/core/rng.cpp and src/data/loader.cpp, bit for bit.

class Rng:
    """xoshiro256** seeded through splitmix64 (mslm::Rng)."""

    def __init__(self, seed):
        x, self.s = seed & MASK64, []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & MASK64

    def next_u64(self):
        s = self.s
        result = (self._rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def below(self, n):
        limit = MASK64 - MASK64 % n  # rejects the biased tail, as Rng::below
        while True:
            x = self.next_u64()
            if x < limit:
                return x % n


def read_split(data_dir, split):
    """The split's token stream (its shards concatenated) and its text bytes per token."""
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    info = manifest["splits"][split]
    parts = []
    for shard in info["shards"]:
        path = Path(data_dir) / shard["file"]
        header = np.fromfile(path, dtype=np.int32, count=256)
        dtype = {20240520: np.uint16, 20240801: np.uint32}[int(header[0])]
        tokens = np.fromfile(path, dtype=dtype, offset=256 * 4)
        assert len(tokens) == int(header[2]) == shard["tokens"], f"{path}: token count mismatch"
        parts.append(tokens.astype(np.int64))
    stream = np.concatenate(parts)
    assert len(stream) == info["tokens"]
    return stream, info["text_bytes"] / info["tokens"], manifest["tokenizer"]


class Loader:
    """Windows k cover tokens [k·T, k·T + T + 1); shuffled: a fresh permutation per epoch."""

    def __init__(self, stream, batch, seq_len, seed, shuffle):
        self.stream, self.B, self.T, self.shuffle = stream, batch, seq_len, shuffle
        self.windows = (len(stream) - 1) // seq_len
        self.rng = Rng(seed)
        self.pos = 0
        self.perm = self._permutation() if shuffle else None

    def _permutation(self):
        perm = list(range(self.windows))
        for i in range(self.windows - 1, 0, -1):
            j = self.rng.below(i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        return perm

    def next(self):
        """(inputs, targets) of the next batch, or None after the last sequential window."""
        rows = []
        for _ in range(self.B):
            if self.pos == self.windows:
                if not self.shuffle:
                    break
                self.perm, self.pos = self._permutation(), 0
            k = self.perm[self.pos] if self.shuffle else self.pos
            self.pos += 1
            rows.append(self.stream[k * self.T: k * self.T + self.T + 1])
        if not rows:
            return None
        w = torch.from_numpy(np.stack(rows))
        return w[:, :-1], w[:, 1:]


# ---------------------------------------------------------------------------------------------
# Model (native config.json, native parameter names).

def check_supported(c):
    m, a, mlp = c.get("mamba", {}), c.get("attention", {}), c.get("mlp")
    assert c["norm"] == "rmsnorm" and c["tie_embeddings"], "only RMSNorm with tied embeddings"
    assert "M" not in c["layers"] or m["version"] == 2, "only Mamba-2 mixers"
    assert not m.get("proj_bias") and m.get("conv_bias", True) and "dt_limit" not in m
    assert m.get("norm_groups", m.get("n_groups", 1)) == m.get("n_groups", 1)
    if "A" in c["layers"]:
        assert a["position"] == "rope" and a["rotary_dim"] == a["head_dim"] and not a["sliding_window"]
        assert not a["qkv_bias"] and not a["out_bias"]
    assert mlp is not None and mlp["type"] == "swiglu" and not mlp["bias"], "only SwiGLU MLPs without bias"


def dims(c):
    m, a = c.get("mamba", {}), c.get("attention", {})
    D = c["d_model"]
    d_inner = m.get("d_inner", m.get("expand", 2) * D)
    return dict(D=D, d_inner=d_inner, H=d_inner // m.get("head_dim", 64), P=m.get("head_dim", 64),
                G=m.get("n_groups", 1), N=m.get("d_state", 128), K=m.get("d_conv", 4),
                Hq=a.get("n_heads"), Hkv=a.get("n_kv_heads"), Dh=a.get("head_dim"), F=c["mlp"]["d_ff"])


def param_shapes(c):
    d = dims(c)
    conv = d["d_inner"] + 2 * d["G"] * d["N"]
    shapes = {"embed.weight": (c["vocab_size"], d["D"])}
    for l, kind in enumerate(c["layers"].replace(" ", "")):
        p = f"layers.{l}."
        shapes[p + "norm.weight"] = (d["D"],)
        if kind == "M":
            shapes.update({
                p + "mixer.in_proj.weight": (2 * d["d_inner"] + 2 * d["G"] * d["N"] + d["H"], d["D"]),
                p + "mixer.conv1d.weight": (conv, d["K"]), p + "mixer.conv1d.bias": (conv,),
                p + "mixer.dt_bias": (d["H"],), p + "mixer.A_log": (d["H"],), p + "mixer.D": (d["H"],),
                p + "mixer.norm.weight": (d["d_inner"],), p + "mixer.out_proj.weight": (d["D"], d["d_inner"])})
        else:
            shapes[p + "mixer.qkv_proj.weight"] = ((d["Hq"] + 2 * d["Hkv"]) * d["Dh"], d["D"])
            shapes[p + "mixer.o_proj.weight"] = (d["D"], d["Hq"] * d["Dh"])
        shapes[p + "mlp_norm.weight"] = (d["D"],)
        shapes[p + "mlp.gate_up_proj.weight"] = (2 * d["F"], d["D"])
        shapes[p + "mlp.down_proj.weight"] = (d["D"], d["F"])
    shapes["final_norm.weight"] = (d["D"],)
    return shapes


def decays(name):
    """mamba-slm's ParamSpec decay flag: Linear/embedding/conv weights yes; norms, biases, A_log, D, dt_bias no."""
    return name.endswith(".weight") and not name.endswith("norm.weight")


def init_params(c, seed):
    """mamba-slm's initialisation scheme (HybridLM::init and the modules' init) from torch's generator."""
    g = torch.Generator().manual_seed(seed)
    d, m = dims(c), c.get("mamba", {})
    std = c.get("initializer_range", 0.02)
    out_std = std / math.sqrt(2 * c["n_layers"])  # two residual branches per layer (mixer, MLP)
    params = {}
    for name, shape in param_shapes(c).items():
        if name.endswith(("norm.weight", ".D")):
            t = torch.ones(shape)
        elif name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight")):
            t = torch.randn(shape, generator=g) * out_std
        elif name.endswith(("conv1d.weight", "conv1d.bias")):
            bound = 1 / math.sqrt(d["K"])
            t = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
        elif name.endswith("dt_bias"):
            lo, hi = math.log(m.get("dt_min", 1e-3)), math.log(m.get("dt_max", 0.1))
            dt = torch.exp(torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo)
            dt = dt.clamp(min=m.get("dt_init_floor", 1e-4))
            t = dt + torch.log(-torch.expm1(-dt))  # softplus⁻¹(dt)
        elif name.endswith("A_log"):
            lo, hi = m.get("A_init_min", 1.0), m.get("A_init_max", 16.0)
            t = torch.log(torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo)
        else:  # embedding, in_proj, qkv_proj, gate_up_proj
            t = torch.randn(shape, generator=g) * std
        params[name] = t.float()
    return params


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def segsum(x):
    """(..., L) → (..., L, L): out[i, j] = x[j+1] + … + x[i] for j ≤ i, −inf above the diagonal."""
    L = x.size(-1)
    x = x[..., None].expand(*x.shape, L)
    x = x.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool), -1), 0)
    s = torch.cumsum(x, dim=-2)
    return s.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool), 0), -torch.inf)


def ssd(x, dt, A, Bm, Cm, chunk):
    """Chunked SSD (mamba_ssm ssd_minimal). x (b, t, h, p), dt (b, t, h), A (h,), B/C (b, t, h, n)."""
    b, t, h, p = x.shape
    pad = (chunk - t % chunk) % chunk
    if pad:
        x, dt, Bm, Cm = (F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad)) for v in (x, dt, Bm, Cm))
    c = x.shape[1] // chunk
    X = (x * dt[..., None]).reshape(b, c, chunk, h, p)
    Ad = (dt * A).reshape(b, c, chunk, h).permute(0, 3, 1, 2)  # (b, h, c, l)
    Bc, Cc = Bm.reshape(b, c, chunk, h, -1), Cm.reshape(b, c, chunk, h, -1)
    A_cum = torch.cumsum(Ad, -1)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, torch.exp(segsum(Ad)), X)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, torch.exp(A_cum[..., -1:] - A_cum), X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], 1)
    decay_chunk = torch.exp(segsum(F.pad(A_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)[:, :-1]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states, torch.exp(A_cum))
    return (y_diag + y_off).reshape(b, c * chunk, h, p)[:, :t]


def mamba2(u, w, pre, c):
    d, m = dims(c), c["mamba"]
    Din, G, N, H, P = d["d_inner"], d["G"], d["N"], d["H"], d["P"]
    b, t, _ = u.shape
    proj = u @ w[pre + "in_proj.weight"].T  # (b, t, D) → (b, t, [z | xBC | dt])
    z, xbc, dt = proj.split([Din, Din + 2 * G * N, H], -1)
    conv_w = w[pre + "conv1d.weight"]
    xbc = F.conv1d(xbc.transpose(1, 2), conv_w[:, None, :], w[pre + "conv1d.bias"], padding=d["K"] - 1,
                   groups=conv_w.shape[0])[..., :t].transpose(1, 2)
    x, Bm, Cm = F.silu(xbc).split([Din, G * N, G * N], -1)
    head_group = torch.arange(H) // (H // G)
    Bm, Cm = Bm.reshape(b, t, G, N)[:, :, head_group], Cm.reshape(b, t, G, N)[:, :, head_group]
    dt = F.softplus(dt + w[pre + "dt_bias"])
    x = x.reshape(b, t, H, P)
    y = ssd(x, dt, -torch.exp(w[pre + "A_log"]), Bm, Cm, m["chunk_size"])
    y = (y + w[pre + "D"][:, None] * x).reshape(b, t, Din)
    g = (y * F.silu(z)).reshape(b, t, G, Din // G)  # gated norm per group, norm_before_gate = False
    y = rmsnorm(g, 1.0, c["norm_eps"]).reshape(b, t, Din) * w[pre + "norm.weight"]
    return y @ w[pre + "out_proj.weight"].T


def attention(u, w, pre, c):
    d, a = dims(c), c["attention"]
    b, t, _ = u.shape
    Hq, Hkv, Dh = d["Hq"], d["Hkv"], d["Dh"]
    q, k, v = (u @ w[pre + "qkv_proj.weight"].T).split([Hq * Dh, Hkv * Dh, Hkv * Dh], -1)
    q, k, v = (z.reshape(b, t, -1, Dh).transpose(1, 2) for z in (q, k, v))  # (b, heads, t, Dh)
    half = Dh // 2
    inv_freq = a["rope_theta"] ** (-2.0 * torch.arange(half, dtype=torch.float64) / Dh)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq
    cos, sin = ang.cos().float(), ang.sin().float()

    def rope(z):  # rotate-half: (z0, z1) → (z0·cos − z1·sin, z1·cos + z0·sin)
        z0, z1 = z[..., :half], z[..., half:]
        return torch.cat([z0 * cos - z1 * sin, z1 * cos + z0 * sin], -1)

    q, k = rope(q), rope(k)
    rep = Hq // Hkv  # query head h reads KV head h // rep
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=Dh ** -0.5)
    return o.transpose(1, 2).reshape(b, t, Hq * Dh) @ w[pre + "o_proj.weight"].T


def forward_loss(w, c, ids, targets):
    eps = c["norm_eps"]
    h = w["embed.weight"][ids]
    for l, kind in enumerate(c["layers"].replace(" ", "")):
        p = f"layers.{l}."
        u = rmsnorm(h, w[p + "norm.weight"], eps)
        h = h + (mamba2(u, w, p + "mixer.", c) if kind == "M" else attention(u, w, p + "mixer.", c))
        gate, up = (rmsnorm(h, w[p + "mlp_norm.weight"], eps) @ w[p + "mlp.gate_up_proj.weight"].T).chunk(2, -1)
        h = h + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    logits = rmsnorm(h, w["final_norm.weight"], eps) @ w["embed.weight"].T  # tied LM head
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---------------------------------------------------------------------------------------------
# Training.

def lr_at(cfg, step):
    """src/train/schedule.cpp: warmup lr·(step+1)/warmup, then constant / cosine / wsd to min_lr at `steps`."""
    lr, min_lr, warmup, total = cfg["lr"], cfg["min_lr"], cfg["warmup"], cfg["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    kind = cfg["lr_schedule"]
    if kind == "constant":
        return lr
    if step >= total:
        return min_lr
    if kind == "cosine":
        r = (step - warmup) / (total - warmup)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * r))
    start = total - cfg["decay"]
    if step < start:
        return lr
    r = (step - start) / cfg["decay"]
    return lr * (1.0 - r) + min_lr * r


def apply_set(cfg, key_value):
    """`--set key=value` as mamba-slm's: dotted keys, the value read as JSON when it parses."""
    key, _, text = key_value.partition("=")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    *path, leaf = key.split(".")
    node = cfg
    for k in path:
        node = node[k]
    assert leaf in node, f"--set {key_value}: unknown key"
    node[leaf] = text if isinstance(node[leaf], str) else value


def evaluate(w, c, stream, cfg):
    loader = Loader(stream, cfg["batch_size"], cfg["seq_len"], 0, shuffle=False)
    total, rows = 0.0, 0
    with torch.no_grad():
        for _ in range(cfg["eval_batches"]):
            batch = loader.next()
            if batch is None:
                break
            total += forward_loss(w, c, *batch).item() * batch[0].shape[0]
            rows += batch[0].shape[0]
    return total / rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the train config JSON of `mamba-slm train`")
    ap.add_argument("--set", action="append", default=[], help="override a config field, key=value")
    ap.add_argument("--init", required=True, help="a native model directory: config.json (+ model.safetensors)")
    ap.add_argument("--reinit", type=int, help="ignore the weights; draw mamba-slm's init scheme with this seed")
    ap.add_argument("--out", help="run directory for metrics.jsonl and final/")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="print the loss of the first train batch and exit")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    cfg = json.loads(Path(a.config).read_text())
    defaults = {"val_data": "", "batch_size": 8, "seq_len": 256, "grad_accum": 1, "lr_schedule": "cosine",
                "lr": 3e-4, "min_lr": 3e-5, "warmup": 0, "decay": 0, "weight_decay": 0.1, "beta1": 0.9,
                "beta2": 0.95, "eps": 1e-8, "grad_clip": 1.0, "eval_every": 100, "eval_batches": 10,
                "log_every": 10, "seed": 0, "steps": 1000}
    cfg = {**defaults, **cfg}
    for s in a.set:
        apply_set(cfg, s)
    assert cfg["grad_accum"] == 1, "grad_accum > 1 is not replicated"
    assert cfg["lr_schedule"] != "cosine" or cfg["steps"] > cfg["warmup"], "cosine: steps must exceed warmup"
    assert cfg["lr_schedule"] != "wsd" or 0 < cfg["decay"] <= cfg["steps"] - cfg["warmup"], "wsd: bad decay"

    c = json.loads((Path(a.init) / "config.json").read_text())
    check_supported(c)
    if a.reinit is None:
        w = load_file(str(Path(a.init) / "model.safetensors"))
        assert set(w) == set(param_shapes(c)), "the weights' names are not the config's parameters"
    else:
        w = init_params(c, a.reinit)
    for name, shape in param_shapes(c).items():
        assert tuple(w[name].shape) == shape, f"{name}: {tuple(w[name].shape)} != {shape}"
        w[name] = w[name].float().contiguous().requires_grad_(True)

    train_stream, _, tok = read_split(cfg["data"], "train")
    val_dir = cfg["val_data"] or cfg["data"]
    val_stream, val_bpt, val_tok = read_split(val_dir, "val")
    assert tok == val_tok, "val_data was prepared with another tokenizer"
    train = Loader(train_stream, cfg["batch_size"], cfg["seq_len"], cfg["seed"], shuffle=True)

    if a.check:
        with torch.no_grad():
            print(json.dumps({"first_batch_loss": forward_loss(w, c, *train.next()).item()}))
        return

    names = list(w)
    opt = torch.optim.AdamW(
        [{"params": [w[n] for n in names if decays(n)], "weight_decay": cfg["weight_decay"]},
         {"params": [w[n] for n in names if not decays(n)], "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"], foreach=False)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
    tokens = 0
    with open(out / "metrics.jsonl", "w") as log:
        def write(record):
            log.write(json.dumps(record) + "\n")
            log.flush()

        window_start, window_steps = time.perf_counter(), 0
        for step in range(cfg["steps"]):
            loss = forward_loss(w, c, *train.next())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            params = [w[n] for n in names]
            norm = (torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"], foreach=False) if cfg["grad_clip"] > 0
                    else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))).item()
            lr = lr_at(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            tokens += tokens_per_step
            window_steps += 1
            done = step + 1
            if done % cfg["log_every"] == 0 or done == cfg["steps"]:
                seconds = time.perf_counter() - window_start
                write({"type": "train", "step": done, "loss": loss.item(), "lr": lr, "grad_norm": norm,
                       "tokens_per_s": window_steps * tokens_per_step / seconds, "tokens": tokens,
                       "skipped_steps": 0})
                print(f"step {done}: loss {loss.item():.4f} lr {lr:.3e} norm {norm:.3f} "
                      f"{window_steps * tokens_per_step / seconds:.0f} tok/s", flush=True)
                window_start, window_steps = time.perf_counter(), 0
            if (cfg["eval_every"] > 0 and done % cfg["eval_every"] == 0) or done == cfg["steps"]:
                val = evaluate(w, c, val_stream, cfg)
                write({"type": "eval", "step": done, "loss": val, "ppl": math.exp(val),
                       "bpb": val / math.log(2) / val_bpt})
                print(f"step {done}: val loss {val:.4f}", flush=True)
    final = out / "final"
    final.mkdir(exist_ok=True)
    save_file({n: t.detach().contiguous() for n, t in w.items()}, str(final / "model.safetensors"),
              metadata={"format": "mamba_slm"})
    (final / "config.json").write_text(json.dumps(c, indent=2) + "\n")


if __name__ == "__main__":
    main()
