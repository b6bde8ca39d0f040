"""The one training step (issue #8 item 4): the replay and the GRPO trainer both run it, so its order
(mean → projection → clipping → optimizer → update projection) is checked here against a hand-written
reference, for every registered adapter kind."""
from __future__ import annotations

import pytest
import torch

from probe.adapters.registry import ADAPTERS, AdapterSpec, build_adapter
from probe.batch import collate
from probe.grads import per_sample_grads
from probe.project import project_grads
from probe.train_step import MicroBatch, Projection, mean_hackward, train_step
from probe.vhack import random_directions
from tests.unit.conftest import make_tiny_qwen3

pytestmark = pytest.mark.unit


def _setup(kind: str):
    adapter = build_adapter(make_tiny_qwen3(seed=0), AdapterSpec(kind=kind, rank=3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return adapter


def _rows(ragged_pairs):
    return [{"prompt_ids": p, "completion_ids": c} for p, c in zip(*ragged_pairs)]


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_step_is_mean_then_projection_then_clipping_then_optimizer(ragged_pairs, kind):
    rows = _rows(ragged_pairs)
    a, b = _setup(kind), _setup(kind)
    V = random_directions(a.sizes, 1, seed=0)
    seen: list[MicroBatch] = []
    opt_a = torch.optim.SGD(a.parameters(), lr=1.0)  # SGD: the step is the clipped gradient itself
    rep = train_step(a, opt_a, rows, pad=0, device="cpu", micro_batch=3, v_hack=V,
                     directions={"nll": V}, on_micro_batch=seen.append,
                     projection=Projection(V, "no_gate"), max_grad_norm=1e-3)
    assert [i for mb in seen for i in mb.index] == list(range(len(rows)))
    assert all(mb.cos["nll"].shape == (len(mb.rows),) for mb in seen)
    # the reference, by hand: all rows in one batch
    psg = per_sample_grads(b, collate(*ragged_pairs, pad_id=0))
    g = {n: x.mean(0) for n, x in psg.grads.items()}
    g, _ = project_grads(g, V, "no_gate")
    norm = torch.sqrt(sum(x.pow(2).sum() for x in g.values()))
    assert norm > 1e-3, "clipping must be active or its order is not tested"
    start = b.flat_values()
    expected = {n: start[n] - g[n] * (1e-3 / (norm + 1e-6)) for n in g}
    for n, v in a.flat_values().items():
        torch.testing.assert_close(v, expected[n], rtol=1e-4, atol=1e-7)
    assert rep.grad_hackward_cos_out < 1e-5 < rep.grad_hackward_cos
    assert rep.update_cos_before_projection is None  # a gradient arm leaves AdamW's update alone
    assert rep.update_cos < 1e-3  # SGD applies the projected gradient (up to rounding of p − Δ)
    assert all(p.grad is None for p in a.parameters())


def test_sum_reduction_is_rows_times_the_mean(ragged_pairs):
    rows = _rows(ragged_pairs)
    a, b = _setup("delta_s"), _setup("delta_s")
    V = random_directions(a.sizes, 1, seed=0)
    kw = dict(pad=0, device="cpu", micro_batch=2, v_hack=V)
    ra = train_step(a, torch.optim.SGD(a.parameters(), lr=1.0), rows, reduce="sum", **kw)
    rb = train_step(b, torch.optim.SGD(b.parameters(), lr=float(len(rows))), rows, **kw)
    assert ra.grad_norm_in == pytest.approx(len(rows) * rb.grad_norm_in, rel=1e-5)
    for n, v in a.flat_values().items():
        torch.testing.assert_close(v, b.flat_values()[n], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="reduce"):
        train_step(a, torch.optim.SGD(a.parameters(), lr=1.0), rows, reduce="max", **kw)


def test_update_projection_removes_what_adamw_rotates_back(ragged_pairs):
    """AdamW's per-coordinate scaling can turn a projected gradient hack-ward again; projecting
    the update instead leaves none in the step actually applied."""
    rows = _rows(ragged_pairs)
    a = _setup("delta_s")
    V = random_directions(a.sizes, 1, seed=0)
    opt = torch.optim.AdamW(a.parameters(), lr=1e-2)
    rep = train_step(a, opt, rows, pad=0, device="cpu", micro_batch=4, v_hack=V,
                     projection=Projection(V, target="update"))
    assert rep.update_cos_before_projection > 1e-4
    assert rep.update_cos < 1e-5 and rep.projection["fired"]
    assert rep.grad_change_norm is rep.grad_hackward_cos_out is None  # the gradient was left alone
    with pytest.raises(ValueError, match="target"):
        Projection(V, target="weights")
    assert mean_hackward({n: -v[0] for n, v in V.items()}, V) == 0.0
