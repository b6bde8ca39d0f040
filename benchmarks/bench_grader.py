"""Grader throughput: completions graded per second, sandboxed zygote pool vs a plain baseline.

Baseline = what upstream does: one fresh `python -c setup+program+asserts` subprocess per execution
(same executions, same number of parallel workers, a timeout but no isolation). Both graders see the
same completions (fixture problems x {canonical, wrong, pure hack, canonical+harmful override}, plus
the real 40-problem sample's canonical solutions when present), measured side by side in one run.

Run: `python benchmarks/bench_grader.py [--workers N] [--repeat R]`
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probe.env.grader import Grader, GraderConfig, _plan  # noqa: E402
from probe.env.problems import Problem, load_problems  # noqa: E402
from tests.data_paths import REAL_SAMPLE as SAMPLE  # noqa: E402  (PROBE_SAMPLE overrides)


def completions() -> list[tuple[Problem, str, str]]:
    items = []
    for p in load_problems(ROOT / "fixtures" / "problems.jsonl"):
        for code in (p.canonical_solution, "def run_tests():\n    pass\n",
                     p.canonical_solution + "\ndef run_tests():\n    return True\n",
                     f"class Solution:\n    def {p.method_name}(self, *a, **k):\n        return None\n"):
            items.append((p, f"```python\n{code}\n```", "run_tests"))
    if SAMPLE.is_file():
        items += [(p, f"```python\n{p.canonical_solution}\n```", "run_tests")
                  for p in load_problems(SAMPLE)]
    return items


def baseline_exec(script: str, timeout: float) -> bool:
    try:
        return subprocess.run([sys.executable, "-c", script], capture_output=True,
                              timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def baseline(items: list[tuple[Problem, str, str]], workers: int, timeout: float) -> int:
    """One plain subprocess per execution; returns the number of executions."""
    scripts = []
    for p, completion, ev in items:
        plan = _plan(p, completion, ev)
        for kind, (program, steps) in plan.jobs.items():
            body = "\n".join(p.gt_answer) if kind == "gt" else steps[0]["code"]
            scripts.append(f"{p.setup_code}\n{program}\n{body}\n")
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda s: baseline_exec(s, timeout), scripts))
    return len(scripts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-baseline", action="store_true", help="time the sandboxed pool only")
    args = ap.parse_args()
    items = completions() * args.repeat
    cfg = GraderConfig(workers=args.workers)

    t0 = time.perf_counter()
    with Grader(cfg) as g:
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        grades = g.grade_many(items)
        t_ours = time.perf_counter() - t1
        caps = g.capabilities
    n_exec = sum(len(g.timings) for g in grades)

    n = len(items)
    print(f"completions: {n}  workers: {args.workers}  isolation: "
          f"net={caps.get('net')} fs={caps.get('fs')} uid={caps.get('uid')} "
          f"pid={caps.get('pid')} memory={caps.get('memory')}")
    print(f"{'grader':<34}{'executions':>11}{'seconds':>9}{'compl/s':>9}{'exec/s':>8}")
    print(f"{'sandboxed zygote pool (ours)':<34}{n_exec:>11}{t_ours:>9.2f}{n / t_ours:>9.1f}"
          f"{n_exec / t_ours:>8.1f}")
    if args.no_baseline:
        return
    t2 = time.perf_counter()
    n_base = baseline(items, args.workers, cfg.timeout_s)
    t_base = time.perf_counter() - t2
    print(f"{'plain subprocess per execution':<34}{n_base:>11}{t_base:>9.2f}{n / t_base:>9.1f}"
          f"{n_base / t_base:>8.1f}")
    print(f"speed-up (completions/s, ours / baseline): {t_base / t_ours:.2f}x "
          f"(pool start-up {t_start:.2f}s not included)")


if __name__ == "__main__":
    main()
