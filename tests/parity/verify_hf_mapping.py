#!/usr/bin/env python3
"""Check docs/HF-MAPPING.md against the fixtures WITHOUT transformers.

An independent float64 re-implementation written from the facts in docs/HF-MAPPING.md (plain
sequential scans, no chunking, explicit loops where that is clearer) loads each fixture's
config.json + model.safetensors, recomputes logits, loss and every parameter gradient (autograd),
and compares with expected.safetensors. If this passes, the mapping document is sufficient to
reproduce HF's forward and backward.

Usage: ~/.cache/mamba-slm/venv/bin/python tests/parity/verify_hf_mapping.py [case ...]
"""

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DT = torch.float64


def load(case):
    d = FIXTURES / case

    def parse_float(o):  # transformers writes +-inf / nan as {"__float__": "Infinity"}
        if set(o) == {"__float__"}:
            return float(o["__float__"])
        return o

    cfg = json.loads((d / "config.json").read_text(), object_hook=parse_float)
    with safe_open(d / "model.safetensors", "pt") as f:
        w = {k: f.get_tensor(k).to(DT).requires_grad_(True) for k in f.keys()}
    with safe_open(d / "expected.safetensors", "pt") as f:
        exp = {k: f.get_tensor(k) for k in f.keys()}
    return cfg, w, exp


def rmsnorm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


def causal_conv_silu(x, weight, bias):
    """x (B, T, C); weight (C, 1, K); out[t] = bias + sum_k w[k] * x[t - (K-1) + k], zero left pad."""
    B, T, C = x.shape
    K = weight.shape[-1]
    xp = F.pad(x, (0, 0, K - 1, 0))
    out = sum(weight[:, 0, k] * xp[:, k : k + T, :] for k in range(K))
    if bias is not None:
        out = out + bias
    return F.silu(out)


def softplus(x):  # torch default: beta 1, threshold 20 (identity above 20)
    return F.softplus(x)


def mamba1_mixer(u, p, pre, cfg, jamba):
    """u (B, T, D). pre = parameter name prefix of the mixer."""
    d_inner = p[pre + "in_proj.weight"].shape[0] // 2
    N = p[pre + "A_log"].shape[1]
    R = p[pre + "dt_proj.weight"].shape[1]
    xz = linear(u, p[pre + "in_proj.weight"], p.get(pre + "in_proj.bias"))
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    x = causal_conv_silu(x, p[pre + "conv1d.weight"], p.get(pre + "conv1d.bias"))
    dbc = linear(x, p[pre + "x_proj.weight"])
    dt, Bm, Cm = dbc[..., :R], dbc[..., R : R + N], dbc[..., R + N :]
    if jamba:
        eps = cfg["rms_norm_eps"]
        dt = rmsnorm(dt, p[pre + "dt_layernorm.weight"], eps)
        Bm = rmsnorm(Bm, p[pre + "b_layernorm.weight"], eps)
        Cm = rmsnorm(Cm, p[pre + "c_layernorm.weight"], eps)
    delta = softplus(linear(dt, p[pre + "dt_proj.weight"], p[pre + "dt_proj.bias"]))  # (B, T, d_inner)
    A = -torch.exp(p[pre + "A_log"])  # (d_inner, N)
    Dv = p[pre + "D"]
    Bsz, T, _ = u.shape
    h = torch.zeros(Bsz, d_inner, N, dtype=DT)
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bm[:, t, None, :] * x[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + Dv * x[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return linear(y, p[pre + "out_proj.weight"], p.get(pre + "out_proj.bias"))


def mamba2_mixer(u, p, pre, H, P, G, N, eps, dt_limit):
    d_inner = H * P
    proj = linear(u, p[pre + "in_proj.weight"], p.get(pre + "in_proj.bias"))
    z, xbc, dt = proj[..., :d_inner], proj[..., d_inner : 2 * d_inner + 2 * G * N], proj[..., 2 * d_inner + 2 * G * N :]
    assert dt.shape[-1] == H
    xbc = causal_conv_silu(xbc, p[pre + "conv1d.weight"], p.get(pre + "conv1d.bias"))
    x, Bm, Cm = xbc[..., :d_inner], xbc[..., d_inner : d_inner + G * N], xbc[..., d_inner + G * N :]
    Bsz, T, _ = u.shape
    x = x.reshape(Bsz, T, H, P)
    Bm = Bm.reshape(Bsz, T, G, N)
    Cm = Cm.reshape(Bsz, T, G, N)
    dt = torch.clamp(softplus(dt + p[pre + "dt_bias"]), dt_limit[0], dt_limit[1])  # (B, T, H)
    A = -torch.exp(p[pre + "A_log"])  # (H,)
    group_of_head = torch.arange(H) // (H // G)  # head h reads B/C of group h // (H/G)
    Bh, Ch = Bm[:, :, group_of_head], Cm[:, :, group_of_head]  # (B, T, H, N)
    s = torch.zeros(Bsz, H, P, N, dtype=DT)
    ys = []
    for t in range(T):
        dA = torch.exp(dt[:, t] * A)  # (B, H)
        s = dA[..., None, None] * s + (dt[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :])
        ys.append((s * Ch[:, t, :, None, :]).sum(-1) + p[pre + "D"][:, None] * x[:, t])
    y = torch.stack(ys, 1).reshape(Bsz, T, d_inner)
    # gated RMSNorm, norm_before_gate = False, normalised per group of d_inner / G channels
    g = (y * F.silu(z)).reshape(Bsz, T, G, d_inner // G)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    y = p[pre + "norm.weight"] * g.reshape(Bsz, T, d_inner)
    return linear(y, p[pre + "out_proj.weight"], p.get(pre + "out_proj.bias"))


def attention(u, p, pre, n_heads, n_kv, rope_theta=None, partial=1.0):
    Bsz, T, D = u.shape
    hd = D // n_heads
    q = linear(u, p[pre + "q_proj.weight"], p.get(pre + "q_proj.bias")).reshape(Bsz, T, n_heads, hd)
    k = linear(u, p[pre + "k_proj.weight"], p.get(pre + "k_proj.bias")).reshape(Bsz, T, n_kv, hd)
    v = linear(u, p[pre + "v_proj.weight"], p.get(pre + "v_proj.bias")).reshape(Bsz, T, n_kv, hd)
    if rope_theta is not None:
        dim = int(hd * partial)
        inv_freq = 1.0 / (rope_theta ** (torch.arange(0, dim, 2, dtype=DT) / dim))
        ang = torch.arange(T, dtype=DT)[:, None] * inv_freq[None, :]
        cos = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None, :]
        sin = torch.cat([ang.sin(), ang.sin()], -1)[None, :, None, :]
        rot = cos.shape[-1]

        def rope(a):
            ar, ap = a[..., :rot], a[..., rot:]
            half = rot // 2
            rh = torch.cat([-ar[..., half:], ar[..., :half]], -1)  # rotate_half
            return torch.cat([ar * cos + rh * sin, ap], -1)

        q, k = rope(q), rope(k)
    kv_of_head = torch.arange(n_heads) // (n_heads // n_kv)  # repeat_kv: head h uses kv head h // n_rep
    k, v = k[:, :, kv_of_head], v[:, :, kv_of_head]
    s = torch.einsum("bthd,bshd->bhts", q, k) * hd**-0.5
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    a = torch.softmax(s, -1)
    o = torch.einsum("bhts,bshd->bthd", a, v).reshape(Bsz, T, n_heads * hd)
    return linear(o, p[pre + "o_proj.weight"], p.get(pre + "o_proj.bias"))


def swiglu(u, p, pre):
    return linear(F.silu(linear(u, p[pre + "gate_proj.weight"])) * linear(u, p[pre + "up_proj.weight"]), p[pre + "down_proj.weight"])


def model_forward(case, cfg, p, ids):
    if case == "mamba1":
        emb = p["backbone.embeddings.weight"]
        h = emb[ids]
        for l in range(cfg["num_hidden_layers"]):
            pre = f"backbone.layers.{l}."
            h = h + mamba1_mixer(rmsnorm(h, p[pre + "norm.weight"], cfg["layer_norm_epsilon"]), p, pre + "mixer.", cfg, False)
        h = rmsnorm(h, p["backbone.norm_f.weight"], cfg["layer_norm_epsilon"])
        head = emb if cfg["tie_word_embeddings"] else p["lm_head.weight"]
        return h @ head.T
    if case == "mamba2":
        h = p["backbone.embeddings.weight"][ids]
        H, P, G, N = cfg["num_heads"], cfg["head_dim"], cfg["n_groups"], cfg["state_size"]
        for l in range(cfg["num_hidden_layers"]):
            pre = f"backbone.layers.{l}."
            u = rmsnorm(h, p[pre + "norm.weight"], cfg["layer_norm_epsilon"])
            h = h + mamba2_mixer(u, p, pre + "mixer.", H, P, G, N, cfg["layer_norm_epsilon"], cfg["time_step_limit"])
        h = rmsnorm(h, p["backbone.norm_f.weight"], cfg["layer_norm_epsilon"])
        return h @ p["lm_head.weight"].T
    if case in ("jamba", "hybrid"):
        eps = cfg["rms_norm_eps"]
        h = p["model.embed_tokens.weight"][ids]
        for l in range(cfg["num_hidden_layers"]):
            pre = f"model.layers.{l}."
            if case == "jamba":
                is_attn = l % cfg["attn_layer_period"] == cfg["attn_layer_offset"]
            else:
                is_attn = l in (cfg.get("attn_layer_indices") or [])
            u = rmsnorm(h, p[pre + "input_layernorm.weight"], eps)
            if is_attn:
                rp = cfg.get("rope_parameters") if case == "hybrid" else None
                mix = attention(
                    u, p, pre + "self_attn.", cfg["num_attention_heads"], cfg["num_key_value_heads"],
                    rope_theta=rp["rope_theta"] if rp else None, partial=rp.get("partial_rotary_factor", 1.0) if rp else 1.0,
                )
            elif case == "jamba":
                mix = mamba1_mixer(u, p, pre + "mamba.", cfg, True)
            else:
                H, G, N = cfg["mamba_n_heads"], cfg["mamba_n_groups"], cfg["mamba_d_state"]
                P = cfg["mamba_d_head"]
                mix = mamba2_mixer(u, p, pre + "mamba.", H, P, G, N, eps, cfg["time_step_limit"])
            h = h + mix
            h = h + swiglu(rmsnorm(h, p[pre + "pre_ff_layernorm.weight"], eps), p, pre + "feed_forward.")
        h = rmsnorm(h, p["model.final_layernorm.weight"], eps)
        head = p["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else p["lm_head.weight"]
        return h @ head.T
    raise ValueError(case)


def hf_causal_lm_loss(logits, labels):
    shift = F.pad(labels, (0, 1), value=-100)[:, 1:]
    valid = shift != -100
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, shift.clamp(min=0)[..., None])[..., 0]
    return nll[valid].sum() / valid.sum()


def check(case):
    cfg, p, exp = load(case)
    ids = exp["input_ids"].long()
    labels = exp["labels"].long()
    logits = model_forward(case, cfg, p, ids)
    loss = hf_causal_lm_loss(logits, labels)
    loss.backward()
    # nn.Embedding(padding_idx=pad_token_id) (Jamba, Bamba): the pad row gets no gradient from the lookup.
    if case in ("jamba", "hybrid") and cfg.get("pad_token_id") is not None and not cfg["tie_word_embeddings"]:
        p["model.embed_tokens.weight"].grad[cfg["pad_token_id"]] = 0

    def rel(a, b):
        return (a.double() - b.double()).abs().max().item() / max(b.double().abs().max().item(), 1e-30)

    worst = {"logits": rel(logits.detach(), exp["logits"]), "loss": rel(loss.detach(), exp["loss"])}
    grad_keys = [k for k in exp if k.startswith("grad.")]
    assert sorted(k[5:] for k in grad_keys) == sorted(p), "grad set != parameter set"
    gworst, gname = 0.0, ""
    for k in grad_keys:
        r = rel(p[k[5:]].grad, exp[k])
        if r > gworst:
            gworst, gname = r, k[5:]
    ok = worst["logits"] < 1e-5 and worst["loss"] < 1e-5 and gworst < 1e-4
    print(f"{case:7s} rel.err logits {worst['logits']:.1e}  loss {worst['loss']:.1e}  "
          f"worst grad {gworst:.1e} ({gname})  {'OK' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    cases = sys.argv[1:] or ["mamba1", "mamba2", "jamba", "hybrid"]
    results = [check(c) for c in cases]
    sys.exit(0 if all(results) else 1)
