"""Pick the world a run uses: 'embedded' (built or loaded from the cache) or a real-world JSON.

Stages and tests call `get_world(experiment_config.world)` and never ask which world they got.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from probe.world.base import World

if TYPE_CHECKING:
    from probe.world.real import RealWorldConfig


def get_world(spec: "str | RealWorldConfig" = "embedded", *, refresh: bool = False,
              out_dir: str | Path = "out", source: str | Path | None = None) -> World:
    """'embedded' -> the default EmbeddedWorld (build-or-load); a JSON path or a RealWorldConfig
    (an experiment config's [world] table; `source`: that config file, for errors) -> a
    RealWorld, its paths checked up front."""
    from probe.world.real import RealWorld, RealWorldConfig

    if isinstance(spec, RealWorldConfig):
        return RealWorld(spec, source=f"{source or 'the experiment config'} [world]")
    if spec == "embedded":
        from probe.world.embedded.build import build_embedded_world

        return build_embedded_world(out_dir=out_dir, refresh=refresh)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return RealWorld.from_json(path)
    raise ValueError(f"unknown world {spec!r}: expected 'embedded' or the path of an existing "
                     f"real-world JSON config")
