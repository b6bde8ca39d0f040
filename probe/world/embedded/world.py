"""`EmbeddedWorld`: the default world, a small Qwen3 model organism built in-process and cached.

This module reads a built world directory (`files.py` names its parts); `build.build_embedded_world`
builds once per config into `out/world/<config hash>/` under a FileLock (lock, then recheck
`meta.json`), so pytest-xdist workers share one build; a cached world loads in seconds. The teacher
goes through `probe.models.load_merged_teacher`, the real teacher's path.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from probe.env.problems import Problem, load_problems
from probe.pairs import pairs_for_split
from probe.world.base import Pair, SamplingConfig, World
from probe.world.embedded.config import EmbeddedWorldConfig
from probe.world.embedded.corpus import render as render_text
from probe.world.embedded.files import ADAPTER_DIR, BASE_DIR, META, PROBLEM_DIR, SPLITS
from probe.world.embedded.meta import upgrade_meta

log = logging.getLogger(__name__)

__all__ = ["EmbeddedWorld", "EmbeddedWorldConfig", "load_built"]


@dataclass
class EmbeddedWorld(World):
    """A built embedded world on disk: problems, tokenizer, base model, teacher LoRA adapter."""

    root: Path = Path(".")
    config: EmbeddedWorldConfig = field(default_factory=EmbeddedWorldConfig)
    n_pair_problems: int = 32  # problems per split that contrastive_pairs uses (x 8 styles)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.sampling = SamplingConfig(temperature=self.config.temperature, top_p=self.config.top_p,
                                       max_new_tokens=self.config.max_new_tokens)
        self._problems: dict[str, list[Problem]] = {}

    @property
    def base_dir(self) -> Path:
        """Saved base model + tokenizer (transformers format)."""
        return self.root / BASE_DIR

    @property
    def teacher_adapter_dir(self) -> Path:
        """The teacher's LoRA adapter (standard PEFT format)."""
        return self.root / ADAPTER_DIR

    @cached_property
    def tokenizer(self) -> Any:  # type: ignore[override]
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(self.base_dir)
        tok.padding_side = "left"
        return tok

    def problems(self, split: str) -> list[Problem]:
        if split not in (*SPLITS, "corpus"):
            raise ValueError(f"unknown split {split!r}; the embedded world has {SPLITS}")
        if split not in self._problems:
            self._problems[split] = load_problems(self.root / PROBLEM_DIR / f"{split}.jsonl")
        return list(self._problems[split])

    def render(self, problem: Problem, hint: str | None) -> str:
        return render_text(problem, hint, self.config.system_prompt)

    def load_base(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                  ) -> torch.nn.Module:
        from probe.models import load_base_model

        return load_base_model(str(self.base_dir), device=device, dtype=dtype or torch.float32)

    def load_teacher(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                     ) -> torch.nn.Module:
        """Merged through `load_merged_teacher`, the real teacher's path (fit + merge checks).

        The adapter records `base_model_name_or_path = model_id`, so an adapter from another
        config's world is rejected by the fit check instead of silently merged.
        """
        from probe.models import load_merged_teacher

        return load_merged_teacher(self.load_base(device, dtype), str(self.teacher_adapter_dir),
                                   device=device, dtype=dtype or torch.float32,
                                   base_id=self.model_id)

    def contrastive_pairs(self, split: str = "train", hint: str | None = "simple_overwrite_tests",
                          seed: int = 0) -> list[Pair]:
        """Every hack style on `n_pair_problems` problems drawn with `seed` (splits are ordered
        by template, so a prefix would miss the hard templates)."""
        return pairs_for_split(self.problems(split), self.render, hint, seed, self.n_pair_problems)


def load_built(root: Path, cfg: EmbeddedWorldConfig) -> EmbeddedWorld:
    """The world built for `cfg` in `root` (its `meta.json` present): a different config's build
    is an error, never silently used."""
    meta = upgrade_meta(json.loads((root / META).read_text()))
    if meta.get("config_hash", cfg.hash()) != cfg.hash():
        raise RuntimeError(f"{root / META} was built for config {meta['config_hash']}, not "
                           f"{cfg.hash()}: delete {root} or rebuild with refresh=True")
    return EmbeddedWorld(name="embedded", root=root, config=cfg, meta=meta)
