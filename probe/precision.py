"""The compute dtype of a world's models: a setting, and for `auto` a measured rule.

- `float32` / `bfloat16` / `float16`: as set.
- `float32_tf32`: float32 weights with TF32 tensor-core matmuls on CUDA (process-wide). Measured on
  one H200 at the Qwen3-4B shape (README): per-sample δS gradients at cosine 0.99999 with float32's
  (bf16: 0.956, failing R2's 0.99) at 0.22× float32's time, for about twice bf16's memory.
- `auto` on CUDA: bfloat16 (float16 where bf16 is unsupported): tensor cores; fidelity is checked.
- `auto` on CPU: float32 for small models (hidden < `CPU_BF16_MIN_HIDDEN`: a matmul that small
  gains little and the embedded world's statistics are defined in float32); for larger ones, a
  d×d matmul is timed in both dtypes once per process and bfloat16 is taken when it measures at
  least `CPU_BF16_MIN_SPEEDUP`× faster (a 0.5B model's CPU measured ~3× here).
Whatever the choice, R2's fidelity check (probe.fidelity) compares per-sample gradients at the run's
dtype with a float32 recomputation, so a fast dtype that makes the cosines noise fails loudly.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}
TF32 = "float32_tf32"
SETTINGS = ("auto", *DTYPES, TF32)
CPU_BF16_MIN_HIDDEN = 1024
CPU_BF16_MIN_SPEEDUP = 1.5


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    rule: str  # why this dtype, for the manifest
    measured: dict[str, Any] = field(default_factory=dict)
    tf32: bool = False  # float32 matmuls on TF32 tensor cores (CUDA)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """float32 matmuls without TF32 inside (the fidelity check's reference), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@functools.lru_cache(maxsize=8)
def cpu_bf16_speedup(d: int, reps: int = 3) -> float:
    """fp32 time / bf16 time of a d×d @ d×d matmul on this CPU (best of `reps` after a warm-up)."""
    times = {}
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(d, d).to(dt)
        b = torch.randn(d, d).to(dt)
        a @ b
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        times[dt] = best
    return times[torch.float32] / max(times[torch.bfloat16], 1e-12)


def choose_dtype(setting: str, device: str | torch.device, hidden_size: int | None) -> DtypeChoice:
    """The dtype for `setting` on `device` (see the module docstring for the rule)."""
    if setting not in SETTINGS:
        raise ValueError(f"dtype: {setting!r} is not one of {SETTINGS}")
    if setting == TF32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return DtypeChoice(torch.float32, "set in the config: float32, TF32 matmuls on CUDA",
                           tf32=True)
    if setting != "auto":
        return DtypeChoice(DTYPES[setting], "set in the config")
    dev = torch.device(device)
    if dev.type == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return DtypeChoice(torch.bfloat16 if bf16 else torch.float16, "auto: CUDA")
    if hidden_size is None or hidden_size < CPU_BF16_MIN_HIDDEN:
        return DtypeChoice(torch.float32, f"auto: CPU, hidden {hidden_size} < "
                                          f"{CPU_BF16_MIN_HIDDEN} (bf16 gains little)")
    d = min(hidden_size, 2048)
    speedup = cpu_bf16_speedup(d)
    measured = {"cpu_bf16_speedup": speedup, "matmul_d": d}
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        choice = DtypeChoice(torch.bfloat16, f"auto: CPU bf16 matmul measured {speedup:.2f}x "
                                             f"float32 at d={d}", measured)
    else:
        choice = DtypeChoice(torch.float32, f"auto: CPU bf16 matmul measured only {speedup:.2f}x "
                                            f"float32 at d={d}", measured)
    log.info("compute dtype %s (%s)", choice.dtype, choice.rule)
    return choice
