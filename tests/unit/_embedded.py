"""Shared access to the default embedded world for unit tests (one build per run, xdist-safe).

`build_embedded_world` serialises builders with a FileLock and rechecks `meta.json` under it, so
parallel workers wait for one build and then load it. `--refresh` goes through
`probe.orchestrate.refresh_once(..., "world")`, the same marker the session `world` fixture uses,
so a run rebuilds the world once, not once per worker or per caller.
"""
from __future__ import annotations

from typing import Any

_CACHE: dict[int, Any] = {}


def embedded_world(config: Any):
    """The default EmbeddedWorld under the run's out dir (PROBE_OUT, default `out`)."""
    if id(config) not in _CACHE:
        from probe.orchestrate import out_dir, refresh_once
        from probe.world.embedded.build import build_embedded_world

        _CACHE[id(config)] = build_embedded_world(
            out_dir=out_dir(), refresh=refresh_once(config.getoption("--refresh"), out_dir(), "world"))
    return _CACHE[id(config)]
