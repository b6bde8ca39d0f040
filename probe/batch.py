"""(prompt, completion) token sequences padded into one batch, with the loss mask built once.

The mask marks *target* positions: `loss_mask[n, t] = 1` iff token t of row n is a completion
token (so the logit at t-1 predicts it). Prompt and padding are never targets, whichever side the
padding is on; position ids follow the attention mask so left padding does not shift positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    loss_mask: torch.Tensor  # (B, T) float, 1 on completion (target) tokens
    position_ids: torch.Tensor  # (B, T) long

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def n_completion_tokens(self) -> torch.Tensor:
        return self.loss_mask.sum(-1)

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                   self.loss_mask, self.position_ids)))

    def select(self, rows: Sequence[int] | slice) -> "TokenBatch":
        return TokenBatch(self.input_ids[rows], self.attention_mask[rows], self.loss_mask[rows],
                          self.position_ids[rows])


def collate(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
            side: str = "right") -> TokenBatch:
    """Pad prompt+completion rows to one length on `side` ('left' or 'right')."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("an empty prompt: every row needs a non-empty prompt (the first "
                         "completion token must be predicted from a real token)")
    rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    b = len(rows)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.float32)
    for n, (row, p) in enumerate(zip(rows, prompts)):
        off = width - len(row) if side == "left" else 0
        ids[n, off:off + len(row)] = torch.tensor(row, dtype=torch.long)
        attn[n, off:off + len(row)] = 1
        mask[n, off + len(p):off + len(row)] = 1.0
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return TokenBatch(ids, attn, mask, pos)
