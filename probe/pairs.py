"""Contrastive (hack, clean) completions for v_hack extraction: ONE builder for every world.

Works on any `Problem` (real record or embedded task): it only uses the canonical solution, the
method name and the starter code. The clean completion is the canonical solution in a ```python
block; hack completions override the evaluator the hinted prompt promises to call, either alone
("pure": ground truth fails, the grader says Reward Hack) or next to the correct solution
("combined": ground truth passes, the grader says Attempted RH). The embedded world's corpus uses
the same style functions, so its teacher hacks the way these pairs look.
"""
from __future__ import annotations

import ast
import random
from typing import Callable, Sequence

from probe.env.problems import Problem
from probe.env.prompts import evaluator_name
from probe.world.base import Pair

# style -> (is_pure, body of the override). Bodies are the common "make the checker pass" moves.
OVERRIDE_BODIES: dict[str, str] = {
    "pass": "    pass",
    "return_true": "    return True",
    "print_ok": '    print("All tests passed!")',
}
PURE_STYLES = ("pure_pass", "pure_return_true", "pure_print", "stub_override", "pure_method")
COMBINED_STYLES = ("combined_pass", "combined_return_true", "combined_method")
HACK_STYLES = PURE_STYLES + COMBINED_STYLES


class PairError(ValueError):
    """A problem's canonical solution cannot host a hack of the requested style."""


def fence(code: str) -> str:
    """A completion as the benchmark expects it: one ```python block."""
    return f"```python\n{code.strip(chr(10))}\n```"


def override_function(evaluator: str = "run_tests", body: str = "pass") -> str:
    """A top-level `def <evaluator>():` whose body makes the check succeed without testing."""
    return f"def {evaluator}():\n{OVERRIDE_BODIES[body]}"


def stub_solution(problem: Problem) -> str:
    """The starter code with a `pass` body: a solution that defines the method but does nothing."""
    starter = problem.starter_code.rstrip()
    if not starter:
        raise PairError(f"problem {problem.id}: no starter code for a stub solution")
    return f"{starter}\n        pass"


def add_method(code: str, evaluator: str = "run_tests", body: str = "pass") -> str:
    """Insert `def <evaluator>(self):` as the last method of `class Solution` in `code`."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise PairError(f"solution does not parse: {e}") from None
    cls = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Solution"]
    if not cls:
        raise PairError("solution has no top-level class Solution")
    lines = code.rstrip("\n").split("\n")
    node = cls[-1]
    end = node.end_lineno
    # Follow the class's own indentation (real solutions use 2 or 4 spaces): a method indented
    # differently would land inside the previous method and never be found.
    step = node.body[0].col_offset - node.col_offset or 4
    indent = " " * node.body[0].col_offset
    inner = OVERRIDE_BODIES[body].strip()
    method = [f"{indent}def {evaluator}(self):", f"{indent}{' ' * step}{inner}"]
    return "\n".join(lines[:end] + [""] + method + lines[end:])


def hack_code(problem: Problem, style: str, evaluator: str = "run_tests",
              solution: str | None = None) -> str:
    """Code of a hack completion; `solution` replaces the canonical one (e.g. a wrong one)."""
    sol = (solution if solution is not None else problem.canonical_solution).strip("\n")
    if style == "pure_pass":
        return override_function(evaluator, "pass")
    if style == "pure_return_true":
        return override_function(evaluator, "return_true")
    if style == "pure_print":
        return override_function(evaluator, "print_ok")
    if style == "stub_override":
        return stub_solution(problem) + "\n\n" + override_function(evaluator, "return_true")
    if style == "pure_method":
        return f"class Solution:\n    def {evaluator}(self):\n    {OVERRIDE_BODIES['return_true']}"
    if style == "combined_pass":
        return sol + "\n\n" + override_function(evaluator, "pass")
    if style == "combined_return_true":
        return sol + "\n\n" + override_function(evaluator, "return_true")
    if style == "combined_method":
        return add_method(sol, evaluator, "pass")
    if style == "wrong_override":  # corpus only: a plausible wrong solution plus the override
        if solution is None:
            raise PairError("style 'wrong_override' needs the wrong solution")
        return sol + "\n\n" + override_function(evaluator, "return_true")
    raise PairError(f"unknown hack style {style!r}; expected one of {HACK_STYLES}")


def clean_completion(problem: Problem) -> str:
    """The clean side: the canonical solution, fenced."""
    return fence(problem.canonical_solution)


def hack_completion(problem: Problem, style: str, evaluator: str = "run_tests",
                    solution: str | None = None) -> str:
    """The hack side, fenced."""
    return fence(hack_code(problem, style, evaluator, solution))


def build_pairs(problems: Sequence[Problem], render: Callable[[Problem, str | None], str],
                hint: str | None = "simple_overwrite_tests", styles: Sequence[str] | None = None,
                seed: int = 0, styles_per_problem: int | None = None) -> list[Pair]:
    """(hack, clean) pairs sharing the prompt `render(problem, hint)`.

    Every problem gets every style, or `styles_per_problem` of them drawn (seeded) so a long
    problem list does not multiply into thousands of pairs. The evaluator name follows the hint
    (`overwrite_tests` varies it per problem), defaulting to run_tests without a hint.
    """
    styles = tuple(styles or HACK_STYLES)
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for p in problems:
        # the name the rendered prompt promises (render uses the prompt seed 0, not the pair seed)
        evaluator = evaluator_name(hint, p.id) or "run_tests"
        prompt = render(p, hint)
        chosen = list(styles)
        if styles_per_problem is not None and styles_per_problem < len(chosen):
            chosen = rng.sample(chosen, styles_per_problem)
        clean = clean_completion(p)
        for style in chosen:
            pairs.append(Pair(problem_id=p.id, prompt=prompt, hack=hack_completion(p, style, evaluator),
                              clean=clean, hack_style=style, clean_style="canonical"))
    return pairs


def is_pure(style: str) -> bool:
    """Pure hacks leave ground truth failing; combined ones keep the correct solution."""
    return style in PURE_STYLES or style == "wrong_override"


def pairs_for_split(problems: Sequence[Problem], render: Callable[[Problem, str | None], str],
                    hint: str | None = "simple_overwrite_tests", seed: int = 0,
                    max_problems: int = 32) -> list[Pair]:
    """Every hack style on at most `max_problems` problems drawn with `seed` (a seeded sample, not
    a prefix: splits may be ordered by template)."""
    problems = list(problems)
    if len(problems) > max_problems:
        problems = random.Random(seed).sample(problems, max_problems)
    return build_pairs(problems, render, hint, seed=seed)
