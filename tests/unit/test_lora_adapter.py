"""The LoRA adapter: PEFT's layers, identity at init, per-sample grads, the zero-init-B trap,
the flat views, save/load checks, zeroed/remove, and an optimizer step."""
from __future__ import annotations

import json

import pytest
import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from safetensors import safe_open
from safetensors.torch import save_file

from probe.adapters.lora import INITS, LoraAdapter, LoraSpec, LoraStateError, build_lora
from probe.batch import TokenBatch, collate
from probe.grads import per_sample_grads, per_sample_loss
from tests.unit.conftest import make_tiny_qwen3

pytestmark = pytest.mark.unit

IDS = torch.tensor([[5, 17, 33, 2, 60, 41, 9, 12]])
RANK = 4  # small for speed; the real default is 32
MOD = "model.layers.1.self_attn.o_proj"


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def lora(model, init: str = "nonzero_b", **kw) -> LoraAdapter:
    return build_lora(model, LoraSpec(rank=kw.pop("rank", RANK), alpha=kw.pop("alpha", RANK),
                                      init=init, **kw))


def perturb(adapter: LoraAdapter, seed: int = 0, std: float = 0.1) -> None:
    """Move every trainable tensor away from init, so both A and B carry gradient."""
    g = torch.Generator().manual_seed(seed)
    adapter.set_flat_values({n: torch.randn(s, generator=g) * std
                             for n, s in adapter.sizes.items()})


def split_ab(adapter: LoraAdapter, name: str, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    m = adapter.modules[name]
    n_a = m.A.numel() if m.train_a else 0
    return flat[..., :n_a], flat[..., n_a:]


def loop_grads(adapter: LoraAdapter, batch: TokenBatch) -> dict[str, torch.Tensor]:
    """Reference: one unpadded forward+backward per sample, flat [A, B] per module."""
    params = adapter.module_params()
    out: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    for n in range(batch.size):
        keep = batch.attention_mask[n].bool()
        row = TokenBatch(batch.input_ids[n, keep][None], batch.attention_mask[n, keep][None],
                         batch.loss_mask[n, keep][None],
                         torch.arange(int(keep.sum()))[None])
        loss = per_sample_loss(adapter.model, row)[0]
        flat = [p for ps in params.values() for p in ps]
        gs = iter(torch.autograd.grad(loss, flat))
        for name, ps in params.items():
            out[name].append(torch.cat([next(gs).reshape(-1) for _ in ps]))
    return {n: torch.stack(v) for n, v in out.items()}


def test_installs_peft_lora_layers_on_the_seven_targets(tiny_model):
    adapter = lora(tiny_model)
    cfg = tiny_model.config
    assert len(adapter.modules) == 7 * cfg.num_hidden_layers
    assert MOD in adapter.module_names and "lm_head" not in adapter.module_names
    for name, mod in tiny_model.named_modules():
        if name in adapter.modules:
            assert type(mod) is PeftLoraLinear
            assert mod.r["default"] == RANK and mod.scaling["default"] == 1.0
            assert isinstance(mod.lora_dropout["default"], torch.nn.Identity)  # dropout 0
    d, i = cfg.hidden_size, cfg.intermediate_size
    assert adapter.sizes["model.layers.0.mlp.down_proj"] == RANK * i + d * RANK
    assert LoraSpec().rank == 32 and LoraSpec().alpha == 32 and LoraSpec().init == "nonzero_b"


def test_only_the_adapter_trains(tiny_model):
    adapter = lora(tiny_model)
    trainable = {id(p) for p in tiny_model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter.parameters()}
    assert all(p.dtype == torch.float32 for p in adapter.parameters())


@pytest.mark.parametrize("init", INITS)
def test_identity_at_init_is_bit_identical(init):
    model = make_tiny_qwen3()
    before = logits(model)
    adapter = lora(model, init)
    assert adapter.identity_at_init
    assert torch.equal(logits(model), before)
    m = adapter.modules[MOD]
    assert m.A.abs().sum() > 0
    assert (m.B.abs().sum() > 0) == (init == "nonzero_b")  # the anchor really cancels something


def test_nonzero_b_is_identity_at_init_only_because_of_the_anchor(tiny_model):
    before = logits(tiny_model)
    adapter = lora(tiny_model, "nonzero_b")
    for m in adapter.modules.values():
        m.anchor = None
    assert not torch.allclose(logits(tiny_model), before, atol=1e-6)


def test_same_seed_same_init_other_seed_other_init():
    a = lora(make_tiny_qwen3(), seed=3).flat_values()
    b = lora(make_tiny_qwen3(), seed=3).flat_values()
    c = lora(make_tiny_qwen3(), seed=4).flat_values()
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a[MOD], c[MOD])


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_per_sample_grads_equal_a_loop(ragged_pairs, init, side):
    adapter = lora(make_tiny_qwen3(), init)
    perturb(adapter)
    batch = collate(*ragged_pairs, pad_id=0, side=side)
    fast = per_sample_grads(adapter, batch)
    slow = loop_grads(adapter, batch)
    assert fast.grads.keys() == slow.keys()
    for n in slow:
        assert fast.grads[n].shape == (batch.size, adapter.sizes[n])
        torch.testing.assert_close(fast.grads[n], slow[n], rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{n}: {m}")
        for part in split_ab(adapter, n, fast.grads[n]):
            assert part.numel() == 0 or part.abs().sum() > 0


def test_probe_batch_size_must_match(tiny_model):
    adapter = lora(tiny_model)
    with adapter.probing(3), pytest.raises(ValueError, match="batch size 3"):
        tiny_model(IDS)


def test_zero_init_b_trap_and_its_remedies(ragged_pairs):
    """PEFT's B = 0 leaves the A part of every per-sample gradient exactly 0 at init; the
    nonzero_b remedy gives both parts, of comparable size; frozen_a's flat vector is B alone."""
    batch = collate(*ragged_pairs, pad_id=0)
    peft = lora(make_tiny_qwen3(), "peft")
    g = per_sample_grads(peft, batch).grads
    for n in g:
        ga, gb = split_ab(peft, n, g[n])
        assert torch.count_nonzero(ga) == 0, n
        assert gb.abs().sum() > 0, n

    fixed = lora(make_tiny_qwen3(), "nonzero_b")
    g = per_sample_grads(fixed, batch).grads
    ratios = []
    for n in g:
        ga, gb = split_ab(fixed, n, g[n])
        assert (ga.norm(dim=-1) > 0).all() and (gb.norm(dim=-1) > 0).all(), n
        ratios.append(float(ga.norm() / gb.norm()))
    mean_ratio = sum(ratios) / len(ratios)
    assert 0.2 < mean_ratio < 5, ratios  # balanced init: neither part negligible

    frozen = lora(make_tiny_qwen3(), "frozen_a")
    g = per_sample_grads(frozen, batch).grads
    m = frozen.modules[MOD]
    assert frozen.sizes[MOD] == m.B.numel() and not m.A.requires_grad
    assert all((g[n].norm(dim=-1) > 0).all() for n in g)


def test_flat_layout_is_a_then_b_row_major(tiny_model):
    adapter = lora(tiny_model)
    perturb(adapter)
    m = adapter.modules[MOD]
    flat = adapter.flat_values()[MOD]
    torch.testing.assert_close(flat, torch.cat([m.A.detach().flatten(), m.B.detach().flatten()]))


def test_grads_and_set_grads_round_trip(tiny_model):
    adapter = lora(tiny_model)
    loss = tiny_model(IDS).logits.float().pow(2).mean()
    loss.backward()
    m = adapter.modules[MOD]
    g = adapter.grads()
    torch.testing.assert_close(g[MOD], torch.cat([m.A.grad.flatten(), m.B.grad.flatten()]))
    new = {n: torch.randn(s) for n, s in adapter.sizes.items()}
    adapter.set_grads(new)
    assert all(torch.equal(adapter.grads()[n], new[n]) for n in new)
    assert m.B.grad.shape == m.B.shape
    adapter.zero_grad()
    assert all(p.grad is None for p in adapter.parameters())
    assert all(torch.count_nonzero(v) == 0 for v in adapter.grads().values())


@pytest.mark.parametrize("init", INITS)
def test_save_load_round_trip_reproduces_the_model(tmp_path, init):
    a = lora(make_tiny_qwen3(), init, seed=1)
    perturb(a)
    a.save(tmp_path / "s.safetensors", "tiny")
    want = logits(a.model)
    b = lora(make_tiny_qwen3(), init, seed=2)  # another random init: load must overwrite it all
    assert not torch.equal(logits(b.model), want) or init != "nonzero_b"
    meta = b.load(tmp_path / "s.safetensors", "tiny")
    assert meta["kind"] == "lora" and json.loads(meta["sizes"]) == a.sizes
    assert torch.equal(logits(b.model), want)
    assert all(torch.equal(a.flat_values()[n], v) for n, v in b.flat_values().items())


def _rewrite_meta(src, dst, **changes) -> None:
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    save_file(tensors, str(dst), metadata=meta)


def test_load_mismatches_are_clear_errors(tmp_path):
    path = tmp_path / "s.safetensors"
    lora(make_tiny_qwen3()).save(path, "tiny")
    target = lora(make_tiny_qwen3())
    with pytest.raises(LoraStateError, match="'delta_s' adapter state"):
        _rewrite_meta(path, tmp_path / "k.safetensors", kind="delta_s")
        target.load(tmp_path / "k.safetensors")
    with pytest.raises(LoraStateError, match="base model 'tiny'"):
        target.load(path, "Qwen/Qwen3-4B")
    with pytest.raises(LoraStateError, match="init 'nonzero_b'"):
        lora(make_tiny_qwen3(), "peft").load(path)
    with pytest.raises(LoraStateError, match="alpha"):
        lora(make_tiny_qwen3(), alpha=8).load(path)
    with pytest.raises(LoraStateError, match=r"flat size \d+, the model's is \d+"):
        lora(make_tiny_qwen3(), rank=2, alpha=RANK).load(path)
    with pytest.raises(LoraStateError, match="has no entry for the model's module"):
        lora(make_tiny_qwen3(num_hidden_layers=3)).load(path)
    with pytest.raises(LoraStateError, match="not a wrapped module"):
        lora(make_tiny_qwen3(num_hidden_layers=1)).load(path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(LoraStateError, match="not a readable safetensors"):
        target.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("init", INITS)
def test_zeroed_is_the_base_and_keeps_trainability(init):
    model = make_tiny_qwen3()
    base = logits(model)
    adapter = lora(model, init)
    perturb(adapter)
    trained = logits(model)
    assert not torch.allclose(trained, base)
    flags = [(p.requires_grad) for m in adapter.modules.values() for p in (m.A, m.B)]
    with adapter.zeroed():
        assert torch.equal(logits(model), base)
    assert torch.equal(logits(model), trained)
    assert flags == [(p.requires_grad) for m in adapter.modules.values() for p in (m.A, m.B)]


def test_remove_restores_the_original_model():
    model = make_tiny_qwen3()
    model.model.embed_tokens.weight.requires_grad_(False)  # a flag remove() must put back as it was
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    keys, base = list(model.state_dict()), logits(model)
    adapter = lora(model)
    perturb(adapter)
    adapter.remove()
    assert list(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert type(model.model.layers[1].self_attn.o_proj) is torch.nn.Linear
    assert not hasattr(model, "peft_config")
    assert torch.equal(logits(model), base)


@pytest.mark.parametrize("init", INITS)
def test_optimizer_step_changes_output_not_base_weights(init):
    model = make_tiny_qwen3()
    adapter = lora(model, init)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if "lora_" not in n or (init == "frozen_a" and "lora_A" in n)}
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    before = logits(model)
    for _ in range(2):  # under peft init, A first moves on the second step (B = 0 on the first)
        opt.zero_grad()
        model(IDS, labels=IDS).loss.backward()
        opt.step()
    assert not torch.allclose(logits(model), before)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    m = adapter.modules[MOD]
    assert (m.B.abs().sum() > 0)


@pytest.mark.parametrize("init", ["peft", "nonzero_b"])
def test_bf16_model_gets_float32_factors_and_stays_identical(init):
    """Small updates to bf16 factors would round away; PEFT computes the branch in the factors'
    dtype and casts back, so the bf16 model is still bit-identical at init."""
    model = make_tiny_qwen3().to(torch.bfloat16)
    before = logits(model)
    adapter = lora(model, init)
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    assert torch.equal(logits(model), before)


def test_build_lora_reads_a_shared_spec_with_unset_fields(tmp_path):
    """The registry's AdapterSpec leaves rank/alpha None and init "default": LoraSpec's defaults."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class SharedSpec:  # the fields of probe.adapters.registry.AdapterSpec
        kind: str = "lora"
        rank: int | None = None
        alpha: float | None = None
        targets: tuple[str, ...] = ("q_proj", "o_proj")
        init: str = "default"
        seed: int = 0

    adapter = build_lora(make_tiny_qwen3(), SharedSpec())
    assert adapter.spec == LoraSpec(rank=32, alpha=32.0, targets=("q_proj", "o_proj"))
    assert len(adapter.modules) == 2 * 2
    adapter.save(tmp_path / "s.safetensors")
    same = build_lora(make_tiny_qwen3(), SharedSpec(alpha=32))  # an int alpha: 32 == 32.0
    same.load(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="kind 'delta_s'"):
        build_lora(make_tiny_qwen3(), SharedSpec(kind="delta_s"))
