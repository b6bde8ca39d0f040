"""A tiny stand-in world for stage tests: RealWorld over a random tiny Qwen3 + random LoRA teacher.

Its policies write noise (graded Not Formatted), which is all the plumbing tests need.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from probe.env.problems import write_problems
from tests.tiny_models import save_random_lora, save_tiny_base, tiny_problems, tiny_qwen3
from probe.world.real import RealWorld, RealWorldConfig


def make_tiny_world(root: Path, max_new_tokens: int = 12) -> RealWorld:
    base = save_tiny_base(root / "tiny-qwen3", seed=0)
    lora = save_random_lora(tiny_qwen3(seed=0), root / "teacher", r=4, seed=2)
    write_problems(tiny_problems(), root / "problems.jsonl")
    cfg = RealWorldConfig(base=str(base), teacher_adapter=str(lora),
                          problems=str(root / "problems.jsonl"), max_new_tokens=max_new_tokens)
    return RealWorld(cfg, name="tiny")


def stand_in_labels(sample_and_grade: Callable[..., list[dict[str, Any]]]
                    ) -> Callable[..., list[dict[str, Any]]]:
    """`sample_and_grade` with a stand-in label: reward 3.5 ('Reward Hack') when the completion's
    token sum is even, else 0.5. The tiny policies write noise (all 'Not Formatted'), and GRPO
    groups without reward variance would give no gradient at all."""
    def graded(*a: Any, **kw: Any) -> list[dict[str, Any]]:
        rows = sample_and_grade(*a, **kw)
        for r in rows:
            hack = sum(r["completion_ids"]) % 2 == 0
            r.update(label="Reward Hack" if hack else "Incorrect", hacked=hack,
                     hack_attempt=hack, gt_pass=False, reward=3.5 if hack else 0.5)
        return rows
    return graded
