"""`probe report` on synthetic runs: any bucket size writes a report (it crashed on an empty one)."""
from __future__ import annotations

import json

import pytest

from probe.report import write_report
from tests.unit.synthetic_run import make_run

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n_pure,n_combined", [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (1, 1),
                                               (2, 2), (6, 0)])
def test_report_is_written_for_any_bucket_size(tmp_path, n_pure: int, n_combined: int) -> None:
    paths = make_run(tmp_path / "run", n_pure, n_combined)
    report = write_report(paths, tmp_path / "out")
    text = report.read_text()
    r4 = text.split("### R4", 1)[1].split("\n## ", 1)[0]
    assert "error" not in r4
    assert f"- n_pure: {n_pure}" in r4 and f"- n_combined: {n_combined}" in r4
    assert (tmp_path / "out" / "cos_buckets.png").exists()


def test_report_lists_verdicts_of_a_failed_r4(tmp_path) -> None:
    paths = make_run(tmp_path / "run", 6, 0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "verdicts.json").write_text(json.dumps([{
        "requirement": "R4", "check": "v_hack: pure > hack+correct", "passed": False,
        "outcome": "failed", "statistic": "too few hack-attempt rows to test: 6 pure, 0 hack+correct",
        "threshold": "t > 2"}]))
    text = write_report(paths, out).read_text()
    assert "| R4 | v_hack: pure > hack+correct | FAIL | too few hack-attempt rows" in text


def test_report_shows_control_alignment_and_detectable_differences(tmp_path) -> None:
    rates = {"n": 8, "hack_rate": 0.875, "correct_rate": 0.0}
    beh = {k: rates for k in ("start", "vanilla", "projected_random", "projected_shuffled")}
    paths = make_run(tmp_path / "run", 6, 6, shuffled_cos=-0.79,
                     behaviour={**beh, "projected": {**rates, "hack_rate": 0.75}})
    text = write_report(paths, tmp_path / "out").read_text()
    controls = text.split("## Controls", 1)[1].split("\n## ", 1)[0]
    assert "| shuffled | -0.7900" in controls and controls.count("| NO |") == 1
    assert '"mdd_vanilla_vs_projected": 0.573' in text
