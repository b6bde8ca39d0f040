"""R6's part of report.md: the δS and LoRA students side by side (artifacts only)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from probe.artifacts import ArtifactError, read_manifest
from probe.checks import r4_stats
from probe.checks_grpo import rise
from probe.checks_r6 import drift_stats, end_pass_rate, r6_manifests, verdict, vhack_parts
from probe.layout import Phase1Paths, R6Paths


def _f(x: Any, fmt: str = "+.3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def r6_section(root: Path, phase1: Phase1Paths) -> list[str]:
    """One table per question: T4 discrimination, vanilla rise and pass, projection effect, drift
    of v_hack and how much of the current hack direction the stored one still removes."""
    try:
        cfg = read_manifest(root, name="config.json")
        link = {k: Path(cfg[k]) for k in ("teacher_root", "r5_root")}
    except (ArtifactError, KeyError) as e:
        return ["## R6: LoRA vs δS", "", f"- no R6 run to report ({e})", ""]
    paths = R6Paths(root, phase1.seed, link["teacher_root"], link["r5_root"])
    seeds = cfg["seeds"]
    m = r6_manifests(paths, seeds)
    every = cfg["config"]["drift_every"]
    d = {a: drift_stats(m[a], every) for a in ("projected", "lora_projected")}
    v = verdict(m, all(x["measured"] for x in d.values()))
    t4 = {"δS": r4_stats(phase1), "LoRA": r4_stats(paths.phase1, arm="lora_vanilla")}
    parts = vhack_parts(paths)
    rows = {"δS": ("vanilla", "projected", "delta_s"), "LoRA": ("lora_vanilla", "lora_projected",
                                                                "lora")}
    lines = ["## R6: LoRA vs δS (same pool, pairs, teacher rows and seeds)", "",
             f"Run: `{root}`; seeds {seeds}; outcome: **{v['outcome']}** (ratio "
             f"{_f(v['effects']['ratio'], '.2f')}, LoRA weaker p "
             f"{_f(v['effects']['p_lora_weaker'], '.2g')}). LoRA v_hack's smallest share per "
             f"tensor: " + ", ".join(f"{t} {x:.3g}" for t, x in parts["min_share"].items()), "",
             "| adapter | T4 t (p) | vanilla rise | end pass | projected effect (p) | "
             "drift cos₁ (last) | current cos in → out |", "|---|---|---|---|---|---|---|"]
    for name, (van, proj, key) in rows.items():
        w, e = t4[name]["v_hack"], v["effects"][key]
        dr = d[proj]
        last = list(dr["records"].values())[-1]["mean_cos_first"] if dr["records"] else float("nan")
        lines.append(f"| {name} | {_f(w['t'], '+.2f')} ({_f(w['p'], '.2g')}) | "
                     f"{_f(rise(m[van])['rise'])} | {_f(end_pass_rate(m[van]), '.3f')} | "
                     f"{_f(e['mean_diff'])} ({_f(e['p'], '.2g')}) | {_f(last, '.2f')} | "
                     f"{_f(dr['current_cos_in'], '.4f')} → {_f(dr['current_cos_out'], '.4f')} |")
    lines.append("")
    return lines
