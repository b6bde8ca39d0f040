"""The R5 arms: the GRPO entries of the one arm registry, `probe.arms` (kept for imports)."""
from __future__ import annotations

from probe.arms import GRPO_ARMS, Arm

GRPOArm = Arm

__all__ = ["GRPOArm", "GRPO_ARMS", "get_arm"]


def get_arm(name: str) -> Arm:
    from probe.arms import get_arm as get

    return get("grpo", name)
