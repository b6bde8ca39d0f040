"""Shared access to the default embedded world for unit tests (one build per session, xdist-safe).

`build_embedded_world` serialises builders with a FileLock and rechecks `meta.json` under it, so
parallel workers wait for one build and then load it; the lru_cache keeps one load per process.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "out"


@lru_cache(maxsize=None)
def embedded_world(refresh: bool = False):
    from probe.world.embedded.world import build_embedded_world

    return build_embedded_world(out_dir=OUT, refresh=refresh)
