"""Are the run's cosines numbers or rounding noise? Per-sample adapter gradients at the run's dtype
against a float32 recomputation of the same rows (issue: bf16 per-sample gradients of a
Qwen3-4B-shaped model differed from float32 by 27% relative L2).

R2's sneaky-fail check reads the result from the vanilla replay's manifest.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from probe.adapters.registry import AdapterSpec, build_adapter
from probe.batch import collate
from probe.grads import per_sample_grads
from probe.precision import exact_float32
from probe.world.base import World

FIDELITY_MIN_COS = 0.99  # per row, run dtype vs float32: below it the per-row cosines are not trustworthy


def _flat_grads(world: World, rows: Sequence[dict[str, Any]], pad: int, device: str,
                dtype: torch.dtype, spec: AdapterSpec | None) -> torch.Tensor:
    model = world.load_base(device, dtype)
    adapter = build_adapter(model, spec)
    try:
        batch = collate([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows],
                        pad).to(device)
        grads = per_sample_grads(adapter, batch).grads
        return torch.cat([g.flatten(1).float().cpu() for g in grads.values()], dim=1)
    finally:
        adapter.remove()


def grad_fidelity(world: World, rows: Sequence[dict[str, Any]], pad: int, device: str = "cpu",
                  spec: AdapterSpec | None = None, n_rows: int = 8) -> dict[str, Any]:
    """Cosine and relative L2 error, per row, of the run dtype's per-sample gradients against
    float32 on the first `n_rows` rows (at the adapter's init, where every arm starts)."""
    choice = world.dtype_choice(device)
    rows = list(rows)[:n_rows]
    out: dict[str, Any] = {"dtype": str(choice.dtype), "rule": choice.rule, "n_rows": len(rows),
                           "threshold_cos": FIDELITY_MIN_COS}
    if choice.dtype == torch.float32 and not choice.tf32:
        return {**out, "min_cos": 1.0, "mean_cos": 1.0, "max_rel_l2": 0.0,
                "reference": "the run is float32: it is the reference"}
    run = _flat_grads(world, rows, pad, device, choice.dtype, spec)
    with exact_float32():  # the reference never runs on TF32, whatever the run's setting
        ref = _flat_grads(world, rows, pad, device, torch.float32, spec)
    cos = F.cosine_similarity(run.double(), ref.double(), dim=1)
    rel = (run - ref).norm(dim=1) / ref.norm(dim=1).clamp(min=1e-30)
    return {**out, "min_cos": float(cos.min()), "mean_cos": float(cos.mean()),
            "max_rel_l2": float(rel.max()), "reference": "float32 recomputation"}


def ensure_fidelity(world: World, arm_dir: Any, pool_dir: Any, device: str = "cpu",
                    spec: AdapterSpec | None = None) -> dict[str, Any]:
    """The vanilla replay's fidelity record; a replay made before the check existed gets it added
    to its manifest (computed from the pool's first step at the adapter's init, as a fresh replay
    does). `spec`: the replay's adapter (`ReplayConfig.adapter_spec()`)."""
    from pathlib import Path

    from probe.artifacts import read_manifest, read_rows, step_path, write_manifest
    from probe.encoding import pad_id

    manifest = read_manifest(Path(arm_dir))
    if manifest.get("fidelity") is None:
        rows = read_rows(step_path(Path(pool_dir), 0), ("prompt_ids", "completion_ids"))
        manifest["fidelity"] = grad_fidelity(world, rows, pad_id(world.tokenizer), device, spec)
        write_manifest(Path(arm_dir), manifest)
    return manifest["fidelity"]
