"""Hypothesis strategies that construct valid inputs (orthonormal V via QR, nonzero g)."""
from __future__ import annotations

import torch
from hypothesis import strategies as st


@st.composite
def basis_and_grad(draw, max_r: int = 24, max_k: int = 4):
    """(V (k, r) with orthonormal rows, g (r,) nonzero), in float64 for exact-ish properties."""
    r = draw(st.integers(2, max_r))
    k = draw(st.integers(1, min(max_k, r)))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(r, k, generator=gen, dtype=torch.float64))
    V = q.T.contiguous()
    g = torch.randn(r, generator=gen, dtype=torch.float64)
    g[0] += 1.0  # never the zero vector
    return V, g * scale


@st.composite
def module_grads_and_dirs(draw, max_modules: int = 6):
    """Per-module gradients (B, r_m) and unit directions (r_m,) for a handful of modules."""
    m = draw(st.integers(1, max_modules))
    b = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    grads, dirs = {}, {}
    for i in range(m):
        r = draw(st.integers(2, 16))
        grads[f"layers.{i}.proj"] = torch.randn(b, r, generator=gen, dtype=torch.float64) + 0.1
        v = torch.randn(r, generator=gen, dtype=torch.float64)
        dirs[f"layers.{i}.proj"] = v / v.norm()
    return grads, dirs
