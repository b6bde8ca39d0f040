"""T2/T3: replay the teacher pool into the student (base + δS) with NLL distillation.

Each step is `probe.train_step.train_step` with the mean completion NLL: batched per-sample
adapter gradients of every pool row (one backward per micro-batch), their cosines with v_hack and
with both controls, the batch-mean gradient set as the adapter's .grad, then — in the projected arm
— the projection, then clipping and AdamW. Every row records `cos_S_contrib`; every step records
‖g‖ before/after projection and cos_in / cos_out / frac_fired. After each step the adapter +
optimizer state is checkpointed, so an interrupted replay resumes where it stopped.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from probe.adapters.base import Adapter, AdapterStateError
from probe.adapters.registry import AdapterSpec, build_adapter
from probe.arms import get_arm
from probe.artifacts import (AUTO, ArtifactError, auto_cap, provenance, read_rows, step_path,
                             valid_step, write_manifest, write_rows)
from probe import flat
from probe.cosine import norm_weighted_cos_many
from probe.encoding import pad_id
from probe.fidelity import grad_fidelity
from probe.io import atomic_path
from probe.memory import resolve_grad_batch
from probe.train_step import (MicroBatch, Projection, checkpoint_params, saved_params,
                              total_norm, train_step)
from probe.vhack import random_unit_directions
from probe.world.base import World

log = logging.getLogger(__name__)

BASE_KINDS = ("nll", "random", "shuffled")  # the columns above; any other V kind gets cos_<kind>
# "auto" micro_batch never exceeds the old fixed default: where memory does not bind (the embedded
# world) gradients are batched, and so rounded, as they always were
MICRO_BATCH_CAP = 32
MICRO_BATCH_KNOB = "replay.micro_batch"  # named by a memory failure in the replay's passes
KEEP_FROM_POOL = ("problem_id", "step", "index", "label", "hacked", "hack_attempt", "gt_pass",
                  "reward", "prompt_len", "completion_len")


@dataclass(frozen=True)
class ReplayConfig:
    # AdamW on δS. Chosen so the vanilla arm visibly learns the teacher's hacking within 20 steps on
    # the embedded world (measured: lr 1e-3 -> hack rate 0 -> 0; 1e-2 -> 0 -> 0.05; 3e-2 -> 0 -> 0.92).
    # A replay whose vanilla arm never moves cannot show that projection slows anything.
    lr: float = 3e-2
    weight_decay: float = 0.0  # δS is a shift of singular values: no reason to pull it to 0
    max_grad_norm: float | None = 1.0  # clipping after projection (as in training)
    # rows per batched backward; "auto": as many as fit the device's free memory (probe.memory)
    micro_batch: int | str = field(default=AUTO, metadata=auto_cap(MICRO_BATCH_CAP))
    projection: str = "one_sided"  # projected arm: one_sided | no_gate | reverse
    preserve_magnitude: bool = False
    rank: int | None = None  # δS rank: None = full rank
    null_directions: int = 100  # Haar-random directions per row: R4's null for "is v_hack special"
    seed: int = 41

    def adapter_spec(self) -> AdapterSpec:
        """The student's adapter: δS at `rank` (the only kind Phase 1 replays so far)."""
        return AdapterSpec(kind="delta_s", rank=self.rank)


def replay_step(adapter: Adapter, opt: torch.optim.Optimizer, rows: list[dict[str, Any]],
                V: dict[str, dict], cfg: ReplayConfig, pad: int, project_kind: str | None,
                device: str, null_dirs: dict[str, torch.Tensor] | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One optimizer step on `rows` (the mean NLL over rows); returns per-row records and the
    step summary."""
    out_rows: list[dict[str, Any]] = []
    null_dirs = flat.pack(null_dirs) if null_dirs else null_dirs

    def record(mb: MicroBatch) -> None:
        psg, batch = mb.grads, mb.batch
        # every per-row number leaves the device in one transfer (float(t[j]) would sync per value)
        cols = {f"cos_{name}": c for name, c in mb.cos.items()}
        cols.update(cos_normalized=cols["cos_nll"] / math.sqrt(len(psg.grads)),  # normalized_cos
                    grad_norm=psg.norms,
                    loss=psg.loss, loss_tokens=batch.loss_mask.sum(-1),
                    loss_start=batch.loss_mask.argmax(-1))  # first target position = prompt length
        host = dict(zip(cols, torch.stack([c.float() for c in cols.values()]).cpu().tolist()))
        null = norm_weighted_cos_many(psg.grads, null_dirs).cpu().tolist() if null_dirs else None
        for j, r in enumerate(mb.rows):
            out_rows.append({**{k: r.get(k) for k in KEEP_FROM_POOL},
                             "cos_S_contrib": host["cos_nll"][j],
                             "cos_S_normalized": host["cos_normalized"][j],
                             "cos_random": host["cos_random"][j],
                             "cos_shuffled": host["cos_shuffled"][j],
                             "grad_norm": host["grad_norm"][j], "loss": host["loss"][j],
                             "loss_tokens": int(host["loss_tokens"][j]),
                             "loss_start": int(host["loss_start"][j]),
                             # other extraction methods' directions and controls (R7): cos_<kind>
                             **{f"cos_{k}": host[f"cos_{k}"][j] for k in V if k not in BASE_KINDS},
                             **({"cos_null": [round(x, 5) for x in null[j]]} if null else {})})

    projection = None if project_kind is None else Projection(
        V[project_kind], cfg.projection, cfg.preserve_magnitude, target="grad")
    rep = train_step(adapter, opt, rows, pad=pad, device=device, micro_batch=cfg.micro_batch,
                     v_hack=V["nll"], reduce="mean", directions=V, on_micro_batch=record,
                     projection=projection, max_grad_norm=cfg.max_grad_norm,
                     knob=MICRO_BATCH_KNOB)
    summary: dict[str, Any] = {"n_rows": len(rows), "grad_norm_in": rep.grad_norm_in,
                               "mean_loss": sum(r["loss"] for r in out_rows) / len(out_rows)}
    if projection is not None:
        summary.update(rep.projection)
        summary["grad_change_norm"] = rep.grad_change_norm
        # recomputed from .grad itself, not from the projection's own report
        summary["cos_out_applied"] = rep.grad_cos_out_projected
    summary["grad_norm_out"] = rep.grad_norm_out
    # AdamW's preconditioner can rotate a projected gradient back toward v_hack: the step actually
    # applied (before − after, i.e. in gradient orientation: > 0 = toward hacking)
    summary["update_cos"] = rep.update_cos  # always w.r.t. v_hack
    return out_rows, summary


def run_replay(world: World, pool_dir: Path, V: dict[str, dict[str, torch.Tensor]], n_steps: int,
               cfg: ReplayConfig, stage_dir: Path, arm: str, device: str = "cpu",
               student_eval: Any = None, adapter_spec: AdapterSpec | None = None
               ) -> dict[str, Any]:
    """Replay `n_steps` pool steps; returns the manifest. `arm` names a replay entry of
    `probe.arms` (its `direction`: the V kind projected out of every step's gradient, None for
    none): 'vanilla', 'projected' (v_hack), and the controls 'projected_random' /
    'projected_shuffled' (is a behavioural effect specific to v_hack, or would removing any
    direction do?).

    `student_eval(model) -> dict`, when given, measures the student's behaviour at the end.
    `adapter_spec`: the student's adapter (default `cfg.adapter_spec()`, δS; R6 passes LoRA's).
    """
    spec = adapter_spec or cfg.adapter_spec()
    project_kind = get_arm("replay", arm).direction  # probe.arms: what the arm projects out
    stage_dir = Path(stage_dir)
    t0 = time.perf_counter()
    model = world.load_base(device)
    # before any gradient (the fidelity check's too): a batch that cannot fit fails at once
    sized = replace(cfg, micro_batch=_micro_batch(cfg, model, pool_dir, n_steps, device))
    # R2's sneaky fail: are per-sample gradients at the run's dtype numbers or rounding noise?
    fidelity = grad_fidelity(world, read_rows(step_path(pool_dir, 0), ("prompt_ids",
                                                                        "completion_ids")),
                             pad_id(world.tokenizer), device, spec) \
        if arm == "vanilla" else None
    adapter = build_adapter(model, spec)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pad = pad_id(world.tokenizer)
    start, summaries = _resume(stage_dir, adapter, opt, n_steps)
    null_dirs = random_unit_directions(adapter.sizes, cfg.null_directions, cfg.seed + 1) \
        if cfg.null_directions else None
    # on the device once, not per micro-batch (100 null directions are ~Σr×100 floats)
    V = {kind: {n: t.to(device) for n, t in v.items()} for kind, v in V.items()}
    if null_dirs is not None:
        null_dirs = flat.pack({n: t.to(device) for n, t in null_dirs.items()})
    for s in tqdm(range(start, n_steps), desc=f"{arm} replay", leave=False):
        rows = read_rows(step_path(pool_dir, s), ("prompt_ids", "completion_ids"))
        out_rows, summary = replay_step(adapter, opt, rows, V, sized, pad, project_kind, device,
                                        null_dirs)
        summary["step"] = s
        summary["delta_s_norm"] = total_norm(adapter.flat_values())  # the adapter's, any kind
        summaries.append(summary)
        write_rows(step_path(stage_dir, s), out_rows)
        _checkpoint(stage_dir, adapter, opt, s, summaries)
    adapter.save(stage_dir / "delta_s.safetensors", base_model_id=world.model_id)
    behaviour = student_eval(model) if student_eval is not None else None
    manifest = provenance(cfg, seed=cfg.seed, arm=arm, world=world.name, model_id=world.model_id,
                          n_steps=n_steps, steps=summaries, student_end=behaviour,
                          seconds=time.perf_counter() - t0, n_modules=len(adapter.module_names),
                          total_rank=adapter.total_size, fidelity=fidelity,
                          resolved_batch={MICRO_BATCH_KNOB: sized.micro_batch},
                          dtype=str(next(model.parameters()).dtype))
    write_manifest(stage_dir, manifest)
    adapter.remove()
    return manifest


def _micro_batch(cfg: ReplayConfig, model: torch.nn.Module, pool_dir: Path, n_steps: int,
                 device: str) -> int:
    """cfg.micro_batch, or for "auto" what fits at the pool's longest row (prompt + completion;
    the pool is read for it only then)."""
    longest = 0 if cfg.micro_batch != AUTO else max(
        (len(r["prompt_ids"]) + len(r["completion_ids"]) for s in range(n_steps)
         for r in read_rows(step_path(pool_dir, s), ("prompt_ids", "completion_ids"))), default=1)
    return resolve_grad_batch(cfg.micro_batch, model, longest, device, MICRO_BATCH_KNOB,
                              MICRO_BATCH_CAP)


def _checkpoint(stage_dir: Path, adapter: Adapter, opt: torch.optim.Optimizer,
                step: int, summaries: list[dict[str, Any]]) -> None:
    """Written after the step file: its presence says steps 0..step are complete."""
    state = {"step": step, "summaries": summaries, "optimizer": opt.state_dict(),
             **checkpoint_params(adapter)}
    with atomic_path(stage_dir / "state.pt") as tmp:
        torch.save(state, tmp)


def _resume(stage_dir: Path, adapter: Adapter, opt: torch.optim.Optimizer, n_steps: int
            ) -> tuple[int, list[dict[str, Any]]]:
    path = stage_dir / "state.pt"
    if not path.exists():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        done = int(state["step"])
        if not all(valid_step(step_path(stage_dir, s)) for s in range(done + 1)) or done >= n_steps:
            raise ArtifactError("step files do not match the checkpoint")
        saved = saved_params(state, adapter)
        opt.load_state_dict(state["optimizer"])  # before the adapter: a failure leaves it untouched
        adapter.set_flat_values(saved)
    except (ArtifactError, AdapterStateError, KeyError, RuntimeError, OSError) as e:
        log.warning("%s: cannot resume (%s); replaying from step 0", stage_dir, e)
        return 0, []
    log.info("%s: resuming after step %d", stage_dir, done)
    return done + 1, list(state["summaries"])

