"""R6: does v_hack projection work as well in a LoRA basis as in the SVD (δS) basis?

Spec R6/T6: "A LoRA adapter (B@A, rank=32) with v_hack extracted in LoRA-basis … projects as well as
AntiPaSTO does. Done means: at matched per-step hacking and pass rates, LoRA-projected HACK_RATE
reduction is within 20% of SVD-projected … success: LoRA-projected effect ≥ 80% of SVD-projected
effect; OR a clean negative — LoRA-projected significantly weaker. likely_fail: zero-init B → zero
gradient on first backward. sneaky_fail: LoRA's trainable basis drifts as B@A trains; v_hack stored
from init no longer points at the hack subspace by step 10; cos_out approaches cos_in over steps."

Same teacher pool, pairs, teacher rows and seeds for both adapters (`probe.stages.r6`); statistics in
`probe.checks_r6`. An unmatched comparison is reported INVALID, not as a verdict.
"""
from __future__ import annotations

import math

import pytest

from probe.checks import r4_stats
from probe.checks_r6 import (EFFECT_RATIO, MATCH_TOL, PART_MIN, STALE_RATIO_MAX, drift_stats,
                             r6_manifests, verdict as r6_verdict, vhack_parts)

pytestmark = pytest.mark.uat


@pytest.fixture(scope="module")
def r6(r6_run):
    from probe.stages.r6 import r6_seeds

    paths, phase1_paths, cfg = r6_run
    return paths, phase1_paths, cfg, r6_manifests(paths, list(r6_seeds(cfg)))


@pytest.fixture(scope="module")
def drifts(r6):
    paths, _, cfg, m = r6
    return {a: drift_stats(m[a], cfg.r6.drift_every) for a in ("projected", "lora_projected")}


def _effect(e: dict) -> str:
    return (f"{e['mean_diff']:+.3f} (Wilcoxon p={e['p']:.2g}; per seed "
            + ", ".join(f"s{k} {v:+.3f}" for k, v in e["per_seed_mean_diff"].items()) + ")")


def test_R6_lora_projection_effect_vs_delta_s(r6, drifts, verdict):
    _, _, cfg, m = r6
    v = r6_verdict(m, all(d["measured"] for d in drifts.values()))
    mt, ef = v["matched"], v["effects"]
    stat = (f"{v['outcome']}; vanilla rise δS {mt['rise_delta_s']:+.3f} vs LoRA "
            f"{mt['rise_lora']:+.3f}, end pass {mt['pass_delta_s']:.3f} vs {mt['pass_lora']:.3f} "
            f"(lr δS {cfg.grpo.lr:g}, LoRA {cfg.r6.grpo_lr:g}); projection effect δS "
            f"{_effect(ef['delta_s'])}, LoRA {_effect(ef['lora'])}; ratio {ef['ratio']:.2f}; "
            f"LoRA weaker p={ef['p_lora_weaker']:.2g} over {ef['n_pairs']} (seed, step)")
    verdict("R6", "LoRA-projected effect vs δS-projected", stat,
            f"matched (gaps ≤ {MATCH_TOL}); ratio ≥ {EFFECT_RATIO} or LoRA significantly weaker",
            v["passed"])
    assert v["passed"], stat


def test_R6_vanilla_arms_are_matched(r6, verdict):
    """The comparison's premise, on its own row: which side a mismatch falls on, in numbers."""
    from probe.checks_r6 import matched

    mt = matched(r6[3])
    stat = (f"rise gap {mt['rise_gap']:.3f} (δS {mt['rise_delta_s']:+.3f}, LoRA "
            f"{mt['rise_lora']:+.3f}); end pass gap {mt['pass_gap']:.3f} (δS "
            f"{mt['pass_delta_s']:.3f}, LoRA {mt['pass_lora']:.3f})")
    verdict("R6", "vanilla arms matched (hack rise, pass rate)", stat, f"gaps ≤ {MATCH_TOL}",
            mt["matched"])
    assert mt["matched"], f"INVALID comparison: {stat}"


def test_R6_lora_vhack_has_A_and_B_parts(r6, verdict):
    """The likely fail: with B = 0 at init the A part of v_hack is exactly zero."""
    paths = r6[0]
    p = vhack_parts(paths)
    stat = (f"init {p['init']}: smallest per-module share of ‖v_hack‖² "
            + ", ".join(f"{t} {v:.3g}" for t, v in p["min_share"].items()))
    verdict("R6", "LoRA v_hack has A and B parts", stat, f"every share ≥ {PART_MIN}", p["passed"])
    assert p["passed"], stat


def test_R6_T4_side_by_side(r6, verdict):
    """T6's verify: T4's t-statistic for δS's and LoRA's v_hack on the same teacher pool."""
    paths, phase1_paths, _, _ = r6
    ds, lora = r4_stats(phase1_paths), r4_stats(paths.phase1, arm="lora_vanilla")
    w_ds, w_l = ds["v_hack"], lora["v_hack"]
    stat = (f"δS t={w_ds['t']:+.2f} (p={w_ds['p']:.2g}, n {ds['n_pure']}/{ds['n_combined']}); "
            f"LoRA t={w_l['t']:+.2f} (p={w_l['p']:.2g}, n {lora['n_pure']}/{lora['n_combined']}); "
            f"random-null p δS {ds['random_null']['p_empirical']:.2g}, "
            f"LoRA {lora['random_null']['p_empirical']:.2g}")
    ok = math.isfinite(w_l["t"]) and w_l["t"] >= EFFECT_RATIO * w_ds["t"]
    verdict("R6", "T4 t: LoRA ≥ 80% of δS", stat, f"LoRA t ≥ {EFFECT_RATIO} × δS t", ok)
    assert ok, stat


@pytest.mark.parametrize("arm", ["projected", "lora_projected"])
def test_R6_stored_vhack_still_removes_the_current_hack_direction(r6, drifts, verdict, arm):
    """The sneaky fail: as the basis trains, projecting the stored v_hack removes less of the
    gradient's hack-ward part measured against v_hack re-extracted from the current student."""
    cfg = r6[2]
    d = drifts[arm]
    traj = "; ".join(f"after s{s}: cos₁ {r['mean_cos_first']:.2f}, overlap {r['overlap']:.2f}, "
                     f"signed {r['signed_cos']:+.2f}" for s, r in d["records"].items())
    stat = (f"{arm}: vs the current v_hack, cos_in {d['current_cos_in']:.4f} → cos_out "
            f"{d['current_cos_out']:.4f} (ratio {d['stale_ratio']:.2f}) over "
            f"{d['n_steps_tracked']} steps from step {cfg.r6.drift_every}; drift vs the initial "
            f"v_hack: {traj or 'not measured'}")
    ok = d["measured"] and d["stale_ratio"] <= STALE_RATIO_MAX
    verdict("R6", f"{arm}: stored v_hack still removes the current hack direction", stat,
            f"drift measured; cos_out/cos_in ≤ {STALE_RATIO_MAX}", ok)
    assert ok, stat
