"""The δS adapter: each target Linear W = U S Vh gets a trainable additive δS in its singular basis.

A forward hook adds `((x @ Vhᵀ) * δS) @ Uᵀ` to the frozen Linear's output (facts.md §5). At δS = 0
that term is exactly zero, so the wrapped model is bit-identical to the base and doubles as the
reference policy. Hooks (rather than replacing modules) keep the model's own dotted module names and
state dict untouched.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterator

import torch
from torch import nn

# DEFAULT_TARGETS and AdapterStateError are re-exported: older imports name this module
from probe.adapters.base import DEFAULT_TARGETS, Adapter, AdapterStateError  # noqa: F401
from probe.adapters import fused_svd
from probe.adapters.fused_svd import fused_delta_, use_fused

if TYPE_CHECKING:
    from probe.adapters.registry import AdapterSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AntipastoConfig:
    """Which Linears to wrap and at what rank."""

    targets: tuple[str, ...] = DEFAULT_TARGETS  # last component of the module's dotted name
    rank: int | None = None  # None = full rank min(d_in, d_out); else keep the top-`rank` singular axes
    reuse_svd: bool = True  # share U, Vh through SVD_CACHE with earlier adapters on the same weights


def _fingerprint(t: torch.Tensor) -> tuple[float, ...]:
    """A content check of a tensor in one O(n) pass (sum, sum of squares, position-weighted sum):
    a different weight, or factors changed in place since they were cached, do not match."""
    x = t.detach().flatten().double()
    pos = torch.arange(1, x.numel() + 1, dtype=torch.float64, device=x.device) / x.numel()
    return (float(x.sum()), float((x * x).sum()), float((x * pos).sum()))


class SVDCache:
    """U, Vh of each weight computed once per process and shared by every adapter on the same
    weights (each replay arm reloads the base: the SVD of a 4B model is minutes on CPU). Keyed by
    shape, dtype, device, rank and a content fingerprint of the weight, so a different model never
    gets another's factors; a hit re-checks the cached factors too (they are the adapter's buffers,
    and code may flip their signs in place). The cached tensors are the adapters' buffers (no
    copy), so sharing costs no memory while an adapter is alive; `clear()` frees them."""

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[torch.Tensor, torch.Tensor, tuple, tuple]] = {}
        self.hits = self.misses = 0

    def factors(self, weight: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(weight.shape), weight.dtype, str(weight.device), rank, _fingerprint(weight))
        hit = self._entries.get(key)
        if hit is not None and _fingerprint(hit[0]) == hit[2] and _fingerprint(hit[1]) == hit[3]:
            self.hits += 1
            return hit[0], hit[1]
        self.misses += 1
        u, _, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
        r = u.shape[1] if rank is None else min(rank, u.shape[1])
        U, Vh = u[:, :r].to(weight.dtype).contiguous(), vh[:r].to(weight.dtype).contiguous()
        self._entries[key] = (U, Vh, _fingerprint(U), _fingerprint(Vh))
        return U, Vh

    def clear(self) -> None:
        self._entries.clear()


SVD_CACHE = SVDCache()  # the process's cache: every arm of a run reuses the first SVD


class _SVDBranch(nn.Module):
    """Frozen U, Vh of one Linear and its trainable δS."""

    def __init__(self, weight: torch.Tensor, rank: int | None, cache: SVDCache | None = None
                 ) -> None:
        super().__init__()
        if cache is None:
            cache = SVDCache()  # a private one: computed here, not kept
        U, Vh = cache.factors(weight, rank)
        r = U.shape[1]
        self.register_buffer("U", U)
        self.register_buffer("Vh", Vh)
        # δS and its optimizer state stay float32 whatever the model dtype: small updates to a bf16
        # δS would round away. U and Vh follow the weight's dtype (their size is ~2× the model's).
        self.delta_s = nn.Parameter(torch.zeros(r, dtype=torch.float32, device=weight.device))
        self.probe: torch.Tensor | None = None  # (B, r) while probing
        self.enabled = True
        self.fused: bool | None = None  # None: fused_svd's default (on for CUDA training)
        self._zero_key: tuple[int, int] | None = None  # δS (version, storage) when _zero was read
        self._zero = True
        self.siblings: list[_SVDBranch] | None = None  # the adapter's branches, set by it

    @property
    def rank(self) -> int:
        return self.delta_s.shape[0]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.Vh.T  # (..., r)
        s = self.delta_s
        if self.probe is not None:  # per-sample offset, broadcast over the token axes
            s = s + self.probe.view(self.probe.shape[0], *([1] * (h.dim() - 2)), -1)
        return (h * s.to(h.dtype)) @ self.U.T

    def zero_key(self) -> tuple[int, int]:
        """Changes whenever δS may have (its version counter moves on every in-place update)."""
        return self.delta_s._version, self.delta_s.data_ptr()

    def ds_is_zero(self) -> bool:
        """Is δS exactly zero? Read once per change of δS, not once per forward; with `siblings`
        (the adapter's other branches) every changed branch is read in the same host sync, so the
        first forward after an optimizer step costs one sync, not one per module."""
        if self.zero_key() != self._zero_key:
            refresh_zero_flags(self.siblings or [self])
        return self._zero

    def add_to(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The wrapped Linear's output with this branch added (fused node or reference ops)."""
        fused = use_fused(x, self.fused)
        if fused and self.fused is None and fused_svd.FUSED_SVD is None and not self.ds_is_zero():
            # measured on one H200 (README, bench_real_shape): the fused node is 14% faster than
            # the reference ops at δS = 0 but 6-7% slower at δS ≠ 0, so by default it runs only
            # while δS is zero (v_hack extraction, the fidelity check, a run's first step)
            fused = False
        if fused:
            return fused_delta_(output, x, self.U, self.Vh, self.delta_s, self.probe,
                                self.ds_is_zero())
        return output + self.delta(x)


def refresh_zero_flags(branches: list[_SVDBranch]) -> None:
    """Re-read `ds_is_zero` for every branch whose δS changed since it was last read, in one
    host sync per device (max |δS| of each: exactly 0 only when every entry is, NaN never counts
    as 0)."""
    stale = [b for b in branches if b.zero_key() != b._zero_key]
    by_device: dict[torch.device, list[_SVDBranch]] = {}
    for b in stale:
        if b.delta_s.numel() == 0:  # rank 0: nothing to read, trivially zero
            b._zero, b._zero_key = True, b.zero_key()
        else:
            by_device.setdefault(b.delta_s.device, []).append(b)
    for group in by_device.values():  # one sync per device the adapter spans
        peaks = torch._foreach_norm([b.delta_s.detach() for b in group], float("inf"))
        for b, peak in zip(group, torch.stack(peaks).tolist()):
            b._zero, b._zero_key = peak == 0, b.zero_key()


class AntipastoAdapter(Adapter):
    """Wraps `model`'s target Linears in place (via forward hooks) and freezes everything else.
    Each module's flat vector is its δS itself, (r,)."""

    kind: ClassVar[str] = "delta_s"

    def __init__(self, model: nn.Module, config: AntipastoConfig | None = None) -> None:
        self.model = model
        self.config = config or AntipastoConfig()
        self.branches: dict[str, _SVDBranch] = {}
        self._handles = []
        for p in model.parameters():
            p.requires_grad_(False)
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in self.config.targets:
                branch = _SVDBranch(mod.weight, self.config.rank,
                                    SVD_CACHE if self.config.reuse_svd else None)
                self.branches[name] = branch
                self._handles.append(mod.register_forward_hook(self._hook(branch)))
        if not self.branches:
            raise ValueError(f"no Linear modules named {self.config.targets} in the model")
        siblings = list(self.branches.values())
        for branch in siblings:
            branch.siblings = siblings
        log.info("δS adapter: %d modules, Σr = %d (SVD cache: %d hits, %d misses so far)",
                 len(self.branches), self.total_rank, SVD_CACHE.hits, SVD_CACHE.misses)

    @staticmethod
    def _hook(branch: _SVDBranch):
        def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
            if not branch.enabled:
                return output
            return branch.add_to(inputs[0], output)
        return hook

    @property
    def total_rank(self) -> int:
        """Σr: the δS name of `total_size`."""
        return sum(b.rank for b in self.branches.values())

    @property
    def ranks(self) -> dict[str, int]:
        """Module -> r: the δS name of `sizes` (generic code uses `sizes`)."""
        return {n: b.rank for n, b in self.branches.items()}

    @property
    def sizes(self) -> dict[str, int]:
        return self.ranks

    def module_params(self) -> dict[str, list[nn.Parameter]]:
        return {n: [b.delta_s] for n, b in self.branches.items()}

    @contextlib.contextmanager
    def probing(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        probes = {}
        for n, b in self.branches.items():
            b.probe = torch.zeros(batch_size, b.rank, dtype=b.delta_s.dtype,
                                  device=b.delta_s.device, requires_grad=True)
            probes[n] = b.probe
        try:
            yield probes
        finally:
            for b in self.branches.values():
                b.probe = None

    @contextlib.contextmanager
    def zeroed(self) -> Iterator[None]:
        for b in self.branches.values():
            b.enabled = False
        try:
            yield
        finally:
            for b in self.branches.values():
                b.enabled = True

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def build_delta_s(model: nn.Module, spec: AdapterSpec) -> AntipastoAdapter:
    """The registry's δS constructor: rank and targets from the spec (δS has no alpha, and its
    only init is δS = 0)."""
    if spec.alpha is not None:
        raise ValueError("adapter.alpha: the δS adapter has no scale (it shifts singular values)")
    if spec.init != "default":
        raise ValueError(f"adapter.init: the δS adapter starts at δS = 0 only, not {spec.init!r}")
    return AntipastoAdapter(model, AntipastoConfig(targets=tuple(spec.targets), rank=spec.rank))
