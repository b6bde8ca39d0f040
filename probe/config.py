"""One experiment config: a frozen dataclass tree, read from TOML, overridden by dotted flags.

    probe run --config configs/qwen3-4b.toml --pool.steps 3 --replay.lr 0.01
    pytest -m uat --config configs/qwen3-4b.toml --set pool.steps=3

The tree is `ExperimentConfig`: the Phase 1 sections (`Phase1Config`: pool, vhack, replay,
student_eval, grader), the world and the arms. A section is one dataclass field here; its TOML
table, its `--section.key` flags and its validation follow from the field.

The library is `dacite` (dict -> dataclass, zero dependencies, `strict=True` rejects unknown keys
and checks every value against the field's type hint, naming the dotted field). TOML is parsed by
the stdlib `tomllib` (`tomli` on Python 3.10). Flags are derived from the same tree (argparse) and
applied to the parsed dict *before* dacite builds it, so a file and a flag are validated by the
same code and fail the same way. What dacite cannot know (a positive count, a known projection
mode) is checked by `RULES` afterwards. Every error is a `ConfigError` naming the key and where it
came from (the file, or the command line).
"""
from __future__ import annotations

import argparse
import logging
import sys
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import dacite

from probe.arms import GRPO_ARMS, REPLAY_ARMS, arm_names
from probe.artifacts import AUTO
from probe.compute import FUSED_SETTINGS, ComputeConfig
from probe.env.prompts import HINTS
from probe.adapters.lora import INITS as LORA_INITS
from probe.precision import SETTINGS
from probe.project import MODES
from probe.rl.config import CORRECTIONS, GRPOConfig
from probe.stages.phase1 import Phase1Config
from probe.stages.r6 import R6Config
from probe.world.real import RealWorldConfig, resolve_relative

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

COMMAND_LINE = "the command line"


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type or a bad value; the message names key and file."""


@dataclass(frozen=True)
class ExperimentConfig(Phase1Config):
    """Everything a run is made of. The Phase 1 sections (inherited) key the Phase 1 artifacts;
    the fields below select what runs. Add a section as one field with a `default_factory`."""

    # 'embedded', the path of a real-world JSON, or a [world] table (RealWorldConfig's keys)
    world: str | RealWorldConfig = "embedded"
    # replay arms `probe run` and the uat fixtures run (R3's specificity checks need all four)
    arms: tuple[str, ...] = arm_names("replay", default_only=True)
    # Phase 2: the GRPO trajectory probe (R5); keys its own run directory, not Phase 1's
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    # R6: the LoRA arm against δS (keys its own run directory)
    r6: R6Config = field(default_factory=R6Config)
    # how the run computes (GPU speed switches; no cache key): probe/compute.py
    compute: ComputeConfig = field(default_factory=ComputeConfig)


# -- values dacite cannot judge: dotted key -> check returning the problem, or None ---------------

def _positive(v: Any) -> str | None:
    return None if v is None or v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v is None or v >= 0 else "must be >= 0"


def _unit_interval(v: Any) -> str | None:
    return None if v is None or 0 < v <= 1 else "must be in (0, 1]"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        vals = v if isinstance(v, tuple) else (v,)
        bad = [x for x in vals if x not in choices]
        return f"{bad[0]!r} is not one of {list(choices)}" if bad else None
    return check


def _non_empty(v: Any) -> str | None:
    return None if len(v) else "must not be empty"


def _batch(v: Any) -> str | None:
    ok = v == AUTO or (type(v) is int and v > 0)
    return None if ok else f"must be a positive integer or {AUTO!r}"


# batch sizes: a positive int, or "auto" (sized from free memory, probe.memory)
BATCH_KNOBS = ("pool.gen_batch_size", "vhack.batch_size", "replay.micro_batch",
               "student_eval.gen_batch_size", "grpo.micro_batch", "grpo.gen_batch_size")


RULES: dict[str, Callable[[Any], str | None]] = {
    **{k: _positive for k in (
        "pool.steps", "pool.problems_per_step", "pool.group_size",
        "pool.temperature", "pool.max_new_tokens", "vhack.k", "replay.lr",
        "replay.max_grad_norm", "replay.rank", "student_eval.n_problems",
        "student_eval.group_size", "grader.timeout_s",
        "grader.memory_mb", "grader.max_output_bytes", "world.max_new_tokens",
        "grpo.steps", "grpo.problems_per_step", "grpo.group_size", "grpo.max_new_tokens",
        "grpo.temperature", "grpo.lr", "grpo.max_grad_norm", "grpo.updates_per_batch",
        "grpo.epsilon", "grpo.epsilon_high", "grpo.is_cap", "grpo.luffy_gamma",
        "grpo.refresh_every", "r6.rank", "r6.alpha", "r6.replay_lr", "r6.grpo_lr")},
    **{k: _batch for k in BATCH_KNOBS},
    **{k: _non_negative for k in (
        "pool.base_reference_steps", "vhack.noise_floor", "replay.weight_decay",
        "replay.null_directions", "grader.workers", "grpo.weight_decay", "r6.drift_every")},
    "r6.init": _one_of(LORA_INITS), "compute.fused_svd": _one_of(FUSED_SETTINGS),
    "compute.flat_ops": _one_of(FUSED_SETTINGS),
    "pool.top_p": _unit_interval, "grpo.top_p": _unit_interval,
    "grpo.teacher_frac": lambda v: None if 0 <= v <= 1 else "must be in [0, 1]",
    "grpo.correction": _one_of(CORRECTIONS), "grpo.projection": _one_of(MODES),
    "grpo.hint": _one_of(HINTS),
    "grpo.arms": lambda v: _non_empty(v) or _one_of(tuple(GRPO_ARMS))(v)
    or (None if "vanilla" in v else "must include 'vanilla' (every R5 comparison is against it)"),
    "grpo.seeds": _non_empty,
    "world.dtype": _one_of(SETTINGS),
    "pool.hint": _one_of(HINTS), "student_eval.hint": _one_of(HINTS), "world.hint": _one_of(HINTS),
    "replay.projection": _one_of(MODES), "vhack.shuffled": _one_of(("orthogonal", "balanced")),
    "arms": lambda v: _non_empty(v) or _one_of(REPLAY_ARMS)(v),
}

_HOOKS: dict[Any, Callable[[Any], Any]] = {
    # TOML `lr = 1` is an int: a float field stores 1.0, so it hashes as the same config as `1.0`
    float: lambda v: float(v) if type(v) is int else v,
    # TOML arrays are lists; a string stays a string (and fails the type check, not split in chars)
    tuple[str, ...]: lambda v: tuple(v) if isinstance(v, list) else v,
    tuple[int, ...]: lambda v: tuple(v) if isinstance(v, list) else v,
}
_DACITE = dacite.Config(strict=True, type_hooks=_HOOKS)


# -- the tree's keys ----------------------------------------------------------------------------

def leaf_keys(cls: type = ExperimentConfig, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, type hint, default) of every settable leaf; a section recurses, the world
    is one key (a string here; a real world's keys are a [world] table in the file)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        hint, key = hints[f.name], prefix + f.name
        if is_dataclass(hint):
            yield from leaf_keys(hint, key + ".")
        else:
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            yield key, hint, None if default is MISSING else default


def _unknown_keys(cls: type, data: Mapping[str, Any], prefix: str = ""
                  ) -> list[tuple[str, type]]:
    """(dotted key, its table's class) for keys in `data` the tree lacks (dacite names the key but
    not its table)."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, type]] = []
    for k, v in data.items():
        if k not in hints:
            out.append((prefix + k, cls))
        elif is_dataclass(hints[k]) and isinstance(v, Mapping):
            out += _unknown_keys(hints[k], v, f"{prefix}{k}.")
    return out


# -- loading ------------------------------------------------------------------------------------

def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def parse_value(text: str) -> Any:
    """A flag's value in TOML syntax (`3`, `0.01`, `true`, `["a", "b"]`), else the bare string;
    `none` is None (TOML has no null)."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *tables, leaf = key.split(".")
    node = data
    for i, t in enumerate(tables):
        nxt = node.setdefault(t, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{COMMAND_LINE}: {key}: {'.'.join(tables[:i + 1])} is not a table")
        node = nxt
    node[leaf] = value


def _world_from(value: Any, origin: Path) -> Any:
    """Paths in a config file's `world` (a [world] table's, or a real-world JSON path) are
    relative to the file."""
    base = origin.parent
    if isinstance(value, Mapping):
        return resolve_relative(dict(value), base)
    if isinstance(value, str) and value != "embedded" and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
                ) -> ExperimentConfig:
    """The resolved experiment config: defaults < the TOML file < `overrides` (dotted keys).
    Raises ConfigError naming the key and the file (or the command line)."""
    origin = Path(path).resolve() if path is not None else None
    data: dict[str, Any] = read_toml(origin) if origin is not None else {}
    where = {k: str(origin) for k, _, _ in leaf_keys()}
    if "world" in data:
        data["world"] = _world_from(data["world"], origin)
    for key, value in (overrides or {}).items():  # a flag's path is relative to the cwd
        _set_dotted(data, key, value)
        where[key] = f"{COMMAND_LINE} (--{key})"

    def fail(key: str, msg: str) -> ConfigError:
        src = where.get(key) or (str(origin) if origin else COMMAND_LINE)
        return ConfigError(f"{src}: {key}: {msg}")

    if isinstance(data.get("world"), Mapping):
        data["world"] = build(RealWorldConfig, data["world"], "world.", fail)
    cfg = build(ExperimentConfig, data, "", fail)
    for key, value in _leaves(cfg):
        wrong_type = _wrong_bool(key, value)
        if wrong_type:
            raise fail(key, wrong_type)
        problem = RULES[key](value) if key in RULES else None
        if problem:
            raise fail(key, problem if problem.startswith("'") else f"{value!r} {problem}")
    return cfg


def build(cls: type, data: Mapping[str, Any], prefix: str,
          fail: Callable[[str, str], Exception]) -> Any:
    """`cls` from `data` through dacite (strict); errors go through `fail(dotted key, message)`."""
    unknown = _unknown_keys(cls, data, prefix)
    if unknown:
        key, owner = unknown[0]
        raise fail(key, f"unknown key; expected one of {sorted(f.name for f in fields(owner))}")
    try:
        return dacite.from_dict(cls, dict(data), config=_DACITE)
    except dacite.WrongTypeError as e:
        raise fail(prefix + (e.field_path or "?"), f"expected {_type_name(e.field_type)}, got "
                   f"{e.value!r} ({type(e.value).__name__})") from None
    except dacite.MissingValueError as e:
        raise fail(prefix + (e.field_path or "?"), "missing required key") from None
    except dacite.DaciteError as e:
        raise fail(prefix.rstrip(".") or "config", str(e)) from None
    except ValueError as e:  # a section's own __post_init__ check; its message names the key
        key, _, msg = str(e).partition(": ")
        raise fail(key if msg else prefix.rstrip(".") or "config", msg or str(e)) from None


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _leaves(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            yield from _leaves(v, prefix + f.name + ".")
        else:
            yield prefix + f.name, v


def _wrong_bool(key: str, value: Any) -> str | None:
    """dacite accepts `true` for an int/float field (bool is an int); a count is never a bool."""
    if not isinstance(value, bool):
        return None
    hint = dict((k, h) for k, h, _ in _all_leaf_hints()).get(key)
    return None if hint is None or bool in typing.get_args(hint) or hint is bool \
        else f"expected {_type_name(hint)}, got a boolean"


def _all_leaf_hints() -> Iterator[tuple[str, Any, Any]]:
    yield from leaf_keys()
    for k, h, d in leaf_keys(RealWorldConfig, "world."):
        yield k, h, d


# -- the command line -----------------------------------------------------------------------------

def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """`--config FILE` and one `--<dotted key>` flag per leaf of the tree (values in TOML syntax)."""
    group = parser.add_argument_group("experiment config (defaults < --config file < flags)")
    group.add_argument("--config", metavar="FILE", help="TOML experiment config (configs/*.toml)")
    for key, hint, default in leaf_keys():
        if key in skip:
            continue
        many = typing.get_origin(hint) is tuple
        group.add_argument(f"--{key}", dest=f"cfg:{key}", default=argparse.SUPPRESS,
                           nargs="+" if many else None, metavar=key.rsplit(".", 1)[-1].upper(),
                           help=f"default {default!r}")


def overrides_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The dotted flags that were given, values parsed as TOML (`none` = None)."""
    out: dict[str, Any] = {}
    for dest, raw in vars(ns).items():
        if dest.startswith("cfg:"):
            out[dest[4:]] = [parse_value(x) for x in raw] if isinstance(raw, list) else parse_value(raw)
    return out


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` strings (pytest's `--set pool.steps=3`) as dotted overrides."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{COMMAND_LINE}: expected KEY=VALUE (e.g. pool.steps=3), got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out
