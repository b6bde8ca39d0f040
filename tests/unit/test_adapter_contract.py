"""The adapter contract, every registered kind × every property (issue #8 item 1).

Downstream code sees one flat vector per wrapped module; these tests hold each kind in `ADAPTERS`
to that: identity at init (where the kind says so), probes giving the exact per-sample flat
gradients of the loop, the flat grad/value round trips, save/load with clear mismatch errors,
`zeroed()` as the base policy, `remove()`, and an optimizer step that moves the policy. A kind
registered later (LoRA) is picked up with no edit here.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from probe.adapters.base import Adapter, AdapterStateError
from probe.adapters.registry import ADAPTERS, AdapterSpec, build_adapter
from probe.batch import collate
from probe.grads import per_sample_grads, per_sample_grads_loop
from tests.unit.conftest import make_tiny_qwen3

pytestmark = pytest.mark.unit

IDS = torch.tensor([[5, 17, 33, 2, 60, 41, 9, 12]])
KINDS = sorted(ADAPTERS)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def spec(kind: str, **kw) -> AdapterSpec:
    return AdapterSpec(kind=kind, rank=kw.pop("rank", 3), **kw)


def perturb(adapter: Adapter, seed: int = 0) -> None:
    """Every trainable tensor away from its init (LoRA's B = 0 would zero A's gradient)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def test_registry_rejects_an_unknown_kind_naming_the_known_ones(tiny_model):
    with pytest.raises(ValueError, match="unknown adapter kind 'nope'.*delta_s"):
        build_adapter(tiny_model, AdapterSpec(kind="nope"))
    assert "delta_s" in ADAPTERS and AdapterSpec().kind == "delta_s"


def test_declares_kind_sizes_and_identity(tiny_model, kind):
    adapter = build_adapter(tiny_model, spec(kind))
    assert adapter.kind == kind and isinstance(adapter.identity_at_init, bool)
    assert len(adapter.module_names) == 7 * tiny_model.config.num_hidden_layers
    params = adapter.module_params()
    assert adapter.sizes == {n: sum(p.numel() for p in ps) for n, ps in params.items()}
    assert adapter.parameters() == [p for ps in params.values() for p in ps]
    assert all(p.requires_grad for p in adapter.parameters())
    own = {id(p) for p in adapter.parameters()}  # LoRA's factors live inside the model's modules
    assert not any(p.requires_grad for p in tiny_model.parameters() if id(p) not in own), (
        "base weights must be frozen")
    flat = adapter.flat_values()
    assert {n: v.shape for n, v in flat.items()} == {n: (s,) for n, s in adapter.sizes.items()}
    assert all(v.dtype == torch.float32 for v in flat.values())


def test_identity_at_init_when_declared(tiny_model, kind):
    base = logits(tiny_model)
    adapter = build_adapter(tiny_model, spec(kind))
    if adapter.identity_at_init:
        assert torch.equal(logits(tiny_model), base)
    else:
        assert not torch.allclose(logits(tiny_model), base), "declared not identity, but is"


@pytest.mark.parametrize("side", ["left", "right"])
def test_probes_give_the_loops_per_sample_flat_grads(tiny_model, ragged_pairs, kind, side):
    adapter = build_adapter(tiny_model, spec(kind))
    perturb(adapter)
    batch = collate(*ragged_pairs, pad_id=0, side=side)
    def batch_logits() -> torch.Tensor:
        with torch.no_grad():
            return tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids).logits

    before = batch_logits()
    with adapter.probing(batch.size) as probes:
        assert probes.keys() == adapter.sizes.keys()
        for n, pr in probes.items():
            assert pr.shape == (batch.size, adapter.sizes[n]) and pr.dtype == torch.float32
            assert pr.requires_grad and not pr.any()
        assert torch.equal(batch_logits(), before), "zero probes changed the forward"
    fast = per_sample_grads(adapter, batch)
    slow = per_sample_grads_loop(adapter, batch)
    assert fast.grads.keys() == slow.grads.keys()
    for n in fast.grads:
        assert fast.grads[n].shape == (batch.size, adapter.sizes[n])
        torch.testing.assert_close(fast.grads[n], slow.grads[n], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=n: f"{n}: {m}")
    assert (fast.norms > 0).all()
    # every tensor of every module gets gradient (a piece left out of the flat view would be 0)
    for n, ps in adapter.module_params().items():
        offset = 0
        for p in ps:
            piece = fast.grads[n][:, offset:offset + p.numel()]
            assert piece.abs().sum() > 0, (n, tuple(p.shape))
            offset += p.numel()


def test_flat_grads_follow_module_params_order_and_round_trip(tiny_model, kind):
    adapter = build_adapter(tiny_model, spec(kind))
    perturb(adapter)
    torch.nn.functional.cross_entropy(tiny_model(IDS).logits[0, :-1], IDS[0, 1:]).backward()
    flat = adapter.grads()
    for n, ps in adapter.module_params().items():  # ps flattened in order, row-major
        torch.testing.assert_close(flat[n], torch.cat([p.grad.reshape(-1) for p in ps]),
                                   rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)
    new = {n: torch.randn(s, generator=g) for n, s in adapter.sizes.items()}
    adapter.set_grads(new)
    for n, ps in adapter.module_params().items():
        assert all(p.grad.shape == p.shape for p in ps)
        assert torch.equal(adapter.grads()[n], new[n])
    clipped = {n: v.clone() for n, v in new.items()}
    torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1e-3)
    assert all(torch.equal(new[n], clipped[n]) for n in new), "set_grads aliased the caller's tensor"
    adapter.zero_grad()
    assert all(p.grad is None for p in adapter.parameters())
    assert all(not v.any() for v in adapter.grads().values())


def test_flat_values_are_a_copy_and_set_flat_values_writes_them(tiny_model, kind):
    adapter = build_adapter(tiny_model, spec(kind))
    perturb(adapter)
    v = adapter.flat_values()
    kept = {n: t.clone() for n, t in v.items()}
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(1.0)
    assert all(torch.equal(v[n], kept[n]) for n in v), "flat_values aliases the parameters"
    adapter.set_flat_values(kept)
    assert all(torch.equal(adapter.flat_values()[n], kept[n]) for n in kept)


def test_save_load_round_trip(tiny_model, kind, tmp_path):
    adapter = build_adapter(tiny_model, spec(kind))
    perturb(adapter)
    path = adapter.save(tmp_path / "a.safetensors", base_model_id="tiny")
    other = build_adapter(make_tiny_qwen3(), spec(kind))
    meta = other.load(path, base_model_id="tiny")
    assert meta["kind"] == kind and meta["base_model_id"] == "tiny"
    assert other.module_names == adapter.module_names
    for a, b in zip(adapter.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(logits(other.model), logits(adapter.model))


def test_load_mismatches_are_clear_errors(tiny_model, kind, tmp_path):
    adapter = build_adapter(tiny_model, spec(kind))
    path = adapter.save(tmp_path / "a.safetensors", base_model_id="tiny-a")
    smaller = build_adapter(make_tiny_qwen3(), spec(kind, rank=2))
    with pytest.raises(AdapterStateError, match=r"model\.layers\.0\.self_attn\.q_proj.*size"):
        smaller.load(path)
    deeper = build_adapter(make_tiny_qwen3(num_hidden_layers=3), spec(kind))
    with pytest.raises(AdapterStateError, match=r"model\.layers\.2\."):
        deeper.load(path)
    with pytest.raises(AdapterStateError, match="tiny-a"):
        adapter.load(path, base_model_id="tiny-b")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    other_kind = tmp_path / "other.safetensors"
    save_file(tensors, str(other_kind), metadata={**meta, "kind": "some_other_kind"})
    with pytest.raises(AdapterStateError, match=f"'some_other_kind'.*'{kind}'"):
        adapter.load(other_kind)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:50])
    with pytest.raises(AdapterStateError, match="not a readable"):
        adapter.load(bad)


def test_zeroed_is_the_base_policy_and_remove_restores_the_model(tiny_model, kind):
    base = logits(tiny_model)
    adapter = build_adapter(tiny_model, spec(kind))
    perturb(adapter)
    moved = logits(tiny_model)
    assert not torch.allclose(moved, base)
    with adapter.zeroed():
        assert torch.equal(logits(tiny_model), base)
    assert torch.equal(logits(tiny_model), moved)
    adapter.remove()
    assert torch.equal(logits(tiny_model), base)


def test_an_optimizer_step_changes_the_policy(tiny_model, kind):
    adapter = build_adapter(tiny_model, spec(kind))
    before = logits(tiny_model)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    torch.nn.functional.cross_entropy(tiny_model(IDS).logits[0, :-1], IDS[0, 1:]).backward()
    opt.step()
    assert not torch.allclose(logits(tiny_model), before), "a step left the policy unchanged"


def test_spec_targets_select_the_wrapped_modules(tiny_model, kind):
    adapter = build_adapter(tiny_model, replace(spec(kind), targets=("q_proj", "down_proj")))
    names = {n.rsplit(".", 1)[-1] for n in adapter.module_names}
    assert names == {"q_proj", "down_proj"}
