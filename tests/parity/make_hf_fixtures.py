#!/usr/bin/env python3
"""Build Hugging Face parity fixtures for mamba-slm's C++ importer (forward AND backward).

For each case this writes tests/parity/fixtures/<case>/:
  config.json, generation_config.json, model.safetensors   -- from HF save_pretrained (fp32)
  expected.safetensors                                      -- reference outputs:
      input_ids  I32 (B, T)
      labels     I32 (B, T)      (-100 = ignored)
      logits     F32 (B, T, V)
      loss       F32 scalar      HF ForCausalLMLoss (definition below)
      grad.<p>   F32             d loss / d p for every parameter name p of model.safetensors

Loss definition (transformers loss/loss_utils.py: ForCausalLMLoss + fixed_cross_entropy, no
num_items_in_batch):
    shift[b, t] = labels[b, t + 1] for t < T - 1, and -100 for t = T - 1   (labels[:, 0] is never used)
    loss = mean over {(b, t) : shift[b, t] != -100} of ( logsumexp(logits[b, t, :]) - logits[b, t, shift[b, t]] )
i.e. the logits at position t are scored against the label at t + 1, the mean is over the number of
non-ignored shifted positions in the whole batch (not per row).

Everything runs on CPU in fp32, in eval mode (dropout off, and the `self.training` fused-kernel
branches of the mixers are not taken), with use_cache=False (the pure full-sequence path, no
cache bookkeeping), attn_implementation="eager", hub kernels disabled and without mamba_ssm /
causal_conv1d / mambapy installed, so only the reference PyTorch slow paths run. The script
asserts all of that and checks the fixture is deterministic (rerun, reload from disk, grads).

Usage: ~/.cache/mamba-slm/venv/bin/python tests/parity/make_hf_fixtures.py [case ...]
"""

import os

# Must be set before transformers is imported: never resolve kernels from the Hub.
os.environ["USE_HUB_KERNELS"] = "NO"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    BambaConfig,
    BambaForCausalLM,
    JambaConfig,
    JambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)
from transformers.utils.import_utils import is_kernels_available, is_mambapy_available  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAX_DIR_BYTES = 2 * 1024 * 1024
KEEP_FILES = {"config.json", "generation_config.json", "model.safetensors", "expected.safetensors"}
BATCH = 2
LOSS_DEFINITION = (
    "HF ForCausalLMLoss: shift[b,t]=labels[b,t+1] (t<T-1), shift[b,T-1]=-100; "
    "loss = mean over shift!=-100 of (logsumexp(logits[b,t,:]) - logits[b,t,shift[b,t]]); "
    "mean over all non-ignored positions of the whole batch"
)


# --------------------------------------------------------------------------------------------
# Cases. Odd sizes on purpose: d_model not a multiple of 8, n_groups > 1, GQA, odd T, T not a
# multiple of chunk_size, odd vocab sizes (different per case so that mix-ups are caught).
# --------------------------------------------------------------------------------------------
def case_mamba1():
    cfg = MambaConfig(
        vocab_size=97,
        hidden_size=37,  # odd; d_inner = 74; dt_rank = ceil(37/16) = 3
        state_size=8,
        num_hidden_layers=3,
        expand=2,
        conv_kernel=4,
        time_step_rank="auto",
        use_bias=False,
        use_conv_bias=True,
        tie_word_embeddings=True,  # HF default for Mamba-1
        residual_in_fp32=True,
        use_mambapy=False,
        pad_token_id=0,
    )
    return MambaForCausalLM, cfg, 13


def case_mamba2():
    # d_model 36 (not a multiple of 8), expand 2 -> d_inner 72 = 9 heads x head_dim 8.
    # n_groups must divide num_heads (B/C are repeat_interleave'd over heads), so with 9 heads the
    # smallest n_groups > 1 is 3 (n_groups = 2 would force d_model to a multiple of 8).
    cfg = Mamba2Config(
        vocab_size=99,
        hidden_size=36,
        num_heads=9,
        head_dim=8,
        n_groups=3,
        state_size=16,
        num_hidden_layers=3,
        expand=2,
        conv_kernel=4,
        chunk_size=8,  # T = 21 -> 3 chunks, the last one padded by 3
        use_bias=False,
        use_conv_bias=True,
        time_step_limit=(0.0, 0.1),  # finite upper limit so that the dt clamp is exercised
        tie_word_embeddings=False,  # HF default for Mamba-2
        residual_in_fp32=True,
        pad_token_id=0,
    )
    return Mamba2ForCausalLM, cfg, 21


def case_jamba():
    cfg = JambaConfig(
        vocab_size=101,
        hidden_size=36,
        intermediate_size=56,
        num_hidden_layers=4,
        num_attention_heads=4,  # head_dim = 9
        num_key_value_heads=2,  # GQA, 2 query heads per kv head
        attn_layer_period=2,
        attn_layer_offset=1,  # layers: M A M A
        num_experts=1,  # plain JambaMLP everywhere (no router)
        num_experts_per_tok=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,  # d_inner = 72
        mamba_dt_rank="auto",  # ceil(36/16) = 3
        mamba_conv_bias=True,
        mamba_proj_bias=False,
        rms_norm_eps=1e-6,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        use_mambapy=False,
    )
    return JambaForCausalLM, cfg, 13


def case_hybrid():
    # Bamba: block = x + mixer(norm(x)); x + SwiGLU(norm(x)); mixer = Mamba-2 (same slow path as
    # Mamba2Mixer) or GQA attention with partial RoPE (factor hard-coded to 0.5).
    cfg = BambaConfig(
        vocab_size=103,
        hidden_size=36,
        intermediate_size=56,
        num_hidden_layers=4,
        num_attention_heads=4,  # head_dim 9 -> rotary dims int(9 * 0.5) = 4, 5 dims pass through
        num_key_value_heads=2,
        attn_layer_indices=[2],  # layers: M M A M
        mamba_n_heads=9,
        mamba_d_head="auto",  # 2*36/9 = 8
        mamba_n_groups=3,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=8,  # T = 21 -> 3 chunks, last one padded
        mamba_conv_bias=True,
        mamba_proj_bias=False,
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=1e-5,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        # time_step_limit left at the default (0.0, inf): config.json then holds the inf as
        # {"__float__": "Infinity"}, which the C++ importer must parse.
    )
    return BambaForCausalLM, cfg, 21


CASES = {"mamba1": case_mamba1, "mamba2": case_mamba2, "jamba": case_jamba, "hybrid": case_hybrid}
SEEDS = {"mamba1": 1001, "mamba2": 2002, "jamba": 3003, "hybrid": 4004}


# --------------------------------------------------------------------------------------------
def check_no_fast_paths():
    for pkg in ("mamba_ssm", "causal_conv1d", "kernels", "mambapy"):
        if importlib.util.find_spec(pkg) is not None:
            sys.exit(f"error: `{pkg}` is installed; it could replace the PyTorch reference path. Use a venv without it.")
    assert not is_kernels_available() and not is_mambapy_available()


class FallbackRecorder(logging.Handler):
    """Collects transformers' 'falling back to its reference PyTorch implementation' warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.funcs = set()

    def emit(self, record):
        msg = record.getMessage()
        if "falling back to its reference PyTorch implementation" in msg:
            self.funcs.add(msg.split("`")[1])


_ST_DTYPES = {torch.float32: "F32", torch.int32: "I32"}


def write_safetensors(path, tensors, metadata):
    """Byte-reproducible safetensors writer (safetensors.torch.save_file orders the header through a
    hash map, so its bytes differ run to run). Keys keep insertion order; header padded to 8 bytes."""
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()  # little-endian on every supported host
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        for b in blobs:
            f.write(b)


def inv_softplus(x):
    return x + torch.log(-torch.expm1(-x))


@torch.no_grad()
def perturb(model, cfg):
    """Replace HF's (partly trivial) init with non-trivial values so that every term matters."""
    done = set()

    def setp(p, value):
        assert id(p) not in done
        p.copy_(value.to(p.dtype).reshape(p.shape))
        done.add(id(p))

    def randn(*shape):
        return torch.randn(*shape)

    tied = getattr(cfg, "tie_word_embeddings", False)
    for mname, mod in model.named_modules():
        cls = type(mod).__name__
        if isinstance(mod, torch.nn.Embedding):
            # Including the padding_idx row. Tied models get a small scale: with lm_head == embedding a
            # large one makes logit(current token) ~ d * std^2 dominate and saturates the softmax.
            setp(mod.weight, (0.1 if tied else 1.0) * randn(*mod.weight.shape))
        elif "RMSNorm" in cls:  # block norms, final norm, Mamba-2 gated norm, Jamba dt/B/C norms
            setp(mod.weight, 1.0 + 0.1 * randn(*mod.weight.shape))
        elif isinstance(mod, torch.nn.Conv1d):
            k = mod.weight.shape[-1]
            setp(mod.weight, randn(*mod.weight.shape) / math.sqrt(k))
            if mod.bias is not None:
                setp(mod.bias, 0.1 * randn(*mod.bias.shape))
        elif isinstance(mod, torch.nn.Linear):
            if mname == "lm_head" and tied:
                assert mod.weight is model.get_input_embeddings().weight
                continue
            if mname.endswith("dt_proj"):  # Mamba-1 / Jamba: mamba_ssm dt init
                r = mod.weight.shape[1]
                setp(mod.weight, (torch.rand(*mod.weight.shape) * 2 - 1) * r**-0.5)
                dt = torch.exp(torch.rand(mod.bias.shape) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                setp(mod.bias, inv_softplus(dt.clamp(min=1e-4)))
                continue
            fan_in = mod.weight.shape[1]
            setp(mod.weight, randn(*mod.weight.shape) / math.sqrt(fan_in))
            if mod.bias is not None:
                setp(mod.bias, 0.1 * randn(*mod.bias.shape))
        # Mixer-level parameters (A_log, D, dt_bias) are direct nn.Parameters of the mixer.
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in done:
                continue
            if pname == "A_log":
                if p.dim() == 2:  # Mamba-1 / Jamba: (d_inner, d_state), S4D-real log(1..N) + jitter
                    n = p.shape[1]
                    base = torch.log(torch.arange(1, n + 1, dtype=torch.float32))[None, :].expand(p.shape[0], n)
                    setp(p, base + 0.1 * randn(*p.shape))
                else:  # Mamba-2 / Bamba: (nheads,), A ~ U(1, 16) as in mamba_ssm
                    setp(p, torch.log(1 + 15 * torch.rand(p.shape)))
            elif pname == "D":
                setp(p, 1.0 + 0.25 * randn(*p.shape))
            elif pname == "dt_bias":  # Mamba-2 / Bamba; Bamba's own init is ones (softplus(1) = 1.31)
                dt = torch.exp(torch.rand(p.shape) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                setp(p, inv_softplus(dt.clamp(min=1e-4)))
    missing = [n for n, p in model.named_parameters() if id(p) not in done]
    if missing:
        raise RuntimeError(f"perturb() did not handle: {missing}")


def make_inputs(vocab, T, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (BATCH, T), generator=g)
    ids[0, 2] = 0  # pad_token_id appears in the input (see padding_idx note in docs/HF-MAPPING.md)
    ids[1, T - 3] = 0
    labels = ids.clone()
    labels[0, 1] = -100
    labels[0, 7] = -100
    labels[1, 0] = -100  # never used anyway (labels[:, 0] is shifted out)
    labels[1, 4] = -100
    labels[1, T - 1] = -100
    return ids, labels


def forward_backward(model, ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, use_cache=False, return_dict=True)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.logits.detach().clone(), out.loss.detach().clone(), grads


def reference_loss(logits, labels):
    shift = F.pad(labels, (0, 1), value=-100)[:, 1:]
    valid = shift != -100
    lse = torch.logsumexp(logits.double(), dim=-1)
    picked = logits.double().gather(-1, shift.clamp(min=0)[..., None])[..., 0]
    return ((lse - picked)[valid]).sum() / valid.sum()


def layer_layout(model):
    cfg = model.config
    if hasattr(cfg, "layers_block_type"):
        return "".join("A" if t in ("attention", "full_attention") else "M" for t in cfg.layers_block_type)
    return "M" * cfg.num_hidden_layers


def dt_clamp_stats(model, ids):
    """Fraction of Mamba-2 dt values that hit time_step_limit (to show the clamp is exercised)."""
    lo, hi = model.config.time_step_limit
    hits, total, hooks = [0, 0], [0], []

    def hook(mixer):
        def fn(mod, inp, out):
            dt = out[..., -mixer.num_heads :]
            dt = F.softplus(dt + mixer.dt_bias)
            hits[0] += int((dt < lo).sum())
            hits[1] += int((dt > hi).sum())
            total[0] += dt.numel()

        return fn

    for mod in model.modules():
        if hasattr(mod, "dt_bias") and hasattr(mod, "in_proj"):
            hooks.append(mod.in_proj.register_forward_hook(hook(mod)))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return hits, total[0]


def build_case(name):
    model_cls, cfg, T = CASES[name]()
    seed = SEEDS[name]
    out_dir = FIXTURES / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).to(torch.float32).eval()
    perturb(model, cfg)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in out_dir.iterdir():
        if f.name not in KEEP_FILES:
            f.unlink() if f.is_file() else shutil.rmtree(f)

    # Reload exactly what the C++ importer will read and use that model for the reference.
    ref = model_cls.from_pretrained(out_dir, attn_implementation="eager", dtype=torch.float32).eval()
    assert ref.config._attn_implementation == "eager"
    assert not any(m.training for m in ref.modules()), "dropout must be off (eval mode)"
    sd_ref = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p, sd_ref[n]), f"reload mismatch in {n}"

    with safe_open(out_dir / "model.safetensors", "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    param_names = [n for n, _ in ref.named_parameters()]
    assert set(saved) == set(param_names), (set(saved) ^ set(param_names))
    assert all(t.dtype == torch.float32 for t in saved.values())

    ids, labels = make_inputs(cfg.vocab_size, T, seed + 7)
    logits, loss, grads = forward_backward(ref, ids, labels)
    assert logits.shape == (BATCH, T, cfg.vocab_size) and logits.dtype == torch.float32

    # --- self-consistency / determinism checks ---
    with torch.no_grad():
        logits_again = ref(input_ids=ids, use_cache=False).logits
    assert torch.equal(logits, logits_again), "rerun gives different logits"
    ref2 = model_cls.from_pretrained(out_dir, attn_implementation="eager", dtype=torch.float32).eval()
    logits2, loss2, grads2 = forward_backward(ref2, ids, labels)
    assert torch.equal(logits, logits2) and torch.equal(loss, loss2), "reload gives different outputs"
    for n in grads:
        assert torch.equal(grads[n], grads2[n]), f"grad of {n} not deterministic"
    man = reference_loss(logits, labels)
    assert abs(man.item() - loss.item()) < 1e-5 * max(1.0, abs(loss.item())), (man.item(), loss.item())
    for n, gr in grads.items():
        assert torch.isfinite(gr).all(), f"non-finite grad {n}"
        assert gr.abs().max() > 0, f"grad of {n} is identically zero"
    emb = ref.get_input_embeddings()
    emb_name = next(n for n, p in ref.named_parameters() if p is emb.weight)
    pad_row_zero = bool((grads[emb_name][cfg.pad_token_id] == 0).all())
    # nn.Embedding(padding_idx=pad_token_id) gives the pad row no gradient from the lookup (Jamba, Bamba);
    # Mamba / Mamba2 embeddings have no padding_idx.
    assert pad_row_zero == (emb.padding_idx is not None and not cfg.tie_word_embeddings), emb_name
    if hasattr(ref.config, "layers_block_type") and "A" in layer_layout(ref):
        sdpa = model_cls.from_pretrained(out_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
        with torch.no_grad():
            d = (sdpa(input_ids=ids, use_cache=False).logits - logits).abs().max().item()
        assert d < 1e-4, f"eager vs sdpa differ by {d}"
    else:
        d = None

    tensors = {
        "input_ids": ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "logits": logits.contiguous(),
        "loss": loss.reshape(()).to(torch.float32).contiguous(),
    }
    for n, gr in grads.items():
        tensors[f"grad.{n}"] = gr.contiguous()
    meta = {
        "case": name,
        "hf_class": model_cls.__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "layout": layer_layout(ref),
        "seed": str(seed),
        "loss": LOSS_DEFINITION,
        "path": "CPU fp32 eval, use_cache=False, attn_implementation=eager, PyTorch reference (slow) paths",
    }
    write_safetensors(out_dir / "expected.safetensors", tensors, meta)
    with safe_open(out_dir / "expected.safetensors", "pt") as f:  # round-trip through the official reader
        assert list(f.keys()) == sorted(tensors) and f.metadata() == meta
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), tensors[k]), k

    sizes = {f.name: f.stat().st_size for f in sorted(out_dir.iterdir())}
    total = sum(sizes.values())
    assert total < MAX_DIR_BYTES, f"{name}: fixture is {total} bytes (limit {MAX_DIR_BYTES})"
    n_params = sum(p.numel() for p in ref.parameters())
    zero_frac = sum(int((g == 0).sum()) for g in grads.values()) / n_params
    info = {
        "name": name,
        "class": model_cls.__name__,
        "layout": layer_layout(ref),
        "T": T,
        "V": cfg.vocab_size,
        "params": n_params,
        "loss": loss.item(),
        "zero_grad_frac": zero_frac,
        "sizes": sizes,
        "total": total,
        "eager_vs_sdpa": d,
        "pad_row_grad_zero": pad_row_zero,
        "grad_absmax_range": (min(g.abs().max().item() for g in grads.values()),
                              max(g.abs().max().item() for g in grads.values())),
    }
    if name in ("mamba2", "hybrid"):
        hits, tot = dt_clamp_stats(ref, ids)
        info["dt_clamped"] = f"{hits[0]} below / {hits[1]} above of {tot}"
    return info


def main(argv):
    check_no_fast_paths()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    rec = FallbackRecorder()
    logging.getLogger("transformers").addHandler(rec)
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()

    names = argv or list(CASES)
    infos = [build_case(n) for n in names]

    # The mixers' kernel hooks must all have resolved to their PyTorch reference implementations.
    print(f"PyTorch reference paths used: {sorted(rec.funcs)}")
    required = {"causal_conv1d_fn"}
    if any(n in ("mamba1", "jamba") for n in names):
        required.add("selective_scan_fn")
    if any(n in ("mamba2", "hybrid") for n in names):
        required.add("mamba_chunk_scan_combined")
    missing = required - rec.funcs
    assert not missing, f"fallback warning not seen for {missing}; a non-reference implementation may be in use"

    print(f"\ntransformers {transformers.__version__}, torch {torch.__version__}, B={BATCH}")
    for i in infos:
        print(
            f"{i['name']:7s} {i['class']:18s} layout={i['layout']:5s} T={i['T']:2d} V={i['V']:3d} "
            f"params={i['params']:6d} loss={i['loss']:.6f} zero-grad-entries={100 * i['zero_grad_frac']:.1f}% "
            f"total={i['total'] / 1024:.1f} KiB"
        )
        for f, s in i["sizes"].items():
            print(f"          {f:24s} {s:8d} B")
        lo, hi = i["grad_absmax_range"]
        print(f"          per-parameter max|grad| in [{lo:.2e}, {hi:.2e}]; "
              f"embedding pad row grad == 0: {i['pad_row_grad_zero']}")
        if i["eager_vs_sdpa"] is not None:
            print(f"          eager vs sdpa max |dlogit| = {i['eager_vs_sdpa']:.2e}")
        if "dt_clamped" in i:
            print(f"          dt clamped by time_step_limit: {i['dt_clamped']}")
    print("all fixtures deterministic (rerun + reload, bitwise), loss matches the documented formula")


if __name__ == "__main__":
    main(sys.argv[1:])
