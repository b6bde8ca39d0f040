"""One training step for every trainer: per-sample gradients under the trainer's per-sample loss →
every row's cosine with each direction → the step's gradient (mean or sum over rows) → projection
of the gradient → clipping → the optimizer → projection of the update it applied.

The NLL replay (Phase 1) is this step with the mean completion NLL and the mean over rows; the GRPO
trainer (R5) is this step with the Dr.GRPO surrogate (a token loss), the sum over rows (its
normaliser is a constant) and, in some arms, the projection acting on AdamW's update instead of the
gradient. Each trainer writes its own per-row records from the micro-batches it is shown and its
own summary from the `StepReport`: the arithmetic that moves the parameters is here, once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from probe import flat
from probe.adapters.base import Adapter, AdapterStateError, check_names_and_sizes
from probe.batch import TokenBatch, collate
from probe.cosine import norm_weighted_cos
from probe.grads import PerSampleGrads, TokenLoss, per_sample_grads
from probe.memory import number, oom_names_knob
from probe.project import module_hackward_cos, project_adapter_grads_, project_grads
from probe.rl.distributed import all_reduce_sum_, shard

REDUCTIONS = ("mean", "sum")
TARGETS = ("grad", "update")


@dataclass(frozen=True)
class Projection:
    """What a projected arm removes, and where."""

    V: dict[str, torch.Tensor]  # per module (k, size), orthonormal rows
    mode: str = "one_sided"  # probe.project.MODES
    preserve_magnitude: bool = False
    target: str = "grad"  # "grad": before clipping and the optimizer; "update": the update applied

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"projection target {self.target!r} is not one of {TARGETS}")


@dataclass
class MicroBatch:
    """One micro-batch's rows and what the step computed on them, for the trainer's records."""

    rows: Sequence[dict[str, Any]]
    index: list[int]  # each row's position in the step's rows
    batch: TokenBatch
    grads: PerSampleGrads  # (B, size) per module
    cos: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> (B,) norm-weighted cosine


TokenLossFor = Callable[[Sequence[dict[str, Any]], list[int], TokenBatch], TokenLoss | None]
"""(micro-batch rows, their positions, their batch) -> the token loss (None: the mean NLL)."""


@dataclass
class StepReport:
    """What the step measured (all in gradient orientation: > 0 = toward hacking)."""

    grad_norm_in: float  # ‖g‖ of the step's gradient, before projection
    grad_hackward_cos: float  # mean over modules of ‖relu(V_hack g)‖/‖g‖, before projection
    grad_norm_out: float  # after projection, before clipping
    update_cos: float  # the update actually applied, read back from the parameters, vs v_hack
    update_norm: float
    projection: dict[str, Any] | None = None  # ProjectionDiag.to_dict() of the projection that acted
    grad_change_norm: float | None = None  # ‖g_out − g_in‖ (gradient projection)
    grad_cos_out_projected: float | None = None  # .grad after projection vs the projected V
    grad_hackward_cos_out: float | None = None  # .grad after projection vs v_hack
    update_cos_before_projection: float | None = None  # update projection: AdamW's own update
    # R6's drift: the gradient before / after projection vs a tracked direction (the v_hack
    # re-extracted from the current student), and the applied update vs it
    tracked_cos_in: float | None = None
    tracked_cos_out: float | None = None
    tracked_update_cos: float | None = None


def mean_hackward(vectors: dict[str, torch.Tensor], V: dict[str, torch.Tensor]) -> float:
    """Mean over modules of ‖relu(V x)‖/‖x‖ (x in gradient orientation: > 0 = toward hacking)."""
    return float(module_hackward_cos(vectors, V).mean()) if vectors else float("nan")


def total_norm(vectors: dict[str, torch.Tensor]) -> float:
    if flat.use_flat(vectors):
        return float(flat.segments(vectors).cat(vectors, torch.float32).norm())
    return float(torch.sqrt(sum(v.float().pow(2).sum() for v in vectors.values())))


def add_row_sums_(acc: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
                  select: torch.Tensor | None = None) -> None:
    """acc[m] += Σ over rows (those in `select`) of grads[m] (B, size), for every module."""
    if flat.use_flat(grads):
        seg = flat.segments(grads)
        rows = seg.cat(grads, torch.float32)
        total = (rows if select is None else rows[select]).sum(0)
        whole = getattr(acc, "whole", None)  # flat.zeros' Packed dict: one buffer, one add
        if whole is not None and tuple(acc) == seg.names and whole.dtype == total.dtype:
            whole += total
        else:
            torch._foreach_add_([acc[n] for n in seg.names], list(seg.split(total).values()))
        return
    for n, g in grads.items():
        acc[n] += (g if select is None else g[select]).sum(0)


def summed_grads(adapter: Adapter, rows: Sequence[dict[str, Any]], pad: int, device: str,
                 micro_batch: int, token_loss_for: TokenLossFor | None = None,
                 directions: dict[str, dict[str, torch.Tensor]] | None = None,
                 on_micro_batch: Callable[[MicroBatch], None] | None = None,
                 index: Sequence[int] | None = None, knob: str = "micro_batch"
                 ) -> dict[str, torch.Tensor]:
    """Σ over `rows` of every row's flat per-sample gradient (float32), one batched backward per
    micro-batch; each micro-batch, with its rows' cosines against every direction in
    `directions`, is handed to `on_micro_batch`. `micro_batch` is a number (the stage resolves
    "auto", probe.memory); running out of memory names `knob`."""
    micro_batch = number(micro_batch, knob)
    index = list(range(len(rows))) if index is None else list(index)
    summed = flat.zeros(adapter.sizes, adapter.device)
    with oom_names_knob(knob, micro_batch):
        for i in range(0, len(rows), micro_batch):
            part, idx = rows[i:i + micro_batch], index[i:i + micro_batch]
            batch = collate([r["prompt_ids"] for r in part], [r["completion_ids"] for r in part],
                            pad).to(device)
            token_loss = token_loss_for(part, idx, batch) if token_loss_for is not None else None
            psg = per_sample_grads(adapter, batch, token_loss=token_loss)
            add_row_sums_(summed, psg.grads)
            if on_micro_batch is not None:
                cos = {k: norm_weighted_cos(psg.grads, v) for k, v in (directions or {}).items()}
                on_micro_batch(MicroBatch(part, idx, batch, psg, cos))
    return summed


def optimizer_step(adapter: Adapter, opt: torch.optim.Optimizer, grad: dict[str, torch.Tensor],
                   v_hack: dict[str, torch.Tensor], projection: Projection | None = None,
                   max_grad_norm: float | None = None,
                   track: dict[str, torch.Tensor] | None = None) -> StepReport:
    """Set `grad` as the adapter's gradient, project it (target "grad"), clip, step the optimizer,
    project the applied update (target "update"); measure each stage against v_hack (and, read
    only, against `track`)."""
    adapter.set_grads(grad)
    g_in = adapter.grads()
    norm_in, hack_in = total_norm(g_in), mean_hackward(g_in, v_hack)
    extra: dict[str, Any] = {}
    if track is not None:
        extra["tracked_cos_in"] = mean_hackward(g_in, track)
    if projection is not None and projection.target == "grad":
        before = flat.copy(g_in)
        diag = project_adapter_grads_(adapter, projection.V, projection.mode,
                                      projection.preserve_magnitude)
        after = adapter.grads()
        # recomputed from .grad itself, not from the projection's own report: a projection fed
        # the wrong direction (or sign) leaves the hack-ward cosine > 0
        extra.update(projection=diag.to_dict(),
                     grad_change_norm=total_norm(flat.sub(after, before)),
                     grad_cos_out_projected=mean_hackward(after, projection.V),
                     grad_hackward_cos_out=mean_hackward(after, v_hack))
    norm_out = total_norm(adapter.grads())
    if track is not None:
        extra["tracked_cos_out"] = mean_hackward(adapter.grads(), track)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), max_grad_norm)
    before_step = adapter.flat_values()
    opt.step()
    adapter.zero_grad()
    if projection is not None and projection.target == "update":
        # AdamW's preconditioner can rotate a projected gradient back toward V: project the step
        update = flat.sub(before_step, adapter.flat_values())
        extra["update_cos_before_projection"] = mean_hackward(update, v_hack)
        new, diag = project_grads(update, projection.V, projection.mode,
                                  projection.preserve_magnitude)
        extra["projection"] = diag.to_dict()
        adapter.set_flat_values({n: before_step[n] - new[n] for n in new})
    # the step actually applied, read back from the parameters (not from what was computed)
    update = flat.sub(before_step, adapter.flat_values())
    if track is not None:
        extra["tracked_update_cos"] = mean_hackward(update, track)
    return StepReport(grad_norm_in=norm_in, grad_hackward_cos=hack_in, grad_norm_out=norm_out,
                      update_cos=mean_hackward(update, v_hack), update_norm=total_norm(update),
                      **extra)


def train_step(adapter: Adapter, opt: torch.optim.Optimizer, rows: Sequence[dict[str, Any]], *,
               pad: int, device: str, micro_batch: int, v_hack: dict[str, torch.Tensor],
               reduce: str = "mean", token_loss_for: TokenLossFor | None = None,
               directions: dict[str, dict[str, torch.Tensor]] | None = None,
               on_micro_batch: Callable[[MicroBatch], None] | None = None,
               projection: Projection | None = None, max_grad_norm: float | None = None,
               distributed: bool = False, track: dict[str, torch.Tensor] | None = None,
               knob: str = "micro_batch") -> StepReport:
    """One optimizer step on `rows`. `reduce`: the step's gradient is the mean of the rows'
    gradients (a mean loss, the NLL replay) or their sum (a loss with a constant normaliser,
    Dr.GRPO). With `distributed`, this rank takes its share of the rows (`probe.rl.distributed`)
    and the sum is all-reduced before projection, so every rank takes the identical step."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce {reduce!r} is not one of {REDUCTIONS}")
    if flat.use_flat(v_hack):  # every direction as views of one buffer: its concatenation is free
        packed: dict[int, dict[str, torch.Tensor]] = {}

        def pack(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if id(d) not in packed:
                packed[id(d)] = flat.pack(d)
            return packed[id(d)]
        v_hack = pack(v_hack)
        directions = {k: pack(d) for k, d in (directions or {}).items()} or directions
        track = pack(track) if track is not None else None
        if projection is not None:
            projection = dataclasses.replace(projection, V=pack(projection.V))
    mine, idx = shard(rows) if distributed else (list(rows), list(range(len(rows))))
    summed = summed_grads(adapter, mine, pad, device, micro_batch, token_loss_for, directions,
                          on_micro_batch, idx, knob)
    if distributed:
        all_reduce_sum_(summed)
    grad = summed if reduce == "sum" else flat.div(summed, len(rows))
    return optimizer_step(adapter, opt, grad, v_hack, projection, max_grad_norm, track)


def checkpoint_params(adapter: Adapter) -> dict[str, Any]:
    """The adapter's part of a trainer checkpoint: its kind and flat vector per module."""
    return {"adapter_kind": adapter.kind,
            "adapter": {n: v.cpu() for n, v in adapter.flat_values().items()}}


def saved_params(state: dict[str, Any], adapter: Adapter) -> dict[str, torch.Tensor]:
    """A checkpoint's flat vectors, checked against `adapter` (kind, modules, sizes): a mismatch
    is an `AdapterStateError` naming it. Checkpoints from before the interface hold δS under
    "delta_s"."""
    kind = state.get("adapter_kind", "delta_s" if "delta_s" in state else None)
    if kind != adapter.kind:
        raise AdapterStateError(f"checkpoint of a {kind!r} adapter, the run's is {adapter.kind!r}")
    saved = state["adapter"] if "adapter" in state else state["delta_s"]
    check_names_and_sizes({n: t.shape[-1] for n, t in saved.items()}, adapter.sizes, "checkpoint")
    return saved
