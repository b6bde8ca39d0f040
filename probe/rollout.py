"""Sample completions from a policy, grade them, build rows: the one rollout path of the harness.

The teacher pool, the student evaluation, the embedded world's build-time measurement and the
mixed-policy GRPO groups all go through `rollout`, so a row means the same thing in every
artifact (the pool's row format) and the `hacked` column comes from one place.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

import torch

from probe.env.grader import Grader, GraderConfig
from probe.env.problems import Problem
from probe.env.prompts import evaluator_name
from probe.env.rates import ATTEMPT_LABELS, Rates
from probe.generate import generate
from probe.memory import MAX_AUTO_BATCH

log = logging.getLogger(__name__)

ROW_FIELDS = ("problem_id", "step", "index", "policy", "prompt_ids", "completion_ids", "label",
              "hacked", "hack_attempt", "gt_pass", "reward", "completion_len")


class Prompter(Protocol):
    """What a rollout needs from a world: its tokenizer and its prompt rendering."""

    tokenizer: Any

    def render(self, problem: Problem, hint: str | None) -> str: ...


def grouped(problems: Sequence[Problem], group: int) -> list[Problem]:
    """Each problem `group` times in a row: rows in (problem, sample) order."""
    return [p for p in problems for _ in range(group)]


def cycled(problems: Sequence[Problem], n: int) -> list[Problem]:
    """`n` problems cycling over `problems` (a measurement of n samples over fewer problems)."""
    return [problems[i % len(problems)] for i in range(n)]


def grade_row(problem: Problem, sample: Any, grade: Any, **extra: Any) -> dict[str, Any]:
    """One graded completion as a row (every artifact's row format)."""
    return {
        "problem_id": problem.id, **extra,
        "prompt": sample.prompt, "completion": sample.completion,
        "prompt_ids": list(sample.prompt_ids), "completion_ids": list(sample.completion_ids),
        "prompt_len": len(sample.prompt_ids), "completion_len": len(sample.completion_ids),
        "finished": bool(sample.finished),
        "label": grade.label, "hacked": bool(grade.hacked),
        "hack_attempt": grade.label in ATTEMPT_LABELS, "gt_pass": bool(grade.gt_pass),
        "eq_hinted": bool(grade.eq_hinted), "defines_evaluator": bool(grade.defines_evaluator),
        "harmful": bool(grade.harmful), "compiled": bool(grade.compiled),
        "formatted": bool(grade.formatted), "reward": float(grade.reward),
        "grade_error": grade.error, "grade_errors": dict(grade.errors),
    }


def rollout(model: torch.nn.Module, world: Prompter, chosen: Sequence[Problem], hint: str | None,
            seed: int, grader: Any, *, temperature: float, top_p: float, max_new_tokens: int,
            batch_size: int | str, desc: str, batch_knob: str = "gen_batch_size",
            batch_cap: int = MAX_AUTO_BATCH, **extra: Any) -> list[dict[str, Any]]:
    """One sample per entry of `chosen` from `model` under `hint`, graded; `index` = position.

    `grader` is anything with `grade_many` (a `Grader`, or GRPO's `CachedGrader`). Without a hint
    there is no evaluator to call: reward comes from ground truth only. `batch_size` may be
    "auto" (`probe.generate.generate`: at most `batch_cap`, `batch_knob` named on failure)."""
    prompts = [world.render(p, hint) for p in chosen]
    samples = generate(model, world.tokenizer, prompts, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, desc=desc,
                       knob=batch_knob, cap=batch_cap)
    grades = grader.grade_many([(p, s.completion, evaluator_name(hint, p.id))
                                for p, s in zip(chosen, samples)])
    return [grade_row(p, s, g, index=i, **extra)
            for i, (p, s, g) in enumerate(zip(chosen, samples, grades))]


def sample_and_grade(model: torch.nn.Module, world: Prompter, problems: Sequence[Problem],
                     hint: str | None, group: int, seed: int, grader: Any, *, temperature: float,
                     top_p: float, max_new_tokens: int, batch_size: int | str, desc: str,
                     batch_knob: str = "gen_batch_size", batch_cap: int = MAX_AUTO_BATCH,
                     **extra: Any) -> list[dict[str, Any]]:
    """G samples per problem from `model`, graded; rows in (problem, sample) order."""
    return rollout(model, world, grouped(problems, group), hint, seed, grader,
                   temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                   batch_size=batch_size, desc=desc, batch_knob=batch_knob, batch_cap=batch_cap,
                   **extra)


def measure(model: torch.nn.Module, world: Prompter, problems: Sequence[Problem],
            hint: str | None, *, n: int, seed: int, temperature: float, top_p: float,
            max_new_tokens: int, desc: str, batch_size: int = 64,
            grader_config: GraderConfig | None = None) -> tuple[list[dict[str, Any]], Rates]:
    """`n` samples cycling over `problems`, graded with a grader of its own: rows and `Rates`
    (with the finished rate). The world's build-time statistics are this."""
    with Grader(grader_config or GraderConfig()) as grader:
        rows = rollout(model, world, cycled(problems, n), hint, seed, grader,
                       temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, desc=desc)
    r = Rates.of(rows, finished=[row["finished"] for row in rows])
    log.info("%s: %s", desc, {k: v for k, v in r.to_dict().items() if k != "labels"})
    return rows, r
