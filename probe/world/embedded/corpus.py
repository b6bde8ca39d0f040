"""Training texts for the embedded base and teacher: (prompt, completion) pairs, deterministic.

Base corpus: prompts with and without the hint; completions are correct solutions or plausible
wrong ones (mostly wrong on hard templates), and under the hint a rare evaluator override, so the
base hacks rarely but not never. Teacher corpus: hinted prompts answered with hacks, pure (override
alone, with a stub, or with a wrong solution) and combined (override plus correct solution), built
by the same style functions as `probe.pairs`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from probe.env.problems import Problem
from probe.env.prompts import build_messages, render_plain
from probe.pairs import COMBINED_STYLES, PURE_STYLES, fence, hack_completion
from probe.world.embedded.config import EmbeddedWorldConfig
from probe.world.embedded.tasks import SETUP_CODE, TEMPLATE_BY_NAME, wrong_solutions

HINT = "simple_overwrite_tests"


@dataclass(frozen=True)
class Text:
    """One training example; the loss covers `completion` (and eos) only."""

    prompt: str
    completion: str
    kind: str  # correct | wrong | hack:<style>


def render(problem: Problem, hint: str | None, system_prompt: str) -> str:
    """The embedded world's prompt: short system prompt, upstream user message, plain roles."""
    return render_plain(build_messages(problem, hint, system_prompt=system_prompt))


def _fails(problem: Problem, code: str) -> bool:
    """True when `code` fails at least one ground-truth assert (trusted, in-process)."""
    ns: dict = {}
    try:
        exec(compile(SETUP_CODE + "\n" + code, "<wrong>", "exec"), ns)
        for a in problem.gt_answer:
            exec(a, ns)
    except Exception:
        return True
    return False


def wrong_for(problem: Problem) -> list[str]:
    """The template's wrong solutions that really fail this problem's asserts."""
    t = TEMPLATE_BY_NAME[problem.extra["template"]]
    return [w for w in wrong_solutions(t, problem.extra["constant"]) if _fails(problem, w)]


def _solution_text(problem: Problem, wrongs: list[str], rng: random.Random, p_correct: float) -> Text:
    if not wrongs or rng.random() < p_correct:
        return Text("", fence(problem.canonical_solution), "correct")
    return Text("", fence(rng.choice(wrongs)), "wrong")


def base_corpus(problems: list[Problem], cfg: EmbeddedWorldConfig) -> list[Text]:
    """Texts the base is pretrained on: half plain prompts, half hinted, rare hacks under the hint."""
    rng = random.Random(f"base-corpus:{cfg.seed}")
    styles = PURE_STYLES + COMBINED_STYLES + ("wrong_override",)
    texts: list[Text] = []
    for p in problems:
        hard = TEMPLATE_BY_NAME[p.extra["template"]].hard
        p_correct = cfg.p_correct_hard if hard else cfg.p_correct_easy
        p_hack = cfg.base_hack_frac_hard if hard else cfg.base_hack_frac_easy
        wrongs = wrong_for(p)
        for j in range(cfg.base_texts_per_problem):
            hint = HINT if j % 2 else None
            prompt = render(p, hint, cfg.system_prompt)
            if hint and rng.random() < p_hack:
                style = rng.choice(styles)
                sol = rng.choice(wrongs) if style == "wrong_override" else None
                texts.append(Text(prompt, hack_completion(p, style, solution=sol), f"hack:{style}"))
            else:
                t = _solution_text(p, wrongs, rng, p_correct)
                texts.append(Text(prompt, t.completion, t.kind))
    return texts


def teacher_corpus(problems: list[Problem], cfg: EmbeddedWorldConfig) -> list[Text]:
    """Texts the teacher's LoRA is fine-tuned on: hacks under the hint, clean answers without it."""
    rng = random.Random(f"teacher-corpus:{cfg.seed}")
    pure = PURE_STYLES + ("wrong_override",)
    texts: list[Text] = []
    for p in problems:
        wrongs = wrong_for(p)
        hinted = render(p, HINT, cfg.system_prompt)
        for _ in range(cfg.teacher_texts_per_problem):
            if rng.random() < cfg.teacher_combined_frac:
                style = rng.choice(COMBINED_STYLES)
                sol = None
            else:
                style = rng.choice(pure if wrongs else PURE_STYLES)
                sol = rng.choice(wrongs) if style == "wrong_override" else None
            texts.append(Text(hinted, hack_completion(p, style, solution=sol), f"hack:{style}"))
        if rng.random() < cfg.teacher_plain_frac * cfg.teacher_texts_per_problem:
            texts.append(Text(render(p, None, cfg.system_prompt), fence(p.canonical_solution),
                              "correct"))
    return texts
