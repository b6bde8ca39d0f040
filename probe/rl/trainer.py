"""One GRPO step on a batch of graded groups: the same step as the Phase 1 replay, with the Dr.GRPO
surrogate in place of the NLL.

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
from probe.batch import collate
from probe.cosine import norm_weighted_cos
from probe.grads import per_sample_grads
from probe.project import as_basis, hackward_cos, project_adapter_grads_, project_grads
from probe.rl.arms import GRPOArm
from probe.rl.config import GRPOConfig
from probe.rl.distributed import all_reduce_sum_, gather_in_order, gather_objects, shard
from probe.rl.dr_grpo import (RatioStats, SurrogateInputs, clip_fraction, group_advantages,
                              scatter_tokens, surrogate)

ROW_KEEP = ("problem_id", "step", "group", "index", "source", "label", "hacked", "hack_attempt",
            "gt_pass", "reward", "completion_len", "completion")


def mean_hackward(vectors: dict[str, torch.Tensor], V: dict[str, torch.Tensor]) -> float:
    """Mean over modules of ‖relu(V x)‖/‖x‖ (x in gradient orientation: > 0 = toward hacking)."""
    vals = [hackward_cos(x.float(), as_basis(V[n]).to(x.device).float()) for n, x in vectors.items()]
    return float(torch.stack(vals).mean()) if vals else float("nan")


def total_norm(vectors: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(v.float().pow(2).sum() for v in vectors.values())))


def _inputs(part: Sequence[dict[str, Any]], batch, adv: Sequence[float]) -> SurrogateInputs:
    dev = batch.input_ids.device
    return SurrogateInputs(
        advantages=torch.tensor(list(adv), dtype=torch.float32, device=dev),
        teacher=torch.tensor([r["source"] == "teacher" for r in part], device=dev),
        old_logp=scatter_tokens(batch, [r["old_logp"] for r in part]),
        behaviour_logp=scatter_tokens(batch, [r["behaviour_logp"] for r in part]),
        mask=batch.loss_mask)


def surrogate_grads(adapter: Adapter, rows: Sequence[dict[str, Any]], adv: Sequence[float],
                    cfg: GRPOConfig, pad: int, device: str, normaliser: float,
                    V: dict[str, dict[str, torch.Tensor]] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[dict], RatioStats]:
    """Summed surrogate gradient over `rows`, its teacher-row part, per-row records (cosines with
    each V when given) and the ratio statistics of this pass. Under `torch.distributed`, each
    rank takes its share of the rows and the sums are all-reduced (probe.rl.distributed)."""
    n_rows = len(rows)
    rows, idx = shard(rows)
    adv = [adv[i] for i in idx]
    params = adapter.named_params()
    total = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    teacher = {n: torch.zeros_like(t) for n, t in total.items()}
    stats = RatioStats(cfg.epsilon, cfg.epsilon_high, teacher_clipped=cfg.correction != "luffy")
    records: list[dict[str, Any]] = []
    for i in range(0, len(rows), cfg.micro_batch):
        part, part_adv = rows[i:i + cfg.micro_batch], adv[i:i + cfg.micro_batch]
        batch = collate([r["prompt_ids"] for r in part], [r["completion_ids"] for r in part],
                        pad).to(device)
        x = _inputs(part, batch, part_adv)

        def token_loss(logp: torch.Tensor, x: SurrogateInputs = x) -> torch.Tensor:
            stats.add(logp, x)
            return surrogate(logp, x, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                             correction=cfg.correction, is_cap=cfg.is_cap,
                             luffy_gamma=cfg.luffy_gamma, normaliser=normaliser)

        psg = per_sample_grads(adapter, batch, token_loss=token_loss)
        t_sel = x.teacher.to(device)
        for n, g in psg.grads.items():
            total[n] += g.sum(0)
            teacher[n] += g[t_sel].sum(0)
        if V is None:
            continue
        cols = {f"cos_{k}": norm_weighted_cos(psg.grads, v) for k, v in V.items()}
        cols["grad_norm"] = psg.norms
        cols["loss"] = psg.loss
        host = dict(zip(cols, torch.stack([c.float() for c in cols.values()]).cpu().tolist()))
        for j, r in enumerate(part):
            rec = {k: r.get(k) for k in ROW_KEEP}
            rec["advantage"] = float(part_adv[j])
            rec["cos_S_contrib"] = host["cos_nll"][j]
            rec["cos_S_normalized"] = host["cos_nll"][j] / math.sqrt(len(psg.grads))
            rec.update({k: host[k][j] for k in host if k not in ("cos_nll",)})
            records.append(rec)
    all_reduce_sum_(total)
    all_reduce_sum_(teacher)
    stats.merge_all(gather_objects(stats.acc))
    if V is not None:
        records = gather_in_order(records, idx, n_rows)
    return total, teacher, records, stats


def grpo_update_step(adapter: Adapter, opt: torch.optim.Optimizer, rows: list[dict[str, Any]],
                     V: dict[str, dict[str, torch.Tensor]], arm: GRPOArm, cfg: GRPOConfig,
                     pad: int, device: str, normaliser: float
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`cfg.updates_per_batch` optimizer steps on one batch of groups; per-row records (from the
    first update, at the sampling policy) and the step's summary. Rows need `old_logp` (the
    student's at sampling time) and `behaviour_logp`."""
    adv = group_advantages([r["reward"] for r in rows], [r["group"] for r in rows])
    params = adapter.named_params()
    V_proj = V[arm.direction] if arm.direction else None
    updates, records = [], []
    for u in range(cfg.updates_per_batch):
        total, teacher, recs, stats = surrogate_grads(adapter, rows, adv, cfg, pad, device,
                                                      normaliser, V if u == 0 else None)
        records = recs or records
        for n, p in params.items():
            p.grad = total[n].to(p.dtype, copy=True)  # clipping rescales .grad in place
        info: dict[str, Any] = {
            "update": u, "ratio": stats.summary(), "grad_norm_in": total_norm(total),
            "teacher_grad_norm": total_norm(teacher),
            "grad_hackward_cos": mean_hackward(total, V["nll"])}
        info["clip_frac"] = clip_fraction(info["ratio"])
        if V_proj is not None and arm.target == "grad":
            diag = project_adapter_grads_(adapter, V_proj, cfg.projection)
            info.update(diag.to_dict())
            info["grad_change_norm"] = total_norm(
                {n: total[n] - adapter.grads()[n] for n in total})
            # recomputed from .grad itself against v_hack, not from the projection's own report:
            # a projection fed the wrong direction (or sign) leaves this > 0 for the v_hack arms
            info["grad_hackward_cos_out"] = mean_hackward(adapter.grads(), V["nll"])
        info["grad_norm_out"] = total_norm(adapter.grads())
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), cfg.max_grad_norm)
        before = {n: p.detach().clone() for n, p in params.items()}
        opt.step()
        adapter.zero_grad()
        update = {n: before[n] - p.detach() for n, p in params.items()}  # gradient orientation
        if V_proj is not None and arm.target == "update":
            info["update_cos_before_projection"] = mean_hackward(update, V["nll"])
            new, diag = project_grads(update, V_proj, cfg.projection)
            info.update(diag.to_dict())
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_((before[n] - new[n]).to(p.dtype))
        # the step actually applied, read back from the parameters (not from what was computed)
        update = {n: before[n] - p.detach() for n, p in params.items()}
        info["update_cos"] = mean_hackward(update, V["nll"])  # always w.r.t. v_hack
        info["update_norm"] = total_norm(update)
        updates.append(info)
    return records, {"updates": updates, "advantage_abs_mean":
                     sum(abs(a) for a in adv) / max(len(adv), 1)}
