#!/usr/bin/env python3
"""bitsandbytes-quantized model directories saved by transformers, for `mamba-slm quantize` and the loader.

    ~/.cache/mamba-slm/venv/bin/pip install bitsandbytes accelerate   # 0.50.2 / 1.15.0 made the files
    ~/.cache/mamba-slm/venv/bin/python tests/parity/make_bnb_model_fixtures.py
    ~/.cache/mamba-slm/venv/bin/python tests/parity/make_bnb_model_fixtures.py --check DIR [DIR ...]

For each case, transformers (5.24) quantizes a committed HF fixture model (tests/parity/fixtures/<base>)
on the CPU with `BitsAndBytesConfig` and `save_pretrained`s it to
tests/parity/fixtures/bnb_models/<case>/{config.json, model.safetensors}. Then:

- it reloads that directory with `from_pretrained` (the pre-quantized path a user takes) and checks the
  reloaded model gives the same logits as the one that quantized;
- expected.safetensors holds `input_ids` (the base fixture's ids), `logits` (the quantized model as
  transformers runs it, fp32, eval, use_cache=False, eager attention) and `logits_dequant` (the base
  fp32 model with every quantized weight replaced by `transformers.integrations.dequantize_bnb_weight`
  of the saved one).

For 4-bit weights bitsandbytes' CPU forward *is* dequantize-then-fp32-linear (`gemv_4bit` / `MatMul4Bit`
on the default backend; the AVX512-BF16 repacking path that 0.50 takes in eval mode on such CPUs is
switched off, see `load`), and the script asserts `logits == logits_dequant` to fp32 rounding. For int8,
bitsandbytes' inference forward (`MatMul8bitLt`) also quantizes the activations per token in fp16 and
splits off outlier columns (|x| >= llm_int8_threshold = 6.0), which mamba-slm does not do on load; the
C++ test therefore compares with `logits_dequant` and `logits` is kept for the record.

Double quantization: bitsandbytes' *native* CPU `quantize_blockwise` is not a nearest-code quantizer
(see make_bnb_fixtures.py), so on the CPU transformers would write nested absmax codes that neither
bitsandbytes' reference kernel nor its CUDA kernel produce. As in make_bnb_fixtures.py, the reference
kernel is registered for the CPU first, so the files are what bitsandbytes writes on a GPU.

`--check DIR ...` loads directories written by `mamba-slm quantize` from one of the base fixtures with
transformers + bitsandbytes and prints the largest logit difference to the same case's
`logits_dequant` (the names of the directories' bases are read from their config).

The output is byte-reproducible.
"""
import os

os.environ["USE_HUB_KERNELS"] = "NO"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import bitsandbytes  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402
from transformers.integrations.bitsandbytes import dequantize_bnb_weight  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OUT = FIXTURES / "bnb_models"
MAX_CASE_BYTES = 1024 * 1024

# `mamba-slm quantize`'s default skip list (src/quant/bnb_model.h): transformers' own default (the LM
# head) plus the Mamba-1 dt_proj, whose weight transformers' MambaMixer reads as a plain matrix
# (`self.dt_proj.weight @ ...`), so a quantized one cannot run there.
SKIP = ["lm_head", "dt_proj"]

# case, base fixture, BitsAndBytesConfig arguments
CASES = [
    ("hybrid_nf4_dq", "hybrid", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)),
    ("mamba2_fp4", "mamba2", dict(load_in_4bit=True, bnb_4bit_quant_type="fp4")),
    ("jamba_fp4_dq", "jamba", dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True)),
    ("mamba1_int8", "mamba1", dict(load_in_8bit=True)),
    ("hybrid_int8", "hybrid", dict(load_in_8bit=True)),
]


def use_reference_quantize_blockwise():
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    torch.library.register_kernel("bitsandbytes::quantize_blockwise", "cpu")(
        lambda A, code, blocksize: op.redispatch(keys, A, code, blocksize))


def load(path, **kw):
    m = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **kw)
    for module in m.modules():
        # On an AVX512-BF16 CPU, Linear4bit's eval forward repacks its weight for a bf16 kernel
        # (and asserts out_features % 32 == 0). Off, the forward is bitsandbytes' default path.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return m.eval()


@torch.no_grad()
def logits_of(model, ids):
    return model(input_ids=ids.long(), use_cache=False).logits.float().contiguous()


@torch.no_grad()
def dequantized_logits(base, quantized, ids):
    """The base fp32 model with each quantized weight replaced by bitsandbytes' dequantization."""
    model = load(FIXTURES / base, dtype=torch.float32)
    params = dict(model.named_parameters())
    replaced = 0
    for name, module in quantized.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.nn.Parameter) and w.__class__.__name__ in ("Params4bit", "Int8Params"):
            state = getattr(module, "state", None)
            dq = dequantize_bnb_weight(w, state).float().reshape(params[name + ".weight"].shape)
            params[name + ".weight"].copy_(dq)
            replaced += 1
    assert replaced > 0
    return logits_of(model, ids)


def base_ids(base):
    with safe_open(FIXTURES / base / "expected.safetensors", "pt") as f:
        return f.get_tensor("input_ids")


def make_case(case, base, qargs):
    out = OUT / case
    shutil.rmtree(out, ignore_errors=True)
    qc = BitsAndBytesConfig(llm_int8_skip_modules=SKIP, **qargs)
    quantized = load(FIXTURES / base, quantization_config=qc)
    quantized.save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)
    ids = base_ids(base)
    logits = logits_of(quantized, ids)
    reloaded = load(out)
    assert torch.equal(logits_of(reloaded, ids), logits), f"{case}: the reloaded directory gives other logits"
    logits_dq = dequantized_logits(base, reloaded, ids)
    err = (logits - logits_dq).abs().max().item() / logits_dq.abs().max().item()
    if qargs.get("load_in_4bit"):
        assert err < 1e-6, f"{case}: bnb's 4-bit forward is not dequantize + fp32 linear ({err})"
    save_file({"input_ids": ids, "logits": logits, "logits_dequant": logits_dq}, out / "expected.safetensors",
              metadata={"base": base, "versions": f"transformers={transformers.__version__} "
                        f"bitsandbytes={bitsandbytes.__version__} torch={torch.__version__}"})
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size < MAX_CASE_BYTES, f"{case}: {size} bytes"
    print(f"{case}: {size} bytes, logits vs dequantized fp32 model: {err:.2e} (relative to max |logit|)")


def check(dirs):
    """Loads directories written by `mamba-slm quantize` with transformers + bitsandbytes."""
    for d in dirs:
        d = Path(d)
        model = load(d)
        model_type = json.loads((d / "config.json").read_text())["model_type"]
        base = {"bamba": "hybrid", "mamba": "mamba1", "mamba2": "mamba2", "jamba": "jamba"}[model_type]
        ids = base_ids(base)
        logits = logits_of(model, ids)
        ref = dequantized_logits(base, model, ids)
        n_q = sum(1 for m in model.modules() if m.__class__.__name__ in ("Linear4bit", "Linear8bitLt"))
        err = (logits - ref).abs().max().item() / ref.abs().max().item()
        print(f"{d}: transformers loaded it ({n_q} bitsandbytes linear layers); logits vs its dequantized "
              f"fp32 model: {err:.2e}")


def main():
    use_reference_quantize_blockwise()
    torch.manual_seed(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        check(sys.argv[2:])
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for case, base, qargs in CASES:
        make_case(case, base, qargs)


if __name__ == "__main__":
    main()
