"""R6's wiring on a tiny world and its verdict logic on synthetic trajectories: drift is measured
without changing training, the LoRA student trains through the same GRPO step, and the verdict says
INVALID / INCONCLUSIVE / PASS for the right reasons."""
from __future__ import annotations

import math

import pytest
import torch

import probe.rl.rollout as rollout
from probe.adapters.registry import AdapterSpec, build_adapter
from probe.arms import get_arm
from probe.artifacts import read_rows, step_path
from probe.checks_r6 import drift_stats, effects, matched, verdict
from probe.env.grader import GraderConfig
from probe.layout import GRPOPaths
from probe.rl.config import GRPOConfig
from probe.stages.grpo import run_grpo_arm
from probe.stages.r6 import lora_vhack_parts
from probe.vhack import VHackConfig, random_directions
from tests.unit.tiny_world import make_tiny_world, stand_in_labels

pytestmark = pytest.mark.unit

CFG = GRPOConfig(steps=2, problems_per_step=2, group_size=4, micro_batch=4, seeds=(5,),
                 arms=("vanilla",), split="train", lr=1e-2)
GRADER = GraderConfig(workers=1)
LORA = AdapterSpec(kind="lora", rank=2, alpha=2.0, init="nonzero_b")
VHACK = VHackConfig(batch_size=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(rollout, "sample_and_grade", stand_in_labels(rollout.sample_and_grade))
    root = tmp_path_factory.mktemp("r6")
    world = make_tiny_world(root / "world", max_new_tokens=6)
    pairs = type(world).contrastive_pairs  # a few pairs: the re-extraction's cost, not its subject
    mp.setattr(type(world), "contrastive_pairs", lambda self, *a, **k: pairs(self, *a, **k)[:4])
    yield world, root
    mp.undo()


def _V(world, spec=None):
    sizes = build_adapter(world.load_base("cpu"), spec).sizes
    return {"nll": random_directions(sizes, 1, 0), "random": random_directions(sizes, 1, 1),
            "shuffled": random_directions(sizes, 1, 2)}


def _arm(world, root, name, arm, V, drift_every=0, spec=None):
    paths = GRPOPaths(root / name, root / "teacher")
    from probe.stages.grpo import ensure_teacher_rows

    ensure_teacher_rows(world, CFG, paths, 5, "cpu", GRADER)
    man = run_grpo_arm(world, CFG, paths, get_arm("grpo", arm), 5, V, adapter_spec=spec,
                       grader_config=GRADER, vhack=VHACK, drift_every=drift_every)
    return man, paths


def test_drift_is_measured_without_changing_training(tiny):
    """Re-extracting v_hack every step (read only) leaves every row and the trained adapter
    bit-identical to the same arm without it; the drift records sit where they should."""
    world, root = tiny
    V = _V(world)
    plain, p0 = _arm(world, root, "plain", "projected", V)
    tracked, p1 = _arm(world, root, "tracked", "projected", V, drift_every=1)
    for s in range(CFG.steps):
        a = read_rows(step_path(p0.arm("projected", 5), s))
        b = read_rows(step_path(p1.arm("projected", 5), s))
        assert [(r["completion"], r["reward"]) for r in a] == [(r["completion"], r["reward"])
                                                                for r in b]
    for x, y in zip(plain["steps"], tracked["steps"]):
        assert x["updates"][0]["grad_hackward_cos"] == y["updates"][0]["grad_hackward_cos"]
        assert x["updates"][-1]["update_norm"] == y["updates"][-1]["update_norm"]
    assert all("drift" in st for st in tracked["steps"]) and not any("drift" in st
                                                                     for st in plain["steps"])
    # before the first re-extraction the tracked direction IS the stored one
    first = tracked["steps"][0]["updates"][0]
    assert first["current_cos_in"] == first["grad_hackward_cos"]
    assert first["current_cos_out"] == first["grad_hackward_cos_out"]
    # V here is random: the NLL direction re-extracted from the student is another direction
    assert tracked["steps"][0]["drift"]["mean_cos_first"] < 0.9
    # what later steps are measured against is the re-extracted direction, not the stored one
    current = torch.load(p1.arm("projected", 5) / "state.pt", weights_only=False)["v_current"]
    assert not all(torch.equal(current[n].cpu(), V["nll"][n].cpu()) for n in current)
    d = drift_stats({5: tracked}, first=1)
    assert d["n_records"] == CFG.steps and d["n_steps_tracked"] == CFG.steps - 1


def test_lora_student_trains_through_the_same_grpo_step(tiny):
    world, root = tiny
    V = _V(world, LORA)
    man, paths = _arm(world, root, "lora", "lora_projected", V, drift_every=1, spec=LORA)
    assert man["total_rank"] == sum(t.shape[-1] for t in V["nll"].values())
    assert torch.load(paths.arm("lora_projected", 5) / "state.pt",
                      weights_only=False)["adapter_kind"] == "lora"
    fired = [u for st in man["steps"] for u in st["updates"] if u.get("frac_fired", 0) > 0]
    assert fired, "the LoRA arm's projection never acted"
    assert all(u["grad_hackward_cos_out"] < 1e-4 for u in fired)  # stored V removed
    assert "drift" in man["steps"][0]


def test_lora_vhack_parts_are_each_tensors_share():
    v = {"m": torch.tensor([[3.0, 0.0, 4.0]])}  # A = first 1 entry, B = last 2
    parts = lora_vhack_parts(v, {"m": [1, 2]})
    assert parts["m"] == pytest.approx([9 / 25, 16 / 25])
    assert lora_vhack_parts({"m": torch.tensor([[0.0, 1.0, 0.0]])}, {"m": [1, 2]})["m"][0] == 0


# -- the verdict on synthetic trajectories -----------------------------------------------------

def _man(rates, gt=0.2, n=32):
    return {"steps": [{"step": s, "student": {"n": n, "hack_rate": r, "gt_pass_rate": gt},
                       "updates": [{}]} for s, r in enumerate(rates)]}


def _arms(v_ds, p_ds, v_lora, p_lora, seeds=(1, 2, 3), gt_lora=0.2):
    ramp = lambda top, jitter: [min(1.0, top * s / 15 + jitter) for s in range(20)]  # noqa: E731
    return {"vanilla": {s: _man(ramp(v_ds, 0.01 * s)) for s in seeds},
            "projected": {s: _man(ramp(p_ds, 0.01 * s)) for s in seeds},
            "lora_vanilla": {s: _man(ramp(v_lora, 0.01 * s), gt=gt_lora) for s in seeds},
            "lora_projected": {s: _man(ramp(p_lora, 0.013 * s), gt=gt_lora) for s in seeds}}


def test_verdict_passes_when_lora_projects_as_well():
    v = verdict(_arms(0.8, 0.5, 0.8, 0.52), drift_ok=True)
    assert v["matched"]["matched"] and v["outcome"].startswith("PASS: LoRA projects"), v["outcome"]
    assert v["effects"]["ratio"] >= 0.8


def test_verdict_clean_negative_when_lora_is_significantly_weaker():
    v = verdict(_arms(0.8, 0.4, 0.8, 0.78), drift_ok=True)
    assert v["outcome"].startswith("PASS (clean negative)"), v["outcome"]


def test_verdict_invalid_when_vanilla_arms_do_not_match_or_drift_is_unmeasured():
    assert verdict(_arms(0.8, 0.5, 0.3, 0.2), True)["outcome"].startswith("INVALID: vanilla")
    assert verdict(_arms(0.8, 0.5, 0.8, 0.5, gt_lora=0.6), True)["outcome"].startswith(
        "INVALID: vanilla")
    assert verdict(_arms(0.8, 0.5, 0.8, 0.5), False)["outcome"] == "INVALID: drift not measured"


def test_verdict_inconclusive_without_a_delta_s_effect():
    v = verdict(_arms(0.8, 0.8, 0.8, 0.5), drift_ok=True)
    assert v["outcome"].startswith("INCONCLUSIVE: δS"), v["outcome"]


def test_effect_orientation_and_ratio():
    """A projected arm that hacks MORE than vanilla is a negative effect, never a positive one."""
    ef = effects(_arms(0.5, 0.8, 0.5, 0.8))
    assert ef["delta_s"]["mean_diff"] < 0 and ef["lora"]["mean_diff"] < 0
    assert math.isnan(ef["ratio"])
    mt = matched(_arms(0.8, 0.5, 0.8, 0.5))
    assert mt["rise_gap"] < 0.05 and mt["pass_gap"] == 0
