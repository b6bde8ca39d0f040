"""Batch sizes from free memory (probe.memory), with fake free-memory figures; an out-of-memory
inside a batched pass names the knob."""
from __future__ import annotations

import logging

import pytest
import torch

from probe import memory
from probe.adapters.registry import build_adapter
from probe.memory import (MemoryBudgetError, generation_batch, grad_micro_batch, model_shape,
                          oom_names_knob, resolve_generation_batch, resolve_grad_batch)
from tests.unit.conftest import make_tiny_qwen3

pytestmark = pytest.mark.unit


def test_shape_of_a_tiny_qwen3():
    s = model_shape(make_tiny_qwen3())
    assert (s.layers, s.hidden, s.intermediate, s.kv_dim, s.q_dim, s.dtype_bytes) == \
        (2, 32, 48, 16, 32, 4)
    assert s.adapter_rank_per_layer == 32 * 2 + 16 * 2 + 32 * 3


def test_batch_grows_with_free_memory_and_shrinks_with_length():
    model = make_tiny_qwen3()
    per_tok = model_shape(model).train_bytes_per_token()
    free = int(per_tok * 100 * 10 / memory.FILL)  # room for 10 rows of 100 tokens
    assert grad_micro_batch(model, 100, "cpu", "replay.micro_batch", free=free) == 10
    assert grad_micro_batch(model, 200, "cpu", "replay.micro_batch", free=free) == 5
    assert grad_micro_batch(model, 1, "cpu", "replay.micro_batch", free=free, cap=7) == 7


def test_nothing_fits_fails_at_once_naming_the_knob():
    model = make_tiny_qwen3()
    with pytest.raises(MemoryBudgetError, match="vhack.batch_size = 1"):
        grad_micro_batch(model, 10_000, "cpu", "vhack.batch_size", free=1000)
    with pytest.raises(MemoryBudgetError, match="pool.gen_batch_size"):
        generation_batch(model, 10_000, "cpu", "pool.gen_batch_size", free=1000)


def test_qwen3_4b_estimate_matches_the_measured_footprint():
    """Calibration: 8 rows x 1024 tokens of Qwen3-4B in bf16 kept ~63 GiB of activations."""
    s = memory.ModelShape(layers=36, hidden=2560, intermediate=9728, kv_dim=1024, q_dim=4096,
                          vocab=151936, dtype_bytes=2)
    gib = s.train_bytes_per_token() * 8 * 1024 / 2**30
    assert 55 < gib < 75, gib


def test_cpu_free_memory_is_read():
    assert memory.free_bytes("cpu") > 0


# -- "auto" and numbers (the stages' one-line resolution) -----------------------------------------

def test_auto_is_the_cap_where_memory_does_not_bind_and_less_where_it_does(monkeypatch, caplog):
    """A tiny model on this machine: "auto" is exactly the cap (the old fixed default), so the
    embedded world batches as it always did; with little free memory it is smaller."""
    model = make_tiny_qwen3()
    assert resolve_grad_batch("auto", model, 300, "cpu", "replay.micro_batch", 32) == 32
    assert resolve_grad_batch("auto", model, 300, "cpu", "vhack.batch_size", 16,
                              rows_per_item=2) == 16
    assert resolve_generation_batch("auto", model, 300, "cpu", "pool.gen_batch_size", 64) == 64
    s = model_shape(model)
    room = int(s.train_bytes_per_token() * 100 * 10.5 / memory.FILL)  # 10 rows of 100 tokens
    monkeypatch.setattr(memory, "free_bytes", lambda device: room)
    with caplog.at_level(logging.INFO, logger="probe.memory"):
        assert resolve_grad_batch("auto", model, 100, "cpu", "replay.micro_batch", 32) == 10
    assert "replay.micro_batch = auto: 10" in caplog.text
    # a v_hack pair is two rows (hack and clean)
    assert resolve_grad_batch("auto", model, 100, "cpu", "vhack.batch_size", 16,
                              rows_per_item=2) == 5
    per_seq = s.generate_bytes_per_token() * 100 + s.generate_bytes_per_row()
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(per_seq * 3.5 / memory.FILL))
    assert resolve_generation_batch("auto", model, 100, "cpu", "pool.gen_batch_size", 64) == 3


def test_a_number_is_used_as_given_and_a_bad_one_names_the_knob(monkeypatch):
    model = make_tiny_qwen3()
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)  # room for nothing
    assert resolve_grad_batch(48, model, 10_000, "cpu", "grpo.micro_batch", 32) == 48
    assert resolve_generation_batch(128, model, 10_000, "cpu", "grpo.gen_batch_size", 64) == 128
    with pytest.raises(MemoryBudgetError, match="even grpo.micro_batch = 1 does not fit"):
        resolve_grad_batch("auto", model, 10_000, "cpu", "grpo.micro_batch", 32)
    for bad in (0, -1, "big", True):
        with pytest.raises(ValueError, match="replay.micro_batch: "):
            resolve_grad_batch(bad, model, 10, "cpu", "replay.micro_batch", 32)


# -- an out-of-memory inside a batched pass -----------------------------------------------------

CUDA_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                       "allocate memory: you tried to allocate 250000000 bytes. Error code 12")


def _raise(error: BaseException):
    def fail(*a, **k):
        raise error
    return fail


@pytest.mark.parametrize("error", [CUDA_OOM, CPU_OOM], ids=["cuda", "cpu"])
def test_oom_in_a_gradient_pass_names_the_knob_and_batch(monkeypatch, error):
    import probe.train_step as ts

    adapter = build_adapter(make_tiny_qwen3())
    monkeypatch.setattr(ts, "per_sample_grads", _raise(error))
    rows = [{"prompt_ids": [2, 3], "completion_ids": [4, 5]}] * 3
    with pytest.raises(MemoryBudgetError, match=r"out of memory at replay.micro_batch = 2: lower "
                       r"replay.micro_batch, or set it to 'auto'") as e:
        ts.summed_grads(adapter, rows, 0, "cpu", 2, knob="replay.micro_batch")
    assert e.value.__cause__ is error


def test_oom_in_a_logprob_pass_names_the_knob(monkeypatch, tmp_path):
    import probe.rl.rollout as rl_rollout

    class _World:
        tokenizer = type("T", (), {"pad_token_id": 0})()

    monkeypatch.setattr(rl_rollout, "completion_logprobs", _raise(CUDA_OOM))
    rows = [{"prompt_ids": [2, 3], "completion_ids": [4, 5]}] * 3
    with pytest.raises(MemoryBudgetError, match="grpo.micro_batch = 3"):
        rl_rollout.add_logprobs(make_tiny_qwen3(), _World(), rows, "old_logp", 3)


def test_other_errors_pass_through_unchanged():
    with pytest.raises(RuntimeError, match="shape mismatch") as e:
        with oom_names_knob("replay.micro_batch", 4):
            raise RuntimeError("shape mismatch")
    assert not isinstance(e.value, MemoryBudgetError)
    inner = MemoryBudgetError("out of memory at vhack.batch_size = 16")
    with pytest.raises(MemoryBudgetError) as e:  # an inner pass already named its knob
        with oom_names_knob("grpo.micro_batch", 4):
            raise inner
    assert e.value is inner
