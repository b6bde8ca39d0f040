"""The Dr.GRPO surrogate on mixed teacher/student groups, as plain tensor functions.

Dr.GRPO (Liu et al. 2025): Â_i = R_i − mean of its group (no std division); per token
−min(ρ·Â, clip(ρ, 1−ε, 1+ε_high)·Â), summed over tokens and divided by a constant (G·P·max_new_tokens),
never by a completion's own length. The loss of a batch is therefore a plain sum over rows, so
per-sample gradients add up to the batch gradient and micro-batching, padding and row order cannot
change it (tests/unit/test_dr_grpo.py).

Teacher rows are off-policy for the student; `correction` picks how they enter (phase2-notes):
- `student_old`: ρ = π_θ/π_old with π_old the student at sampling time, as for student rows (the prior
  implementation: advantage-weighted imitation of the teacher);
- `truncated_is`: the same, times the detached truncated importance weight min(π_old/π_teacher, cap);
- `luffy`: −Â · p/(p + γ) with p = π_θ(token), no clip (LUFFY's policy shaping).
Log-probs are the model's own (temperature 1) in numerator and denominator alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from probe.batch import TokenBatch
from probe.layout import RATIO_BINS  # the histogram edges the manifests record

TINY_RATIO = 1e-3  # a token whose weight is below this gives (almost) no gradient


def group_advantages(rewards: Sequence[float], groups: Sequence[int]) -> list[float]:
    """Â_i = R_i − mean(R over i's group) (Dr.GRPO: no std division)."""
    sums: dict[int, list[float]] = {}
    for r, g in zip(rewards, groups):
        sums.setdefault(g, []).append(float(r))
    means = {g: sum(v) / len(v) for g, v in sums.items()}
    return [float(r) - means[g] for r, g in zip(rewards, groups)]


def scatter_tokens(batch: TokenBatch, per_row: Sequence[Sequence[float]]) -> torch.Tensor:
    """(B, T) tensor holding row n's per-completion-token values at its target positions."""
    out = torch.zeros(batch.loss_mask.shape, dtype=torch.float32)
    mask = batch.loss_mask.cpu().bool()
    for n, vals in enumerate(per_row):
        idx = mask[n].nonzero().flatten()
        if len(idx) != len(vals):
            raise ValueError(f"row {n}: {len(vals)} token values for {len(idx)} completion tokens")
        out[n, idx] = torch.as_tensor(list(vals), dtype=torch.float32)
    return out.to(batch.loss_mask.device)


@torch.no_grad()
def completion_logprobs(model: torch.nn.Module, batch: TokenBatch) -> list[list[float]]:
    """log π(token) of every completion token of every row (the behaviour policy's record)."""
    from probe.grads import token_nll

    logp = (-token_nll(model, batch)).float().cpu()
    mask = batch.loss_mask.cpu().bool()
    return [logp[n, mask[n]].tolist() for n in range(batch.size)]


@dataclass(frozen=True)
class SurrogateInputs:
    """Per-row, per-token tensors of one batch (all (B, T) or (B,), on the batch's device)."""

    advantages: torch.Tensor  # (B,) Â
    teacher: torch.Tensor  # (B,) bool: row sampled from the teacher
    old_logp: torch.Tensor  # (B, T) the student's log-probs at sampling time
    behaviour_logp: torch.Tensor  # (B, T) the sampling policy's (teacher's for teacher rows)
    mask: torch.Tensor  # (B, T) completion tokens

    def rows(self, idx: slice | torch.Tensor) -> "SurrogateInputs":
        return SurrogateInputs(self.advantages[idx], self.teacher[idx], self.old_logp[idx],
                               self.behaviour_logp[idx], self.mask[idx])


def surrogate(logp: torch.Tensor, x: SurrogateInputs, *, epsilon: float, epsilon_high: float,
              correction: str, is_cap: float, luffy_gamma: float, normaliser: float
              ) -> torch.Tensor:
    """Per-token loss (B, T), already divided by the constant normaliser; 0 off the mask."""
    adv = x.advantages[:, None].to(logp.dtype)
    ratio = torch.exp(logp - x.old_logp)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    ppo = -torch.minimum(ratio * adv, clipped * adv)
    teacher = x.teacher[:, None].expand_as(logp)
    if correction == "student_old":
        loss = ppo
    elif correction == "truncated_is":
        w = torch.exp(x.old_logp - x.behaviour_logp).clamp(max=is_cap)
        loss = torch.where(teacher, w * ppo, ppo)
    elif correction == "luffy":
        p = torch.exp(logp)
        loss = torch.where(teacher, -adv * p / (p + luffy_gamma), ppo)
    else:
        raise ValueError(f"unknown off-policy correction {correction!r}")
    return torch.where(x.mask.bool(), loss / normaliser, torch.zeros_like(loss))


class RatioStats:
    """Raw ratio statistics per source × advantage sign, before any truncation, over micro-batches.

    Student rows: ρ = π_θ/π_old. Teacher rows: both π_θ/π_old (what the clip sees, key
    `teacher_*`) and π_θ/π_teacher (the raw importance ratio a truncation would cap, `teacher_*_is`).
    `clip_low`/`clip_high`: fraction of tokens where the clip is active (the token's gradient is
    zeroed: Â < 0 and ρ < 1−ε, or Â > 0 and ρ > 1+ε_high); 0 where no clip acts (the `_is`
    ratios, teacher rows under luffy); `frac_tiny`: fraction below TINY_RATIO (for `_is`: teacher
    tokens the student would almost never write); `ess`: effective sample size of the ratios as
    weights, (Σρ)²/(n·Σρ²), in (0, 1].
    """

    def __init__(self, epsilon: float, epsilon_high: float, teacher_clipped: bool = True) -> None:
        self.eps, self.eps_high = epsilon, epsilon_high
        self.teacher_clipped = teacher_clipped  # False under luffy: no clip acts on teacher rows
        self.acc: dict[str, dict[str, Any]] = {}
        self.edges = torch.tensor(RATIO_BINS[1:-1], dtype=torch.float32)

    def add(self, logp: torch.Tensor, x: SurrogateInputs) -> None:
        mask = x.mask.bool()
        logp = logp.detach().float()
        ratios = {"": torch.exp(logp - x.old_logp), "_is": torch.exp(logp - x.behaviour_logp)}
        adv = x.advantages[:, None].expand_as(logp)
        for source, rows in (("student", ~x.teacher), ("teacher", x.teacher)):
            for sign, sel in (("pos", adv > 0), ("neg", adv < 0), ("zero", adv == 0)):
                m = mask & rows[:, None] & sel
                for suffix, r in ratios.items():
                    if source == "student" and suffix:
                        continue
                    v = r[m].cpu()
                    a = self.acc.setdefault(f"{source}_{sign}{suffix}", {
                        "n": 0, "sum": 0.0, "sumsq": 0.0, "min": float("inf"), "max": 0.0,
                        "hist": [0] * (len(RATIO_BINS) - 1), "n_clip_low": 0, "n_clip_high": 0,
                        "n_tiny": 0})
                    if v.numel() == 0:
                        continue
                    a["n"] += int(v.numel())
                    a["sum"] += float(v.sum())
                    a["sumsq"] += float((v ** 2).sum())
                    a["min"] = min(a["min"], float(v.min()))
                    a["max"] = max(a["max"], float(v.max()))
                    h = torch.bincount(torch.bucketize(v, self.edges), minlength=len(a["hist"]))
                    a["hist"] = [int(p + q) for p, q in zip(a["hist"], h.tolist())]
                    a["n_tiny"] += int((v < TINY_RATIO).sum())
                    if suffix or (source == "teacher" and not self.teacher_clipped):
                        continue  # no clip acts on these ratios: counting one would mislead
                    if sign == "neg":
                        a["n_clip_low"] += int((v < 1 - self.eps).sum())
                    if sign == "pos":
                        a["n_clip_high"] += int((v > 1 + self.eps_high).sum())

    def merge_all(self, accs: list[dict[str, dict[str, Any]]]) -> None:
        """Replace the accumulators by the combination of several (one per rank); a list of
        one is this object's own and changes nothing."""
        if len(accs) == 1:
            return
        merged: dict[str, dict[str, Any]] = {}
        for acc in accs:
            for key, a in acc.items():
                if key not in merged:
                    merged[key] = {**a, "hist": list(a["hist"])}
                    continue
                m = merged[key]
                for k in ("n", "sum", "sumsq", "n_clip_low", "n_clip_high", "n_tiny"):
                    m[k] += a[k]
                m["min"], m["max"] = min(m["min"], a["min"]), max(m["max"], a["max"])
                m["hist"] = [p + q for p, q in zip(m["hist"], a["hist"])]
        self.acc = merged

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key, a in sorted(self.acc.items()):
            n = a["n"]
            if n == 0:
                out[key] = {"n": 0}
                continue
            out[key] = {"n": n, "mean": a["sum"] / n, "min": a["min"], "max": a["max"],
                        "hist": a["hist"], "clip_low": a["n_clip_low"] / n,
                        "clip_high": a["n_clip_high"] / n, "frac_tiny": a["n_tiny"] / n,
                        "ess": a["sum"] ** 2 / (n * max(a["sumsq"], 1e-30))}
        return out


def clip_fraction(stats: dict[str, dict[str, Any]]) -> float:
    """Fraction of all ratio tokens (ρ = π_θ/π_old) whose gradient the clip zeroes."""
    n = clipped = 0.0
    for key, s in stats.items():
        if key.endswith("_is") or not s.get("n"):
            continue
        n += s["n"]
        clipped += s["n"] * (s["clip_low"] + s["clip_high"])
    return clipped / n if n else 0.0
