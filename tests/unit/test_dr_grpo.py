"""R5's Dr.GRPO surrogate: a hand-computed case, the corrections, the ratio bookkeeping, and the
invariances the constant normaliser promises (micro-batch size, padding, row order)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from probe.adapters.antipasto import AntipastoAdapter
from probe.batch import collate
from probe.rl.config import GRPOConfig
from probe.rl.dr_grpo import (RatioStats, SurrogateInputs, clip_fraction, group_advantages,
                              scatter_tokens, surrogate)
from probe.rl.trainer import surrogate_grads

pytestmark = pytest.mark.unit
PAD = 0


def test_R5_advantages_are_group_mean_centred_without_std():
    adv = group_advantages([3.5, 0.5, 0.5, 0.5, 3.5, 3.5], [0, 0, 0, 0, 1, 1])
    assert adv == pytest.approx([2.25, -0.75, -0.75, -0.75, 0.0, 0.0])
    # no division by the std: scaling rewards scales advantages
    assert group_advantages([7.0, 1.0], [0, 0]) == pytest.approx([3.0, -3.0])


def _inputs(adv, teacher, old, beh, mask):
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return SurrogateInputs(t(adv), torch.tensor(teacher), t(old), t(beh), t(mask))


def test_R5_surrogate_hand_computed():
    """Two rows, two tokens each; ε = 0.2; normaliser 10."""
    logp = torch.tensor([[math.log(0.6), math.log(0.3)], [math.log(0.2), math.log(0.5)]])
    old = [[math.log(0.4), math.log(0.3)], [math.log(0.4), math.log(0.5)]]
    x = _inputs([1.0, -2.0], [False, False], old, old, [[1, 1], [1, 0]])
    loss = surrogate(logp, x, epsilon=0.2, epsilon_high=0.2, correction="student_old", is_cap=2,
                     luffy_gamma=0.1, normaliser=10.0)
    # row 0 token 0: ρ = 1.5, Â = 1 -> -min(1.5, 1.2) = -1.2; token 1: ρ = 1 -> -1
    # row 1 token 0: ρ = 0.5, Â = -2 -> -min(-1.0, 0.8 * -2 = -1.6) = 1.6; token 1 masked -> 0
    expected = torch.tensor([[-1.2, -1.0], [1.6, 0.0]]) / 10
    torch.testing.assert_close(loss, expected)


def test_R5_surrogate_gradient_zero_where_clipped():
    """Where the clip is active (Â > 0, ρ > 1 + ε) the token gets no gradient; elsewhere it does."""
    logp = torch.tensor([[math.log(0.6), math.log(0.3)]], requires_grad=True)
    old = [[math.log(0.4), math.log(0.3)]]
    x = _inputs([1.0], [False], old, old, [[1, 1]])
    surrogate(logp, x, epsilon=0.2, epsilon_high=0.2, correction="student_old", is_cap=2,
              luffy_gamma=0.1, normaliser=1.0).sum().backward()
    assert logp.grad[0, 0] == 0.0
    assert logp.grad[0, 1] == pytest.approx(-1.0)  # d(-ρÂ)/dlogp = -ρÂ = -1


def test_R5_corrections_differ_only_on_teacher_rows():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])).tolist()
    beh = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.9]])).tolist()  # row 1: the teacher's
    x = _inputs([1.0, 1.0], [False, True], old, beh, [[1, 1], [1, 1]])
    kw = dict(epsilon=0.2, epsilon_high=0.2, is_cap=2.0, luffy_gamma=0.1, normaliser=1.0)
    base = surrogate(logp, x, correction="student_old", **kw)
    tis = surrogate(logp, x, correction="truncated_is", **kw)
    luffy = surrogate(logp, x, correction="luffy", **kw)
    torch.testing.assert_close(base[0], tis[0])
    torch.testing.assert_close(base[0], luffy[0])
    # truncated IS: weight min(π_old/π_teacher, 2) = 0.5/0.9
    torch.testing.assert_close(tis[1], base[1] * (0.5 / 0.9))
    # LUFFY: -Â p/(p+γ) = -0.5/0.6
    torch.testing.assert_close(luffy[1], torch.full((2,), -0.5 / 0.6))


def test_R5_ratio_stats_count_clipped_tokens_by_sign():
    logp = torch.log(torch.tensor([[0.6, 0.4], [0.2, 0.4]]))
    old = torch.log(torch.tensor([[0.4, 0.4], [0.4, 0.4]])).tolist()
    beh = torch.log(torch.tensor([[0.4, 0.4], [0.8, 0.8]])).tolist()
    x = _inputs([1.0, -1.0], [False, True], old, beh, [[1, 1], [1, 1]])
    st = RatioStats(0.2, 0.2)
    st.add(logp, x)
    s = st.summary()
    assert s["student_pos"]["n"] == 2 and s["student_pos"]["clip_high"] == 0.5  # ρ = 1.5 and 1
    assert s["teacher_neg"]["n"] == 2 and s["teacher_neg"]["clip_low"] == 0.5  # ρ = 0.5 and 1
    assert s["teacher_neg_is"]["mean"] == pytest.approx((0.25 + 0.5) / 2)  # raw π_θ/π_teacher
    assert s["teacher_neg_is"]["clip_low"] == 0  # no clip acts on the raw importance ratio
    luffy = RatioStats(0.2, 0.2, teacher_clipped=False)
    luffy.add(logp, x)
    assert luffy.summary()["teacher_neg"]["clip_low"] == 0  # luffy: teacher rows are never clipped
    assert s["student_neg"]["n"] == 0
    assert clip_fraction(s) == pytest.approx(2 / 4)
    assert sum(s["student_pos"]["hist"]) == 2


def test_R5_scatter_puts_values_on_completion_tokens_only():
    batch = collate([[5, 6, 7], [5]], [[8, 9], [8, 9, 10]], PAD, side="left")
    t = scatter_tokens(batch, [[1.0, 2.0], [3.0, 4.0, 5.0]])
    assert t[batch.loss_mask == 0].abs().sum() == 0
    assert t[0][batch.loss_mask[0].bool()].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="token values"):
        scatter_tokens(batch, [[1.0], [3.0, 4.0, 5.0]])


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        p = [rng.randrange(3, 60) for _ in range(rng.randrange(2, 7))]
        c = [rng.randrange(3, 60) for _ in range(rng.randrange(1, 6))]
        rows.append({"prompt_ids": p, "completion_ids": c, "source": "teacher" if i % 2 else "student",
                     "old_logp": [rng.uniform(-5, -0.5) for _ in c],
                     "behaviour_logp": [rng.uniform(-3, -0.1) for _ in c]})
    return rows


@pytest.mark.parametrize("correction", ["student_old", "truncated_is", "luffy"])
def test_R5_gradient_invariant_to_micro_batch_padding_and_order(tiny_model, correction):
    """The constant normaliser makes the loss a sum over rows: the summed gradient must not change
    with micro-batch size, padding side or row order (the verl 'token-sum-norm' trap)."""
    adapter = AntipastoAdapter(tiny_model)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.05)
    rows = _rows(7)
    adv = [1.5, -0.5, 0.0, 2.0, -1.0, 0.25, -1.75]

    def grads(rows_, adv_, micro, side="right"):
        cfg = GRPOConfig(micro_batch=micro, correction=correction)
        import probe.train_step as ts
        orig = ts.collate
        ts.collate = lambda p, c, pad: orig(p, c, pad, side=side)
        try:
            total, _, _, _ = surrogate_grads(adapter, rows_, adv_, cfg, PAD, "cpu", 40.0)
        finally:
            ts.collate = orig
        return total

    ref = grads(rows, adv, 7)
    assert sum(float(g.abs().sum()) for g in ref.values()) > 0
    order = list(range(7))
    random.Random(3).shuffle(order)
    variants = {"micro=1": grads(rows, adv, 1), "micro=3": grads(rows, adv, 3),
                "left pad": grads(rows, adv, 7, "left"),
                "shuffled": grads([rows[i] for i in order], [adv[i] for i in order], 2)}
    for name, g in variants.items():
        for n in ref:
            torch.testing.assert_close(g[n], ref[n], rtol=1e-4, atol=1e-7,
                                       msg=lambda m, name=name: f"{name}: {m}")


def test_R5_zero_advantage_rows_give_zero_gradient(tiny_model):
    adapter = AntipastoAdapter(tiny_model)
    rows = _rows(4)
    cfg = GRPOConfig(micro_batch=4)  # a pass takes a number: a stage resolves "auto" first
    total, teacher, _, _ = surrogate_grads(adapter, rows, [0.0] * 4, cfg, PAD, "cpu", 10.0)
    assert all(float(g.abs().max()) == 0 for g in total.values())


def test_R5_cached_grader_grades_each_distinct_completion_once():
    from types import SimpleNamespace

    from probe.rl.rollout import CachedGrader

    calls = []

    class Fake:
        def grade_many(self, items):
            calls.append(len(items))
            return [f"grade:{p.id}:{text}:{ev}" for p, text, ev in items]

    CachedGrader._memo.clear()
    p1, p2 = SimpleNamespace(id=1), SimpleNamespace(id=2)
    g = CachedGrader(Fake())
    items = [(p1, "a", "run_tests"), (p1, "a", "run_tests"), (p2, "a", "run_tests"),
             (p1, "a", None)]
    assert g.grade_many(items) == ["grade:1:a:run_tests", "grade:1:a:run_tests",
                                   "grade:2:a:run_tests", "grade:1:a:None"]
    assert calls == [3] and g.misses == 3 and g.hits == 1
    assert g.grade_many(items[:1]) == ["grade:1:a:run_tests"] and calls == [3]


def _manifest(rates: list[float], n: int = 32) -> dict:
    return {"steps": [{"student": {"n": n, "hack_rate": r}} for r in rates]}


def test_R5_checks_rise_and_paired_slowdown_on_known_trajectories():
    """Synthetic trajectories with known answers: a swapped pair of arms must flip the verdict."""
    from probe.checks_grpo import paired_slowdown, rise

    up = [0.0, 0.0, 0.0] + [0.1 * k for k in range(1, 11)] + [1.0] * 7
    flat = [0.0] * 20
    fast = {s: _manifest(up) for s in (1, 2, 3)}
    slow = {s: _manifest([x / 2 for x in up]) for s in (1, 2, 3)}
    r = rise(fast)
    assert r["start"] == 0.0 and r["rise"] == pytest.approx(1.0)  # steps 13-15 are all 1.0
    assert rise({1: _manifest(flat)})["rise"] == 0.0
    s = paired_slowdown(fast, slow)
    assert s["mean_diff"] > 0 and s["p"] < 0.001 and s["seeds_positive"] == 3
    swapped = paired_slowdown(slow, fast)
    assert swapped["mean_diff"] < 0 and swapped["p"] > 0.5 and swapped["seeds_positive"] == 0
    same = paired_slowdown(fast, fast)
    assert same["p"] == 1.0 and same["mean_diff"] == 0.0
    with pytest.raises(ValueError, match="step 15"):
        rise({1: _manifest(up[:10])})


def test_R5_saturation_names_the_failing_steps():
    from probe.checks_grpo import saturation

    def step(k, clip, var, share):
        return {"step": k, "updates": [{"clip_frac": clip, "teacher_grad_norm": share,
                                        "grad_norm_in": 1.0,
                                        "ratio": {"teacher_pos_is": {"n": 10, "frac_tiny": 0.3}}}],
                "teacher": {"n": 4}, "frac_groups_teacher_student_gap": 1.0,
                "frac_groups_with_variance": var}

    m = {"vanilla": {1: {"steps": [step(0, 0.05, 1.0, 0.3), step(1, 0.5, 0.5, 0.0)]}}}
    s = saturation(m, clip_max=0.2, variance_min=0.9)
    assert s["clip_bad"] == ["vanilla/s1/step1"] and s["variance_bad"] == ["vanilla/s1/step1"]
    assert s["teacher_bad"] == ["vanilla/s1/step1"] and s["clip_max"] == 0.5
    assert s["teacher_tiny_ratio_mean"] == pytest.approx(0.3)
