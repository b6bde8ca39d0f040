"""The fused δS node (probe.adapters.fused_svd) computes what the reference branch computes:
outputs, input gradients, per-sample probe gradients and δS gradients, in float64 on CPU."""
from __future__ import annotations

import pytest
import torch

from probe.adapters import fused_svd
from probe.adapters.antipasto import AntipastoAdapter, _SVDBranch
from probe.batch import collate
from probe.grads import per_sample_grads
from tests.unit.conftest import make_tiny_qwen3

pytestmark = pytest.mark.unit


def _branch(d_in: int, d_out: int, seed: int) -> tuple[torch.nn.Linear, _SVDBranch]:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(d_in, d_out, bias=False).double()
    return lin, _SVDBranch(lin.weight, None)


@pytest.mark.parametrize("d_in,d_out", [(6, 9), (9, 6)])  # r = d_in (recompute) and r < d_in
@pytest.mark.parametrize("ds_zero", [True, False])
@pytest.mark.parametrize("recompute", [True, False])
def test_fused_node_equals_reference_ops(d_in, d_out, ds_zero, recompute):
    lin, br = _branch(d_in, d_out, seed=d_in)
    if not ds_zero:
        torch.nn.init.normal_(br.delta_s, std=0.3)
    br.delta_s.data = br.delta_s.data.double()
    B, T = 3, 5
    x0 = torch.randn(B, T, d_in, dtype=torch.float64)
    cot = torch.randn(B, T, d_out, dtype=torch.float64)
    results = []
    for fused in (False, True):
        x = x0.clone().requires_grad_()
        probe = torch.zeros(B, br.rank, dtype=torch.float64, requires_grad=True)
        br.probe = probe
        y = lin(x)
        y = fused_svd.fused_delta_(y, x, br.U, br.Vh, br.delta_s, probe, br.ds_is_zero(),
                                   recompute) if fused else y + br.delta(x)
        gx, gp, gds = torch.autograd.grad((y * cot).sum(), [x, probe, br.delta_s])
        results.append((y.detach(), gx, gp, gds))
    br.probe = None
    assert br.ds_is_zero() == ds_zero
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("random_ds", [False, True])
def test_fused_per_sample_grads_equal_reference_path(ragged_pairs, random_ds, monkeypatch):
    model = make_tiny_qwen3().double()
    adapter = AntipastoAdapter(model)
    if random_ds:
        for p in adapter.parameters():
            torch.nn.init.normal_(p, std=0.2)
    batch = collate(*ragged_pairs, pad_id=0, side="left")
    monkeypatch.setattr(fused_svd, "FUSED_SVD", False)
    ref = per_sample_grads(adapter, batch, accumulate_mean=True)
    ref_mean = {n: g.clone() for n, g in adapter.grads().items()}
    with torch.no_grad():
        ref_logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
    monkeypatch.setattr(fused_svd, "FUSED_SVD", True)
    got = per_sample_grads(adapter, batch, accumulate_mean=True)
    with torch.no_grad():
        got_logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_logits, ref_logits, rtol=1e-10, atol=1e-12)
    for n in ref.grads:
        torch.testing.assert_close(got.grads[n], ref.grads[n], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(adapter.grads()[n], ref_mean[n], rtol=1e-8,
                                   atol=1e-12)


def test_cpu_default_is_the_reference_path():
    x = torch.zeros(2, 3)
    assert not fused_svd.use_fused(x)
    assert fused_svd.use_fused(x, True)


def test_zero_check_follows_in_place_updates():
    _, br = _branch(4, 4, seed=0)
    assert br.ds_is_zero()
    with torch.no_grad():
        br.delta_s.add_(1.0)
    assert not br.ds_is_zero()
    with torch.no_grad():
        br.delta_s.zero_()
    assert br.ds_is_zero()


def test_zero_checks_of_all_changed_branches_are_read_together(monkeypatch):
    """After an optimizer step every branch's δS changed: the first forward reads all of their
    zero flags in one host sync (one `tolist`), not one per module, and each flag is right."""
    adapter = AntipastoAdapter(make_tiny_qwen3(seed=0))
    branches = list(adapter.branches.values())
    assert all(b.ds_is_zero() for b in branches)
    with torch.no_grad():
        branches[0].delta_s[0] = 1e-30  # nonzero, however small
        branches[1].delta_s[0] = float("nan")  # never counts as zero
        for b in branches[3:]:
            b.delta_s.add_(0.5)
        branches[2].delta_s.zero_()  # changed, still zero
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.numel()) or real(t))
    flags = [b.ds_is_zero() for b in branches]
    assert reads == [len(branches)]
    assert flags == [False, False, True] + [False] * (len(branches) - 3)


def test_zero_check_of_an_empty_delta_s_is_true():
    lin = torch.nn.Linear(4, 4)
    br = _SVDBranch(lin.weight, 0)
    assert br.rank == 0 and br.ds_is_zero()
