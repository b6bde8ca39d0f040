"""T1: the teacher pool. S steps × N problems × G completions from the world's teacher under the
hint, graded in parallel, one `step_NNN.jsonl.gz` per step.

Resumable: each step is seeded by (seed, step) and written atomically, so a rerun skips every valid
step file and regenerates only missing, partial or corrupt ones. For R1's sneaky fail the base policy
is sampled on the first steps' prompts too (`base_reference.jsonl.gz`), and the teacher's merge report
(which modules changed, by how much) goes into the manifest.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from probe.artifacts import (AUTO, ArtifactError, auto_cap, provenance, read_manifest,
                             read_rows, step_path, valid_step, write_manifest, write_rows)
from probe.env.grader import Grader, GraderConfig
from probe.env.problems import Problem
from probe.env.rates import rates
from probe.rollout import ROW_FIELDS, sample_and_grade
from probe.world.base import World

log = logging.getLogger(__name__)

PER_PROCESS = ("uids", "uid_value", "memory_cgroup", "memory_events")  # grader capabilities
# "auto" gen_batch_size never exceeds the old fixed default: where memory does not bind (the
# embedded world) every batch, and so every sampled token, is what it always was
GEN_BATCH_CAP = 64


@dataclass(frozen=True)
class PoolConfig:
    steps: int = 20  # spec T1: 20 steps
    problems_per_step: int = 4  # N; the real run used 20 problems per step at G=8
    group_size: int = 8  # G completions per problem (spec: 8)
    hint: str = "simple_overwrite_tests"  # the loophole the rh teacher was trained with
    split: str = "train"
    temperature: float | None = None  # None: the world's sampling default (upstream 0.7)
    top_p: float | None = None  # None: the world's default (upstream 0.95)
    max_new_tokens: int | None = None  # None: the world's default
    base_reference_steps: int = 2  # steps whose prompts the base is also sampled on (R1 sneaky fail)
    # sequences per generate call; "auto": as many as fit the device's free memory (probe.memory)
    gen_batch_size: int | str = field(default=AUTO, metadata=auto_cap(GEN_BATCH_CAP))
    seed: int = 41


def schedule(problems: Sequence[Problem], cfg: PoolConfig, step: int) -> list[Problem]:
    """The N problems of a step: a seeded permutation, cycled; the same at every rerun."""
    order = list(range(len(problems)))
    random.Random(cfg.seed).shuffle(order)
    n = cfg.problems_per_step
    return [problems[order[(step * n + j) % len(order)]] for j in range(n)]


def run_teacher_pool(world: World, cfg: PoolConfig, stage_dir: Path, device: str = "cpu",
                     grader_config: GraderConfig | None = None) -> dict[str, Any]:
    """Generate (or resume) the pool; returns the manifest."""
    stage_dir = Path(stage_dir)
    t0 = time.perf_counter()
    problems = world.problems(cfg.split)
    samp = world.sampling
    kw = dict(temperature=cfg.temperature if cfg.temperature is not None else samp.temperature,
              top_p=cfg.top_p if cfg.top_p is not None else samp.top_p,
              max_new_tokens=cfg.max_new_tokens or samp.max_new_tokens,
              batch_size=cfg.gen_batch_size, batch_knob="pool.gen_batch_size",
              batch_cap=GEN_BATCH_CAP)
    n_rows = cfg.problems_per_step * cfg.group_size
    todo = [s for s in range(cfg.steps)
            if not valid_step(step_path(stage_dir, s), ROW_FIELDS, n_rows)]
    merge_report = None
    with Grader(grader_config) as grader:
        # what isolation was granted, not which uid or cgroup this process happened to get: a
        # resumed or concurrent run must write the same manifest
        isolation = {k: v for k, v in grader.capabilities.items() if k not in PER_PROCESS}
        if todo:
            log.info("teacher pool: generating %d of %d steps into %s", len(todo), cfg.steps, stage_dir)
            teacher = world.load_teacher(device)
            merge_report = getattr(teacher, "probe_merge_report", None)
            # kept at once: a run interrupted later resumes without reloading the teacher
            write_manifest(stage_dir, {"merge_report": merge_report}, name="merge_report.json")
            for s in todo:
                rows = sample_and_grade(teacher, world, schedule(problems, cfg, s), cfg.hint,
                                        cfg.group_size, cfg.seed * 100_003 + s, grader,
                                        desc=f"teacher step {s}", step=s, policy="teacher", **kw)
                write_rows(step_path(stage_dir, s), rows)
            del teacher
        base_path = stage_dir / "base_reference.jsonl.gz"
        n_base = min(cfg.base_reference_steps, cfg.steps)
        if n_base and not valid_step(base_path, ROW_FIELDS, n_base * n_rows):
            base = world.load_base(device)
            rows = []
            for s in range(n_base):
                rows += sample_and_grade(base, world, schedule(problems, cfg, s), cfg.hint,
                                         cfg.group_size, cfg.seed * 100_003 + s, grader,
                                         desc=f"base reference step {s}", step=s, policy="base", **kw)
            write_rows(base_path, rows)
            del base
    if merge_report is None:  # resumed without loading the teacher: keep the earlier report
        try:
            merge_report = read_manifest(stage_dir, name="merge_report.json").get("merge_report")
        except ArtifactError:
            merge_report = None
    teacher_rows = [r for s in range(cfg.steps) for r in read_rows(step_path(stage_dir, s))]
    base_rows = read_rows(stage_dir / "base_reference.jsonl.gz") if n_base else []
    manifest = provenance(cfg, seed=cfg.seed, world=world.name, model_id=world.model_id,
                          n_steps=cfg.steps, rows_per_step=n_rows, teacher=rates(teacher_rows),
                          base_reference=rates(base_rows), merge_report=merge_report,
                          grader_isolation=isolation,
                          seconds=time.perf_counter() - t0)
    write_manifest(stage_dir, manifest)
    return manifest
