"""R7: v_hack re-extracted through the GRPO loss, compared with the NLL v_hack on the same rows.

Spec R7: "Re-extract v_hack with GRPO-style contrastive loss (advantage = +1 on hack, -1 on clean)
using the same pairs.py personas. Done means: cosine signal at R4 is at least as strong as current
NLL-extracted v_hack on the same teacher pool." T7: "T4 t-stat ≥ current … sneaky_fail:
implementation accidentally uses NLL loss inside (no functional change); T4 result is identical to
NLL run — check by diffing the saved v_hack tensors."

The GRPO direction (`probe.vhack_grpo`: R5's Dr.GRPO surrogate, Â = ±1, ratio 1, a constant
normaliser) weights a completion's tokens by a constant instead of 1/length, so it is the test of
the NLL v_hack's known length bias (facts §5): R4's length-residualised and random-direction
checks are reported for both directions. Every statistic is read from the *same* vanilla replay
rows (`cos_S_contrib` and `cos_grpo`); a run made before R7 gets the column by a checked replay.
A hypothesis that is false on a world fails here with its statistic: a finding, not a bug.
"""
from __future__ import annotations

import math

import pytest

from probe.checks import invalid_control_note, r7_stats

pytestmark = pytest.mark.uat

METHOD = "grpo"
P_MAX = 0.05  # spec R4
T_MIN = 2.0  # spec T4
NULL_P_MAX = 0.05  # as R4: beyond 95% of Haar-random directions
MIN_BUCKET = 5


@pytest.fixture(scope="module")
def r7(phase1_run, vanilla_replay):
    from probe.vhack_backfill import ensure_method_columns

    phase1_run.ensure(ensure_method_columns, "vanilla")  # under the run's lock; no-op when present
    return r7_stats(vanilla_replay, METHOD, MIN_BUCKET)


def _w(w: dict) -> str:
    return f"t={w['t']:+.2f}, p={w['p']:.2g}"


def _both(r7: dict, key: str) -> str:
    return f"GRPO {_w(r7[METHOD][key])} | NLL {_w(r7['nll'][key])}"


def _buckets(r7: dict) -> str:
    s = r7["nll"]
    if min(s["n_pure"], s["n_combined"]) >= MIN_BUCKET:
        return ""
    return f"too few hack-attempt rows: {s['n_pure']} pure, {s['n_combined']} hack+correct; "


def _passes(w: dict) -> bool:
    return math.isfinite(w["p"]) and w["p"] < P_MAX and w["t"] > T_MIN


def test_R7_grpo_tstat_at_least_nll(r7, verdict):
    """The spec's done-means: GRPO v_hack's R4 t ≥ the NLL v_hack's, same rows."""
    g, n = r7[METHOD]["v_hack"], r7["nll"]["v_hack"]
    note = _buckets(r7)
    ok = not note and math.isfinite(g["t"]) and g["t"] >= n["t"]
    verdict("R7", "GRPO v_hack t >= NLL v_hack t (R4 rows)",
            f"{note}GRPO {g['mean_a']:+.4f} vs {g['mean_b']:+.4f}, {_w(g)} | NLL {_w(n)} "
            f"(n={g['n_a']}+{g['n_b']})", "t_grpo >= t_nll", ok)
    assert not note, note
    assert ok, f"the GRPO v_hack discriminates less than the NLL one: {_both(r7, 'v_hack')}"


def test_R7_grpo_passes_spec_welch_test(r7, verdict):
    """The spec's R4 test itself for the GRPO direction (t > 2, p < 0.05)."""
    g = r7[METHOD]["v_hack"]
    note = _buckets(r7)
    verdict("R7", "GRPO v_hack: pure > hack+correct", f"{note}{_both(r7, 'v_hack')}",
            f"t > {T_MIN}, p < {P_MAX}", not note and _passes(g))
    assert not note, note
    assert _passes(g), f"the GRPO v_hack does not pass R4: {_w(g)}"


def test_R7_saved_tensors_differ_and_are_well_formed(r7, verdict):
    """T7's sneaky fail: an extraction that secretly used the NLL loss saves the same tensors."""
    c = r7["comparison"]
    bad = {k: v for k, v in r7["well_formed"].items() if v}
    ok = not c["identical"] and c["max_abs_diff"] > 1e-6 and not bad
    verdict("R7", "GRPO and NLL v_hack tensors differ",
            f"max |Δ| {c['max_abs_diff']:.3g}; cos per module mean {c['mean_cos']:+.3f} "
            f"(min {c['min_cos']:+.3f}, max {c['max_cos']:+.3f}; random ≈ ±{c['random_null_rms']:.3f})"
            f"{'; malformed: ' + str(bad) if bad else ''}", "differ, both well-formed", ok)
    assert not bad, f"malformed direction files: {bad}"
    assert ok, f"the GRPO v_hack equals the NLL one (max |Δ| {c['max_abs_diff']})"


def test_R7_grpo_beats_random_directions(r7, verdict):
    """R4's random-direction null for the GRPO direction (NLL's beside it)."""
    def line(m: str) -> str:
        nu = r7[m]["random_null"]
        return (f"{m.upper()} t={r7[m]['v_hack']['t']:+.2f}, null |t| q95 {nu['abs_t_q95']:.2f}, "
                f"p={nu['p_empirical']:.3f}")

    null = r7[METHOD]["random_null"]
    note = _buckets(r7)
    ok = not note and null["n"] > 0 and null["p_empirical"] < NULL_P_MAX
    verdict("R7", "GRPO v_hack beats random directions", f"{note}{line(METHOD)} | {line('nll')}",
            f"p < {NULL_P_MAX}", ok)
    assert null["n"] > 0, "no random-direction cosines (cos_null) in the vanilla replay"
    assert ok, f"the GRPO v_hack is not beyond the random-direction null: {line(METHOD)}"


def test_R7_grpo_not_just_length(r7, verdict):
    """R4's length-residualised test for the GRPO direction: the bias it was built to remove."""
    def line(m: str) -> str:
        s = r7[m]
        return (f"{m.upper()} resid {_w(s['length_residualised'])}, corr(cos,len) "
                f"{s['cos_length_corr']['spearman']:+.2f}, matched {_w(s['length_matched'])}")

    w = r7[METHOD]["length_residualised"]
    note = _buckets(r7)
    ok = not note and math.isfinite(w["p"]) and w["p"] < P_MAX
    verdict("R7", "GRPO length-residualised pure > combined", f"{note}{line(METHOD)} | {line('nll')}",
            f"p < {P_MAX}", ok)
    assert ok, f"after removing the length trend the GRPO buckets do not differ: {line(METHOD)}"


@pytest.mark.parametrize("control", ["random", "shuffled"])
def test_R7_grpo_controls_do_not_pass(r7, verdict, control):
    """The GRPO method's controls (same code as NLL's) must not pass R4, and must be controls."""
    w = r7[METHOD][control]
    invalid = invalid_control_note(r7["controls"][control])
    note = _buckets(r7)
    ok = not note and not invalid and not _passes(w)
    verdict("R7", f"GRPO control {control} must not pass", f"{invalid}{note}{_w(w)}",
            f"NOT (t > {T_MIN}, p < {P_MAX}), control valid", ok)
    assert not invalid, f"the GRPO {control} control is not a control: {invalid}"
    assert ok, f"the GRPO {control} control passes R4 too: {_w(w)}"
