#!/usr/bin/env python3
"""Anchor for bench_model: the same hybrid shapes as mamba-slm's presets, built as Hugging Face
BambaForCausalLM (Mamba-2 + attention + SwiGLU, transformers' pure-PyTorch path on the CPU), timed
for forward and forward+backward tokens/s. Prints rows in bench_model's table format.

    python bench/reference/hf_cpu_throughput.py --presets tiny,30m,130m --seq-lens 256,1024 --threads 1,2
"""
import argparse
import time

import torch
import transformers

# Mirrors src/model/config.cpp presets (d_model, layers, attention indices, d_state, head_dim,
# heads, kv heads, d_ff, vocab).
PRESETS = {
    "tiny": dict(d=64, layers="MMMA", d_state=16, head_dim=16, heads=4, kv=2, d_ff=128, vocab=512, chunk=32),
    "30m": dict(d=384, layers="MMMAMMMA", d_state=64, head_dim=64, heads=6, kv=2, d_ff=1024, vocab=32000, chunk=256),
    "130m": dict(d=768, layers="MMMAMMMAMMMA", d_state=128, head_dim=64, heads=12, kv=4, d_ff=2048, vocab=32000,
                 chunk=256),
}


def build(p):
    d_inner = 2 * p["d"]
    cfg = transformers.BambaConfig(
        vocab_size=p["vocab"], hidden_size=p["d"], intermediate_size=p["d_ff"],
        num_hidden_layers=len(p["layers"]), num_attention_heads=p["heads"], num_key_value_heads=p["kv"],
        attn_layer_indices=[i for i, c in enumerate(p["layers"]) if c == "A"],
        mamba_n_heads=d_inner // p["head_dim"], mamba_d_head=p["head_dim"], mamba_n_groups=1,
        mamba_d_state=p["d_state"], mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=p["chunk"],
        tie_word_embeddings=True, max_position_embeddings=8192)
    return transformers.BambaForCausalLM(cfg).float()


def time_per_call(fn, min_seconds):
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,30m,130m")
    ap.add_argument("--seq-lens", default="256,1024")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    a = ap.parse_args()
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, BambaForCausalLM (torch path)")
    print("| preset | params | T | batch | threads | forward tok/s | fwd+bwd tok/s |")
    print("|---|---|---|---|---|---|---|")
    for name in a.presets.split(","):
        torch.manual_seed(0)
        model = build(PRESETS[name])
        n_params = sum(p.numel() for p in model.parameters())
        for T in map(int, a.seq_lens.split(",")):
            ids = torch.randint(0, PRESETS[name]["vocab"], (a.batch, T))
            for th in map(int, a.threads.split(",")):
                torch.set_num_threads(th)
                model.eval()

                def fwd():
                    with torch.no_grad():
                        model(input_ids=ids, labels=ids, use_cache=False)

                def fwd_bwd():
                    model.zero_grad(set_to_none=True)
                    out = model(input_ids=ids, labels=ids, use_cache=False)
                    out.loss.backward()

                tf = time_per_call(fwd, a.min_seconds)
                tb = time_per_call(fwd_bwd, a.min_seconds)
                tok = a.batch * T
                print(f"| {name} (HF Bamba) | {n_params / 1e6:.1f}M | {T} | {a.batch} | {th} | {tok / tf:.0f} | "
                      f"{tok / tb:.0f} |", flush=True)


if __name__ == "__main__":
    main()
