"""The interface every adapter arm implements (δS now, LoRA for R6), and the file format they share.

Downstream code (per-sample gradients, cosines, v_hack, projection, the optimizer step) sees ONE FLAT
VECTOR PER WRAPPED MODULE, whatever tensors the adapter owns there: δS owns one (r,) vector, LoRA an
A and a B matrix (flattened A first, then B, row-major). Modules are keyed by the model's own dotted
path. An adapter also knows how to give each sample of a batch its own zero "probe" offset of that
flat vector, so a per-sample gradient is just `autograd.grad(sum of per-sample losses, probes)`:
sample n's loss depends only on probe n, so one batched backward yields every sample's gradient
(facts.md §6).
"""
from __future__ import annotations

import abc
import contextlib
import json
from pathlib import Path
from typing import ClassVar, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from probe import flat as flat_path
from probe.io import atomic_path

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FORMAT = "probe.adapter.v1"  # every kind; the kind is metadata
LEGACY_FORMATS = {"probe.delta_s.v1": "delta_s"}  # files written before the interface, and their kind


class AdapterStateError(ValueError):
    """A saved adapter state does not fit the adapter it is loaded into."""


class Adapter(abc.ABC):
    """Named trainable per-module tensors attached to a model, seen as one flat vector per module,
    plus per-sample probing."""

    kind: ClassVar[str]
    model: nn.Module

    @property
    def identity_at_init(self) -> bool:
        """Whether a freshly built adapter leaves the model's outputs bit-identical (δS = 0, LoRA
        B = 0). An init that starts elsewhere says False; the contract test reads this."""
        return True

    # -- what a kind implements -------------------------------------------------------------
    @abc.abstractmethod
    def module_params(self) -> dict[str, list[nn.Parameter]]:
        """Module name -> its trainable tensors, in flat order. Ordered as the model's modules."""

    @abc.abstractmethod
    @contextlib.contextmanager
    def probing(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Install zero FLAT probes of shape (batch_size, size), float32, requiring grad; yield them.

        Inside the context, sample n's forward uses `params + probe[n]` (viewed back into each
        tensor's shape), so the values are unchanged and d(loss_n)/d(probe[n]) is sample n's flat
        gradient. No per-sample or per-token d_out × d_in matrix is ever materialised.
        """

    @abc.abstractmethod
    @contextlib.contextmanager
    def zeroed(self) -> Iterator[None]:
        """Temporarily the reference policy: the adapter contributes nothing."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Detach from the model, leaving it as it was before wrapping."""

    # -- the flat view, shared ---------------------------------------------------------------
    @property
    def sizes(self) -> dict[str, int]:
        """Module name -> length of its flat vector."""
        return {n: sum(p.numel() for p in ps) for n, ps in self.module_params().items()}

    @property
    def total_size(self) -> int:
        return sum(self.sizes.values())

    @property
    def module_names(self) -> list[str]:
        return list(self.module_params())

    @property
    def device(self) -> torch.device:
        return next(iter(self.module_params().values()))[0].device

    def parameters(self) -> list[nn.Parameter]:
        """Every trainable tensor (for the optimizer), in module order."""
        return [p for ps in self.module_params().values() for p in ps]

    def flat_values(self) -> dict[str, torch.Tensor]:
        """Current flat vector per module, float32: a copy (an optimizer step does not move it).
        On the concatenated path (probe/flat.py) one copy of everything, viewed per module."""
        params = self.module_params()
        if flat_path.use_flat_on(self.device):
            buf = torch.cat([p.detach().reshape(-1).float() for ps in params.values() for p in ps])
            return flat_path.Packed(zip(params, torch.split(buf, list(self.sizes.values()))), buf)
        return {n: _flat([p.detach() for p in ps]).float().clone() for n, ps in params.items()}

    def set_flat_values(self, flat: dict[str, torch.Tensor]) -> None:
        """Write flat vectors (e.g. a checkpoint's) into the parameters; sizes must match."""
        check_names_and_sizes({n: v.shape[-1] for n, v in flat.items()}, self.sizes,
                              "flat values")
        with torch.no_grad():
            for n, ps in self.module_params().items():
                for p, part in zip(ps, _split(flat[n], ps)):
                    p.copy_(part.to(p.device, p.dtype))

    def grads(self) -> dict[str, torch.Tensor]:
        """Current `.grad` flattened per module (zeros where backward left none). A module with
        one tensor gets a view of its `.grad`, not a copy. After the concatenated path's
        `set_grads`, views of its one buffer (free to concatenate)."""
        buf, grads = getattr(self, "_grad_buf", (None, ()))
        params = self.parameters()
        if buf is not None and len(grads) == len(params) \
                and all(p.grad is g for p, g in zip(params, grads)):
            return flat_path.Packed(zip(self.module_names,
                                        torch.split(buf, list(self.sizes.values()))), buf)
        return {n: _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in ps])
                for n, ps in self.module_params().items()}

    def set_grads(self, flat: dict[str, torch.Tensor]) -> None:
        """Write flat gradients into each tensor's `.grad` (split, viewed, cast to its dtype). The
        `.grad` is a copy: clipping rescales it in place, never the caller's tensor. On the
        concatenated path every `.grad` is a view of one new buffer (one copy, not one per
        tensor)."""
        params = self.module_params()
        dtypes = {p.dtype for ps in params.values() for p in ps}
        if flat_path.use_flat(flat) and len(dtypes) == 1:
            check_names_and_sizes({n: v.shape[-1] for n, v in flat.items()}, self.sizes, "grads")
            dtype = dtypes.pop()
            whole = getattr(flat, "whole", None)  # a flat_path.Packed: copy its buffer at once
            if whole is not None and whole.dim() == 1 and tuple(flat) == tuple(params):
                buf = whole.to(dtype, copy=True)
            else:
                buf = torch.cat([flat[n].reshape(-1).to(dtype) for n in params])
            parts = torch.split(buf, [p.numel() for ps in params.values() for p in ps])
            for p, part in zip((p for ps in params.values() for p in ps), parts):
                p.grad = part.view(p.shape)
            self._grad_buf = (buf, tuple(p.grad for ps in params.values() for p in ps))
            return
        for n, ps in params.items():
            for p, part in zip(ps, _split(flat[n], ps)):
                p.grad = part.to(p.dtype, copy=True)

    def zero_grad(self) -> None:
        self._grad_buf = (None, ())
        for p in self.parameters():
            p.grad = None

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path, base_model_id: str = "unknown") -> Path:
        """Flat vectors to safetensors, with kind, module names, sizes and base model id."""
        tensors = {n: v.cpu().contiguous() for n, v in self.flat_values().items()}
        meta = {"format": FORMAT, "kind": self.kind, "base_model_id": base_model_id,
                "modules": json.dumps(self.module_names), "sizes": json.dumps(self.sizes)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return Path(path)

    def load(self, path: str | Path, base_model_id: str | None = None) -> dict[str, str]:
        """Load a state saved by `save`; another kind, module set, size or base model is an
        `AdapterStateError` naming it."""
        path = Path(path)
        tensors, meta = read_safetensors(path, (FORMAT, *LEGACY_FORMATS), "an adapter state",
                                         AdapterStateError)
        kind = meta.get("kind") or LEGACY_FORMATS.get(meta.get("format", ""))
        if kind != self.kind:
            raise AdapterStateError(f"{path}: a {kind!r} adapter state, loading into a "
                                    f"{self.kind!r} adapter")
        if base_model_id is not None and meta.get("base_model_id") not in (base_model_id, "unknown"):
            raise AdapterStateError(f"{path}: saved for base model {meta.get('base_model_id')!r}, "
                                    f"loading into {base_model_id!r}")
        check_names_and_sizes({k: t.shape[-1] for k, t in tensors.items()}, self.sizes, str(path))
        self.set_flat_values(tensors)
        return meta


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One flat vector; a single 1-D tensor is returned as it is (δS: no copy, same bits)."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


def split_flat(flat: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    """A flat (..., size) vector cut into pieces shaped `shapes`, leading axes kept (views where
    possible): the inverse of the flattening, for grads, values and an adapter's probes."""
    lead = flat.shape[:-1]
    parts = torch.split(flat, [int(torch.Size(s).numel()) for s in shapes], dim=-1)
    return [part.reshape(*lead, *s) for part, s in zip(parts, shapes)]


def _split(flat: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    return split_flat(flat, [p.shape for p in params])


def read_safetensors(path: Path, fmt: str | tuple[str, ...], what: str, error: type[Exception]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a file this project wrote in format `fmt` (or one of several); a
    corrupt file or another format raises `error` naming the path (never a safetensors traceback)."""
    formats = (fmt,) if isinstance(fmt, str) else fmt
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise error(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") not in formats:
        raise error(f"{path}: not {what} (format={meta.get('format')!r})")
    return tensors, meta


def check_names_and_sizes(saved: dict[str, int], model: dict[str, int], what: str,
                          error: type[Exception] = AdapterStateError) -> None:
    """Raise `error` naming the first module missing on either side, or the first flat size that
    differs; a missing module's message shows a name the file does have (a renamed model shows)."""
    for n in model:
        if n not in saved:
            extra = next((k for k in saved if k not in model), None)
            hint = f"; the file has e.g. {extra!r}" if extra else ""
            raise error(f"{what}: has no entry for the model's module {n!r}{hint}")
    for n in saved:
        if n not in model:
            raise error(f"{what}: module {n!r} is not a wrapped module of the model")
    for n, r in model.items():
        if saved[n] != r:
            raise error(f"{what}: module {n!r} has flat size {saved[n]}, the model's is {r}")
