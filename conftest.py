"""Root pytest configuration: tiers (unit / uat / gpu), the session's stage fixtures, hypothesis
profiles. The options (--gpu, --world, --refresh, --config, --set) live in probe.pytest_plugin.

The `gpu` tier is opt-in (`--gpu`), as PEFT's `--regression` and pytest's `--runslow` recipe do it:
items marked `gpu` skip with a reason unless the flag is given *and* CUDA is present.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from probe.stages.phase1 import Phase1Paths
    from probe.world.base import World

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Registered by the `pytest11` entry point when the package is installed (so that the options are
# known before pytest picks a rootdir); named here too for a checkout that is not installed.
# pytest loads a plugin once per name, so this never adds the options twice.
pytest_plugins = ["probe.pytest_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    # xdist workers share the cores: more than one intra-op thread each makes torch spin-wait
    # against the other worker (measured here: steps up to 50x slower under contention).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--gpu"):
        import torch

        if torch.cuda.is_available():
            return
        reason = "--gpu given but CUDA is not available on this machine"
    else:
        reason = "GPU tier: pass --gpu to run (needs CUDA)"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# -- session artifacts: built once (xdist-safe), read by the requirement modules ------------------

def _out_dir() -> Path:
    return Path(os.environ.get("PROBE_OUT", "out"))


def _refresh_once(config: pytest.Config, name: str) -> bool:
    """`--refresh` rebuilds each artifact once per test run, not once per xdist worker."""
    if not config.getoption("--refresh"):
        return False
    from filelock import FileLock

    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    marker = _out_dir() / f".refreshed-{name}-{run_id}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(marker) + ".lock"):
        if marker.exists():
            return False
        marker.touch()
        return True


def _device(config: pytest.Config) -> str:
    import torch

    return "cuda" if config.getoption("--gpu") and torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def world(request: pytest.FixtureRequest):
    """The selected world (the config's `world`, or `--world`): the embedded model organism by
    default, built once."""
    from filelock import FileLock

    from probe.pytest_plugin import experiment_config
    from probe.world.select import get_world

    out = _out_dir()
    out.mkdir(parents=True, exist_ok=True)
    # `--refresh` is decided under a lock the loading workers also take: none of them loads a
    # world that the refreshing worker is about to delete.
    with FileLock(str(out / "world.fixture.lock")):
        return get_world(experiment_config(request.config).world,
                         refresh=_refresh_once(request.config, "world"), out_dir=out,
                         source=request.config.getoption("--config"))


class _Run:
    """The session's Phase 1 run: one config, one directory, one lock shared by every stage
    fixture, so xdist workers never generate the same stage twice."""

    def __init__(self, config: pytest.Config, world: "World") -> None:
        from filelock import FileLock

        from probe.pytest_plugin import experiment_config

        self.config, self.world = config, world
        self.cfg, self.device = experiment_config(config), _device(config)
        self.out = _out_dir()
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.out / "probe_distill.lock"))
        self.paths: Phase1Paths | None = None  # prepared once per worker

    def ensure(self, stage: Callable[..., object], *args: object) -> "Phase1Paths":
        """Run one `probe.stages.phase1.ensure_*` stage under the lock; returns the run's paths.
        `--refresh` is decided under the same lock, so no worker reads a run another deletes,
        and a refreshed run regenerates its stages instead of copying them from a sibling run."""
        import shutil

        from probe.stages.phase1 import ensure_pool, ensure_vhack, prepare_run, run_paths

        with self.lock:
            if self.paths is None:
                refresh = _refresh_once(self.config, "phase1")
                if refresh:
                    shutil.rmtree(run_paths(self.world, self.cfg, self.out).root,
                                  ignore_errors=True)
                self.paths = prepare_run(self.world, self.cfg, self.out, reuse=not refresh)
                if refresh:
                    for shareable in (ensure_pool, ensure_vhack):  # regenerated, not copied
                        shareable(self.world, self.cfg, self.paths, self.device)
            stage(self.world, self.cfg, self.paths, *args, self.device)
            return self.paths


@pytest.fixture(scope="session")
def phase1_run(request: pytest.FixtureRequest, world: "World") -> _Run:
    return _Run(request.config, world)


@pytest.fixture(scope="session")
def teacher_pool(phase1_run: _Run) -> "Phase1Paths":
    """T1 artifacts (the teacher pool), generated or resumed; the run's paths."""
    from probe.stages.phase1 import ensure_pool

    return phase1_run.ensure(ensure_pool)


@pytest.fixture(scope="session")
def v_hack(phase1_run: _Run) -> "Phase1Paths":
    """v_hack and its random / shuffled controls, extracted or loaded; the run's paths."""
    from probe.stages.phase1 import ensure_vhack

    return phase1_run.ensure(ensure_vhack)


def _replay(phase1_run: _Run, arm: str) -> "Phase1Paths":
    from probe.stages.phase1 import ensure_arm

    return phase1_run.ensure(ensure_arm, arm)


@pytest.fixture(scope="session")
def vanilla_replay(phase1_run: _Run, teacher_pool: "Phase1Paths", v_hack: "Phase1Paths"
                   ) -> "Phase1Paths":
    """T2: vanilla replay on the pool; the run's paths."""
    return _replay(phase1_run, "vanilla")


@pytest.fixture(scope="session")
def projected_replay(phase1_run: _Run, teacher_pool: "Phase1Paths", v_hack: "Phase1Paths"
                     ) -> "Phase1Paths":
    """T3: projected replay on the pool; the run's paths."""
    return _replay(phase1_run, "projected")


@pytest.fixture(scope="session")
def phase1(phase1_run: _Run, vanilla_replay: "Phase1Paths", projected_replay: "Phase1Paths"
           ) -> "Phase1Paths":
    """Every Phase 1 artifact, control arms included (R3's specificity checks need them all)."""
    for arm in phase1_run.cfg.arms:
        _replay(phase1_run, arm)
    return vanilla_replay


@pytest.fixture(scope="session")
def grpo_run(phase1_run: _Run, v_hack: "Phase1Paths"):
    """R5: every GRPO arm × seed of the config (each under its own lock, so xdist workers split
    them); returns (paths, GRPO config)."""
    from probe.stages.grpo import run_grpo

    run = phase1_run
    with run.lock:  # v_hack is loaded (made by the v_hack fixture) under the run's lock
        from probe.stages.phase1 import ensure_vhack

        ensure_vhack(run.world, run.cfg, v_hack, run.device)
    return run_grpo(run.world, run.cfg, v_hack, run.out, run.device), run.cfg.grpo


# -- the verdict table printed at the end of `pytest -m uat` --------------------------------------

_VERDICTS: list[dict] = []


@pytest.fixture
def verdict(record_property):
    """Record a requirement's statistic, threshold and verdict (travels through xdist reports)."""
    def record(requirement: str, check: str, statistic: str, threshold: str, passed: bool) -> None:
        record_property("verdict", {"requirement": requirement, "check": check,
                                    "statistic": statistic, "threshold": threshold,
                                    "passed": bool(passed)})
    return record


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for key, value in report.user_properties:
        if key == "verdict":
            _VERDICTS.append({**value, "outcome": report.outcome, "test": report.nodeid})


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if not _VERDICTS or hasattr(config, "workerinput"):
        return
    import json

    rows = sorted(_VERDICTS, key=lambda v: (v["requirement"], v["check"]))
    tr = terminalreporter
    tr.section("requirement verdicts")
    w = max(len(v["check"]) for v in rows)
    for v in rows:
        mark = "PASS" if v["passed"] and v["outcome"] == "passed" else "FAIL"
        tr.write_line(f"{v['requirement']:<3} {v['check']:<{w}}  {mark}  "
                      f"{v['statistic']}  (threshold: {v['threshold']})")
    path = _out_dir() / "verdicts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
