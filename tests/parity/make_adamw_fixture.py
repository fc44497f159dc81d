#!/usr/bin/env python3
"""AdamW parity fixture, made with torch.optim.AdamW (single-tensor path, foreach=False).

    ~/.cache/mamba-slm/venv/bin/python tests/parity/make_adamw_fixture.py

Writes tests/parity/fixtures/adamw/adamw.safetensors with three small parameters
(`w0` (4, 8) and `w2` (3, 5) with weight decay 0.1, `b1` (8,) without), their initial values,
a gradient per step and parameter (`grad.<step>.<name>`, steps 1..5) and the parameters after
each step, from two runs over the same inputs:

- `f32.<step>.<name>`: torch in float32 (what the C++ AdamW<float> is compared with);
- `f64.<step>.<name>`: torch in float64 on the same float32 inputs promoted exactly
  (what the C++ AdamW<double> is compared with, to double precision).

`lr` (F64, one per step) changes each step; its values are dyadic so that they are exact in float32.
The hyperparameters sit in `__metadata__` under `adamw`. The output is byte-reproducible.
"""
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "adamw", "adamw.safetensors")

BETAS = (0.9, 0.95)
EPS = 1e-8
WD = 0.1
LRS = [1 / 64, 1 / 32, 3 / 128, 1 / 128, 1 / 256]
SHAPES = {"w0": (4, 8), "b1": (8,), "w2": (3, 5)}
DECAY = {"w0": True, "b1": False, "w2": True}


def run(dtype, init, grads):
    params = {n: torch.nn.Parameter(init[n].to(dtype).clone()) for n in SHAPES}
    groups = [
        {"params": [params[n] for n in SHAPES if DECAY[n]], "weight_decay": WD},
        {"params": [params[n] for n in SHAPES if not DECAY[n]], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LRS[0], betas=BETAS, eps=EPS, foreach=False, fused=False)
    out = {}
    for step, lr in enumerate(LRS, start=1):
        for g in opt.param_groups:
            g["lr"] = lr
        for n, p in params.items():
            p.grad = grads[step][n].to(dtype).clone()
        opt.step()
        for n, p in params.items():
            out[f"{step}.{n}"] = p.detach().clone()
    return out


def main():
    gen = torch.Generator().manual_seed(1234)
    init = {n: torch.randn(s, generator=gen, dtype=torch.float32) for n, s in SHAPES.items()}
    # Gradients of mixed scale, a few exact zeros, so that v spans orders of magnitude.
    grads = {}
    for step in range(1, len(LRS) + 1):
        grads[step] = {}
        for n, s in SHAPES.items():
            g = torch.randn(s, generator=gen, dtype=torch.float32)
            g = g * torch.pow(10.0, torch.randint(-3, 1, s, generator=gen).float())
            g[torch.rand(s, generator=gen) < 0.1] = 0.0
            grads[step][n] = g

    tensors = {f"init.{n}": init[n] for n in SHAPES}
    for step in grads:
        for n in SHAPES:
            tensors[f"grad.{step}.{n}"] = grads[step][n]
    for k, v in run(torch.float32, init, grads).items():
        tensors[f"f32.{k}"] = v
    for k, v in run(torch.float64, init, grads).items():
        tensors[f"f64.{k}"] = v
    tensors["lr"] = torch.tensor(LRS, dtype=torch.float64)
    # One metadata key: safetensors writes several in hash order, which would break reproducibility.
    decay = ",".join(n for n in SHAPES if DECAY[n])
    meta = {"adamw": f"beta1={BETAS[0]} beta2={BETAS[1]} eps={EPS} weight_decay={WD} decay={decay} "
                     f"torch={torch.__version__}"}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
