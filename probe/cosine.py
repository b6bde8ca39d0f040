"""Cosines between adapter gradients and v_hack, with the spec's aggregation and a bounded variant.

`norm_weighted_cos` is the spec's metric: Σ_m ⟨c_m, v̂_m⟩ / √(Σ_m ‖c_m‖²). It is a projection
magnitude proportional to a cosine, bounded by √M for M modules, not by 1. `normalized_cos` divides
by √M so it lies in [-1, 1]. With k > 1 directions per module, v̂_m is the module's first
(principal) row. Inputs are batched: flat gradients (..., size) per module (an adapter's one flat
vector per module, whatever tensors it owns), V (k, size) or (size,) per module.
"""
from __future__ import annotations

import math

import torch

from probe import flat

EPS = 1e-12


def _f(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 gradients are upcast; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def principal_unit(v: torch.Tensor) -> torch.Tensor:
    """(size,) unit vector: the row itself for k=1, the first row for (k, size)."""
    v = _f(v[0] if v.dim() == 2 else v)
    return v / v.norm().clamp(min=EPS)


def require_modules(grads: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> list[str]:
    missing = [n for n in grads if n not in v]
    if missing:
        raise KeyError(f"v_hack has no direction for module {missing[0]!r} "
                       f"({len(missing)} of {len(grads)} modules missing)")
    return list(grads)


def flat_units(seg: flat.Segments, v: dict[str, torch.Tensor], dtype: torch.dtype
               ) -> torch.Tensor:
    """(D,): every module's principal unit direction, concatenated (the flat path's v̂)."""
    whole = getattr(v, "whole", None)  # a flat.Packed direction: its rows are (k, D) already
    if whole is not None and tuple(v) == seg.names:
        first = (whole[0] if whole.dim() == 2 else whole).to(seg.lengths.device, dtype)
    else:
        first = seg.cat({n: v[n][0] if v[n].dim() == 2 else v[n] for n in seg.names}, dtype)
    return first / seg.expand(seg.norms(first).clamp(min=EPS))


def module_dots(grads: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> torch.Tensor:
    """⟨c_m, v̂_m⟩ for every module: (..., M)."""
    names = require_modules(grads, v)
    if flat.use_flat(grads):
        seg = flat.segments(grads)
        G = seg.cat(grads)
        return seg.sums(G * flat_units(seg, v, G.dtype))
    return torch.stack([_f(grads[n]) @ principal_unit(v[n]).to(grads[n].device, _f(grads[n]).dtype) for n in names], -1)


def module_sq_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    if flat.use_flat(grads):
        seg = flat.segments(grads)
        G = seg.cat(grads)
        return seg.sums(G * G)
    return torch.stack([_f(g).pow(2).sum(-1) for g in grads.values()], -1)


def norm_weighted_cos(grads: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> torch.Tensor:
    """The spec's metric, (...,). NaN where the whole gradient is zero (an undefined cosine)."""
    if flat.use_flat(grads):
        require_modules(grads, v)
        seg = flat.segments(grads)
        G = seg.cat(grads)
        num, den = G @ flat_units(seg, v, G.dtype), G.norm(dim=-1)
    else:
        num = module_dots(grads, v).sum(-1)
        den = module_sq_norms(grads).sum(-1).sqrt()
    return torch.where(den > 0, num / den.clamp(min=EPS), torch.full_like(num, float("nan")))


def norm_weighted_cos_many(grads: dict[str, torch.Tensor], dirs: dict[str, torch.Tensor]
                           ) -> torch.Tensor:
    """`norm_weighted_cos` against n directions at once: dirs (n, size) unit rows per module -> (B, n)."""
    names = require_modules(grads, dirs)
    if flat.use_flat(grads):
        seg = flat.segments(grads)
        G = seg.cat(grads)
        num, den = G @ seg.cat_rows(dirs, G.dtype).T, G.norm(dim=-1)[..., None]
    else:
        num = sum(_f(grads[m]) @ dirs[m].to(grads[m].device, _f(grads[m]).dtype).T for m in names)
        den = module_sq_norms(grads).sum(-1).sqrt()[..., None]
    return torch.where(den > 0, num / den.clamp(min=EPS), torch.full_like(num, float("nan")))


def normalized_cos(grads: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> torch.Tensor:
    """`norm_weighted_cos` / √M: in [-1, 1]."""
    return norm_weighted_cos(grads, v) / math.sqrt(len(grads))


def per_module_cos(grads: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> torch.Tensor:
    """cos(c_m, v̂_m) per module, (..., M); NaN for a module whose gradient is zero."""
    dots = module_dots(grads, v)
    norms = module_sq_norms(grads).sqrt()
    return torch.where(norms > 0, dots / norms.clamp(min=EPS), torch.full_like(dots, float("nan")))


def flat_cos(grads: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain cosine of the concatenated gradient with the concatenated unit directions, (...,)."""
    names = require_modules(grads, v)
    g = torch.cat([_f(grads[n]) for n in names], -1)
    u = torch.cat([principal_unit(v[n]).to(g.device) for n in names], -1).to(g.dtype)
    return (g @ u) / (g.norm(dim=-1) * u.norm()).clamp(min=EPS)


def random_null_level(sizes: dict[str, int], k: int = 1) -> float:
    """Typical |cosine| of a random gradient with a k-dim subspace of a module whose flat vector
    has size r: √(k/r), averaged over modules."""
    return sum(math.sqrt(min(k, r) / r) for r in sizes.values()) / max(len(sizes), 1)
