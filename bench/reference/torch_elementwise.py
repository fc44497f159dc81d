#!/usr/bin/env python3
"""Anchor for bench_cuda_elementwise: PyTorch's own CUDA kernels for the same ops and sizes
(F.silu, silu backward via autograd's formula, SwiGLU as silu(gate) * up, y.add_(x)), timed with
CUDA events. Prints rows in bench_cuda_elementwise's table format."""
import sys

import torch
import torch.nn.functional as F


def time_ms(fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters


def row(op, dtype, n, nbytes, ms):
    print(f"| {op:<15} | {dtype:<5} | {n:>10} | {ms * 1e3:9.1f} | {nbytes / (ms * 1e-3) / 1e9:7.0f} |")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 26
    F_ = 8192
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, n = {n}\n")
    print("| op              | dtype |          n |   time µs |    GB/s |")
    print("| --------------- | ----- | ---------: | --------: | ------: |")
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        sz = torch.empty((), dtype=dt).element_size()
        a = torch.full((n,), 0.75, device="cuda", dtype=dt)
        g = torch.full((n,), 0.75, device="cuda", dtype=dt)
        gu = torch.full((n // F_, 2 * F_), 0.75, device="cuda", dtype=dt)
        row("torch silu fwd", name, n, 2 * n * sz, time_ms(lambda: F.silu(a)))
        # silu backward as PyTorch's autograd computes it (one fused kernel).
        row("torch silu bwd", name, n, 3 * n * sz,
            time_ms(lambda: torch.ops.aten.silu_backward(g, a)))
        row("torch swiglu fwd", name, n, 3 * n * sz,
            time_ms(lambda: F.silu(gu[:, :F_]) * gu[:, F_:]))
        y = torch.zeros(n, device="cuda", dtype=dt)
        row("torch axpy", name, n, 3 * n * sz, time_ms(lambda: y.add_(a, alpha=1.0)))


if __name__ == "__main__":
    main()
