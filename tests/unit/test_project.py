"""Projection math: properties on constructed inputs, and planted bugs the checks must catch."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given

from probe.adapters.antipasto import AntipastoAdapter
from probe.project import (MODES, check_orthonormal, hackward_cos, project, project_adapter_grads_,
                           project_grads)
from tests.unit.strategies import basis_and_grad

pytestmark = pytest.mark.unit
TOL = 1e-9


def assert_one_sided_contract(proj, V: torch.Tensor, g: torch.Tensor) -> None:
    """What one-sided projection must satisfy; planted-bug tests below feed it broken projections."""
    out = proj(g, V)
    removed = g - out
    scale = g.norm() + 1.0
    # the removed part lies in span(V)
    assert torch.allclose(removed, (removed @ V.T) @ V, atol=TOL * scale), "removed part leaves span(V)"
    c = V @ g
    if (c <= 0).all():
        assert torch.allclose(out, g, atol=TOL * scale), "changed g although Vg <= 0"
    else:
        assert not torch.allclose(out, g), "fired but returned the gradient unchanged"
        assert (V @ out <= TOL * scale).all(), f"hack-ward component left: {(V @ out).max():.3g}"
    assert (V @ out).clamp(min=0).norm() <= (V @ g).clamp(min=0).norm() + TOL * scale
    if out.norm() > 1e-6 * g.norm():  # a cosine of a numerically-zero residue means nothing
        assert hackward_cos(out, V) <= hackward_cos(g, V) + 1e-9, "cos_out > cos_in"
    assert torch.allclose(proj(out, V), out, atol=TOL * scale), "not idempotent"


@given(basis_and_grad())
def test_one_sided_contract(vg):
    V, g = vg
    assert_one_sided_contract(lambda g, V: project(g, V, "one_sided"), V, g)


@given(basis_and_grad())
def test_one_sided_contract_with_hackward_gradient(vg):
    """Also with a gradient guaranteed to have a hack-ward component (so the 'fired' branch runs)."""
    V, g = vg
    g = g + 3 * g.norm() * V[0]
    assert (V @ g).max() > 0
    assert_one_sided_contract(lambda g, V: project(g, V, "one_sided"), V, g)


@given(basis_and_grad())
def test_no_gate_and_reverse(vg):
    V, g = vg
    scale = g.norm() + 1.0
    assert torch.allclose(V @ project(g, V, "no_gate"), torch.zeros(V.shape[0], dtype=g.dtype),
                          atol=TOL * scale)
    assert torch.allclose(V @ project(g, V, "reverse"), -(V @ g), atol=TOL * scale)
    no_gate = project(g, V, "no_gate")
    assert torch.allclose(project(no_gate, V, "no_gate"), no_gate, atol=TOL * scale)
    # the orthogonal complement is untouched in every mode
    for mode in MODES:
        out = project(g, V, mode)
        assert torch.allclose(out - (out @ V.T) @ V, g - (g @ V.T) @ V, atol=TOL * scale)


@given(basis_and_grad())
def test_preserve_magnitude(vg):
    V, g = vg
    if V.shape[0] == V.shape[1]:  # keep a direction outside span(V) for the rescaled result
        V = V[:-1]
    g = g - (g @ V.T) @ V + g.norm() * V[0]
    out = project(g, V, "one_sided", preserve_magnitude=True)
    assert torch.allclose(out.norm(), g.norm(), rtol=1e-9)
    assert (V @ out <= TOL * g.norm()).all()


def test_planted_inverted_sign_is_caught():
    """A projection that *adds* the hack-ward part (sign flipped) must fail the contract."""
    V = torch.eye(4, dtype=torch.float64)[:1]
    g = torch.tensor([1.0, 0.5, 0.0, -0.2], dtype=torch.float64)

    def inverted(g, V):
        return g + (V @ g).clamp(min=0) @ V

    with pytest.raises(AssertionError):
        assert_one_sided_contract(inverted, V, g)


def test_planted_unchanged_gradient_is_caught():
    """A projection that reports firing but copies the gradient through must fail."""
    V = torch.eye(4, dtype=torch.float64)[:1]
    g = torch.tensor([1.0, 0.5, 0.0, -0.2], dtype=torch.float64)
    with pytest.raises(AssertionError, match="unchanged"):
        assert_one_sided_contract(lambda g, V: g.clone(), V, g)


def test_diagnostics_on_hand_built_case():
    V = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0]])}
    grads = {"a": torch.tensor([3.0, 4.0]),  # hack-ward: cos_in = 3/5
             "b": torch.tensor([1.0, -1.0])}  # anti-hack: not fired
    out, diag = project_grads(grads, V)
    assert diag.cos_in == pytest.approx((0.6 + 0.0) / 2)
    assert diag.cos_out == pytest.approx(0.0)
    assert diag.frac_fired == pytest.approx(0.5) and diag.fired
    assert diag.signed_in == pytest.approx((0.6 - 2 ** -0.5) / 2)
    assert torch.allclose(out["a"], torch.tensor([0.0, 4.0]))
    assert torch.equal(out["b"], grads["b"])
    assert diag.norm_out < diag.norm_in


def test_unknown_mode_and_missing_module_and_non_orthonormal():
    with pytest.raises(ValueError, match="mode"):
        project(torch.ones(3), torch.eye(3)[:1], "sideways")
    with pytest.raises(KeyError, match="'b'"):
        project_grads({"a": torch.ones(2), "b": torch.ones(2)}, {"a": torch.eye(2)[:1]})
    with pytest.raises(ValueError, match="orthonormal"):
        check_orthonormal(torch.tensor([[1.0, 1.0]]))


def test_in_place_on_adapter_grads(tiny_model):
    """Applied to a real model's δS.grad after backward: the gradient changes, diagnostics agree."""
    adapter = AntipastoAdapter(tiny_model)
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    loss = torch.nn.functional.cross_entropy(tiny_model(ids).logits[0, :-1], ids[0, 1:])
    loss.backward()
    before = {n: g.clone() for n, g in adapter.grads().items()}
    V = {n: (g / g.norm())[None] for n, g in before.items()}  # V along the gradient: must fire
    diag = project_adapter_grads_(adapter, V)
    assert diag.frac_fired == pytest.approx(1.0)
    assert diag.cos_in == pytest.approx(1.0, abs=1e-5) and diag.cos_out < 1e-5
    after = adapter.grads()
    for n in before:
        assert after[n].norm() < 1e-5 * (1 + before[n].norm())
