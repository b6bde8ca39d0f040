"""T2/T3: replay the teacher pool into the student (base + δS) with NLL distillation.

Each step: batched per-sample δS gradients of every pool row (one backward per micro-batch), their
cosines with v_hack and with both controls, the batch-mean gradient set as δS.grad, then — in the
projected arm — the projection, then clipping and AdamW. Every row records `cos_S_contrib`; every
step records ‖g‖ before/after projection and cos_in / cos_out / frac_fired. After each step the
δS + optimizer state is checkpointed, so an interrupted replay resumes where it stopped.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from probe.adapters.antipasto import AntipastoAdapter, AntipastoConfig, check_names_and_ranks
from probe.arms import get_arm
from probe.artifacts import (ArtifactError, provenance, read_rows, step_path, valid_step,
                             write_manifest, write_rows)
from probe.batch import collate
from probe.cosine import norm_weighted_cos, norm_weighted_cos_many
from probe.encoding import pad_id
from probe.fidelity import grad_fidelity
from probe.grads import per_sample_grads
from probe.io import atomic_path
from probe.project import as_basis, hackward_cos, project_adapter_grads_
from probe.vhack import random_unit_directions
from probe.world.base import World

log = logging.getLogger(__name__)

BASE_KINDS = ("nll", "random", "shuffled")  # the columns above; any other V kind gets cos_<kind>
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
    micro_batch: int = 32  # rows per batched backward (memory bound)
    projection: str = "one_sided"  # projected arm: one_sided | no_gate | reverse
    preserve_magnitude: bool = False
    rank: int | None = None  # δS rank: None = full rank
    null_directions: int = 100  # Haar-random directions per row: R4's null for "is v_hack special"
    seed: int = 41


def _mean_hackward(vectors: dict[str, torch.Tensor], V: dict[str, torch.Tensor]) -> float:
    """Mean over modules of ‖relu(V x)‖/‖x‖ (x in gradient orientation)."""
    vals = [hackward_cos(x.float(), as_basis(V[n]).to(x.device).float()) for n, x in vectors.items()]
    return float(torch.stack(vals).mean()) if vals else float("nan")


def _total_norm(grads: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(g.float().pow(2).sum() for g in grads.values())))


def replay_step(adapter: AntipastoAdapter, rows: list[dict[str, Any]], V: dict[str, dict],
                cfg: ReplayConfig, pad: int, project_kind: str | None, device: str,
                null_dirs: dict[str, torch.Tensor] | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One optimizer step's gradient on `rows`; returns per-row records and the step summary."""
    params = adapter.named_params()
    summed = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    out_rows = []
    for i in range(0, len(rows), cfg.micro_batch):
        part = rows[i:i + cfg.micro_batch]
        batch = collate([r["prompt_ids"] for r in part], [r["completion_ids"] for r in part],
                        pad).to(device)
        psg = per_sample_grads(adapter, batch)
        for n, g in psg.grads.items():
            summed[n] += g.sum(0)
        # every per-row number leaves the device in one transfer (float(t[j]) would sync per value)
        cols = {f"cos_{name}": norm_weighted_cos(psg.grads, v) for name, v in V.items()}
        cols.update(cos_normalized=cols["cos_nll"] / math.sqrt(len(psg.grads)),  # normalized_cos
                    grad_norm=psg.norms,
                    loss=psg.loss, loss_tokens=batch.loss_mask.sum(-1),
                    loss_start=batch.loss_mask.argmax(-1))  # first target position = prompt length
        host = dict(zip(cols, torch.stack([c.float() for c in cols.values()]).cpu().tolist()))
        null = norm_weighted_cos_many(psg.grads, null_dirs).cpu().tolist() if null_dirs else None
        for j, r in enumerate(part):
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
    for n, p in params.items():
        p.grad = (summed[n] / len(rows)).to(p.dtype)
    summary: dict[str, Any] = {"n_rows": len(rows), "grad_norm_in": _total_norm(adapter.grads()),
                               "mean_loss": sum(r["loss"] for r in out_rows) / len(out_rows)}
    if project_kind is not None:
        before = {n: g.clone() for n, g in adapter.grads().items()}
        diag = project_adapter_grads_(adapter, V[project_kind], cfg.projection,
                                      cfg.preserve_magnitude)
        summary.update(diag.to_dict())
        after = adapter.grads()
        summary["grad_change_norm"] = _total_norm({n: after[n] - before[n] for n in before})
        # recomputed from .grad itself, not from the projection's own report
        summary["cos_out_applied"] = _mean_hackward(after, V[project_kind])
    summary["grad_norm_out"] = _total_norm(adapter.grads())
    return out_rows, summary


def run_replay(world: World, pool_dir: Path, V: dict[str, dict[str, torch.Tensor]], n_steps: int,
               cfg: ReplayConfig, stage_dir: Path, arm: str, device: str = "cpu",
               student_eval: Any = None) -> dict[str, Any]:
    """Replay `n_steps` pool steps; returns the manifest. `arm` names a replay entry of
    `probe.arms` (its `direction`: the V kind projected out of every step's gradient, None for
    none): 'vanilla', 'projected' (v_hack), and the controls 'projected_random' /
    'projected_shuffled' (is a behavioural effect specific to v_hack, or would removing any
    direction do?).

    `student_eval(model) -> dict`, when given, measures the student's behaviour at the end.
    """
    project_kind = get_arm("replay", arm).direction  # probe.arms: what the arm projects out
    stage_dir = Path(stage_dir)
    t0 = time.perf_counter()
    # R2's sneaky fail: are per-sample gradients at the run's dtype numbers or rounding noise?
    fidelity = grad_fidelity(world, read_rows(step_path(pool_dir, 0), ("prompt_ids",
                                                                        "completion_ids")),
                             pad_id(world.tokenizer), device, cfg.rank) if arm == "vanilla" else None
    model = world.load_base(device)
    adapter = AntipastoAdapter(model, AntipastoConfig(rank=cfg.rank))
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pad = pad_id(world.tokenizer)
    start, summaries = _resume(stage_dir, adapter, opt, n_steps)
    null_dirs = random_unit_directions(adapter.ranks, cfg.null_directions, cfg.seed + 1) \
        if cfg.null_directions else None
    # on the device once, not per micro-batch (100 null directions are ~Σr×100 floats)
    V = {kind: {n: t.to(device) for n, t in v.items()} for kind, v in V.items()}
    if null_dirs is not None:
        null_dirs = {n: t.to(device) for n, t in null_dirs.items()}
    for s in tqdm(range(start, n_steps), desc=f"{arm} replay", leave=False):
        rows = read_rows(step_path(pool_dir, s), ("prompt_ids", "completion_ids"))
        out_rows, summary = replay_step(adapter, rows, V, cfg, pad, project_kind, device,
                                        null_dirs)
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), cfg.max_grad_norm)
        before_step = {n: p.detach().clone() for n, p in adapter.named_params().items()}
        opt.step()
        adapter.zero_grad()
        # AdamW's preconditioner can rotate a projected gradient back toward v_hack: measure the
        # step actually applied (before − after, i.e. in gradient orientation: > 0 = toward hacking)
        update = {n: before_step[n] - p.detach() for n, p in adapter.named_params().items()}
        summary["update_cos"] = _mean_hackward(update, V["nll"])  # always w.r.t. v_hack
        summary["step"] = s
        summary["delta_s_norm"] = _total_norm({n: p.detach() for n, p in adapter.named_params().items()})
        summaries.append(summary)
        write_rows(step_path(stage_dir, s), out_rows)
        _checkpoint(stage_dir, adapter, opt, s, summaries)
    adapter.save(stage_dir / "delta_s.safetensors", base_model_id=world.model_id)
    behaviour = student_eval(model) if student_eval is not None else None
    manifest = provenance(cfg, seed=cfg.seed, arm=arm, world=world.name, model_id=world.model_id,
                          n_steps=n_steps, steps=summaries, student_end=behaviour,
                          seconds=time.perf_counter() - t0, n_modules=len(adapter.module_names),
                          total_rank=adapter.total_rank, fidelity=fidelity,
                          dtype=str(next(model.parameters()).dtype))
    write_manifest(stage_dir, manifest)
    adapter.remove()
    return manifest


def _checkpoint(stage_dir: Path, adapter: AntipastoAdapter, opt: torch.optim.Optimizer,
                step: int, summaries: list[dict[str, Any]]) -> None:
    """Written after the step file: its presence says steps 0..step are complete."""
    state = {"step": step, "summaries": summaries, "optimizer": opt.state_dict(),
             "delta_s": {n: p.detach().cpu() for n, p in adapter.named_params().items()}}
    with atomic_path(stage_dir / "state.pt") as tmp:
        torch.save(state, tmp)


def _resume(stage_dir: Path, adapter: AntipastoAdapter, opt: torch.optim.Optimizer, n_steps: int
            ) -> tuple[int, list[dict[str, Any]]]:
    path = stage_dir / "state.pt"
    if not path.exists():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        done = int(state["step"])
        if not all(valid_step(step_path(stage_dir, s)) for s in range(done + 1)) or done >= n_steps:
            raise ArtifactError("step files do not match the checkpoint")
        params = adapter.named_params()
        saved = state["delta_s"]
        check_names_and_ranks({n: t.shape[-1] for n, t in saved.items()}, adapter.ranks,
                              "checkpoint", ArtifactError)
        opt.load_state_dict(state["optimizer"])  # before δS: a failure here leaves δS untouched
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(p.device, p.dtype))
    except (ArtifactError, KeyError, RuntimeError, OSError) as e:
        log.warning("%s: cannot resume (%s); replaying from step 0", stage_dir, e)
        return 0, []
    log.info("%s: resuming after step %d", stage_dir, done)
    return done + 1, list(state["summaries"])
