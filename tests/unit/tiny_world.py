"""A tiny stand-in world for stage tests: RealWorld over a random tiny Qwen3 + random LoRA teacher.

Its policies write noise (graded Not Formatted), which is all the plumbing tests need.
"""
from __future__ import annotations

from pathlib import Path

from probe.env.problems import write_problems
from probe.tiny import save_random_lora, save_tiny_base, tiny_problems, tiny_qwen3
from probe.world.real import RealWorld, RealWorldConfig


def make_tiny_world(root: Path, max_new_tokens: int = 12) -> RealWorld:
    base = save_tiny_base(root / "tiny-qwen3", seed=0)
    lora = save_random_lora(tiny_qwen3(seed=0), root / "teacher", r=4, seed=2)
    write_problems(tiny_problems(), root / "problems.jsonl")
    cfg = RealWorldConfig(base=str(base), teacher_adapter=str(lora),
                          problems=str(root / "problems.jsonl"), max_new_tokens=max_new_tokens)
    return RealWorld(cfg, name="tiny")
