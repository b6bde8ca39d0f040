"""The δS branch as one autograd node with a hand-written backward (the CUDA training path).

The reference branch (`_SVDBranch.delta`) is four autograd ops: h = x Vhᵀ, h ⊙ s, (h ⊙ s) Uᵀ, and the
add to the frozen Linear's output. Autograd keeps h (and h ⊙ s) alive for the backward, runs the
elementwise ops as separate kernels and, for the per-sample probe, materialises (B, T, r) products
in the model dtype. Here the same function y = W x + U diag(δS + probe[n]) Vh x is one node:

- forward: h = x Vhᵀ once; when δS is exactly zero (v_hack extraction, the fidelity check, the
  first replay step) the U-side matmul is skipped: its output would be exact zeros. Probes are zero
  by the `Adapter.probing` contract, so they never change the forward value.
- backward: gU = g U (needed for the probe gradient anyway); the per-sample gradient
  Σ_t gU[n,t] ⊙ h[n,t] is reduced in float32 (not in the model dtype); the input gradient's
  branch term (gU ⊙ s) Vh is skipped when s is zero.
- memory: h is either saved or recomputed from x. Recomputing pays one matmul to keep only x, which
  q/k/v (one x) and gate/up (one x) share and which the norm before them already holds: `recompute`
  None picks it where x is no wider than h.

CPU keeps the reference path (bit-identical results); `FUSED_SVD` (or a branch's `fused`
attribute) forces either on any device. Agreement with the reference: tests/unit/test_fused_svd.py.
"""
from __future__ import annotations

import torch

FUSED_SVD: bool | None = None  # None = on for CUDA tensors with grad enabled; True/False forces it
RECOMPUTE_H: bool | None = None  # None = recompute h where d_in <= r; True/False forces it


def use_fused(x: torch.Tensor, setting: bool | None = None) -> bool:
    """Whether the fused node should run for input `x` (a per-branch `setting` wins over the
    module default). Generation (grad disabled) stays on the reference path: there is nothing to
    save for a backward, and its graph stays simple for torch.compile."""
    s = FUSED_SVD if setting is None else setting
    if s is None:
        return x.is_cuda and torch.is_grad_enabled()
    return s


class FusedSVDDelta(torch.autograd.Function):
    """y ← y_base + U diag(δS + probe) Vh x, in place on the frozen Linear's output `y_base`."""

    @staticmethod
    def forward(ctx, y_base: torch.Tensor, x: torch.Tensor, U: torch.Tensor, Vh: torch.Tensor,
                delta_s: torch.Tensor, probe: torch.Tensor | None, ds_zero: bool,
                recompute: bool) -> torch.Tensor:
        h = x @ Vh.T  # (..., r)
        if not ds_zero:
            s = delta_s.to(h.dtype)
            if probe is not None:  # zero-valued, but keeps the dtype path of the reference
                s = (delta_s + probe.view(probe.shape[0], *([1] * (h.dim() - 2)), -1)).to(h.dtype)
            y_base.add_(torch.matmul(h * s, U.T))
        ctx.mark_dirty(y_base)
        ctx.ds_zero, ctx.recompute, ctx.has_probe = ds_zero, recompute, probe is not None
        ctx.save_for_backward(x if recompute else h, U, Vh, delta_s)
        return y_base

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        saved, U, Vh, delta_s = ctx.saved_tensors
        h = saved @ Vh.T if ctx.recompute else saved
        gU = g @ U  # (..., r)
        need_x, need_ds, need_probe = ctx.needs_input_grad[1], ctx.needs_input_grad[4], \
            ctx.needs_input_grad[5]
        g_probe = g_ds = g_x = None
        if need_ds or need_probe:
            acc = torch.promote_types(h.dtype, torch.float32)  # bf16 -> float32; float64 stays
            prod = gU.to(acc) * h.to(acc)
            per_row = prod.flatten(1, -2).sum(1) if prod.dim() > 2 else prod  # (B, r)
            if need_probe:
                g_probe = per_row
            if need_ds:
                g_ds = per_row.sum(0) if per_row.dim() > 1 else per_row
        if need_x and not ctx.ds_zero:
            s = delta_s.to(gU.dtype)  # probes are zero-valued: they add nothing here
            g_x = (gU * s) @ Vh
        return g, g_x, None, None, g_ds, g_probe, None, None


def fused_delta_(y_base: torch.Tensor, x: torch.Tensor, U: torch.Tensor, Vh: torch.Tensor,
                 delta_s: torch.Tensor, probe: torch.Tensor | None, ds_zero: bool,
                 recompute: bool | None = None) -> torch.Tensor:
    """`y_base + U diag(δS + probe) Vh x` through `FusedSVDDelta`; `y_base` is updated in place."""
    if recompute is None:
        recompute = RECOMPUTE_H if RECOMPUTE_H is not None else x.shape[-1] <= U.shape[1]
    return FusedSVDDelta.apply(y_base, x, U, Vh, delta_s, probe, ds_zero, recompute)
