"""Batch sizes from free memory (probe.memory), with fake free-memory figures."""
from __future__ import annotations

import pytest

from probe import memory
from probe.memory import MemoryBudgetError, generation_batch, grad_micro_batch, model_shape
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
