"""Adapters as data: an `AdapterSpec` names a kind and its settings; `build_adapter` makes one.

Stages, checks and v_hack code build adapters only through here, so a new kind (LoRA for R6) is one
constructor `(model, spec) -> Adapter` and one `ADAPTERS` entry; nothing downstream names a class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from probe.adapters.antipasto import build_delta_s
from probe.adapters.base import DEFAULT_TARGETS, Adapter
from probe.adapters.lora import build_lora


@dataclass(frozen=True)
class AdapterSpec:
    kind: str = "delta_s"  # a key of ADAPTERS
    rank: int | None = None  # δS: None = full rank; LoRA: its r (the kind decides a default)
    alpha: float | None = None  # LoRA's scale numerator (alpha / r); δS has none
    targets: tuple[str, ...] = DEFAULT_TARGETS  # last component of each wrapped Linear's name
    init: str = "default"  # the kind's own initialisation scheme; "default" is identity at init
    seed: int = 0  # for kinds whose init draws random numbers (LoRA's A)


ADAPTERS: dict[str, Callable[[nn.Module, AdapterSpec], Adapter]] = {
    "delta_s": build_delta_s,
    "lora": build_lora,  # R6: PEFT's LoRA layers behind the same flat interface
}


def build_adapter(model: nn.Module, spec: AdapterSpec | None = None) -> Adapter:
    """Wrap `model` (in place) with the adapter `spec` describes."""
    spec = spec or AdapterSpec()
    if spec.kind not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {spec.kind!r}; expected one of {sorted(ADAPTERS)}")
    return ADAPTERS[spec.kind](model, spec)
