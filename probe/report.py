"""`out/report.md`: the requirement statistics of a Phase 1 run, with plots, from artifacts only."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from probe.arms import REPLAY_ARMS  # noqa: E402
from probe.artifacts import ArtifactError, read_manifest  # noqa: E402
from probe.checks import (behaviour, behaviour_stats, control_stats, r1_stats,  # noqa: E402
                          r2_stats, r3_stats, r4_stats, r7_stats, replay_rows)
from probe.layout import Phase1Paths  # noqa: E402
from probe.report_grpo import r5_section  # noqa: E402

log = logging.getLogger(__name__)


def _safe(fn: Callable[[], Any]) -> Any:
    """A statistic that cannot be computed is shown as its error in the report, which is still
    written: one missing or degenerate artifact must not cost the reader every other number."""
    try:
        return fn()
    except (ArtifactError, KeyError, FileNotFoundError, ZeroDivisionError, ValueError,
            IndexError, TypeError) as e:
        log.warning("report: %s", e)
        return {"error": f"{type(e).__name__}: {e}"}


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def plot_cosines(paths: Phase1Paths, out: Path) -> list[str]:
    files = []
    arms = {a: read_manifest(paths.arm(a))["steps"] for a in ("vanilla", "projected")}
    rows = {a: replay_rows(paths, a) for a in arms}
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for a, rs in rows.items():
        by_step: dict[int, list[float]] = {}
        for r in rs:
            if math.isfinite(r["cos_S_contrib"]):
                by_step.setdefault(r["step"], []).append(r["cos_S_contrib"])
        xs = sorted(by_step)
        ax[0].plot(xs, [sum(by_step[s]) / len(by_step[s]) for s in xs], marker="o", label=a)
    ax[0].set(title="mean per-sample cos_S_contrib per step", xlabel="step")
    ax[0].legend()
    proj = arms["projected"]
    ax[1].plot([s["step"] for s in proj], [s["cos_in"] for s in proj], marker="o", label="cos_in")
    ax[1].plot([s["step"] for s in proj], [s["cos_out"] for s in proj], marker="x", label="cos_out")
    ax[1].set(title="projected arm: hack-ward cosine before/after", xlabel="step")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "cos_steps.png", dpi=100)
    plt.close(fig)
    files.append("cos_steps.png")

    hacks = [r for r in rows["vanilla"] if r["hack_attempt"]]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    for i, (key, title) in enumerate((("cos_S_contrib", "v_hack"), ("cos_random", "random V"),
                                      ("cos_shuffled", "shuffled V"))):
        for gt, lab in ((False, "pure hack"), (True, "hack + correct")):
            vals = [r[key] for r in hacks if bool(r["gt_pass"]) == gt and math.isfinite(r[key])]
            if vals:
                ax[i].hist(vals, bins=20, alpha=0.6, label=f"{lab} (n={len(vals)})")
        ax[i].set(title=f"cos by bucket: {title}")
        if ax[i].get_legend_handles_labels()[0]:  # a bucket can be empty on tiny runs
            ax[i].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cos_buckets.png", dpi=100)
    plt.close(fig)
    files.append("cos_buckets.png")
    return files


def plot_behaviour(beh: dict[str, Any], out: Path) -> list[str]:
    labels, hack, correct = [], [], []
    for k in ("start", *REPLAY_ARMS):
        b = beh.get(k)
        if isinstance(b, dict) and "hack_rate" in b:
            labels.append(k)
            hack.append(b["hack_rate"])
            correct.append(b.get("gt_pass_rate", b["correct_rate"]))  # older runs: gt pass
    if not labels:
        return []
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], hack, width=0.4, label="hack rate")
    ax.bar([i + 0.2 for i in x], correct, width=0.4, label="ground-truth pass rate")
    ax.set_xticks(list(x), [lab.replace("projected_", "proj. ") for lab in labels], fontsize=8)
    ax.set(title="student behaviour (sampled, graded)", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "behaviour.png", dpi=100)
    plt.close(fig)
    return ["behaviour.png"]


def _cell(text: object) -> str:
    """A markdown table cell: a `|` inside a statistic (|t|) would split the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def r7_lines(r7: dict[str, Any]) -> list[str]:
    """R7: the NLL and GRPO v_hack side by side on the same vanilla replay rows."""
    lines = ["## R7: NLL vs GRPO v_hack (same vanilla replay rows)", ""]
    if "error" in r7:
        return lines + [f"- not available: {r7['error']} (a run made before R7 gets the GRPO "
                        "columns from `pytest -m uat -k R7`)", ""]
    lines += ["| direction | R4 t (p) | random-direction null p (\\|t\\| q95) | "
              "length-residualised t (p) | spearman(cos, len) | control random t | control shuffled t |",
              "|---|---|---|---|---|---|---|"]
    for m in ("nll", r7["method"]):
        st = r7[m]
        nu = st["random_null"]
        lines.append(f"| {m} | {st['v_hack']['t']:+.2f} ({st['v_hack']['p']:.2g}) | "
                     f"{nu['p_empirical']:.3f} ({nu['abs_t_q95']:.2f}) | "
                     f"{st['length_residualised']['t']:+.2f} ({st['length_residualised']['p']:.2g}) | "
                     f"{st['cos_length_corr']['spearman']:+.2f} | {st['random']['t']:+.2f} | "
                     f"{st['shuffled']['t']:+.2f} |")
    c = r7["comparison"]
    lines += ["", f"Cosine between the two directions per module: mean {c['mean_cos']:+.3f}, "
              f"median {c['median_cos']:+.3f}, min {c['min_cos']:+.3f}, max {c['max_cos']:+.3f} "
              f"(random pair ≈ ±{c['random_null_rms']:.3f}; k = {c['k']}"
              f"{', principal angles in the v_hack manifest' if c['k'] > 1 else ''}); "
              f"max |Δ| {c['max_abs_diff']:.3g}.", ""]
    return lines


def write_report(paths: Phase1Paths, out_dir: str | Path = "out",
                 grpo_run: Path | None = None, r6_run: Path | None = None) -> Path:
    """Write `<out_dir>/report.md` (+ PNGs beside it) and return its path; with `grpo_run` (a
    GRPO run directory), the R5 section too; with `r6_run`, R6's side-by-side tables."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"R1": _safe(lambda: r1_stats(paths)), "R2": _safe(lambda: r2_stats(paths)),
             "R3": _safe(lambda: r3_stats(paths)), "R4": _safe(lambda: r4_stats(paths))}
    beh = _safe(lambda: behaviour_stats(paths))
    if "error" in beh:  # e.g. an arm without a student evaluation: the rates alone
        beh = _safe(lambda: behaviour(paths))
    controls = _safe(lambda: control_stats(paths))
    verdicts_path = out / "verdicts.json"
    verdicts = json.loads(verdicts_path.read_text()) if verdicts_path.exists() else []
    lines = ["# probe report: Phase 1", "", f"Run: `{paths.root}`", ""]
    if verdicts:
        lines += ["## Verdicts (last `pytest -m uat`)", "", "| req | check | verdict | statistic | threshold |",
                  "|---|---|---|---|---|"]
        for v in verdicts:
            mark = "PASS" if v["passed"] and v["outcome"] == "passed" else "FAIL"
            cells = [v["requirement"], v["check"], mark, v["statistic"], v["threshold"]]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    lines += ["## Statistics", ""]
    for req, st in stats.items():
        lines.append(f"### {req}")
        lines += [f"- {k}: {_fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v, default=str)[:400]}"
                  for k, v in st.items()]
        lines.append("")
    lines += ["## Controls: alignment with v_hack", "",
              "A control V far from orthogonal to v_hack is no control (its verdicts are flagged "
              "INVALID CONTROL). Threshold: |mean cos| > 4 SD of a Haar-random V's, or per-module "
              "RMS overlap > 3 x the random level sqrt(k/r).", ""]
    if "error" in controls:
        lines += [f"- error: {controls['error']}", ""]
    else:
        lines += ["| control | mean cos | max \\|cos\\| | RMS overlap | random V RMS | valid |",
                  "|---|---|---|---|---|---|"]
        for kind, a in controls.items():
            lines.append(f"| {kind} | {a['mean_cos']:+.4f} (max {a['mean_cos_max']:.4f}) | "
                         f"{a['max_abs_cos']:.4f} | {a['rms_overlap']:.4f} (max "
                         f"{a['rms_overlap_max']:.4f}) | {a['random_null_rms']:.4f} | "
                         f"{'yes' if a['valid'] else 'NO'} |")
        lines.append("")
    lines += r7_lines(_safe(lambda: r7_stats(paths)))
    lines += ["## Student behaviour", "",
              "`mdd_*`: the smallest hack-rate drop from the first arm that the two arms' n detect "
              "(power 0.8, one-sided alpha 0.05, normal approximation).", "",
              "```", json.dumps(beh, indent=1, default=str), "```", ""]
    figs: list[str] = []
    for fn in (lambda: plot_cosines(paths, out), lambda: plot_behaviour(beh, out)):
        try:
            figs += fn()
        except (ArtifactError, KeyError, ValueError) as e:
            log.warning("plot skipped: %s", e)
    lines += [f"![{f}]({f})" for f in figs]
    if grpo_run is not None and Path(grpo_run).exists():
        lines += [""] + r5_section(Path(grpo_run), out)
    if r6_run is not None and Path(r6_run).exists():
        from probe.report_r6 import r6_section

        lines += [""] + r6_section(Path(r6_run).resolve(), paths)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
