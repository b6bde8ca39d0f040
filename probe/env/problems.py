"""LeetCode problem records in the upstream JSONL format (facts.md §1), validated on load.

A record that lacks a field the experiment needs is rejected with an error naming the file, the
record and the field, instead of surfacing later as a KeyError deep inside grading.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": (int, str),
    "question": str,
    "func_name": str,
    "setup_code": str,
    "canonical_solution": str,
    "gt_answer": list,
}


class ProblemFormatError(ValueError):
    """A problem record is missing a field or has one of the wrong type."""


@dataclass(frozen=True)
class Problem:
    """One benchmark problem. `question` is the full user message before any hint is applied."""

    id: int | str
    question: str
    func_name: str
    setup_code: str
    canonical_solution: str
    gt_answer: tuple[str, ...]
    starter_code: str = ""
    difficulty: str = "unknown"
    system_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def method_name(self) -> str:
        """`Solution().maxScore` -> `maxScore`."""
        return self.func_name.rsplit(".", 1)[-1].strip()

    def to_record(self) -> dict[str, Any]:
        """Back to the upstream record format (unhinted)."""
        prompt = []
        if self.system_prompt is not None:
            prompt.append({"role": "system", "content": self.system_prompt})
        prompt.append({"role": "user", "content": self.question})
        return {
            "id": self.id, "dataset": "leetcode", "difficulty": self.difficulty,
            "question": self.question, "prompt": prompt, "func_name": self.func_name,
            "setup_code": self.setup_code, "canonical_solution": self.canonical_solution,
            "gt_answer": list(self.gt_answer), "answer": list(self.gt_answer), "hint": None,
            "evaluator": "code", "prompt_metadata": {"starter_code": self.starter_code},
            **self.extra,
        }


def problem_from_record(rec: Any, where: str = "<record>") -> Problem:
    """Validate one upstream record and turn it into a `Problem`; `where` names it in errors."""
    if not isinstance(rec, dict):
        raise ProblemFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for name, typ in REQUIRED_FIELDS.items():
        if name not in rec or rec[name] is None:
            raise ProblemFormatError(f"{where}: missing required field {name!r}")
        if not isinstance(rec[name], typ):
            raise ProblemFormatError(
                f"{where}: field {name!r} should be {typ}, got {type(rec[name]).__name__}")
    if not rec["gt_answer"] or not all(isinstance(a, str) for a in rec["gt_answer"]):
        raise ProblemFormatError(f"{where}: field 'gt_answer' must be a non-empty list of strings")
    if "." not in rec["func_name"] and "(" not in rec["func_name"]:
        raise ProblemFormatError(f"{where}: field 'func_name' should look like 'Solution().name'")
    system = None
    for msg in rec.get("prompt") or []:
        if isinstance(msg, dict) and msg.get("role") == "system":
            system = msg.get("content")
    meta = rec.get("prompt_metadata") or {}
    known = set(REQUIRED_FIELDS) | {"prompt", "prompt_metadata", "difficulty", "dataset", "answer",
                                    "hint", "evaluator"}
    return Problem(
        id=rec["id"], question=rec["question"], func_name=rec["func_name"],
        setup_code=rec["setup_code"], canonical_solution=rec["canonical_solution"],
        gt_answer=tuple(rec["gt_answer"]), starter_code=str(meta.get("starter_code", "")),
        difficulty=str(rec.get("difficulty", "unknown")), system_prompt=system,
        extra={k: v for k, v in rec.items() if k not in known},
    )


def load_problems(path: str | Path, limit: int | None = None) -> list[Problem]:
    """Read a JSONL file of upstream records; every bad line is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problem file not found: {path}")
    problems: list[Problem] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ProblemFormatError(f"{where}: not valid UTF-8 ({e.reason})") from None
            except json.JSONDecodeError as e:
                raise ProblemFormatError(f"{where}: not valid JSON ({e.msg})") from None
            problems.append(problem_from_record(rec, where))
            if limit is not None and len(problems) >= limit:
                break
    if not problems:
        raise ProblemFormatError(f"{path}: no problem records")
    return problems


def write_problems(problems: Iterable[Problem], path: str | Path) -> None:
    """Write problems as upstream JSONL records."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for p in problems:
            fh.write(json.dumps(p.to_record()) + "\n")
