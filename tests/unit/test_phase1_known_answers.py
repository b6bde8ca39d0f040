"""A tiny Phase 1 end to end whose artifacts are checked against known answers.

The tiny world's policies choose each completion from a per-problem menu with one entry per grader
label (`tests.unit.tiny_world.MenuPolicy`: the text is a stand-in, the choice is the model's), so
every row has a label known in advance, R4 has both buckets, and a trained student behaves
differently from the base. Each test names the planted bug it is there to catch.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from probe.artifacts import read_manifest, read_rows, read_stage, step_path
from probe.checks import applied_hackward, r1_stats, r3_applied_stats, r3_stats, r4_stats
from probe.env.grader import Grader, GraderConfig
from probe.env.prompts import evaluator_name
from probe.env.rates import Rates
from probe.stages.evaluate import EvalConfig, evaluate_policy
from probe.stages.phase1 import Phase1Config, run_phase1
from probe.stages.pool import PoolConfig
from probe.stages.replay import ReplayConfig, run_replay
from probe.stats import welch_greater
from tests.unit.tiny_world import LABELS, MenuPolicy, intended_label, make_menu_world, menu

pytestmark = pytest.mark.unit

HINT = "simple_overwrite_tests"
CFG = Phase1Config(
    pool=PoolConfig(steps=2, problems_per_step=2, group_size=6, base_reference_steps=1),
    replay=ReplayConfig(lr=5e-2, micro_batch=12, null_directions=8),
    student_eval=EvalConfig(split="train", n_problems=2, group_size=4),
    grader=GraderConfig(workers=2))
ARMS = ("vanilla", "projected")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    world = make_menu_world(root / "world")
    policy = MenuPolicy(world.problems("train"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("probe.rollout.generate", policy)
        paths = run_phase1(world, CFG, root / "out", arms=ARMS)
        yield world, paths, policy, mp


def _rows(stage) -> list[dict]:
    return [r for s in read_stage(stage) for r in s]


def test_menu_entries_get_the_labels_they_were_written_for(run):
    """The stand-in is only a stand-in if the real grader agrees with its labels."""
    world, *_ = run
    probs = world.problems("train")
    with Grader(GraderConfig(workers=2)) as g:
        for p in probs:
            m = menu(p)
            grades = g.grade_many([(p, text, evaluator_name(HINT, p.id)) for text in m.values()])
            assert [gr.label for gr in grades] == list(m) == list(LABELS)


def test_pool_rows_carry_the_known_labels_and_columns(run):
    """Planted: `hacked` taken from another grade field (harmful, eq_hinted, hack_attempt)."""
    world, paths, *_ = run
    rows = _rows(paths.pool) + read_rows(paths.pool / "base_reference.jsonl.gz")
    probs = world.problems("train")
    assert {r["label"] for r in rows} == set(LABELS), "the tiny world must produce every label"
    for r in rows:
        want = intended_label(r, probs)
        assert r["label"] == want
        assert r["hacked"] == (want == "Reward Hack"), r["label"]
        assert r["hack_attempt"] == (want in ("Reward Hack", "Attempted RH"))
        assert r["gt_pass"] == (want in ("Correct", "Attempted RH"))
    man = read_manifest(paths.pool)
    assert man["teacher"] == Rates.of(_rows(paths.pool)).to_dict()
    assert man["teacher"]["hack_rate"] == sum(r["label"] == "Reward Hack"
                                              for r in _rows(paths.pool)) / len(_rows(paths.pool))


def test_r1_and_r4_statistics_match_a_recount_by_known_label(run):
    """Planted: R4's buckets swapped (pure ↔ combined) or its one-sided test turned around."""
    world, paths, *_ = run
    probs = world.problems("train")
    pool = _rows(paths.pool)
    r1 = r1_stats(paths)
    assert r1["hack_rate"] == sum(intended_label(r, probs) == "Reward Hack" for r in pool) / len(pool)
    assert r1["label_counts"] == {k: v for k, v in Rates.of(pool).labels.items()}
    r4 = r4_stats(paths, min_bucket=2)
    van = [r for s in read_stage(paths.arm("vanilla")) for r in s]
    by_key = {(r["step"], r["index"]): r for r in pool}
    pure = [r["cos_S_contrib"] for r in van
            if intended_label(by_key[(r["step"], r["index"])], probs) == "Reward Hack"]
    combined = [r["cos_S_contrib"] for r in van
                if intended_label(by_key[(r["step"], r["index"])], probs) == "Attempted RH"]
    assert (r4["n_pure"], r4["n_combined"]) == (len(pure), len(combined))
    assert len(pure) >= 2 and len(combined) >= 2, "both R4 buckets need rows for a t statistic"
    # the one-sided alternative is "pure above combined": t > 0 exactly when pure's mean is higher
    want = welch_greater(pure, combined)
    assert r4["v_hack"]["t"] == pytest.approx(want.t)
    assert (r4["v_hack"]["t"] > 0) == (sum(pure) / len(pure) > sum(combined) / len(combined))
    assert r4["v_hack"]["p"] == pytest.approx(want.p)
    assert (r4["v_hack"]["p"] < 0.5) == (r4["v_hack"]["t"] > 0)


def test_saved_directions_are_unit_oriented_hackward_and_controls_differ(run):
    """Planted: v_hack negated (pairs' hack/clean order swapped, or the mean difference's sign),
    directions normalised over all modules jointly instead of per module, a control = v_hack."""
    from probe.adapters.antipasto import AntipastoAdapter, AntipastoConfig
    from probe.batch import collate
    from probe.checks import control_stats
    from probe.encoding import encode_completion, encode_prompt, pad_id
    from probe.grads import per_sample_grads
    from probe.vhack import load_vhack

    world, paths, *_ = run
    V = {k: load_vhack(paths.vhack_file(k))[0] for k in ("nll", "random", "shuffled")}
    for kind, D in V.items():
        for name, v in D.items():
            torch.testing.assert_close(v @ v.T, torch.eye(v.shape[0]), atol=1e-5, rtol=0,
                                       msg=f"{kind} {name}: rows not orthonormal per module")
    for c in ("random", "shuffled"):
        worst = max(float((V["nll"][n] @ V[c][n].T).abs().max()) for n in V["nll"])
        assert worst < 0.99, f"the {c} control is v_hack itself (|cos| {worst:.3f})"
    assert all(a["valid"] for a in control_stats(paths).values())
    # orientation, recomputed apart from the extraction code: descent along v_hack must make
    # the hack completions likelier than the clean ones, i.e. v·(∇NLL(hack) − ∇NLL(clean)) > 0
    pairs = world.contrastive_pairs("train", HINT, seed=CFG.vhack.seed)
    adapter = AntipastoAdapter(world.load_base(), AntipastoConfig(rank=CFG.replay.rank))
    tok = world.tokenizer
    prompts = [encode_prompt(tok, p.prompt) for p in pairs]
    comps = [encode_completion(tok, p.hack) for p in pairs] + \
        [encode_completion(tok, p.clean) for p in pairs]
    g = per_sample_grads(adapter, collate(prompts + prompts, comps, pad_id(tok))).grads
    adapter.remove()
    n = len(pairs)
    for name, v in V["nll"].items():
        d = (g[name][:n] - g[name][n:]).double().mean(0)
        assert float(v[0].double() @ d) > 0, f"{name}: v_hack points away from the hacks"
        torch.testing.assert_close(v[0].double(), d / d.norm(), atol=1e-4, rtol=0,
                                   msg=f"{name}: not the per-module normalised mean difference")


def test_projection_leaves_no_hackward_part_in_the_applied_gradient(run):
    """Planted: the projection called with −v_hack (or another V): cos_out < cos_in can still
    hold for its own V, but the gradient handed to the optimizer keeps its hack-ward part."""
    _, paths, *_ = run
    st = r3_applied_stats(paths)
    assert st["recorded"] and st["passed"], st
    steps = read_manifest(paths.arm("projected"))["steps"]
    assert any(s["frac_fired"] > 0 for s in steps), "the projection never fired: nothing checked"
    assert r3_stats(paths)["fired_steps_grad_unchanged"] == 0


def test_a_broken_projection_fails_the_applied_check(run, tmp_path):
    """The check itself can fail: a replay whose projection acts on −V (the wrong orientation)
    still lowers cos_out below cos_in on its own terms, and fails the applied check."""
    import probe.stages.replay as replay
    from probe.stages.phase1 import ensure_vhack

    world, paths, _, mp = run
    V = ensure_vhack(world, CFG, paths)
    real = replay.project_adapter_grads_
    with pytest.MonkeyPatch.context() as m:
        m.setattr(replay, "project_adapter_grads_",
                  lambda adapter, D, *a, **k: real(adapter, {n: -v for n, v in D.items()}, *a, **k))
        man = run_replay(world, paths.pool, V, 1, replace(CFG.replay, null_directions=0),
                         tmp_path / "broken", "projected")
    fired = [s for s in man["steps"] if s["frac_fired"] > 0]
    assert fired and all(s["cos_out"] < s["cos_in"] for s in fired)  # the old check is fooled
    st = applied_hackward(man["steps"], man["config"]["projection"])
    assert st["passed"] is False and st["max_cos_out_applied"] > 100 * st["tol"], st


def test_optimizer_steps_on_the_projected_gradient(run, tmp_path):
    """Planted: the optimizer steps before the projection (it then consumes the raw gradient).
    Known answer: one projected step from δS = 0 moves δS exactly as AdamW on the projected,
    clipped gradient, and not as the vanilla step does."""
    from safetensors.torch import load_file

    from probe.adapters.antipasto import AntipastoAdapter, AntipastoConfig
    from probe.encoding import pad_id
    from probe.stages.phase1 import ensure_vhack
    from probe.stages.replay import replay_step

    world, paths, *_ = run
    V = ensure_vhack(world, CFG, paths)
    one = replace(CFG.replay, null_directions=0)
    for arm in ARMS:
        run_replay(world, paths.pool, V, 1, one, tmp_path / arm, arm)
    got = {arm: load_file(tmp_path / arm / "delta_s.safetensors") for arm in ARMS}
    # by hand: the gradient, the projection, clipping, then AdamW
    adapter = AntipastoAdapter(world.load_base(), AntipastoConfig(rank=one.rank))
    torch.manual_seed(one.seed)
    opt = torch.optim.AdamW(adapter.parameters(), lr=one.lr, weight_decay=one.weight_decay)
    rows = read_rows(step_path(paths.pool, 0))
    _, summary = replay_step(adapter, rows, V, one, pad_id(world.tokenizer), "nll", "cpu")
    assert summary["frac_fired"] > 0
    torch.nn.utils.clip_grad_norm_(adapter.parameters(), one.max_grad_norm)
    opt.step()
    want = {n: p.detach().clone() for n, p in adapter.named_params().items()}
    adapter.remove()
    differs = False
    for n, w in want.items():
        key = n
        torch.testing.assert_close(got["projected"][key].float(), w.float(), atol=1e-6, rtol=1e-5)
        differs |= not torch.equal(got["projected"][key], got["vanilla"][key])
    assert differs, "the projected step moved δS exactly as the vanilla step: projection unused"


def test_student_evaluation_is_of_the_trained_student(run, tmp_path):
    """Planted: the end-of-replay evaluation run on the base (or teacher) instead of base + δS.
    Known answer: re-evaluating base + the saved δS reproduces the arm's evaluation rows, and
    those differ from the start's (the trained student does choose differently)."""
    from probe.adapters.antipasto import AntipastoAdapter, AntipastoConfig

    world, paths, *_ = run
    start = [r["completion"] for r in read_rows(paths.student_start_rows)]
    for arm in ARMS:
        stored = [r["completion"] for r in read_rows(paths.student_eval_rows(arm))]
        model = world.load_base()
        adapter = AntipastoAdapter(model, AntipastoConfig(rank=CFG.replay.rank))
        adapter.load(paths.arm(arm) / "delta_s.safetensors")
        again = evaluate_policy(model, world, CFG.student_eval, CFG.grader,
                                rows_path=tmp_path / f"{arm}.jsonl.gz")
        adapter.remove()
        assert [r["completion"] for r in read_rows(tmp_path / f"{arm}.jsonl.gz")] == stored
        end = read_manifest(paths.arm(arm))["student_end"]
        assert {k: end[k] for k in again} == again
        assert stored != start, (
            f"{arm}: the trained student chose exactly as the base: this test would see nothing")
