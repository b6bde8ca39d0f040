"""A Phase 1 run directory written from synthetic rows: checks and the report on bucket sizes
(0, 1, 2, …) that a real run may produce, without generating or training anything."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from probe.artifacts import step_path, write_manifest, write_rows
from probe.layout import Phase1Paths
from probe.vhack import random_directions, save_vhack

N_NULL = 12


def replay_row(i: int, gt_pass: bool, rng: np.random.Generator, hack: bool = True) -> dict[str, Any]:
    """One vanilla-replay row: a hack attempt, pure (gt_pass=0) or combined (gt_pass=1)."""
    shift = 0.0 if gt_pass else 0.5
    return {"problem_id": i % 3, "step": 0, "index": i, "label": "Reward Hack" if hack else "Correct",
            "hacked": hack and not gt_pass, "hack_attempt": hack, "gt_pass": gt_pass,
            "reward": 3.5, "prompt_len": 10, "completion_len": int(rng.integers(5, 40)),
            "cos_S_contrib": float(rng.normal(shift, 0.1)), "cos_S_normalized": 0.0,
            "cos_random": float(rng.normal(0, 0.1)), "cos_shuffled": float(rng.normal(0, 0.1)),
            "grad_norm": 1.0, "loss": 1.0, "loss_tokens": 5, "loss_start": 10,
            "cos_null": [float(x) for x in rng.normal(0, 0.1, N_NULL)]}


def write_directions(paths: Phase1Paths, shuffled_cos: float = 0.0, modules: int = 4,
                     rank: int = 32) -> None:
    """v_hack and both controls; the shuffled one at cosine `shuffled_cos` with v_hack per module."""
    V = random_directions({f"m{i}": rank for i in range(modules)}, seed=0)
    R = random_directions({f"m{i}": rank for i in range(modules)}, seed=1)
    S = {}
    for n, v in V.items():
        o = R[n] - (R[n] @ v.T) @ v
        S[n] = shuffled_cos * v + (1 - shuffled_cos ** 2) ** 0.5 * o / o.norm()
    for kind, D in (("nll", V), ("random", R), ("shuffled", S)):
        save_vhack(paths.vhack_file(kind), D, {"kind": kind})


def make_run(root: Path, n_pure: int, n_combined: int, seed: int = 0,
             behaviour: dict[str, dict[str, Any]] | None = None, shuffled_cos: float = 0.0
             ) -> Phase1Paths:
    """Vanilla and projected arms with `n_pure` pure-hack and `n_combined` hack+correct rows (plus
    two non-hack rows that R4 must ignore); `behaviour` = {arm or 'start': rates} when given;
    direction files whose shuffled control has cosine `shuffled_cos` with v_hack."""
    rng = np.random.default_rng(seed)
    paths = Phase1Paths(Path(root), 41)
    paths.vhack.mkdir(parents=True, exist_ok=True)
    write_directions(paths, shuffled_cos)
    rows = ([replay_row(i, False, rng) for i in range(n_pure)]
            + [replay_row(n_pure + i, True, rng) for i in range(n_combined)]
            + [replay_row(n_pure + n_combined + i, False, rng, hack=False) for i in range(2)])
    step = {"step": 0, "grad_norm_in": 1.0, "grad_norm_out": 1.0, "cos_in": 0.2, "cos_out": 0.0,
            "cos_out_applied": 0.0, "frac_fired": 1.0, "signed_in": 0.1, "signed_out": -0.1,
            "grad_change_norm": 0.1, "update_cos": 0.0}
    behaviour = behaviour or {}
    for arm in ("vanilla", "projected"):
        d = paths.arm(arm)
        d.mkdir(parents=True, exist_ok=True)
        write_rows(step_path(d, 0), rows)
        write_manifest(d, {"n_steps": 1, "steps": [step], "student_end": behaviour.get(arm)})
    for arm in ("projected_random", "projected_shuffled"):
        if arm in behaviour:
            paths.arm(arm).mkdir(parents=True, exist_ok=True)
            write_manifest(paths.arm(arm), {"n_steps": 0, "steps": [],
                                            "student_end": behaviour[arm]})
    if "start" in behaviour:
        paths.student_start.write_text(json.dumps(behaviour["start"]))
    return paths
