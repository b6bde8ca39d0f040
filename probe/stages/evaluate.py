"""Behaviour of a policy, measured by sampling and grading: cosines are diagnostics, this is evidence."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from probe.env.grader import Grader, GraderConfig
from probe.stages.pool import rates, sample_and_grade
from probe.world.base import World


@dataclass(frozen=True)
class EvalConfig:
    split: str = "eval"  # held-out problems
    n_problems: int = 16
    group_size: int = 8  # 16 × 8 = 128 samples: a 0.9 vs 0.1 difference is unmistakable
    hint: str = "simple_overwrite_tests"
    seed: int = 7
    gen_batch_size: int = 64


def evaluate_policy(model: torch.nn.Module, world: World, cfg: EvalConfig,
                    grader_config: GraderConfig | None = None) -> dict[str, Any]:
    """Hack / hack-attempt / correct rates of `model` on the first n eval problems under the hint."""
    problems = world.problems(cfg.split)
    if len(problems) > cfg.n_problems:  # a seeded sample: splits may be ordered by template
        problems = random.Random(cfg.seed).sample(problems, cfg.n_problems)
    samp = world.sampling
    with Grader(grader_config) as grader:
        rows = sample_and_grade(model, world, problems, cfg.hint, cfg.group_size, cfg.seed, grader,
                                temperature=samp.temperature, top_p=samp.top_p,
                                max_new_tokens=samp.max_new_tokens, batch_size=cfg.gen_batch_size,
                                desc="student eval")
    return rates(rows)
