"""Cosines: bounds, scale invariance, known values on hand-built cases."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from probe.cosine import (flat_cos, norm_weighted_cos, normalized_cos, per_module_cos,
                          random_null_level)
from tests.unit.strategies import module_grads_and_dirs

pytestmark = pytest.mark.unit


@given(module_grads_and_dirs())
def test_bounds(gd):
    grads, dirs = gd
    m = len(grads)
    nwc = norm_weighted_cos(grads, dirs)
    assert (nwc.abs() <= math.sqrt(m) + 1e-9).all()
    assert (normalized_cos(grads, dirs).abs() <= 1 + 1e-9).all()
    pm = per_module_cos(grads, dirs)
    assert pm.shape[-1] == m and (pm.abs() <= 1 + 1e-9).all()


@given(module_grads_and_dirs(), st.floats(1e-3, 1e3))
def test_scale_invariance_and_sign(gd, a):
    grads, dirs = gd
    base = norm_weighted_cos(grads, dirs)
    scaled = norm_weighted_cos({n: a * g for n, g in grads.items()}, dirs)
    assert torch.allclose(scaled, base, rtol=1e-9, atol=1e-12)
    vscaled = norm_weighted_cos(grads, {n: a * v for n, v in dirs.items()})
    assert torch.allclose(vscaled, base, rtol=1e-9, atol=1e-12)
    flipped = norm_weighted_cos({n: -g for n, g in grads.items()}, dirs)
    assert torch.allclose(flipped, -base, rtol=1e-9, atol=1e-12)


def test_known_values():
    v = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 2.0])}
    aligned = {"a": torch.tensor([[3.0, 0.0]]), "b": torch.tensor([[0.0, 4.0]])}
    # every module aligned: Σ‖c_m‖ / √Σ‖c_m‖² = 7/5; the upper bound √M is reached only at equal norms
    assert norm_weighted_cos(aligned, v).item() == pytest.approx(7 / 5)
    equal = {"a": torch.tensor([[2.0, 0.0]]), "b": torch.tensor([[0.0, 2.0]])}
    assert norm_weighted_cos(equal, v).item() == pytest.approx(math.sqrt(2))
    assert normalized_cos(equal, v).item() == pytest.approx(1.0)
    mixed = {"a": torch.tensor([[3.0, 4.0]]), "b": torch.tensor([[0.0, -1.0]])}
    assert norm_weighted_cos(mixed, v).item() == pytest.approx((3 - 1) / math.sqrt(26))
    assert per_module_cos(mixed, v)[0].tolist() == pytest.approx([0.6, -1.0])
    assert flat_cos(mixed, v).item() == pytest.approx((3 - 1) / (math.sqrt(26) * math.sqrt(2)))


def test_principal_row_for_k_directions():
    v = {"a": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}
    assert norm_weighted_cos({"a": torch.tensor([[0.0, 5.0]])}, v).item() == pytest.approx(1.0)


def test_zero_gradient_is_nan_and_missing_module_is_named():
    v = {"a": torch.tensor([1.0, 0.0])}
    assert torch.isnan(norm_weighted_cos({"a": torch.zeros(1, 2)}, v)).all()
    with pytest.raises(KeyError, match="'b'"):
        norm_weighted_cos({"a": torch.ones(1, 2), "b": torch.ones(1, 2)}, v)


def test_random_null_level():
    assert random_null_level({"a": 4, "b": 16}) == pytest.approx((0.5 + 0.25) / 2)
    # measured: random unit vectors in R^r have RMS cosine 1/√r with a fixed direction
    g = torch.randn(20000, 64, generator=torch.Generator().manual_seed(0))
    cos = g[:, 0] / g.norm(dim=-1)
    assert cos.pow(2).mean().sqrt().item() == pytest.approx(random_null_level({"x": 64}), rel=0.05)


@given(module_grads_and_dirs())
def test_many_directions_match_one_at_a_time(gd):
    from probe.cosine import norm_weighted_cos_many

    grads, dirs = gd
    other = {n: -2.0 * v for n, v in dirs.items()}
    many = norm_weighted_cos_many(grads, {n: torch.stack([dirs[n], other[n] / other[n].norm()])
                                          for n in dirs})
    assert torch.allclose(many[:, 0], norm_weighted_cos(grads, dirs))
    assert torch.allclose(many[:, 1], -norm_weighted_cos(grads, dirs))
