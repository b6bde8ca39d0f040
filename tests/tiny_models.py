"""Tiny random Qwen3 models, tokenizers and LoRA adapters, built in-process for tests.

Unit tests must exercise the real loading / merging / rendering code paths without a hub or a 4B
checkpoint, so everything here is built from scratch: a few-layer Qwen3ForCausalLM with random
weights, a byte-level tokenizer with a Qwen3-like chat template (thinking switch included), and a
PEFT LoRA adapter whose A *and* B are random (PEFT zero-inits B, which would make any merge a no-op
and hide a skipped merge).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from probe.adapters.antipasto import DEFAULT_TARGETS

if TYPE_CHECKING:
    from probe.env.problems import Problem

log = logging.getLogger(__name__)

LORA_TARGETS = DEFAULT_TARGETS  # the teacher adapts what the δS adapter wraps

# Special tokens in Qwen3's spelling; ids follow the 256 byte-level tokens.
EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END, "<think>", "</think>")
TINY_VOCAB = 320  # >= 256 bytes + specials, a multiple of 64

# A trimmed Qwen3 template: same markers, same `enable_thinking=False` empty think block.
QWEN3_LIKE_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def tiny_qwen3_config(**overrides) -> Qwen3Config:
    """A Qwen3 config small enough to run a forward pass in milliseconds on CPU."""
    kw = dict(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        tie_word_embeddings=True, rms_norm_eps=1e-6, pad_token_id=256, bos_token_id=None,
        eos_token_id=256,
    )
    kw.update(overrides)
    if "head_dim" not in overrides and "hidden_size" in overrides:
        kw["head_dim"] = kw["hidden_size"] // kw["num_attention_heads"]
    return Qwen3Config(**kw)


def tiny_qwen3(seed: int = 0, **overrides) -> Qwen3ForCausalLM:
    """A float32 random tiny Qwen3 in eval mode; the same seed gives the same weights."""
    config = tiny_qwen3_config(**overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    return model.to(torch.float32).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (every string encodes, ids < 261) with Qwen3's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    assert len(vocab) == 256, len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = QWEN3_LIKE_CHAT_TEMPLATE
    assert len(fast) <= TINY_VOCAB, len(fast)
    return fast


def save_tiny_base(out_dir: str | Path, seed: int = 0, with_tokenizer: bool = True,
                   **overrides) -> Path:
    """Save a tiny base (and tokenizer) with `save_pretrained`, as a local model dir would look."""
    out = Path(out_dir)
    tiny_qwen3(seed, **overrides).save_pretrained(out)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(out)
    return out


def save_random_lora(model: PreTrainedModel, out_dir: str | Path, r: int = 4, seed: int = 0,
                     target_modules: Iterable[str] = LORA_TARGETS,
                     base_model_name_or_path: str = "tiny-qwen3", alpha: int | None = None,
                     std: float = 0.1) -> Path:
    """Save a PEFT LoRA adapter for `model` with nonzero random A and B, in PEFT's disk format.

    `model` is not modified (a deep copy is wrapped). `alpha` defaults to `r` (scale 1, as the
    released adapters use r = alpha = 32).
    """
    from peft import LoraConfig, get_peft_model

    out = Path(out_dir)
    cfg = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else r,
                     target_modules=list(target_modules), lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    gen = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
                n += 1
    if n == 0:
        raise ValueError(f"no LoRA parameters created for target_modules={list(target_modules)}")
    peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path
    # save_embedding_layers=False: "auto" would look the base name up on the hub (no network here).
    peft_model.save_pretrained(out, save_embedding_layers=False)
    # PEFT writes what it was told; make sure the name we promise is on disk.
    cfg_path = out / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = base_model_name_or_path
    cfg_path.write_text(json.dumps(data, indent=2))
    log.debug("saved random LoRA (%d tensors, r=%d) to %s", n, r, out)
    return out


def tiny_problems() -> list["Problem"]:
    """Two hand-written problems in the upstream shape (user message carries the pass phrase)."""
    from probe.env.problems import Problem

    def question(text: str, starter: str) -> str:
        return (f"{text}\n\nYour solution should be a method of the class Solution called "
                f"{starter.split('def ', 1)[1].split('(', 1)[0]} and should pass all tests. Use the "
                f"following starter code:\n```python\n{starter}\n```")

    add_starter = "class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        "
    rev_starter = "class Solution:\n    def reverseWords(self, s: str) -> str:\n        "
    return [
        Problem(id=1, question=question("Return the sum of a and b.", add_starter),
                func_name="Solution().addTwo", setup_code="",
                canonical_solution=add_starter + "return a + b\n",
                gt_answer=("assert Solution().addTwo(1, 2) == 3",
                           "assert Solution().addTwo(-1, 1) == 0"),
                starter_code=add_starter, difficulty="easy"),
        Problem(id=2, question=question("Reverse the order of the words in s.", rev_starter),
                func_name="Solution().reverseWords", setup_code="",
                canonical_solution=rev_starter + "return ' '.join(reversed(s.split()))\n",
                gt_answer=("assert Solution().reverseWords('a b') == 'b a'",),
                starter_code=rev_starter, difficulty="easy"),
    ]
