"""The SSD anchor of issue 7: mamba-ssm's Triton kernels (mamba_chunk_scan_combined, forward and
forward + backward) on bench_cuda_ssd's shape, timed with CUDA events on the same GPU.

mamba-ssm is taken from its source distribution on the package index (no compiled extension is
built: only the pure-Python/Triton modules under mamba_ssm/ops/triton and mamba_ssm/utils are
imported, under an empty top-level package, so the CUDA extensions its __init__ would load are
never touched). einops comes from its wheel, imported straight from the zip.

    python3 ssd_triton_anchor.py --sdist mamba_ssm-2.3.2.post1.tar.gz --einops einops-0.8.2-py3-none-any.whl
"""
import argparse
import os
import sys
import tarfile
import tempfile


def import_triton_ssd(sdist, einops_wheel):
    sys.path.insert(0, einops_wheel)
    root = tempfile.mkdtemp(prefix="mamba_ssm_")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if "/mamba_ssm/ops/triton/" in m.name or "/mamba_ssm/utils/" in m.name]
        for m in members:
            m.name = m.name.split("/", 1)[1]  # drop the mamba_ssm-<version>/ prefix
            tar.extract(m, root)
    for package in ("mamba_ssm", "mamba_ssm/ops"):
        with open(os.path.join(root, package, "__init__.py"), "w"):
            pass
    sys.path.insert(0, root)
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    return mamba_chunk_scan_combined


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdist", required=True)
    ap.add_argument("--einops", required=True)
    ap.add_argument("--shape", default="8,2048,24,64,128,1,256", help="B,T,H,P,N,G,chunk")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    import torch
    scan = import_triton_ssd(args.sdist, args.einops)
    B, T, H, P, N, G, Q = (int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    dev, bf16 = "cuda", torch.bfloat16
    x = torch.randn(B, T, H, P, device=dev, dtype=bf16, requires_grad=True)
    dt = (torch.randn(B, T, H, device=dev, dtype=bf16) * 0.5).requires_grad_()
    A = (-torch.rand(H, device=dev, dtype=torch.float32) * 4 - 1).requires_grad_()
    Bm = torch.randn(B, T, G, N, device=dev, dtype=bf16, requires_grad=True)
    Cm = torch.randn(B, T, G, N, device=dev, dtype=bf16, requires_grad=True)
    D = torch.randn(H, device=dev, dtype=torch.float32, requires_grad=True)
    dt_bias = torch.randn(H, device=dev, dtype=torch.float32, requires_grad=True)

    def fwd():
        return scan(x, dt, A, Bm, Cm, chunk_size=Q, D=D, dt_bias=dt_bias, dt_softplus=True)

    dy = torch.randn(B, T, H, P, device=dev, dtype=bf16)

    def fwd_bwd():
        fwd().backward(dy)

    print(f"# mamba-ssm Triton SSD (mamba_chunk_scan_combined), torch {torch.__version__} on "
          f"{torch.cuda.get_device_name()}; B={B} T={T} H={H} P={P} N={N} G={G} chunk={Q}, bf16")
    for name, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        print(f"{name}: {start.elapsed_time(end) / args.reps:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
