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

from probe.io import write_error
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
