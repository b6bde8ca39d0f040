"""Live per-step scalars for long runs: TensorBoard event files in the arm's directory.

A real-model R5 runs for hours; researchers watch it in the tracker they already open. TensorBoard
is an optional extra (`pip install -e .[tb]`); without it the tracker logs once and does nothing.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def step_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers worth a live curve from one GRPO step summary."""
    out: dict[str, float] = {}
    for who in ("student", "teacher"):
        for key in ("hack_rate", "hack_attempt_rate", "gt_pass_rate", "correct_rate", "mean_reward"):
            if key in summary.get(who, {}):
                out[f"{who}/{key}"] = float(summary[who][key])
    for key in ("frac_groups_with_variance", "frac_groups_teacher_student_gap", "delta_s_norm"):
        if summary.get(key) is not None:
            out[f"groups/{key}" if key.startswith("frac") else key] = float(summary[key])
    last = summary["updates"][-1]
    first = summary["updates"][0]
    out["ratio/clip_frac_last_update"] = float(last["clip_frac"])
    out["grad/teacher_share"] = (first["teacher_grad_norm"] / first["grad_norm_in"]
                                 if first["grad_norm_in"] > 0 else 0.0)
    out["grad/hackward_cos"] = float(first["grad_hackward_cos"])
    out["update/hackward_cos"] = float(first["update_cos"])
    for key in ("cos_in", "cos_out", "frac_fired"):
        if key in first:
            out[f"projection/{key}"] = float(first[key])
    return {k: v for k, v in out.items() if math.isfinite(v)}


class StepTracker:
    """`log(step, summary)` writes `step_scalars(summary)`; a no-op without tensorboard."""

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed (pip install -e .[tb]): no live event files")
            return
        self.writer = SummaryWriter(log_dir=str(Path(log_dir) / "tb"))

    def log(self, step: int, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in step_scalars(summary).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
