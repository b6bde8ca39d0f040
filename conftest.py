"""Root pytest configuration: tiers (unit / uat / gpu), world selection, hypothesis profiles.

The `gpu` tier is opt-in (`--gpu`), as PEFT's `--regression` and pytest's `--runslow` recipe do it:
items marked `gpu` skip with a reason unless the flag is given *and* CUDA is present.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("probe")
    group.addoption("--gpu", action="store_true", default=False,
                    help="run tests marked `gpu` (needs CUDA)")
    group.addoption("--world", default="embedded",
                    help="world for stages and uat verdicts: 'embedded' (default) or a path to a "
                         "real-world JSON config (base model dir, teacher adapter dir, problems JSONL)")
    group.addoption("--refresh", action="store_true", default=False,
                    help="rebuild cached artifacts under out/ instead of reading them")


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
