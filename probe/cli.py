"""The `probe` command: thin wrappers over the stages (`world`, `pool`, `vhack`, `replay`,
`run` = all of them, `report`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probe.stages.phase1 import Phase1Config, Phase1Paths
    from probe.world.base import World


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


def _stage_setup(a: argparse.Namespace) -> tuple[World, Phase1Config, Phase1Paths, str]:
    """World, config (with --steps) and the prepared run directory every stage command shares."""
    from dataclasses import replace

    from probe.stages.phase1 import Phase1Config, prepare_run
    from probe.world.select import get_world

    world = get_world(a.world, refresh=a.refresh, out_dir=a.out)
    cfg = Phase1Config()
    if a.steps is not None:
        cfg = replace(cfg, pool=replace(cfg.pool, steps=a.steps))
    return world, cfg, prepare_run(world, cfg, a.out), _device(a.device)


def cmd_run(a: argparse.Namespace) -> int:
    from probe.stages.phase1 import run_phase1

    world, cfg, paths, device = _stage_setup(a)
    run_phase1(world, cfg, a.out, device=device, paths=paths)
    sys.stdout.write(f"{paths.root}\n")
    return 0


def cmd_pool(a: argparse.Namespace) -> int:
    from probe.stages.phase1 import ensure_pool

    world, cfg, paths, device = _stage_setup(a)
    ensure_pool(world, cfg, paths, device)
    sys.stdout.write(f"{paths.pool}\n")
    return 0


def cmd_vhack(a: argparse.Namespace) -> int:
    from probe.stages.phase1 import ensure_vhack

    world, cfg, paths, device = _stage_setup(a)
    ensure_vhack(world, cfg, paths, device)
    sys.stdout.write(f"{paths.vhack}\n")
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from probe.stages.phase1 import ensure_arm

    world, cfg, paths, device = _stage_setup(a)
    for arm in a.arm:
        ensure_arm(world, cfg, paths, arm, device)
        sys.stdout.write(f"{paths.arm(arm)}\n")
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
    from probe.stages.replay import ARMS

    stages = {"run": (cmd_run, "run (or resume) every Phase 1 stage"),
              "pool": (cmd_pool, "T1: generate (or resume) the teacher pool"),
              "vhack": (cmd_vhack, "extract v_hack and its random / shuffled controls"),
              "replay": (cmd_replay,
                         "T2/T3: replay arms on the pool (makes pool and v_hack if missing)")}
    for name, (fn, help_) in {"world": (cmd_world, "build or load the world"), **stages,
                              "report": (cmd_report, "write out/report.md from a run's artifacts")
                              }.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        if name == "world" or name in stages:
            p.add_argument("--world", default="embedded",
                           help="'embedded' or a real-world JSON (base, teacher_adapter, problems)")
            p.add_argument("--refresh", action="store_true", help="rebuild the world")
        if name in stages:
            p.add_argument("--device", default="auto", help="cpu, cuda or auto")
            p.add_argument("--steps", type=int, help="teacher-pool / replay steps (default 20)")
        if name == "replay":
            p.add_argument("--arm", nargs="+", choices=ARMS, default=list(ARMS),
                           help="which arms (default: all)")
        if name == "report":
            p.add_argument("--run", help="run directory (default: out/probe_distill/latest)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return a.fn(a)


if __name__ == "__main__":
    raise SystemExit(main())
