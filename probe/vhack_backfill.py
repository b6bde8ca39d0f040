"""Add the cosine columns of a newer v_hack method to a replay arm made before that method existed.

A replay row's cosine needs that step's per-sample gradients, which are not stored; the replay is
deterministic (seeded, resumes to the same result), so the arm is replayed into a scratch directory
with every direction, each row's existing cosine is checked against the replay (a mismatch stops:
the columns would describe another trajectory), and only the missing columns are merged into the
step files. Existing values are never rewritten, the arm's manifest and checkpoint never touched.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from probe.artifacts import ArtifactError, read_manifest, read_rows, step_path, write_rows
from probe.stages.phase1 import Phase1Config, Phase1Paths, ensure_vhack
from probe.stages.replay import run_replay
from probe.vhack_methods import column
from probe.world.base import World

log = logging.getLogger(__name__)

REL_TOL = 1e-3  # replayed vs stored cos_S_contrib (thread counts change float summation order)


def missing_columns(stage: Path, n_steps: int, kinds: list[str]) -> list[str]:
    """The `cos_<kind>` columns some row of the arm's step files lacks."""
    want = [column(k) for k in kinds]
    missing: set[str] = set()
    for s in range(n_steps):
        for r in read_rows(step_path(stage, s)):
            missing.update(c for c in want if c not in r)
    return [c for c in want if c in missing]


def _check_same(old: list[dict[str, Any]], new: list[dict[str, Any]], path: Path) -> None:
    if [(r["step"], r["index"]) for r in old] != [(r["step"], r["index"]) for r in new]:
        raise ArtifactError(f"{path}: the replay gave other rows; cannot add columns")
    for o, n in zip(old, new):
        a, b = o["cos_S_contrib"], n["cos_S_contrib"]
        if not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) > REL_TOL * max(abs(a), 1e-3):
            raise ArtifactError(f"{path}: row {o['index']}: stored cos_S_contrib {a!r}, replayed "
                                f"{b!r}: the replay does not reproduce this arm; not adding columns")


def ensure_method_columns(world: World, cfg: Phase1Config, paths: Phase1Paths,
                          arm: str = "vanilla", device: str = "cpu") -> list[str]:
    """Give `arm`'s rows a column for every v_hack kind of the run; returns the columns added.
    The arm must be complete (its manifest written)."""
    V = ensure_vhack(world, cfg, paths, device)
    stage = paths.arm(arm)
    n_steps = read_manifest(stage)["n_steps"]
    missing = missing_columns(stage, n_steps, list(V))
    if not missing:
        return []
    log.info("%s: replaying to add %s", stage, missing)
    scratch = stage.with_name(stage.name + ".columns")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        run_replay(world, paths.pool, V, n_steps, cfg.replay, scratch, arm, device)
        merged = {}
        for s in range(n_steps):
            old, new = read_rows(step_path(stage, s)), read_rows(step_path(scratch, s))
            _check_same(old, new, step_path(stage, s))
            merged[s] = [{**o, **{c: n[c] for c in missing if c not in o}} for o, n in zip(old, new)]
        for s, rows in merged.items():  # only once every step reproduced
            write_rows(step_path(stage, s), rows)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return missing
