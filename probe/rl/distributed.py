"""Data parallel GRPO steps over `torch.distributed` ranks (NCCL on GPUs, gloo on CPU).

Each rank computes the per-sample gradients and cosines of its share of a batch's rows (rows
n ≡ rank mod world size); the summed gradient is all-reduced *before* projection, clipping and
AdamW, so every rank then takes the identical step, and the per-row records are gathered back in
row order. The loss is a plain sum over rows (Dr.GRPO's constant normaliser), so the all-reduced
sum is the single-process gradient up to float summation order (tests/unit/test_distributed.py).
Without an initialised process group everything is the single-process path.
"""
from __future__ import annotations

from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: Sequence[T]) -> tuple[list[T], list[int]]:
    """This rank's items and their indices in `items`."""
    rank, size = rank_and_size()
    idx = list(range(rank, len(items), size))
    return [items[i] for i in idx], idx


def all_reduce_sum_(tensors: dict[str, torch.Tensor]) -> None:
    """In place: every rank ends with the sum over ranks (no-op on one process)."""
    if rank_and_size()[1] == 1:
        return
    for t in tensors.values():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def gather_in_order(local: list[Any], idx: list[int], n: int) -> list[Any]:
    """Every rank's items put back at their original positions (no-op on one process)."""
    if rank_and_size()[1] == 1:
        return local
    parts: list[Any] = [None] * rank_and_size()[1]
    dist.all_gather_object(parts, (idx, local))
    out: list[Any] = [None] * n
    for part_idx, part in parts:
        for i, item in zip(part_idx, part):
            out[i] = item
    return out


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (a list of one on one process)."""
    if rank_and_size()[1] == 1:
        return [obj]
    parts: list[Any] = [None] * rank_and_size()[1]
    dist.all_gather_object(parts, obj)
    return parts
