"""Running the experiment's stages: one Phase 1 run = one config, one directory, one lock.

`probe run`, `probe replay`, `probe grpo` and the pytest stage fixtures all go through `Phase1Run`,
so a CLI run, a second CLI run and `pytest -m uat` (and its xdist workers) on one out/ exclude each
other around every Phase 1 stage and never generate the same stage twice. GRPO arm × seed jobs are
split between processes by their own locks (`probe.stages.grpo`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from filelock import FileLock, Timeout

from probe.io import sweep_stale_tmp, write_error
from probe.layout import Phase1Paths, R6Paths, run_paths

if TYPE_CHECKING:
    from probe.layout import GRPOPaths
    from probe.world.base import World

log = logging.getLogger(__name__)

PHASE1_LOCK = "probe_distill.lock"


def out_dir() -> Path:
    """The artifact root of a pytest session: $PROBE_OUT, default `out`."""
    return Path(os.environ.get("PROBE_OUT", "out"))


def refresh_once(requested: bool, out: str | Path, name: str) -> bool:
    """`--refresh` rebuilds each artifact once per test run, not once per xdist worker: the first
    caller of a run (PYTEST_XDIST_TESTRUNUID, else this process) leaves a marker, later ones
    see it and reuse what the first rebuilt."""
    if not requested:
        return False
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    marker = Path(out) / f".refreshed-{name}-{run_id}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(marker) + ".lock"):
        if marker.exists():
            return False
        marker.touch()
        return True


class Phase1Run:
    """The Phase 1 run of one config on one out/: `ensure` makes a stage under the run's lock.

    `world` is a World or a callable making one (the CLI builds it under the lock, as its first
    stage); `refresh()` says, once, whether to delete the run and regenerate it (pytest's
    `--refresh`, decided under the lock so no process reads a run another deletes)."""

    def __init__(self, world: World | Callable[[], World], cfg: Any, out: str | Path,
                 device: str = "cpu", refresh: Callable[[], bool] = lambda: False) -> None:
        self._world = world
        self.cfg, self.device, self.out = cfg, device, Path(out)
        if getattr(cfg, "compute", None) is not None:
            from probe.compute import apply

            apply(cfg.compute)
        self._refresh = refresh
        self.lock = FileLock(str(self.out / PHASE1_LOCK))
        self.paths: Phase1Paths | None = None  # prepared once per process

    @property
    def world(self) -> World:
        if callable(self._world):
            self._world = self._world()
        return self._world

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold `<out>/probe_distill.lock`: a second process on the same out/ waits (saying so)
        and then finds the stages complete, instead of writing beside the first. Re-entrant."""
        path = self.out / PHASE1_LOCK
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.lock.acquire(timeout=0)
            except Timeout:
                log.warning("another probe process is making Phase 1 stages in %s (lock %s): "
                            "waiting for it; its finished stages are then read, not redone",
                            self.out, path)
                self.lock.acquire()
        except OSError as e:  # a read-only or full out/: say so, naming the path
            raise write_error(path, e.errno, e.strerror or str(e)) from e
        try:
            yield
        finally:
            self.lock.release()

    def prepare(self) -> Phase1Paths:
        """The run directory, prepared once (under the lock); with a refresh, the run is deleted
        first and its shareable stages regenerated, not copied from a sibling run."""
        from probe.stages.phase1 import ensure_pool, ensure_vhack, prepare_run

        with self.locked():
            if self.paths is None:
                sweep_stale_tmp(self.out)  # what killed writers left; live writers' files stay
                refresh = self._refresh()
                if refresh:
                    shutil.rmtree(run_paths(self.world, self.cfg, self.out).root,
                                  ignore_errors=True)
                self.paths = prepare_run(self.world, self.cfg, self.out, reuse=not refresh)
                if refresh:
                    for shareable in (ensure_pool, ensure_vhack):  # regenerated, not copied
                        shareable(self.world, self.cfg, self.paths, self.device)
            return self.paths

    def ensure(self, stage: Callable[..., object], *args: object) -> Phase1Paths:
        """Run one `probe.stages.phase1.ensure_*` stage (`stage(world, cfg, paths, *args,
        device)`) under the lock; returns the run's paths."""
        with self.locked():
            paths = self.prepare()
            stage(self.world, self.cfg, paths, *args, self.device)
            return paths

    def replay(self, arm: str) -> Phase1Paths:
        from probe.stages.phase1 import ensure_arm

        return self.ensure(ensure_arm, arm)

    def all(self, arms: tuple[str, ...] | None = None) -> Phase1Paths:
        """Every Phase 1 stage: pool, v_hack, the student's start, each arm (default: the
        config's `arms`)."""
        from probe.stages.phase1 import run_phase1

        with self.locked():
            paths = self.prepare()
            run_phase1(self.world, self.cfg, self.out, device=self.device,
                       arms=self.cfg.arms if arms is None else arms, paths=paths)
            return paths

    def grpo(self) -> GRPOPaths:
        """R5: v_hack made (or loaded) under the run's lock, then every GRPO arm × seed of the
        config (those jobs lock themselves, so processes split them)."""
        from probe.stages.grpo import run_grpo
        from probe.stages.phase1 import ensure_vhack

        paths = self.ensure(ensure_vhack)
        return run_grpo(self.world, self.cfg, paths, self.out, self.device)

    def r6(self) -> "R6Paths":
        """R6: δS's v_hack (and pool) under the run's lock, then R5's δS vanilla arm, the LoRA
        v_hack and replay, and every R6 GRPO arm × seed (the GRPO jobs lock themselves)."""
        from probe.stages.phase1 import ensure_pool, ensure_vhack
        from probe.stages.r6 import run_r6

        with self.locked():
            paths = self.prepare()
            ensure_pool(self.world, self.cfg, paths, self.device)
            ensure_vhack(self.world, self.cfg, paths, self.device)
        return run_r6(self.world, self.cfg, paths, self.out, self.device)


def job_slots(n: int, gpus: list[str], cpus: int) -> list[dict[str, str]]:
    """The environment of each of `n` job workers: one GPU each (round robin over `gpus`, the
    visible device ids) when there are GPUs, else an equal share of the `cpus` threads."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(n)]
    threads = str(max(1, cpus // n))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(n)]


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES names them (else 0..count-1)."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _job_worker(env: dict[str, str], target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    # spawned: CUDA is not initialised yet, so the pinning takes effect at its first use
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    target(*args)


def run_jobs(n: int, target: Callable[..., Any], args: tuple[Any, ...] = ()) -> None:
    """`target(*args)` in `n` spawned worker processes, each pinned to one GPU (else a share of
    the CPU threads). The workers split the work themselves through the per-job file locks
    (`probe.stages.grpo._each_once`): each takes the jobs nobody holds, so the artifacts are the
    ones one process would write. `n == 1` runs `target` here."""
    if n < 1:
        raise ValueError(f"--jobs {n}: needs at least 1")
    if n == 1:
        target(*args)
        return
    import multiprocessing as mp

    gpus = visible_gpus()
    if gpus and n > len(gpus):
        log.warning("%d jobs on %d GPUs: some GPUs hold two workers", n, len(gpus))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_job_worker, args=(env, target, args), name=f"probe-job-{i}")
             for i, env in enumerate(job_slots(n, gpus, os.cpu_count() or 1))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [f"{p.name} (exit {p.exitcode})" for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"job workers failed: {', '.join(failed)}")
