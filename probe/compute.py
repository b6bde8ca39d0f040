"""How the run computes, not what: settings that change speed on a GPU but no artifact's meaning.

They are not part of any cache key (like the device). `apply` sets them for the process; the run
orchestration (`probe.orchestrate.Phase1Run`) calls it once with the experiment config's `[compute]`.
Measured on one H200 at the Qwen3-4B shape (README, "Real shape on one H200"): compiled generation
with a static cache ran 56.5 vs 12.8 steps/s at B16 (36.4 vs 12.4 at B64) after ~1.5–2 minutes of
compile per shape; the fused δS node was 14% faster at δS = 0 and 6–7% slower at δS ≠ 0.
"""
from __future__ import annotations

from dataclasses import dataclass

FUSED_SETTINGS = ("auto", "on", "off")


@dataclass(frozen=True)
class ComputeConfig:
    # HF static KV cache + torch.compile for sampling on CUDA (CPU never compiles)
    compile_generation: bool = False
    # the fused δS autograd node: "auto" = on CUDA while δS is zero; "on"/"off" force it
    fused_svd: str = "auto"
    # the step's per-module cosines/projection on one concatenated vector (probe/flat.py):
    # "auto" = for CUDA tensors; "on"/"off" force it
    flat_ops: str = "auto"


def apply(cfg: ComputeConfig) -> None:
    """Set the process-wide switches the generation and adapter code read."""
    import probe.generate as generate
    from probe import flat
    from probe.adapters import fused_svd

    for key in ("fused_svd", "flat_ops"):
        if getattr(cfg, key) not in FUSED_SETTINGS:
            raise ValueError(f"compute.{key} {getattr(cfg, key)!r} is not one of {FUSED_SETTINGS}")
    setting = {"auto": None, "on": True, "off": False}
    generate.COMPILE_ON_CUDA = bool(cfg.compile_generation)
    fused_svd.FUSED_SVD = setting[cfg.fused_svd]
    flat.FLAT_OPS = setting[cfg.flat_ops]
