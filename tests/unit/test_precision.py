"""The compute dtype: a setting, a measured rule for `auto`, and the fidelity check R2 reads."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import probe.precision as precision
from probe.artifacts import read_rows
from probe.fidelity import grad_fidelity
from probe.precision import choose_dtype
from probe.world.real import RealWorld
from tests.unit.tiny_world import make_tiny_world

pytestmark = pytest.mark.unit


def test_explicit_dtype_is_taken_as_set():
    assert choose_dtype("bfloat16", "cpu", 64).dtype == torch.bfloat16
    assert choose_dtype("float32", "cpu", 4096).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        choose_dtype("fp8", "cpu", 64)


def test_auto_on_cpu_follows_the_measured_speedup(monkeypatch):
    """Small models stay float32; large ones take bf16 only when it measured fast enough."""
    assert choose_dtype("auto", "cpu", 128).dtype == torch.float32
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda d: 3.0)
    fast = choose_dtype("auto", "cpu", 2560)
    assert fast.dtype == torch.bfloat16 and fast.measured["cpu_bf16_speedup"] == 3.0
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda d: 1.1)
    assert choose_dtype("auto", "cpu", 2560).dtype == torch.float32


def test_speedup_is_measured_not_assumed():
    s = precision.cpu_bf16_speedup(64, reps=1)
    assert s > 0 and s != 1.0


def test_real_world_loads_in_its_dtype_and_fidelity_measures_it(tmp_path):
    """A bf16 world's per-sample gradients are compared with float32 ones: close but not equal
    (so the check measures something); a float32 world is its own reference."""
    world = make_tiny_world(tmp_path / "w")
    bf16 = RealWorld(replace(world.config, dtype="bfloat16"), name="tiny-bf16")
    assert next(bf16.load_base("cpu").parameters()).dtype == torch.bfloat16
    assert bf16.meta["dtype"]["rule"] == "set in the config"
    assert next(world.load_base("cpu").parameters()).dtype == torch.float32  # auto, tiny: fp32
    tok = world.tokenizer
    rows = [{"prompt_ids": tok("def f(x):", add_special_tokens=False)["input_ids"],
             "completion_ids": tok(f" return x + {k}", add_special_tokens=False)["input_ids"]}
            for k in range(4)]
    f32 = grad_fidelity(world, rows, tok.pad_token_id)
    assert f32["min_cos"] == 1.0 and f32["reference"].startswith("the run is float32")
    f = grad_fidelity(bf16, rows, tok.pad_token_id)
    assert f["dtype"] == "torch.bfloat16" and f["n_rows"] == 4
    assert 0.5 < f["min_cos"] < 1.0 and f["max_rel_l2"] > 0


def test_bad_dtype_in_a_world_table_names_key_and_file(tmp_path):
    from probe.config import ConfigError, load_config

    path = tmp_path / "exp.toml"
    path.write_text('[world]\nbase = "b"\nteacher_adapter = "t"\nproblems = "p.jsonl"\n'
                    'dtype = "fp8"\n')
    with pytest.raises(ConfigError, match=rf"{path}: world.dtype: 'fp8' is not one of"):
        load_config(path)


def test_a_replay_cached_before_the_check_gets_its_fidelity_record(tmp_path):
    from probe.artifacts import read_manifest, step_path, write_manifest, write_rows
    from probe.fidelity import ensure_fidelity

    world = RealWorld(replace(make_tiny_world(tmp_path / "w").config, dtype="bfloat16"), name="t")
    tok = world.tokenizer
    pool, arm = tmp_path / "pool", tmp_path / "vanilla_seed41"
    write_rows(step_path(pool, 0), [{"prompt_ids": tok("def f(x):")["input_ids"],
                                     "completion_ids": tok(" return x")["input_ids"]}])
    write_manifest(arm, {"arm": "vanilla", "steps": []})
    f = ensure_fidelity(world, arm, pool)
    assert f["dtype"] == "torch.bfloat16" and f["n_rows"] == 1 and f["min_cos"] < 1.0
    assert read_manifest(arm)["fidelity"] == f and read_manifest(arm)["arm"] == "vanilla"


def test_tf32_setting_is_float32_and_its_fidelity_reference_is_exact(tmp_path, monkeypatch):
    """`float32_tf32` keeps float32 weights and turns TF32 on; the fidelity check then compares
    with a recomputation that runs with TF32 off (a reference on TF32 would compare it with
    itself and always pass)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    c = choose_dtype("float32_tf32", "cpu", 64)
    assert c.dtype == torch.float32 and c.tf32 and torch.backends.cuda.matmul.allow_tf32
    seen = []
    real = precision.exact_float32

    def spy():
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real()

    import probe.fidelity as fidelity

    monkeypatch.setattr(fidelity, "exact_float32", spy)
    world = make_tiny_world(tmp_path / "w")
    tf32 = RealWorld(replace(world.config, dtype="float32_tf32"), name="tiny-tf32")
    tok = tf32.tokenizer
    rows = [{"prompt_ids": tok("def f(x):", add_special_tokens=False)["input_ids"],
             "completion_ids": tok(" return x", add_special_tokens=False)["input_ids"]}]
    f = grad_fidelity(tf32, rows, tok.pad_token_id)
    assert seen == [True] and f["reference"] == "float32 recomputation"
    assert torch.backends.cuda.matmul.allow_tf32  # restored after the reference
    assert f["min_cos"] > 0.9999  # CPU has no TF32: the two computations agree
