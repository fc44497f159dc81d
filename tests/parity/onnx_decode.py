"""Runs a mamba-slm ONNX export in onnxruntime and compares it with the engine's numbers.

Usage: onnx_decode.py EXPORT_DIR REFERENCE.json
REFERENCE.json (written by tests/unit/test_onnx_export.cpp): {"prompts": [[ids...], ...] (one per
sequence, equal lengths), "steps": total steps, "logits": [step][seq][vocab], "tokens": [step][seq]
(the token fed at each step: the prompt, then the engine's greedy choices), "atol", "rtol"}.

All sequences run as one batch, step by step from an empty state (zero-length KV caches, zero conv /
SSM states); the fed tokens are ORT's own greedy choices after the prompt, so a diverging argmax
shows up as a token mismatch. Exit 0: all match; 1: mismatch (reported); 77: onnx / onnxruntime
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


def main():
    export_dir, ref_path = sys.argv[1], sys.argv[2]
    ref = json.load(open(ref_path))
    path = f"{export_dir}/model.onnx"
    onnx.checker.check_model(onnx.load(path), full_check=True)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    prompts = ref["prompts"]
    batch, plen, steps = len(prompts), len(prompts[0]), ref["steps"]
    atol, rtol = ref["atol"], ref["rtol"]

    state = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            shape = [batch if d == "batch_size" else 0 if isinstance(d, str) else d for d in i.shape]
            state[i.name] = np.zeros(shape, dtype=np.float32)
    names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]

    tokens = np.array([p[0] for p in prompts], dtype=np.int64)
    worst = 0.0
    for t in range(steps):
        if tokens.tolist() != ref["tokens"][t]:
            print(f"step {t}: ORT's greedy tokens {tokens.tolist()} differ from the engine's {ref['tokens'][t]}")
            return 1
        feed = {"input_ids": tokens.reshape(batch, 1)}
        if "attention_mask" in names:
            feed["attention_mask"] = np.ones((batch, t + 1), dtype=np.int64)
        if "position_ids" in names:
            feed["position_ids"] = np.full((batch, 1), t, dtype=np.int64)
        feed.update(state)
        outs = dict(zip(out_names, sess.run(out_names, feed)))
        logits = outs["logits"][:, 0, :]
        want = np.array(ref["logits"][t], dtype=np.float32)
        scale = float(np.abs(want).max())
        err = float(np.abs(logits - want).max())
        worst = max(worst, err / max(scale, 1e-30))
        if err > atol + rtol * scale:
            print(f"step {t}: max |logit difference| {err:.3g} above {atol} + {rtol}·{scale:.3g}")
            return 1
        for name in list(state):
            state[name] = outs["present." + name[len("past_key_values."):]]
        if t + 1 < plen:
            tokens = np.array([p[t + 1] for p in prompts], dtype=np.int64)
        else:
            tokens = logits.argmax(axis=-1).astype(np.int64)
    print(f"ok: {steps} steps x {batch} sequences, worst max|diff|/max|logit| {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
