"""R5's trainer on a tiny world: arm wiring, shared data across arms, projection of the gradient vs
the update, and resume after a kill. Rewards come from a stand-in label (the tiny policies write
noise) so that groups carry variance and the gradient is non-zero."""
from __future__ import annotations

import pytest

import probe.rl.rollout as rollout
import probe.stages.grpo as grpo
from probe.adapters.registry import build_adapter
from probe.artifacts import read_manifest, read_rows, step_path
from probe.env.grader import GraderConfig
from probe.layout import grpo_paths
from probe.rl.config import GRPOConfig
from probe.stages.grpo import ensure_grpo
from probe.vhack import random_directions
from tests.unit.tiny_world import make_tiny_world, stand_in_labels

pytestmark = pytest.mark.unit

ARMS = ("vanilla", "projected", "projected_update", "projected_random", "projected_refresh")
CFG = GRPOConfig(steps=3, problems_per_step=2, group_size=4, micro_batch=3, seeds=(5,), arms=ARMS,
                 split="train",
                 refresh_every=2, lr=1e-2)
GRADER = GraderConfig(workers=1)


def _fake_labels(monkeypatch):
    monkeypatch.setattr(rollout, "sample_and_grade", stand_in_labels(rollout.sample_and_grade))


def _directions(world):
    model = world.load_base("cpu")
    sizes = build_adapter(model).sizes
    return {"nll": random_directions(sizes, 1, 0), "random": random_directions(sizes, 1, 1),
            "shuffled": random_directions(sizes, 1, 2), "grpo": random_directions(sizes, 1, 3)}


def test_R5_every_registered_arm_names_a_direction_the_stage_provides():
    """An arm is one registry entry; its direction must be one ensure_vhack writes (or the
    refreshed one the stage keeps), so no arm can silently project nothing."""
    from probe.arms import GRPO_ARMS
    from probe.vhack_methods import KINDS

    known = set(KINDS.values()) | {"refreshed"}
    for arm in GRPO_ARMS.values():
        assert arm.direction is None or arm.direction in known, arm
        assert arm.target in ("grad", "update")


@pytest.fixture(scope="module")
def tiny_grpo(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    _fake_labels(mp)
    root = tmp_path_factory.mktemp("grpo")
    world = make_tiny_world(root / "world", max_new_tokens=6)
    V = _directions(world)
    paths = grpo_paths({"name": "tiny"}, "k", CFG, root / "out")
    ensure_grpo(world, CFG, paths, V, grader_config=GRADER)
    yield world, V, paths, root
    mp.undo()


def _rows(paths, arm, step):
    return read_rows(step_path(paths.arm(arm, 5), step))


def test_R5_arms_share_teacher_rows_and_start(tiny_grpo):
    """Arms of a seed differ only in what they do with the same data: identical teacher rows at
    every step, identical student rows at step 0 (every arm starts at δS = 0)."""
    _, _, paths, _ = tiny_grpo
    key = lambda r: (r["source"], r["group"], r["completion"], r["reward"])  # noqa: E731
    for step in range(CFG.steps):
        teacher = {a: sorted(key(r) for r in _rows(paths, a, step) if r["source"] == "teacher")
                   for a in ARMS}
        assert all(t == teacher["vanilla"] for t in teacher.values()), step
        assert len(teacher["vanilla"]) == CFG.problems_per_step * CFG.n_teacher
    start = {a: sorted(key(r) for r in _rows(paths, a, 0)) for a in ARMS}
    assert all(s == start["vanilla"] for s in start.values())
    rewards = {r["reward"] for a in ARMS for s in range(3) for r in _rows(paths, a, s)}
    assert rewards == {0.5, 3.5}  # the stand-in labels give variance, so the test means something


def test_R5_advantages_recorded_are_group_centred(tiny_grpo):
    _, _, paths, _ = tiny_grpo
    rows = _rows(paths, "vanilla", 1)
    for g in {r["group"] for r in rows}:
        grp = [r for r in rows if r["group"] == g]
        mean = sum(r["reward"] for r in grp) / len(grp)
        assert [r["advantage"] for r in grp] == pytest.approx([r["reward"] - mean for r in grp])


def test_R5_projection_acts_where_the_arm_says(tiny_grpo):
    _, _, paths, _ = tiny_grpo
    man = {a: read_manifest(paths.arm(a, 5)) for a in ARMS}
    for u in (u for st in man["vanilla"]["steps"] for u in st["updates"]):
        assert "cos_in" not in u  # vanilla projects nothing
    fired = [u for st in man["projected"]["steps"] for u in st["updates"] if u["fired"]]
    assert fired, "the projected arm never fired: the test would show nothing"
    for u in fired:  # one-sided: no hack-ward component left in the gradient, and g changed
        assert u["cos_out"] < 1e-5 and u["grad_change_norm"] > 0
        # measured on .grad against v_hack itself: a flipped or wrong V would leave it > 0
        assert u["grad_hackward_cos"] > 1e-4 and u["grad_hackward_cos_out"] < 1e-5
    # the control arm projects its own direction, not v_hack: same data at step 0, other cosines
    ctrl = man["projected_random"]["steps"][0]["updates"][0]
    assert ctrl["cos_in"] != pytest.approx(man["projected"]["steps"][0]["updates"][0]["cos_in"])
    assert ctrl["grad_hackward_cos"] == pytest.approx(
        man["projected"]["steps"][0]["updates"][0]["grad_hackward_cos"])  # same data, same g
    upd = [u for st in man["projected_update"]["steps"] for u in st["updates"]]
    assert any(u["update_cos_before_projection"] > 1e-4 for u in upd)
    assert all(u["update_cos"] < 1e-5 for u in upd)  # the update applied has none left
    # the refreshed arm re-extracted v_hack at step 2 (refresh_every = 2)
    overlaps = [st["refreshed_overlap"] for st in man["projected_refresh"]["steps"]]
    assert overlaps[0] is None and overlaps[2] is not None


def test_R5_ratios_move_after_the_first_update(tiny_grpo):
    """≥ 2 updates per batch: the first sees ρ ≡ 1 (π_θ = π_old), the second must not."""
    _, _, paths, _ = tiny_grpo
    st = read_manifest(paths.arm("vanilla", 5))["steps"][1]
    first = st["updates"][0]["ratio"]
    second = st["updates"][1]["ratio"]
    for key, s in first.items():
        if s.get("n") and not key.endswith("_is"):
            assert s["min"] == pytest.approx(1.0, abs=1e-5) and s["max"] == pytest.approx(1.0, abs=1e-5)
    assert any(s.get("n") and abs(s["mean"] - 1) > 1e-7 for k, s in second.items()
               if not k.endswith("_is"))


def test_R5_resume_after_kill_gives_the_same_run(tiny_grpo, monkeypatch):
    world, V, paths, root = tiny_grpo
    _fake_labels(monkeypatch)
    cfg = GRPOConfig(**{**CFG.__dict__, "arms": ("projected",)})
    fresh = grpo_paths({"name": "tiny-resume"}, "k", cfg, root / "out2")
    real = grpo.grpo_update_step
    calls = {"n": 0}

    def dies_at_step_2(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(grpo, "grpo_update_step", dies_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        ensure_grpo(world, cfg, fresh, V, grader_config=GRADER)
    assert not (fresh.arm("projected", 5) / "manifest.json").exists()
    after = {"n": 0}

    def counted(*a, **kw):
        after["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(grpo, "grpo_update_step", counted)
    ensure_grpo(world, cfg, fresh, V, grader_config=GRADER)
    # it resumed: only the step that was killed ran again (a restart from 0 would also match)
    assert after["n"] == cfg.steps - 2
    for s in range(cfg.steps):
        a = _rows(fresh, "projected", s)
        b = _rows(paths, "projected", s)
        assert [(r["completion"], r["reward"]) for r in a] == [(r["completion"], r["reward"]) for r in b]
        assert [r["cos_S_contrib"] for r in a] == pytest.approx([r["cos_S_contrib"] for r in b],
                                                                nan_ok=True)
    da = read_manifest(fresh.arm("projected", 5))["steps"][-1]["delta_s_norm"]
    db = read_manifest(paths.arm("projected", 5))["steps"][-1]["delta_s_norm"]
    assert da == pytest.approx(db, rel=1e-6)


def test_R5_live_scalars_from_step_summaries(tiny_grpo, tmp_path):
    """Every step summary yields the live curves (hack rate, clip fraction, teacher share, cosines);
    with tensorboard installed they land in event files."""
    from probe.rl.tracker import StepTracker, step_scalars

    _, _, paths, _ = tiny_grpo
    steps = read_manifest(paths.arm("projected", 5))["steps"]
    sc = step_scalars(steps[1])
    for key in ("student/hack_rate", "ratio/clip_frac_last_update", "grad/teacher_share",
                "update/hackward_cos", "projection/cos_in", "groups/frac_groups_with_variance"):
        assert key in sc, key
    pytest.importorskip("tensorboard", reason="optional extra [tb] not installed")
    tr = StepTracker(tmp_path)
    for i, st in enumerate(steps):
        tr.log(i, st)
    tr.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_R5_report_section_reads_the_run(tiny_grpo, tmp_path):
    """The report's R5 section tabulates every arm and draws the trajectories from artifacts;
    a run too short for the step-15 window says so instead of crashing."""
    from probe.report_grpo import r5_section

    _, _, paths, _ = tiny_grpo
    lines = r5_section(paths.root, tmp_path)
    text = "\n".join(lines)
    for arm in ARMS:
        assert f"| {arm} |" in text
    assert "needs step 15" in text
    assert (tmp_path / "r5_trajectories.png").stat().st_size > 0
