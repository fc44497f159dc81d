#!/usr/bin/env python3
"""PyTorch anchors on the GPU that our CUDA numbers are compared with (docs/PERFORMANCE.md, issue 6),
run in the same GPU job as bench_cuda_model:

1. a GPT-2-124M-size transformer (12 layers, d 768, 12 heads, vocab 50304) written here with
   F.scaled_dot_product_attention (causal), bf16 autocast, torch.compile and fused AdamW: training
   tokens/s (forward, backward and optimizer step) and peak memory;
2. transformers' Mamba2ForCausalLM with the 130m shape (24 layers, d 768, d_state 128, head_dim 64),
   bf16 autocast, without the mamba-ssm / causal-conv1d kernels (transformers' torch path): training
   tokens/s, and batch-1 greedy decoding with generate().

    python bench/torch_reference.py [--shapes 16x1024,4x4096] [--steps 10] [--mamba-shape 2x1024]
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab=50304, d=768, layers=12, heads=12, max_len=8192):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def train_rate(model, vocab, B, T, steps, compile_model):
    dev = "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model) if compile_model else model
    idx = torch.randint(0, vocab, (B, T), device=dev)
    tgt = torch.randint(0, vocab, (B, T), device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fwd(idx, tgt)
        loss = out if torch.is_tensor(out) else out.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # compilation and warm-up
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    return B * T / sec, sec, torch.cuda.max_memory_allocated() / 2**30


def sdpa_anchor(tokens=16384, heads=12):
    """torch's SDPA (flash / cuDNN backends as torch picks them), causal, bf16, on bench_cuda_attention's
    shapes; FLOPs 4·B·H·T²·Dh/2 forward, 3.5× that forward + backward."""
    import torch.nn.functional as F
    print(f"# torch {torch.__version__} SDPA on {torch.cuda.get_device_name()}, {tokens} tokens, {heads} heads, causal, bf16")
    print("| T | Dh | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for Dh in (64, 128):
        for T in (2048, 8192):
            B = tokens // T
            q, k, v = (torch.randn(B, heads, T, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            flops = 4 * B * heads * T * T * Dh / 2

            def fwd():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def fwd_bwd():
                out = fwd()
                out.backward(torch.ones_like(out))

            times = []
            for fn in (fwd, fwd_bwd):
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(20):
                    fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 20)
            print(f"| {T} | {Dh} | {times[0]:.3f} | {flops / times[0] / 1e9:.1f} | {times[1]:.3f} | {3.5 * flops / times[1] / 1e9:.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="16x1024,4x4096")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--mamba-shape", default="2x1024")
    ap.add_argument("--mamba-steps", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=2048)
    ap.add_argument("--inference-only", action="store_true", help="only the Mamba2ForCausalLM generate() and prefill anchors")
    ap.add_argument("--sdpa-only", action="store_true",
                    help="only scaled_dot_product_attention forward / forward+backward (the attention kernel anchor)")
    args = ap.parse_args()
    if args.sdpa_only:
        sdpa_anchor()
        return
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}")
    print("| model | B x T | tokens/s | ms/step | peak memory GiB |")
    print("|---|---|---|---|---|")
    gpt = GPT().cuda()
    n = sum(p.numel() for p in gpt.parameters())
    for shape in ([] if args.inference_only else args.shapes.split(",")):
        B, T = (int(v) for v in shape.split("x"))
        rate, sec, mem = train_rate(gpt, 50304, B, T, args.steps, True)
        print(f"| GPT-2 {n / 1e6:.0f}M, SDPA, compiled, fused AdamW | {B}x{T} | {rate:,.0f} | {sec * 1e3:.1f} | {mem:.2f} |",
              flush=True)
    del gpt
    torch.cuda.empty_cache()

    from transformers import Mamba2Config, Mamba2ForCausalLM
    cfg = Mamba2Config(vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128, expand=2,
                       head_dim=64, num_heads=24, n_groups=1, chunk_size=256, tie_word_embeddings=True)
    m = Mamba2ForCausalLM(cfg).cuda()
    n = sum(p.numel() for p in m.parameters())
    B, T = (int(v) for v in args.mamba_shape.split("x"))

    class Wrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx, tgt):
            return self.inner(input_ids=idx, labels=tgt).loss

    if not args.inference_only:
        rate, sec, mem = train_rate(Wrap(m), 50288, B, T, args.mamba_steps, False)
        print(f"| transformers Mamba2ForCausalLM {n / 1e6:.0f}M (torch path) | {B}x{T} | {rate:,.0f} | {sec * 1e3:.0f} | {mem:.2f} |",
          flush=True)

    m = m.to(torch.bfloat16).eval()
    prompt = torch.randint(0, 50288, (1, 16), device="cuda")
    with torch.no_grad():
        m.generate(prompt, max_new_tokens=8, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = m.generate(prompt, max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens,
                         do_sample=False)
        torch.cuda.synchronize()
        sec = time.perf_counter() - t0
    new = out.shape[1] - prompt.shape[1]
    print(f"\nMamba2ForCausalLM bf16 generate(), batch 1, greedy: {new / sec:.1f} tokens/s ({new} tokens, 16-token prompt)")
    long = torch.randint(0, 50288, (1, args.prefill_tokens), device="cuda")
    with torch.no_grad():
        m(input_ids=long)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            m(input_ids=long)
        torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / reps
    print(f"Mamba2ForCausalLM bf16 forward (prefill) of {args.prefill_tokens} tokens, batch 1: {args.prefill_tokens / sec:,.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
