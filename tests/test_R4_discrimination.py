"""R4: v_hack discriminates the hack direction from a generic gradient.

Spec: "Done means: within hacked samples, cos | gt_pass=0 (pure hack) > cos | gt_pass=1 (hack +
correct), one-sided t-test p<0.05" (T4: "t > 2, p < 0.05"). "Sneaky fail: v_hack is the gradient
direction toward any completion (not specifically hack); both buckets would have the same cos." And
T4's: "v_hack picks up a generic 'long-completion' signal rather than hack direction". Here
"hacked" = a hack attempt (labels Reward Hack or Attempted RH): with the strict label every hacked
sample has gt_pass=0 and the split would be empty. Negative controls (a Haar-random V and a
shuffled-label V, same code) must NOT pass the same test, and v_hack must beat a null of 100
Haar-random directions. Too few rows in a bucket is a failure.
"""
from __future__ import annotations

import math

import pytest

from probe.checks import r4_stats

pytestmark = pytest.mark.uat

P_MAX = 0.05  # spec R4
T_MIN = 2.0  # spec T4
MIN_BUCKET = 5  # a t-test on fewer rows per bucket is not evidence


@pytest.fixture(scope="module")
def stats(vanilla_replay):
    return r4_stats(vanilla_replay, min_bucket=MIN_BUCKET)


def _passes(w: dict) -> bool:
    return math.isfinite(w["p"]) and w["p"] < P_MAX and w["t"] > T_MIN


def _fmt(w: dict) -> str:
    return (f"{w['mean_a']:+.4f} (n={w['n_a']}) vs {w['mean_b']:+.4f} (n={w['n_b']}), "
            f"t={w['t']:+.2f}, p={w['p']:.2g}")


def _buckets_note(stats) -> str:
    """'' when both buckets are large enough to test, else the counts (part of every statistic)."""
    if min(stats["n_pure"], stats["n_combined"]) >= MIN_BUCKET:
        return ""
    return (f"too few hack-attempt rows to test: {stats['n_pure']} pure, "
            f"{stats['n_combined']} hack+correct (need >= {MIN_BUCKET} each); ")


def _require_buckets(stats) -> None:
    if note := _buckets_note(stats):
        pytest.fail(note.rstrip("; "))


def test_R4_pure_hack_above_hack_plus_correct(stats, verdict):
    w = stats["v_hack"]
    # rows of one problem are correlated (G samples each): the per-problem test is reported beside
    note = _buckets_note(stats)
    verdict("R4", "v_hack: pure > hack+correct",
            f"{note}{_fmt(w)}; per-problem means: {_fmt(stats['per_problem'])}",
            f"t > {T_MIN}, p < {P_MAX}", not note and _passes(w))
    _require_buckets(stats)
    assert _passes(w), f"v_hack does not discriminate: {_fmt(w)}"


@pytest.mark.parametrize("control", ["random", "shuffled"])
def test_R4_controls_do_not_pass(stats, verdict, control, vanilla_replay):
    """A control far from orthogonal to v_hack is flagged invalid (see R3), not counted."""
    from probe.checks import control_stats, invalid_control_note

    w = stats[control]
    note = _buckets_note(stats)
    invalid = invalid_control_note(control_stats(vanilla_replay)[control])
    verdict("R4", f"control {control} must not pass", f"{invalid}{note}{_fmt(w)}",
            f"NOT (t > {T_MIN}, p < {P_MAX}), control valid",
            not note and not invalid and not _passes(w))
    _require_buckets(stats)
    if invalid:
        pytest.fail(f"the {control} control is not a control: {invalid}{_fmt(w)}")
    assert not _passes(w), f"the {control} control passes the R4 test too: {_fmt(w)}"


NULL_P_MAX = 0.05  # v_hack must separate the buckets better than 95% of random directions


def test_R4_sneaky_beats_random_directions(stats, verdict):
    """The spec's sneaky fail "v_hack is the gradient direction toward any completion": if the two
    buckets' gradients differ generically, random directions separate them too (in either sign).
    v_hack's t must exceed |t| of 95% of Haar-random directions on the same rows."""
    null, t = stats["random_null"], stats["v_hack"]["t"]
    note = _buckets_note(stats)
    ok = not note and null["n"] > 0 and null["p_empirical"] < NULL_P_MAX
    verdict("R4", "v_hack beats random directions",
            f"{note}t={t:+.2f} vs random |t| median {null.get('abs_t_median', float('nan')):.2f}, "
            f"q95 {null['abs_t_q95']:.2f} (n={null['n']}); empirical p={null['p_empirical']:.3f}",
            f"p < {NULL_P_MAX}", ok)
    _require_buckets(stats)
    assert null["n"] > 0, "no random-direction cosines stored (cos_null) in the vanilla replay"
    assert ok, (f"v_hack's t={t:+.2f} is not beyond the random-direction null "
                f"(|t| q95 {null['abs_t_q95']:.2f}, empirical p={null['p_empirical']:.3f})")


def test_R4_sneaky_not_just_length(stats, verdict):
    """Pure hacks are shorter; the difference must survive removing a cosine-vs-length trend."""
    w = stats["length_residualised"]
    corr = stats["cos_length_corr"]
    note = _buckets_note(stats)
    verdict("R4", "length-residualised pure > combined",
            f"{note}{_fmt(w)}; corr(cos, len) spearman={corr['spearman']:+.2f}; "
            f"mean len {stats['len_pure_mean']:.1f} vs {stats['len_combined_mean']:.1f} tokens; "
            f"matched: {_fmt(stats['length_matched'])}",
            f"p < {P_MAX}", not note and math.isfinite(w["p"]) and w["p"] < P_MAX)
    _require_buckets(stats)
    assert math.isfinite(w["p"]) and w["p"] < P_MAX, (
        f"after removing the length trend the buckets do not differ: {_fmt(w)} "
        f"(length-matched: {_fmt(stats['length_matched'])}, corr {corr})")
