"""The LoRA adapter (R6): PEFT's own LoRA layers behind the one-flat-vector-per-module interface.

Each target Linear becomes PEFT's `lora.Linear` (`LoraModel`, rank 32, alpha 32, dropout 0): the
forward is PEFT's `base(x) + scale · lora_B(lora_A(x))`. Downstream code sees one flat vector per
module, A first then B, row-major: size r·d_in + d_out·r.

Per-sample gradients: forward hooks on PEFT's `lora_A` / `lora_B` sub-Linears add a per-sample zero
probe, h = x Aᵀ + bmm(x, pAᵀ) and out = h Bᵀ + bmm(h, pBᵀ) (PEFT then scales it), so one batched
backward gives every sample's (A, B) gradient without a d_out × d_in matrix per sample or token.

The zero-init-B trap. PEFT initialises B = 0 (so the adapter starts as a no-op). Then ∂L/∂A =
scale · Bᵀ (∂L/∂out) xᵀ = 0 exactly: a v_hack extracted at init has no A part, and the first
training steps (whose A gradient grows with B) are unprotected along A. `LoraSpec.init` chooses:

- "peft": PEFT's default (A Kaiming-uniform, B = 0). The trap, kept to show it.
- "nonzero_b" (DEFAULT): B drawn like PEFT's A, U(±1/√d_in) — the same entry scale as A, which makes
  the A and B parts of the gradient about equally large at init (E‖∂A‖² ∝ σ_B², E‖∂B‖² ∝ σ_A²). The
  start stays EXACTLY the base: a frozen anchor copy (A₀, B₀) is subtracted inside PEFT's B branch,
  out = B(Ax) − B₀(A₀x), computed by the same kernels on the same input, so it is bit-for-bit 0 at
  init (ΔW = scale·(BA − B₀A₀)). The base weights are never touched (unlike PiSSA/OLoRA-style
  inits that fold the product into W; PEFT's "orthogonal" init has BA = 0 only up to rounding).
- "frozen_a": A frozen at its random init, only B trains (LoRA-FA). The update scale·B·A is linear
  in B with a fixed basis (like δS), B's gradient is non-zero at init; the flat vector is B only.
- warm-up (a procedure, not an init): build with "peft", take a few unprojected steps on a neutral
  loss, then extract v_hack. Not offered as code: the extraction point then depends on the warm-up
  data and length, and those steps are unprotected in the projected arm.

Why "nonzero_b" is the R6 default: R6 asks whether projection works in LoRA's basis, whose defining
property (and the spec's sneaky fail) is that the basis itself trains (bilinear BA). "nonzero_b"
keeps both factors training as upstream did, gives a v_hack with non-zero and balanced A and B
parts at init, and starts bit-identical to the base — the same start and reference policy as δS.
"frozen_a" removes the basis's own drift by construction (v_hack then moves only as the model
changes, as for δS), so it is the control, not the default. The cost:
training dynamics differ from PEFT's B = 0 LoRA (a step's ΔW gains a B Bᵀ·∇W term beside
∇W·AᵀA, up to about twice the early step size), which R6 absorbs by matching learning rates on the
vanilla arms. Measured on the unit-test Qwen3 at rank 32: the A/B gradient-norm ratio per module at
init is 0 under "peft" and 0.79-1.12 (median 1.01) under "nonzero_b".
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from peft import LoraConfig, LoraModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from probe.adapters.base import (DEFAULT_TARGETS, Adapter, AdapterStateError, _flat,
                                 check_names_and_sizes, read_safetensors, split_flat)
from probe.io import atomic_path

log = logging.getLogger(__name__)

LORA_TARGETS = DEFAULT_TARGETS  # upstream's seven projections
INITS = ("peft", "nonzero_b", "frozen_a")
FORMAT = "probe.adapter.v1"  # the shared adapter file format; the kind is metadata
ADAPTER_NAME = "default"  # PEFT's adapter key inside each LoraLayer
FIXED_PREFIX = "fixed/"  # saved non-trainable state per module: anchors (nonzero_b), frozen A


class LoraStateError(AdapterStateError):
    """A saved LoRA state does not fit the adapter it is loaded into (an AdapterStateError, so
    callers and the contract test catch every kind's mismatch alike)."""


@dataclass(frozen=True)
class LoraSpec:
    """What to build; the fields mirror the shared AdapterSpec (the lead unifies them)."""

    kind: str = "lora"
    rank: int = 32  # as the upstream teachers (facts.md §4)
    alpha: float = 32.0  # scale = alpha / rank = 1
    targets: tuple[str, ...] = LORA_TARGETS  # last component of the module's dotted name
    init: str = "nonzero_b"  # see the module docstring
    seed: int = 0  # the random A (and B) init: every arm of a run must start from the same one


class _Module:
    """One wrapped module's PEFT layer, its probe slots and (nonzero_b) its frozen anchor."""

    def __init__(self, layer: LoraLayer, train_a: bool) -> None:
        self.layer = layer
        self.A: nn.Parameter = layer.lora_A[ADAPTER_NAME].weight  # (r, d_in)
        self.B: nn.Parameter = layer.lora_B[ADAPTER_NAME].weight  # (d_out, r)
        self.train_a = train_a
        self.pA: torch.Tensor | None = None  # (N, r, d_in) view of the flat probe, while probing
        self.pB: torch.Tensor | None = None  # (N, d_out, r)
        self.anchor: tuple[torch.Tensor, torch.Tensor] | None = None  # (A₀, B₀)
        self._anchor_h: torch.Tensor | None = None  # A₀x, between the A and B hooks

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.A, self.B] if self.train_a else [self.B]

    def hook_a(self, _mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor):
        x = inputs[0]
        if self.anchor is not None:
            self._anchor_h = F.linear(x, self.anchor[0])  # the same op PEFT's lora_A runs
        if self.pA is not None:
            out = out + _per_sample(x, self.pA)
        return out

    def hook_b(self, _mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor):
        if self.pB is not None:
            out = out + _per_sample(inputs[0], self.pB)
        if self.anchor is not None:
            h0, self._anchor_h = self._anchor_h, None
            out = out - F.linear(h0, self.anchor[1])  # exactly 0 while (A, B) = (A₀, B₀)
        return out


def _per_sample(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x (N, ..., d_in) times each sample's own p[n]ᵀ (N, d_out, d_in) -> (N, ..., d_out)."""
    if x.shape[0] != p.shape[0]:
        raise ValueError(f"probing was set up for batch size {p.shape[0]}, the forward has "
                         f"{x.shape[0]} rows")
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.bmm(flat, p.transpose(1, 2)).reshape(*x.shape[:-1], p.shape[1])


class LoraAdapter(Adapter):
    """PEFT LoRA on `model`'s target Linears (in place); everything else frozen."""

    kind: ClassVar[str] = "lora"

    def __init__(self, model: nn.Module, spec: LoraSpec | None = None) -> None:
        spec = spec or LoraSpec()
        if spec.init not in INITS:
            raise ValueError(f"unknown LoRA init {spec.init!r}; one of {INITS}")
        self.model = model
        self.spec = spec
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets),
                            lora_dropout=0.0, bias="none", init_lora_weights=True)
        with torch.random.fork_rng(devices=[]):  # PEFT draws A on the CPU generator
            torch.manual_seed(spec.seed)
            self.tuner = LoraModel(model, config, ADAPTER_NAME)
            self.modules: dict[str, _Module] = {}
            for name, layer in model.named_modules():
                if isinstance(layer, LoraLayer):
                    self.modules[name] = self._setup(layer)
        if not self.modules:
            self.tuner.unload()
            raise ValueError(f"no Linear modules named {spec.targets} in the model")
        self._handles = []
        for m in self.modules.values():
            self._handles.append(m.layer.lora_A[ADAPTER_NAME].register_forward_hook(m.hook_a))
            self._handles.append(m.layer.lora_B[ADAPTER_NAME].register_forward_hook(m.hook_b))
        log.info("LoRA adapter (init %s): %d modules, rank %d, %d trainable numbers",
                 spec.init, len(self.modules), spec.rank, self.total_size)

    def _setup(self, layer: LoraLayer) -> _Module:
        """float32 factors (small updates must not round away in bf16), then the chosen init."""
        for sub in (layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]):
            sub.float()
        m = _Module(layer, train_a=self.spec.init != "frozen_a")
        with torch.no_grad():
            if self.spec.init == "nonzero_b":
                bound = 1.0 / math.sqrt(m.A.shape[1])  # A's own scale: U(±1/√d_in)
                m.B.copy_(torch.rand(m.B.shape) * 2 * bound - bound)
                m.anchor = (m.A.detach().clone(), m.B.detach().clone())
        m.A.requires_grad_(m.train_a)
        m.B.requires_grad_(True)
        return m

    # -- the flat view -----------------------------------------------------------------------
    @property
    def identity_at_init(self) -> bool:
        return True  # every init: B = 0 or the anchor

    def module_params(self) -> dict[str, list[nn.Parameter]]:
        return {n: m.params for n, m in self.modules.items()}

    # -- probing, zeroed, remove -------------------------------------------------------------
    @contextlib.contextmanager
    def probing(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        probes = {}
        for n, m in self.modules.items():
            probe = torch.zeros(batch_size, self.sizes[n], dtype=torch.float32, device=m.B.device,
                                requires_grad=True)
            probes[n] = probe
            parts = _split(probe, m.params)
            m.pA, m.pB = (parts[0], parts[1]) if m.train_a else (None, parts[0])
        try:
            yield probes
        finally:
            for m in self.modules.values():
                m.pA = m.pB = None

    @contextlib.contextmanager
    def zeroed(self) -> Iterator[None]:
        """PEFT's own disable switch; it flips requires_grad, so the flags are put back after."""
        flags = [(p, p.requires_grad) for m in self.modules.values() for p in (m.A, m.B)]
        for m in self.modules.values():
            m.layer.enable_adapters(False)
        try:
            yield
        finally:
            for m in self.modules.values():
                m.layer.enable_adapters(True)
            for p, flag in flags:
                p.requires_grad_(flag)

    def remove(self) -> None:
        """PEFT's unload puts the original Linears back; hooks and requires_grad flags too."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.tuner.unload()
        for n, p in self.model.named_parameters():
            if n in self._requires_grad:
                p.requires_grad_(self._requires_grad[n])
        self.modules = {}

    # -- persistence -------------------------------------------------------------------------
    def _fixed(self) -> dict[str, torch.Tensor]:
        """Non-trainable state a rebuild with another seed would not reproduce, flat per module."""
        out = {}
        for n, m in self.modules.items():
            if m.anchor is not None:
                out[n] = _flat(list(m.anchor)).float()
            elif not m.train_a:
                out[n] = m.A.detach().reshape(-1).float()
        return out

    def save(self, path: str | Path, base_model_id: str = "unknown") -> Path:
        """Flat vectors (and fixed state) to safetensors with kind, init, modules and sizes."""
        tensors = {n: v.cpu().contiguous() for n, v in self.flat_values().items()}
        tensors.update({FIXED_PREFIX + n: v.cpu().contiguous() for n, v in self._fixed().items()})
        meta = {"format": FORMAT, "kind": self.kind, "base_model_id": base_model_id,
                "modules": json.dumps(self.module_names), "sizes": json.dumps(self.sizes),
                "init": self.spec.init, "rank": str(self.spec.rank),
                "alpha": str(float(self.spec.alpha)),
                "seed": str(self.spec.seed)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return Path(path)

    def load(self, path: str | Path, base_model_id: str | None = None) -> dict[str, str]:
        """Load a state saved by `save`; another kind, init, alpha, base model, module set or size
        is a `LoraStateError` naming it."""
        path = Path(path)
        tensors, meta = read_safetensors(path, FORMAT, "an adapter state", LoraStateError)
        if meta.get("kind") != self.kind:
            raise LoraStateError(f"{path}: a {meta.get('kind')!r} adapter state, loading into a "
                                 f"{self.kind!r} adapter")
        saved_for = meta.get("base_model_id")
        if base_model_id is not None and saved_for not in (base_model_id, "unknown"):
            raise LoraStateError(f"{path}: saved for base model {saved_for!r}, "
                                 f"loading into {base_model_id!r}")
        flat = {k: t for k, t in tensors.items() if not k.startswith(FIXED_PREFIX)}
        fixed = {k[len(FIXED_PREFIX):]: t for k, t in tensors.items() if k.startswith(FIXED_PREFIX)}
        _check_sizes({k: t.shape[-1] for k, t in flat.items()}, self.sizes, str(path))
        for key, mine in (("init", self.spec.init), ("alpha", str(float(self.spec.alpha)))):
            if meta.get(key) != mine:
                raise LoraStateError(f"{path}: LoRA {key} {meta.get(key)!r}, the adapter's is "
                                     f"{mine!r}")
        mine = self._fixed()
        _check_sizes({k: t.shape[-1] for k, t in fixed.items()},
                     {n: v.shape[-1] for n, v in mine.items()}, f"{path} (fixed state)")
        self.set_flat_values(flat)
        with torch.no_grad():
            for n, v in fixed.items():
                m = self.modules[n]
                targets = list(m.anchor) if m.anchor is not None else [m.A]
                for t, part in zip(targets, _split(v, targets)):
                    t.copy_(part.to(t.device, t.dtype))
        return meta


def build_lora(model: nn.Module, spec) -> LoraAdapter:
    """The registry's builder for kind "lora": takes a `LoraSpec` or the shared `AdapterSpec`,
    whose unset fields (rank/alpha None, init "default") mean LoraSpec's defaults."""
    if spec.kind != "lora":
        raise ValueError(f"build_lora got a spec of kind {spec.kind!r}")
    d = LoraSpec()
    rank = d.rank if spec.rank is None else spec.rank
    return LoraAdapter(model, LoraSpec(
        rank=rank, alpha=float(rank if spec.alpha is None else spec.alpha),
        targets=tuple(spec.targets), init=d.init if spec.init == "default" else spec.init,
        seed=getattr(spec, "seed", d.seed)))


def _split(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """`flat` (..., size) cut into views shaped like `like` (leading axes kept)."""
    return split_flat(flat, [t.shape for t in like])


def _check_sizes(saved: dict[str, int], model: dict[str, int], what: str) -> None:
    check_names_and_sizes(saved, model, what, LoraStateError)
