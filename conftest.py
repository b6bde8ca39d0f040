"""Root pytest configuration: tiers (unit / uat / gpu), the session's stage fixtures, hypothesis
profiles. The options (--gpu, --world, --refresh, --config, --set) live in probe.pytest_plugin.

The `gpu` tier is opt-in (`--gpu`), as PEFT's `--regression` and pytest's `--runslow` recipe do it:
items marked `gpu` skip with a reason unless the flag is given *and* CUDA is present.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from probe.layout import Phase1Paths
    from probe.orchestrate import Phase1Run
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
# The orchestration (one run, one lock, `--refresh` once per test run) is probe.orchestrate's, the
# same `probe run` uses; the fixtures below only name the stages.

def _refresh(config: pytest.Config, name: str) -> bool:
    from probe.orchestrate import out_dir, refresh_once

    return refresh_once(config.getoption("--refresh"), out_dir(), name)


@pytest.fixture(scope="session")
def world(request: pytest.FixtureRequest) -> "World":
    """The selected world (the config's `world`, or `--world`): the embedded model organism by
    default, built once."""
    from filelock import FileLock

    from probe.orchestrate import out_dir
    from probe.pytest_plugin import experiment_config
    from probe.world.select import get_world

    out = out_dir()
    out.mkdir(parents=True, exist_ok=True)
    # `--refresh` is decided under a lock the loading workers also take: none of them loads a
    # world that the refreshing worker is about to delete.
    with FileLock(str(out / "world.fixture.lock")):
        return get_world(experiment_config(request.config).world,
                         refresh=_refresh(request.config, "world"), out_dir=out,
                         source=request.config.getoption("--config"))


@pytest.fixture(scope="session")
def phase1_run(request: pytest.FixtureRequest, world: "World") -> "Phase1Run":
    """The session's Phase 1 run: one config, one directory, one lock shared by every stage
    fixture (and by `probe run` on the same out/), so xdist workers never make a stage twice."""
    import torch

    from probe.orchestrate import Phase1Run, out_dir
    from probe.pytest_plugin import experiment_config

    config = request.config
    device = "cuda" if config.getoption("--gpu") and torch.cuda.is_available() else "cpu"
    return Phase1Run(world, experiment_config(config), out_dir(), device,
                     refresh=lambda: _refresh(config, "phase1"))


@pytest.fixture(scope="session")
def teacher_pool(phase1_run: "Phase1Run") -> "Phase1Paths":
    """T1 artifacts (the teacher pool), generated or resumed; the run's paths."""
    from probe.stages.phase1 import ensure_pool

    return phase1_run.ensure(ensure_pool)


@pytest.fixture(scope="session")
def v_hack(phase1_run: "Phase1Run") -> "Phase1Paths":
    """v_hack and its random / shuffled controls, extracted or loaded; the run's paths."""
    from probe.stages.phase1 import ensure_vhack

    return phase1_run.ensure(ensure_vhack)


@pytest.fixture(scope="session")
def vanilla_replay(phase1_run: "Phase1Run", teacher_pool: "Phase1Paths", v_hack: "Phase1Paths"
                   ) -> "Phase1Paths":
    """T2: vanilla replay on the pool; the run's paths."""
    return phase1_run.replay("vanilla")


@pytest.fixture(scope="session")
def projected_replay(phase1_run: "Phase1Run", teacher_pool: "Phase1Paths", v_hack: "Phase1Paths"
                     ) -> "Phase1Paths":
    """T3: projected replay on the pool; the run's paths."""
    return phase1_run.replay("projected")


@pytest.fixture(scope="session")
def phase1(phase1_run: "Phase1Run", vanilla_replay: "Phase1Paths",
           projected_replay: "Phase1Paths") -> "Phase1Paths":
    """Every Phase 1 artifact: each arm of the config (`probe.arms`; R3's specificity checks need
    the control arms too)."""
    for arm in phase1_run.cfg.arms:
        phase1_run.replay(arm)
    return vanilla_replay


@pytest.fixture(scope="session")
def grpo_run(phase1_run: "Phase1Run", v_hack: "Phase1Paths"):
    """R5: every GRPO arm × seed of the config (each under its own lock, so xdist workers split
    them); returns (paths, GRPO config)."""
    return phase1_run.grpo(), phase1_run.cfg.grpo


@pytest.fixture(scope="session")
def r6_run(phase1_run: "Phase1Run", vanilla_replay: "Phase1Paths"):
    """R6: the LoRA v_hack and replay, δS's and LoRA's GRPO arms × seeds (R5's δS vanilla arm
    included; δS's vanilla replay for T4 side by side); returns (R6 paths, Phase 1 paths,
    experiment config)."""
    return phase1_run.r6(), vanilla_replay, phase1_run.cfg


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
    from probe.orchestrate import out_dir

    path = out_dir() / "verdicts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
