"""Fixtures for `mamba-slm export --format hf`: transformers loads our exports and we record what it
computes on them.

For each case this script
  1. makes a small native model with our own binary (`mamba-slm train --save-init`), then moves every
     parameter away from its structured init (norm weights 1, D 1, zero biases would hide a swapped
     or misplaced tensor) and rewrites it; the native directory is committed as
     fixtures/hf_export/<case>/native/ (the `trained` case exports fixtures/trained instead, a model
     trained with transformers);
  2. runs `mamba-slm export --format hf` on it;
  3. loads the export with AutoModelForCausalLM in fp32 (eager attention, CPU, one thread), asserts
     that no tensor is missing, unexpected or re-shaped, and records transformers' logits on fixed
     input ids;
  4. for a case with a tokenizer, loads AutoTokenizer from the export, checks that it encodes as the
     source tokenizer.json does, and records the rendered chat template;
  5. writes fixtures/hf_export/<case>/expected.safetensors (input_ids, logits) and expected.json
     (the source, the export arguments, the SHA-256 of every exported file transformers read).

tests/unit/test_hf_export.cpp re-exports the same sources, checks that the files hash the same, and
compares our logits with transformers'.

Usage: ~/.cache/mamba-slm/venv/bin/python tests/parity/make_hf_export_fixtures.py [--bin build/cpu/mamba-slm]
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "parity", "fixtures")
OUT = os.path.join(FIXTURES, "hf_export")

# Native configs (src/model/config.h). d_model 32, two to four layers, small vocabularies: each
# native directory stays far below 1 MB.
NATIVE = {
    # Pure Mamba-1, tied, with our own tokenizer, a chat template and a generation config.
    "mamba1": {
        "vocab_size": 300, "d_model": 32, "n_layers": 2, "layers": "MM",
        "mamba": {"version": 1, "d_state": 8, "d_conv": 4, "expand": 2, "dt_rank": 3},
        "mlp": None, "tie_embeddings": True, "norm_eps": 1e-5,
    },
    # Pure Mamba-2 with in/out projection biases, 2 groups, a dt clamp and chunks of 8 (T = 12 pads one).
    "mamba2": {
        "vocab_size": 64, "d_model": 32, "n_layers": 2, "layers": "MM",
        "mamba": {"version": 2, "d_state": 8, "d_conv": 4, "expand": 2, "head_dim": 8, "n_groups": 2,
                  "chunk_size": 8, "dt_limit": [0.0, 0.1], "proj_bias": True},
        "mlp": None, "tie_embeddings": False, "norm_eps": 1e-5,
    },
    # Mamba-1 + attention (Jamba): dt/B/C norms, GQA 4/2 without positions, SwiGLU, padding row 1.
    "jamba": {
        "vocab_size": 72, "d_model": 32, "n_layers": 3, "layers": "MAM",
        "mamba": {"version": 1, "d_state": 8, "d_conv": 4, "expand": 2, "dt_rank": 2, "dt_bc_norm": True},
        "attention": {"n_heads": 4, "n_kv_heads": 2, "position": "none"},
        "mlp": {"type": "swiglu", "d_ff": 48}, "tie_embeddings": False, "norm_eps": 1e-6,
        "embed_padding_idx": 1, "max_seq_len": 64,
    },
    # Mamba-2 + attention (Bamba): partial RoPE 6 of 8 dims (factor 0.75), theta 500, attention and
    # MLP biases, tied, no padding row.
    "bamba": {
        "vocab_size": 80, "d_model": 32, "n_layers": 4, "layers": "MMAM",
        "mamba": {"version": 2, "d_state": 8, "d_conv": 4, "expand": 2, "head_dim": 8, "n_groups": 2,
                  "chunk_size": 8},
        "attention": {"n_heads": 4, "n_kv_heads": 2, "position": "rope", "rope_theta": 500.0, "rotary_dim": 6,
                      "qkv_bias": True, "out_bias": True},
        "mlp": {"type": "swiglu", "d_ff": 48, "bias": True}, "tie_embeddings": True, "norm_eps": 1e-5,
        "max_seq_len": 64,
    },
}

# case -> (source directory relative to fixtures/hf_export, extra export arguments, HF class)
CASES = {
    "mamba1": ("mamba1/native", [], "MambaForCausalLM"),
    "mamba2": ("mamba2/native", [], "Mamba2ForCausalLM"),
    "jamba": ("jamba/native", [], "JambaForCausalLM"),
    "bamba": ("bamba/native", [], "BambaForCausalLM"),
    "bamba_bf16": ("bamba/native", ["--dtype", "bf16"], "BambaForCausalLM"),
    "trained": ("../trained", [], "BambaForCausalLM"),
}

TOKENIZER_TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and "
    "arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end them.\n"
) * 4
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CHAT = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "To be, or not?"},
        {"role": "assistant", "content": "To be."}, {"role": "user", "content": "Why?"}]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_native(binary, case, seed, tmp):
    """Initial native model from our binary, every tensor perturbed, plus tokenizer files for mamba1."""
    d = os.path.join(OUT, case, "native")
    shutil.rmtree(d, ignore_errors=True)
    cfg_path = os.path.join(tmp, f"{case}.config.json")
    with open(cfg_path, "w") as f:
        json.dump({"model_type": "mamba_slm", **NATIVE[case]}, f)
    train_path = os.path.join(tmp, f"{case}.train.json")
    with open(train_path, "w") as f:  # --save-init reads only model.* and seed
        json.dump({"model": {"config": cfg_path}, "data": "unused", "run_dir": "unused", "seed": seed}, f)
    run([binary, "train", "--config", train_path, "--save-init", d])

    weights = os.path.join(d, "model.safetensors")
    tensors = load_file(weights)
    rng = np.random.default_rng(seed)
    for name in sorted(tensors):
        w = tensors[name].astype(np.float64)
        rms = float(np.sqrt(np.mean(w * w)))
        # A tenth of the tensor's own scale (at least 0.05): every value differs from its
        # neighbours, and nothing leaves the range a trained model would have (A_log stays near
        # log(1..N), dt biases near softplus⁻¹(dt)).
        w = w + max(0.1 * rms, 0.05) * rng.standard_normal(w.shape)
        tensors[name] = w.astype(np.float32)
    save_file(tensors, weights, metadata={"format": "mamba_slm"})

    if case == "mamba1":
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            f.write(TOKENIZER_TEXT)
        run([binary, "tokenizer", "train", "--input", corpus, "--vocab-size", str(NATIVE[case]["vocab_size"]),
             "--special-tokens", "<|endoftext|>", "--out", os.path.join(d, "tokenizer.json"), "--quiet"])
        eot = Tokenizer.from_file(os.path.join(d, "tokenizer.json")).token_to_id("<|endoftext|>")
        with open(os.path.join(d, "chat_template.jinja"), "w") as f:
            f.write(CHAT_TEMPLATE)
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": eot, "eos_token_id": eot, "do_sample": True, "temperature": 0.8}, f, indent=2)


def check_case(binary, case, tmp):
    source_rel, args, cls = CASES[case]
    source = os.path.normpath(os.path.join(OUT, source_rel))
    export = os.path.join(tmp, f"{case}.export")
    run([binary, "export", "--format", "hf", "--model", source, "--out", export, *args])
    files = {name: sha256(os.path.join(export, name)) for name in sorted(os.listdir(export))}

    model, loading = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32, attn_implementation="eager",
                                                          output_loading_info=True)
    model.eval()
    assert type(model).__name__ == cls, (case, type(model).__name__)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not loading[key], (case, key, loading[key])
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    ids = torch.randint(0, vocab, (2, 12), generator=g)
    ids[0, 3] = 1  # the Jamba case's padding row; an ordinary token elsewhere
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits.float()
    assert torch.isfinite(logits).all()

    expected = {"source": source_rel, "args": args, "class": cls, "files": files,
                "transformers": transformers.__version__, "torch": torch.__version__}
    if os.path.exists(os.path.join(source, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(export)
        ref = Tokenizer.from_file(os.path.join(source, "tokenizer.json"))
        text = "Whether 'tis nobler, or not to be."
        assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text, add_special_tokens=False).ids
        rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        expected["chat"] = {"messages": CHAT, "add_generation_prompt": True, "text": rendered}
        print(f"  {case}: tokenizer loads; chat template renders {rendered!r}")

    os.makedirs(os.path.join(OUT, case), exist_ok=True)
    save_torch({"input_ids": ids.to(torch.int32).contiguous(), "logits": logits.contiguous()},
               os.path.join(OUT, case, "expected.safetensors"))  # no metadata: its key order is not stable
    with open(os.path.join(OUT, case, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")
    print(f"  {case}: {cls}, max |logit| {logits.abs().max().item():.3f}, files {', '.join(files)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "cpu", "mamba-slm"))
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(NATIVE):
            make_native(a.bin, case, 100 + i, tmp)
        for case in CASES:
            check_case(a.bin, case, tmp)


if __name__ == "__main__":
    main()
