#!/usr/bin/env python3
"""Anchor for `mamba-slm tokenizer train`: HF tokenizers' BpeTrainer with the same settings
(GPT-2 style byte-level, vocab 8192 including <|endoftext|>) on the same files.
    /usr/bin/time -f "%e s %M KB" python3 bench/reference/hf_tokenizer_train.py FILES...
"""
import sys
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
start = time.time()
tok.train(sys.argv[1:], trainer)
print(f"HF BpeTrainer: {time.time() - start:.2f} s")
