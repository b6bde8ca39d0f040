"""`--jobs N`: N worker processes split a run's (arm, seed) jobs through the per-job locks and
write the artifacts one process writes; each worker is pinned to one GPU, else a CPU share."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import probe.rl.rollout as rollout
import probe.stages.grpo as grpo
from probe.artifacts import read_manifest, read_rows, step_path
from probe.env.grader import GraderConfig
from probe.layout import grpo_paths
from probe.orchestrate import job_slots, run_jobs
from probe.rl.config import GRPOConfig
from probe.stages.grpo import ensure_grpo
from probe.world.real import RealWorld
from tests.unit.test_grpo_distributed import _same
from tests.unit.test_grpo_stage import _directions
from tests.unit.tiny_world import make_tiny_world, stand_in_labels

pytestmark = pytest.mark.unit

ARMS = ("vanilla", "projected")
CFG = GRPOConfig(steps=2, problems_per_step=2, group_size=4, micro_batch=4, seeds=(5,), arms=ARMS,
                 split="train", lr=1e-2, tensorboard=False)
GRADER = GraderConfig(workers=1)


def _paths(out: Path):
    return grpo_paths({"name": "tiny"}, "k", CFG, out)


def _logged(real: Any, log: Path) -> Any:
    """grpo_update_step, leaving one line per (arm, step) trained and the process that did it."""
    def step(*a: Any, **kw: Any) -> Any:
        with open(log, "a") as f:
            f.write(f"{a[4].name} {a[2][0]['step']} {os.getpid()}\n")
        return real(*a, **kw)
    return step


def _job(world_cfg: Any, out: str, log: str) -> None:
    """One worker: the tiny world's GRPO run, its trained steps logged."""
    rollout.sample_and_grade = stand_in_labels(rollout.sample_and_grade)
    grpo.grpo_update_step = _logged(grpo.grpo_update_step, Path(log))
    world = RealWorld(world_cfg, name="tiny")
    ensure_grpo(world, CFG, _paths(Path(out)), _directions(world), grader_config=GRADER)


def _artifacts(out: Path) -> dict[str, Any]:
    p = _paths(out)
    res: dict[str, Any] = {"teacher": [read_rows(step_path(p.teacher(5), s))
                                       for s in range(CFG.steps)]}
    for arm in ARMS:
        res[arm] = [read_rows(step_path(p.arm(arm, 5), s)) for s in range(CFG.steps)]
        res[f"{arm}.steps"] = read_manifest(p.arm(arm, 5))["steps"]
        res[f"{arm}.adapter"] = {n: t.tolist() for n, t in torch.load(
            p.arm(arm, 5) / "state.pt", weights_only=False)["adapter"].items()}
    return res


def test_two_jobs_split_the_arms_and_write_what_one_process_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(rollout, "sample_and_grade", stand_in_labels(rollout.sample_and_grade))
    world = make_tiny_world(tmp_path / "world", max_new_tokens=6)
    ensure_grpo(world, CFG, _paths(tmp_path / "one"), _directions(world), grader_config=GRADER)
    log = tmp_path / "trained.log"
    run_jobs(2, _job, (world.config, str(tmp_path / "two"), str(log)))
    lines = [ln.split() for ln in log.read_text().splitlines()]
    trained = sorted((arm, int(step)) for arm, step, _ in lines)
    # every (arm, step) trained exactly once across the workers: no job was taken twice
    assert trained == sorted((a, s) for a in ARMS for s in range(CFG.steps)), trained
    loose: list[str] = []  # floats equal to 1e-4 but not bit-equal (another thread count)
    one, two = _artifacts(tmp_path / "one"), _artifacts(tmp_path / "two")
    _same(one, two, "run", loose)
    for arm in ARMS:  # rows, rewards and advantages are the same rows, not just close ones
        for ra, rb in zip(one[arm], two[arm]):
            assert [(r["completion"], r["reward"], r["advantage"]) for r in ra] == \
                [(r["completion"], r["reward"], r["advantage"]) for r in rb]
    print(f"\nworkers: {len({pid for *_, pid in lines})}; not bit-identical: {len(loose)} values")


def test_job_slots_pin_one_gpu_each_else_share_the_cpus():
    assert job_slots(2, ["0", "1"], 16) == [{"CUDA_VISIBLE_DEVICES": "0"},
                                            {"CUDA_VISIBLE_DEVICES": "1"}]
    # CUDA_VISIBLE_DEVICES=4,5 upstream: workers get those ids, round robin past the count
    assert [e["CUDA_VISIBLE_DEVICES"] for e in job_slots(3, ["4", "5"], 16)] == ["4", "5", "4"]
    assert job_slots(2, [], 8) == [{"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2
    assert job_slots(4, [], 2)[0]["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError):
        run_jobs(0, print)
