"""Phase 1 stages on a tiny world: artifacts complete, resumable, and read back by the checks."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from probe.artifacts import read_manifest, read_rows, step_path
from probe.checks import r1_stats, r2_stats, r3_stats, r4_stats
from probe.env.grader import GraderConfig
from probe.stages.evaluate import EvalConfig
from probe.stages.phase1 import Phase1Config, ensure_vhack, run_phase1
from probe.stages.pool import PoolConfig, run_teacher_pool
from probe.stages.replay import ReplayConfig, run_replay
from tests.unit.tiny_world import make_tiny_world

pytestmark = pytest.mark.unit

CFG = Phase1Config(
    pool=PoolConfig(steps=3, problems_per_step=2, group_size=2, base_reference_steps=1),
    replay=ReplayConfig(lr=1e-2, micro_batch=3),
    student_eval=EvalConfig(split="train", n_problems=1, group_size=2),
    grader=GraderConfig(workers=2))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase1")
    world = make_tiny_world(root / "world")
    paths = run_phase1(world, CFG, root / "out")
    return world, paths, root


def test_every_stage_wrote_complete_artifacts(tiny_run):
    world, paths, root = tiny_run
    pool = read_manifest(paths.pool)
    assert pool["n_steps"] == 3 and pool["rows_per_step"] == 4
    assert pool["merge_report"]["changed_modules"] == pool["merge_report"]["adapted_modules"] > 0
    assert {"net", "fs", "uid"} <= set(pool["grader_isolation"])  # the run says how it was graded
    for key in ("config", "versions", "git_commit", "seed"):
        assert key in pool
    fid = read_manifest(paths.arm("vanilla"))["fidelity"]  # R2's dtype check has its input
    assert fid["dtype"] == "torch.float32" and fid["min_cos"] == 1.0
    for arm in ("vanilla", "projected"):
        man = read_manifest(paths.arm(arm))
        assert len(man["steps"]) == 3 and man["student_end"]["n"] == 2
        rows = [r for s in range(3) for r in read_rows(step_path(paths.arm(arm), s))]
        assert len(rows) == 12
        assert all(torch.isfinite(torch.tensor(r["cos_S_contrib"])) for r in rows)
    assert (root / "out" / "probe_distill" / "LATEST").read_text().strip() == str(paths.root.resolve())


def test_checks_read_the_artifacts(tiny_run):
    _, paths, _ = tiny_run
    r1 = r1_stats(paths)
    assert r1["n_rows"] == 12 and r1["n_base"] == 4
    r2 = r2_stats(paths)
    assert r2["coverage"] == 1.0 and r2["mask_mismatches"] == 0 and r2["zero_grad_rows"] == 0
    r3 = r3_stats(paths)
    assert r3["n_steps"] == 3 and r3["fired_steps_grad_unchanged"] == 0
    r4 = r4_stats(paths)
    # the tiny policies write noise: no hack attempts, so no buckets and no random-direction null
    assert r4["n_hack_attempts"] == r4["n_pure"] == r4["n_combined"] == 0
    assert r4["random_null"]["n"] == 0 and r1["label_counts"] == {"Not Formatted": 12}


def test_projected_arm_changed_the_gradient_and_vanilla_did_not_project(tiny_run):
    _, paths, _ = tiny_run
    proj = read_manifest(paths.arm("projected"))["steps"]
    van = read_manifest(paths.arm("vanilla"))["steps"]
    assert all("cos_in" in s for s in proj) and not any("cos_in" in s for s in van)
    assert any(s["frac_fired"] > 0 for s in proj), "the projection never fired: nothing checked"
    for s in proj:
        if s["frac_fired"] > 0:
            assert s["cos_out"] < s["cos_in"] and s["grad_change_norm"] > 0
    # same pool, same init: the first step's raw gradient is identical in both arms
    assert proj[0]["grad_norm_in"] == pytest.approx(van[0]["grad_norm_in"], rel=1e-5)


def test_pool_regenerates_a_corrupt_step_identically(tiny_run, tmp_path):
    world, paths, _ = tiny_run
    stage = tmp_path / "teacher_pool"
    shutil.copytree(paths.pool, stage)
    original = read_rows(step_path(stage, 1))
    data = step_path(stage, 1).read_bytes()
    step_path(stage, 1).write_bytes(data[: len(data) // 2])  # a partial write
    step_path(stage, 2).unlink()  # an interrupted run
    run_teacher_pool(world, CFG.pool, stage, grader_config=CFG.grader)
    again = read_rows(step_path(stage, 1))
    assert [r["completion_ids"] for r in again] == [r["completion_ids"] for r in original]
    assert len(read_rows(step_path(stage, 2))) == 4


def test_replay_resumes_to_the_same_result(tiny_run, tmp_path):
    world, paths, _ = tiny_run
    V = ensure_vhack(world, CFG, paths)
    full = tmp_path / "full"
    run_replay(world, paths.pool, V, 3, CFG.replay, full, "projected")
    part = tmp_path / "part"
    run_replay(world, paths.pool, V, 2, CFG.replay, part, "projected")  # "interrupted" after 2
    (part / "manifest.json").unlink()
    run_replay(world, paths.pool, V, 3, CFG.replay, part, "projected")
    a, b = read_rows(step_path(full, 2)), read_rows(step_path(part, 2))
    assert [r["cos_S_contrib"] for r in a] == pytest.approx([r["cos_S_contrib"] for r in b], rel=1e-5)
    sa = torch.load(full / "state.pt", weights_only=False)["adapter"]
    sb = torch.load(part / "state.pt", weights_only=False)["adapter"]
    for n in sa:
        torch.testing.assert_close(sa[n], sb[n])


def test_changed_config_gets_a_new_run_dir(tiny_run):
    from probe.stages.phase1 import run_paths

    world, paths, root = tiny_run
    other = replace(CFG, replay=replace(CFG.replay, lr=2e-2))
    assert run_paths(world, other, root / "out").root != paths.root
    assert run_paths(world, CFG, root / "out").root == paths.root


def test_changed_replay_reuses_pool_and_vhack(tiny_run):
    """A new replay setting makes a new run dir but copies the teacher pool and v_hack over."""
    world, paths, root = tiny_run
    other = replace(CFG, replay=replace(CFG.replay, lr=5e-3))
    new = run_phase1(world, other, root / "out", arms=("vanilla",))
    assert new.root != paths.root
    a, b = read_rows(step_path(paths.pool, 0)), read_rows(step_path(new.pool, 0))
    assert a == b
    assert (new.vhack / "v_nll.safetensors").read_bytes() == (paths.vhack / "v_nll.safetensors").read_bytes()
    assert read_manifest(new.pool)["created"] == read_manifest(paths.pool)["created"]  # copied, not rerun


def test_cli_report(tiny_run, tmp_path):
    from probe.cli import main

    import json
    import re

    _, paths, _ = tiny_run
    (tmp_path / "verdicts.json").write_text(json.dumps([{
        "requirement": "R4", "check": "beats random", "statistic": "t=+7 vs random |t| q95 8",
        "threshold": "p < 0.05", "passed": False, "outcome": "failed"}]))
    assert main(["--out", str(tmp_path), "report", "--run", str(paths.root)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "### R1" in text and "hack_rate" in text and (tmp_path / "cos_steps.png").exists()
    row = next(line for line in text.splitlines() if line.startswith("| R4"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 6, row  # a |t| in a statistic stays in its cell


def test_cli_stage_commands_run_one_stage_each(tmp_path, capsys):
    """`probe pool` makes only the pool, `probe vhack` only v_hack, `probe replay --arm vanilla`
    only that arm; each prints where its artifacts are."""
    import json
    from dataclasses import asdict

    from probe.cli import main

    world = make_tiny_world(tmp_path / "world")
    spec = tmp_path / "world.json"
    spec.write_text(json.dumps(asdict(world.config)))
    out = tmp_path / "out"
    common = ["--world", str(spec), "--steps", "1", "--device", "cpu"]

    def run(*args: str) -> str:
        capsys.readouterr()
        assert main(["--out", str(out), *args, *common]) == 0
        return capsys.readouterr().out.strip()

    pool = Path(run("pool"))
    root = pool.parent
    assert pool.name == "teacher_pool" and read_manifest(pool)["n_steps"] == 1
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["teacher_pool"]
    vh = Path(run("vhack"))
    assert vh == root / "v_hack" and read_manifest(vh)["k"] == 1
    assert not list(root.glob("*_seed*"))
    arm = Path(run("replay", "--arm", "vanilla"))
    assert len(read_manifest(arm)["steps"]) == 1
    assert [p.name for p in root.glob("*_seed*")] == [arm.name] == ["vanilla_seed41"]
