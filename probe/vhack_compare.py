"""How two v_hack directions (e.g. NLL vs GRPO extraction) relate, per module and overall.

k = 1: the cosine of the two unit rows per module. k > 1: the principal angles between the two row
spaces (cosines = singular values of A Bᵀ); the per-module number is their mean, and the signed
cosine of the two principal (first) rows is kept beside it. A Haar-random pair of directions sits
at |cos| ≈ √(1/r), the level reported with it.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def well_formed(V: dict[str, torch.Tensor], ranks: dict[str, int], atol: float = 1e-4) -> list[str]:
    """What is wrong with V (empty when nothing): module names, shapes (k, r), finiteness,
    orthonormal rows."""
    problems = []
    if set(V) != set(ranks):
        problems.append(f"modules differ: {sorted(set(V) ^ set(ranks))[:3]}")
    for name, v in V.items():
        if name not in ranks:
            continue
        if v.ndim != 2 or v.shape[1] != ranks[name] or not 1 <= v.shape[0] <= ranks[name]:
            problems.append(f"{name}: shape {tuple(v.shape)} for rank {ranks[name]}")
            continue
        if not torch.isfinite(v).all():
            problems.append(f"{name}: non-finite values")
            continue
        gram = v.double() @ v.double().T
        if not torch.allclose(gram, torch.eye(v.shape[0], dtype=torch.float64), atol=atol):
            problems.append(f"{name}: rows not orthonormal")
    return problems


def compare_directions(A: dict[str, torch.Tensor], B: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per-module and overall agreement of two direction sets over the same modules."""
    per_module, principal, first_cos, max_diff, null = {}, {}, {}, 0.0, []
    for name, a in A.items():
        a, b = a.double(), B[name].double()
        s = torch.linalg.svdvals(a @ b.T).clamp(max=1.0)
        principal[name] = [float(x) for x in s]
        per_module[name] = float(s.mean()) if a.shape[0] > 1 else float(a[0] @ b[0])
        first_cos[name] = float(a[0] @ b[0])
        if a.shape == b.shape:
            max_diff = max(max_diff, float((a - b).abs().max()))
        else:
            max_diff = float("inf")
        null.append(1.0 / a.shape[1])
    vals = list(per_module.values())
    m = len(vals)
    return {"k": int(next(iter(A.values())).shape[0]), "n_modules": m,
            "mean_cos": sum(vals) / m, "min_cos": min(vals), "max_cos": max(vals),
            "median_cos": float(torch.tensor(vals).median()),
            "mean_first_row_cos": sum(first_cos.values()) / m,
            "random_null_rms": math.sqrt(sum(null) / m),
            "max_abs_diff": max_diff, "identical": max_diff == 0.0,
            "per_module_cos": per_module,
            "principal_cos": principal if any(len(v) > 1 for v in principal.values()) else None}
