"""R5 (GRPO) wall time on a world, side by side in one run:

- one arm × seed for `--steps` steps with the per-process grade cache vs without it (each from an
  empty run directory; the teacher rows of the seed are made once first and timed on their own);
- per-step phase seconds (student rows = sample + grade, π_old forward, the updates);
- an estimate of `pytest -m uat -k R5` at the default config (arms × seeds × 20 steps) on
  `--workers` xdist workers, from the measured rates.

    python benchmarks/bench_r5.py [--world embedded] [--device cpu|cuda] [--steps 5] [--workers 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import probe.rl.rollout as rollout
from probe.artifacts import read_manifest
from probe.layout import grpo_paths, run_paths, world_identity
from probe.rl.config import GRPOConfig
from probe.stages.grpo import ensure_grpo, ensure_teacher_rows
from probe.stages.phase1 import Phase1Config, ensure_vhack
from probe.world.select import get_world


class _NoCache(rollout.CachedGrader):
    def grade_many(self, items):  # type: ignore[override]
        self.misses += len(items)
        return self.grader.grade_many(items)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="embedded")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    world = get_world(a.world, out_dir="out")
    p1 = Phase1Config()
    V = ensure_vhack(world, p1, run_paths(world, p1, "out"), a.device)
    default = GRPOConfig()
    cfg = replace(default, steps=a.steps, arms=("vanilla",), seeds=(41,))
    tmp = Path(tempfile.mkdtemp(prefix="bench_r5_"))
    t0 = time.perf_counter()
    shared = grpo_paths(world_identity(world), "bench", cfg, tmp / "teacher")
    ensure_teacher_rows(world, cfg, shared, 41, a.device)
    t_teacher = (time.perf_counter() - t0) / a.steps
    per_step = {}
    for name, grader_cls in (("cached", rollout.CachedGrader), ("uncached", _NoCache)):
        rollout.CachedGrader._memo.clear()
        paths = grpo_paths(world_identity(world), name, cfg, tmp / name)
        paths = replace(paths, teacher_root=shared.teacher_root)  # same teacher rows
        import probe.stages.grpo as stage

        orig = stage.CachedGrader
        stage.CachedGrader = grader_cls
        try:
            t = time.perf_counter()
            ensure_grpo(world, cfg, paths, V, device=a.device)
            per_step[name] = (time.perf_counter() - t) / a.steps
        finally:
            stage.CachedGrader = orig
        steps = read_manifest(paths.arm("vanilla", 41))["steps"]
        phases = {k: sum(s["seconds"][k] for s in steps) / len(steps) for k in steps[0]["seconds"]}
        cache = steps[-1]["grade_cache"]
        print(f"{name:>9}: {per_step[name]:.2f} s/step  phases " +
              " ".join(f"{k} {v:.2f}" for k, v in phases.items()) +
              f"  grades computed {cache['misses']}, reused {cache['hits']}")
    print(f"teacher rows: {t_teacher:.2f} s/step (once per seed, shared by every arm)")
    print(f"grade cache speedup: {per_step['uncached'] / per_step['cached']:.2f}x per arm step")
    n_arm = len(default.arms) * len(default.seeds) * default.steps
    est = (n_arm * per_step["cached"] + len(default.seeds) * default.steps * t_teacher) / a.workers
    print(f"estimate, default R5 ({len(default.arms)} arms x {len(default.seeds)} seeds x "
          f"{default.steps} steps) on {a.workers} workers: {est / 60:.1f} min "
          f"(early steps; later steps repeat more completions and grade faster)")


if __name__ == "__main__":
    main()
