#!/usr/bin/env python3
"""Generation parity fixtures: what transformers' generate() returns, for mamba-slm's C++ tests.

For every model of the forward/backward fixtures (tests/parity/fixtures/{mamba1,mamba2,jamba,
hybrid}) plus one small model trained here (fixtures/trained: a byte-level Bamba hybrid trained
for a few hundred steps on tinyshakespeare, so that its distributions are peaked and EOS, here the
newline byte, is actually produced), this writes fixtures/<model>/generate.json:

  {"model": ..., "transformers": version, "cases": [
     {"name", "strategy": "greedy" | "beam" | "contrastive", "prompt": [ids],
      "params": {generate() keyword arguments},
      "sequences": [[new token ids, EOS included, padding removed], ...],
      "sequence_scores": [...]      beam: transformers' sequences_scores (length-penalised)
      "step_scores": [[...], ...]   greedy: the processed score of each chosen token;
                                    contrastive: the contrastive score of each chosen token
  }]}

References:
  * greedy and beam search: model.generate(..., use_cache=False). Without a cache every step is a
    full forward pass, so the reference does not depend on transformers' cache code (in the
    installed version Mamba2's cached beam search disagrees with its uncached one: see
    check_cached_agreement, which reports it).
  * contrastive search: transformers v5 moved it out of the library, so it is written here from
    the SimCTG formula (arXiv 2202.06417), again with full forward passes: among the top_k tokens
    v of softmax(processed logits), pick argmax (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j),
    where h are final-norm hidden states (captured with a hook on the final norm module), h_j runs
    over every position of the sequence so far and h_v is the hidden state of v appended to it.

Usage: ~/.cache/mamba-slm/venv/bin/python tests/parity/make_generate_fixtures.py [model ...]
"""

import os

os.environ["USE_HUB_KERNELS"] = "NO"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, BambaConfig, BambaForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()
ROOT = Path(__file__).resolve().parent / "fixtures"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"
MODELS = ["mamba1", "mamba2", "jamba", "hybrid", "trained"]


def final_norm(model):
    base = model.base_model
    for name in ("norm_f", "final_layernorm", "norm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise SystemExit(f"no final norm found in {type(model).__name__}")


class Hidden:
    """Captures the final norm's output of the next forward pass."""

    def __init__(self, model):
        self.value = None
        final_norm(model).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.value = output


# --------------------------------------------------------------------------------------------
def train_small_model(out_dir: Path):
    """A byte-level Bamba (Mamba-2 + attention + SwiGLU) trained on tinyshakespeare."""
    torch.manual_seed(5005)
    cfg = BambaConfig(
        vocab_size=128,  # tinyshakespeare is ASCII
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_indices=[1],  # M A M
        mamba_n_heads=4,
        mamba_d_head="auto",  # 2*48/4 = 24
        mamba_n_groups=1,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=32,
        tie_word_embeddings=True,
        bos_token_id=10,
        eos_token_id=10,  # newline ends a line of verse
        pad_token_id=0,
    )
    model = BambaForCausalLM(cfg)
    text = DATA.read_bytes()
    ids = torch.tensor([b if b < 128 else 32 for b in text], dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    B, T, steps = 16, 96, 400
    g = torch.Generator().manual_seed(7)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - T - 1, (B,), generator=g)
        x = torch.stack([ids[s : s + T] for s in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  trained step {step}: loss {loss.item():.3f}")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    return model


def load(name):
    d = ROOT / name
    if name == "trained" and not (d / "model.safetensors").exists():
        train_small_model(d)
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    return model


# --------------------------------------------------------------------------------------------
def reference_generate(model, prompt, **params):
    return model.generate(torch.tensor([prompt]), do_sample=False, use_cache=False, output_scores=True,
                          return_dict_in_generate=True, **params)


def greedy_case(model, name, prompt, **params):
    out = reference_generate(model, prompt, **params)
    new = out.sequences[0, len(prompt) :].tolist()
    scores = [float(s[0, t]) for s, t in zip(out.scores, new)]
    pad = params.get("pad_token_id")
    # generate() pads a finished row; a single row stops at its EOS, so nothing is padded here.
    assert pad is None or len(new) == len(scores)
    return {"name": name, "strategy": "greedy", "prompt": prompt, "params": params, "sequences": [new],
            "step_scores": [scores]}


def beam_case(model, name, prompt, **params):
    out = reference_generate(model, prompt, **params)
    seqs = []
    for row, bi in zip(out.sequences, out.beam_indices):
        n = int((bi >= 0).sum())  # generated length of this hypothesis; the rest is padding
        seqs.append(row[len(prompt) : len(prompt) + n].tolist())
    return {"name": name, "strategy": "beam", "prompt": prompt, "params": params, "sequences": seqs,
            "sequence_scores": [float(s) for s in out.sequences_scores]}


@torch.no_grad()
def contrastive_case(model, name, prompt, penalty_alpha, top_k, max_new_tokens, eos_token_id=None):
    hidden = Hidden(model)
    seq = list(prompt)
    chosen_scores = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([seq])).logits[0, -1]
        context = F.normalize(hidden.value[0], dim=-1)  # (L, D)
        probs = torch.softmax(logits, dim=-1)
        top_p, top_ids = torch.topk(probs, top_k)
        scores = []
        for p, v in zip(top_p.tolist(), top_ids.tolist()):
            model(torch.tensor([seq + [v]]))
            h_v = F.normalize(hidden.value[0, -1], dim=-1)
            penalty = float((context @ h_v).max())
            scores.append((1.0 - penalty_alpha) * p - penalty_alpha * penalty)
        best = max(range(top_k), key=lambda i: (scores[i], -i))  # first of equal scores
        seq.append(int(top_ids[best]))
        chosen_scores.append(scores[best])
        if eos_token_id is not None and seq[-1] == eos_token_id:
            break
    params = {"penalty_alpha": penalty_alpha, "top_k": top_k, "max_new_tokens": max_new_tokens}
    if eos_token_id is not None:
        params["eos_token_id"] = eos_token_id
    return {"name": name, "strategy": "contrastive", "prompt": prompt, "params": params,
            "sequences": [seq[len(prompt) :]], "step_scores": [chosen_scores]}


def check_cached_agreement(model, name, prompt):
    """Reports (does not fail on) transformers' cached beam search disagreeing with its uncached one."""
    kw = dict(max_new_tokens=12, num_beams=4, num_return_sequences=2, do_sample=False, eos_token_id=None,
              pad_token_id=0)
    a = model.generate(torch.tensor([prompt]), use_cache=True, **kw)
    b = model.generate(torch.tensor([prompt]), use_cache=False, **kw)
    if not torch.equal(a, b):
        print(f"  note: {name}: transformers' cached beam search differs from its uncached one; "
              "the fixtures use the uncached (full forward) reference")


def cases_for(name, model):
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    if name == "trained":
        prompts = [list(b"ROMEO:\n"), list(b"First Citizen:\nWe are")]
        eos = 10
    else:
        prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (5, 9)]
        # Random-weight models rarely pick a fixed EOS; take tokens the greedy continuation picks
        # so that hypotheses do finish and the EOS paths of beam search run.
        cont = model.generate(torch.tensor([prompts[0]]), do_sample=False, use_cache=False, max_new_tokens=8,
                              eos_token_id=None, pad_token_id=0)[0, len(prompts[0]) :].tolist()
        eos = [cont[3], cont[6]] if cont[3] != cont[6] else [cont[3]]
    check_cached_agreement(model, name, prompts[0])
    # The trained model writes lines of about 40 bytes: generate far enough for its EOS to come.
    long = 48 if name == "trained" else 16
    short = 40 if name == "trained" else 10
    out = []
    for i, p in enumerate(prompts):
        out.append(greedy_case(model, f"greedy_p{i}", p, max_new_tokens=long, eos_token_id=None, pad_token_id=0))
        out.append(greedy_case(model, f"greedy_eos_p{i}", p, max_new_tokens=long, eos_token_id=eos, pad_token_id=0))
    p = prompts[1]
    out.append(greedy_case(model, "greedy_rep_ngram", p, max_new_tokens=long, eos_token_id=None, pad_token_id=0,
                           repetition_penalty=1.3, no_repeat_ngram_size=2))
    out.append(greedy_case(model, "greedy_min_new", p, max_new_tokens=long, min_new_tokens=6, eos_token_id=eos,
                           pad_token_id=0))
    beam_grid = [
        (2, 1.0, True, 1), (2, 1.0, False, 2), (2, 0.0, "never", 1),
        (4, 1.0, True, 2), (4, 1.0, False, 4), (4, 1.0, "never", 3),
        (4, 2.0, False, 2), (4, 2.0, "never", 2), (4, 0.0, True, 1),
        (4, -0.5, False, 2), (4, -0.5, "never", 1), (3, 1.5, True, 3),
    ]
    for i, (nb, lp, es, nrs) in enumerate(beam_grid):
        for with_eos in (False, True):
            if not with_eos and i % 3:
                continue  # without EOS every hypothesis runs to max length; a few such cases suffice
            prompt = prompts[i % 2]
            out.append(beam_case(model, f"beam{nb}_lp{lp}_es{es}_n{nrs}{'_eos' if with_eos else ''}", prompt,
                                 num_beams=nb, length_penalty=lp, early_stopping=es, num_return_sequences=nrs,
                                 max_new_tokens=short, eos_token_id=eos if with_eos else None, pad_token_id=0))
    out.append(beam_case(model, "beam4_rep_ngram", prompts[0], num_beams=4, num_return_sequences=2,
                         max_new_tokens=short, repetition_penalty=1.2, no_repeat_ngram_size=3,
                         eos_token_id=eos, pad_token_id=0))
    single_eos = eos if isinstance(eos, int) else eos[0]
    out.append(contrastive_case(model, "contrastive_a0.6_k4", prompts[0], 0.6, 4, short))
    out.append(contrastive_case(model, "contrastive_a0.3_k6_eos", prompts[1], 0.3, 6, long, single_eos))
    return out


def main():
    names = sys.argv[1:] or MODELS
    for name in names:
        print(f"{name}:")
        model = load(name)
        cases = cases_for(name, model)
        doc = {"model": name, "transformers": transformers.__version__, "torch": torch.__version__,
               "cases": cases}
        path = ROOT / name / "generate.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        n_eos = sum(1 for c in cases for s in c["sequences"] if len(s) < c["params"].get("max_new_tokens", 0))
        print(f"  wrote {path.relative_to(ROOT.parent.parent.parent)}: {len(cases)} cases, "
              f"{n_eos} sequences ended before max_new_tokens")


if __name__ == "__main__":
    main()
