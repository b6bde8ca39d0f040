"""One GRPO step on a batch of graded groups: the same step as the Phase 1 replay
(`probe.train_step.train_step`), with the Dr.GRPO surrogate in place of the NLL.

Per update (≥ 2 per batch, so ratios move): per-sample gradients of the surrogate in one batched
backward per micro-batch → every row's cosine with v_hack and the controls (first update) → the
summed gradient (the loss is a sum over rows: its normaliser is a constant) → projection of the
gradient (arms that project it) → clipping → AdamW → projection of the update (arms that project the
update) → the hack-ward cosine of the update actually applied.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from probe.adapters.base import Adapter
from probe.batch import TokenBatch
from probe import flat
from probe.arms import Arm

TRACKED = "current"  # V's key of a direction measured against, never projected (R6's drift)
from probe.rl.config import MICRO_BATCH_KNOB, GRPOConfig
from probe.rl.distributed import all_reduce_sum_, gather_in_order, gather_objects
from probe.rl.dr_grpo import (RatioStats, SurrogateInputs, clip_fraction, group_advantages,
                              scatter_tokens, surrogate)
from probe.train_step import (MicroBatch, Projection, add_row_sums_, summed_grads, total_norm,
                              train_step)

ROW_KEEP = ("problem_id", "step", "group", "index", "source", "label", "hacked", "hack_attempt",
            "gt_pass", "reward", "completion_len", "completion")


def _inputs(part: Sequence[dict[str, Any]], batch: TokenBatch, adv: Sequence[float]
            ) -> SurrogateInputs:
    dev = batch.input_ids.device
    return SurrogateInputs(
        advantages=torch.tensor(list(adv), dtype=torch.float32, device=dev),
        teacher=torch.tensor([r["source"] == "teacher" for r in part], device=dev),
        old_logp=scatter_tokens(batch, [r["old_logp"] for r in part]),
        behaviour_logp=scatter_tokens(batch, [r["behaviour_logp"] for r in part]),
        mask=batch.loss_mask)


class _SurrogatePass:
    """The Dr.GRPO surrogate as `train_step`'s per-sample loss, plus what the GRPO trainer keeps of
    each micro-batch: the teacher rows' gradient sum, the ratio statistics and the per-row records
    (cosines with each V, when the step computes them)."""

    def __init__(self, adapter: Adapter, adv: Sequence[float], cfg: GRPOConfig,
                 normaliser: float) -> None:
        self.adv, self.cfg, self.normaliser = adv, cfg, normaliser
        self.teacher = flat.zeros(adapter.sizes, adapter.device)
        self.stats = RatioStats(cfg.epsilon, cfg.epsilon_high,
                                teacher_clipped=cfg.correction != "luffy")
        self.records: list[dict[str, Any]] = []
        self.index: list[int] = []  # each record's position in the step's rows

    def token_loss_for(self, part: Sequence[dict[str, Any]], idx: list[int], batch: TokenBatch):
        cfg, stats = self.cfg, self.stats
        x = _inputs(part, batch, [self.adv[i] for i in idx])

        def token_loss(logp: torch.Tensor) -> torch.Tensor:
            stats.add(logp, x)
            return surrogate(logp, x, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                             correction=cfg.correction, is_cap=cfg.is_cap,
                             luffy_gamma=cfg.luffy_gamma, normaliser=self.normaliser)
        return token_loss

    def on_micro_batch(self, mb: MicroBatch) -> None:
        psg = mb.grads
        t_sel = torch.tensor([r["source"] == "teacher" for r in mb.rows], device=psg.loss.device)
        add_row_sums_(self.teacher, psg.grads, t_sel)
        if not mb.cos:
            return
        cols = {f"cos_{k}": c for k, c in mb.cos.items()}
        cols["grad_norm"] = psg.norms
        cols["loss"] = psg.loss
        host = dict(zip(cols, torch.stack([c.float() for c in cols.values()]).cpu().tolist()))
        for j, (r, i) in enumerate(zip(mb.rows, mb.index)):
            rec = {k: r.get(k) for k in ROW_KEEP}
            rec["advantage"] = float(self.adv[i])
            rec["cos_S_contrib"] = host["cos_nll"][j]
            rec["cos_S_normalized"] = host["cos_nll"][j] / math.sqrt(len(psg.grads))
            rec.update({k: host[k][j] for k in host if k not in ("cos_nll",)})
            self.records.append(rec)
            self.index.append(i)

    def gather(self, n_rows: int, records: bool) -> list[dict[str, Any]]:
        """After the pass: every rank's teacher sum and ratio statistics merged, and (`records`:
        on every rank alike, they are collectives) the records back in row order. No-ops on one
        process."""
        all_reduce_sum_(self.teacher)
        self.stats.merge_all(gather_objects(self.stats.acc))
        return gather_in_order(self.records, self.index, n_rows) if records else []


def surrogate_grads(adapter: Adapter, rows: Sequence[dict[str, Any]], adv: Sequence[float],
                    cfg: GRPOConfig, pad: int, device: str, normaliser: float,
                    V: dict[str, dict[str, torch.Tensor]] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[dict], RatioStats]:
    """Summed surrogate gradient over `rows` (one process), its teacher-row part, per-row records
    (cosines with each V when given) and the ratio statistics of this pass: the gradient half of
    `grpo_update_step`, for tests of the loss."""
    sp = _SurrogatePass(adapter, adv, cfg, normaliser)
    total = summed_grads(adapter, rows, pad, device, cfg.micro_batch, sp.token_loss_for, V,
                         sp.on_micro_batch, knob=MICRO_BATCH_KNOB)
    return total, sp.teacher, sp.records, sp.stats


def grpo_update_step(adapter: Adapter, opt: torch.optim.Optimizer, rows: list[dict[str, Any]],
                     V: dict[str, dict[str, torch.Tensor]], arm: Arm, cfg: GRPOConfig,
                     pad: int, device: str, normaliser: float
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`cfg.updates_per_batch` optimizer steps on one batch of groups; per-row records (from the
    first update, at the sampling policy) and the step's summary. Rows need `old_logp` (the
    student's at sampling time) and `behaviour_logp`. Under `torch.distributed`, each rank takes
    its share of the rows and the sums are all-reduced (probe.rl.distributed)."""
    adv = group_advantages([r["reward"] for r in rows], [r["group"] for r in rows])
    projection = None if not arm.direction else Projection(
        V[arm.direction], cfg.projection, target=arm.target)
    updates, records = [], []
    for u in range(cfg.updates_per_batch):
        sp = _SurrogatePass(adapter, adv, cfg, normaliser)
        rep = train_step(adapter, opt, rows, pad=pad, device=device, micro_batch=cfg.micro_batch,
                         v_hack=V["nll"], reduce="sum", token_loss_for=sp.token_loss_for,
                         directions=V if u == 0 else None, on_micro_batch=sp.on_micro_batch,
                         projection=projection, max_grad_norm=cfg.max_grad_norm,
                         distributed=True, track=V.get(TRACKED), knob=MICRO_BATCH_KNOB)
        records = sp.gather(len(rows), records=u == 0) or records
        info: dict[str, Any] = {
            "update": u, "ratio": sp.stats.summary(), "grad_norm_in": rep.grad_norm_in,
            "teacher_grad_norm": total_norm(sp.teacher),
            "grad_hackward_cos": rep.grad_hackward_cos}
        info["clip_frac"] = clip_fraction(info["ratio"])
        if projection is not None and projection.target == "grad":
            info.update(rep.projection)
            info["grad_change_norm"] = rep.grad_change_norm
            # recomputed from .grad itself against v_hack, not from the projection's own report:
            # a projection fed the wrong direction (or sign) leaves this > 0 for the v_hack arms
            info["grad_hackward_cos_out"] = rep.grad_hackward_cos_out
        info["grad_norm_out"] = rep.grad_norm_out
        if projection is not None and projection.target == "update":
            info["update_cos_before_projection"] = rep.update_cos_before_projection
            info.update(rep.projection)
        info["update_cos"] = rep.update_cos  # always w.r.t. v_hack
        info["update_norm"] = rep.update_norm
        if rep.tracked_cos_in is not None:  # R6's drift: vs v_hack re-extracted from the student
            info.update(current_cos_in=rep.tracked_cos_in, current_cos_out=rep.tracked_cos_out,
                        current_update_cos=rep.tracked_update_cos)
        updates.append(info)
    return records, {"updates": updates, "advantage_abs_mean":
                     sum(abs(a) for a in adv) / max(len(adv), 1)}
