"""Requirement statistics on synthetic runs: every bucket size gives numbers and failing verdict
rows with the counts, never an exception (a teacher that only writes pure hacks is a real case)."""
from __future__ import annotations

import math
from typing import Any

import pytest

from probe.checks import r4_stats
from tests import test_R4_discrimination as R4
from tests.unit.synthetic_run import make_run

pytestmark = pytest.mark.unit

SIZES = [(0, 0), (0, 2), (1, 2), (2, 0), (2, 1), (1, 1), (2, 2), (0, 6), (6, 0), (1, 6), (6, 1)]


@pytest.mark.parametrize("n_pure,n_combined", SIZES)
def test_r4_stats_never_raises_on_small_buckets(tmp_path, n_pure: int, n_combined: int) -> None:
    st = r4_stats(make_run(tmp_path, n_pure, n_combined))
    assert (st["n_pure"], st["n_combined"]) == (n_pure, n_combined)
    assert st["n_hack_attempts"] == n_pure + n_combined  # the non-hack rows are not bucketed
    assert (st["v_hack"]["n_a"], st["v_hack"]["n_b"]) == (n_pure, n_combined)
    if min(n_pure, n_combined) < 2:  # no variance in a bucket: no test, and no crash
        assert math.isnan(st["v_hack"]["t"]) and st["random_null"]["n"] == 0
    else:
        assert math.isfinite(st["v_hack"]["t"]) and st["random_null"]["n"] > 0


class _Recorder:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, requirement: str, check: str, statistic: str, threshold: str,
                 passed: bool) -> None:
        self.rows.append({"check": check, "statistic": statistic, "passed": passed})


def _r4_tests(st: dict[str, Any], verdict: _Recorder) -> list[tuple[str, BaseException | None]]:
    """Run every R4 requirement function on `st`; what each raised."""
    calls = [lambda: R4.test_R4_pure_hack_above_hack_plus_correct(st, verdict),
             lambda: R4.test_R4_controls_do_not_pass(st, verdict, "random"),
             lambda: R4.test_R4_controls_do_not_pass(st, verdict, "shuffled"),
             lambda: R4.test_R4_sneaky_beats_random_directions(st, verdict),
             lambda: R4.test_R4_sneaky_not_just_length(st, verdict)]
    out = []
    for call in calls:
        try:
            call()
            out.append(("ok", None))
        except pytest.fail.Exception as e:
            out.append(("failed", e))
        except AssertionError as e:
            out.append(("failed", e))
    return out


@pytest.mark.parametrize("n_pure,n_combined", [(0, 0), (0, 6), (1, 6), (2, 6), (6, 0), (6, 1),
                                               (6, 2)])
def test_r4_verdicts_fail_with_the_counts_on_small_buckets(tmp_path, n_pure: int,
                                                           n_combined: int) -> None:
    """Five verdict rows, each failing (not erroring), each statistic naming both bucket sizes."""
    verdict = _Recorder()
    results = _r4_tests(r4_stats(make_run(tmp_path, n_pure, n_combined),
                                 min_bucket=R4.MIN_BUCKET), verdict)
    assert [r for r, _ in results] == ["failed"] * 5
    assert len(verdict.rows) == 5 and not any(v["passed"] for v in verdict.rows)
    for v, (_, err) in zip(verdict.rows, results):
        assert f"{n_pure} pure" in v["statistic"] and f"{n_combined} hack+correct" in v["statistic"]
        assert "too few" in str(err)
