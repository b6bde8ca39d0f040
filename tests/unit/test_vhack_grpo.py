"""The GRPO-loss v_hack method (R7): it is R5's surrogate (token sums ÷ a constant), not the
mean-NLL in disguise; its orientation matches the NLL v_hack's; the method registry; comparing two
directions. Then the wiring on a tiny world: the GRPO v_hack is extracted beside the NLL one, the
vanilla rows carry its cosines, an older run is upgraded without touching what it had, and the
checks and the report read it."""
from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch

from probe.adapters.antipasto import AntipastoAdapter
from probe.artifacts import read_manifest, read_rows, step_path, write_manifest, write_rows
from probe.batch import collate
from probe.checks import r4_stats, r7_stats
from probe.grads import per_sample_grads, per_sample_loss
from probe.stages.phase1 import ensure_vhack, run_phase1
from probe.vhack import directions_from_diffs, load_vhack, nll_pair_grads
from probe.vhack_backfill import ensure_method_columns
from probe.vhack_compare import well_formed
from probe.vhack_grpo import grpo_pair_grads
from probe.vhack_methods import KINDS, METHODS, column, kind, method_kinds
from tests.unit.conftest import VOCAB
from tests.unit.test_stages import CFG
from tests.unit.tiny_world import make_tiny_world

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
        for name, (p,) in adapter.module_params().items():
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


# -- wiring on a tiny world ------------------------------------------------------------------

NEW_COLS = ("cos_grpo", "cos_grpo_random", "cos_grpo_shuffled")


@pytest.fixture(scope="module")
def tiny_r7(tmp_path_factory):
    root = tmp_path_factory.mktemp("r7")
    world = make_tiny_world(root / "world")
    paths = run_phase1(world, CFG, root / "out", arms=("vanilla",))
    return world, paths


def rows(paths, s):
    return read_rows(step_path(paths.arm("vanilla"), s))


def test_grpo_files_metadata_and_manifest(tiny_r7):
    _, paths = tiny_r7
    man = read_manifest(paths.vhack)
    for k in ("grpo", "grpo_random", "grpo_shuffled"):
        V, meta = load_vhack(paths.vhack_file(k), man["ranks"])
        assert meta["method"] == "grpo" and meta["loss"] == "dr_grpo_surrogate"
        assert meta["kind"] == k and json.loads(meta["max_new_tokens"]) == 12
        assert not well_formed(V, man["ranks"])
    nll_meta = load_vhack(paths.vhack_file("nll"))[1]
    assert "method" not in nll_meta and nll_meta["loss"] == "mean_nll_completion"  # as before R7
    g = man["methods"]["grpo"]
    assert g["stats"]["controls"]["shuffled"]["valid"]
    cmp = g["vs_nll"]
    assert not cmp["identical"] and cmp["max_abs_diff"] > 1e-4  # the spec's sneaky fail
    assert -1.0 <= cmp["min_cos"] <= cmp["max_cos"] <= 1.0
    assert set(cmp["per_module_cos"]) == set(man["ranks"])


def test_vanilla_rows_carry_the_grpo_cosines_and_checks_read_them(tiny_r7):
    _, paths = tiny_r7
    for s in range(3):
        for r in rows(paths, s):
            assert all(isinstance(r[c], float) for c in NEW_COLS)
            assert r["cos_grpo"] != r["cos_S_contrib"]
    st = r4_stats(paths, min_bucket=1, method="grpo")
    assert st["column"] == "cos_grpo" and st["n_hack_attempts"] == r4_stats(paths, 1)["n_hack_attempts"]
    r7 = r7_stats(paths, min_bucket=1)
    assert r7["well_formed"] == {"nll": [], "grpo": []}
    assert set(r7["controls"]) == {"random", "shuffled"}


def test_an_older_run_is_upgraded_without_changing_what_it_had(tiny_r7, tmp_path):
    """A run made before R7: no GRPO files, no methods in the manifest, no cos_grpo columns."""
    world, paths = tiny_r7
    root = tmp_path / "old"
    shutil.copytree(paths.root, root)
    old = type(paths)(root, paths.seed)
    for k in ("grpo", "grpo_random", "grpo_shuffled"):
        old.vhack_file(k).unlink()
    man = read_manifest(old.vhack)
    del man["methods"]
    write_manifest(old.vhack, man)
    for s in range(3):
        write_rows(step_path(old.arm("vanilla"), s),
                   [{k: v for k, v in r.items() if k not in NEW_COLS} for r in rows(paths, s)])
    nll_bytes = old.vhack_file("nll").read_bytes()
    stripped = [rows(old, s) for s in range(3)]
    added = ensure_method_columns(world, CFG, old, "vanilla")
    assert sorted(added) == sorted(NEW_COLS)
    assert old.vhack_file("nll").read_bytes() == nll_bytes
    a, b = load_vhack(old.vhack_file("grpo"))[0], load_vhack(paths.vhack_file("grpo"))[0]
    assert all(torch.equal(a[n], b[n]) for n in a)  # the same extraction, upgraded or fresh
    for s in range(3):
        new = rows(old, s)
        assert [{k: v for k, v in r.items() if k not in NEW_COLS} for r in new] == stripped[s]
        assert [r["cos_grpo"] for r in new] == pytest.approx([r["cos_grpo"] for r in rows(paths, s)],
                                                             rel=1e-4, abs=1e-7)
    assert ensure_method_columns(world, CFG, old, "vanilla") == []  # nothing left to add
    assert set(ensure_vhack(world, CFG, old)) >= {"nll", "grpo", "grpo_shuffled"}


def test_a_replay_that_does_not_reproduce_is_not_merged(tiny_r7, tmp_path):
    from probe.artifacts import ArtifactError

    world, paths = tiny_r7
    root = tmp_path / "tampered"
    shutil.copytree(paths.root, root)
    old = type(paths)(root, paths.seed)
    tampered = [{**{k: v for k, v in r.items() if k not in NEW_COLS},
                 "cos_S_contrib": r["cos_S_contrib"] + 1.0} for r in rows(paths, 0)]
    write_rows(step_path(old.arm("vanilla"), 0), tampered)
    before = gzip.decompress(step_path(old.arm("vanilla"), 0).read_bytes())
    with pytest.raises(ArtifactError, match="does not reproduce"):
        ensure_method_columns(world, CFG, old, "vanilla")
    assert gzip.decompress(step_path(old.arm("vanilla"), 0).read_bytes()) == before
    assert not old.arm("vanilla").with_name(old.arm("vanilla").name + ".columns").exists()


def test_report_shows_both_directions_side_by_side(tiny_r7, tmp_path):
    from probe.report import write_report

    _, paths = tiny_r7
    text = write_report(paths, tmp_path / "report").read_text()
    section = text[text.index("## R7"):]
    assert "| nll | " in section and "| grpo | " in section
    assert "Cosine between the two directions per module" in section


def test_topk_grpo_extraction_is_well_formed_with_principal_angles(tiny_r7):
    from probe.adapters.antipasto import AntipastoAdapter
    from probe.vhack import VHackConfig
    from probe.vhack_compare import compare_directions
    from probe.vhack_methods import extract_method

    world, _ = tiny_r7
    adapter = AntipastoAdapter(world.load_base("cpu"))
    pairs = world.contrastive_pairs("train", CFG.pool.hint, seed=0)
    cfg = VHackConfig(k=2)
    out = {m: extract_method(adapter, world.tokenizer, pairs, cfg, m, 12)[0] for m in ("nll", "grpo")}
    assert set(out["grpo"]) == {"grpo", "grpo_random", "grpo_shuffled"}
    for V in (out["nll"]["nll"], out["grpo"]["grpo"], out["grpo"]["grpo_shuffled"]):
        assert not well_formed(V, adapter.sizes)
    c = compare_directions(out["nll"]["nll"], out["grpo"]["grpo"])
    assert c["k"] == 2 and c["principal_cos"] is not None and not c["identical"]
    assert all(0.0 <= x <= 1.0 + 1e-9 for v in c["principal_cos"].values() for x in v)
    adapter.remove()


def test_report_of_a_run_without_the_grpo_direction_says_how_to_get_it(tmp_path):
    from probe.report import write_report
    from tests.unit.synthetic_run import make_run

    text = write_report(make_run(tmp_path / "run", 6, 6), tmp_path / "report").read_text()
    section = text[text.index("## R7"):]
    assert "not available" in section and "pytest -m uat -k R7" in section
