"""Fixtures for the unit tier: tiny Qwen3 models built in-process (no hub), small batches."""
from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

VOCAB = 96


def make_tiny_qwen3(seed: int = 0, **overrides) -> Qwen3ForCausalLM:
    """A 2-layer Qwen3 with the real architecture, float32, eval mode."""
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
               max_position_embeddings=128)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(**cfg)).eval()


@pytest.fixture
def tiny_model() -> Qwen3ForCausalLM:
    return make_tiny_qwen3()


@pytest.fixture
def ragged_pairs() -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and completions of different lengths (token 0 is reserved for padding)."""
    g = torch.Generator().manual_seed(1)

    def seq(n: int) -> list[int]:
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    prompts = [seq(n) for n in (5, 9, 3, 7)]
    completions = [seq(n) for n in (6, 2, 8, 4)]
    return prompts, completions
