#!/usr/bin/env python3
"""Logits-processor parity fixture, made with transformers' own LogitsProcessor classes.

    ~/.cache/mamba-slm/venv/bin/python tests/parity/make_processor_fixtures.py

Writes tests/parity/fixtures/processors/:

- processors.safetensors:
    logits       F32 (R, V)  the input rows: random of several scales, one peaked, one with many
                             ties, one flat, one with a third of the entries already -inf
    ids          I32 (R, L)  token sequences with repeats (row r uses its first lengths[r] ids)
    lengths      I32 (R,)    sequence length of each row (prompt + generated)
    prompt_lens  I32 (R,)    prompt length of each row
    out.<case>   F32 (n, V)  the processor's output for each row listed in the case
- processors.json: the cases, in order: {name, processor, params, rows} for one processor class
  called directly, or {name, processor: "chain", config, rows, hf_processors} for the list that
  GenerationMixin._get_logits_processor builds from a GenerationConfig (hf_processors: its class
  names, in order).

Every row is processed alone (batch of one), with the processor built for that row's prompt length.

The script asserts two things, so that a C++ implementation computing in double precision can be
held to exact masks:
- in every case, the set of -inf outputs is the same when the processor runs in float64 on the
  same inputs, i.e. no kept/removed decision lies within float32 rounding of its threshold;
- for the warpers (decisions from the logit values alone), equal finite input logits get the same
  decision, i.e. none depends on the order torch's unstable sort gives to ties. Chains that sample
  use only the rows without ties.
The output is byte-reproducible.
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, MambaConfig, MambaForCausalLM
from transformers.generation import logits_process as lp

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "fixtures", "processors")

V = 96  # vocabulary size
L = 20  # longest sequence
LENGTHS = [20, 17, 2, 20, 1, 14, 9, 20]
PROMPT_LENS = [12, 12, 1, 5, 1, 14, 4, 20]
ALL = list(range(len(LENGTHS)))
TIE_FREE = [0, 1, 2, 5, 6, 7]  # rows without equal finite logits (3 has ties, 4 is flat)
EOS = [2, 7]
# Processors whose decisions depend on the logit values alone: tied logits must be treated alike.
WARPERS = {"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
           "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper"}


def make_inputs():
    gen = torch.Generator().manual_seed(20240607)
    rows = [
        torch.randn(V, generator=gen) * 2,
        torch.randn(V, generator=gen) * 4,
        torch.randn(V, generator=gen) + 12 * (torch.arange(V) == 17),  # one dominant token
        torch.round(torch.randn(V, generator=gen) * 2) / 2,  # many exact ties
        torch.zeros(V),  # flat
        torch.randn(V, generator=gen) * 3,
        torch.randn(V, generator=gen),  # close to flat
        torch.randn(V, generator=gen) * 6,  # heavy head
    ]
    logits = torch.stack(rows).float()
    logits[5, torch.rand(V, generator=gen) < 0.33] = -float("inf")
    # Ids from a small range so that tokens and n-grams repeat; two rows cycle a short pattern.
    ids = torch.randint(0, 24, (len(rows), L), generator=gen)
    ids[3] = torch.tensor([4, 9, 11] * 6 + [4, 9])
    ids[7] = torch.tensor([30, 31, 30, 31, 32] * 4)
    ids[1, 3] = 2  # an EOS id inside a sequence
    return logits, ids.to(torch.int32)


def single_cases():
    """(name, processor class name, params, rows, factory(prompt_len))."""
    cases = []

    def add(name, cls, params, rows=ALL, prompt_dependent=False):
        ctor = getattr(lp, cls)
        if prompt_dependent:
            factory = lambda p, kw=params: ctor(prompt_length_to_skip=p, **kw)  # noqa: E731
        else:
            factory = lambda p, kw=params: ctor(**kw)  # noqa: E731
        cases.append((name, cls, params, rows, factory))

    for t in (0.7, 1.3, 0.05):
        add(f"temperature_{t}", "TemperatureLogitsWarper", {"temperature": t})
    for k, keep in ((1, 1), (5, 1), (40, 1), (200, 1), (3, 5)):
        add(f"top_k_{k}_keep{keep}", "TopKLogitsWarper", {"top_k": k, "min_tokens_to_keep": keep})
    for p, keep in ((0.9, 1), (0.5, 1), (0.05, 1), (0.95, 3), (0.0, 2)):
        add(f"top_p_{p}_keep{keep}", "TopPLogitsWarper", {"top_p": p, "min_tokens_to_keep": keep}, TIE_FREE)
    for p, keep in ((0.05, 1), (0.2, 1), (0.0, 1), (1.0, 1), (0.5, 3)):
        rows = ALL if keep == 1 else TIE_FREE  # topk over tied probabilities picks an arbitrary one
        add(f"min_p_{p}_keep{keep}", "MinPLogitsWarper", {"min_p": p, "min_tokens_to_keep": keep}, rows)
    for m, keep in ((0.9, 1), (0.5, 1), (0.2, 1), (0.6, 4)):
        add(f"typical_{m}_keep{keep}", "TypicalLogitsWarper", {"mass": m, "min_tokens_to_keep": keep},
            ALL if keep == 1 else TIE_FREE)
    for e, keep in ((3e-4, 1), (0.02, 1), (0.2, 1), (0.05, 3)):
        add(f"epsilon_{e}_keep{keep}", "EpsilonLogitsWarper", {"epsilon": e, "min_tokens_to_keep": keep},
            ALL if keep == 1 else TIE_FREE)
    for e, keep in ((3e-4, 1), (0.01, 1), (0.2, 1), (0.05, 2)):
        add(f"eta_{e}_keep{keep}", "EtaLogitsWarper", {"epsilon": e, "min_tokens_to_keep": keep},
            ALL if keep == 1 else TIE_FREE)
    for p in (1.3, 0.7):
        add(f"repetition_{p}", "RepetitionPenaltyLogitsProcessor", {"penalty": p})
    for n in (1, 2, 3, 25):
        add(f"no_repeat_ngram_{n}", "NoRepeatNGramLogitsProcessor", {"ngram_size": n})
    for m in (5, 9):
        add(f"min_new_tokens_{m}", "MinNewTokensLengthLogitsProcessor",
            {"min_new_tokens": m, "eos_token_id": EOS}, prompt_dependent=True)
    add("min_length_15", "MinLengthLogitsProcessor", {"min_length": 15, "eos_token_id": EOS})
    # Single tokens, the same last token twice (biases add), prefixes matching the ends of rows 3
    # and 7, and a prefix longer than the short rows.
    add("sequence_bias", "SequenceBiasLogitsProcessor", {"sequence_bias": [
        [[5], 2.5], [[17], -3.0], [[9, 11], 1.5], [[11, 4], -2.0], [[30, 31, 32], 4.0],
        [[4, 9, 11, 4], 0.75], [[20, 11], 1.0], [[5, 31], 0.5], [[30, 31], -1.25]]})
    # [2] is an EOS id: transformers drops single-token bad words that are EOS.
    add("bad_words", "NoBadWordsLogitsProcessor", {"bad_words_ids": [
        [3], [2], [9, 11], [31, 32], [4, 9, 11, 4, 9], [40, 41], [13]], "eos_token_id": EOS})
    add("log_softmax", "LogitNormalization", {})
    return cases


# Generation configs for the full chain (GenerationMixin._get_logits_processor). Unset fields take
# GenerationConfig._get_default_generation_params(), as generate() does.
CHAINS = {
    # Greedy: the warpers are left out although temperature and top_k are set.
    "greedy_penalties": {"do_sample": False, "temperature": 0.7, "repetition_penalty": 1.2,
                         "no_repeat_ngram_size": 2, "bad_words_ids": [[3], [9, 11]],
                         "min_new_tokens": 6, "eos_token_id": EOS, "pad_token_id": 0},
    "sample_all_warpers": {"do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.95,
                           "min_p": 0.02, "typical_p": 0.97, "epsilon_cutoff": 3e-4,
                           "eta_cutoff": 1e-3, "repetition_penalty": 1.1,
                           "sequence_bias": [[[5], 2.5], [[9, 11], -1.5]],
                           "eos_token_id": 2},
    "sample_defaults": {"do_sample": True, "eos_token_id": [2]},
    # Beam sampling keeps len(eos) + 1 tokens in every warper.
    "beam_sample_keep": {"do_sample": True, "num_beams": 3, "top_k": 1, "top_p": 0.1,
                         "eos_token_id": EOS},
    "sample_renormalize": {"do_sample": True, "temperature": 1.5, "top_k": 0, "top_p": 0.8,
                           "renormalize_logits": True, "min_length": 15, "eos_token_id": EOS},
}


def tiny_model():
    cfg = MambaConfig(vocab_size=V, hidden_size=8, state_size=4, num_hidden_layers=1, expand=2,
                      conv_kernel=2, time_step_rank=2, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None)
    return MambaForCausalLM(cfg).eval()


def chain_factory(model, config):
    def make(prompt_len, ids):
        gc = GenerationConfig(**{**GenerationConfig._get_default_generation_params(), **config})
        model._prepare_special_tokens(gc, True, device="cpu", batch_size=1)
        gc = model._prepare_generated_length(
            gc, has_default_max_length=True, has_default_min_length="min_length" not in config,
            model_input_name="input_ids", inputs_tensor=ids[:, :prompt_len], input_ids_length=prompt_len)
        return model._get_logits_processor(gc, input_ids_seq_length=prompt_len,
                                           encoder_input_ids=ids[:, :prompt_len], device="cpu",
                                           model_kwargs={})
    return make


def run_case(name, factory, rows, logits, ids, check_ties):
    outs = []
    for r in rows:
        seq = ids[r : r + 1, : LENGTHS[r]].long()
        x = logits[r : r + 1]
        out32 = factory(PROMPT_LENS[r], seq)(seq, x.clone())
        out64 = factory(PROMPT_LENS[r], seq)(seq, x.double())
        removed = torch.isneginf(out32[0])
        assert out32.dtype == torch.float32, name
        assert torch.equal(removed, torch.isneginf(out64[0])), f"{name} row {r}: float32 vs float64 masks differ"
        if check_ties:
            for v in torch.unique(x[0][torch.isfinite(x[0])]):
                group = removed[x[0] == v]
                assert group.all() or not group.any(), f"{name} row {r}: tied logits {v} split"
        outs.append(out32[0])
    return torch.stack(outs)


def main():
    torch.use_deterministic_algorithms(True)
    logits, ids = make_inputs()
    tensors = {"logits": logits, "ids": ids, "lengths": torch.tensor(LENGTHS, dtype=torch.int32),
               "prompt_lens": torch.tensor(PROMPT_LENS, dtype=torch.int32)}
    cases = []
    for name, cls, params, rows, factory in single_cases():
        value_only = cls in WARPERS
        tensors[f"out.{name}"] = run_case(name, lambda p, s, f=factory: f(p), rows, logits, ids, value_only)
        cases.append({"name": name, "processor": cls, "params": params, "rows": rows})

    model = tiny_model()
    for name, config in CHAINS.items():
        make = chain_factory(model, config)
        # Sampling sorts by probability: rows with ties would make the kept set order-dependent.
        rows = TIE_FREE if config["do_sample"] else ALL
        tensors[f"out.{name}"] = run_case(name, make, rows, logits, ids, False)
        seq = ids[:1].long()
        names = [type(p).__name__ for p in make(PROMPT_LENS[0], seq)]
        cases.append({"name": name, "processor": "chain", "config": config, "rows": rows,
                      "hf_processors": names})

    os.makedirs(OUT_DIR, exist_ok=True)
    st = os.path.join(OUT_DIR, "processors.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, st,
              metadata={"source": f"transformers logits processors, torch={torch.__version__}"})
    with open(os.path.join(OUT_DIR, "processors.json"), "w") as f:
        json.dump({"vocab_size": V, "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"wrote {st} ({os.path.getsize(st)} bytes) and processors.json ({len(cases)} cases)")


if __name__ == "__main__":
    main()
