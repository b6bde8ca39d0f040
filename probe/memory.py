"""Micro-batch sizes from the device's free memory, before any work starts.

A stage that batches (generation, v_hack extraction, replay, GRPO) either takes the configured
number or, for "auto", the largest batch (up to the knob's cap: its old fixed default) whose
estimated memory fits in `FILL` of what the device has free now (CUDA: `torch.cuda.mem_get_info`
plus PyTorch's cached-but-unused blocks; CPU: MemAvailable from /proc/meminfo). When not even
one row fits, it fails at once with a message naming the config knob — not after minutes of work
(issue #13: a 0.5B model's v_hack extraction on a 24 GiB CPU machine ran out of memory after ~4
minutes at the default batch size); an out-of-memory inside a batched pass names the knob too
(`oom_names_knob`). Where memory does not bind, "auto" is exactly the cap, so results are those
of the old fixed default (and key as it: `probe.artifacts.as_keyed`).

The estimates are per token, from the model's config, calibrated on Qwen3-4B at B8 x T1024 in
bf16 (81 GiB measured with the reference δS branch, ~63 GiB of it activations): conservative for
the fused branch, which keeps less.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator

import torch

from probe.artifacts import AUTO

log = logging.getLogger(__name__)

FILL = 0.8  # of the free memory a batch may plan to use (allocator fragmentation, temporaries)
MAX_AUTO_BATCH = 64  # beyond this a bigger batch buys no throughput on one GPU
CPU_OOM = ("DefaultCPUAllocator", "not enough memory")  # a CPU allocation failure's RuntimeError


class MemoryBudgetError(RuntimeError):
    """Not even one row fits, or a batched pass ran out of memory; the message names the knob."""


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # kv heads x head dim
    q_dim: int  # attention heads x head dim
    vocab: int
    dtype_bytes: int

    @property
    def adapter_rank_per_layer(self) -> int:
        """Σ r over the 7 δS-wrapped Linears of one layer (full rank: min(d_in, d_out))."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        return min(h, q) * 2 + min(h, kv) * 2 + min(h, i) * 3

    def train_bytes_per_token(self) -> int:
        """Activations kept for the backward of a per-sample-gradient pass, per token: per layer
        the residual/norm/attention tensors (~16 x hidden), the MLP's (4 x intermediate) and the δS
        branch's (Σ r), in the model dtype; plus the LM head's logits (bf16, float32 and its
        gradient) for a target token."""
        per_layer = 16 * self.hidden + 4 * self.intermediate + self.adapter_rank_per_layer
        return self.dtype_bytes * self.layers * per_layer + 10 * self.vocab

    def generate_bytes_per_token(self) -> int:
        """KV cache per token (keys and values of every layer)."""
        return 2 * self.layers * self.kv_dim * self.dtype_bytes

    def generate_bytes_per_row(self) -> int:
        """Per sequence, beside its KV cache: sampling's float32 logits and their sorted copy."""
        return 16 * self.vocab


def model_shape(model: torch.nn.Module) -> ModelShape:
    """The shape numbers of an HF causal LM (its `config`)."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if cfg is None:
        raise ValueError("model has no config: cannot size batches from memory")
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    dtype = next(model.parameters()).dtype
    return ModelShape(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                      intermediate=getattr(cfg, "intermediate_size", 4 * cfg.hidden_size),
                      kv_dim=kv_heads * head_dim, q_dim=heads * head_dim, vocab=cfg.vocab_size,
                      dtype_bytes=torch.finfo(dtype).bits // 8)


def free_bytes(device: str | torch.device) -> int:
    """Bytes this process could still allocate on `device`."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    with open("/proc/meminfo") as fh:
        info = dict(line.split(":", 1) for line in fh)
    return int(info["MemAvailable"].split()[0]) * 1024


def pick_batch(per_row: int, free: int, knob: str, cap: int = MAX_AUTO_BATCH,
               what: str = "a row") -> int:
    """The largest batch (≤ cap) whose `per_row` bytes each fit in FILL × `free`."""
    budget = int(free * FILL)
    n = min(cap, budget // max(per_row, 1))
    if n < 1:
        raise MemoryBudgetError(
            f"{what} needs ~{per_row / 2**30:.1f} GiB but {free / 2**30:.1f} GiB is free "
            f"({FILL:.0%} of it plannable): even {knob} = 1 does not fit; shorten the sequences "
            f"(max_new_tokens), use a smaller model or dtype, or another device")
    return n


def grad_micro_batch(model: torch.nn.Module, seq_len: int, device: str | torch.device,
                     knob: str, free: int | None = None, cap: int = MAX_AUTO_BATCH,
                     rows_per_item: int = 1) -> int:
    """Items per batched per-sample-gradient pass, each `rows_per_item` rows (a v_hack pair is a
    hack and a clean row) of `seq_len` tokens (prompt + completion)."""
    shape = model_shape(model)
    per_item = shape.train_bytes_per_token() * seq_len * rows_per_item
    free = free_bytes(device) if free is None else free
    what = f"{rows_per_item} {seq_len}-token rows' backward" if rows_per_item > 1 \
        else f"a {seq_len}-token row's backward"
    n = pick_batch(per_item, free, knob, cap, what)
    _report(knob, n, "%s = auto: %d (~%.2f GiB each at %d tokens, %.1f GiB free)", knob, n,
            per_item / 2**30, seq_len, free / 2**30)
    return n


def generation_batch(model: torch.nn.Module, total_len: int, device: str | torch.device,
                     knob: str = "gen_batch_size", free: int | None = None,
                     cap: int = 2 * MAX_AUTO_BATCH) -> int:
    """Sequences per generate call when each grows to `total_len` tokens (prompt + new)."""
    shape = model_shape(model)
    per_row = shape.generate_bytes_per_token() * total_len + shape.generate_bytes_per_row()
    free = free_bytes(device) if free is None else free
    n = pick_batch(per_row, free, knob, cap, f"a {total_len}-token sequence's KV cache")
    _report(knob, n, "%s = auto: %d sequences (~%.2f GiB each, %.1f GiB free)", knob, n,
            per_row / 2**30, free / 2**30)
    return n


_LAST: dict[str, int] = {}  # knob -> the value last logged at INFO


def _report(knob: str, n: int, msg: str, *args: object) -> None:
    """INFO when a knob's resolved value is new or changed (a stage resolves once per step or
    call), DEBUG otherwise."""
    log.log(logging.INFO if _LAST.get(knob) != n else logging.DEBUG, msg, *args)
    _LAST[knob] = n


def check_batch(value: int | str, knob: str) -> None:
    """A batch knob's value is a positive int or "auto"; anything else names the knob."""
    if value != AUTO and (type(value) is not int or value < 1):
        raise ValueError(f"{knob}: {value!r} is not a positive integer or {AUTO!r}")


def number(value: int | str, knob: str) -> int:
    """A batch size a pass can use: "auto" must have been resolved by its stage first."""
    if type(value) is not int:
        raise TypeError(f"{knob} = {value!r}: resolve it to a number first (probe.memory)")
    return value


def resolve_grad_batch(value: int | str, model: torch.nn.Module, seq_len: int,
                       device: str | torch.device, knob: str, cap: int,
                       rows_per_item: int = 1) -> int:
    """`value` as given, or for "auto" the most items of `seq_len` tokens whose per-sample
    backward fits the device's free memory now, at most `cap` (fails naming `knob` if none
    does). A logprob-only pass uses it too: conservative, it keeps less."""
    check_batch(value, knob)
    if value != AUTO:
        return int(value)
    return grad_micro_batch(model, max(seq_len, 1), device, knob, cap=cap,
                            rows_per_item=rows_per_item)


def resolve_generation_batch(value: int | str, model: torch.nn.Module, total_len: int,
                             device: str | torch.device, knob: str, cap: int) -> int:
    """`value` as given, or for "auto" the most sequences growing to `total_len` tokens whose KV
    cache fits the device's free memory now, at most `cap` (fails naming `knob` if none does)."""
    check_batch(value, knob)
    if value != AUTO:
        return int(value)
    return generation_batch(model, max(total_len, 1), device, knob, cap=cap)


def is_oom(e: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and any(m in str(e) for m in CPU_OOM))


@contextlib.contextmanager
def oom_names_knob(knob: str, batch: int) -> Iterator[None]:
    """An out-of-memory inside a batched pass becomes a MemoryBudgetError naming the knob and
    the batch in use (the stages checkpoint per step: a rerun resumes where this one stopped)."""
    try:
        yield
    except MemoryBudgetError:
        raise
    except RuntimeError as e:
        if not is_oom(e):
            raise
        raise MemoryBudgetError(
            f"out of memory at {knob} = {batch}: lower {knob}, or set it to {AUTO!r} to size it "
            f"from the free memory ({type(e).__name__}: {str(e)[:200]})") from e
