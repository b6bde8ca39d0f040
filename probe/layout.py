"""Where a run's artifacts live: the Phase 1 and GRPO run directories and their keys.

The artifact layer's half that names paths: stages write under these paths, checks and the report
read from them, and neither side needs the other (this module imports no stage, no torch). A run
directory is keyed by a hash of everything that determines its artifacts, so a changed config never
reads a stale artifact; an arm's directory is `<arm>_seed<S>/` (`probe.arms` names the arms).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe.artifacts import as_keyed, config_hash, read_manifest, to_jsonable

if TYPE_CHECKING:
    from probe.env.grader import GraderConfig
    from probe.rl.config import GRPOConfig
    from probe.world.base import World

# the sections of an experiment config that key a Phase 1 run (`probe.stages.phase1.Phase1Config`'s
# fields: a unit test holds the two equal); the arm list and later phases' sections do not
PHASE1_SECTIONS = ("pool", "vhack", "replay", "student_eval", "grader")
# R5's raw-ratio histogram edges (every GRPO step summary's `hist` counts fall between these)
RATIO_BINS = (0.0, 0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 2.0, float("inf"))


def arm_dir(root: Path, arm: str, seed: int) -> Path:
    return Path(root) / f"{arm}_seed{seed}"


def arm_seed_dirs(root: Path, arm: str) -> dict[int, Path]:
    """{seed: directory} of every `<arm>_seed<S>/` under `root`, by seed."""
    out = {}
    for d in Path(root).glob(f"{arm}_seed*"):
        seed = d.name[len(arm) + len("_seed"):]
        if d.is_dir() and seed.isdigit():
            out[int(seed)] = d
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Phase1Paths:
    root: Path
    seed: int

    @property
    def pool(self) -> Path:
        return self.root / "teacher_pool"

    @property
    def vhack(self) -> Path:
        return self.root / "v_hack"

    def arm(self, arm: str) -> Path:
        return arm_dir(self.root, arm, self.seed)

    def vhack_file(self, kind: str) -> Path:
        return self.vhack / f"v_{kind}.safetensors"

    @property
    def student_start(self) -> Path:
        return self.root / "student_start.json"

    @property
    def student_start_rows(self) -> Path:
        """The start's graded evaluation completions (pool row format)."""
        return self.root / "student_start_rows.jsonl.gz"

    def student_eval_rows(self, arm: str) -> Path:
        """An arm's graded end-of-replay evaluation completions (pool row format)."""
        return self.arm(arm) / "student_eval.jsonl.gz"


def world_identity(world: World) -> dict[str, Any]:
    return world.identity()


def phase1_sections(cfg: Any) -> dict[str, Any]:
    """The sections that determine Phase 1 artifacts (a subclass's extra fields, e.g. which arms
    to run or a later phase's settings, do not move the Phase 1 run directory)."""
    return {name: getattr(cfg, name) for name in PHASE1_SECTIONS}


def run_paths(world: World, cfg: Any, out_dir: str | Path = "out") -> Phase1Paths:
    """The Phase 1 run directory of `cfg` (a Phase1Config or an ExperimentConfig) on `world`."""
    root = Path(out_dir) / "probe_distill" / config_hash(world_identity(world), phase1_sections(cfg))
    return Phase1Paths(root, cfg.replay.seed)


def load_paths(root: str | Path, seed: int | None = None) -> Phase1Paths:
    """Phase1Paths of an existing run directory (e.g. out/probe_distill/latest)."""
    root = Path(root).resolve()
    cfg = read_manifest(root, name="config.json")["config"]
    return Phase1Paths(root, seed if seed is not None else cfg["replay"]["seed"])


@dataclass(frozen=True)
class GRPOPaths:
    root: Path  # one run: every arm × seed of one training config
    teacher_root: Path  # teacher rows, keyed only by what determines them (shared across runs)

    def teacher(self, seed: int) -> Path:
        return self.teacher_root / f"teacher_seed{seed}"

    def arm(self, arm: str, seed: int) -> Path:
        return arm_dir(self.root, arm, seed)


def teacher_key(cfg: GRPOConfig) -> dict[str, Any]:
    """What the teacher rows depend on: a changed learning rate or arm list reuses them.
    `seed_per_group` keys them only when set, so the default's keys predate the knob; an "auto"
    batch knob keys as its cap (`probe.artifacts.as_keyed`)."""
    cfg = as_keyed(cfg)
    key = {k: getattr(cfg, k) for k in ("problems_per_step", "group_size", "teacher_frac",
                                        "split", "hint", "max_new_tokens", "temperature", "top_p",
                                        "steps", "gen_batch_size", "micro_batch")}
    if cfg.seed_per_group:
        key["seed_per_group"] = True
    return key


def grpo_paths(world_ident: dict[str, Any], vhack_key: str, cfg: GRPOConfig,
               out_dir: str | Path = "out", grader: GraderConfig | None = None) -> GRPOPaths:
    """Keyed by everything that determines the artifacts: the world, v_hack's stage key, the
    grader (rewards, limits) and the config (not the arm and seed lists: adding an arm or a seed
    extends a run, it does not start a new one)."""
    if grader is None:
        from probe.env.grader import GraderConfig

        grader = GraderConfig()
    base = Path(out_dir) / "probe_grpo"
    # none of these change an artifact
    run_cfg = to_jsonable(as_keyed(replace(cfg, arms=(), seeds=(), tensorboard=True)))
    if not cfg.seed_per_group:  # the knob keys a run only when set: older run keys stay valid
        run_cfg.pop("seed_per_group")
    return GRPOPaths(base / config_hash(world_ident, vhack_key, run_cfg, grader),
                     base / "teacher_rows" / config_hash(world_ident, teacher_key(cfg), grader))


@dataclass(frozen=True)
class R6Paths:
    """R6's run: the LoRA-basis v_hack and LoRA replay arm (a Phase 1 layout under `root`), its
    GRPO arms (under `root/grpo`, sharing R5's teacher rows), and R5's run for δS's vanilla arm."""

    root: Path
    seed: int  # the replay seed (Phase 1's)
    teacher_root: Path
    r5_root: Path

    @property
    def phase1(self) -> Phase1Paths:
        return Phase1Paths(self.root, self.seed)

    @property
    def grpo(self) -> GRPOPaths:
        return GRPOPaths(self.root / "grpo", self.teacher_root)


def r6_paths(world_ident: dict[str, Any], vhack_key: str, cfg: Any, out_dir: str | Path = "out"
             ) -> R6Paths:
    """Keyed by the Phase 1 sections, the GRPO config (not its arm and seed lists) and the R6
    section (not its seeds): a changed LoRA setting never reads a stale LoRA artifact."""
    r5 = grpo_paths(world_ident, vhack_key, cfg.grpo, out_dir, cfg.grader)
    run_grpo_cfg = replace(cfg.grpo, arms=(), seeds=(), tensorboard=True)
    root = Path(out_dir) / "probe_r6" / config_hash(world_ident, phase1_sections(cfg),
                                                    run_grpo_cfg, replace(cfg.r6, seeds=()))
    return R6Paths(root, cfg.replay.seed, r5.teacher_root, r5.root)
