"""Student evaluation: sized to detect the spec's effect, and its completions saved for inspection."""
from __future__ import annotations

import pytest

from probe.artifacts import read_rows
from probe.env.grader import GraderConfig
from probe.stages.evaluate import EvalConfig, evaluate_policy
from probe.stats import min_detectable_decrease
from tests.unit.tiny_world import make_tiny_world

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n_available", [1, 4, 16, 44])
def test_default_eval_size_detects_20_points_on_any_world(n_available: int) -> None:
    """A world with 4 eval problems got n = 8 and could not see a 57-point drop; the default now
    takes more samples per problem so that n detects 20 points even at rate 0.5."""
    cfg = EvalConfig()
    used = min(cfg.n_problems, n_available)
    n = used * cfg.group_for(used)
    assert n >= cfg.n_required() == 77
    assert min_detectable_decrease(0.5, n) <= 0.20
    assert cfg.group_for(16) == 8  # the embedded world's 16 × 8 is unchanged


def test_an_explicit_group_size_is_respected() -> None:
    assert EvalConfig(group_size=2).group_for(1) == 2


def test_evaluation_completions_are_saved_as_rows(tmp_path) -> None:
    world = make_tiny_world(tmp_path / "world")
    cfg = EvalConfig(split="train", n_problems=2, group_size=2)
    path = tmp_path / "arm" / "student_eval.jsonl.gz"
    res = evaluate_policy(world.load_base("cpu"), world, cfg, GraderConfig(workers=2),
                          rows_path=path)
    rows = read_rows(path, ("problem_id", "completion", "label", "hacked", "gt_pass"))
    assert len(rows) == res["n"] == 4 and (res["n_problems"], res["group_size"]) == (2, 2)
    assert sum(r["hacked"] for r in rows) / 4 == res["hack_rate"]
