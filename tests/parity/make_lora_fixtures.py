#!/usr/bin/env python3
"""Build PEFT LoRA parity fixtures for mamba-slm (tests/unit/test_lora_parity.cpp).

The base models are the committed HF fixtures (tests/parity/fixtures/{hybrid,mamba2,mamba1,jamba},
made by make_hf_fixtures.py). For each case below PEFT creates a LoRA adapter, B is randomised
(PEFT initialises B = 0, which would make every adapter a no-op), and this writes
tests/parity/fixtures/lora/<case>/:

  adapter_config.json, adapter_model.safetensors    PEFT's save_pretrained (base_model_name_or_path
                                                    made relative to the repository)
  expected.safetensors
      input_ids        I32 (B, T)   the base fixture's inputs
      logits           F32 (B, T, V) the PEFT model's logits on them (eval, fp32, use_cache=False)
      merged.<name>    F32          merge_and_unload()'s weight for every targeted HF module (cases
                                    with merged weights), under the HF tensor name

Case notes:
- mamba1_dt_proj targets dt_proj. transformers' Mamba-1 and Jamba mixers read `dt_proj.weight`
  directly (time_step = dt_proj.weight @ x) instead of calling the module, so PEFT's unmerged
  forward silently skips an adapter on dt_proj (PEFT's wrapper returns the base weight for
  `.weight`), while merge_and_unload() applies it. The script asserts exactly that, and the
  expected logits of this case are those of the merged model: mamba-slm applies a dt_proj adapter
  in its forward, as the merged model does.
- combined: three adapters one, two (both r = 2) and three (r = 3); PEFT's add_weighted_adapter
  makes "lin" = linear(one, two; 0.6, -1.1) and "cat" = cat(one, three; 0.8, 0.5). Sub-directories
  one/, two/, three/,
  lin/, cat/ hold the adapters (PEFT's save_pretrained(selected_adapters=...) writes them under
  the adapter's name); expected.safetensors holds logits_lin, logits_cat and merged.* of "cat".
- ours_cat: the adapter mamba-slm writes (`mamba-slm lora combine ... --combination cat` over
  combined/one and combined/three), loaded by PEFT (PeftModel.from_pretrained, which must not warn);
  expected holds PEFT's logits with it. The script also checks that it holds the same tensors as
  PEFT's own cat combination (fp32 rounding) and a config PEFT reads back identically.

Each simple case checks that PEFT's fp32 logits are within 5e-6 (relative to the largest) of the
same model run in float64, so that the fixture is well conditioned. Everything runs on CPU in fp32, eval mode, attn_implementation="eager", no mamba_ssm /
causal_conv1d / kernels (as make_hf_fixtures.py).

Usage: ~/.cache/mamba-slm/venv/bin/python tests/parity/make_lora_fixtures.py [--mamba-slm PATH]
(PATH defaults to build/cpu/mamba-slm; build it first.)
"""

import os

os.environ["USE_HUB_KERNELS"] = "NO"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OUT = FIXTURES / "lora"
MAX_DIR_BYTES = 1024 * 1024

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_hf_fixtures import write_safetensors  # noqa: E402


def check_no_fast_paths():
    for pkg in ("mamba_ssm", "causal_conv1d", "kernels", "mambapy"):
        if importlib.util.find_spec(pkg) is not None:
            sys.exit(f"error: `{pkg}` is installed; it could replace the PyTorch reference path.")


def load_base(case):
    m = AutoModelForCausalLM.from_pretrained(FIXTURES / case, attn_implementation="eager", dtype=torch.float32)
    return m.eval()


def base_inputs(case):
    with safe_open(FIXTURES / case / "expected.safetensors", "pt") as f:
        return f.get_tensor("input_ids").to(torch.int64)


@torch.no_grad()
def logits_of(model, ids, dtype=torch.float32):
    """dtype float64: the model's own float64 run; Mamba and Mamba2 still end with .float()."""
    model.eval()
    out = model(input_ids=ids, use_cache=False).logits
    assert out.dtype == dtype or dtype == torch.float64
    return out.contiguous()


def lora_layers(model, adapter):
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_B") and adapter in m.lora_B]


@torch.no_grad()
def randomise_b(model, adapter, seed, std=0.3):
    g = torch.Generator().manual_seed(seed)
    for _, m in lora_layers(model, adapter):
        w = m.lora_B[adapter].weight
        w.copy_(torch.randn(w.shape, generator=g) * std)


def base_module_path(peft_name):
    """PeftModel module name -> the HF module path ("base_model.model.X" -> "X")."""
    prefix = "base_model.model."
    assert peft_name.startswith(prefix), peft_name
    return peft_name[len(prefix):]


@torch.no_grad()
def merged_weights(peft_model, adapter_names):
    """merge_and_unload() on a copy, with `adapter_names` active; the weights of every module an
    adapter touched, under HF tensor names."""
    m = copy.deepcopy(peft_model)
    m.base_model.set_adapter(adapter_names)
    touched = set()
    for a in adapter_names:
        touched |= {base_module_path(n) for n, _ in lora_layers(m, a)}
    merged = m.merge_and_unload()
    sd = merged.state_dict()
    return {f"merged.{p}.weight": sd[f"{p}.weight"].contiguous() for p in sorted(touched)}, merged


def write_expected(path, tensors, meta):
    write_safetensors(path, {k: v.to(torch.int32) if k == "input_ids" else v for k, v in tensors.items()}, meta)


def save_adapter(model, out_dir, name, base_case):
    """PEFT's save_pretrained; the one edit is base_model_name_or_path, which PEFT fills with the
    absolute path the base was loaded from, made relative to the repository."""
    tmp = out_dir / "_save"
    model.save_pretrained(tmp, selected_adapters=[name])
    src = tmp if name == "default" else tmp / name
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src / "adapter_model.safetensors"), str(out_dir / "adapter_model.safetensors"))
    cfg = json.loads((src / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(FIXTURES / base_case), cfg["base_model_name_or_path"]
    cfg["base_model_name_or_path"] = f"tests/parity/fixtures/{base_case}"
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))  # PEFT's format
    shutil.rmtree(tmp)


def meta(case, base, extra=""):
    return {"case": case, "base": base, "peft": peft.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__, "note": extra}


# --------------------------------------------------------------------------------------------
SIMPLE_CASES = {
    # name: (base fixture, LoraConfig kwargs, B seed, store merged weights, std of B)
    "hybrid_attn_mlp": ("hybrid", dict(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"]), 11, True, 0.3),
    "hybrid_mamba_rslora_regex": ("hybrid", dict(r=3, lora_alpha=5, use_rslora=True,
                                                 target_modules=r".*\.mamba\.(in_proj|out_proj)"), 12, False, 0.3),
    # PEFT refuses out_proj (and conv1d) on model types mamba / mamba2 (tuners_utils.py:
    # _check_lora_target_modules_mamba), so these two cases leave it out; mamba-slm refuses it too.
    "mamba2_in_proj": ("mamba2", dict(r=2, lora_alpha=4, target_modules=["in_proj"]), 13, False, 0.3),
    "mamba1_dt_proj": ("mamba1", dict(r=2, lora_alpha=3, init_lora_weights="gaussian",
                                      target_modules=["in_proj", "x_proj", "dt_proj"]), 14, True, 0.1),
    "jamba_rslora": ("jamba", dict(r=4, lora_alpha=16, use_rslora=True,
                                   target_modules=["in_proj", "x_proj", "out_proj", "q_proj", "v_proj",
                                                   "gate_proj", "down_proj"]), 15, False, 0.3),
}


def build_simple(name):
    base_case, kwargs, seed, store_merged, b_std = SIMPLE_CASES[name]
    out = OUT / name
    torch.manual_seed(seed)
    base = load_base(base_case)
    ids = base_inputs(base_case)
    base_logits = logits_of(base, ids)
    cfg = LoraConfig(task_type="CAUSAL_LM", **kwargs)
    pm = get_peft_model(base, cfg)
    randomise_b(pm, "default", seed, b_std)
    unmerged = logits_of(pm, ids)
    merged_w, merged_model = merged_weights(pm, ["default"])
    merged = logits_of(merged_model, ids)
    dt_targeted = any(n.endswith("dt_proj") for n, _ in lora_layers(pm, "default"))
    if dt_targeted:
        # transformers reads dt_proj.weight directly: PEFT's unmerged forward ignores that adapter.
        only_dt = get_peft_model(load_base(base_case), LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=3,
                                                                  target_modules=["dt_proj"]))
        randomise_b(only_dt, "default", seed)
        assert torch.equal(logits_of(only_dt, ids), base_logits), "PEFT now applies dt_proj adapters unmerged"
        assert (merged - unmerged).abs().max() > 1e-3, "the dt_proj adapter should change the merged model"
        expected_logits = merged
        note = "logits of merge_and_unload(): transformers' mixer bypasses dt_proj's module call"
    else:
        d = (merged - unmerged).abs().max().item()
        assert d < 1e-4 * unmerged.abs().max().item(), f"PEFT merged vs unmerged differ by {d}"
        expected_logits = unmerged
        note = "logits of the unmerged PEFT model"
    # The C++ tolerances (1e-5 of the largest |logit| for our float64 model) lean on HF's fp32 logits
    # being close to exact: an adapter that makes the model ill-conditioned (a first version of
    # mamba1_dt_proj, with B ~ N(0, 0.3²), put HF's own fp32 logits 9e-5 from its float64 ones) would
    # test HF's rounding, not our arithmetic. Require half the float64 tolerance.
    ref64 = copy.deepcopy(merged_model if dt_targeted else pm).to(torch.float64)
    exact = logits_of(ref64, ids, torch.float64).double()
    cond = ((exact - expected_logits.double()).abs().max() / exact.abs().max()).item()
    print(f"{name}: fp32 vs float64 logits {cond:.2e}")
    assert cond < 5e-6, f"{name}: fp32 logits are {cond:.2e} from float64; make the adapter gentler"
    effect = (expected_logits - base_logits).abs().max().item()
    assert effect > 1e-2 * base_logits.abs().max().item(), f"{name}: the adapter barely changes the logits ({effect})"
    save_adapter(pm, out, "default", base_case)
    tensors = {"input_ids": ids, "logits": expected_logits}
    if store_merged:
        tensors.update(merged_w)
    write_expected(out / "expected.safetensors", tensors, meta(name, base_case, note))


def build_combined(binary):
    out = OUT / "combined"
    torch.manual_seed(20)
    ids = base_inputs("hybrid")
    pm = get_peft_model(load_base("hybrid"), LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=3,
                                                         init_lora_weights="gaussian",
                                                         target_modules=["q_proj", "in_proj", "down_proj"]),
                        adapter_name="one")
    pm.add_adapter("two", LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=5, use_rslora=True,
                                   target_modules=["q_proj", "v_proj", "out_proj"]))
    pm.add_adapter("three", LoraConfig(task_type="CAUSAL_LM", r=3, lora_alpha=2, init_lora_weights="gaussian",
                                   target_modules=["k_proj", "gate_proj", "q_proj"]))
    for i, a in enumerate(("one", "two", "three")):
        randomise_b(pm, a, 21 + i)
    pm.add_weighted_adapter(["one", "two"], [0.6, -1.1], "lin", combination_type="linear")
    pm.add_weighted_adapter(["one", "three"], [0.8, 0.5], "cat", combination_type="cat")
    assert pm.peft_config["cat"].r == 5 and pm.peft_config["lin"].r == 2
    tensors = {"input_ids": ids}
    pm.base_model.set_adapter("lin")
    tensors["logits_lin"] = logits_of(pm, ids)
    pm.base_model.set_adapter("cat")
    tensors["logits_cat"] = logits_of(pm, ids)
    merged_w, _ = merged_weights(pm, ["cat"])
    tensors.update(merged_w)
    for a in ("one", "two", "three", "lin", "cat"):
        save_adapter(pm, out / a, a, "hybrid")
    write_expected(out / "expected.safetensors", tensors,
                   meta("combined", "hybrid", "lin = linear(one, two; 0.6, -1.1); cat = cat(one, three; 0.8, 0.5)"))

    # mamba-slm writes the cat combination; PEFT must load it as it loads its own.
    ours = OUT / "ours_cat"
    if ours.exists():
        shutil.rmtree(ours)
    subprocess.run([str(binary), "lora", "combine", "--model", str(FIXTURES / "hybrid"), "--adapter", str(out / "one"),
                    "--adapter", str(out / "three"), "--weights", "0.8,0.5", "--combination", "cat", "--out", str(ours)],
                   check=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(load_base("hybrid"), ours)
    relevant = [str(w.message) for w in caught if "key" in str(w.message).lower() or "config" in str(w.message).lower()]
    assert not relevant, f"PEFT warned loading mamba-slm's adapter: {relevant}"
    ours_cfg = loaded.peft_config["default"]
    peft_cfg = pm.peft_config["cat"]
    for field in ("r", "lora_alpha", "use_rslora", "lora_dropout", "bias", "peft_type", "fan_in_fan_out"):
        assert getattr(ours_cfg, field) == getattr(peft_cfg, field), (field, getattr(ours_cfg, field),
                                                                      getattr(peft_cfg, field))
    assert set(ours_cfg.target_modules) == set(peft_cfg.target_modules)
    with safe_open(ours / "adapter_model.safetensors", "pt") as f, \
            safe_open(out / "cat" / "adapter_model.safetensors", "pt") as g:
        assert set(f.keys()) == set(g.keys())
        for k in f.keys():
            a, b = f.get_tensor(k), g.get_tensor(k)
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-7), k
    ours_logits = logits_of(loaded, ids)
    d = (ours_logits - tensors["logits_cat"]).abs().max().item()
    assert d < 1e-5 * tensors["logits_cat"].abs().max().item(), f"PEFT with our adapter vs its own: {d}"
    write_expected(ours / "expected.safetensors", {"input_ids": ids, "logits": ours_logits},
                   meta("ours_cat", "hybrid", "PEFT's logits with the adapter mamba-slm wrote"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mamba-slm", default=str(ROOT / "build" / "cpu" / "mamba-slm"))
    args = ap.parse_args()
    check_no_fast_paths()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    binary = Path(args.mamba_slm)
    if not binary.exists():
        sys.exit(f"error: {binary} not found; build mamba-slm first (or pass --mamba-slm)")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for name in SIMPLE_CASES:
        build_simple(name)
    build_combined(binary)
    for d in sorted(p for p in OUT.rglob("*") if p.is_dir()):
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        assert size < MAX_DIR_BYTES, f"{d} is {size} bytes"
        print(f"{d.relative_to(FIXTURES)}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
