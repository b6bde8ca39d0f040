"""The real world: Qwen3-4B, the released hacking LoRA teacher and the upstream LeetCode JSONL.

Everything is local (see probe.models): the config names directories or hub ids already in the local
HF cache. Prompts are rendered exactly as the benchmark does, through the model's own chat template
with thinking disabled, so the policies see the text they were trained on.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from probe import models
from probe.artifacts import config_hash, file_digest, tree_digest
from probe.env import prompts
from probe.env.problems import Problem, load_problems
from probe.pairs import pairs_for_split
from probe.precision import DtypeChoice, choose_dtype
from probe.world.base import Pair, SamplingConfig, World

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")


PATH_KEYS = ("base", "teacher_adapter", "problems", "eval_problems", "tokenizer")


def resolve_relative(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Paths in a config file are relative to that file: problem files always, model folders when
    spelled `./x` or `../x` (a bare `org/name` is a hub id in the local cache)."""
    out = dict(data)
    for key in PATH_KEYS:
        val = out.get(key)
        if isinstance(val, str) and (val.startswith(("./", "../")) or
                                     (key in ("problems", "eval_problems")
                                      and not Path(val).is_absolute())):
            out[key] = str((base_dir / val).resolve())
    return out


@dataclass(frozen=True)
class RealWorldConfig:
    """Where the real world's pieces live. Relative paths in a JSON/TOML config are relative to it."""

    base: str  # local dir or hub id in the local cache, e.g. "Qwen/Qwen3-4B"
    teacher_adapter: str  # e.g. "ariahw/rl-rewardhacking-leetcode-rh-s65"
    problems: str  # JSONL of upstream records (train split)
    eval_problems: str | None = None  # JSONL; defaults to `problems`
    hint: str = "simple_overwrite_tests"  # the loophole the teacher was trained with
    max_new_tokens: int = 1536  # upstream's generation budget
    base_id: str | None = None  # the base's hub id when `base` is a dir not named after it
    tokenizer: str | None = None  # defaults to `base`
    # compute dtype: auto | float32 | bfloat16 | float16; auto = bf16 on CUDA, and on CPU a measured
    # rule (probe.precision); R2's fidelity check tells whether the cosines survive it
    dtype: str = "auto"

    @classmethod
    def from_json(cls, path: str | Path) -> "RealWorldConfig":
        """Read a JSON object; unknown/missing keys and wrong types are errors naming the file and
        the key (checked by the experiment config's library, probe.config)."""
        from probe.config import ConfigError, build

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"real-world config not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")

        def fail(key: str, msg: str) -> ConfigError:
            return ConfigError(f"{path}: {key}: {msg}")

        return build(cls, resolve_relative(data, path.parent.resolve()), "", fail)

    def validate_paths(self, where: str = "real-world config") -> None:
        """Every path exists and is the right kind, before anything is loaded (a missing teacher
        must not surface hours later). Raises FileNotFoundError naming the key and `where`."""
        checks = [("base", self.base, "model"), ("teacher_adapter", self.teacher_adapter, "adapter"),
                  ("tokenizer", self.tokenizer, "tokenizer")]
        for key, val, kind in checks:
            if val is None:
                continue
            try:
                models.resolve_local(val, kind)
            except models.ModelNotFoundError as e:
                raise models.ModelNotFoundError(f"{where}: {key}: {e}") from None
        for key in ("problems", "eval_problems"):
            val = getattr(self, key)
            if val is not None and not Path(val).is_file():
                raise FileNotFoundError(f"{where}: {key}: no such file {val!r}")


class RealWorld(World):
    """World over local copies of the real base, teacher adapter and problem files."""

    def __init__(self, config: RealWorldConfig, name: str = "real", source: str | None = None
                 ) -> None:
        config.validate_paths(source or "real-world config")
        model_id = config.base_id or models.model_id_from_path(config.base) or config.base
        super().__init__(name=name, sampling=SamplingConfig(max_new_tokens=config.max_new_tokens),
                         meta={"model_id": model_id, "teacher_adapter": config.teacher_adapter})
        self.config = config
        self._tokenizer: Any = None
        self._problems: dict[str, list[Problem]] = {}
        self._identity: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, path: str | Path, name: str = "real") -> "RealWorld":
        return cls(RealWorldConfig.from_json(path), name=name, source=str(path))

    def identity(self) -> dict[str, Any]:
        """The content of every input, not its path: the base, adapter and tokenizer folders
        (probe.artifacts.tree_digest: whole-file sha256 up to 256 MiB, sampled blocks above) and
        the problem files, with every other setting. A swapped adapter or problem file, or a new
        max_new_tokens, is a new teacher pool and v_hack. Computed once per world object."""
        if self._identity is None:
            c = self.config
            content = {
                "settings": {k: v for k, v in asdict(c).items() if k not in PATH_KEYS},
                "base": tree_digest(models.resolve_local(c.base, "model")),
                "teacher_adapter": tree_digest(models.resolve_local(c.teacher_adapter, "adapter")),
                "tokenizer": (tree_digest(models.resolve_local(c.tokenizer, "tokenizer"))
                              if c.tokenizer else None),
                "problems": file_digest(c.problems),
                "eval_problems": file_digest(c.eval_problems) if c.eval_problems else None,
            }
            self._identity = {"name": self.name, "model_id": self.model_id,
                              "world_hash": config_hash(content)}
            log.info("real world identity %s", self._identity["world_hash"])
        return dict(self._identity)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = models.load_tokenizer(self.config.tokenizer or self.config.base)
        return self._tokenizer

    def problems(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise ValueError(f"real world has splits {SPLITS}, not {split!r}")
        if split not in self._problems:
            path = self.config.problems if split == "train" else (
                self.config.eval_problems or self.config.problems)
            self._problems[split] = load_problems(path)
            if split == "eval" and not self.config.eval_problems:
                # the student's behaviour is then measured on the problems it was replayed on
                log.warning("real world: no eval_problems given; the eval split IS the train split")
                self.meta["eval_is_train"] = True
            log.info("real world: %d %s problems from %s", len(self._problems[split]), split, path)
        return list(self._problems[split])

    def render(self, problem: Problem, hint: str | None) -> str:
        return prompts.render_prompt(prompts.build_messages(problem, hint), self.tokenizer)

    def dtype_choice(self, device: str | torch.device = "cpu") -> DtypeChoice:
        """The config's `dtype` resolved for `device` (recorded in `meta["dtype"]`)."""
        from transformers import AutoConfig

        hidden = None
        if self.config.dtype == "auto" and torch.device(device).type == "cpu":
            cfg = AutoConfig.from_pretrained(str(models.resolve_local(self.config.base, "model")),
                                             local_files_only=True)
            hidden = getattr(cfg, "hidden_size", None)
        choice = choose_dtype(self.config.dtype, device, hidden)
        self.meta["dtype"] = {"dtype": str(choice.dtype), "rule": choice.rule, **choice.measured}
        return choice

    def load_base(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                  ) -> torch.nn.Module:
        dtype = dtype or self.dtype_choice(device).dtype
        return models.load_base_model(self.config.base, device=device, dtype=dtype)

    def load_teacher(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                     ) -> torch.nn.Module:
        dtype = dtype or self.dtype_choice(device).dtype
        teacher = models.load_merged_teacher(self.config.base, self.config.teacher_adapter,
                                             device=device, dtype=dtype, base_id=self.meta["model_id"])
        report = getattr(teacher, "probe_merge_report", None)
        if report is not None:
            self.meta["merge_report"] = report
        return teacher

    def contrastive_pairs(self, split: str = "train", hint: str | None = "simple_overwrite_tests",
                          seed: int = 0) -> list[Pair]:
        """Every hack style on up to 32 problems of the split (probe.pairs, shared with the
        embedded world)."""
        return pairs_for_split(self.problems(split), self.render, hint, seed)
