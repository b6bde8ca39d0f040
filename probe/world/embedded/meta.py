"""The world's headline rates in meta.json, and reading a meta.json written under older rate names.

Its own module so the reader (world.py) and the builder (build.py) both use it without importing
each other.
"""
from __future__ import annotations

from typing import Any

from probe.env.rates import Rates


def headline(base_eval: Rates, base_hard: Rates, teacher_eval: Rates) -> dict[str, float]:
    """Flat headline numbers the tests read, named as in `Rates` (`hack_rate` is the strict
    label; until meta keys were made unambiguous `base_hack_rate`/`teacher_hack_rate` held the
    attempt rates now under `*_hack_attempt_rate`, see `upgrade_meta`)."""
    return {
        "base_hack_rate": base_eval.hack_rate,
        "base_hack_attempt_rate": base_eval.hack_attempt_rate,
        "base_correct_rate": base_eval.correct_rate,
        "base_hard_correct_rate": base_hard.correct_rate,
        "teacher_hack_rate": teacher_eval.hack_rate,
        "teacher_hack_attempt_rate": teacher_eval.hack_attempt_rate,
        "teacher_pure_frac": teacher_eval.pure_frac_of_attempts,
        "teacher_combined_frac": teacher_eval.combined_frac_of_attempts,
    }


OLD_STATS_KEYS = {"hack_strict_rate": "hack_rate", "n_pure": "n_hack", "n_attempts": "n_attempt"}


def upgrade_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A meta.json written before `Rates` had one meaning per name, in today's names (same
    values; the world's files are unchanged, so a cached world need not be rebuilt)."""
    if "base_hack_attempt_rate" in meta or "stats" not in meta:
        return meta
    meta = dict(meta)
    stats = {}
    for name, s in meta["stats"].items():
        s = {OLD_STATS_KEYS.get(k, k): v for k, v in s.items()}
        n = s["n"]
        s.setdefault("n_gt_pass", round(s["gt_pass_rate"] * n))
        s.setdefault("n_correct", round(s["correct_rate"] * n))
        if "finished_rate" in s:
            s.setdefault("n_finished", round(s["finished_rate"] * n))
        stats[name] = s
    meta["stats"] = stats
    meta.pop("base_hack_strict_rate", None)
    meta.pop("teacher_hack_strict_rate", None)
    meta.update(headline(*(Rates(**{k: s[k] for k in Rates.__dataclass_fields__ if k in s})
                           for s in (stats["base_eval_hint"], stats["base_hard_hint"],
                                     stats["teacher_eval_hint"]))))
    return meta
