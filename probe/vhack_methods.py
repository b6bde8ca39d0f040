"""v_hack extraction methods as data, keyed by (method, control).

A method is how a contrastive pair becomes a gradient difference (`PairGrads`); the directions
(normalised mean, or top-k oriented hack-ward) and the random / shuffled controls are the same code
for every method (`probe.vhack.extract_directions`). A third method is one `METHODS` entry:
its files (`v_<kind>.safetensors`), replay columns (`cos_<kind>`) and R4 statistics follow.
The NLL method keeps its historical names (`v_nll`, `v_random`, `v_shuffled`, `cos_S_contrib`),
so runs made before the registry read unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from probe.adapters.base import Adapter
from probe.vhack import PairGrads, VHackConfig, extract_directions, nll_pair_grads
from probe.vhack_grpo import LOSS as GRPO_LOSS
from probe.vhack_grpo import grpo_pair_grads
from probe.world.base import Pair


@dataclass(frozen=True)
class Method:
    name: str
    loss: str  # written to every file's metadata: what the pair gradients are gradients of
    pair_grads: Callable[[int], PairGrads]  # the world's max_new_tokens -> the pair differences
    about: str = ""  # one line for reports


METHODS: dict[str, Method] = {
    "nll": Method("nll", "mean_nll_completion", lambda max_new_tokens: nll_pair_grads,
                  "∇ mean-NLL(hack) − ∇ mean-NLL(clean)"),
    "grpo": Method("grpo", GRPO_LOSS, lambda max_new_tokens: grpo_pair_grads(float(max_new_tokens)),
                   "Dr.GRPO surrogate, Â = +1 hack / −1 clean, ratio 1, ÷ max_new_tokens"),
}
CONTROLS = ("random", "shuffled")


def kind(method: str, control: str | None = None) -> str:
    """The file / column name of (method, control)."""
    if method not in METHODS:
        raise ValueError(f"unknown v_hack method {method!r}; expected one of {list(METHODS)}")
    if control is not None and control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; expected one of {CONTROLS}")
    if method == "nll":
        return control or "nll"
    return method if control is None else f"{method}_{control}"


KINDS: dict[tuple[str, str | None], str] = {
    (m, c): kind(m, c) for m in METHODS for c in (None, *CONTROLS)}


def method_kinds(method: str) -> tuple[str, ...]:
    """The method's direction, then its controls."""
    return tuple(kind(method, c) for c in (None, *CONTROLS))


def column(k: str) -> str:
    """The vanilla-replay column holding each row's cosine with direction kind `k`."""
    return "cos_S_contrib" if k == "nll" else f"cos_{k}"


def extract_method(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair], config: VHackConfig,
                   method: str, max_new_tokens: int
                   ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """One method's direction and controls, keyed by kind, and its extraction statistics."""
    m = METHODS[method]
    vs, stats = extract_directions(adapter, tokenizer, pairs, config, method,
                                   desc=f"v_hack pairs ({method})",
                                   pair_grads=m.pair_grads(max_new_tokens))
    stats["hack_styles"] = sorted({p.hack_style for p in pairs})
    return {kind(method, None if k == method else k): V for k, V in vs.items()}, stats
