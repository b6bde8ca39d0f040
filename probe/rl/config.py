"""`GRPOConfig`: every knob of the R5 trajectory probe, each with the reason for its default."""
from __future__ import annotations

from dataclasses import dataclass, field

from probe.arms import arm_names
from probe.artifacts import AUTO, auto_cap

CORRECTIONS = ("student_old", "truncated_is", "luffy")
# "auto" batch knobs never exceed the old fixed defaults: where memory does not bind (the embedded
# world) sampled tokens are what they always were, and gradients batch as they did
MICRO_BATCH_CAP = 32
GEN_BATCH_CAP = 64
MICRO_BATCH_KNOB = "grpo.micro_batch"  # named by a memory failure in its passes


@dataclass(frozen=True)
class GRPOConfig:
    steps: int = 20  # spec T5: trajectories to step 20 (the verdict reads step 15)
    problems_per_step: int = 8  # P (phase2-notes: 8 on the embedded world; upstream 16)
    group_size: int = 8  # G completions per problem, teacher and student rows together
    teacher_frac: float = 0.5  # share of each group sampled from the teacher (0 = pure on-policy)
    split: str = "hard"  # problems the base usually fails: a hack (3.5) beats a failed try (0.5)
    hint: str = "simple_overwrite_tests"
    max_new_tokens: int | None = None  # None: the world's default; also the Dr.GRPO normaliser
    temperature: float | None = None  # None: the world's sampling default (upstream 0.7)
    top_p: float | None = None  # None: the world's default (upstream 0.95)
    # AdamW on δS. The Phase 1 replay's rate: the vanilla arm must visibly move in 20 steps or the
    # comparison says nothing (the embedded world's δS needs a large rate; Qwen3-4B's config sets its own).
    lr: float = 3e-2
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    updates_per_batch: int = 2  # ≥ 2 so importance ratios move and clip statistics mean something
    epsilon: float = 0.2  # clip 1 − ε (upstream 0.2)
    epsilon_high: float = 0.2  # clip 1 + ε_high
    # Teacher rows are off-policy for the student. student_old: ratio against the student's own
    # log-probs at sampling time (the prior implementation: advantage-weighted imitation, an NLL in
    # disguise); truncated_is: that, times min(π_old/π_teacher, is_cap), so a teacher row counts as
    # much as the student could have written it (rollout-correction practice in verl/TRL: the
    # question is the policy gradient, not imitation); luffy: p/(p + γ) shaping, no clip.
    correction: str = "truncated_is"
    is_cap: float = 2.0
    luffy_gamma: float = 0.1
    projection: str = "one_sided"
    refresh_every: int = 2  # the refreshed arm re-extracts v_hack from the student every k steps
    # rows per batched backward / log-prob pass; "auto": as many as fit free memory (probe.memory)
    micro_batch: int | str = field(default=AUTO, metadata=auto_cap(MICRO_BATCH_CAP))
    # sequences per generate call; "auto": as many as fit free memory
    gen_batch_size: int | str = field(default=AUTO, metadata=auto_cap(GEN_BATCH_CAP))
    # Sample (and grade) each group under its own seed, one generate call per group, instead of
    # one seed per step's batch: a group's rows then do not depend on which rank or batch it was
    # sampled with, so N data-parallel ranks give the rows of one process (probe/rl/distributed.py).
    # Needed under torchrun; off by default, so single-process runs keep their rows (and run keys).
    seed_per_group: bool = False
    tensorboard: bool = True  # live event files per arm when the optional `tensorboard` is installed
    seeds: tuple[int, ...] = (41, 42, 43)  # paired seeds: every arm of a seed sees the same data
    arms: tuple[str, ...] = arm_names("grpo", default_only=True)  # probe.arms: `default` entries

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise ValueError(f"grpo.correction: {self.correction!r} is not one of {CORRECTIONS}")
        if not 0.0 <= self.teacher_frac <= 1.0:
            raise ValueError(f"grpo.teacher_frac: {self.teacher_frac} is not in [0, 1]")
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size: {self.group_size} < 2 leaves no group to compare")
        for name in ("is_cap", "luffy_gamma", "epsilon", "epsilon_high"):
            if getattr(self, name) <= 0:
                raise ValueError(f"grpo.{name}: {getattr(self, name)} must be > 0")
        if self.updates_per_batch < 1:
            raise ValueError(f"grpo.updates_per_batch: {self.updates_per_batch} < 1")

    @property
    def n_teacher(self) -> int:
        """Teacher rows per group (rounded to the nearest row)."""
        return int(self.teacher_frac * self.group_size + 0.5)  # half up, not Python's to-even

    @property
    def n_student(self) -> int:
        return self.group_size - self.n_teacher
