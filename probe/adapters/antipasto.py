"""The δS adapter: each target Linear W = U S Vh gets a trainable additive δS in its singular basis.

A forward hook adds `((x @ Vhᵀ) * δS) @ Uᵀ` to the frozen Linear's output (facts.md §5). At δS = 0
that term is exactly zero, so the wrapped model is bit-identical to the base and doubles as the
reference policy. Hooks (rather than replacing modules) keep the model's own dotted module names and
state dict untouched.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from probe.adapters.base import Adapter
from probe.adapters.fused_svd import fused_delta_, use_fused
from probe.io import atomic_path

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FORMAT = "probe.delta_s.v1"


class AdapterStateError(ValueError):
    """A saved δS state does not fit the model it is loaded into."""


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

    @property
    def rank(self) -> int:
        return self.delta_s.shape[0]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.Vh.T  # (..., r)
        s = self.delta_s
        if self.probe is not None:  # per-sample offset, broadcast over the token axes
            s = s + self.probe.view(self.probe.shape[0], *([1] * (h.dim() - 2)), -1)
        return (h * s.to(h.dtype)) @ self.U.T

    def ds_is_zero(self) -> bool:
        """Is δS exactly zero? One host read per change of δS (its version counter moves on every
        in-place update), not one per forward."""
        key = (self.delta_s._version, self.delta_s.data_ptr())
        if key != self._zero_key:
            self._zero, self._zero_key = not bool(self.delta_s.detach().any()), key
        return self._zero

    def add_to(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The wrapped Linear's output with this branch added (fused node or reference ops)."""
        if use_fused(x, self.fused):
            return fused_delta_(output, x, self.U, self.Vh, self.delta_s, self.probe,
                                self.ds_is_zero())
        return output + self.delta(x)


class AntipastoAdapter(Adapter):
    """Wraps `model`'s target Linears in place (via forward hooks) and freezes everything else."""

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
        return sum(b.rank for b in self.branches.values())

    @property
    def ranks(self) -> dict[str, int]:
        return {n: b.rank for n, b in self.branches.items()}

    def named_params(self) -> dict[str, nn.Parameter]:
        return {n: b.delta_s for n, b in self.branches.items()}

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

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path, base_model_id: str = "unknown") -> Path:
        """δS vectors to safetensors, with module names, ranks and base model id as metadata."""
        tensors = {n: b.delta_s.detach().float().cpu().contiguous() for n, b in self.branches.items()}
        meta = {"format": FORMAT, "base_model_id": base_model_id,
                "modules": json.dumps(list(self.branches)), "ranks": json.dumps(self.ranks)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return Path(path)

    def load(self, path: str | Path, base_model_id: str | None = None) -> dict[str, str]:
        """Load δS saved by `save`; any mismatch of modules, ranks or base model is a clear error."""
        path = Path(path)
        tensors, meta = read_safetensors(path, FORMAT, "a δS state", AdapterStateError)
        if base_model_id is not None and meta.get("base_model_id") not in (base_model_id, "unknown"):
            raise AdapterStateError(f"{path}: saved for base model {meta.get('base_model_id')!r}, "
                                    f"loading into {base_model_id!r}")
        check_names_and_ranks({k: t.shape[-1] for k, t in tensors.items()}, self.ranks, str(path))
        with torch.no_grad():
            for n, b in self.branches.items():
                b.delta_s.copy_(tensors[n].to(b.delta_s.dtype))
        return meta


def read_safetensors(path: Path, fmt: str, what: str, error: type[Exception]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a file this project wrote in format `fmt`; a corrupt file or
    another format raises `error` naming the path (never a safetensors traceback)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise error(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != fmt:
        raise error(f"{path}: not {what} (format={meta.get('format')!r})")
    return tensors, meta


def check_names_and_ranks(saved: dict[str, int], model: dict[str, int], what: str,
                          error: type[Exception] = AdapterStateError) -> None:
    """Raise `error` naming the first module missing on either side, or the first rank that
    differs; a missing module's message shows a name the file does have (a renamed model shows)."""
    for n in model:
        if n not in saved:
            extra = next((k for k in saved if k not in model), None)
            hint = f"; the file has e.g. {extra!r}" if extra else ""
            raise error(f"{what}: has no entry for the model's module {n!r}{hint}")
    for n in saved:
        if n not in model:
            raise error(f"{what}: module {n!r} is not a wrapped module of the model")
    for n, r in model.items():
        if saved[n] != r:
            raise error(f"{what}: module {n!r} has rank {saved[n]}, the model's is {r}")
