"""Reference benchmark: ONNX Runtime (CPU) on a `mamba-slm export --format onnx` directory.

Usage: bench_onnx_decode.py EXPORT_DIR [--threads N] [--prompt T] [--decode-prompt P] [--tokens N]
                            [--repeats R] [--json]

Times, batch 1 on the CPU execution provider with N intra-op threads:
  prefill  model_prefill.onnx over a prompt of T random tokens from an empty state (one call);
           tokens/s = T / the median call time over R repetitions after one untimed call;
  decode   model.onnx, greedy, N steps continuing from the prefill of the first P tokens (default
           P = T), the logits' argmax fed back each step as generation would; tokens/s = N / the time
           of the N steps (median of R).
Random token ids: the speed does not depend on them. Prints one markdown table, or with --json one
JSON object (what `mamba-slm bench --onnx` reads). Exit 77 when onnxruntime / numpy are not
importable, after printing why.
"""
import argparse
import json
import os
import statistics
import sys
import time

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    print(e)
    sys.exit(77)


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def weights_kind(path):
    """f32, int8 (DequantizeLinear) or q4 (MatMulNBits), from the op types named in the graph."""
    with open(path, "rb") as f:
        data = f.read()
    if b"MatMulNBits" in data:
        return "q4"
    if b"DequantizeLinear" in data:
        return "int8"
    return "f32"


def empty_state(sess):
    state = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            shape = [1 if d == "batch_size" else 0 if isinstance(d, str) else d for d in i.shape]
            state[i.name] = np.zeros(shape, dtype=np.float32)
    return state


def feed_for(names, ids, past_len, state):
    """Inputs of one call for batch 1: ids (1, n) at positions past_len .. past_len + n − 1."""
    n = ids.shape[1]
    feed = {"input_ids": ids}
    if "attention_mask" in names:
        feed["attention_mask"] = np.ones((1, past_len + n), dtype=np.int64)
    if "position_ids" in names:
        feed["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64).reshape(1, n)
    feed.update(state)
    return feed


def next_state(outs, out_names, state):
    got = dict(zip(out_names, outs))
    return {name: got["present." + name[len("past_key_values."):]] for name in state}, got["logits"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (default: all cores)")
    ap.add_argument("--prompt", type=int, default=128, help="prefill tokens (default 128)")
    ap.add_argument("--decode-prompt", type=int, default=0,
                    help="tokens prefilled before the timed decode steps (default: --prompt)")
    ap.add_argument("--tokens", type=int, default=32, help="timed decode steps (default 32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported (default 3)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    a.decode_prompt = a.decode_prompt or a.prompt
    for what, v in (("--decode-prompt", a.decode_prompt), ("--threads", a.threads), ("--prompt", a.prompt), ("--tokens", a.tokens), ("--repeats", a.repeats)):
        if v < 1:
            ap.error(f"{what} must be at least 1 (got {v})")

    step_path = os.path.join(a.export_dir, "model.onnx")
    prefill_path = os.path.join(a.export_dir, "model_prefill.onnx")
    for p in (step_path, prefill_path):
        if not os.path.exists(p):
            print(f"{p}: missing (expected a `mamba-slm export --format onnx` directory)")
            return 2
    with open(os.path.join(a.export_dir, "genai_config.json")) as f:
        genai = json.load(f)
    vocab = genai["model"]["vocab_size"]
    context = genai["model"]["context_length"]
    if max(a.prompt, a.decode_prompt + a.tokens) > context:
        print(f"--prompt {a.prompt} / --decode-prompt {a.decode_prompt} + --tokens {a.tokens} exceed the model's "
              f"context_length {context}")
        return 2

    step = session(step_path, a.threads)
    prefill = session(prefill_path, a.threads)
    names = {i.name for i in step.get_inputs()}
    step_out = [o.name for o in step.get_outputs()]
    pre_out = [o.name for o in prefill.get_outputs()]
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, vocab, size=(1, max(a.prompt, a.decode_prompt)), dtype=np.int64)

    def run_prefill(n=a.prompt):
        state = empty_state(step)
        return next_state(prefill.run(pre_out, feed_for(names, prompt[:, :n], 0, state)), pre_out, state)

    run_prefill()  # untimed: allocations, kernel selection
    prefill_s = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        state, logits = run_prefill()
        prefill_s.append(time.perf_counter() - t0)

    state, logits = run_prefill(a.decode_prompt)

    def run_decode(state, logits):
        pos = a.decode_prompt
        tok = logits[:, -1, :].argmax(axis=-1).reshape(1, 1).astype(np.int64)
        for _ in range(a.tokens):
            state, logits = next_state(step.run(step_out, feed_for(names, tok, pos, state)), step_out, state)
            tok = logits[:, -1, :].argmax(axis=-1).reshape(1, 1).astype(np.int64)
            pos += 1

    run_decode(state, logits)  # untimed
    decode_s = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        run_decode(state, logits)
        decode_s.append(time.perf_counter() - t0)

    r = {
        "runtime": f"onnxruntime {ort.__version__}",
        "threads": a.threads,
        "weights": weights_kind(step_path),
        "prefill_tokens": a.prompt,
        "prefill_tokens_per_s": a.prompt / statistics.median(prefill_s),
        "decode_prompt": a.decode_prompt,
        "decode_tokens": a.tokens,
        "decode_tokens_per_s": a.tokens / statistics.median(decode_s),
    }
    if a.json:
        print(json.dumps(r))
    else:
        print(f"| runtime | weights | threads | prefill tok/s ({a.prompt} tokens) | decode tok/s (batch 1, "
              f"after {a.decode_prompt}) |")
        print("|---|---|---|---|---|")
        print(f"| {r['runtime']} | {r['weights']} | {a.threads} | {r['prefill_tokens_per_s']:.0f} | "
              f"{r['decode_tokens_per_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
