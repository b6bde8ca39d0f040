"""R5 (spec T5): the GRPO trajectory probe, every arm × seed, replayable step by step.

Layout: `out/probe_grpo/<hash of world + v_hack key + GRPO config>/` holds `teacher_seed<S>/` (the
teacher rows of every step, sampled once per seed and shared by every arm) and `<arm>_seed<S>/`
(one `step_NNN.jsonl.gz` per step: every row's source, reward, label, advantage and cosines; the
step summaries with ratio statistics, projection diagnostics and update cosines go to the manifest).
Each arm checkpoints its adapter, AdamW and its summaries after every step, so a killed run resumes
where it stopped; sampling is seeded by (seed, step), so a resumed run samples what the first would have.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from probe.adapters.base import Adapter, AdapterStateError
from probe.adapters.registry import AdapterSpec, build_adapter
from probe.arms import Arm, get_arm
from probe.artifacts import (ArtifactError, point_latest, provenance, read_manifest,
                             read_rows, step_path, valid_step, write_manifest, write_rows)
from probe.drift import drift
from probe.encoding import pad_id
from probe.env.grader import Grader, GraderConfig
from probe.env.rates import rates
from probe.io import atomic_path
from probe.layout import GRPOPaths, grpo_paths, teacher_key  # noqa: F401  (re-exported)
from probe.rl.config import MICRO_BATCH_KNOB, GRPOConfig
from probe.rl.distributed import acquire_collectively, barrier, gather_objects, is_writer, shard
from probe.rl.rollout import (GROUP_FIELDS, CachedGrader, add_logprobs, group_stats, policy_rows,
                              sized, step_problems)
from probe.rl.tracker import StepTracker
from probe.rl.trainer import TRACKED, grpo_update_step
from probe.train_step import checkpoint_params, saved_params, total_norm
from probe.vhack import VHackConfig, extract_direction
from probe.world.base import World

log = logging.getLogger(__name__)


def normaliser(world: World, cfg: GRPOConfig) -> float:
    """Dr.GRPO's constant denominator: G · P · max_new_tokens."""
    mnt = cfg.max_new_tokens or world.sampling.max_new_tokens
    return float(cfg.group_size * cfg.problems_per_step * mnt)


def ensure_teacher_rows(world: World, cfg: GRPOConfig, paths: GRPOPaths, seed: int,
                        device: str = "cpu", grader_config: GraderConfig | None = None
                        ) -> dict[str, Any]:
    """The teacher half of every group of a seed, with the teacher's token log-probs."""
    stage = paths.teacher(seed)
    try:
        return read_manifest(stage)
    except ArtifactError:
        pass
    n_rows = cfg.problems_per_step * cfg.n_teacher
    todo = [s for s in range(cfg.steps) if not valid_step(step_path(stage, s), GROUP_FIELDS, n_rows)]
    problems = world.problems(cfg.split)
    if todo and n_rows:
        teacher = world.load_teacher(device)
        step_cfg = sized(cfg, teacher, world, [p for s in todo
                                               for p in step_problems(problems, cfg, seed, s)],
                         device)  # before any sampling: a batch that cannot fit fails at once
        with Grader(grader_config) as raw_grader:
            grader = CachedGrader(raw_grader, grader_config)
            for s in todo:
                rows = policy_rows(teacher, world, step_problems(problems, cfg, seed, s),
                                   cfg.n_teacher, "teacher", step_cfg, seed * 1_000_003 + s, s,
                                   grader)
                if is_writer():  # every rank holds every row; rank 0 writes them
                    write_rows(step_path(stage, s), rows)
        del teacher
    elif todo and is_writer():
        for s in todo:
            write_rows(step_path(stage, s), [])
    barrier()  # rank 0's step files are written before any rank reads them
    all_rows = [r for s in range(cfg.steps) for r in read_rows(step_path(stage, s))]
    manifest = provenance(cfg, seed=seed, n_steps=cfg.steps, rows_per_step=n_rows,
                          teacher=rates(all_rows), world=world.name, model_id=world.model_id)
    if is_writer():
        write_manifest(stage, manifest)
    return manifest


def _checkpoint(stage: Path, adapter: Adapter, opt: torch.optim.Optimizer, step: int,
                summaries: list[dict[str, Any]], V_refreshed: dict[str, torch.Tensor] | None,
                V_current: dict[str, torch.Tensor] | None = None) -> None:
    state = {"step": step, "summaries": summaries, "optimizer": opt.state_dict(),
             **checkpoint_params(adapter),
             "v_refreshed": None if V_refreshed is None else
             {n: v.cpu() for n, v in V_refreshed.items()}}
    if V_current is not None:  # R6's drift: the last re-extracted v_hack (measured against)
        state["v_current"] = {n: v.cpu() for n, v in V_current.items()}
    with atomic_path(stage / "state.pt") as tmp:
        torch.save(state, tmp)


def _resume(stage: Path, adapter: Adapter, opt: torch.optim.Optimizer, n_steps: int
            ) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """(first step to run, summaries so far, the saved directions: "v_refreshed", "v_current")."""
    path = stage / "state.pt"
    if not path.exists():
        return 0, [], {}
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        done = int(state["step"])
        if done >= n_steps or not all(valid_step(step_path(stage, s)) for s in range(done + 1)):
            raise ArtifactError("step files do not match the checkpoint")
        saved = saved_params(state, adapter)
        opt.load_state_dict(state["optimizer"])
        adapter.set_flat_values(saved)
    except (ArtifactError, AdapterStateError, KeyError, RuntimeError, OSError) as e:
        log.warning("%s: cannot resume (%s); training from step 0", stage, e)
        return 0, [], {}
    log.info("%s: resuming after step %d", stage, done)
    return done + 1, list(state["summaries"]), {k: state.get(k) for k in ("v_refreshed",
                                                                          "v_current")}


def _refresh(adapter: Adapter, world: World, pairs: list, vhack: VHackConfig,
             device: str) -> dict[str, torch.Tensor]:
    """v_hack re-extracted (same pairs, same NLL extraction) from the student as it is now."""
    V = extract_direction(adapter, world.tokenizer, pairs, vhack, desc="v_hack refresh")
    return {n: v.to(device) for n, v in V.items()}


def _overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mean over modules of |⟨a₀, b₀⟩| between first directions: 1 = unchanged, ≈ 0 = unrelated."""
    vals = [float((a[n][0].float().cpu() @ b[n][0].float().cpu()).abs()) for n in a]
    return sum(vals) / max(len(vals), 1)


def run_grpo_arm(world: World, cfg: GRPOConfig, paths: GRPOPaths, arm: Arm, seed: int,
                 V: dict[str, dict[str, torch.Tensor]], *,
                 adapter_spec: AdapterSpec | None = None, device: str = "cpu",
                 grader_config: GraderConfig | None = None, vhack: VHackConfig | None = None,
                 pair_hint: str | None = None, drift_every: int = 0) -> dict[str, Any]:
    """Train one arm of one seed for `cfg.steps` steps (resuming); returns its manifest.
    `adapter_spec`: the student's adapter (default δS at full rank; V's sizes must match it).
    `drift_every` > 0 (R6): after every that many steps, v_hack is re-extracted from the student
    (measured, never projected): its drift from the initial v_hack goes in the step summary, and
    every later step's gradient is measured against it before and after projection.
    `vhack` and `pair_hint` (the hint v_hack's pairs were rendered with; default `cfg.hint`): how the
    refreshed arm re-extracts v_hack, with the same pairs and settings as the original."""
    vhack = vhack or VHackConfig()
    stage = paths.arm(arm.name, seed)
    try:
        return read_manifest(stage)
    except ArtifactError:
        pass
    stage.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = world.load_base(device)
    adapter = build_adapter(model, adapter_spec)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, summaries, saved = _resume(stage, adapter, opt, cfg.steps)
    V = {kind: {n: t.to(device) for n, t in v.items()} for kind, v in V.items()}
    V["refreshed"] = {n: t.to(device) for n, t in (saved.get("v_refreshed") or V["nll"]).items()}
    if drift_every:
        V[TRACKED] = {n: t.to(device) for n, t in (saved.get("v_current") or V["nll"]).items()}
    pairs = (world.contrastive_pairs("train", pair_hint or cfg.hint, seed=vhack.seed)
             if arm.refresh or drift_every else [])
    pad = pad_id(world.tokenizer)
    problems = world.problems(cfg.split)
    step_cfg = sized(cfg, model, world, [p for s in range(start, cfg.steps)
                                         for p in step_problems(problems, cfg, seed, s)],
                     device)  # before any sampling: a batch that cannot fit fails at once
    norm = normaliser(world, cfg)
    writer = is_writer()  # under torch.distributed every rank trains, rank 0 writes
    with Grader(grader_config) as raw_grader:
        grader = CachedGrader(raw_grader, grader_config)
        tracker = StepTracker(stage, enabled=cfg.tensorboard and writer)
        bar = tqdm(range(start, cfg.steps), desc=f"grpo {arm.name} seed {seed}", leave=False,
                   disable=not writer)
        for s in bar:
            refreshed_overlap = None
            if arm.refresh and s > 0 and s % cfg.refresh_every == 0:
                V["refreshed"] = _refresh(adapter, world, pairs, vhack, device)
                refreshed_overlap = _overlap(V["refreshed"], V["nll"])
            t_step = time.perf_counter()
            teacher_rows = read_rows(step_path(paths.teacher(seed), s))
            student_rows = policy_rows(model, world, step_problems(problems, cfg, seed, s),
                                       cfg.n_student, "student", step_cfg,
                                       seed * 1_000_003 + 500_009 + s, s, grader)
            rows = teacher_rows + student_rows
            for i, r in enumerate(rows):
                r["index"] = i
            t_rows = time.perf_counter()
            # π_old: the student now, on the rows this rank's share of the step will train on
            add_logprobs(model, world, shard(rows)[0], "old_logp", step_cfg.micro_batch)
            t_old = time.perf_counter()
            records, summary = grpo_update_step(adapter, opt, rows, V, arm, step_cfg, pad, device,
                                                norm)
            summary["seconds"] = {"student_rows": t_rows - t_step, "old_logp": t_old - t_rows,
                                  "updates": time.perf_counter() - t_old}
            cache = gather_objects((grader.hits, grader.misses))  # per process: summed over ranks
            summary["grade_cache"] = {"hits": sum(h for h, _ in cache),
                                      "misses": sum(m for _, m in cache)}
            student = rates(student_rows)
            summary.update(step=s, **group_stats(rows), student=student,
                           teacher=rates(teacher_rows), refreshed_overlap=refreshed_overlap,
                           delta_s_norm=total_norm(adapter.flat_values()))
            if drift_every and (s + 1) % drift_every == 0:
                V[TRACKED] = _refresh(adapter, world, pairs, vhack, device)
                summary["drift"] = drift(V["nll"], V[TRACKED]).to_dict()
            summaries.append(summary)
            tracker.log(s, summary)
            bar.set_postfix(step=s, hack=f"{student.get('hack_rate', float('nan')):.2f}")
            if writer:
                write_rows(step_path(stage, s), records)
                _checkpoint(stage, adapter, opt, s, summaries,
                            V["refreshed"] if arm.refresh else None,
                            V[TRACKED] if drift_every else None)
        tracker.close()
    manifest = provenance(cfg, seed=seed, arm=arm.name, arm_spec=arm, world=world.name,
                          model_id=world.model_id, n_steps=cfg.steps, steps=summaries,
                          normaliser=norm, seconds=time.perf_counter() - t0,
                          resolved_batch={MICRO_BATCH_KNOB: step_cfg.micro_batch},
                          n_modules=len(adapter.module_names), total_rank=adapter.total_size)
    if writer:
        write_manifest(stage, manifest)
    adapter.remove()
    return manifest


def jobs(cfg: GRPOConfig) -> list[tuple[str, int]]:
    return [(arm, seed) for seed in cfg.seeds for arm in cfg.arms]


def ensure_grpo(world: World, cfg: GRPOConfig, paths: GRPOPaths,
                V: dict[str, dict[str, torch.Tensor]], *, device: str = "cpu",
                grader_config: GraderConfig | None = None,
                adapter_spec: AdapterSpec | None = None,
                vhack: VHackConfig | None = None, pair_hint: str | None = None,
                only: Iterable[tuple[str, int]] | None = None) -> GRPOPaths:
    """Every (arm, seed) of the config, each under its own lock: parallel callers (xdist workers)
    take the jobs nobody holds first, then wait for the rest; no job is computed twice."""
    paths.root.mkdir(parents=True, exist_ok=True)
    if is_writer():
        write_manifest(paths.root, provenance(cfg, world=world.name), name="config.json")
        point_latest(paths.root.parent, paths.root)
    todo = list(only) if only is not None else jobs(cfg)
    for a, _ in todo:  # an unknown arm fails before anything is computed
        if get_arm("grpo", a).adapter != "delta_s":
            raise ValueError(f"GRPO arm {a!r} trains a {get_arm('grpo', a).adapter} student: "
                             "the R6 stage runs it (`probe r6`)")
    seeds = sorted({s for _, s in todo})
    _each_once([(str(paths.teacher(s)) + ".lock",
                 lambda s=s: ensure_teacher_rows(world, cfg, paths, s, device, grader_config))
                for s in seeds])
    _each_once([(str(paths.arm(arm, seed)) + ".lock",
                 lambda arm=arm, seed=seed: run_grpo_arm(
                     world, cfg, paths, get_arm("grpo", arm), seed, V, adapter_spec=adapter_spec,
                     device=device, grader_config=grader_config, vhack=vhack or VHackConfig(),
                     pair_hint=pair_hint))
                for arm, seed in todo])
    return paths


def _each_once(jobs: list[tuple[str, Any]]) -> None:
    """Run every (lock path, job) once across processes: jobs nobody holds first, then wait for
    the rest (a job that finds its artifact complete returns at once). The ranks of one
    torch.distributed run are one process here: rank 0 takes the locks, all ranks run the job."""
    waiting = []
    for blocking in (False, True):
        for lock_path, job in (jobs if not blocking else waiting):
            lock = FileLock(lock_path)
            if not acquire_collectively(lock, blocking):
                waiting.append((lock_path, job))
                continue
            try:
                job()
            finally:
                barrier()  # rank 0's files of this job exist before any rank takes the next
                if lock.is_locked:
                    lock.release()


def run_grpo(world: World, cfg: Any, phase1_paths: Any, out_dir: str | Path = "out",
             device: str = "cpu") -> GRPOPaths:
    """R5 end to end for an experiment config (`cfg.grpo` plus the Phase 1 sections v_hack comes
    from): v_hack extracted or loaded in the Phase 1 run, then every arm × seed."""
    from probe.stages.phase1 import ensure_vhack, stage_keys, world_identity

    V = ensure_vhack(world, cfg, phase1_paths, device)
    paths = grpo_paths(world_identity(world), stage_keys(world, cfg)["v_hack"], cfg.grpo, out_dir,
                       cfg.grader)
    return ensure_grpo(world, cfg.grpo, paths, V, device=device, grader_config=cfg.grader,
                       adapter_spec=cfg.replay.adapter_spec(), vhack=cfg.vhack,
                       pair_hint=cfg.pool.hint)
