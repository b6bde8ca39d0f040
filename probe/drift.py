"""Drift of v_hack: how far a re-extracted direction set has moved from another (R6's sneaky fail).

Per module, two direction sets (k, size) with orthonormal rows (or (size,) vectors) are compared by
their principal angles (scipy's `subspace_angles`, accurate for small angles too): cos of the first
(smallest) angle says whether the two share any direction, the overlap (mean cos² over the
min(k₁, k₂) angles, = ‖Q₁Q₂ᵀ‖²_F / min k) how much of the smaller one lies in the other. Angles
ignore sign, but v_hack is oriented (hack-ward) and one-sided projection depends on it, so the
signed cosine of the two principal rows is reported too. A random subspace's expected overlap,
max(k₁, k₂)/size, is the null to compare against.

`stale_projection_cos` shows the spec's sneaky fail directly: project a gradient with the stored
(stale) v_hack, then measure its hack-ward cosine against the CURRENT v_hack; as the basis drifts,
cos_out (w.r.t. the current direction) approaches cos_in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.linalg
import torch

from probe.project import as_basis, hackward_cos, project


@dataclass(frozen=True)
class ModuleDrift:
    angles: tuple[float, ...]  # principal angles in radians, ascending
    cos_first: float  # cos of the smallest angle: 1 = a shared direction
    overlap: float  # mean cos² over the angles, in [0, 1]
    signed_cos: float  # ⟨v₁[0], v₂[0]⟩ of the unit principal rows, in [-1, 1]
    null_overlap: float  # the overlap a random subspace has on average: max(k₁, k₂)/size
    size: int


@dataclass(frozen=True)
class DriftSummary:
    mean_cos_first: float
    min_cos_first: float
    min_module: str  # the module where the first angle is largest
    weighted_overlap: float  # size-weighted mean overlap over modules
    weighted_null: float  # the same for random subspaces
    mean_signed_cos: float
    per_module: dict[str, ModuleDrift] = field(repr=False)

    def to_dict(self, with_modules: bool = False) -> dict:
        d = {k: getattr(self, k) for k in ("mean_cos_first", "min_cos_first", "min_module",
                                           "weighted_overlap", "weighted_null", "mean_signed_cos")}
        d["n_modules"] = len(self.per_module)
        if with_modules:
            d["per_module"] = {n: vars(m) for n, m in self.per_module.items()}
        return d


def _columns(v: torch.Tensor, what: str) -> np.ndarray:
    """(k, size) or (size,) -> (size, k) float64 columns; a zero row is an error, not an angle."""
    rows = as_basis(v).detach().double().cpu()
    if not torch.isfinite(rows).all() or (rows.norm(dim=-1) == 0).any():
        raise ValueError(f"{what}: a zero or non-finite direction has no angle")
    return rows.T.numpy()


def module_drift(v1: torch.Tensor, v2: torch.Tensor, name: str = "module") -> ModuleDrift:
    """Principal angles and overlaps between two direction sets of one module."""
    a, b = _columns(v1, f"{name} (first)"), _columns(v2, f"{name} (second)")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name}: direction sizes differ ({a.shape[0]} vs {b.shape[0]})")
    angles = np.sort(scipy.linalg.subspace_angles(a, b))
    cos = np.cos(angles)
    p1, p2 = a[:, 0] / np.linalg.norm(a[:, 0]), b[:, 0] / np.linalg.norm(b[:, 0])
    return ModuleDrift(angles=tuple(float(x) for x in angles), cos_first=float(cos[0]),
                       overlap=float(np.mean(cos ** 2)), signed_cos=float(p1 @ p2),
                       null_overlap=min(1.0, max(a.shape[1], b.shape[1]) / a.shape[0]),
                       size=a.shape[0])


def drift(v1: dict[str, torch.Tensor], v2: dict[str, torch.Tensor]) -> DriftSummary:
    """Per-module drift between two v_hack dicts over the same modules, and the overall summary."""
    if v1.keys() != v2.keys():
        only = sorted(set(v1) ^ set(v2))
        raise ValueError(f"the two direction sets cover different modules (e.g. {only[0]!r})")
    if not v1:
        raise ValueError("no modules to compare")
    per = {n: module_drift(v1[n], v2[n], n) for n in v1}
    total = sum(m.size for m in per.values())
    worst = min(per, key=lambda n: per[n].cos_first)
    return DriftSummary(
        mean_cos_first=float(np.mean([m.cos_first for m in per.values()])),
        min_cos_first=per[worst].cos_first, min_module=worst,
        weighted_overlap=sum(m.overlap * m.size for m in per.values()) / total,
        weighted_null=sum(m.null_overlap * m.size for m in per.values()) / total,
        mean_signed_cos=float(np.mean([m.signed_cos for m in per.values()])), per_module=per)


def drift_over_steps(v0: dict[str, torch.Tensor],
                     later: Sequence[tuple[int, dict[str, torch.Tensor]]]
                     ) -> list[tuple[int, DriftSummary]]:
    """Each re-extraction (step, v_hack) against the initial one, in step order."""
    return [(step, drift(v0, v)) for step, v in sorted(later, key=lambda sv: sv[0])]


def stale_projection_cos(grads: dict[str, torch.Tensor], v_stale: dict[str, torch.Tensor],
                         v_now: dict[str, torch.Tensor], mode: str = "one_sided"
                         ) -> dict[str, float]:
    """Project each module's gradient (size,) with the stale v_hack; cos_in / cos_out are the
    hack-ward cosines (‖relu(Vg)‖/‖g‖, mean over modules) w.r.t. the CURRENT v_hack, before and
    after. kept = cos_out / cos_in: 0 when the stale direction still removes the current hack
    component, ≥ 1 once it misses it entirely (removing an unrelated part of g shortens g, so the
    current hack-ward cosine can even rise)."""
    if not (grads.keys() == v_stale.keys() == v_now.keys()):
        raise ValueError("gradients and both direction sets must cover the same modules")
    cin, cout = [], []
    for n, g in grads.items():
        g = g.double()
        out = project(g, as_basis(v_stale[n]).double(), mode)
        now = as_basis(v_now[n]).double()
        cin.append(float(hackward_cos(g, now)))
        cout.append(float(hackward_cos(out, now)))
    cos_in, cos_out = float(np.mean(cin)), float(np.mean(cout))
    return {"cos_in": cos_in, "cos_out": cos_out,
            "kept": cos_out / cos_in if cos_in > 0 else float("nan")}


def trend_slope(steps: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values over steps (e.g. `kept` or cos_first per step)."""
    if len(steps) != len(values) or len(steps) < 2:
        raise ValueError("a trend needs at least two (step, value) points of equal count")
    return float(np.polyfit(np.asarray(steps, float), np.asarray(values, float), 1)[0])
