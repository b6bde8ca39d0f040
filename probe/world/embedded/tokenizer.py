"""A byte-level BPE trained in-process on the world's corpus, wrapped as a transformers tokenizer.

Digits are split into single tokens before BPE: with multi-digit tokens a small model learns every
template's shape but never copies the constant from prompt to code (world-notes.md: 1/80 vs 69/80
held-out correct). The byte-level step runs without the GPT-2 word regex, so the fixed prompt
skeleton merges into a few long tokens; short sequences are what makes CPU training fit in minutes.
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")  # render_plain's role markers


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train the BPE on `texts` and wrap it with eos/pad set (pad != eos, so masks stay exact)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=list(ROLE_TOKENS))
    fast.padding_side = "left"  # generation pads on the left; training pads by hand
    return fast
