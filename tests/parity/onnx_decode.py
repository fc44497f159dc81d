"""Runs a mamba-slm ONNX export in onnxruntime and compares it with the engine's numbers.

Usage: onnx_decode.py EXPORT_DIR REFERENCE.json
REFERENCE.json (written by tests/unit/test_onnx_export.cpp): {"prompts": [[ids...], ...] (one per
sequence, equal lengths), "steps": total steps, "logits": [step][seq][vocab], "tokens": [step][seq]
(the token fed at each step: the prompt, then the engine's greedy choices), "prefill_logits":
[seq][position][vocab] (the engine's parallel prefill of each prompt), "atol", "rtol"}; for a
quantized export also "fp32_prefill_logits" (the fp32 model's prefill) and "fp32_rtol", the bound on
max|ORT − fp32| / max|fp32 logit| (the tight comparison is against the engine on the same
dequantized weights).

Two runs, all sequences as one batch: (1) model.onnx step by step from an empty state (zero-length KV
caches, zero conv / SSM states); (2) model_prefill.onnx over the whole prompts, then model.onnx
continuing from the prefill graph's present states. The tokens fed after the prompt are ORT's own
greedy choices, so a diverging argmax shows up as a token mismatch. Exit 0: all match; 1: mismatch (reported); 77: onnx / onnxruntime
missing (the caller skips).
"""
import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:  # the C++ test turns this into a visible skip
    print(f"skip: {e}")
    sys.exit(77)


def session(path):
    onnx.checker.check_model(onnx.load(path), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def compare(what, got, want, atol, rtol):
    """Returns the error relative to the logits' scale, or None (after reporting) when out of tolerance."""
    want = np.asarray(want, dtype=np.float32)
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    if err > atol + rtol * scale:
        print(f"{what}: max |logit difference| {err:.3g} above {atol} + {rtol}·{scale:.3g}")
        return None
    return err / max(scale, 1e-30)


def main():
    export_dir, ref_path = sys.argv[1], sys.argv[2]
    ref = json.load(open(ref_path))
    sess = session(f"{export_dir}/model.onnx")
    prefill = session(f"{export_dir}/model_prefill.onnx")
    prompts = ref["prompts"]
    batch, plen, steps = len(prompts), len(prompts[0]), ref["steps"]
    atol, rtol = ref["atol"], ref["rtol"]

    state = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            shape = [batch if d == "batch_size" else 0 if isinstance(d, str) else d for d in i.shape]
            state[i.name] = np.zeros(shape, dtype=np.float32)
    empty = dict(state)
    names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]

    # (2a) the prefill graph over the whole prompts.
    ids = np.array(prompts, dtype=np.int64)
    feed = {"input_ids": ids}
    if "attention_mask" in names:
        feed["attention_mask"] = np.ones((batch, plen), dtype=np.int64)
    if "position_ids" in names:
        feed["position_ids"] = np.tile(np.arange(plen, dtype=np.int64), (batch, 1))
    feed.update(empty)
    pre_names = [o.name for o in prefill.get_outputs()]
    pre = dict(zip(pre_names, prefill.run(pre_names, feed)))
    worst_prefill = compare("prefill", pre["logits"], ref["prefill_logits"], atol, rtol)
    if worst_prefill is None:
        return 1
    fp32_note = ""
    if "fp32_prefill_logits" in ref:
        dist = compare("prefill vs the fp32 model", pre["logits"], ref["fp32_prefill_logits"], 0.0, ref["fp32_rtol"])
        if dist is None:
            return 1
        fp32_note = f"; vs fp32 {dist:.3g} (bound {ref['fp32_rtol']})"

    def decode_step(tokens, t, state):
        """One step of the decode graph at position t; the state dict moves on to the present.* outputs."""
        feed = {"input_ids": tokens.reshape(batch, 1)}
        if "attention_mask" in names:
            feed["attention_mask"] = np.ones((batch, t + 1), dtype=np.int64)
        if "position_ids" in names:
            feed["position_ids"] = np.full((batch, 1), t, dtype=np.int64)
        feed.update(state)
        outs = dict(zip(out_names, sess.run(out_names, feed)))
        for name in list(state):
            state[name] = outs["present." + name[len("past_key_values."):]]
        return outs["logits"][:, 0, :]

    tokens = np.array([p[0] for p in prompts], dtype=np.int64)
    worst = 0.0
    for t in range(steps):
        if tokens.tolist() != ref["tokens"][t]:
            print(f"step {t}: ORT's greedy tokens {tokens.tolist()} differ from the engine's {ref['tokens'][t]}")
            return 1
        logits = decode_step(tokens, t, state)
        err = compare(f"step {t}", logits, ref["logits"][t], atol, rtol)
        if err is None:
            return 1
        worst = max(worst, err)
        if t + 1 < plen:
            tokens = np.array([p[t + 1] for p in prompts], dtype=np.int64)
        else:
            tokens = logits.argmax(axis=-1).astype(np.int64)

    # (2b) decoding continues from the prefill graph's states.
    state = {name: pre["present." + name[len("past_key_values."):]] for name in empty}
    tokens = pre["logits"][:, -1, :].argmax(axis=-1).astype(np.int64)
    for t in range(plen, steps):
        if tokens.tolist() != ref["tokens"][t]:
            print(f"after prefill, step {t}: ORT's greedy tokens {tokens.tolist()} differ from {ref['tokens'][t]}")
            return 1
        logits = decode_step(tokens, t, state)
        err = compare(f"after prefill, step {t}", logits, ref["logits"][t], atol, rtol)
        if err is None:
            return 1
        worst = max(worst, err)
        tokens = logits.argmax(axis=-1).astype(np.int64)
    print(f"ok: {steps} steps x {batch} sequences, step-by-step and prefill + decode; worst max|diff|/max|logit| "
          f"{worst:.3g} (prefill {worst_prefill:.3g}){fp32_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
