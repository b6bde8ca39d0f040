"""The `probe` command: thin wrappers over the stages (`world`, `pool`, `vhack`, `replay`, `grpo`,
`run` = all of them, `report`). Stage commands take the experiment config: `--config FILE` and
any key as a dotted flag (`--pool.steps 3 --replay.lr 0.01`); see probe.config."""
from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probe.config import ExperimentConfig
    from probe.layout import Phase1Paths
    from probe.orchestrate import Phase1Run


log = logging.getLogger("probe.cli")


def _device(arg: str) -> str:
    if arg != "auto":
        return arg
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _config(a: argparse.Namespace) -> ExperimentConfig:
    """The resolved experiment config: defaults < --config file < dotted flags (and --steps)."""
    from probe.config import load_config, overrides_from_args

    overrides = overrides_from_args(a)
    if getattr(a, "steps", None) is not None:
        overrides.setdefault("pool.steps", a.steps)
    return load_config(a.config, overrides)


def cmd_world(a: argparse.Namespace) -> int:
    from probe.world.select import get_world

    world = get_world(_config(a).world, refresh=a.refresh, out_dir=a.out, source=a.config)
    logging.getLogger("probe").info("world %s: %s", world.name, world.meta)
    sys.stdout.write(f"{world.name}: {world.model_id}\n")
    return 0


def _run(a: argparse.Namespace) -> Phase1Run:
    """The Phase 1 run every stage command shares (`probe.orchestrate`, as the pytest fixtures):
    its world is built or loaded under the run's lock, as the first thing the run does."""
    from probe.orchestrate import Phase1Run
    from probe.rl.distributed import init_from_env, rank_and_size
    from probe.world.select import get_world

    cfg = _config(a)
    # under torchrun (WORLD_SIZE > 1) this joins the process group: GRPO's groups and rows are
    # split over the ranks (probe.rl.distributed); the Phase 1 stages are made by the first
    # rank to take the run's lock and read by the others
    device = init_from_env(_device(a.device))
    if getattr(a, "jobs", 1) > 1 and rank_and_size()[1] > 1:
        from probe.config import ConfigError

        raise ConfigError("--jobs > 1 under torchrun: use one or the other")
    return Phase1Run(lambda: get_world(cfg.world, refresh=a.refresh, out_dir=a.out, source=a.config),
                     cfg, a.out, device)


def cmd_run(a: argparse.Namespace) -> int:
    run = _run(a)
    if a.jobs > 1:  # the shared stages here, under the run's lock; the replay arms in workers
        from probe.orchestrate import run_jobs
        from probe.stages.phase1 import ensure_pool, ensure_student_start, ensure_vhack

        with run.locked():
            paths = run.prepare()
            for stage in (ensure_pool, ensure_vhack, ensure_student_start):
                stage(run.world, run.cfg, paths, run.device)
            run_jobs(a.jobs, _replay_job, (_worker_args(a), paths))
    paths = run.all()  # after the workers: every stage is read, none made again
    sys.stdout.write(f"{paths.root}\n")
    return 0


def _worker_args(a: argparse.Namespace) -> argparse.Namespace:
    """A job worker's arguments: the parent already built (or refreshed) the world."""
    return argparse.Namespace(**{**vars(a), "refresh": False, "jobs": 1})


def _replay_job(a: argparse.Namespace, paths: Phase1Paths) -> None:
    """One `probe run --jobs` worker: the replay arms nobody else holds (per-arm locks), while
    the parent holds the run's lock."""
    from probe.stages.grpo import _each_once
    from probe.stages.phase1 import ensure_arm
    from probe.world.select import get_world

    cfg = _config(a)
    world = get_world(cfg.world, refresh=False, out_dir=a.out, source=a.config)
    device = _device(a.device)
    _each_once([(str(paths.arm(arm)) + ".lock",
                 lambda arm=arm: ensure_arm(world, cfg, paths, arm, device)) for arm in cfg.arms])


def _grpo_job(a: argparse.Namespace) -> None:
    """One `probe grpo --jobs` worker: the GRPO (arm, seed) jobs nobody else holds."""
    _run(a).grpo()


def cmd_pool(a: argparse.Namespace) -> int:
    from probe.stages.phase1 import ensure_pool

    sys.stdout.write(f"{_run(a).ensure(ensure_pool).pool}\n")
    return 0


def cmd_vhack(a: argparse.Namespace) -> int:
    from probe.stages.phase1 import ensure_vhack

    sys.stdout.write(f"{_run(a).ensure(ensure_vhack).vhack}\n")
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    run = _run(a)
    with run.locked():
        for arm in a.arm or run.cfg.arms:
            sys.stdout.write(f"{run.replay(arm).arm(arm)}\n")
    return 0


def cmd_grpo(a: argparse.Namespace) -> int:
    run = _run(a)
    if a.jobs > 1:  # world and v_hack here, once; the (arm, seed) jobs in workers
        from probe.orchestrate import run_jobs
        from probe.stages.phase1 import ensure_vhack

        run.ensure(ensure_vhack)
        run_jobs(a.jobs, _grpo_job, (_worker_args(a),))
    sys.stdout.write(f"{run.grpo().root}\n")  # after the workers: every job is read, none redone
    return 0


def cmd_r6(a: argparse.Namespace) -> int:
    sys.stdout.write(f"{_run(a).r6().root}\n")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from probe.layout import load_paths
    from probe.report import write_report

    run = Path(a.run) if a.run else Path(a.out) / "probe_distill" / "latest"
    if not run.exists():
        sys.stderr.write(f"no run at {run}: run `probe run` first\n")
        return 2
    grpo = Path(a.out) / "probe_grpo" / "latest"
    r6 = Path(a.out) / "probe_r6" / "latest"
    report = write_report(load_paths(run), a.out, grpo if grpo.exists() else None,
                          r6 if r6.exists() else None)
    sys.stdout.write(f"{report}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="probe", description=__doc__)
    ap.add_argument("--out", default="out", help="artifact root (default: out)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    from probe.config import add_config_flags
    from probe.arms import REPLAY_ARMS

    stages = {"run": (cmd_run, "run (or resume) every Phase 1 stage"),
              "pool": (cmd_pool, "T1: generate (or resume) the teacher pool"),
              "vhack": (cmd_vhack, "extract v_hack and its random / shuffled controls"),
              "replay": (cmd_replay,
                         "T2/T3: replay arms on the pool (makes pool and v_hack if missing)"),
              "grpo": (cmd_grpo, "R5: GRPO arms x seeds on mixed teacher/student groups "
                                 "(makes v_hack if missing)"),
              "r6": (cmd_r6, "R6: the LoRA student against δS (LoRA v_hack, replay and GRPO "
                             "arms with drift measured)")}
    for name, (fn, help_) in {"world": (cmd_world, "build or load the world"), **stages,
                              "report": (cmd_report, "write out/report.md from a run's artifacts")
                              }.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        if name == "world" or name in stages:
            p.add_argument("--refresh", action="store_true", help="rebuild the world")
            # every config key as a dotted flag; `--world` is the config's `world` key:
            # 'embedded' or a real-world JSON (base, teacher_adapter, problems)
            add_config_flags(p)
        if name in stages:
            p.add_argument("--device", default="auto", help="cpu, cuda or auto")
            p.add_argument("--steps", type=int, help="same as --pool.steps (teacher-pool / replay "
                                                     "steps, default 20)")
        if name in ("run", "grpo"):
            p.add_argument("--jobs", type=int, default=1,
                           help="worker processes, each pinned to one GPU (else a share of the "
                                "CPU threads), splitting the %s through per-job locks; under "
                                "torchrun keep 1" % ("replay arms" if name == "run"
                                                     else "(arm, seed) jobs"))
        if name == "replay":
            p.add_argument("--arm", nargs="+", choices=REPLAY_ARMS, default=None,
                           help="which arms (default: the config's `arms`, all four)")
        if name == "report":
            p.add_argument("--run", help="run directory (default: out/probe_distill/latest)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from probe.config import ConfigError
    from probe.io import OutputWriteError, write_error

    try:
        return a.fn(a)
    except (ConfigError, FileNotFoundError) as e:  # a bad config or path: the message, no trace
        sys.stderr.write(f"probe {a.cmd}: {e}\n")
        return 2
    except OutputWriteError as e:  # out/ full or read-only: what and where, no trace
        sys.stderr.write(f"probe {a.cmd}: {e.strerror}\n")
        return 3
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        sys.stderr.write(f"probe {a.cmd}: {write_error(e.filename, e.errno, e.strerror).strerror}\n")
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
