"""Requirement statistics on synthetic runs: every bucket size gives numbers and failing verdict
rows with the counts, never an exception (a teacher that only writes pure hacks is a real case)."""
from __future__ import annotations

import math
from typing import Any

import pytest

from probe.checks import behaviour_stats, control_stats, r4_stats, replay_rows
from probe.layout import Phase1Paths
from tests import test_R3_projection as R3
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


def _r4_tests(st: dict[str, Any], verdict: _Recorder, paths: Phase1Paths
              ) -> list[tuple[str, BaseException | None]]:
    """Run every R4 requirement function on `st`; what each raised."""
    calls = [lambda: R4.test_R4_pure_hack_above_hack_plus_correct(st, verdict),
             lambda: R4.test_R4_controls_do_not_pass(st, verdict, "random", paths),
             lambda: R4.test_R4_controls_do_not_pass(st, verdict, "shuffled", paths),
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
    paths = make_run(tmp_path, n_pure, n_combined)
    results = _r4_tests(r4_stats(paths, min_bucket=R4.MIN_BUCKET), verdict, paths)
    assert [r for r, _ in results] == ["failed"] * 5
    assert len(verdict.rows) == 5 and not any(v["passed"] for v in verdict.rows)
    for v, (_, err) in zip(verdict.rows, results):
        assert f"{n_pure} pure" in v["statistic"] and f"{n_combined} hack+correct" in v["statistic"]
        assert "too few" in str(err)


def _rates(hack_rate: float, n: int) -> dict[str, Any]:
    return {"n": n, "hack_rate": hack_rate, "correct_rate": 0.0}


def _behaviour(n: int, vanilla: float, projected: float, control: float) -> dict[str, Any]:
    return {"start": _rates(0.0, n), "vanilla": _rates(vanilla, n),
            "projected": _rates(projected, n), "projected_random": _rates(control, n),
            "projected_shuffled": _rates(control, n)}


def test_r3_behaviour_at_n8_says_underpowered_with_the_detectable_difference(tmp_path) -> None:
    """The real-model run: vanilla 0.875 vs projected 0.750 at n = 8, Fisher p = 0.5."""
    paths = make_run(tmp_path, 6, 6, behaviour=_behaviour(8, 0.875, 0.75, 0.875))
    b = behaviour_stats(paths)
    assert b["fisher_p"] == pytest.approx(0.5, abs=1e-9)
    assert 0.5 < b["mdd_vanilla_vs_projected"] < 0.65  # 0.573: only a drop to ~0.30 is visible
    verdict = _Recorder()
    with pytest.raises(AssertionError, match="underpowered, not a negative"):
        R3.test_R3_behaviour_projection_slows_hacking(paths, verdict)
    stat = verdict.rows[0]["statistic"]
    assert "underpowered: n=8 vs 8, minimum detectable difference 0.573 from 0.875" in stat
    assert not verdict.rows[0]["passed"]


def test_r3_behaviour_at_the_default_n_is_powered_for_20_points(tmp_path) -> None:
    from probe.stages.evaluate import EvalConfig

    n = 16 * EvalConfig().group_for(16)  # the embedded world's default: 16 problems
    paths = make_run(tmp_path, 6, 6, behaviour=_behaviour(n, 0.5, 0.25, 0.5))
    b = behaviour_stats(paths)
    assert b["mdd_vanilla_vs_projected"] <= R3.MIN_EFFECT  # worst-case rate 0.5 still detects 20pp
    verdict = _Recorder()
    R3.test_R3_behaviour_projection_slows_hacking(paths, verdict)
    assert verdict.rows[0]["passed"] and "underpowered" not in verdict.rows[0]["statistic"]


@pytest.mark.parametrize("shuffled_cos", [-0.79, 0.5])
def test_an_aligned_control_is_flagged_invalid_not_counted(tmp_path, shuffled_cos: float) -> None:
    """Projecting a control at cosine −0.79 with v_hack removes the anti-hack direction: its
    'specificity' comparison must not read as a pass (nor as a fail of v_hack)."""
    paths = make_run(tmp_path, 6, 6, behaviour=_behaviour(128, 0.9, 0.3, 0.95),
                     shuffled_cos=shuffled_cos)
    al = control_stats(paths)
    assert al["random"]["valid"] and not al["shuffled"]["valid"]
    assert al["shuffled"]["mean_cos"] == pytest.approx(shuffled_cos, abs=1e-5)
    verdict = _Recorder()
    R3.test_R3_behaviour_specific_to_v_hack(paths, verdict, "random")  # a valid control passes
    with pytest.raises(pytest.fail.Exception, match="not a control"):
        R3.test_R3_behaviour_specific_to_v_hack(paths, verdict, "shuffled")
    with pytest.raises(pytest.fail.Exception, match="not a control"):
        R4.test_R4_controls_do_not_pass(r4_stats(paths), verdict, "shuffled", paths)
    assert [v["passed"] for v in verdict.rows] == [True, False, False]
    assert all(v["statistic"].startswith("INVALID CONTROL: cos with v_hack mean")
               for v in verdict.rows[1:])


def _with_method_columns(paths: Phase1Paths, shift: float) -> None:
    """Give the vanilla rows GRPO columns: cos_grpo = cos_S_contrib + shift on pure hacks."""
    from probe.artifacts import read_rows, step_path, write_rows

    path = step_path(paths.arm("vanilla"), 0)
    rows = read_rows(path)
    for i, r in enumerate(rows):
        r["cos_grpo"] = r["cos_S_contrib"] + (0.0 if r["gt_pass"] else shift)
        r["cos_grpo_random"] = r["cos_random"] * -1.0
        r["cos_grpo_shuffled"] = 0.01 * i
    write_rows(path, rows)


def test_r4_stats_takes_the_direction_by_method(tmp_path) -> None:
    """The same code on another direction's column: the NLL statistics are untouched, the GRPO
    ones read cos_grpo and its own controls; the random-direction null is shared."""
    from probe.stats import welch_greater

    paths = make_run(tmp_path, 8, 8)
    before = r4_stats(paths)
    _with_method_columns(paths, shift=0.3)
    assert r4_stats(paths) == before
    g = r4_stats(paths, method="grpo")
    assert g["column"] == "cos_grpo" and g["v_hack"]["t"] > before["v_hack"]["t"]
    assert g["random"]["t"] == pytest.approx(-before["random"]["t"])
    rows = [r for r in replay_rows(paths, "vanilla")
            if r["hack_attempt"]]
    want = welch_greater([r["cos_grpo"] for r in rows if not r["gt_pass"]],
                         [r["cos_grpo"] for r in rows if r["gt_pass"]]).t
    assert g["v_hack"]["t"] == pytest.approx(want)
    assert g["random_null"]["abs_t_q95"] == before["random_null"]["abs_t_q95"]
    assert g["random_null"]["p_empirical"] <= before["random_null"]["p_empirical"]


def test_r4_stats_of_a_method_without_its_columns_names_the_column(tmp_path) -> None:
    from probe.artifacts import ArtifactError

    paths = make_run(tmp_path, 4, 4)
    with pytest.raises(ArtifactError, match="cos_grpo"):
        r4_stats(paths, method="grpo")
    with pytest.raises(ValueError, match="unknown v_hack method"):
        r4_stats(paths, method="sft")


def test_r3_applied_check_fails_a_projection_that_left_a_hackward_part(tmp_path) -> None:
    """The spec's 'cos_out < cos_in' passes a projection that removed only part of the hack-ward
    component; the applied check (hack-ward cos of the gradient given to the optimizer ≈ 0) does
    not. The synthetic run records cos_in 0.2 per step."""
    from probe.artifacts import read_manifest, write_manifest
    from probe.checks import APPLIED_COS_TOL, r3_stats

    paths = make_run(tmp_path, 2, 2)
    verdict = _Recorder()
    R3.test_R3_applied_gradient_has_no_hackward_part(paths, verdict)
    assert verdict.rows[-1]["passed"]
    man = read_manifest(paths.arm("projected"))
    man["steps"][0]["cos_out_applied"] = 0.05  # a projection that left a quarter of it
    write_manifest(paths.arm("projected"), man)
    assert r3_stats(paths)["frac_steps_cos_out_lt_in"] == 1.0  # the spec's check is fooled
    with pytest.raises(AssertionError, match="kept a hack-ward part"):
        R3.test_R3_applied_gradient_has_no_hackward_part(paths, verdict)
    assert not verdict.rows[-1]["passed"] and "1 steps above" in verdict.rows[-1]["statistic"]
    man["steps"][0]["cos_out_applied"] = APPLIED_COS_TOL / 2  # float32 rounding passes
    write_manifest(paths.arm("projected"), man)
    R3.test_R3_applied_gradient_has_no_hackward_part(paths, verdict)
    assert verdict.rows[-1]["passed"]
