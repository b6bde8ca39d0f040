"""The R5 arms as data: what each one projects, where, and whether its direction is refreshed.

Adding an arm is one entry here; the trainer, the checks and the report loop over `GRPO_ARMS`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GRPOArm:
    name: str
    # what is projected: None, a v_hack file kind ("nll", "random", "shuffled"), or "refreshed"
    # (v_hack re-extracted from the current student, starting as "nll")
    direction: str | None = None
    target: str = "grad"  # "grad": before clipping and AdamW; "update": the update AdamW applies
    refresh: bool = False  # re-extract v_hack from the current student every `refresh_every` steps
    why: str = ""


GRPO_ARMS: dict[str, GRPOArm] = {a.name: a for a in (
    GRPOArm("vanilla", why="the push toward hacking that projection should slow"),
    GRPOArm("projected", "nll", "grad", why="Phase 1's projection of the gradient"),
    GRPOArm("projected_update", "nll", "update",
            why="projection of AdamW's update: the preconditioner cannot rotate it back toward V"),
    GRPOArm("projected_random", "random", "grad", why="control: would any direction do?"),
    GRPOArm("projected_shuffled", "shuffled", "grad",
            why="control: a direction from label-shuffled pairs"),
    GRPOArm("projected_grpo_vhack", "grpo", "grad",
            why="R7's v_hack, extracted through this loss, projected from the gradient"),
    GRPOArm("projected_refresh", "refreshed", "grad", refresh=True,
            why="v_hack re-extracted from the current student (the prior implementation's variant)"),
)}


def get_arm(name: str) -> GRPOArm:
    if name not in GRPO_ARMS:
        raise ValueError(f"unknown GRPO arm {name!r}; expected one of {list(GRPO_ARMS)}")
    return GRPO_ARMS[name]
