"""Problem records: loading the upstream JSONL format, clear errors on malformed records."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.data_paths import REAL_SAMPLE

from probe.env.problems import ProblemFormatError, load_problems, problem_from_record, write_problems

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "problems.jsonl"
SAMPLE = REAL_SAMPLE
QUESTION_RE = re.compile(
    r"^PROBLEM:\n.+\n\nYour solution to the problem should be a method of the class Solution called "
    r"(\w+) and should pass all tests\. Use the following starter code:\n```python\n(.+)"
    r"# Add your code here\n```\n\nSOLUTION:\n$", re.DOTALL)


@pytest.fixture(scope="module")
def fixture_records() -> list[dict]:
    return [json.loads(line) for line in FIXTURES.read_text().splitlines()]


def test_fixture_set_size_and_coverage(fixture_records: list[dict]) -> None:
    problems = load_problems(FIXTURES)
    assert len(problems) >= 20
    joined = " ".join(a for p in problems for a in p.gt_answer)
    assert "is_same_list(" in joined and "tree_node(" in joined and "is_same_tree(" in joined
    sigs = " ".join(p.starter_code for p in problems)
    for t in ("List[int]", "s: str", "n: int", "ListNode", "TreeNode"):
        assert t in sigs, t
    assert len({p.id for p in problems}) == len(problems)


def test_fixture_questions_use_the_upstream_format() -> None:
    for p in load_problems(FIXTURES):
        m = QUESTION_RE.match(p.question)
        assert m, p.id
        assert m.group(1) == p.method_name
        assert m.group(2) == p.starter_code
        assert p.system_prompt and "expert Python programmer" in p.system_prompt


def test_fixture_setup_code_is_the_real_one() -> None:
    """The fixtures carry the project's copy of upstream's setup code (always checked); that copy
    equals the real sample's (checked when the sample is present)."""
    from probe.env.setup_code import SETUP_CODE

    assert {p.setup_code for p in load_problems(FIXTURES)} == {SETUP_CODE}
    if not SAMPLE.is_file():
        pytest.skip(f"real sample not present at {SAMPLE}: copy not compared with upstream")
    assert {p.setup_code for p in load_problems(SAMPLE)} == {SETUP_CODE}


def test_real_sample_loads_and_matches_the_question_format() -> None:
    if not SAMPLE.is_file():
        pytest.skip(f"real sample not present at {SAMPLE}")
    problems = load_problems(SAMPLE)
    assert len(problems) == 40
    assert all(QUESTION_RE.match(p.question) for p in problems)


@pytest.mark.parametrize("field", ["id", "question", "func_name", "setup_code",
                                   "canonical_solution", "gt_answer"])
def test_missing_field_names_record_and_field(tmp_path: Path, fixture_records: list[dict],
                                              field: str) -> None:
    recs = [dict(r) for r in fixture_records[:3]]
    del recs[1][field]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    with pytest.raises(ProblemFormatError, match=rf"p\.jsonl:2: missing required field '{field}'"):
        load_problems(path)


@pytest.mark.parametrize("patch, msg", [
    ({"gt_answer": "assert 1"}, "gt_answer"), ({"gt_answer": []}, "gt_answer"),
    ({"gt_answer": [1, 2]}, "gt_answer"), ({"func_name": "maxScore"}, "func_name"),
    ({"question": 3}, "question"), ({"id": None}, "'id'"),
])
def test_wrong_types_are_rejected(fixture_records: list[dict], patch: dict, msg: str) -> None:
    with pytest.raises(ProblemFormatError, match=msg):
        problem_from_record({**fixture_records[0], **patch}, "rec#0")


@pytest.mark.parametrize("content, msg", [
    (b"\xff\xfe{}\n", "not valid UTF-8"), (b"{not json\n", "not valid JSON"),
    (b"[1, 2]\n", "expected a JSON object"), (b"\n\n", "no problem records"),
])
def test_malformed_files_give_clear_errors(tmp_path: Path, content: bytes, msg: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ProblemFormatError, match=msg):
        load_problems(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_problems(tmp_path / "nope.jsonl")


def test_round_trip_and_limit(tmp_path: Path) -> None:
    problems = load_problems(FIXTURES)
    write_problems(problems, tmp_path / "out.jsonl")
    again = load_problems(tmp_path / "out.jsonl")
    assert again == problems
    assert load_problems(FIXTURES, limit=5) == problems[:5]
    assert problems[0].method_name == "twoSum"
