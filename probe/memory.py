"""Micro-batch sizes from the device's free memory, before any work starts.

A stage that batches (generation, v_hack extraction, replay, GRPO) either takes the configured
number or, for None ("auto"), the largest batch whose estimated memory fits in `FILL` of what the
device has free now (CUDA: `torch.cuda.mem_get_info` plus PyTorch's cached-but-unused blocks;
CPU: MemAvailable from /proc/meminfo). When not even one row fits, it fails at once with a message
naming the config knob — not after minutes of work (issue #13: a 0.5B model's v_hack extraction
on a 24 GiB CPU machine ran out of memory after ~4 minutes at the default batch size).

The estimates are per token, from the model's config, calibrated on Qwen3-4B at B8 x T1024 in
bf16 (81 GiB measured with the reference δS branch, ~63 GiB of it activations): conservative for
the fused branch, which keeps less.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

FILL = 0.8  # of the free memory a batch may plan to use (allocator fragmentation, temporaries)
MAX_AUTO_BATCH = 64  # beyond this a bigger batch buys no throughput on one GPU


class MemoryBudgetError(RuntimeError):
    """Not even one row fits; the message names the knob to change."""


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
                     knob: str, free: int | None = None, cap: int = MAX_AUTO_BATCH) -> int:
    """Rows per batched per-sample-gradient pass at `seq_len` tokens (prompt + completion)."""
    shape = model_shape(model)
    per_row = shape.train_bytes_per_token() * seq_len
    free = free_bytes(device) if free is None else free
    n = pick_batch(per_row, free, knob, cap, f"a {seq_len}-token row's backward")
    log.info("%s = auto: %d rows (~%.2f GiB each at %d tokens, %.1f GiB free)", knob, n,
             per_row / 2**30, seq_len, free / 2**30)
    return n


def generation_batch(model: torch.nn.Module, total_len: int, device: str | torch.device,
                     knob: str = "gen_batch_size", free: int | None = None,
                     cap: int = 2 * MAX_AUTO_BATCH) -> int:
    """Sequences per generate call when each grows to `total_len` tokens (prompt + new)."""
    shape = model_shape(model)
    per_row = shape.generate_bytes_per_token() * total_len + shape.generate_bytes_per_row()
    free = free_bytes(device) if free is None else free
    n = pick_batch(per_row, free, knob, cap, f"a {total_len}-token sequence's KV cache")
    log.info("%s = auto: %d sequences (~%.2f GiB each, %.1f GiB free)", knob, n,
             per_row / 2**30, free / 2**30)
    return n


def resolve(value: int | None, pick) -> int:
    """A configured batch size, or `pick()` for None (auto)."""
    return value if value is not None else pick()
