"""The R5 section of `out/report.md`: hack-rate trajectories per arm with Wilson bands, raw ratio
histograms per source, reward variance per step and update cosines, from artifacts only."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from probe.arms import GRPO_ARMS  # noqa: E402
from probe.artifacts import ArtifactError, read_manifest  # noqa: E402
from probe.checks_grpo import (counts, paired_slowdown, rise, saturation,  # noqa: E402
                               wilson)
from probe.layout import RATIO_BINS, arm_seed_dirs  # noqa: E402

log = logging.getLogger(__name__)


def _runs(root: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Every completed `<arm>_seed<S>` of a GRPO run directory, arms in registry order."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in GRPO_ARMS:
        for seed, d in arm_seed_dirs(root, arm).items():
            try:
                out.setdefault(arm, {})[seed] = read_manifest(d)
            except ArtifactError:
                continue
    return out


def _pooled(per_seed: dict[int, dict[str, Any]]) -> tuple[list[float], list[float], list[float]]:
    c = [counts(m) for m in per_seed.values()]
    n_steps = min(len(x) for x in c)
    rate, lo, hi = [], [], []
    for s in range(n_steps):
        k, n = sum(x[s][0] for x in c), sum(x[s][1] for x in c)
        a, b = wilson(k, n)
        rate.append(k / max(n, 1))
        lo.append(a)
        hi.append(b)
    return rate, lo, hi


def plot_r5(runs: dict[str, dict[int, dict[str, Any]]], out: Path) -> list[str]:
    fig, ax = plt.subplots(2, 2, figsize=(12, 7))
    for arm, per_seed in runs.items():
        rate, lo, hi = _pooled(per_seed)
        xs = list(range(len(rate)))
        ax[0, 0].plot(xs, rate, marker="o", ms=3, label=f"{arm} ({len(per_seed)} seeds)")
        ax[0, 0].fill_between(xs, lo, hi, alpha=0.15)
        cos = [sum(m["steps"][s]["updates"][0]["update_cos"] for m in per_seed.values()) / len(per_seed)
               for s in xs]
        ax[1, 1].plot(xs, cos, label=arm)
        var = [sum(m["steps"][s]["frac_groups_with_variance"] for m in per_seed.values()) / len(per_seed)
               for s in xs]
        ax[1, 0].plot(xs, var, label=arm)
    ax[0, 0].set(title="student strict hack rate on its own rows (95% Wilson band)", xlabel="step",
                 ylim=(0, 1))
    ax[0, 0].legend(fontsize=7)
    ax[1, 0].set(title="fraction of groups with reward variance", xlabel="step", ylim=(0, 1.05))
    ax[1, 1].set(title="hack-ward cosine of the applied update (v_hack)", xlabel="step")
    ax[1, 1].legend(fontsize=7)
    van = runs.get("vanilla", {})
    labels = [f"<{RATIO_BINS[1]}"] + [f"{a}-{b}" for a, b in zip(RATIO_BINS[1:-2], RATIO_BINS[2:-1])] \
        + [f">{RATIO_BINS[-2]}"]
    for key, style in (("student", "-"), ("teacher", "--")):
        hist = [0] * (len(RATIO_BINS) - 1)
        for m in van.values():
            for st in m["steps"]:
                for sign in ("pos", "neg"):
                    h = st["updates"][-1]["ratio"].get(f"{key}_{sign}", {}).get("hist")
                    if h:
                        hist = [a + b for a, b in zip(hist, h)]
        tot = max(sum(hist), 1)
        ax[0, 1].plot(range(len(hist)), [h / tot for h in hist], style, marker="o", label=key)
    ax[0, 1].set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
    ax[0, 1].set(title="vanilla: ρ = π_θ/π_old at the last update, per source")
    ax[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "r5_trajectories.png", dpi=100)
    plt.close(fig)
    return ["r5_trajectories.png"]


def r5_section(root: Path, out: Path) -> list[str]:
    """Markdown lines (and PNGs written to `out`) for the GRPO run at `root`."""
    runs = _runs(root)
    if "vanilla" not in runs:
        return ["## R5 (GRPO)", "", f"No completed vanilla arm under `{root}`.", ""]
    lines = ["## R5 (GRPO trajectory probe)", "", f"Run: `{root}`", "",
             "| arm | seeds | start → step-15 hack rate | vanilla − arm (paired) | Wilcoxon p |",
             "|---|---|---|---|---|"]
    for arm, per_seed in runs.items():
        try:
            r = rise(per_seed)
            span = f"{r['start']:.2f} → {r['end']:.2f}"
        except ValueError as e:
            span = str(e)
        if arm == "vanilla":
            lines.append(f"| {arm} | {len(per_seed)} | {span} | | |")
            continue
        s = paired_slowdown(runs["vanilla"], per_seed)
        lines.append(f"| {arm} | {len(per_seed)} | {span} | {s['mean_diff']:+.3f} | {s['p']:.2g} |")
    sat = saturation(runs, clip_max=0.2, variance_min=0.9)
    lines += ["", f"- max clip-active token fraction: {sat['clip_max']:.3f}",
              f"- teacher rows' share of ‖g‖: min {sat['teacher_share_min']:.3f}, "
              f"mean {sat['teacher_share_mean']:.3f}",
              f"- mean fraction of groups with reward variance: {sat['variance_mean']:.3f} "
              f"({len(sat['variance_bad'])}/{sat['n_steps']} steps below 0.9)", ""]
    try:
        lines += [f"![r5]({f})" for f in plot_r5(runs, out)]
    except (KeyError, ValueError, IndexError) as e:
        log.warning("R5 plot skipped: %s", e)
    return lines + [""]
