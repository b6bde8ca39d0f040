"""The concatenated per-module path (probe/flat.py, on by default for CUDA tensors) agrees with the
reference module-by-module path: cosines, projection (every mode), diagnostics, norms, the summed
gradient and a whole training step. Forced on here, on CPU, against the same inputs forced off."""
from __future__ import annotations

import math

import pytest
import torch

from probe import flat
from probe.adapters.registry import ADAPTERS, AdapterSpec, build_adapter
from probe.cosine import (module_dots, module_sq_norms, norm_weighted_cos,
                          norm_weighted_cos_many, per_module_cos)
from probe.grads import PerSampleGrads
from probe.project import MODES, module_hackward_cos, project_grads
from probe.train_step import Projection, total_norm, train_step
from probe.vhack import random_directions, random_unit_directions
from tests.unit.conftest import make_tiny_qwen3

pytestmark = pytest.mark.unit

SIZES = {"a": 5, "b": 3, "c": 8, "d": 1, "e": 4}


def _both(monkeypatch, fn):
    """fn() with the reference path, then with the concatenated path."""
    out = []
    for setting in (False, True):
        monkeypatch.setattr(flat, "FLAT_OPS", setting)
        out.append(fn())
    return out


def _grads(batch: tuple[int, ...] = (6,), seed: int = 0, zero: str | None = "d"):
    g = torch.Generator().manual_seed(seed)
    grads = {n: torch.randn(*batch, s, generator=g) for n, s in SIZES.items()}
    if zero is not None:
        grads[zero] = torch.zeros_like(grads[zero])  # a module backward left at zero
    return grads


def test_auto_is_cuda_only_and_the_setting_forces_it(monkeypatch):
    monkeypatch.setattr(flat, "FLAT_OPS", None)
    assert not flat.use_flat(_grads()) and not flat.use_flat({})
    monkeypatch.setattr(flat, "FLAT_OPS", True)
    assert flat.use_flat(_grads()) and not flat.use_flat({})


@pytest.mark.parametrize("groups", [16, 1])  # equal-size blocks / segment_reduce
def test_segments_sum_expand_and_split_are_per_module(monkeypatch, groups):
    monkeypatch.setattr(flat, "MAX_SIZE_GROUPS", groups)
    x = _grads((2, 3), zero=None)
    x["e"] = torch.randn(2, 3, 5)  # two modules of size 5, apart: the blocks must not mix them up
    seg = flat.segments(x)
    X = seg.cat(x)
    assert X.shape == (2, 3, sum(v.shape[-1] for v in x.values()))
    torch.testing.assert_close(seg.sums(X), torch.stack([v.sum(-1) for v in x.values()], -1))
    per = torch.arange(len(x), dtype=torch.float32)
    assert seg.expand(per).tolist() == [float(i) for i, v in enumerate(x.values())
                                        for _ in range(v.shape[-1])]
    assert all(torch.equal(seg.split(X)[n], x[n]) for n in x)


@pytest.mark.parametrize("k", [1, 3])
def test_cosines_agree(monkeypatch, k):
    grads, V = _grads(), random_directions(SIZES, k, seed=1)
    dirs = random_unit_directions(SIZES, 7, seed=2)
    monkeypatch.setattr(flat, "FLAT_OPS", True)
    packed = flat.pack(V)  # k = 3 leaves a module of size 1 with 1 row: not packable, unchanged
    assert (getattr(packed, "whole", None) is None) == (k == 3)
    for fn in (lambda: norm_weighted_cos(grads, packed), lambda: per_module_cos(grads, packed),
               lambda: module_hackward_cos({n: g[0] for n, g in grads.items()}, packed)):
        ref, got = _both(monkeypatch, fn)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    for fn in (lambda: norm_weighted_cos(grads, V), lambda: module_dots(grads, V),
               lambda: module_sq_norms(grads), lambda: per_module_cos(grads, V),
               lambda: norm_weighted_cos_many(grads, dirs)):
        ref, got = _both(monkeypatch, fn)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    # an all-zero gradient is an undefined cosine on both paths
    zero = {n: torch.zeros(2, s) for n, s in SIZES.items()}
    for c in _both(monkeypatch, lambda: norm_weighted_cos(zero, V)):
        assert torch.isnan(c).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("preserve", [False, True])
@pytest.mark.parametrize("k", [1, 2])
def test_projection_and_its_diagnostics_agree(monkeypatch, mode, preserve, k):
    grads, V = _grads(()), random_directions(SIZES, k, seed=3)
    # one module pointing away from V: the one-sided projection leaves it alone
    grads["a"] = -V["a"][0] * 2.0
    (ref, dref), (got, dgot) = _both(monkeypatch, lambda: project_grads(grads, V, mode, preserve))
    for n in SIZES:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-6)
    for key, val in dref.to_dict(with_modules=True).items():
        if key == "per_module":
            for n, row in val.items():
                assert dgot.per_module[n] == pytest.approx(row, rel=1e-4, abs=1e-6), n
        else:
            assert getattr(dgot, key) == pytest.approx(val, rel=1e-4, abs=1e-6), key
    if mode == "one_sided":
        assert torch.equal(got["a"], grads["a"])


def test_hackward_cos_total_norm_and_row_norms_agree(monkeypatch):
    grads, V = _grads(()), random_directions(SIZES, 2, seed=4)
    ref, got = _both(monkeypatch, lambda: module_hackward_cos(grads, V))
    torch.testing.assert_close(got, ref)
    ref, got = _both(monkeypatch, lambda: total_norm(grads))
    assert got == pytest.approx(ref, rel=1e-6)
    psg = PerSampleGrads(_grads(), torch.zeros(6))
    ref, got = _both(monkeypatch, lambda: psg.norms)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
@pytest.mark.parametrize("target", ["grad", "update"])
def test_a_training_step_agrees(monkeypatch, ragged_pairs, kind, target):
    """The whole step (summed grads, cosines, projection, clipping, AdamW) moves the adapter to
    the same place and reports the same numbers on both paths."""
    rows = [{"prompt_ids": p, "completion_ids": c} for p, c in zip(*ragged_pairs)]

    def run():
        adapter = build_adapter(make_tiny_qwen3(seed=0), AdapterSpec(kind=kind, rank=3))
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            for p in adapter.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        V = random_directions(adapter.sizes, 1, seed=0)
        seen = []
        opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
        rep = train_step(adapter, opt, rows, pad=0, device="cpu", micro_batch=3, v_hack=V,
                         directions={"nll": V}, projection=Projection(V, target=target),
                         max_grad_norm=0.5, track=random_directions(adapter.sizes, 1, seed=5),
                         on_micro_batch=lambda mb: seen.append((mb.cos["nll"], mb.grads.norms)))
        return adapter.flat_values(), rep, seen

    (ref_v, ref, ref_seen), (got_v, got, got_seen) = _both(monkeypatch, run)
    for n in ref_v:
        torch.testing.assert_close(got_v[n], ref_v[n], rtol=1e-4, atol=1e-6)
    for key, val in vars(ref).items():
        if isinstance(val, float):
            assert math.isclose(getattr(got, key), val, rel_tol=1e-4, abs_tol=1e-6), key
    for (c0, n0), (c1, n1) in zip(ref_seen, got_seen):
        torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(n1, n0)


def test_row_sums_agree_with_and_without_a_row_selection(monkeypatch):
    from probe.train_step import add_row_sums_

    grads, select = _grads(), torch.tensor([True, False, True, True, False, False])

    def run(sel):
        acc = {n: torch.ones(s) for n, s in SIZES.items()}
        add_row_sums_(acc, grads, sel)
        return acc
    for sel in (None, select):
        ref, got = _both(monkeypatch, lambda: run(sel))
        for n in SIZES:
            torch.testing.assert_close(got[n], ref[n])
        want = grads["a"][sel].sum(0) if sel is not None else grads["a"].sum(0)
        torch.testing.assert_close(got["a"], 1 + want)


def test_adjacent_views_concatenate_for_free_and_others_are_copied():
    x = _grads((2,), zero=None)
    seg = flat.segments(x)
    assert flat.adjacent(list(x.values())) is None
    packed = seg.split(seg.cat(x))
    whole = flat.adjacent([packed[n] for n in seg.names])
    assert whole is not None and whole.shape == (2, seg.total)
    torch.testing.assert_close(whole, torch.cat(list(x.values()), -1))
    assert seg.cat(packed).data_ptr() == whole.data_ptr()  # a view, no copy
    # out of order, or one row of a (2, D) buffer per module: not one (..., D) layout
    names = list(seg.names)
    assert flat.adjacent([packed[n] for n in reversed(names)]) is None
    assert flat.adjacent([packed[n][0] for n in names]) is not None
    assert flat.adjacent([packed[names[0]][0], packed[names[1]][1]]) is None


def test_the_dict_helpers_agree(monkeypatch):
    a, b = _grads((), seed=1), _grads((), seed=2)
    for fn in (lambda: flat.sub(a, b), lambda: flat.div(a, 3), lambda: flat.copy(a),
               lambda: flat.zeros(SIZES, "cpu"), lambda: flat.pack(a)):
        ref, got = _both(monkeypatch, fn)
        assert list(got) == list(ref)
        for n in ref:
            torch.testing.assert_close(got[n], ref[n])
    monkeypatch.setattr(flat, "FLAT_OPS", True)
    snap = flat.copy(a)
    a["a"].add_(1.0)
    assert not torch.equal(snap["a"], a["a"])  # a snapshot, not a view


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_adapter_grads_and_values_on_the_concatenated_path_are_copies(monkeypatch, kind):
    monkeypatch.setattr(flat, "FLAT_OPS", True)
    adapter = build_adapter(make_tiny_qwen3(seed=0), AdapterSpec(kind=kind, rank=3))
    g = {n: torch.randn(s) for n, s in adapter.sizes.items()}
    adapter.set_grads(g)
    got = adapter.grads()
    for n in g:
        torch.testing.assert_close(got[n], g[n])
    keep = {n: t.clone() for n, t in g.items()}
    torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1e-3)  # rescales .grad in place
    assert all(torch.equal(g[n], keep[n]) for n in g)
    values = adapter.flat_values()
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(1.0)
    assert all(not torch.equal(values[n], v) for n, v in adapter.flat_values().items())
    with pytest.raises(Exception, match="size|module"):
        adapter.set_grads({n: torch.randn(s + 1) for n, s in adapter.sizes.items()})


def test_a_pickled_packed_dict_is_a_plain_one(monkeypatch):
    import pickle

    monkeypatch.setattr(flat, "FLAT_OPS", True)
    x = flat.zeros({"a": 3, "b": 2}, "cpu")
    y = pickle.loads(pickle.dumps(x))
    assert type(y) is dict
    y["a"].add_(1)
    assert flat.segments(y).cat(y).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_grads_after_a_lora_adapter_is_removed_are_not_a_stale_buffer(monkeypatch):
    monkeypatch.setattr(flat, "FLAT_OPS", True)
    adapter = build_adapter(make_tiny_qwen3(seed=0), AdapterSpec(kind="lora", rank=3))
    adapter.set_grads({n: torch.randn(s) for n, s in adapter.sizes.items()})
    adapter.remove()
    monkeypatch.setattr(flat, "FLAT_OPS", False)
    ref = adapter.grads()
    monkeypatch.setattr(flat, "FLAT_OPS", True)
    assert adapter.grads().keys() == ref.keys()
