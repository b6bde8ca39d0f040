"""Statistics the verdicts rest on: one-sided Welch t-tests, effect sizes, length controls.

R4's sneaky fail is a v_hack that tracks completion length rather than hacking (pure hacks are
shorter than hack + correct). So besides the plain Welch test we report the cosine–length
correlation, a test on length-residualised cosines, and a caliper-matched comparison.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class WelchResult:
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    t: float
    p: float  # one-sided: H1 mean_a > mean_b
    hedges_g: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"mean {self.mean_a:+.4f} (n={self.n_a}) vs {self.mean_b:+.4f} (n={self.n_b}), "
                f"Welch t={self.t:+.2f}, one-sided p={self.p:.2g}, g={self.hedges_g:+.2f}")


def _clean(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a[np.isfinite(a)]


def welch_greater(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """One-sided Welch t-test that mean(a) > mean(b); NaN statistics when a group has < 2 values."""
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        nan = float("nan")
        return WelchResult(len(a), len(b), float(np.mean(a)) if len(a) else nan,
                           float(np.mean(b)) if len(b) else nan, nan, nan, nan)
    res = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1))
                       / (len(a) + len(b) - 2))
    d = (a.mean() - b.mean()) / pooled if pooled > 0 else float("nan")
    g = d * (1 - 3 / (4 * (len(a) + len(b)) - 9))
    return WelchResult(len(a), len(b), float(a.mean()), float(b.mean()), float(res.statistic),
                       float(res.pvalue), float(g))


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation over pairs where both are finite."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": int(ok.sum())}
    return {"pearson": float(stats.pearsonr(x[ok], y[ok]).statistic),
            "spearman": float(stats.spearmanr(x[ok], y[ok]).statistic), "n": int(ok.sum())}


def length_residualised(values: Sequence[float], lengths: Sequence[float]) -> np.ndarray:
    """Values minus their least-squares fit on log length (fit over all rows given)."""
    v, ln = np.asarray(values, float), np.log(np.asarray(lengths, float).clip(min=1))
    ok = np.isfinite(v)
    out = np.full_like(v, np.nan)
    if ok.sum() < 3 or np.ptp(ln[ok]) == 0:
        out[ok] = v[ok] - v[ok].mean() if ok.any() else 0
        return out
    slope, intercept = np.polyfit(ln[ok], v[ok], 1)
    out[ok] = v[ok] - (slope * ln[ok] + intercept)
    return out


def caliper_match(a_len: Sequence[float], b_len: Sequence[float], caliper: float = 0.15
                  ) -> list[tuple[int, int]]:
    """Greedy 1:1 matching of a-rows to b-rows whose lengths differ by ≤ caliper (relative)."""
    a_len, b_len = np.asarray(a_len, float), np.asarray(b_len, float)
    free = set(range(len(b_len)))
    pairs = []
    for i in np.argsort(a_len):
        best, best_d = None, None
        for j in free:
            d = abs(a_len[i] - b_len[j]) / max(a_len[i], b_len[j], 1.0)
            if d <= caliper and (best_d is None or d < best_d):
                best, best_d = j, d
        if best is not None:
            pairs.append((int(i), best))
            free.discard(best)
    return pairs


# -- power of a two-proportion comparison (R3's behaviour checks) --------------------------------

def _z(alpha: float, alternative: str) -> float:
    if alternative not in ("one-sided", "two-sided"):
        raise ValueError(f"alternative must be 'one-sided' or 'two-sided', not {alternative!r}")
    return float(stats.norm.ppf(1 - (alpha if alternative == "one-sided" else alpha / 2)))


def two_proportion_power(p1: float, p2: float, n1: int, n2: int | None = None, alpha: float = 0.05,
                         alternative: str = "one-sided") -> float:
    """Power of the normal-approximation test of p1 vs p2 (pooled variance under H0, unpooled
    under H1, no continuity correction). Fisher's exact test, which the verdicts use, is a little
    more conservative, so this is a slightly optimistic power."""
    n2 = n1 if n2 is None else n2
    if n1 <= 0 or n2 <= 0 or not (0 <= p1 <= 1 and 0 <= p2 <= 1):
        return float("nan")
    pbar = (n1 * p1 + n2 * p2) / (n1 + n2)
    se0 = math.sqrt(pbar * (1 - pbar) * (1 / n1 + 1 / n2))
    se1 = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    diff = abs(p1 - p2)
    if se1 == 0:
        return 1.0 if diff > _z(alpha, alternative) * se0 else 0.0
    return float(stats.norm.cdf((diff - _z(alpha, alternative) * se0) / se1))


def n_per_group(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8,
                alternative: str = "one-sided") -> int:
    """Samples per arm for `power` to detect p1 vs p2 (the closed form behind
    `two_proportion_power`: n = ((z_a·√(2p̄q̄) + z_b·√(p1q1 + p2q2)) / |p1 − p2|)²)."""
    if p1 == p2:
        raise ValueError("no sample size detects a zero difference")
    pbar = (p1 + p2) / 2
    za, zb = _z(alpha, alternative), float(stats.norm.ppf(power))
    root = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil((root / abs(p1 - p2)) ** 2)


def min_detectable_decrease(p_ref: float, n_ref: int, n_other: int | None = None,
                            alpha: float = 0.05, power: float = 0.8,
                            alternative: str = "one-sided") -> float:
    """The smallest drop δ from rate `p_ref` (to p_ref − δ) that n_ref vs n_other samples detect
    with `power`; NaN when even a drop to 0 is not detectable (or p_ref is unknown)."""
    from scipy.optimize import brentq

    if not (isinstance(p_ref, (int, float)) and math.isfinite(p_ref)) or p_ref <= 0:
        return float("nan")

    def gap(d: float) -> float:
        return two_proportion_power(p_ref, p_ref - d, n_ref, n_other, alpha, alternative) - power

    if gap(p_ref) < 0:
        return float("nan")
    return float(brentq(gap, 1e-9, p_ref, xtol=1e-6))
