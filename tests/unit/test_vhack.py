"""v_hack directions, controls, and the file checks that guard them."""
from __future__ import annotations

import pytest
import torch

from probe.adapters.antipasto import AntipastoAdapter
from probe.vhack import (VHackMismatchError, balanced_signs, directions_from_diffs, load_vhack,
                         random_directions, save_vhack)

pytestmark = pytest.mark.unit


def synthetic_diffs(p: int = 40, r: int = 12, seed: int = 0) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(r, generator=g)
    true /= true.norm()
    d = 2.0 * true + 0.5 * torch.randn(p, r, generator=g)
    return {"m": d}, true


def test_k1_is_normalised_mean_difference():
    diffs, true = synthetic_diffs()
    v = directions_from_diffs(diffs)["m"]
    assert v.shape == (1, 12) and v.norm().item() == pytest.approx(1.0, abs=1e-6)
    expected = diffs["m"].mean(0) / diffs["m"].mean(0).norm()
    torch.testing.assert_close(v[0], expected)
    assert (v[0] @ true).item() > 0.9


def test_topk_rows_orthonormal_and_oriented_hackward():
    diffs, true = synthetic_diffs()
    V = directions_from_diffs(diffs, k=3)["m"]
    torch.testing.assert_close(V @ V.T, torch.eye(3), atol=1e-5, rtol=0)
    assert (V[0] @ true).item() > 0.9  # principal axis points hack-ward, not away
    flipped = directions_from_diffs({"m": -diffs["m"]}, k=3)["m"]
    assert (flipped[0] @ true).item() < -0.9


def test_shuffled_control_loses_the_signal():
    diffs, true = synthetic_diffs(p=400)
    signs = balanced_signs(400, seed=1)  # what extract_all uses (coin flips leave a random share)
    shuffled = directions_from_diffs(diffs, signs=signs)["m"][0]
    assert abs((shuffled @ true).item()) < 0.5


def test_random_directions_orthonormal_and_seeded():
    a = random_directions({"x": 8, "y": 5}, k=2, seed=3)
    b = random_directions({"x": 8, "y": 5}, k=2, seed=3)
    for n in a:
        torch.testing.assert_close(a[n] @ a[n].T, torch.eye(2), atol=1e-5, rtol=0)
        assert torch.equal(a[n], b[n])


def test_load_checks_module_names_and_ranks(tmp_path, tiny_model):
    adapter = AntipastoAdapter(tiny_model)
    V = random_directions(adapter.ranks)
    path = save_vhack(tmp_path / "v.safetensors", V, {"kind": "random", "k": 1})
    loaded, meta = load_vhack(path, adapter.ranks)
    assert meta["kind"] == "random" and loaded.keys() == V.keys()
    renamed = {n.replace("model.layers", "layers"): v for n, v in V.items()}
    bad = save_vhack(tmp_path / "bad.safetensors", renamed, {})
    with pytest.raises(VHackMismatchError, match=r"model\.layers\.0\.self_attn\.q_proj.*e\.g\. 'layers"):
        load_vhack(bad, adapter.ranks)
    wrong_rank = dict(V)
    wrong_rank["model.layers.0.mlp.up_proj"] = torch.ones(1, 3)
    with pytest.raises(VHackMismatchError, match="up_proj.*rank 3"):
        load_vhack(save_vhack(tmp_path / "r.safetensors", wrong_rank, {}), adapter.ranks)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(VHackMismatchError, match="not a readable"):
        load_vhack(tmp_path / "junk.safetensors")


def test_balanced_signs_and_random_unit_directions():
    from probe.vhack import balanced_signs, random_unit_directions

    for n in (1, 7, 40):
        s = balanced_signs(n, seed=3)
        assert s.abs().eq(1).all() and s.sum().item() in (0, 1)
    d = random_unit_directions({"m": 5}, n=50, seed=0)["m"]
    assert d.shape == (50, 5)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(50))
