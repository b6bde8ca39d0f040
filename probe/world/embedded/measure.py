"""Behaviour statistics of a policy, measured by the real grader on sampled completions
(definitions in probe.env.rates)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from probe.env.problems import Problem
from probe.env.prompts import evaluator_name
from probe.env.rates import summarize
from probe.generate import Sample, generate

log = logging.getLogger(__name__)


def sample_and_grade(model, tokenizer, problems: Sequence[Problem], render, hint: str | None, *,
                     n: int, seed: int, temperature: float, top_p: float, max_new_tokens: int,
                     desc: str) -> tuple[list[Sample], list[Any], dict]:
    """Sample `n` completions cycling over `problems` under `hint`, grade them, summarize."""
    from probe.env.grader import Grader, GraderConfig

    chosen = [problems[i % len(problems)] for i in range(n)]
    prompts = [render(p, hint) for p in chosen]
    samples = generate(model, tokenizer, prompts, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, seed=seed, desc=desc)
    with Grader(GraderConfig()) as grader:
        grades = grader.grade_many([(p, s.completion, evaluator_name(hint, p.id))
                                    for p, s in zip(chosen, samples)])
    stats = summarize(grades)
    stats["finished_rate"] = sum(s.finished for s in samples) / n
    log.info("%s: %s", desc, {k: v for k, v in stats.items() if k != "labels"})
    return samples, grades, stats
