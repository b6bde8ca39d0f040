"""Projecting v_hack out of per-module gradients, with the diagnostics the spec's R3 reads.

Per module, g is the adapter's flat gradient (size,), V (k, size) has orthonormal rows and c = V g:
- `one_sided` removes relu(c)ᵀV: only the hack-ward part; g is untouched when every c ≤ 0;
- `no_gate` removes cᵀV: the whole component in span(V);
- `reverse` removes 2cᵀV: reflects the component (pushes away from hacking).
`preserve_magnitude` rescales the result back to ‖g‖. Diagnostics per module: cos_in =
‖relu(Vg)‖/‖g‖ (hack-ward alignment, in [0, 1]), cos_out the same after projection, and the signed
cosine with the principal direction before/after (in [-1, 1]); `fired` = cos_in > 1e-6. Under
one-sided projection cos_out = 0 by construction: a sanity check that the projection acted, not
evidence that hacking is prevented.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from probe import flat
from probe.adapters.base import Adapter
from probe.cosine import require_modules

MODES = ("one_sided", "no_gate", "reverse")
FIRE_EPS = 1e-6
RESIDUE = 1e-6  # ‖g_out‖ below this fraction of ‖g_in‖ is rounding noise: its cosine is reported as 0


@dataclass
class ProjectionDiag:
    cos_in: float  # mean over modules of ‖relu(Vg)‖/‖g‖ before
    cos_out: float  # the same after
    signed_in: float  # mean over modules of ⟨g, v̂₀⟩/‖g‖ before
    signed_out: float
    frac_fired: float  # fraction of modules whose cos_in > FIRE_EPS
    norm_in: float  # total ‖g‖ over modules before
    norm_out: float
    per_module: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    @property
    def fired(self) -> bool:
        return self.frac_fired > 0

    def to_dict(self, with_modules: bool = False) -> dict:
        d = {k: getattr(self, k) for k in ("cos_in", "cos_out", "signed_in", "signed_out",
                                           "frac_fired", "norm_in", "norm_out")}
        d["fired"] = self.fired
        if with_modules:
            d["per_module"] = self.per_module
        return d


def check_orthonormal(V: torch.Tensor, name: str = "V", atol: float = 1e-4) -> None:
    gram = V.float() @ V.float().T
    eye = torch.eye(V.shape[0], dtype=gram.dtype, device=gram.device)
    if not torch.allclose(gram, eye, atol=atol):
        raise ValueError(f"{name}: rows are not orthonormal (max |VVᵀ - I| = "
                         f"{(gram - eye).abs().max().item():.2e})")


def hackward_cos(g: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """‖relu(V g)‖ / ‖g‖ for g (..., r): 0 where g = 0."""
    c = g.float() @ V.float().T
    return c.clamp(min=0).norm(dim=-1) / g.float().norm(dim=-1).clamp(min=1e-30)


def project(g: torch.Tensor, V: torch.Tensor, mode: str = "one_sided",
            preserve_magnitude: bool = False) -> torch.Tensor:
    """Project g (..., r) against V (k, r) (orthonormal rows); returns a new tensor."""
    if mode not in MODES:
        raise ValueError(f"unknown projection mode {mode!r}; expected one of {MODES}")
    V = V.to(g.dtype)
    c = g @ V.T  # (..., k)
    if mode == "one_sided":
        out = g - c.clamp(min=0) @ V
    elif mode == "no_gate":
        out = g - c @ V
    else:
        out = g - 2 * c @ V
    if preserve_magnitude:
        n_in, n_out = g.norm(dim=-1, keepdim=True), out.norm(dim=-1, keepdim=True)
        # a residue at rounding level has no direction worth rescaling
        out = torch.where(n_out > RESIDUE * n_in, out * (n_in / n_out.clamp(min=1e-30)), out)
    return out


def as_basis(v: torch.Tensor) -> torch.Tensor:
    """(r,) or (k, r) -> (k, r)."""
    return v[None] if v.dim() == 1 else v


def module_hackward_cos(vectors: dict[str, torch.Tensor], V: dict[str, torch.Tensor]
                        ) -> torch.Tensor:
    """(M,): every module's ‖relu(V_m x_m)‖/‖x_m‖ (x (size,) in gradient orientation)."""
    require_modules(vectors, V)
    if flat.use_flat(vectors) and flat.same_k(V, tuple(vectors)):
        seg = flat.segments(vectors)
        x = seg.cat(vectors, torch.float32)
        c = seg.sums(x * seg.cat_rows(V, torch.float32))
        return c.clamp(min=0).norm(dim=0) / seg.norms(x).clamp(min=1e-30)
    return torch.stack([hackward_cos(x.float(), as_basis(V[n]).to(x.device).float())
                        for n, x in vectors.items()])


def _project_flat(grads: dict[str, torch.Tensor], V: dict[str, torch.Tensor], mode: str,
                  preserve_magnitude: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`project_grads`' arithmetic on the concatenated vector: the projected grads and the
    (M, 6) table of cos_in, cos_out, signed_in, signed_out, norm_in, norm_out."""
    if mode not in MODES:
        raise ValueError(f"unknown projection mode {mode!r}; expected one of {MODES}")
    seg = flat.segments(grads)
    g = seg.cat(grads)
    Vc = seg.cat_rows(V, g.dtype)  # (k, D)
    c = seg.sums(g * Vc)  # (k, M) = V_m g_m
    coef = {"one_sided": c.clamp(min=0), "no_gate": c, "reverse": 2 * c}[mode]
    out = g - (seg.expand(coef) * Vc).sum(0)
    gn = seg.norms(g)
    if preserve_magnitude:
        on = seg.norms(out)
        # a residue at rounding level has no direction worth rescaling
        scale = torch.where(on > RESIDUE * gn, gn / on.clamp(min=1e-30), torch.ones_like(on))
        out = out * seg.expand(scale)
    on, c_out = seg.norms(out), seg.sums(out * Vc)
    cos_out = torch.where(on > RESIDUE * gn, c_out.clamp(min=0).norm(dim=0) / on.clamp(min=1e-30),
                          torch.zeros_like(gn))
    table = torch.stack([c.clamp(min=0).norm(dim=0) / gn.clamp(min=1e-30), cos_out,
                         c[0] / gn.clamp(min=1e-30), c_out[0] / on.clamp(min=1e-30), gn, on], 1)
    new = {n: part.to(grads[n].dtype) for n, part in seg.split(out).items()}
    return new, table.float()


def project_grads(grads: dict[str, torch.Tensor], V: dict[str, torch.Tensor],
                  mode: str = "one_sided", preserve_magnitude: bool = False
                  ) -> tuple[dict[str, torch.Tensor], ProjectionDiag]:
    """Project every module's flat gradient (size,) against its V (k, size); returns new grads and diagnostics."""
    require_modules(grads, V)
    keys = ("cos_in", "cos_out", "signed_in", "signed_out", "norm_in", "norm_out")
    if flat.use_flat(grads) and flat.same_k(V, tuple(grads)):
        out, table = _project_flat(grads, V, mode, preserve_magnitude)
        return out, _diag(grads, table.cpu(), keys)  # one device sync
    out, stats = {}, []
    for n, g_raw in grads.items():
        # in at least float32: a bf16 projection leaves a rounding residue with a random direction
        g = g_raw.to(torch.promote_types(g_raw.dtype, torch.float32))
        Vn = as_basis(V[n]).to(g.device, g.dtype)
        g_out = project(g, Vn, mode, preserve_magnitude)
        v0 = Vn[0].float()
        gn, on = g.float().norm(), g_out.float().norm()
        cos_out = torch.where(on > RESIDUE * gn, hackward_cos(g_out, Vn), torch.zeros_like(gn))
        stats.append(torch.stack([
            hackward_cos(g, Vn), cos_out,
            (g.float() @ v0) / gn.clamp(min=1e-30), (g_out.float() @ v0) / on.clamp(min=1e-30),
            gn, on]))
        out[n] = g_out.to(g_raw.dtype)
    table = torch.stack(stats).cpu() if stats else torch.zeros(0, len(keys))  # one device sync
    return out, _diag(grads, table, keys)


def _diag(grads: dict[str, torch.Tensor], table: torch.Tensor, keys: tuple[str, ...]
          ) -> ProjectionDiag:
    """The diagnostics from the per-module table (rows in `grads`' order, columns `keys`)."""
    per = {n: dict(zip(keys, row.tolist())) for n, row in zip(grads, table)}
    for p in per.values():
        p["fired"] = float(p["cos_in"] > FIRE_EPS)
    m = max(len(per), 1)

    def mean(key: str) -> float:
        return sum(p[key] for p in per.values()) / m

    diag = ProjectionDiag(
        cos_in=mean("cos_in"), cos_out=mean("cos_out"), signed_in=mean("signed_in"),
        signed_out=mean("signed_out"), frac_fired=mean("fired"),
        norm_in=sum(p["norm_in"] ** 2 for p in per.values()) ** 0.5,
        norm_out=sum(p["norm_out"] ** 2 for p in per.values()) ** 0.5, per_module=per)
    return diag


def project_adapter_grads_(adapter: Adapter, V: dict[str, torch.Tensor], mode: str = "one_sided",
                           preserve_magnitude: bool = False) -> ProjectionDiag:
    """In place on the adapter's `.grad` (its flat vector per module), after backward and before
    clipping / the optimizer step."""
    new, diag = project_grads(adapter.grads(), V, mode, preserve_magnitude)
    adapter.set_grads(new)
    return diag
