"""Data parallel GRPO steps over `torch.distributed` ranks (NCCL on GPUs, gloo on CPU).

Each rank computes the per-sample gradients and cosines of its share of a batch's rows (rows
n ≡ rank mod world size); the summed gradient is all-reduced *before* projection, clipping and
AdamW, so every rank then takes the identical step, and the per-row records are gathered back in
row order. The loss is a plain sum over rows (Dr.GRPO's constant normaliser), so the all-reduced
sum is the single-process gradient up to float summation order (tests/unit/test_distributed.py).
Without an initialised process group everything is the single-process path.

The GRPO stage (probe/stages/grpo.py) is rank-aware through the helpers below: each rank samples
and grades its share of a step's groups (`shard` over groups, `gather_in_order` back), every rank
holds every row, only rank 0 (`is_writer`) writes artifacts, and per-job file locks are taken by
rank 0 alone with the decision broadcast (`acquire_collectively`), so ranks never block each other
on a lock while another waits in a collective.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, Sequence, TypeVar

from filelock import BaseFileLock, Timeout

import torch
import torch.distributed as dist

T = TypeVar("T")
log = logging.getLogger(__name__)
TIMEOUT = timedelta(hours=2)  # a rank may wait this long for rank 0 (a teacher job, a v_hack)


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


def is_writer() -> bool:
    """Rank 0 writes the artifacts (every rank holds every row)."""
    return rank_and_size()[0] == 0


def barrier() -> None:
    if rank_and_size()[1] > 1:
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (the object itself on one process)."""
    if rank_and_size()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def acquire_collectively(lock: BaseFileLock, blocking: bool) -> bool:
    """Rank 0 tries (or, `blocking`, waits for) `lock`; every rank gets its answer. Only rank 0
    holds the lock and must release it: the ranks of one run are one job-taker."""
    got = True
    if is_writer():
        try:
            lock.acquire(timeout=-1 if blocking else 0)
        except Timeout:
            got = False
    return broadcast_object(got)


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment): NCCL on
    CUDA, with this rank on GPU LOCAL_RANK, else gloo. Returns the rank's device; without
    torchrun, `device` unchanged and no group."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    log.info("rank %d of %d on %s", dist.get_rank(), size, device)
    return device
