#!/usr/bin/env python3
"""Anchor for bench_decode: transformers' own prefill and generate() on random-weight models with the
shapes of mamba-slm's presets, on the CPU (the pure-PyTorch paths: no mamba_ssm / causal_conv1d).
Prints rows in bench_decode's table format.

- tiny, 30m, 130m: BambaForCausalLM built as bench/reference/hf_cpu_throughput.py builds it.
- mamba-130m: MambaForCausalLM (24 layers, d_model 768, d_state 16, expand 2, dt_rank 48,
  vocab 50280, tied embeddings), the state-spaces/mamba-130m shape.
- mamba2-130m: Mamba2ForCausalLM (24 layers, d_model 768, d_state 128, head_dim 64 so 24 heads,
  1 group, expand 2, chunk 256, vocab 50280, tied embeddings), the state-spaces/mamba2-130m shape.

prefill tok/s: one forward of the prompt (batch 1) with use_cache=True and logits_to_keep=1, which is
what generate() runs first and what llama.cpp and bench_decode time (logits of the last position).
decode tok/s at batch B: one generate() of 64 new tokens (greedy, use_cache=True, min_new_tokens =
max_new_tokens so that no row stops early) with a logits processor that only notes the time of each
call: generate() calls it once after the prefill and once after each of the 63 decoding steps, so
B * 63 / (last call - first call) is the per-step rate of the recurrent/KV-cache path after the same
prompt bench_decode uses, without the prefill. Each figure is the median of --repeats runs after a
warm-up.

    python bench/reference/hf_generate_speed.py --presets mamba-130m,mamba2-130m --threads 1,2
    python bench/reference/hf_generate_speed.py --save /tmp/hf_models --presets mamba-130m,mamba2-130m
"""
import argparse
import os
import statistics
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_cpu_throughput import PRESETS as HYBRID_PRESETS  # noqa: E402
from hf_cpu_throughput import build as build_bamba  # noqa: E402

# Mirrors src/model/config.cpp: pure_mamba(version, 768, 24, d_state), max_seq_len 2048.
PURE = {
    "mamba-130m": dict(version=1, d=768, layers=24, d_state=16, vocab=50280, max_seq=2048),
    "mamba2-130m": dict(version=2, d=768, layers=24, d_state=128, vocab=50280, max_seq=2048),
}
# The hybrid presets' max_seq_len (bench_decode caps the prompt at half of it).
HYBRID_MAX_SEQ = {"tiny": 256, "30m": 2048, "130m": 4096}


def build(name):
    torch.manual_seed(0)
    if name in HYBRID_PRESETS:
        return build_bamba(HYBRID_PRESETS[name]), HYBRID_PRESETS[name]["vocab"], HYBRID_MAX_SEQ[name]
    p = PURE[name]
    common = dict(vocab_size=p["vocab"], hidden_size=p["d"], num_hidden_layers=p["layers"], state_size=p["d_state"],
                  expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True, tie_word_embeddings=True,
                  layer_norm_epsilon=1e-5, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    if p["version"] == 1:
        cfg = transformers.MambaConfig(**common, time_step_rank="auto")
        model = transformers.MambaForCausalLM(cfg)
    else:
        head_dim = 64
        cfg = transformers.Mamba2Config(**common, num_heads=2 * p["d"] // head_dim, head_dim=head_dim, n_groups=1,
                                        chunk_size=256)
        model = transformers.Mamba2ForCausalLM(cfg)
    # llama.cpp's converter pads Mamba-2's vocabulary to a multiple of 16 unless the config says otherwise;
    # 50280 is already a multiple of 8, so this keeps the GGUF's vocabulary equal to ours.
    model.config.pad_vocab_size_multiple = 8
    return model.float().eval(), p["vocab"], p["max_seq"]


class StepClock(transformers.LogitsProcessor):
    """Notes when generate() asks for the next token's scores; changes nothing."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,30m,130m,mamba-130m,mamba2-130m")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--save", help="only save_pretrained each model into SAVE/<preset> (for llama.cpp's converter)")
    a = ap.parse_args()
    if a.save:
        for name in a.presets.split(","):
            model, _, _ = build(name)
            out = os.path.join(a.save, name)
            model.save_pretrained(out)
            print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {out}")
        return
    batches = [int(b) for b in a.batches.split(",")]
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, fp32, generate() greedy")
    print("| preset | params | threads | prompt | prefill tok/s | " +
          " | ".join(f"decode b={b} tok/s" for b in batches) + " |")
    print("|---|---|---|---|---|" + "---|" * len(batches))
    for name in a.presets.split(","):
        model, vocab, max_seq = build(name)
        n_params = sum(p.numel() for p in model.parameters())
        prompt = min(a.prompt, max_seq // 2)
        steps = min(a.steps, max_seq - prompt)
        g = torch.Generator().manual_seed(1)
        ids = {b: torch.randint(1, vocab, (b, prompt), generator=g) for b in batches}
        for th in map(int, a.threads.split(",")):
            torch.set_num_threads(th)

            def prefill():
                with torch.no_grad():
                    model(input_ids=ids[1], use_cache=True, logits_to_keep=1)

            def decode_seconds(x, n):
                clock = StepClock()
                with torch.no_grad():
                    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                         do_sample=False, use_cache=True, pad_token_id=0,
                                         logits_processor=transformers.LogitsProcessorList([clock]))
                assert out.shape[1] == x.shape[1] + n and len(clock.times) == n
                return clock.times[-1] - clock.times[0]

            t_prefill = median_seconds(prefill, a.repeats)
            decode_seconds(ids[1][:, :16], 4)  # warm-up of the decoding path
            decode = []
            for b in batches:
                t = statistics.median(decode_seconds(ids[b], steps) for _ in range(a.repeats))
                decode.append(b * (steps - 1) / t)
            print(f"| {name} (HF {type(model).__name__}) | {n_params / 1e6:.1f}M | {th} | {prompt} | "
                  f"{prompt / t_prefill:.0f} | " + " | ".join(f"{d:.1f}" for d in decode) + " |", flush=True)


if __name__ == "__main__":
    main()
