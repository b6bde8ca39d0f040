"""The `probe` command: thin wrappers over the stages (`run`, `report`, `world`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _device(arg: str) -> str:
    if arg != "auto":
        return arg
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_world(a: argparse.Namespace) -> int:
    from probe.world.select import get_world

    world = get_world(a.world, refresh=a.refresh, out_dir=a.out)
    logging.getLogger("probe").info("world %s: %s", world.name, world.meta)
    sys.stdout.write(f"{world.name}: {world.model_id}\n")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from probe.stages.phase1 import Phase1Config, run_phase1
    from probe.world.select import get_world

    world = get_world(a.world, refresh=a.refresh, out_dir=a.out)
    cfg = Phase1Config()
    if a.steps is not None:
        cfg = replace(cfg, pool=replace(cfg.pool, steps=a.steps))
    paths = run_phase1(world, cfg, a.out, device=_device(a.device))
    sys.stdout.write(f"{paths.root}\n")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from probe.checks import load_paths
    from probe.report import write_report

    run = Path(a.run) if a.run else Path(a.out) / "probe_distill" / "latest"
    if not run.exists():
        sys.stderr.write(f"no run at {run}: run `probe run` first\n")
        return 2
    sys.stdout.write(f"{write_report(load_paths(run), a.out)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="probe", description=__doc__)
    ap.add_argument("--out", default="out", help="artifact root (default: out)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn, help_ in (("world", cmd_world, "build or load the world"),
                            ("run", cmd_run, "run (or resume) every Phase 1 stage"),
                            ("report", cmd_report, "write out/report.md from a run's artifacts")):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        if name in ("world", "run"):
            p.add_argument("--world", default="embedded",
                           help="'embedded' or a real-world JSON (base, teacher_adapter, problems)")
            p.add_argument("--refresh", action="store_true", help="rebuild the world")
        if name == "run":
            p.add_argument("--device", default="auto", help="cpu, cuda or auto")
            p.add_argument("--steps", type=int, help="teacher-pool / replay steps (default 20)")
        if name == "report":
            p.add_argument("--run", help="run directory (default: out/probe_distill/latest)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return a.fn(a)


if __name__ == "__main__":
    raise SystemExit(main())
