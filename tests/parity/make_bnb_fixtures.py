#!/usr/bin/env python3
"""bitsandbytes 4-bit (NF4/FP4), double-quant and int8 parity fixtures.

    ~/.cache/mamba-slm/venv/bin/pip install bitsandbytes   # 0.50.2 made the committed file
    ~/.cache/mamba-slm/venv/bin/python tests/parity/make_bnb_fixtures.py

Writes tests/parity/fixtures/bnb/bnb.safetensors. Which bitsandbytes code made what, on the CPU:

- `quantize_4bit`: bnb registers no CPU kernel, so its pure-PyTorch reference ("default" backend,
  `backends/default/ops.py`: absmax per block, clamp(x·(1/absmax)), `torch.bucketize` on the code
  book's midpoints) runs. That is the function the C++ reproduces.
- `dequantize_4bit`: bnb's CPU kernel (native for an even last dimension, the reference otherwise).
- `quantize_blockwise` (the 8-bit dynamic map that double quantization uses): bnb's *native CPU*
  kernel is not a nearest-value quantizer (a value of 0 lands on code -2.1e-5, about 30% of random
  values land one or more codes off nearest), so it agrees neither with the reference nor with the
  CUDA kernel. The fixtures use the reference ("default") kernel, re-registered for the CPU below;
  `nested_native.*` records what the native CPU kernel gives for the same input, for the record.
- `int8_vectorwise_quant`: the reference kernel (bnb has no CPU one), threshold 0.

Case `<c>` holds `x.<c>` (F32 input, bf16-exact values to keep the file small), `q.<c>` (packed
bytes), `absmax.<c>`, `dq.<c>` (bnb's dequantization) and, for double-quant cases,
`nested_q.<c>`, `nested_absmax.<c>`, `offset.<c>` and `dq_nested.<c>`. `__metadata__` has one key,
`cases`, listing `name:quant_type:blocksize:double` per case. The output is byte-reproducible.
"""
import os

import torch
from safetensors.torch import save_file

import bitsandbytes
import bitsandbytes.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "bnb", "bnb.safetensors")

# name, shape, quant type, blocksize, double quant
CASES = [
    ("nf4_16x64_b64", (16, 64), "nf4", 64, False),
    ("fp4_16x64_b64", (16, 64), "fp4", 64, False),
    ("nf4_33x17_b64", (33, 17), "nf4", 64, False),
    ("fp4_33x17_b64", (33, 17), "fp4", 64, False),
    ("nf4_5_b64", (5,), "nf4", 64, False),
    ("nf4_24x40_b128", (24, 40), "nf4", 128, False),
    ("fp4_24x40_b128", (24, 40), "fp4", 128, False),
    ("nf4_4100_b4096", (4100,), "nf4", 4096, False),
    ("fp4_3x11_b32", (3, 11), "fp4", 32, False),
    ("nf4_nested_8200_b32", (8200,), "nf4", 32, True),
    ("fp4_nested_3x7_b64", (3, 7), "fp4", 64, True),
    ("nf4_nested_24x40_b64", (24, 40), "nf4", 64, True),
    ("nf4_ties", (2, 64), "nf4", 64, False),
    ("fp4_ties", (2, 64), "fp4", 64, False),
]
INT8_SHAPES = {"int8_9x33": (9, 33), "int8_4x256": (4, 256)}


def reference_quantize_blockwise():
    """bnb's default-backend quantize_blockwise, reached past the native CPU registration."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return lambda A, code, blocksize: op.redispatch(keys, A, code, blocksize)


def ties_input(quant_type):
    # Every midpoint of the code book (with absmax 1 in the block) and a few signed zeros: shows
    # which neighbour a tie goes to.
    code = F.get_4bit_type(quant_type, device="cpu")
    s = torch.sort(code).values
    mids = (s[:-1] + s[1:]) / 2
    row = torch.cat([torch.tensor([1.0]), mids, torch.tensor([-0.0, 0.0, 1e-30, -1e-30, -1.0])])
    row = torch.cat([row, torch.zeros(64 - row.numel())])
    return torch.stack([row, -row])


def main():
    gen = torch.Generator().manual_seed(8)
    native_qb = torch.ops.bitsandbytes.quantize_blockwise.default
    ref_qb = reference_quantize_blockwise()
    t = {"dynamic_map": F.create_dynamic_map()}
    names = []
    inputs = {}
    for name, shape, qt, bs, dq in CASES:
        if name.endswith("ties"):
            x = ties_input(qt)
        else:
            x = torch.randn(shape, generator=gen) * torch.exp(torch.randn(shape, generator=gen))
            x = x.to(torch.bfloat16).float()
            flat = x.view(-1)
            if flat.numel() >= 3 * bs:  # an all-zero block, a -0 and the block maximum repeated
                flat[bs:2 * bs] = 0.0
                flat[2 * bs] = -0.0
                flat[2 * bs + 1] = -flat[2 * bs + 2]
        inputs[name] = x
        if dq:  # before the reference kernel replaces the native one
            _, plain = F.quantize_4bit(x, blocksize=bs, quant_type=qt)
            t[f"nested_native.{name}"] = native_qb(plain.absmax - plain.absmax.mean(), t["dynamic_map"], 256)[0]
    torch.library.register_kernel("bitsandbytes::quantize_blockwise", "cpu")(ref_qb)
    for name, shape, qt, bs, dq in CASES:
        x = inputs[name]
        q, st = F.quantize_4bit(x, blocksize=bs, quant_type=qt, compress_statistics=dq)
        dqx = F.dequantize_4bit(q, st)
        # Random inputs are bf16 values already (stored losslessly as bf16); the ties rows hold fp32
        # midpoints, stored as they were quantized.
        t[f"x.{name}"] = x if name.endswith("ties") else x.to(torch.bfloat16)
        t[f"q.{name}"] = q.reshape(-1)
        t[f"dq.{name}"] = dqx.reshape(-1)
        if dq:
            t[f"nested_q.{name}"] = st.absmax
            t[f"nested_absmax.{name}"] = st.state2.absmax
            t[f"offset.{name}"] = st.offset.reshape(1)
            _, plain = F.quantize_4bit(x, blocksize=bs, quant_type=qt)
            t[f"absmax.{name}"] = plain.absmax
        else:
            t[f"absmax.{name}"] = st.absmax
        names.append(f"{name}:{qt}:{bs}:{int(dq)}")
    for name, shape in INT8_SHAPES.items():
        x = (torch.randn(shape, generator=gen) * 3).to(torch.bfloat16).float()
        x[1, 3] = 127.0 / 2 * x[1].abs().max() / 127.0  # a product that lands on .5 after scaling
        q, stats, _ = F.int8_vectorwise_quant(x.clone())
        t[f"x.{name}"] = x
        t[f"q.{name}"] = q
        t[f"absmax.{name}"] = stats
    meta = {"cases": ",".join(names) + f";bitsandbytes={bitsandbytes.__version__} torch={torch.__version__}"}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
