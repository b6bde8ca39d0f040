"""R6: the LoRA arm against the δS arm — does v_hack projection work as well in a LoRA basis?

Same teacher pool, pairs, teacher rows and seeds as Phase 1 / R5; only the student's adapter
differs. The stage makes, under `probe.layout.R6Paths`:
- the LoRA-basis v_hack and its controls (the same pairs and extraction as δS's, through
  `probe.adapters.lora`), with each module's A and B share of v_hack recorded (the zero-init-B trap);
- the LoRA replay arm on the teacher pool (T4: per-row cosines with the LoRA v_hack);
- the GRPO arms `lora_vanilla`, `lora_projected` and δS's `projected` again, the projected arms
  with v_hack re-extracted every `drift_every` steps (measured, never projected): drift of each
  basis, and cos_in / cos_out against the current v_hack (the spec's sneaky fail), side by side.
δS's vanilla GRPO arm is R5's own (same config, same artifact).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from probe.adapters.registry import AdapterSpec, build_adapter
from probe.arms import get_arm
from probe.artifacts import ArtifactError, point_latest, provenance, read_manifest, write_manifest
from probe.layout import R6Paths, r6_paths, world_identity
from probe.vhack import VHackMismatchError, extract_all, load_vhack, save_vhack
from probe.world.base import World

log = logging.getLogger(__name__)

LORA_KINDS = ("nll", "random", "shuffled")  # the NLL v_hack and its two controls
DS_ARMS = ("projected",)  # δS arms R6 re-runs with drift measured (vanilla is R5's)
LORA_ARMS = ("lora_vanilla", "lora_projected")


@dataclass(frozen=True)
class R6Config:
    """The LoRA student (rank, alpha and the seven targets as upstream's teachers) and how R6 runs."""

    rank: int = 32
    alpha: float = 32.0
    # "nonzero_b" (default; B random, the start still exactly the base), "frozen_a", or "peft"
    # (B = 0: v_hack has no A part at init, the trap the spec names); probe/adapters/lora.py
    init: str = "nonzero_b"
    init_seed: int = 0  # LoRA's random factors: every arm and seed starts from the same ones
    # learning rates matched to δS's on the vanilla arms (README: the criterion and the sweep)
    replay_lr: float = 1e-3
    grpo_lr: float = 1e-3
    drift_every: int = 5  # re-extract v_hack from the student after every this many steps
    seeds: tuple[int, ...] = ()  # GRPO seeds; () = grpo.seeds

    def adapter_spec(self) -> AdapterSpec:
        return AdapterSpec(kind="lora", rank=self.rank, alpha=self.alpha, init=self.init,
                           seed=self.init_seed)


def lora_vhack_parts(V: dict[str, torch.Tensor], split: dict[str, list[int]]
                     ) -> dict[str, list[float]]:
    """Each module's share of ‖v‖² in each of its tensors (LoRA: A then B): a share of 0 is
    the zero-init-B trap (no A part) showing."""
    out = {}
    for n, v in V.items():
        row = v.reshape(-1, v.shape[-1])[0].double()
        total = float(row.pow(2).sum()) or 1.0
        parts, i = [], 0
        for size in split[n]:
            parts.append(float(row[i:i + size].pow(2).sum()) / total)
            i += size
        out[n] = parts
    return out


def ensure_lora_vhack(world: World, cfg: Any, paths: R6Paths, device: str = "cpu"
                      ) -> dict[str, dict[str, torch.Tensor]]:
    """v_hack and its controls in the LoRA basis: same pairs, same extraction as δS's."""
    p1 = paths.phase1
    try:
        manifest = read_manifest(p1.vhack)
        return {k: load_vhack(p1.vhack_file(k), manifest["ranks"])[0] for k in LORA_KINDS}
    except ArtifactError:
        pass
    except VHackMismatchError as e:
        log.warning("re-extracting the LoRA v_hack: %s", e)
    adapter = build_adapter(world.load_base(device), cfg.r6.adapter_spec())
    pairs = world.contrastive_pairs("train", cfg.pool.hint, seed=cfg.vhack.seed)
    vs, stats = extract_all(adapter, world.tokenizer, pairs, cfg.vhack)
    meta = {"world": world.name, "model_id": world.model_id, "loss": "mean_nll_completion",
            "k": cfg.vhack.k, "n_pairs": len(pairs), "adapter": adapter.kind}
    for kind, V in vs.items():
        save_vhack(p1.vhack_file(kind), V, {**meta, "kind": kind})
    split = {n: [p.numel() for p in ps] for n, ps in adapter.module_params().items()}
    tensor_names = ["A", "B"] if all(len(s) == 2 for s in split.values()) else ["B"]
    write_manifest(p1.vhack, provenance(cfg.vhack, seed=cfg.vhack.seed, **meta, stats=stats,
                                        ranks=adapter.sizes, adapter_spec=cfg.r6.adapter_spec(),
                                        tensors=tensor_names,
                                        parts=lora_vhack_parts(vs["nll"], split)))
    adapter.remove()
    return vs


def ensure_lora_replay(world: World, cfg: Any, phase1_paths: Any, paths: R6Paths,
                       V: dict[str, dict[str, torch.Tensor]], device: str = "cpu") -> dict[str, Any]:
    """T4 in the LoRA basis: the vanilla replay of the same teacher pool with the LoRA student."""
    from probe.stages.evaluate import evaluate_policy
    from probe.stages.replay import run_replay

    arm = "lora_vanilla"
    try:
        return read_manifest(paths.phase1.arm(arm))
    except ArtifactError:
        pass

    def student_eval(model: torch.nn.Module) -> dict[str, Any]:
        return evaluate_policy(model, world, cfg.student_eval, cfg.grader,
                               rows_path=paths.phase1.student_eval_rows(arm))

    return run_replay(world, phase1_paths.pool, V, cfg.pool.steps,
                      replace(cfg.replay, lr=cfg.r6.replay_lr), paths.phase1.arm(arm), arm, device,
                      student_eval=student_eval, adapter_spec=cfg.r6.adapter_spec())


def r6_seeds(cfg: Any) -> tuple[int, ...]:
    return tuple(cfg.r6.seeds) or tuple(cfg.grpo.seeds)


def run_r6(world: World, cfg: Any, phase1_paths: Any, out_dir: str | Path = "out",
           device: str = "cpu") -> R6Paths:
    """R6 end to end (resuming): δS's v_hack and R5's δS vanilla arm, then the LoRA v_hack, the
    LoRA replay and every R6 GRPO arm × seed (each job under its own lock)."""
    from probe.stages.grpo import _each_once, ensure_grpo, ensure_teacher_rows, run_grpo_arm
    from probe.stages.phase1 import ensure_pool, ensure_vhack, stage_keys

    ensure_pool(world, cfg, phase1_paths, device)
    V_ds = ensure_vhack(world, cfg, phase1_paths, device)
    ident = world_identity(world)
    vhack_key = stage_keys(world, cfg)["v_hack"]
    paths = r6_paths(ident, vhack_key, cfg, out_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_manifest(paths.root, provenance(cfg.r6, seeds=list(r6_seeds(cfg)), grpo=cfg.grpo,
                                          world=ident, teacher_root=str(paths.teacher_root),
                                          r5_root=str(paths.r5_root)), name="config.json")
    seeds = r6_seeds(cfg)
    point_latest(paths.root.parent, paths.root)
    from probe.layout import grpo_paths

    r5 = grpo_paths(ident, vhack_key, cfg.grpo, out_dir, cfg.grader)
    ensure_grpo(world, cfg.grpo, r5, V_ds, device=device, grader_config=cfg.grader,
                adapter_spec=cfg.replay.adapter_spec(), vhack=cfg.vhack, pair_hint=cfg.pool.hint,
                only=[("vanilla", s) for s in seeds])
    with FileLock(str(paths.root / "lora_stages.lock")):  # one process makes them, others read
        V_lora = ensure_lora_vhack(world, cfg, paths, device)
        ensure_lora_replay(world, cfg, phase1_paths, paths, V_lora, device)
    _each_once([(str(paths.grpo.teacher(s)) + ".lock",
                 lambda s=s: ensure_teacher_rows(world, cfg.grpo, paths.grpo, s, device,
                                                 cfg.grader)) for s in seeds])
    setups = {"projected": (cfg.grpo, V_ds, cfg.replay.adapter_spec()),
              "lora_vanilla": (replace(cfg.grpo, lr=cfg.r6.grpo_lr), V_lora,
                               cfg.r6.adapter_spec()),
              "lora_projected": (replace(cfg.grpo, lr=cfg.r6.grpo_lr), V_lora,
                                 cfg.r6.adapter_spec())}
    jobs = []
    for seed in seeds:
        for arm, (gcfg, V, spec) in setups.items():
            spec_arm = get_arm("grpo", arm)
            jobs.append((str(paths.grpo.arm(arm, seed)) + ".lock",
                         lambda gcfg=gcfg, V=V, spec=spec, spec_arm=spec_arm, seed=seed:
                         run_grpo_arm(world, gcfg, paths.grpo, spec_arm, seed, V,
                                      adapter_spec=spec, device=device, grader_config=cfg.grader,
                                      vhack=cfg.vhack, pair_hint=cfg.pool.hint,
                                      drift_every=cfg.r6.drift_every if spec_arm.direction
                                      else 0)))
    _each_once(jobs)
    return paths
