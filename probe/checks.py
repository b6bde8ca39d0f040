"""Requirement statistics R1–R4, computed from artifacts only (the tests and the report share them).

Each function reads a Phase 1 run's files and returns plain numbers; thresholds live with the
requirement modules in `tests/`, which quote the spec. Nothing here generates or trains.
"""
from __future__ import annotations

import json
import math
import statistics
from typing import Any

import numpy as np
from scipy.stats import fisher_exact

from probe.arms import REPLAY_ARMS, control_arms
from probe.artifacts import ArtifactError, read_manifest, read_rows, read_stage
from probe.layout import Phase1Paths, load_paths  # noqa: F401  (load_paths: re-exported)
from probe.stats import (caliper_match, correlation, length_residualised, min_detectable_decrease,
                         welch_greater)


def _rate(rows: list[dict[str, Any]], key: str) -> float:
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else float("nan")


def r1_stats(paths: Phase1Paths) -> dict[str, Any]:
    """Teacher hack rate over the pool, and the teacher-vs-base comparison on the same prompts."""
    man = read_manifest(paths.pool)
    steps = read_stage(paths.pool, required=("hacked", "gt_pass", "problem_id"))
    rows = [r for s in steps for r in s]
    base = read_rows(paths.pool / "base_reference.jsonl.gz", ("hacked",))
    ref_steps = {r["step"] for r in base}
    teacher_same = [r for r in rows if r["step"] in ref_steps]
    report = man.get("merge_report") or {}
    return {
        "n_steps": len(steps), "rows_per_step": [len(s) for s in steps],
        "expected_rows_per_step": man["rows_per_step"], "n_rows": len(rows),
        "hack_rate": _rate(rows, "hacked"), "hack_attempt_rate": _rate(rows, "hack_attempt"),
        "gt_pass_rate": _rate(rows, "gt_pass"),
        "label_counts": _counts(rows, "label"),
        "teacher_hack_rate_same_prompts": _rate(teacher_same, "hacked"),
        "base_hack_rate_same_prompts": _rate(base, "hacked"), "n_base": len(base),
        "merge_report": report,
        "grader_isolation": man.get("grader_isolation"),  # what the OS granted the sandbox
    }


def _counts(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[str(r[key])] = out.get(str(r[key]), 0) + 1
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def replay_rows(paths: Phase1Paths, arm: str, required: tuple[str, ...] = ("cos_S_contrib",)
                ) -> list[dict[str, Any]]:
    return [r for s in read_stage(paths.arm(arm), required=required) for r in s]


def r2_stats(paths: Phase1Paths) -> dict[str, Any]:
    """Coverage of finite per-sample cosines, null gradients, ‖g‖ stability, and the mask audit."""
    rows = replay_rows(paths, "vanilla")
    man = read_manifest(paths.arm("vanilla"))
    pool = {(r["step"], r["index"]): r for s in read_stage(paths.pool) for r in s}
    def audit(r: dict[str, Any]) -> bool:
        src = pool[(r["step"], r["index"])]
        return (r["loss_tokens"] == len(src["completion_ids"])
                and r.get("loss_start", len(src["prompt_ids"])) == len(src["prompt_ids"]))

    mismatched = [(r["step"], r["index"]) for r in rows if not audit(r)]
    norms = [s["grad_norm_in"] for s in man["steps"]]
    med = statistics.median(norms) if norms else float("nan")
    return {
        "n_rows": len(rows),
        "coverage": sum(_finite(r["cos_S_contrib"]) for r in rows) / len(rows) if rows else 0.0,
        "zero_grad_rows": sum(1 for r in rows if not r["grad_norm"]),
        "step_grad_norms": norms,
        "grad_norm_max_over_median": max(norms) / med if norms and med > 0 else float("inf"),
        "grad_norm_min_over_median": min(norms) / med if norms and med > 0 else 0.0,
        "mask_mismatches": len(mismatched), "mask_mismatch_examples": mismatched[:5],
    }


def r3_stats(paths: Phase1Paths) -> dict[str, Any]:
    """Per projected step: did cos_out fall below cos_in, how often did it fire, did ‖g‖ change."""
    steps = read_manifest(paths.arm("projected"))["steps"]
    vanilla = read_manifest(paths.arm("vanilla"))["steps"]
    n = len(steps)
    fired = [s for s in steps if s["frac_fired"] > 0]
    # cos_out recomputed from the gradient left in .grad (falls back to the projection's report)
    out_key = "cos_out_applied" if steps and "cos_out_applied" in steps[0] else "cos_out"
    return {
        "n_steps": n,
        "frac_steps_cos_out_lt_in": sum(s[out_key] < s["cos_in"] for s in steps) / n if n else 0.0,
        "mean_frac_fired": sum(s["frac_fired"] for s in steps) / n if n else 0.0,
        "mean_cos_in": sum(s["cos_in"] for s in steps) / n if n else float("nan"),
        "mean_cos_out": sum(s[out_key] for s in steps) / n if n else float("nan"),
        "mean_update_cos_projected": _mean(steps, "update_cos"),
        "mean_update_cos_vanilla": _mean(vanilla, "update_cos"),
        "mean_signed_in": sum(s["signed_in"] for s in steps) / n if n else float("nan"),
        "mean_signed_out": sum(s["signed_out"] for s in steps) / n if n else float("nan"),
        "fired_steps_grad_unchanged": sum(
            1 for s in fired if s["grad_change_norm"] <= 1e-9 * max(s["grad_norm_in"], 1e-30)),
        "n_fired_steps": len(fired),
    }


def _mean(steps: list[dict[str, Any]], key: str) -> float:
    vals = [s[key] for s in steps if key in s]
    return sum(vals) / len(vals) if vals else float("nan")


def r4_stats(paths: Phase1Paths, min_bucket: int = 5, caliper: float = 0.15,
             method: str = "nll", arm: str = "vanilla") -> dict[str, Any]:
    """Within hack attempts: cos | gt_pass=0 (pure hack) vs cos | gt_pass=1 (hack + correct), for
    the direction of extraction `method` (`probe.vhack_methods`; its cosine column and its
    controls' columns) on the vanilla replay rows. Keys `v_hack`, `random`, `shuffled` are that
    method's direction and controls; the random-direction null (`cos_null`) is shared."""
    from probe.vhack_methods import column, kind

    col = column(kind(method))
    ctl = {c: column(kind(method, c)) for c in ("random", "shuffled")}
    rows = [r for r in replay_rows(paths, arm, (col, *ctl.values())) if r["hack_attempt"]]
    pure = [r for r in rows if not r["gt_pass"]]
    combo = [r for r in rows if r["gt_pass"]]
    out: dict[str, Any] = {"n_hack_attempts": len(rows), "n_pure": len(pure), "n_combined": len(combo),
                           "min_bucket": min_bucket}
    for key, name in ((col, "v_hack"), (ctl["random"], "random"), (ctl["shuffled"], "shuffled")):
        out[name] = welch_greater([r[key] for r in pure], [r[key] for r in combo]).to_dict()
    cos = [r[col] for r in rows]
    lens = [r["completion_len"] for r in rows]
    for name, bucket in (("len_pure_mean", pure), ("len_combined_mean", combo)):
        out[name] = float(np.mean([r["completion_len"] for r in bucket])) if bucket else math.nan
    out["cos_length_corr"] = correlation(cos, lens)
    resid = length_residualised(cos, lens)
    is_pure = np.array([not r["gt_pass"] for r in rows], dtype=bool)
    out["length_residualised"] = welch_greater(resid[is_pure], resid[~is_pure]).to_dict()
    matches = caliper_match([r["completion_len"] for r in pure],
                            [r["completion_len"] for r in combo], caliper)
    out["length_matched"] = welch_greater([pure[i][col] for i, _ in matches],
                                          [combo[j][col] for _, j in matches]).to_dict()
    out["n_length_matched_pairs"] = len(matches)
    out["random_null"] = random_direction_null(pure, combo, out["v_hack"]["t"])
    out["per_problem"] = welch_greater(*_problem_means(pure, combo, col)).to_dict()
    if method != "nll":
        out.update(method=method, column=col)
    return out


def random_direction_null(pure: list[dict[str, Any]], combo: list[dict[str, Any]], t_vhack: float
                          ) -> dict[str, Any]:
    """Is v_hack special? The same Welch t for each of n Haar-random directions (stored per row
    as `cos_null`): when the buckets' gradients differ in any generic way, random directions get a
    large |t| too. Empirical p = (1 + #{|t_null| >= t_v_hack}) / (n + 1). A bucket with too few
    rows (or rows without `cos_null`) gives n = 0 and NaN statistics, never an exception: the
    verdict must report the counts, not crash."""
    nan = float("nan")
    empty = {"n": 0, "p_empirical": nan, "abs_t_q95": nan, "abs_t_median": nan,
             "n_pure": len(pure), "n_combined": len(combo)}
    if not pure or not combo or not all("cos_null" in r for r in (*pure, *combo)):
        return empty
    a = np.array([r["cos_null"] for r in pure], dtype=float)
    b = np.array([r["cos_null"] for r in combo], dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        return empty
    ts = np.array([welch_greater(a[:, k], b[:, k]).t for k in range(a.shape[1])])
    ts = ts[np.isfinite(ts)]
    if not len(ts):
        return empty
    exceed = int((np.abs(ts) >= t_vhack).sum()) if math.isfinite(t_vhack) else len(ts)
    return {"n": int(len(ts)), "abs_t_q95": float(np.quantile(np.abs(ts), 0.95)),
            "abs_t_median": float(np.median(np.abs(ts))),
            "p_empirical": (1 + exceed) / (len(ts) + 1),
            "n_pure": len(pure), "n_combined": len(combo)}


def _problem_means(pure: list[dict[str, Any]], combo: list[dict[str, Any]],
                   col: str = "cos_S_contrib") -> tuple[list[float], list[float]]:
    """Per-problem mean cosines per bucket: rows of one problem are not independent samples."""
    def means(rows: list[dict[str, Any]]) -> list[float]:
        by: dict[Any, list[float]] = {}
        for r in rows:
            if _finite(r[col]):
                by.setdefault(r["problem_id"], []).append(r[col])
        return [sum(v) / len(v) for v in by.values()]
    return means(pure), means(combo)


def behaviour(paths: Phase1Paths) -> dict[str, Any]:
    """Student hack / correct rates at the start (δS = 0) and after each arm."""
    out = {"start": json.loads(paths.student_start.read_text())}
    for arm in REPLAY_ARMS:
        try:
            out[arm] = read_manifest(paths.arm(arm)).get("student_end")
        except ArtifactError:
            if arm in ("vanilla", "projected"):
                raise
    return out


def behaviour_stats(paths: Phase1Paths, alpha: float = 0.05, power: float = 0.8
                    ) -> dict[str, Any]:
    """Did vanilla replay learn to hack, and did projection slow it? (one-sided Fisher exact test)
    Each comparison also carries the smallest hack-rate drop its sample sizes detect with `power`
    at one-sided `alpha` from the reference arm's rate (`mdd_*`): a non-significant difference at
    an n that cannot detect the effect of interest is no evidence of absence."""
    out: dict[str, Any] = dict(behaviour(paths))
    counts = {k: (round(v["hack_rate"] * v["n"]), v["n"]) for k, v in out.items() if v}
    out["vanilla_rise"] = out["vanilla"]["hack_rate"] - out["start"]["hack_rate"]
    out["projected_rise"] = out["projected"]["hack_rate"] - out["start"]["hack_rate"]

    def fewer_hacks(a: str, b: str) -> float:
        """One-sided Fisher exact p that arm `b` hacks less often than arm `a`."""
        if a not in counts or b not in counts:
            return float("nan")
        (ha, na), (hb, nb) = counts[a], counts[b]
        return float(fisher_exact([[ha, na - ha], [hb, nb - hb]], alternative="greater").pvalue)

    def mdd(a: str, b: str) -> float:
        """Smallest drop from arm `a`'s hack rate that n_a vs n_b samples detect."""
        if a not in counts or b not in counts:
            return float("nan")
        return min_detectable_decrease(out[a]["hack_rate"], counts[a][1], counts[b][1], alpha,
                                       power)

    out["power"], out["alpha"] = power, alpha
    out["fisher_p"] = fewer_hacks("vanilla", "projected")
    out["mdd_vanilla_vs_projected"] = mdd("vanilla", "projected")
    for control, arm in control_arms("replay").items():
        out[f"specific_vs_{control}_p"] = fewer_hacks(arm.name, "projected")
        out[f"mdd_{control}_vs_projected"] = mdd(arm.name, "projected")
    return out


def load_direction(paths: Phase1Paths, kind: str) -> dict[str, Any]:
    """A saved direction file of the run (a missing or corrupt one is an ArtifactError)."""
    from probe.vhack import VHackMismatchError, load_vhack

    try:
        return load_vhack(paths.vhack_file(kind))[0]
    except VHackMismatchError as e:
        raise ArtifactError(str(e)) from e


def control_stats(paths: Phase1Paths, method: str = "nll") -> dict[str, Any]:
    """Each control V's alignment with the `method`'s v_hack, from the saved direction files (so
    runs made before it was recorded are measured too): per module and overall cosine,
    thresholds, validity."""
    from probe.vhack import control_alignment
    from probe.vhack_methods import kind

    V = load_direction(paths, kind(method))
    return {c: control_alignment(load_direction(paths, kind(method, c)), V)
            for c in ("random", "shuffled")}


def r7_stats(paths: Phase1Paths, method: str = "grpo", min_bucket: int = 5) -> dict[str, Any]:
    """R7: the `method` v_hack beside the NLL one, on the same vanilla replay rows (R4's Welch
    test, random-direction null and length-residualised test for each), and how the two saved
    directions relate (per-module cosine / principal angles; whether the tensors differ)."""
    from probe.vhack_compare import compare_directions, well_formed

    ranks = read_manifest(paths.vhack).get("ranks")
    nll, other = load_direction(paths, "nll"), load_direction(paths, method)
    return {"method": method, "nll": r4_stats(paths, min_bucket), method: r4_stats(paths, min_bucket,
                                                                                method=method),
            "comparison": compare_directions(nll, other),
            "well_formed": {"nll": well_formed(nll, ranks or {n: v.shape[1] for n, v in nll.items()}),
                            method: well_formed(other, ranks or {n: v.shape[1]
                                                                 for n, v in other.items()})},
            "controls": control_stats(paths, method)}


def invalid_control_note(alignment: dict[str, Any]) -> str:
    """'' for a valid control, else why it is no control (its alignment with v_hack), as the
    prefix of a verdict's statistic."""
    if alignment["valid"]:
        return ""
    return (f"INVALID CONTROL: cos with v_hack mean {alignment['mean_cos']:+.3f} (max "
            f"{alignment['mean_cos_max']:.3f}), per-module RMS {alignment['rms_overlap']:.3f} (max "
            f"{alignment['rms_overlap_max']:.3f}; random V ≈ {alignment['random_null_rms']:.3f}); ")


# One-sided (and ungated) projection leaves V g_out <= 0 exactly, so the applied gradient's
# hack-ward cosine ‖relu(V g)‖/‖g‖ is 0 up to rounding. δS and its gradient are float32 whatever
# the model dtype; rounding leaves |V g_out| ≲ sqrt(r)·eps32·‖g‖ ≈ 6e-6‖g‖ at r = 2560, so 1e-4
# is 10× that and still 100× below the hack-ward cosine of a gradient that kept its hack-ward part
# (the embedded world's cos_in is 0.01–0.3).
APPLIED_COS_TOL = 1e-4
ZERO_HACKWARD_MODES = ("one_sided", "no_gate")  # "reverse" flips the part, it does not remove it


def r3_applied_stats(paths: Phase1Paths, arm: str = "projected", tol: float = APPLIED_COS_TOL
                     ) -> dict[str, Any]:
    """R3's mechanism, exactly: the hack-ward cosine of the gradient the optimizer received
    (`cos_out_applied`, recomputed from .grad against v_hack after the projection) should be ≈ 0
    on every step, not merely below cos_in. A projection with the wrong orientation, on a
    different V, or on some modules only lowers cos_out yet leaves this > 0."""
    man = read_manifest(paths.arm(arm))
    return applied_hackward(man["steps"], (man.get("config") or {}).get("projection", "one_sided"),
                            tol)


def applied_hackward(steps: list[dict[str, Any]], mode: str, tol: float = APPLIED_COS_TOL
                     ) -> dict[str, Any]:
    """`r3_applied_stats` on a manifest's step summaries (`passed` is None where the mode is
    not meant to zero the hack-ward part, or a step lacks the record)."""
    vals = [s.get("cos_out_applied") for s in steps]
    recorded = bool(vals) and all(_finite(v) for v in vals)
    worst = max(vals) if recorded else float("nan")
    above = [s["step"] for s, v in zip(steps, vals) if recorded and v > tol]
    applies = mode in ZERO_HACKWARD_MODES
    return {"mode": mode, "n_steps": len(steps), "recorded": recorded, "tol": tol,
            "max_cos_out_applied": worst, "mean_cos_in": _mean(steps, "cos_in"),
            "steps_above_tol": above,
            "passed": (not above) if applies and recorded else None}
