"""Streamed v_hack extraction (k = 1, when every pair's difference would not fit host memory):
the same directions, controls and statistics as the stored path, without holding the differences;
k > 1 fails before any pass; and the decision itself."""
from __future__ import annotations

import logging
import weakref
from types import SimpleNamespace

import pytest
import torch

from probe import memory, vhack
from probe.adapters.registry import build_adapter
from probe.memory import MemoryBudgetError
from probe.stages import grpo as grpo_stage
from probe.vhack import VHackConfig, nll_pair_grads
from probe.vhack_methods import extract_method
from probe.world.base import Pair
from tests.tiny_models import tiny_qwen3, tiny_tokenizer

pytestmark = pytest.mark.unit

ATOL = 1e-6


def make_pairs(n: int = 7) -> list[Pair]:
    """Pairs of different lengths (so batches pad), `n` not a multiple of the batch size."""
    styles = ("pure_override", "override_plus_solution")
    return [Pair(problem_id=i, prompt=f"<|im_start|>user\nsolve {i} {'x' * (i % 3)}<|im_end|>\n",
                 hack=f"def f(): return {i}" + " # ok" * (i % 2), clean=f"print({i * 7})",
                 hack_style=styles[i % 2]) for i in range(n)]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def adapter():
    return build_adapter(tiny_qwen3(seed=0))


def force(monkeypatch, store: bool) -> None:
    monkeypatch.setattr(vhack, "store_pair_diffs", lambda n_pairs, sizes: store)


def forward_counter(adapter) -> list[int]:
    calls: list[int] = []
    adapter.model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def assert_same(stored, streamed) -> None:
    (vs_a, st_a), (vs_b, st_b) = stored, streamed
    assert list(vs_a) == list(vs_b)
    for kind in vs_a:
        assert list(vs_a[kind]) == list(vs_b[kind])
        for n in vs_a[kind]:
            torch.testing.assert_close(vs_b[kind][n], vs_a[kind][n], atol=ATOL, rtol=0)
    assert list(st_a) == list(st_b)
    assert st_b["n_pairs"] == st_a["n_pairs"] and st_b["n_modules"] == st_a["n_modules"]
    assert st_b["hack_styles"] == st_a["hack_styles"]
    assert st_b["pair_agreement"] == pytest.approx(st_a["pair_agreement"], abs=ATOL)
    for key in st_a:
        if key.startswith("mean_cos_shuffled_vs_"):
            assert st_b[key] == pytest.approx(st_a[key], abs=ATOL)
    for kind, ca in st_a["controls"].items():
        cb = st_b["controls"][kind]
        assert list(ca) == list(cb)
        for key, va in ca.items():
            if isinstance(va, float):
                assert cb[key] == pytest.approx(va, abs=ATOL), (kind, key)
            elif isinstance(va, dict):
                assert list(cb[key]) == list(va)
                for m, x in va.items():
                    assert cb[key][m] == pytest.approx(x, abs=ATOL), (kind, key, m)
            else:
                assert cb[key] == va, (kind, key)


@pytest.mark.parametrize("method", ["nll", "grpo"])
@pytest.mark.parametrize("shuffled", ["orthogonal", "balanced"])
def test_streamed_extraction_equals_stored(monkeypatch, tok, adapter, method, shuffled):
    pairs = make_pairs()
    config = VHackConfig(batch_size=3, seed=1, shuffled=shuffled)
    calls = forward_counter(adapter)
    force(monkeypatch, True)
    stored = extract_method(adapter, tok, pairs, config, method, max_new_tokens=8)
    n_stored = len(calls)
    force(monkeypatch, False)

    def no_store(*a, **k):
        raise AssertionError("the streamed path stored the pairs' differences")

    monkeypatch.setattr(vhack, "pair_grad_diffs", no_store)
    streamed = extract_method(adapter, tok, pairs, config, method, max_new_tokens=8)
    assert len(calls) - n_stored == 2 * n_stored  # a second pass, for pair_agreement only
    assert_same(stored, streamed)
    assert 0.0 <= streamed[1]["pair_agreement"] <= 1.0


def test_streaming_holds_sums_not_the_pairs_differences(tok, adapter):
    """Every batch's differences are gone by the next batch; what comes back is one float64
    (size,) sum per module, not (P, size)."""
    pairs = make_pairs()
    live: list[weakref.ref] = []
    held: list[int] = []

    def watched(adapter, batch, n):
        held.append(sum(r() is not None for r in live))
        out = nll_pair_grads(adapter, batch, n)
        live.extend(weakref.ref(d) for d in out.values())
        return out

    signs = vhack.balanced_signs(len(pairs), 0)
    total, signed = vhack.pair_grad_sums(adapter, tok, pairs, 2, signs, pair_grads=watched)
    assert len(held) == 4 and held == [0, 0, 0, 0]
    assert list(total) == list(signed) == list(adapter.sizes)
    for n, size in adapter.sizes.items():
        assert total[n].shape == signed[n].shape == (size,) and total[n].dtype == torch.float64
    # the sums are those of the stored differences
    diffs = vhack.pair_grad_diffs(adapter, tok, pairs, 2)
    for n, d in diffs.items():
        torch.testing.assert_close(total[n], d.double().sum(0), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(signed[n], signs.double() @ d.double(), atol=1e-9, rtol=1e-9)


def test_refresh_direction_streamed_equals_stored_in_one_pass(monkeypatch, tok, adapter):
    """R5's projected_refresh / R6's drift re-extraction need only V: one pass either way."""
    pairs = make_pairs()
    world = SimpleNamespace(tokenizer=tok)
    config = VHackConfig(batch_size=3)
    calls = forward_counter(adapter)
    force(monkeypatch, True)
    stored = grpo_stage._refresh(adapter, world, pairs, config, "cpu")
    n_stored = len(calls)
    force(monkeypatch, False)
    streamed = grpo_stage._refresh(adapter, world, pairs, config, "cpu")
    assert len(calls) == 2 * n_stored
    assert list(streamed) == list(stored)
    for n in stored:
        torch.testing.assert_close(streamed[n], stored[n], atol=ATOL, rtol=0)


def test_k2_that_does_not_fit_fails_before_any_forward(monkeypatch, tok, adapter):
    pairs = make_pairs()
    calls = forward_counter(adapter)
    force(monkeypatch, False)
    config = VHackConfig(k=2, batch_size=3)
    with pytest.raises(MemoryBudgetError, match=r"vhack\.k = 2.*GiB.*vhack\.k = 1.*fewer pairs"):
        vhack.extract_all(adapter, tok, pairs, config)
    with pytest.raises(MemoryBudgetError, match=r"vhack\.k = 2"):
        grpo_stage._refresh(adapter, SimpleNamespace(tokenizer=tok), pairs, config, "cpu")
    assert calls == []


def test_store_pair_diffs_decides_from_size_and_free_memory(monkeypatch, caplog):
    sizes = {"a": 1000, "b": 24}  # 100 pairs: 409,600 bytes of float32
    need = 100 * 1024 * 4
    caplog.set_level(logging.INFO, logger="probe.vhack")
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(need / memory.FILL) + 1)
    assert vhack.store_pair_diffs(100, sizes)
    assert "stored" in caplog.text
    caplog.clear()
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(need / memory.FILL) - 1)
    assert not vhack.store_pair_diffs(100, sizes)
    assert vhack.store_pair_diffs(99, sizes)
    assert "streamed" in caplog.text
