"""benchmarks/bench_multi_gpu.py runs end to end on CPU (gloo ranks, tiny shape: its smoke)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_tiny_smoke_prints_the_scaling_of_both_steps(capsys, monkeypatch):
    # imported by name (not from a file spec): spawned ranks unpickle its worker by module name
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_multi_gpu as bench

    res = bench.main(["--tiny", "--device", "cpu", "--ranks", "1", "2", "--steps", "1"])
    for name in bench.SECTIONS:
        assert {r: s[name] > 0 for r, s in res["seconds"].items()} == {1: True, 2: True}
        assert res["efficiency"][name][1] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "efficiency" in out and "GRPO step" in out
    sys.modules.pop("bench_multi_gpu", None)
