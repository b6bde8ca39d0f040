"""Text -> token ids the same way for pairs, pools and replays (prompt raw, completion + eos)."""
from __future__ import annotations

from typing import Any


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The rendered prompt already holds any chat special tokens: add none."""
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def encode_completion(tokenizer: Any, completion: str, add_eos: bool = True) -> list[int]:
    """A completion as the policy would emit it: its tokens, then eos (where generation stops)."""
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def pad_id(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return int(pid)
