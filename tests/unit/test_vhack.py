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


def test_load_checks_module_names_and_sizes(tmp_path, tiny_model):
    adapter = AntipastoAdapter(tiny_model)
    V = random_directions(adapter.sizes)
    path = save_vhack(tmp_path / "v.safetensors", V, {"kind": "random", "k": 1})
    loaded, meta = load_vhack(path, adapter.sizes)
    assert meta["kind"] == "random" and loaded.keys() == V.keys()
    renamed = {n.replace("model.layers", "layers"): v for n, v in V.items()}
    bad = save_vhack(tmp_path / "bad.safetensors", renamed, {})
    with pytest.raises(VHackMismatchError, match=r"model\.layers\.0\.self_attn\.q_proj.*e\.g\. 'layers"):
        load_vhack(bad, adapter.sizes)
    wrong_rank = dict(V)
    wrong_rank["model.layers.0.mlp.up_proj"] = torch.ones(1, 3)
    with pytest.raises(VHackMismatchError, match="up_proj.*size 3"):
        load_vhack(save_vhack(tmp_path / "r.safetensors", wrong_rank, {}), adapter.sizes)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(VHackMismatchError, match="not a readable"):
        load_vhack(tmp_path / "junk.safetensors")


def test_load_rejects_directions_that_are_not_orthonormal(tmp_path):
    """Projection assumes orthonormal rows: a file that breaks it (unnormalised, or two rows
    that overlap) is refused on load, not projected with wrongly."""
    V = random_directions({"a": 8, "b": 8}, k=2, seed=3)
    assert load_vhack(save_vhack(tmp_path / "ok.safetensors", V, {}))[0].keys() == V.keys()
    for bad in ({**V, "b": 2.0 * V["b"]}, {**V, "a": torch.stack([V["a"][0], V["a"][0]])}):
        with pytest.raises(VHackMismatchError, match="module [ab]: rows are not orthonormal"):
            load_vhack(save_vhack(tmp_path / "bad.safetensors", bad, {}))


def test_balanced_signs_and_random_unit_directions():
    from probe.vhack import balanced_signs, random_unit_directions

    for n in (1, 7, 40):
        s = balanced_signs(n, seed=3)
        assert s.abs().eq(1).all() and s.sum().item() in (0, 1)
    d = random_unit_directions({"m": 5}, n=50, seed=0)["m"]
    assert d.shape == (50, 5)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(50))


def shared_noise_diffs(p: int, r: int = 64, modules: int = 6, seed: int = 0
                       ) -> dict[str, torch.Tensor]:
    """Pair differences = a hack direction + a large component every pair shares with a random
    weight (a length direction, say) + small noise: the case where balanced flips alone fail."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in range(modules):
        mu, w = torch.randn(r, generator=g), torch.randn(r, generator=g)
        mu, w = mu / mu.norm(), w / w.norm()
        a = 3.0 * torch.randn(p, 1, generator=g)
        out[f"m{m}"] = mu + a * w + 0.05 * torch.randn(p, r, generator=g)
    return out


@pytest.mark.parametrize("p", [4, 5, 8, 16])
def test_shuffled_control_is_orthogonal_to_v_hack_on_few_pairs(p: int) -> None:
    from probe.vhack import VHackConfig, control_alignment, shuffled_directions

    diffs = shared_noise_diffs(p)
    V = directions_from_diffs(diffs)
    C, fallback = shuffled_directions(diffs, V, VHackConfig(seed=1))
    assert not fallback
    al = control_alignment(C, V)
    assert al["max_abs_cos"] < 1e-5 and al["valid"]
    for n, c in C.items():
        assert c.norm().item() == pytest.approx(1.0, abs=1e-5)
        # still built from the pairs' gradients: inside the span of the differences
        q, _ = torch.linalg.qr(diffs[n].double().T)
        resid = c[0].double() - q @ (q.T @ c[0].double())
        assert resid.norm().item() < 1e-5


def test_balanced_flips_alone_can_align_with_v_hack_and_are_flagged() -> None:
    """What the orthogonalisation fixes (16 pairs gave cos −0.79 on a real model)."""
    from probe.vhack import VHackConfig, control_alignment, shuffled_directions

    flagged = 0
    for seed in range(6):
        diffs = shared_noise_diffs(16, seed=seed)
        V = directions_from_diffs(diffs)
        C, _ = shuffled_directions(diffs, V, VHackConfig(seed=seed, shuffled="balanced"))
        al = control_alignment(C, V)
        assert al["rms_overlap"] > 0.2  # far above the random level √(1/64) = 0.125
        flagged += not al["valid"]
    assert flagged >= 5


def test_one_pair_falls_back_to_a_random_orthogonal_direction() -> None:
    """With one pair the flipped mean *is* v_hack: nothing is left after orthogonalising."""
    from probe.vhack import VHackConfig, control_alignment, shuffled_directions

    diffs = shared_noise_diffs(1, modules=2)
    V = directions_from_diffs(diffs)
    C, fallback = shuffled_directions(diffs, V, VHackConfig())
    assert sorted(fallback) == ["m0", "m1"]
    assert control_alignment(C, V)["max_abs_cos"] < 1e-5


def test_control_alignment_calls_random_valid_and_aligned_invalid() -> None:
    from probe.vhack import control_alignment

    ranks = {f"m{i}": 64 for i in range(20)}
    V = random_directions(ranks, seed=0)
    valid = [control_alignment(random_directions(ranks, seed=s), V)["valid"] for s in range(1, 41)]
    assert all(valid)  # a Haar-random V is a valid control (P(invalid) ~ 1e-4 per draw)
    al = control_alignment(random_directions(ranks, seed=1), V)
    assert al["random_null_rms"] == pytest.approx(0.125)
    assert 0.5 * 0.125 < al["rms_overlap"] < 2 * 0.125
    # −0.79 in every module (the measured case), and ±0.6 alternating (mean ≈ 0, still invalid)
    for target in (lambda i: -0.79, lambda i: 0.6 * (-1) ** i):
        C = {}
        for i, (n, v) in enumerate(V.items()):
            o = random_directions({n: 64}, seed=100 + i)[n]
            o = o - (o @ v.T) @ v
            o = o / o.norm()
            c = target(i)
            C[n] = c * v + (1 - c * c) ** 0.5 * o
        al = control_alignment(C, V)
        assert not al["valid"]
        assert al["per_module_cos"]["m0"] == pytest.approx(target(0), abs=1e-5)
