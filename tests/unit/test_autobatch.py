"""Issue #13 on a tiny world: every stage that batches sizes its "auto" batch before any model
forward, fails at once naming the knob when not one row fits, and an out-of-memory inside a pass
names the knob and the batch in use."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from probe import memory
from probe.adapters.registry import build_adapter
from probe.arms import get_arm
from probe.artifacts import read_manifest, step_path, write_rows
from probe.env.grader import GraderConfig
from probe.layout import Phase1Paths, grpo_paths
from probe.memory import MemoryBudgetError, model_shape
from probe.rl.config import GRPOConfig
from probe.stages.evaluate import EvalConfig, evaluate_policy
from probe.stages.grpo import ensure_grpo, run_grpo_arm
from probe.stages.phase1 import Phase1Config, ensure_vhack
from probe.stages.pool import PoolConfig, run_teacher_pool
from probe.stages.replay import ReplayConfig, run_replay
from probe.vhack import random_directions
from tests.unit.tiny_world import make_tiny_world

pytestmark = pytest.mark.unit

GRADER = GraderConfig(workers=1)
GRPO = GRPOConfig(steps=1, problems_per_step=1, group_size=2, seeds=(5,), arms=("vanilla",),
                  split="train")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("autobatch") / "world", max_new_tokens=4)


@pytest.fixture
def forwards(world, monkeypatch) -> list[str]:
    """Every forward of a model the world loads from now on (loading itself may run a check)."""
    calls: list[str] = []
    for name in ("load_base", "load_teacher"):
        def load(*a, _real=getattr(world, name), **k):
            model = _real(*a, **k)
            model.register_forward_pre_hook(lambda *_: calls.append(type(model).__name__))
            return model
        monkeypatch.setattr(world, name, load)
    return calls


@pytest.fixture
def no_memory(monkeypatch) -> None:
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)


def _V(world) -> dict[str, dict[str, torch.Tensor]]:
    sizes = build_adapter(world.load_base("cpu")).sizes
    return {k: random_directions(sizes, 1, i) for i, k in enumerate(("nll", "random", "shuffled"))}


def _pool(root: Path, steps: int = 1) -> Path:
    """A pool of rows of different lengths (ids inside the tiny vocabulary)."""
    for s in range(steps):
        write_rows(step_path(root, s), [{"prompt_ids": list(range(2, 2 + n)),
                                         "completion_ids": list(range(3, 3 + n))}
                                        for n in (4, 9, 6)])
    return root


# -- not one row fits: the stage stops before any forward, naming the knob ----------------------

def test_pool_stops_before_sampling(world, forwards, no_memory, tmp_path):
    cfg = PoolConfig(steps=1, problems_per_step=1, group_size=2, base_reference_steps=0)
    with pytest.raises(MemoryBudgetError, match="even pool.gen_batch_size = 1 does not fit"):
        run_teacher_pool(world, cfg, tmp_path / "pool", "cpu", GRADER)
    assert forwards == []


def test_student_eval_stops_before_sampling(world, forwards, no_memory):
    cfg = EvalConfig(split="train", n_problems=1, group_size=2)
    with pytest.raises(MemoryBudgetError, match="even student_eval.gen_batch_size = 1"):
        evaluate_policy(world.load_base("cpu"), world, cfg, GRADER)
    assert forwards == []


def test_vhack_stops_before_the_first_backward(world, forwards, no_memory, tmp_path):
    with pytest.raises(MemoryBudgetError, match="even vhack.batch_size = 1 does not fit"):
        ensure_vhack(world, Phase1Config(), Phase1Paths(tmp_path, 41))
    assert forwards == []


def test_replay_stops_before_any_gradient(world, forwards, no_memory, tmp_path):
    with pytest.raises(MemoryBudgetError, match="even replay.micro_batch = 1 does not fit"):
        run_replay(world, _pool(tmp_path / "pool"), _V(world), 1, ReplayConfig(),
                   tmp_path / "arm", "vanilla")
    assert forwards == []


def test_grpo_stops_before_sampling(world, forwards, no_memory, tmp_path):
    paths = grpo_paths({"name": "tiny"}, "k", GRPO, tmp_path)
    V = _V(world)
    with pytest.raises(MemoryBudgetError, match="even grpo.micro_batch = 1"):  # teacher rows
        ensure_grpo(world, GRPO, paths, V, grader_config=GRADER)
    with pytest.raises(MemoryBudgetError, match="even grpo.micro_batch = 1"):  # the student arm
        run_grpo_arm(world, GRPO, paths, get_arm("grpo", "vanilla"), 5, V, grader_config=GRADER)
    pinned = replace(GRPO, micro_batch=2)  # then generation's own knob
    with pytest.raises(MemoryBudgetError, match="even grpo.gen_batch_size = 1"):
        ensure_grpo(world, pinned, grpo_paths({"name": "tiny"}, "k", pinned, tmp_path), V,
                    grader_config=GRADER)
    assert forwards == []


# -- room for a few rows: "auto" is smaller than its cap; room for all: it is the cap -----------

def test_replay_auto_fits_free_memory_and_the_manifest_says_what_it_used(world, forwards,
                                                                         monkeypatch, tmp_path):
    pool, V = _pool(tmp_path / "pool", steps=2), _V(world)
    run_replay(world, pool, V, 2, ReplayConfig(null_directions=0), tmp_path / "roomy", "vanilla")
    assert read_manifest(tmp_path / "roomy")["resolved_batch"] == {"replay.micro_batch": 32}
    assert forwards  # the count above sees a stage's forwards
    longest = 9 + 9  # the pool's longest prompt + completion
    per_row = model_shape(world.load_base("cpu")).train_bytes_per_token() * longest
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(per_row * 2.5 / memory.FILL))
    run_replay(world, pool, V, 2, ReplayConfig(null_directions=0), tmp_path / "tight", "vanilla")
    tight = read_manifest(tmp_path / "tight")
    assert tight["resolved_batch"] == {"replay.micro_batch": 2}
    assert tight["config"]["micro_batch"] == "auto"  # the manifest keeps what was configured
    # float rounding apart, a smaller batch computes the same step
    roomy = read_manifest(tmp_path / "roomy")
    for a, b in zip(roomy["steps"], tight["steps"]):
        assert a["grad_norm_in"] == pytest.approx(b["grad_norm_in"], rel=1e-4)


# -- an out-of-memory inside a stage's pass names the knob and the batch ---------------------------

def test_oom_while_sampling_the_pool_names_the_knob(world, monkeypatch, tmp_path):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    load = world.load_teacher

    def teacher(*a, **k):
        model = load(*a, **k)
        model.generate = oom
        return model

    monkeypatch.setattr(world, "load_teacher", teacher)
    cfg = PoolConfig(steps=1, problems_per_step=1, group_size=2, base_reference_steps=0,
                     gen_batch_size=5)
    with pytest.raises(MemoryBudgetError, match=r"out of memory at pool.gen_batch_size = 5: "
                       r"lower pool.gen_batch_size, or set it to 'auto'") as e:
        run_teacher_pool(world, cfg, tmp_path / "pool", "cpu", GRADER)
    assert isinstance(e.value.__cause__, torch.OutOfMemoryError)


def test_oom_in_a_vhack_pass_names_the_knob(world):
    from probe.vhack import pair_grad_diffs

    def oom(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB")

    adapter = build_adapter(world.load_base("cpu"))
    pairs = world.contrastive_pairs("train", "simple_overwrite_tests")
    with pytest.raises(MemoryBudgetError, match="out of memory at vhack.batch_size = 16"):
        pair_grad_diffs(adapter, world.tokenizer, pairs, "auto", pair_grads=oom)
