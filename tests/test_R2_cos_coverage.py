"""R2: the per-sample cosine machinery produces real numbers on every sample.

Spec: "Done means: cos_S_contrib non-null for ≥90% of vanilla-replay rows. Sneaky fail: zero-advantage
skip silently nulls grads; coverage<<1 catches it." T2 adds: "NLL on completion only counts pad
tokens (mask off-by-one); cos is approximately random — caught by per-step ||g|| stability". Here the
mask is audited directly too: every row's loss-token count must equal its stored completion length.
"""
from __future__ import annotations

import pytest

from probe.checks import r2_stats

pytestmark = pytest.mark.uat

COVERAGE_MIN = 0.90  # spec R2
NULL_GRAD_MAX = 0.0  # NLL replay gives every row a gradient; any zero row is a skipped sample
NORM_SPREAD_MAX = 10.0  # per-step ‖g‖ within 10× of its median across the replay


@pytest.fixture(scope="module")
def stats(vanilla_replay):
    return r2_stats(vanilla_replay)


def test_R2_cos_coverage(stats, verdict):
    cov = stats["coverage"]
    verdict("R2", "cos_S_contrib finite", f"{cov:.3f} of {stats['n_rows']} rows", f">= {COVERAGE_MIN}",
            cov >= COVERAGE_MIN)
    assert cov >= COVERAGE_MIN, f"only {cov:.3f} of {stats['n_rows']} vanilla rows have a finite cosine"


def test_R2_sneaky_no_null_gradients(stats, verdict):
    frac = stats["zero_grad_rows"] / max(stats["n_rows"], 1)
    verdict("R2", "rows with zero gradient", f"{stats['zero_grad_rows']}/{stats['n_rows']}",
            f"<= {NULL_GRAD_MAX}", frac <= NULL_GRAD_MAX)
    assert frac <= NULL_GRAD_MAX, f"{stats['zero_grad_rows']} rows have a zero δS gradient"


def test_R2_sneaky_loss_mask_audit(stats, verdict):
    bad = stats["mask_mismatches"]
    verdict("R2", "loss mask == completion tokens", f"{bad} mismatched rows", "0", bad == 0)
    assert bad == 0, f"loss-token count differs from completion length: {stats['mask_mismatch_examples']}"


def test_R2_sneaky_grad_norm_stable(stats, verdict):
    hi, lo = stats["grad_norm_max_over_median"], stats["grad_norm_min_over_median"]
    ok = hi <= NORM_SPREAD_MAX and lo >= 1 / NORM_SPREAD_MAX
    verdict("R2", "per-step ‖g‖ stable", f"max/med {hi:.2f}, min/med {lo:.2f}",
            f"within {NORM_SPREAD_MAX:g}× of median", ok)
    assert ok, f"per-step grad norms unstable: {[round(x, 4) for x in stats['step_grad_norms']]}"


def test_R2_sneaky_cosines_trustworthy_at_run_dtype(vanilla_replay, phase1_run, verdict):
    """Per-sample gradients at the run's dtype vs a float32 recomputation of the same rows: below
    the threshold the per-row cosines are rounding noise, whatever else passes. (A replay cached
    before this check existed gets the record added, under the run's lock.)"""
    from probe.fidelity import ensure_fidelity

    with phase1_run.lock:
        f = ensure_fidelity(phase1_run.world, vanilla_replay.arm("vanilla"), vanilla_replay.pool,
                            phase1_run.device, phase1_run.cfg.replay.adapter_spec())
    stat = (f"{f['dtype']} vs float32 on {f['n_rows']} rows: min cos {f['min_cos']:.4f}, mean "
            f"{f['mean_cos']:.4f}, max rel L2 {f['max_rel_l2']:.3g} ({f['rule']}; {f['reference']})")
    ok = f["min_cos"] >= f["threshold_cos"]
    verdict("R2", "per-sample grads trustworthy at run dtype", stat, f">= {f['threshold_cos']}", ok)
    assert ok, f"cosines at {f['dtype']} are not trustworthy: {stat}"
