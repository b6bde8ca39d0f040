"""R7 wiring on a tiny world: the GRPO v_hack is extracted beside the NLL one, the vanilla rows
carry its cosines, an older run is upgraded without touching what it had, and the checks read it."""
from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch

from probe.artifacts import read_manifest, read_rows, step_path, write_manifest, write_rows
from probe.checks import r4_stats, r7_stats
from probe.stages.phase1 import ensure_vhack, run_phase1
from probe.vhack import load_vhack
from probe.vhack_backfill import ensure_method_columns
from probe.vhack_compare import well_formed
from tests.unit.test_stages import CFG
from tests.unit.tiny_world import make_tiny_world

pytestmark = pytest.mark.unit

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
        assert not well_formed(V, adapter.ranks)
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
