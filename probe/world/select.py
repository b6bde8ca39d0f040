"""Pick the world a run uses: 'embedded' (built or loaded from the cache) or a real-world JSON.

Stages and tests call `get_world(config.getoption("--world"))` and never ask which world they got.
"""
from __future__ import annotations

from pathlib import Path

from probe.world.base import World


def get_world(spec: str = "embedded", *, refresh: bool = False, out_dir: str | Path = "out") -> World:
    """'embedded' -> the default EmbeddedWorld (build-or-load); a JSON path -> a RealWorld."""
    if spec == "embedded":
        from probe.world.embedded.world import build_embedded_world

        return build_embedded_world(out_dir=out_dir, refresh=refresh)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        from probe.world.real import RealWorld, RealWorldConfig

        return RealWorld(RealWorldConfig.from_json(path))
    raise ValueError(f"unknown world {spec!r}: expected 'embedded' or the path of an existing "
                     f"real-world JSON config")
