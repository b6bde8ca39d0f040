"""Per-module arithmetic on one concatenated vector: a handful of kernels, not a few per module.

The step's cosines, diagnostics and projection act per module (the spec's norm-weighted cosine, the
one-sided projection, cos_in per module). Module by module that is ~10 small ops × 252 modules at
the Qwen3-4B shape, each a kernel launch and a Python dispatch (issue #13). Here the modules' flat
vectors are concatenated into (..., D) — for free when they already are views of one buffer
(`Packed`) — and every per-module sum is a reduction over the modules' slices, equal-size modules
as one block (deterministic). Measured on one H200 (README, "Real shape"): the whole replay step
0.758 s against 1.146 s module by module, 5.0% over its per-sample gradients.

"auto" (the default) uses it for CUDA tensors only: on a CPU the module loop costs little, and the
reference path keeps the embedded world's results bit-identical. Both paths agree up to float
rounding (tests/unit/test_flat.py); `[compute] flat_ops` forces either.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

FLAT_OPS: bool | None = None  # None: for CUDA tensors; probe.compute.apply sets it
MAX_SIZE_GROUPS = 16  # distinct module sizes summed block by block; more: segment_reduce


def use_flat_on(device: torch.device | str) -> bool:
    """Whether per-module arithmetic on `device` takes the concatenated path."""
    return FLAT_OPS if FLAT_OPS is not None else torch.device(device).type == "cuda"


def use_flat(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether per-module arithmetic on `tensors` takes the concatenated path."""
    return bool(tensors) and use_flat_on(next(iter(tensors.values())).device)


class Packed(dict):
    """module -> (..., size) views of one (..., D) buffer, `whole`, in order: concatenating them
    is free and needs no check. Replacing or removing an entry forgets `whole` (the dict is then a
    plain one); writing into a view writes into `whole`, as views do."""

    def __init__(self, items, whole: torch.Tensor | None) -> None:
        super().__init__(items)
        self.whole = whole

    def __setitem__(self, key, value) -> None:
        self.whole = None
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.whole = None
        super().__delitem__(key)

    def __ior__(self, other):
        self.whole = None
        return super().__ior__(other)

    def pop(self, *args):
        self.whole = None
        return super().pop(*args)

    def popitem(self):
        self.whole = None
        return super().popitem()

    def clear(self) -> None:
        self.whole = None
        super().clear()

    def update(self, *args, **kwargs) -> None:
        self.whole = None
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        if key not in self:
            self.whole = None
        return super().setdefault(key, default)

    def __reduce__(self):
        """Pickled (multiprocessing, object collectives) as a plain dict: an unpickled copy's
        views would no longer share a buffer with a restored `whole`."""
        return dict, (dict(self),)


@dataclass(frozen=True)
class Segments:
    """The modules' layout in the concatenated vector: names in order and their sizes."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    lengths: torch.Tensor  # (M,) int64 on the tensors' device

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def cat(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None
            ) -> torch.Tensor:
        """(..., D): every module's (..., size) tensor, in layout order, at least float32. When
        the tensors already lie side by side in one buffer (`pack`'s output, the views `split`
        returns) this is a view of it, not a copy: read it, never write it."""
        if isinstance(tensors, Packed) and tensors.whole is not None \
                and tuple(tensors) == self.names:
            whole = tensors.whole
            return whole.to(self.lengths.device, dtype or torch.promote_types(whole.dtype,
                                                                                torch.float32))
        parts = [tensors[n] for n in self.names]
        dtype = dtype or functools.reduce(torch.promote_types, (p.dtype for p in parts),
                                          torch.float32)
        whole = adjacent(parts)
        if whole is not None:
            return whole.to(self.lengths.device, dtype)
        return torch.cat([p.to(self.lengths.device, dtype) for p in parts], -1)

    def cat_rows(self, V: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """(k, D) from per-module (k, size) or (size,) directions (k equal across modules)."""
        whole = getattr(V, "whole", None)
        if whole is not None and tuple(V) == self.names:
            return (whole if whole.dim() == 2 else whole[None]).to(self.lengths.device, dtype)
        return self.cat({n: V[n] if V[n].dim() == 2 else V[n][None] for n in self.names}, dtype)

    def split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., D) -> module -> (..., size) views (a `Packed` dict)."""
        return Packed(zip(self.names, torch.split(x, list(self.sizes), dim=-1)), x)

    @functools.cached_property
    def _by_size(self) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int], ...]]:
        """Equal-size modules side by side: the positions that gather them (D,), the inverse
        order of the modules (M,), and (size, count) per group."""
        order = sorted(range(len(self.sizes)), key=lambda i: (self.sizes[i], i))
        starts = [0]
        for size in self.sizes:
            starts.append(starts[-1] + size)
        dev = self.lengths.device
        gather = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in order]).to(dev)
        inverse = torch.empty(len(order), dtype=torch.int64)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        groups = tuple((size, self.sizes.count(size)) for size in sorted(set(self.sizes)))
        return gather, inverse.to(dev), groups

    def sums(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., M): each module's slice summed. Modules of equal size are summed
        as one (count, size) block (a transformer has few distinct sizes: 4x faster on an H200
        than `torch.segment_reduce`, which also serves when sizes are many)."""
        lead = x.shape[:-1]
        if len(set(self.sizes)) > MAX_SIZE_GROUPS:
            rows = x.reshape(-1, x.shape[-1])
            lengths = self.lengths.expand(rows.shape[0], -1)
            out = torch.segment_reduce(rows, "sum", lengths=lengths, axis=1)
            return out.reshape(*lead, len(self.names))
        gather, inverse, groups = self._by_size
        xs, outs, start = x.index_select(-1, gather), [], 0
        for size, count in groups:
            outs.append(xs[..., start:start + size * count].reshape(*lead, count, size).sum(-1))
            start += size * count
        return torch.cat(outs, -1).index_select(-1, inverse)

    def expand(self, per_module: torch.Tensor) -> torch.Tensor:
        """(..., M) -> (..., D): each module's value repeated over its slice."""
        return torch.repeat_interleave(per_module, self.lengths, dim=-1, output_size=self.total)

    def norms(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., M): each module's L2 norm."""
        return self.sums(x * x).sqrt()


@functools.lru_cache(maxsize=16)
def _segments(names: tuple[str, ...], sizes: tuple[int, ...], device: str) -> Segments:
    return Segments(names, sizes, torch.tensor(sizes, dtype=torch.int64, device=device))


def segments(tensors: dict[str, torch.Tensor]) -> Segments:
    """The layout of a module -> (..., size) dict, on its first tensor's device."""
    first = next(iter(tensors.values()))
    return _segments(tuple(tensors), tuple(int(t.shape[-1]) for t in tensors.values()),
                     str(first.device))


def adjacent(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """The (..., D) view that `parts` (..., size_i) are consecutive slices of, when they are
    (same storage, dtype, leading shape and strides, unit last stride, offsets end to end);
    else None. Then concatenating them is free."""
    first = parts[0]
    if first.dim() == 0 or first.stride(-1) != 1:
        return None
    lead, stride, storage = first.shape[:-1], first.stride()[:-1], first.untyped_storage()
    offset = first.storage_offset()
    for p in parts:
        if (p.dtype != first.dtype or p.shape[:-1] != lead or p.stride()[:-1] != stride
                or (p.shape[-1] > 1 and p.stride(-1) != 1) or p.storage_offset() != offset
                or p.untyped_storage().data_ptr() != storage.data_ptr()):
            return None
        offset += p.shape[-1]
    total = offset - first.storage_offset()
    if any(s < total for s, n in zip(stride, lead) if n > 1):
        return None  # rows would overlap: not a (..., D) layout
    return first.as_strided((*lead, total), (*stride, 1), first.storage_offset())


def pack(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same values as views of one (..., D) buffer (one copy; none if they already are), so
    every later concatenation of them is free."""
    if not use_flat(tensors):
        return tensors
    if isinstance(tensors, Packed) and tensors.whole is not None:
        return tensors
    if len({t.shape[:-1] for t in tensors.values()}) > 1:
        return tensors  # e.g. k directions per module, fewer where a module is smaller than k
    seg = segments(tensors)
    whole = adjacent([tensors[n] for n in seg.names])
    if whole is not None:
        return Packed(tensors.items(), whole)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors.values()))
    return seg.split(torch.cat([t.to(dtype) for t in tensors.values()], -1))


def zeros(sizes: dict[str, int], device: torch.device | str) -> dict[str, torch.Tensor]:
    """float32 zeros per module; on the concatenated path, views of one buffer."""
    if not sizes or not use_flat_on(device):
        return {n: torch.zeros(s, dtype=torch.float32, device=device) for n, s in sizes.items()}
    return _segments(tuple(sizes), tuple(sizes.values()), str(torch.device(device))).split(
        torch.zeros(sum(sizes.values()), dtype=torch.float32, device=device))


def sub(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """a − b per module (new tensors)."""
    if not use_flat(a):
        return {n: a[n] - b[n] for n in a}
    seg = segments(a)
    return seg.split(seg.cat(a) - seg.cat(b))


def div(tensors: dict[str, torch.Tensor], divisor: float) -> dict[str, torch.Tensor]:
    """tensors / divisor per module (new tensors)."""
    if not use_flat(tensors):
        return {n: t / divisor for n, t in tensors.items()}
    seg = segments(tensors)
    return seg.split(seg.cat(tensors) / divisor)


def copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A snapshot per module (float32 at least), as views of one new buffer on the flat path."""
    if not use_flat(tensors):
        return {n: t.clone() for n, t in tensors.items()}
    seg = segments(tensors)
    return seg.split(seg.cat(tensors).clone())


def same_k(V: dict[str, torch.Tensor], names: tuple[str, ...]) -> bool:
    """Whether every module has the same number of directions (the concatenated path needs it)."""
    return len({V[n].shape[0] if V[n].dim() == 2 else 1 for n in names}) == 1
