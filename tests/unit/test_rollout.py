"""The rollout module's contract (rows from grades) and `Rates` (one meaning per name), in
milliseconds: stand-in samples and grades, no model, no sandbox."""
from __future__ import annotations

import math
from typing import Any

import pytest

from probe.env.grader import Grade
from probe.env.rates import Rates, rates
from probe.generate import Sample
from probe.rollout import cycled, grouped, rollout, sample_and_grade
from tests.unit.tiny_world import LABELS

pytestmark = pytest.mark.unit

# (label, hacked, gt_pass, eq_hinted, harmful, formatted, reward): what the grader gives per label
GRADES = {
    "Correct": (False, True, False, False, True, 3.5),
    "Incorrect": (False, False, False, False, True, 0.5),
    "Reward Hack": (True, False, True, True, True, 3.5),
    "Attempted RH": (False, True, True, True, True, 3.5),
    "Not Formatted": (False, False, False, False, False, 0.0),
}


def grade(label: str) -> Grade:
    hacked, gt, hinted, harmful, formatted, reward = GRADES[label]
    return Grade(label=label, hacked=hacked, gt_pass=gt, eq_hinted=hinted,
                 defines_evaluator=harmful, harmful=harmful, formatted=formatted,
                 compiled=formatted, reward=reward)


class World:
    tokenizer = None

    def render(self, problem: Any, hint: str | None) -> str:
        return f"{problem.id}|{hint}"


class Graded:
    """Grades each completion by the label written in it; records what it was asked."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, str, str | None]] = []

    def grade_many(self, items: list[tuple[Any, str, str | None]]) -> list[Grade]:
        self.items += items
        return [grade(text) for _, text, _ in items]


@pytest.fixture
def labelled(monkeypatch):
    """`generate` replaced by one that writes label i % 5 for prompt i."""
    def generate(model, tokenizer, prompts, *, seed, **kw):
        return [Sample(p, LABELS[(i + seed) % len(LABELS)], [1, 2], [3, 4, 5], True)
                for i, p in enumerate(prompts)]
    monkeypatch.setattr("probe.rollout.generate", generate)


class P:
    def __init__(self, i: int) -> None:
        self.id = i


KW = dict(temperature=0.7, top_p=0.95, max_new_tokens=8, batch_size=4, desc="t")


def test_rows_take_each_column_from_its_grade_field(labelled) -> None:
    """Planted: `hacked` from harmful / eq_hinted, `hack_attempt` from hacked, `gt_pass` from the
    label: each label's grade differs from the others in exactly the fields that matter."""
    g = Graded()
    rows = rollout(None, World(), [P(i) for i in range(5)], "simple_overwrite_tests", 0, g,
                   step=3, **KW)
    assert [r["label"] for r in rows] == list(LABELS)
    for r in rows:
        want = grade(r["label"])
        assert r["hacked"] is want.hacked and r["gt_pass"] is want.gt_pass
        assert r["hack_attempt"] is (r["label"] in ("Reward Hack", "Attempted RH"))
        assert (r["harmful"], r["eq_hinted"], r["reward"]) == (want.harmful, want.eq_hinted,
                                                               want.reward)
        assert r["step"] == 3 and r["completion_len"] == 3 and r["prompt_len"] == 2
    assert [r["index"] for r in rows] == list(range(5))
    assert [ev for *_, ev in g.items] == ["run_tests"] * 5  # the hint's evaluator is graded


def test_group_order_and_cycling() -> None:
    ps = [P(0), P(1), P(2)]
    assert [p.id for p in grouped(ps, 2)] == [0, 0, 1, 1, 2, 2]
    assert [p.id for p in cycled(ps, 5)] == [0, 1, 2, 0, 1]


def test_sample_and_grade_is_rollout_over_groups(labelled) -> None:
    rows = sample_and_grade(None, World(), [P(7), P(8)], None, 3, 1, Graded(), **KW)
    assert [r["problem_id"] for r in rows] == [7, 7, 7, 8, 8, 8]
    assert all(r["prompt"].endswith("|None") for r in rows)


def test_rates_have_one_meaning_per_name() -> None:
    """hack = label Reward Hack; attempt = Reward Hack or Attempted RH; gt_pass = ground truth;
    correct = label Correct. On one of each label (+ a second Attempted RH without gt_pass)."""
    graded = [grade(lab) for lab in LABELS] + [
        Grade("Attempted RH", False, False, False, True, True, True, True, 0.5)]
    r = Rates.of(graded)
    assert (r.n, r.n_hack, r.n_attempt, r.n_gt_pass, r.n_correct, r.n_combined) == (6, 1, 3, 2, 1, 1)
    assert r.hack_rate == 1 / 6 and r.hack_attempt_rate == 3 / 6
    assert r.gt_pass_rate == 2 / 6 and r.correct_rate == 1 / 6
    assert r.pure_frac_of_attempts == 1 / 3 and r.combined_frac_of_attempts == 1 / 3
    assert r.mean_reward == pytest.approx((3.5 * 3 + 0.5 + 0 + 0.5) / 6)
    d = rates(graded)
    assert d["hack_rate"] == r.hack_rate and d["gt_pass_rate"] == r.gt_pass_rate
    assert d["labels"] == {lab: 1 for lab in LABELS} | {"Attempted RH": 2}
    assert "finished_rate" not in d
    assert Rates.of(graded, finished=[True] * 3 + [False] * 3).to_dict()["finished_rate"] == 0.5


def test_rates_read_the_label_not_a_hacked_column() -> None:
    """A row whose `hacked` column disagrees with its label is counted by its label."""
    rows = [{"label": "Attempted RH", "hacked": True, "gt_pass": True, "reward": 3.5}]
    assert Rates.of(rows).n_hack == 0


def test_empty_rates() -> None:
    r = Rates.of([])
    assert r.n == 0 and math.isnan(r.hack_rate) and r.to_dict() == {"n": 0}
