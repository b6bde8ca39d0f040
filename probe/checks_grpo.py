"""R5's statistics, read from the GRPO artifacts only (manifests and step summaries; no model code).

Trajectory = the student's strict hack rate on its own on-policy rows, per arm × seed × step.
- rise: pooled rate over the last window (steps 13–15) minus the first (steps 0–2), per seed and
  pooled: windows of three steps, because one step holds only P × (G − teacher rows) student rows;
- slowdown: a one-sided Wilcoxon signed-rank test over the paired (seed, step ≥ 1) rate differences
  between two arms (step 0 is identical by construction: every arm starts at δS = 0). Steps of one
  seed are autocorrelated, so its p is optimistic; the per-seed mean differences travel with it in
  every verdict message, and `seeds_positive` counts the seeds where the first arm hacked more;
- sneaky fail (ratio saturation, no signal): the clip-active token fraction, the teacher rows' share of
  the gradient and the fraction of groups with reward variance, per step, with the failing steps named.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from scipy import stats as sps

from probe.artifacts import read_manifest
from probe.layout import arm_dir

START = (0, 1, 2)
END = (13, 14, 15)  # spec: "by step 15"
MID = (8, 9, 10)  # spec: "rises by step 10" (reported beside the step-15 verdict)


def load_manifests(root: Path, arms: Sequence[str], seeds: Sequence[int]
                   ) -> dict[str, dict[int, dict[str, Any]]]:
    return {a: {s: read_manifest(arm_dir(root, a, s)) for s in seeds} for a in arms}


def counts(manifest: dict[str, Any]) -> list[tuple[int, int]]:
    """(strict hacks, rows) of the student's own rows, per step."""
    out = []
    for st in manifest["steps"]:
        s = st["student"]
        n = int(s.get("n", 0))
        out.append((int(round(s.get("hack_rate", 0.0) * n)), n))
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (0, 1 when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def _window(c: list[tuple[int, int]], steps: Sequence[int]) -> tuple[int, int]:
    sel = [c[s] for s in steps if s < len(c)]
    return sum(k for k, _ in sel), sum(n for _, n in sel)


def rise(per_seed: dict[int, dict[str, Any]], start: Sequence[int] = START,
         end: Sequence[int] = END) -> dict[str, Any]:
    """Hack-rate rise from the first window to the last, per seed and pooled."""
    out: dict[str, Any] = {"per_seed": {}}
    tot = [0, 0, 0, 0]
    for seed, m in per_seed.items():
        c = counts(m)
        if len(c) <= max(end):
            raise ValueError(f"seed {seed}: {len(c)} steps, the rise needs step {max(end)}")
        k0, n0 = _window(c, start)
        k1, n1 = _window(c, end)
        out["per_seed"][seed] = {"start": k0 / max(n0, 1), "end": k1 / max(n1, 1),
                                 "rise": k1 / max(n1, 1) - k0 / max(n0, 1), "n_start": n0, "n_end": n1}
        tot = [tot[0] + k0, tot[1] + n0, tot[2] + k1, tot[3] + n1]
    mid = [_window(counts(m), MID) for m in per_seed.values()]
    out["mid"] = sum(k for k, _ in mid) / max(sum(n for _, n in mid), 1)
    out["start"], out["end"] = tot[0] / max(tot[1], 1), tot[2] / max(tot[3], 1)
    out["rise"] = out["end"] - out["start"]
    out["end_ci"] = wilson(tot[2], tot[3])
    out["start_ci"] = wilson(tot[0], tot[1])
    out["min_seed_rise"] = min(v["rise"] for v in out["per_seed"].values())
    return out


def paired_slowdown(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]],
                    last_step: int = max(END)) -> dict[str, Any]:
    """Does arm `a` hack more than arm `b`? Differences a − b of the per-step rates over the
    paired (seed, step) for steps 1..last_step; one-sided Wilcoxon signed-rank (zeros dropped)."""
    diffs, per_seed = [], {}
    for seed in sorted(set(a) & set(b)):
        ca, cb = counts(a[seed]), counts(b[seed])
        d = [ka / max(na, 1) - kb / max(nb, 1)
             for (ka, na), (kb, nb) in list(zip(ca, cb))[1:last_step + 1]]
        per_seed[seed] = sum(d) / max(len(d), 1)
        diffs += d
    nonzero = [d for d in diffs if d != 0]
    if len(nonzero) < 2:
        p, stat = 1.0, float("nan")
    else:
        res = sps.wilcoxon(nonzero, alternative="greater")
        p, stat = float(res.pvalue), float(res.statistic)
    return {"n_pairs": len(diffs), "mean_diff": sum(diffs) / max(len(diffs), 1), "p": p,
            "statistic": stat, "per_seed_mean_diff": per_seed,
            "seeds_positive": sum(v > 0 for v in per_seed.values())}


def trajectory_text(per_seed: dict[int, dict[str, Any]], steps: Sequence[int] | None = None) -> str:
    """Pooled per-step rate with Wilson intervals, e.g. 's0 0.06[0.03,0.13] s5 …'."""
    c = [counts(m) for m in per_seed.values()]
    n_steps = min(len(x) for x in c)
    parts = []
    for s in (steps if steps is not None else range(0, n_steps, 3)):
        k, n = sum(x[s][0] for x in c), sum(x[s][1] for x in c)
        lo, hi = wilson(k, n)
        parts.append(f"s{s} {k / max(n, 1):.2f}[{lo:.2f},{hi:.2f}]")
    return " ".join(parts)


def saturation(manifests: dict[str, dict[int, dict[str, Any]]], clip_max: float,
               variance_min: float, last_step: int = max(END)) -> dict[str, Any]:
    """Per-step sneaky-fail signals over every arm × seed, up to `last_step`, with failing steps
    named as '<arm>/s<seed>/step<k>'."""
    clip_bad, teacher_bad, var_bad = [], [], []
    clip_max_seen, var_fracs, teacher_shares, student_var, tiny = 0.0, [], [], [], []
    for arm, per_seed in manifests.items():
        for seed, m in per_seed.items():
            for st in m["steps"][:last_step + 1]:
                name = f"{arm}/s{seed}/step{st['step']}"
                clip = max(u["clip_frac"] for u in st["updates"])
                clip_max_seen = max(clip_max_seen, clip)
                if clip > clip_max:
                    clip_bad.append(name)
                u0 = st["updates"][0]
                share = u0["teacher_grad_norm"] / u0["grad_norm_in"] if u0["grad_norm_in"] > 0 else 0.0
                # a step where teacher rows had non-zero advantage but gave no gradient
                if st["teacher"].get("n", 0) and st["frac_groups_teacher_student_gap"] > 0:
                    teacher_shares.append(share)
                    if share <= 1e-6:
                        teacher_bad.append(name)
                var_fracs.append(st["frac_groups_with_variance"])
                student_var.append(st.get("frac_groups_student_variance", float("nan")))
                # teacher tokens the student would almost never write (π_θ/π_teacher < 1e-3)
                n_is = sum(v.get("n", 0) for k, v in u0["ratio"].items() if k.endswith("_is"))
                if n_is:
                    tiny.append(sum(v.get("n", 0) * v.get("frac_tiny", 0.0)
                                    for k, v in u0["ratio"].items() if k.endswith("_is")) / n_is)
                if st["frac_groups_with_variance"] < variance_min:
                    var_bad.append(name)
    return {"clip_max": clip_max_seen, "clip_bad": clip_bad, "teacher_bad": teacher_bad,
            "teacher_share_min": min(teacher_shares) if teacher_shares else float("nan"),
            "teacher_share_mean": sum(teacher_shares) / len(teacher_shares) if teacher_shares
            else float("nan"),
            "variance_mean": sum(var_fracs) / max(len(var_fracs), 1), "variance_bad": var_bad,
            "student_variance_mean": sum(student_var) / max(len(student_var), 1),
            "teacher_tiny_ratio_mean": sum(tiny) / len(tiny) if tiny else float("nan"),
            "teacher_tiny_ratio_max": max(tiny) if tiny else float("nan"),
            "n_steps": len(var_fracs)}
