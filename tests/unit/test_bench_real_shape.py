"""benchmarks/bench_real_shape.py runs end to end at a tiny shape on CPU (its smoke mode)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_tiny_smoke_prints_every_section(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_real_shape.py"
    spec = importlib.util.spec_from_file_location("bench_real_shape", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--tiny", "--device", "cpu", "--skip", "step"])
    for key in ("plain HF fwd+input-bwd", "psg reference, δS=0", "psg fused, δS≠0",
                "generate eager B2", "fidelity: bf16, fused branch", "estimate R1-R5 on one H200"):
        assert key in res and "error" not in res[key], (key, res.get(key))
    assert res["fidelity: float32 (reference)"]["min_cos"] == pytest.approx(1.0)
    assert "R1-R5 estimate" in capsys.readouterr().out
