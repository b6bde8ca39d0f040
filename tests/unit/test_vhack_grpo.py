"""The GRPO-loss v_hack method (R7): it is R5's surrogate (token sums ÷ a constant), not the
mean-NLL in disguise; its orientation matches the NLL v_hack's; the method registry."""
from __future__ import annotations

import pytest
import torch

from probe.adapters.antipasto import AntipastoAdapter
from probe.batch import collate
from probe.grads import per_sample_grads, per_sample_loss
from probe.vhack import directions_from_diffs, nll_pair_grads
from probe.vhack_grpo import grpo_pair_grads
from probe.vhack_methods import KINDS, METHODS, column, kind, method_kinds
from tests.unit.conftest import VOCAB

pytestmark = pytest.mark.unit

N = 64.0  # the constant normaliser (max_new_tokens)


def pair_batch(hack_lens: list[int], clean_lens: list[int], seed: int = 0):
    """n pairs (same prompt per pair): rows [0, n) hacks, [n, 2n) cleans, lengths as given."""
    g = torch.Generator().manual_seed(seed)

    def seq(n: int) -> list[int]:
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    prompts = [seq(4) for _ in hack_lens]
    comps = [seq(n) for n in hack_lens] + [seq(n) for n in clean_lens]
    return collate(prompts + prompts, comps, pad_id=0), len(hack_lens)


def flat(d: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    return torch.cat([g[i].flatten() for g in d.values()]).double()


def test_grpo_diff_is_the_token_sum_nll_diff_over_the_constant_not_the_mean(tiny_model):
    """Would fail if the GRPO method used the mean-NLL loss inside (the spec's sneaky fail): with
    completions of very different lengths the two differences are not even parallel."""
    adapter = AntipastoAdapter(tiny_model)
    batch, n = pair_batch([2, 14], [14, 2])
    grpo = grpo_pair_grads(N)(adapter, batch, n)
    sums = per_sample_grads(adapter, batch, token_weights=batch.loss_mask).grads  # Σ_t NLL
    mean = nll_pair_grads(adapter, batch, n)
    for name, d in grpo.items():
        torch.testing.assert_close(d, (sums[name][:n] - sums[name][n:]) / N, rtol=1e-4, atol=1e-7)
    for i in range(n):
        a, b = flat(grpo, i), flat(mean, i)
        resid = a - (a @ b) / (b @ b) * b  # what no rescaling of the mean-NLL diff explains
        assert resid.norm() > 0.05 * a.norm(), f"pair {i}: GRPO diff ∥ mean-NLL diff"


def test_grpo_diff_scales_with_one_over_the_normaliser_only(tiny_model):
    adapter = AntipastoAdapter(tiny_model)
    batch, n = pair_batch([3, 9], [6, 5], seed=1)
    a = grpo_pair_grads(N)(adapter, batch, n)
    b = grpo_pair_grads(2 * N)(adapter, batch, n)
    for name in a:
        torch.testing.assert_close(a[name], 2 * b[name], rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="positive"):
        grpo_pair_grads(0.0)


@pytest.mark.parametrize("method", ["nll", "grpo"])
def test_descent_along_a_positive_component_makes_hacks_likelier(tiny_model, method):
    """Orientation (both methods alike): a training gradient g = +v_hack, applied by descent
    (δS −= η g), lowers Σ NLL(hack) − Σ NLL(clean): it pushes toward the hacking completions."""
    adapter = AntipastoAdapter(tiny_model)
    batch, n = pair_batch([3, 8, 5, 2], [6, 4, 9, 7], seed=2)
    pair_grads = nll_pair_grads if method == "nll" else grpo_pair_grads(N)
    V = directions_from_diffs(pair_grads(adapter, batch, n))

    def margin() -> float:
        with torch.no_grad():
            loss = per_sample_loss(adapter.model, batch, token_weights=batch.loss_mask)
        return float((loss[:n] - loss[n:]).sum())

    before = margin()
    with torch.no_grad():
        for name, p in adapter.named_params().items():
            p -= 1e-2 * V[name][0].to(p.dtype)
    assert margin() < before


def test_registry_kinds_and_columns():
    assert set(METHODS) >= {"nll", "grpo"}
    assert method_kinds("nll") == ("nll", "random", "shuffled")  # the historical file names
    assert method_kinds("grpo") == ("grpo", "grpo_random", "grpo_shuffled")
    assert KINDS[("grpo", "shuffled")] == "grpo_shuffled"
    assert column("nll") == "cos_S_contrib" and column("grpo") == "cos_grpo"
    assert len(set(KINDS.values())) == len(KINDS)
    with pytest.raises(ValueError, match="unknown v_hack method"):
        kind("sft")
    with pytest.raises(ValueError, match="unknown control"):
        kind("grpo", "flipped")


def test_compare_directions_cosines_and_principal_angles():
    from probe.vhack import random_directions
    from probe.vhack_compare import compare_directions

    ranks = {"a": 16, "b": 9}
    V = random_directions(ranks, k=1, seed=0)
    same = compare_directions(V, {n: v.clone() for n, v in V.items()})
    assert same["identical"] and same["mean_cos"] == pytest.approx(1.0)
    flipped = compare_directions(V, {n: -v for n, v in V.items()})
    assert flipped["mean_cos"] == pytest.approx(-1.0) and flipped["max_abs_diff"] > 0
    assert flipped["principal_cos"] is None  # k = 1: the signed cosine says it all
    W = random_directions(ranks, k=3, seed=1)
    rot = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2),
                                      dtype=torch.float64))[0]
    turned = {n: (rot @ w.double()).float() for n, w in W.items()}  # same subspace, other rows
    c = compare_directions(W, turned)
    assert not c["identical"] and c["max_abs_diff"] > 1e-3
    assert c["mean_cos"] == pytest.approx(1.0, abs=1e-5)  # principal angles all zero
    assert all(len(v) == 3 for v in c["principal_cos"].values())


def test_well_formed_names_every_defect():
    from probe.vhack import random_directions
    from probe.vhack_compare import well_formed

    ranks = {"a": 8, "b": 5}
    V = random_directions(ranks, k=2, seed=0)
    assert well_formed(V, ranks) == []
    assert "shape" in well_formed({**V, "b": torch.ones(1, 4)}, ranks)[0]
    nan = V["a"].clone()
    nan[0, 0] = float("nan")
    assert "non-finite" in well_formed({**V, "a": nan}, ranks)[0]
    assert "orthonormal" in well_formed({**V, "a": 2 * V["a"]}, ranks)[0]
    assert "modules differ" in well_formed({"a": V["a"]}, ranks)[0]
