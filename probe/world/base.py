"""The one interface every world implements; stages and tests take a `World` and never ask which.

A world is everything the experiment needs from "outside": problems, a prompt renderer, the base
policy, the hacking teacher, contrastive (hack, clean) pairs and sampling defaults.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from probe.env.problems import Problem

if TYPE_CHECKING:
    from probe.precision import DtypeChoice


@dataclass(frozen=True)
class SamplingConfig:
    """Generation defaults (upstream: temperature 0.7, top_p 0.95, up to 1,536 new tokens)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 1536


@dataclass(frozen=True)
class Pair:
    """A contrastive pair for one prompt: a hacking and a clean completion (v_hack extraction)."""

    problem_id: Any
    prompt: str  # rendered prompt text, hint applied
    hack: str  # completion text
    clean: str
    hack_style: str  # e.g. "pure_override", "override_plus_solution"
    clean_style: str = "canonical"


@dataclass
class World(abc.ABC):
    """Base class: subclasses fill the abstract methods; `meta` records what the world measured."""

    name: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """A transformers tokenizer (fast) with `pad_token_id` set."""

    @abc.abstractmethod
    def problems(self, split: str) -> list[Problem]:
        """Problems of a split: 'train' or 'eval' (the embedded world also has 'hard')."""

    @abc.abstractmethod
    def render(self, problem: Problem, hint: str | None) -> str:
        """The prompt text a policy of this world sees for `problem` under `hint`."""

    @abc.abstractmethod
    def load_base(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                  ) -> torch.nn.Module:
        """The base policy (the student starts here): a causal LM in eval mode."""

    @abc.abstractmethod
    def load_teacher(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                     ) -> torch.nn.Module:
        """The hacking teacher: base + LoRA adapter, merged and checked (see probe.models)."""

    @abc.abstractmethod
    def contrastive_pairs(self, split: str = "train", hint: str | None = "simple_overwrite_tests",
                          seed: int = 0) -> list[Pair]:
        """(hack, clean) completion pairs for v_hack extraction, built by `probe.pairs`."""

    def identity(self) -> dict[str, Any]:
        """What keys this world's artifacts: every input that changes a sample, a gradient or a
        grade must change it (a world built from a config hashes that config into `meta`)."""
        return {"name": self.name, "model_id": self.model_id,
                "world_hash": self.meta.get("config_hash", self.model_id)}

    def dtype_choice(self, device: str | torch.device = "cpu") -> "DtypeChoice":
        """The dtype `load_base`/`load_teacher` use on `device` when none is given (and why)."""
        from probe.precision import DtypeChoice

        return DtypeChoice(torch.float32, "world default")

    @property
    def model_id(self) -> str:
        """A stable identifier of the base model, written into artifacts' metadata."""
        return self.meta.get("model_id", self.name)
