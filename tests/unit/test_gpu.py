"""GPU tier (`--gpu`): the δS adapter and per-sample gradients on CUDA, in bf16 and float32."""
from __future__ import annotations

import pytest
import torch

from probe.adapters.antipasto import AntipastoAdapter
from probe.batch import collate
from probe.grads import per_sample_grads, per_sample_grads_loop
from probe.project import project_adapter_grads_
from tests.unit.conftest import make_tiny_qwen3

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identity_at_init_on_cuda(dtype):
    model = make_tiny_qwen3().to("cuda", dtype)
    ids = torch.randint(1, 90, (2, 12), device="cuda")
    with torch.no_grad():
        before = model(ids).logits
        AntipastoAdapter(model)
        assert torch.equal(model(ids).logits, before)


def test_batched_equals_loop_on_cuda(ragged_pairs):
    model = make_tiny_qwen3().to("cuda")
    adapter = AntipastoAdapter(model)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.1)
    batch = collate(*ragged_pairs, pad_id=0, side="left").to("cuda")
    fast, slow = per_sample_grads(adapter, batch), per_sample_grads_loop(adapter, batch)
    for n in fast.grads:
        torch.testing.assert_close(fast.grads[n], slow.grads[n], rtol=1e-3, atol=1e-5)


def test_projection_on_cuda_grads(ragged_pairs):
    model = make_tiny_qwen3().to("cuda", torch.bfloat16)
    adapter = AntipastoAdapter(model)
    batch = collate(*ragged_pairs, pad_id=0).to("cuda")
    per_sample_grads(adapter, batch, accumulate_mean=True)
    V = {n: (g.float() / g.float().norm())[None] for n, g in adapter.grads().items()}
    diag = project_adapter_grads_(adapter, V)
    assert diag.frac_fired == 1.0 and diag.cos_out < 0.05 < diag.cos_in


def test_token_nll_takes_the_flat_path_on_cuda(ragged_pairs):
    """On CUDA the loss runs on target positions only; it must equal the full-logits reference."""
    import probe.grads as grads

    model = make_tiny_qwen3().cuda()
    batch = collate(*ragged_pairs, pad_id=0).to("cuda")
    calls = []
    orig = grads.token_nll_flat
    grads.token_nll_flat = lambda m, b: calls.append(1) or orig(m, b)
    try:
        fast = grads.token_nll(model, batch)
    finally:
        grads.token_nll_flat = orig
    assert calls, "token_nll did not take the flat path on CUDA"
    mask = batch.loss_mask.bool()
    torch.testing.assert_close(fast[mask], grads.token_nll_full(model, batch)[mask],
                               rtol=1e-4, atol=1e-5)
