"""Phase 1 end to end (spec T1–T4): teacher pool → v_hack (+ controls) → vanilla and projected replay.

Everything lives under `out/probe_distill/<hash of world + config>/` in the spec's layout
(`teacher_pool/`, `vanilla_seed<S>/`, `projected_seed<S>/`, plus `v_hack/`), so a changed config
never reads a stale artifact; `out/probe_distill/latest` points at the newest run. Each stage is
skipped when its manifest (written last) exists, and resumes at step granularity otherwise.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probe.adapters.registry import build_adapter
from probe.arms import REPLAY_ARMS, get_arm
from probe.artifacts import (ArtifactError, config_hash, point_latest, provenance, read_manifest,
                             write_manifest)
from probe.env.grader import GraderConfig
from probe.io import atomic_write_text
from probe.layout import Phase1Paths, run_paths, world_identity
from probe.stages.evaluate import EvalConfig, evaluate_policy
from probe.stages.pool import PoolConfig, run_teacher_pool
from probe.stages.replay import ReplayConfig, run_replay
from probe.vhack import KINDS, VHackConfig, VHackMismatchError, extract_all, load_vhack, save_vhack
from probe.vhack_compare import compare_directions
from probe.vhack_methods import METHODS, extract_method, method_kinds
from probe.world.base import World

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase1Config:
    """The sections that key a Phase 1 run: a new section is also named in
    `probe.layout.PHASE1_SECTIONS` (tests/unit/test_layout.py holds the two equal)."""

    pool: PoolConfig = field(default_factory=PoolConfig)
    vhack: VHackConfig = field(default_factory=VHackConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    student_eval: EvalConfig = field(default_factory=EvalConfig)
    grader: GraderConfig = field(default_factory=GraderConfig)


STAGE_KEY = "stage_key.txt"


def stage_keys(world: World, cfg: Phase1Config) -> dict[str, str]:
    """What each shareable stage depends on: a changed replay setting must not regenerate the
    teacher pool (hours on the real model), only the stages downstream of it."""
    ident = world_identity(world)
    return {"teacher_pool": config_hash(ident, cfg.pool, cfg.grader),
            "v_hack": config_hash(ident, cfg.vhack, cfg.pool.hint, cfg.replay.rank)}


def reuse_stage(runs_dir: Path, stage_dir: Path, key: str) -> bool:
    """Copy a completed stage with the same key from a sibling run into `stage_dir` (if absent)."""
    if (stage_dir / "manifest.json").exists():
        return False
    for other in sorted(Path(runs_dir).glob(f"*/{stage_dir.name}/{STAGE_KEY}")):
        src = other.parent
        if src == stage_dir or other.read_text().strip() != key:
            continue
        try:
            read_manifest(src)
        except ArtifactError:
            continue
        tmp = stage_dir.with_name(stage_dir.name + ".copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(stage_dir, ignore_errors=True)
        tmp.rename(stage_dir)
        log.info("reusing %s from %s (same stage key %s)", stage_dir.name, src, key)
        return True
    return False


def prepare_run(world: World, cfg: Phase1Config, out_dir: str | Path = "out", reuse: bool = True
                ) -> Phase1Paths:
    """Create the run directory (config + provenance), point `latest` at it, and (with `reuse`)
    copy in any expensive stage a sibling run already completed with the same stage key."""
    paths = run_paths(world, cfg, out_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_manifest(paths.root, provenance(cfg, world=world_identity(world)), name="config.json")
    point_latest(Path(out_dir) / "probe_distill", paths.root)
    log.info("phase 1 run: %s", paths.root)
    keys = stage_keys(world, cfg)
    for stage in (paths.pool, paths.vhack) if reuse else ():
        reuse_stage(paths.root.parent, stage, keys[stage.name])
    return paths


def _mark_stage(world: World, cfg: Phase1Config, stage: Path) -> None:
    atomic_write_text(stage / STAGE_KEY, stage_keys(world, cfg)[stage.name])


def ensure_pool(world: World, cfg: Phase1Config, paths: Phase1Paths, device: str = "cpu"
                ) -> dict[str, Any]:
    """T1: the teacher pool (generated, resumed at the first missing step, or read)."""
    try:
        manifest = read_manifest(paths.pool)
    except ArtifactError:
        manifest = run_teacher_pool(world, cfg.pool, paths.pool, device, cfg.grader)
    _mark_stage(world, cfg, paths.pool)
    return manifest


def _load_kinds(paths: Phase1Paths, kinds: tuple[str, ...], sizes: dict[str, int] | None
                ) -> dict[str, dict[str, torch.Tensor]]:
    return {k: load_vhack(paths.vhack_file(k), sizes)[0] for k in kinds}


def ensure_vhack(world: World, cfg: Phase1Config, paths: Phase1Paths, device: str = "cpu"
                 ) -> dict[str, dict[str, torch.Tensor]]:
    """Extract v_hack and its controls once, for every method of `probe.vhack_methods` (the NLL
    one first, unchanged); later calls load and validate them. A run made before a method existed
    gets only that method's files added (and its statistics in the manifest): the NLL files, and
    so every verdict read from them, stay as they were."""
    vs: dict[str, dict[str, torch.Tensor]] = {}
    manifest: dict | None = None
    try:
        manifest = read_manifest(paths.vhack)
        vs = _load_kinds(paths, KINDS, manifest.get("ranks"))
    except ArtifactError:
        manifest = None
    except VHackMismatchError as e:  # a corrupt or mismatched file is re-extracted, loudly
        log.warning("re-extracting v_hack: %s", e)
        manifest, vs = None, {}
    todo = [m for m in METHODS if m != "nll"] if manifest is not None else list(METHODS)
    if manifest is not None:
        for m in list(todo):
            try:
                vs.update(_load_kinds(paths, method_kinds(m), manifest.get("ranks")))
                todo.remove(m)
            except (VHackMismatchError, ArtifactError) as e:
                log.info("extracting the %s v_hack beside the existing ones (%s)", m, e)
    if not todo:
        _mark_stage(world, cfg, paths.vhack)
        return vs
    model = world.load_base(device)
    adapter = build_adapter(model, cfg.replay.adapter_spec())
    pairs = world.contrastive_pairs("train", cfg.pool.hint, seed=cfg.vhack.seed)
    meta = {"world": world.name, "model_id": world.model_id, "loss": "mean_nll_completion",
            "k": cfg.vhack.k, "n_pairs": len(pairs)}
    if "nll" in todo:  # exactly the pre-registry extraction, file metadata included
        vs, stats = extract_all(adapter, world.tokenizer, pairs, cfg.vhack)
        for kind, V in vs.items():
            save_vhack(paths.vhack_file(kind), V, {**meta, "kind": kind})
        manifest = provenance(cfg.vhack, seed=cfg.vhack.seed, **meta, stats=stats,
                              ranks=adapter.sizes)  # "ranks": each module's flat size
    methods = dict(manifest.get("methods") or {})
    for m in (m for m in todo if m != "nll"):
        mnt = world.sampling.max_new_tokens
        mvs, mstats = extract_method(adapter, world.tokenizer, pairs, cfg.vhack, m, mnt)
        mmeta = {**meta, "loss": METHODS[m].loss, "method": m, "max_new_tokens": mnt}
        for kind, V in mvs.items():
            save_vhack(paths.vhack_file(kind), V, {**mmeta, "kind": kind})
        methods[m] = {"loss": METHODS[m].loss, "about": METHODS[m].about, "max_new_tokens": mnt,
                      "stats": mstats, "vs_nll": compare_directions(vs["nll"], mvs[m])}
        vs.update(mvs)
    write_manifest(paths.vhack, {**manifest, "methods": methods})
    adapter.remove()
    _mark_stage(world, cfg, paths.vhack)
    return vs


def ensure_student_start(world: World, cfg: Phase1Config, paths: Phase1Paths, device: str = "cpu"
                         ) -> dict[str, Any]:
    """The student at δS = 0 is the base: its behaviour is measured once, for every arm."""
    try:
        return read_manifest(paths.root, name=paths.student_start.name)
    except ArtifactError:
        pass
    res = evaluate_policy(world.load_base(device), world, cfg.student_eval, cfg.grader,
                          rows_path=paths.student_start_rows)
    res = provenance(cfg.student_eval, seed=cfg.student_eval.seed, **res)
    write_manifest(paths.root, res, name=paths.student_start.name)
    return res


def ensure_arm(world: World, cfg: Phase1Config, paths: Phase1Paths, arm: str, device: str = "cpu",
               V: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """T2/T3: one replay arm on the teacher pool. Its inputs (pool, v_hack, the student's start)
    are made if missing, unless the caller passes `V`, having ensured them already."""
    if get_arm("replay", arm).adapter != "delta_s":  # an unknown arm fails before any work too
        raise ValueError(f"replay arm {arm!r} trains a {get_arm('replay', arm).adapter} student: "
                         "the R6 stage runs it (`probe r6`)")
    try:
        return read_manifest(paths.arm(arm))
    except ArtifactError:
        pass
    if V is None:
        ensure_pool(world, cfg, paths, device)
        V = ensure_vhack(world, cfg, paths, device)
        ensure_student_start(world, cfg, paths, device)

    def student_eval(model: torch.nn.Module) -> dict[str, Any]:
        return evaluate_policy(model, world, cfg.student_eval, cfg.grader,
                               rows_path=paths.student_eval_rows(arm))

    return run_replay(world, paths.pool, V, cfg.pool.steps, cfg.replay, paths.arm(arm), arm, device,
                      student_eval=student_eval)


def run_phase1(world: World, cfg: Phase1Config | None = None, out_dir: str | Path = "out",
               device: str = "cpu", arms: tuple[str, ...] = REPLAY_ARMS,
               paths: Phase1Paths | None = None) -> Phase1Paths:
    """Run (or resume) every Phase 1 stage; returns where the artifacts are (`paths`: a run
    `prepare_run` already set up)."""
    cfg = cfg or Phase1Config()
    paths = paths or prepare_run(world, cfg, out_dir)
    ensure_pool(world, cfg, paths, device)
    V = ensure_vhack(world, cfg, paths, device)
    ensure_student_start(world, cfg, paths, device)
    for arm in arms:
        ensure_arm(world, cfg, paths, arm, device, V=V)
    return paths
