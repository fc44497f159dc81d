"""Q8_0 / Q4_0 reference blocks from the `gguf` package (llama.cpp's gguf-py, whose numpy quantizers
mirror ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref), for tests/unit/test_gguf.cpp.

    ~/.cache/mamba-slm/venv/bin/python tests/parity/make_gguf_fixtures.py

Writes tests/parity/fixtures/gguf/quant.safetensors: "x" (fp32 values, blocks of 32) and "q8_0",
"q4_0" (the encoded bytes, uint8). The blocks include the cases where the rounding rules matter:
all zeros, exact halves, a tie in magnitude between a positive and a negative value (Q4_0 takes the
first), the largest magnitude negative or positive (Q4_0's scale sign), and tiny / huge scales."""
import os
from importlib.metadata import version

import gguf
import numpy as np
from gguf.quants import quantize
from safetensors.numpy import save_file

rng = np.random.default_rng(20251129)
blocks = [
    rng.standard_normal(32 * 24).astype(np.float32).reshape(-1, 32),
    np.zeros((1, 32), np.float32),
    # multiples of 0.5 of a scale of 1/127 and 1/8: the x/d products land on halves
    (np.arange(32, dtype=np.float32) - 16) / 2 * (127 / 16 / 127),
    np.linspace(-8, 7, 32, dtype=np.float32)[None, :],
    np.concatenate([[3.0, -3.0], rng.uniform(-1, 1, 30)]).astype(np.float32)[None, :],
    np.concatenate([[-3.0, 3.0], rng.uniform(-1, 1, 30)]).astype(np.float32)[None, :],
    (rng.standard_normal(32) * 1e-6).astype(np.float32)[None, :],
    (rng.standard_normal(32) * 3e3).astype(np.float32)[None, :],
    (np.arange(32, dtype=np.float32) - 15.5)[None, :] * 0.25,
]
x = np.concatenate([b.reshape(-1, 32) for b in blocks]).astype(np.float32)
out = {
    "x": x.reshape(-1),
    "q8_0": quantize(x, gguf.GGMLQuantizationType.Q8_0).reshape(-1).astype(np.uint8),
    "q4_0": quantize(x, gguf.GGMLQuantizationType.Q4_0).reshape(-1).astype(np.uint8),
}
path = os.path.join(os.path.dirname(__file__), "fixtures", "gguf", "quant.safetensors")
os.makedirs(os.path.dirname(path), exist_ok=True)
save_file(out, path, metadata={"gguf": version("gguf")})
print(path, x.shape, {k: v.shape for k, v in out.items()})
