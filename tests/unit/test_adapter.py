"""The δS adapter: identity at init, only δS trains, a step changes the policy, save/load checks."""
from __future__ import annotations

import pytest
import torch

from probe.adapters.antipasto import AntipastoAdapter, AntipastoConfig
from probe.adapters.base import AdapterStateError
from tests.unit.conftest import make_tiny_qwen3

pytestmark = pytest.mark.unit

IDS = torch.tensor([[5, 17, 33, 2, 60, 41, 9, 12]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_identity_at_init_is_bit_identical(tiny_model):
    before = logits(tiny_model)
    adapter = AntipastoAdapter(tiny_model)
    assert torch.equal(logits(tiny_model), before)
    assert adapter.total_rank > 0


def test_wraps_every_target_with_model_names(tiny_model):
    adapter = AntipastoAdapter(tiny_model)
    n_layers = tiny_model.config.num_hidden_layers
    assert len(adapter.module_names) == 7 * n_layers
    assert "model.layers.0.self_attn.q_proj" in adapter.module_names
    assert "lm_head" not in adapter.module_names
    d, i = tiny_model.config.hidden_size, tiny_model.config.intermediate_size
    assert adapter.ranks["model.layers.1.mlp.down_proj"] == min(d, i)


def test_svd_reconstructs_weight(tiny_model):
    adapter = AntipastoAdapter(tiny_model)
    name = "model.layers.0.mlp.up_proj"
    w = dict(tiny_model.named_modules())[name].weight
    b = adapter.branches[name]
    s = torch.linalg.svdvals(w.float())
    assert torch.allclose(b.U @ torch.diag(s) @ b.Vh, w, atol=1e-5)


def test_delta_s_coordinates_do_not_depend_on_svd_signs(tiny_model, ragged_pairs):
    """An SVD fixes each singular pair only up to a joint sign (CPU and CUDA pick differently).
    δS_i scales u_i v_iᵀ, which the joint flip leaves alone, so δS gradients (and so v_hack and
    every cosine) are the same in either basis: no sign convention is needed."""
    from probe.batch import collate
    from probe.grads import per_sample_grads

    adapter = AntipastoAdapter(tiny_model)
    batch = collate(*ragged_pairs, pad_id=0)
    before = per_sample_grads(adapter, batch).grads
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in adapter.branches.values():
            flip = torch.randint(0, 2, (b.rank,), generator=g).float() * 2 - 1
            assert (flip < 0).any()
            b.U.mul_(flip)
            b.Vh.mul_(flip[:, None])
    after = per_sample_grads(adapter, batch).grads
    for n in before:
        torch.testing.assert_close(after[n], before[n], rtol=1e-5, atol=1e-7)


def test_delta_is_the_singular_value_shift(tiny_model):
    """Setting δS makes the layer act like U diag(S + δS) Vh: the spec's parameterisation."""
    adapter = AntipastoAdapter(tiny_model)
    name = "model.layers.0.self_attn.o_proj"
    lin = dict(tiny_model.named_modules())[name]
    b = adapter.branches[name]
    with torch.no_grad():
        b.delta_s.copy_(torch.randn(b.rank))
    x = torch.randn(3, lin.in_features)
    s = torch.linalg.svdvals(lin.weight.float())
    expected = x @ (b.U @ torch.diag(s + b.delta_s) @ b.Vh).T
    assert torch.allclose(lin(x), expected, atol=1e-5)


def test_only_delta_s_receives_gradients(tiny_model):
    adapter = AntipastoAdapter(tiny_model)
    out = tiny_model(IDS).logits.float().logsumexp(-1).sum()
    out.backward()
    for name, p in tiny_model.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    grads = adapter.grads()
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values()) > 0


def test_one_optimizer_step_changes_logits_and_zeroed_restores_base(tiny_model):
    base = logits(tiny_model)
    adapter = AntipastoAdapter(tiny_model)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(tiny_model(IDS).logits[0, :-1], IDS[0, 1:])
    loss.backward()
    opt.step()
    after = logits(tiny_model)
    assert not torch.allclose(after, base), "δS step left the policy unchanged"
    with adapter.zeroed():
        assert torch.equal(logits(tiny_model), base)
    assert torch.equal(logits(tiny_model), after)


def test_top_rank_and_remove(tiny_model):
    base = logits(tiny_model)
    adapter = AntipastoAdapter(tiny_model, AntipastoConfig(rank=4))
    assert set(adapter.ranks.values()) == {4}
    for p in adapter.parameters():
        torch.nn.init.normal_(p)
    assert not torch.allclose(logits(tiny_model), base)
    adapter.remove()
    assert torch.equal(logits(tiny_model), base)


def test_save_load_roundtrip(tiny_model, tmp_path):
    adapter = AntipastoAdapter(tiny_model)
    for p in adapter.parameters():
        torch.nn.init.normal_(p)
    path = adapter.save(tmp_path / "ds.safetensors", base_model_id="tiny")
    other = AntipastoAdapter(make_tiny_qwen3())
    meta = other.load(path, base_model_id="tiny")
    assert meta["base_model_id"] == "tiny"
    for n, v in adapter.flat_values().items():
        assert torch.equal(other.flat_values()[n], v)


def test_load_rank_mismatch_names_module(tiny_model, tmp_path):
    path = AntipastoAdapter(tiny_model).save(tmp_path / "ds.safetensors")
    other = AntipastoAdapter(make_tiny_qwen3(), AntipastoConfig(rank=4))
    with pytest.raises(AdapterStateError, match=r"model\.layers\.0\.self_attn\.q_proj.*size"):
        other.load(path)


def test_load_module_mismatch_names_module(tiny_model, tmp_path):
    path = AntipastoAdapter(tiny_model).save(tmp_path / "ds.safetensors")
    deeper = AntipastoAdapter(make_tiny_qwen3(num_hidden_layers=3))
    with pytest.raises(AdapterStateError, match=r"model\.layers\.2\."):
        deeper.load(path)


def test_load_wrong_base_and_corrupt_file(tiny_model, tmp_path):
    adapter = AntipastoAdapter(tiny_model)
    path = adapter.save(tmp_path / "ds.safetensors", base_model_id="tiny-a")
    with pytest.raises(AdapterStateError, match="tiny-a"):
        adapter.load(path, base_model_id="tiny-b")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:50])
    with pytest.raises(AdapterStateError, match="not a readable"):
        adapter.load(bad)


def test_svd_is_computed_once_per_weights_and_reused_bit_identically(monkeypatch):
    """Each replay arm reloads the base and wraps it: the SVD must be reused, with the same bits
    a fresh computation gives, and never for different weights."""
    from probe.adapters import antipasto

    cache = antipasto.SVDCache()
    monkeypatch.setattr(antipasto, "SVD_CACHE", cache)
    calls = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or real_svd(*a, **k))
    first = AntipastoAdapter(make_tiny_qwen3(seed=0))
    n = len(first.branches)
    assert len(calls) == n and cache.misses == n
    again = AntipastoAdapter(make_tiny_qwen3(seed=0))  # a reloaded model: same weights
    assert len(calls) == n and cache.hits == n
    fresh = AntipastoAdapter(make_tiny_qwen3(seed=0), AntipastoConfig(reuse_svd=False))
    assert len(calls) == 2 * n
    for name, b in again.branches.items():
        assert torch.equal(b.U, fresh.branches[name].U) and torch.equal(b.Vh, fresh.branches[name].Vh)
    AntipastoAdapter(make_tiny_qwen3(seed=1))  # other weights: computed, not looked up
    assert len(calls) == 3 * n
    AntipastoAdapter(make_tiny_qwen3(seed=0), AntipastoConfig(rank=3))  # another rank too
    assert len(calls) == 4 * n


def test_svd_cache_recomputes_factors_changed_in_place(monkeypatch):
    from probe.adapters import antipasto

    cache = antipasto.SVDCache()
    monkeypatch.setattr(antipasto, "SVD_CACHE", cache)
    first = AntipastoAdapter(make_tiny_qwen3(seed=0))
    name = "model.layers.0.mlp.up_proj"
    with torch.no_grad():
        first.branches[name].U.mul_(-1)  # as the sign-invariance test does
    second = AntipastoAdapter(make_tiny_qwen3(seed=0))
    assert cache.hits == len(first.branches) - 1
    fresh = AntipastoAdapter(make_tiny_qwen3(seed=0), AntipastoConfig(reuse_svd=False))
    assert torch.equal(second.branches[name].U, fresh.branches[name].U)
