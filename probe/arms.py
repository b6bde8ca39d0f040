"""Every arm of the experiment as data: which trainer runs it, which direction it projects out,
where the projection acts, which adapter it trains, and why the arm exists.

Adding an arm is one entry in `ARMS`: the replay stage, the GRPO stage, the checks, the report,
the CLI's choices, the config's validation and defaults and the pytest fixtures all loop over it.
An arm's name is also its artifact directory's prefix (`<name>_seed<S>/`), so names never change
once runs exist. Pure data: no torch, importable by the checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TRAINERS = ("replay", "grpo")  # NLL replay of the teacher pool (Phase 1); Dr.GRPO (R5)
TARGETS = ("grad", "update")  # the gradient before clipping and AdamW; the update AdamW applies
ADAPTERS = ("delta_s", "lora")  # the SVD δS adapter; LoRA (R6)
REFRESHED = "refreshed"  # the direction re-extracted from the current student during training


@dataclass(frozen=True)
class Arm:
    name: str
    trainer: str = "replay"
    # what is projected out: None (nothing), a v_hack file kind ("nll", "random", "shuffled",
    # "grpo", ...: `probe.vhack_methods.KINDS`), or "refreshed" (starts as "nll")
    direction: str | None = None
    target: str = "grad"
    adapter: str = "delta_s"
    default: bool = True  # in the config's default arm list
    why: str = ""
    refresh: bool = field(init=False)  # derived: re-extract the direction while training

    def __post_init__(self) -> None:
        object.__setattr__(self, "refresh", self.direction == REFRESHED)
        for key, value, allowed in (("trainer", self.trainer, TRAINERS),
                                    ("target", self.target, TARGETS),
                                    ("adapter", self.adapter, ADAPTERS)):
            if value not in allowed:
                raise ValueError(f"arm {self.name!r}: {key} {value!r} is not one of {allowed}")
        if self.trainer == "replay" and (self.target != "grad" or self.refresh):
            raise ValueError(f"arm {self.name!r}: the replay trainer projects a fixed direction "
                             "out of the gradient only")


ARMS: tuple[Arm, ...] = (
    # Phase 1: NLL replay of the teacher pool (spec T2/T3)
    Arm("vanilla", why="T2: the push toward hacking that projection should slow"),
    Arm("projected", direction="nll", why="T3: v_hack projected out of every step's gradient"),
    Arm("projected_random", direction="random",
        why="control: would removing any direction slow hacking?"),
    Arm("projected_shuffled", direction="shuffled",
        why="control: a direction from label-shuffled pairs"),
    # R5: GRPO on mixed teacher/student groups
    Arm("vanilla", "grpo", why="the push toward hacking that projection should slow"),
    Arm("projected", "grpo", "nll", why="Phase 1's projection of the gradient"),
    Arm("projected_update", "grpo", "nll", "update",
        why="projection of AdamW's update: the preconditioner cannot rotate it back toward V"),
    Arm("projected_random", "grpo", "random", why="control: would any direction do?"),
    Arm("projected_shuffled", "grpo", "shuffled",
        why="control: a direction from label-shuffled pairs"),
    Arm("projected_grpo_vhack", "grpo", "grpo", default=False,
        why="R7's v_hack, extracted through this loss, projected from the gradient"),
    Arm("projected_refresh", "grpo", REFRESHED,
        why="v_hack re-extracted from the current student (the prior implementation's variant)"),
    # R6: the same arms in a LoRA basis (v_hack extracted through the LoRA adapter); run by the R6
    # stage beside R5's δS arms, not by default in Phase 1 or R5
    Arm("lora_vanilla", adapter="lora", default=False,
        why="R6/T4: per-row cosines with the LoRA-basis v_hack on the teacher pool"),
    Arm("lora_vanilla", "grpo", adapter="lora", default=False,
        why="R6: the LoRA student's push toward hacking, matched to δS's vanilla arm"),
    Arm("lora_projected", "grpo", "nll", adapter="lora", default=False,
        why="R6: LoRA-basis v_hack projected out of the LoRA student's gradient"),
)


def arms(trainer: str) -> dict[str, Arm]:
    """The arms one trainer runs, by name, in registry order."""
    if trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {trainer!r}; expected one of {TRAINERS}")
    return {a.name: a for a in ARMS if a.trainer == trainer}


def arm_names(trainer: str, default_only: bool = False) -> tuple[str, ...]:
    return tuple(n for n, a in arms(trainer).items() if a.default or not default_only)


def get_arm(trainer: str, name: str) -> Arm:
    known = arms(trainer)
    if name not in known:
        raise ValueError(f"unknown {trainer} arm {name!r}; expected one of {list(known)}")
    return known[name]


def control_arms(trainer: str, controls: tuple[str, ...] = ("random", "shuffled")
                 ) -> dict[str, Arm]:
    """{control kind: the arm projecting it}: the arms that ask whether v_hack is special."""
    return {a.direction: a for a in arms(trainer).values() if a.direction in controls}


# Phase 1's and R5's arms: the δS student's (R6's LoRA arms are run by the R6 stage, which builds
# their adapter and v_hack; a config's arm lists choose among these)
REPLAY_ARMS = tuple(n for n, a in arms("replay").items() if a.adapter == "delta_s")
GRPO_ARMS = {n: a for n, a in arms("grpo").items() if a.adapter == "delta_s"}


def _unique() -> None:
    seen = [(a.trainer, a.name) for a in ARMS]
    if len(seen) != len(set(seen)):
        raise ValueError(f"duplicate arm in the registry: {seen}")


_unique()
