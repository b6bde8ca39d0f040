"""The project's pytest options, registered where pytest finds them before it picks the rootdir.

Installed as the `pytest11` entry point `probe.pytest_plugin` (pyproject.toml), so
`pytest -m uat --world /abs/real.json` works: an option that pytest does not know yet makes it
read `/abs/real.json` as a test path, choose another rootdir and never load the project's conftest.
The root conftest lists this module in `pytest_plugins` too, for checkouts that are not
pip-installed; pytest registers a plugin once per name, so the options are never added twice.

The experiment config (`--config FILE`, `--set KEY=VALUE`, `--world`) is resolved once per
session by `experiment_config(config)`; a bad file or key stops the run at start-up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from probe.config import ExperimentConfig

_KEY = pytest.StashKey["ExperimentConfig"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("probe")
    group.addoption("--gpu", action="store_true", default=False,
                    help="run tests marked `gpu` (needs CUDA)")
    group.addoption("--world", default=None,
                    help="world for stages and uat verdicts: 'embedded' (default) or a path to a "
                         "real-world JSON config (base model dir, teacher adapter dir, problems "
                         "JSONL); overrides the --config file's `world`")
    group.addoption("--refresh", action="store_true", default=False,
                    help="rebuild cached artifacts under out/ instead of reading them")
    group.addoption("--config", default=None, metavar="FILE",
                    help="TOML experiment config (configs/*.toml; default: the built-in defaults)")
    group.addoption("--set", action="append", default=[], metavar="KEY=VALUE", dest="probe_set",
                    help="override one config key, e.g. --set pool.steps=3 (repeatable)")


def experiment_config(config: pytest.Config) -> ExperimentConfig:
    """The session's resolved experiment config: defaults < --config < --set < --world."""
    if _KEY not in config.stash:
        from probe.config import load_config, parse_assignments

        overrides = parse_assignments(config.getoption("probe_set"))
        if config.getoption("--world") is not None:
            overrides["world"] = config.getoption("--world")
        config.stash[_KEY] = load_config(config.getoption("--config"), overrides)
    return config.stash[_KEY]


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--config") or config.getoption("probe_set"):
        from probe.config import ConfigError

        try:
            experiment_config(config)  # a bad config is a usage error now, not 40 test errors
        except ConfigError as e:
            raise pytest.UsageError(str(e)) from None
