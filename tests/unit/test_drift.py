"""Drift between v_hack direction sets: principal angles against known rotations, the summary,
the random-subspace null, and the stale-projection cosines."""
from __future__ import annotations

import math

import pytest
import torch

from probe.drift import drift, drift_over_steps, module_drift, stale_projection_cos, trend_slope

pytestmark = pytest.mark.unit


def basis(n: int, seed: int = 0) -> torch.Tensor:
    """A random orthonormal basis of R^n, as rows."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q.T


def test_identical_sets_have_zero_angles():
    E = basis(20)
    d = module_drift(E[:3], E[:3])
    assert d.angles == pytest.approx((0, 0, 0), abs=1e-7)
    assert d.cos_first == pytest.approx(1) and d.overlap == pytest.approx(1)
    assert d.signed_cos == pytest.approx(1)


@pytest.mark.parametrize("theta", [1e-7, 1e-4, 0.3, 1.0, math.pi / 2])
def test_vector_rotated_by_theta(theta):
    E = basis(30, seed=1)
    v1 = E[0]
    v2 = math.cos(theta) * E[0] + math.sin(theta) * E[1]
    d = module_drift(v1, v2 * 3.0)  # scale does not matter
    assert d.angles[0] == pytest.approx(theta, abs=1e-9)
    assert d.cos_first == pytest.approx(math.cos(theta), abs=1e-9)
    assert d.signed_cos == pytest.approx(math.cos(theta), abs=1e-9)
    assert d.size == 30 and d.null_overlap == pytest.approx(1 / 30)


def test_sign_flip_keeps_the_subspace_but_not_the_orientation():
    E = basis(10)
    d = module_drift(E[0], -E[0])
    assert d.angles[0] == pytest.approx(0, abs=1e-7) and d.overlap == pytest.approx(1)
    assert d.signed_cos == pytest.approx(-1)


def test_two_dim_subspace_rotated_by_two_angles():
    E = basis(40, seed=2)
    t1, t2 = 0.2, 0.9
    V1 = E[:2]
    V2 = torch.stack([math.cos(t1) * E[0] + math.sin(t1) * E[2],
                      math.cos(t2) * E[1] + math.sin(t2) * E[3]])
    d = module_drift(V1, V2)
    assert d.angles == pytest.approx((t1, t2), abs=1e-9)
    assert d.overlap == pytest.approx((math.cos(t1) ** 2 + math.cos(t2) ** 2) / 2, abs=1e-9)


def test_rotation_within_the_subspace_is_no_drift():
    E = basis(15, seed=3)
    a = 0.7
    mixed = torch.stack([math.cos(a) * E[0] + math.sin(a) * E[1],
                         -math.sin(a) * E[0] + math.cos(a) * E[1]])
    d = module_drift(E[:2], mixed)
    assert d.angles == pytest.approx((0, 0), abs=1e-7)
    assert d.signed_cos == pytest.approx(math.cos(a))  # the principal rows did turn


def test_orthogonal_and_nested_subspaces():
    E = basis(12, seed=4)
    d = module_drift(E[:2], E[2:5])
    assert d.angles == pytest.approx((math.pi / 2, math.pi / 2), abs=1e-9)
    assert d.overlap == pytest.approx(0, abs=1e-12) and d.null_overlap == pytest.approx(3 / 12)
    nested = module_drift(E[1], E[:3])
    assert nested.angles == pytest.approx((0,), abs=1e-7)


def test_random_subspaces_overlap_at_the_null_level():
    n, k = 60, 2
    overlaps = [module_drift(basis(n, 2 * s)[:k], basis(n, 2 * s + 1)[:k]).overlap
                for s in range(150)]
    null = module_drift(basis(n)[:k], basis(n, 1)[:k]).null_overlap
    assert null == pytest.approx(k / n)
    assert sum(overlaps) / len(overlaps) == pytest.approx(null, rel=0.2)


def test_summary_weights_by_size_and_names_the_worst_module():
    small, big = basis(10, 5), basis(90, 6)
    v1 = {"a": small[0], "b": big[0]}
    v2 = {"a": small[1], "b": math.cos(0.5) * big[0] + math.sin(0.5) * big[1]}
    s = drift(v1, v2)
    assert s.min_module == "a" and s.min_cos_first == pytest.approx(0, abs=1e-9)
    assert s.mean_cos_first == pytest.approx((0 + math.cos(0.5)) / 2, abs=1e-9)
    assert s.weighted_overlap == pytest.approx(90 * math.cos(0.5) ** 2 / 100, abs=1e-9)
    assert s.weighted_null == pytest.approx((10 * 0.1 + 90 / 90) / 100)
    assert s.to_dict()["n_modules"] == 2


def test_mismatches_are_errors():
    E = basis(8)
    with pytest.raises(ValueError, match="different modules"):
        drift({"a": E[0]}, {"b": E[0]})
    with pytest.raises(ValueError, match="sizes differ"):
        module_drift(E[0], torch.ones(9))
    with pytest.raises(ValueError, match="zero or non-finite"):
        module_drift(E[0], torch.zeros(8))


def test_drift_over_steps_is_in_step_order():
    E = basis(20, 7)
    later = [(10, {"m": math.cos(0.6) * E[0] + math.sin(0.6) * E[1]}),
             (5, {"m": math.cos(0.3) * E[0] + math.sin(0.3) * E[1]})]
    out = drift_over_steps({"m": E[0]}, later)
    assert [s for s, _ in out] == [5, 10]
    assert out[0][1].mean_cos_first == pytest.approx(math.cos(0.3))
    assert trend_slope([s for s, _ in out], [d.per_module["m"].angles[0] for _, d in out]) == \
        pytest.approx(0.3 / 5)


def test_stale_projection_cos_from_removed_to_missed():
    e = torch.eye(3, dtype=torch.float64)
    g = {"m": torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)}
    same = stale_projection_cos(g, {"m": e[0]}, {"m": e[0]})
    assert same["cos_in"] == pytest.approx(1 / math.sqrt(2)) and same["cos_out"] == 0
    assert same["kept"] == 0
    missed = stale_projection_cos(g, {"m": e[1]}, {"m": e[0]})  # the stale v_hack is orthogonal
    assert missed["cos_out"] == pytest.approx(1.0) and missed["kept"] == pytest.approx(math.sqrt(2))
    t = 0.4  # part-way: g = e0 + e1, stale rotated by t toward e2 -> c = cos t, relu keeps it
    part = stale_projection_cos(g, {"m": math.cos(t) * e[0] + math.sin(t) * e[2]}, {"m": e[0]})
    out = g["m"] - math.cos(t) * (math.cos(t) * e[0] + math.sin(t) * e[2])
    assert part["cos_out"] == pytest.approx(float(out[0] / out.norm()), abs=1e-6)


def test_trend_slope_needs_points():
    assert trend_slope([0, 1, 2], [1.0, 0.8, 0.6]) == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        trend_slope([0], [1.0])
