"""v_hack: per-module hack-ward directions in the adapter's parameter space, and negative controls.

From contrastive pairs (same prompt, a hacking and a clean completion), each pair gives the
difference of per-completion mean-NLL gradients d_i = ∇L(hack_i) − ∇L(clean_i) per module (other
methods plug in their own pair difference, `PairGrads`; see `probe.vhack_methods`). The
k=1 direction is the normalised mean difference; top-k takes the right singular vectors of the
stacked differences, each oriented hack-ward by majority vote. Controls from the same code: a Haar
random V of the same shapes, and a shuffled-label V (half the pairs' hack/clean labels swapped,
balanced, before the same extraction, then orthogonalised against v_hack per module; see
`shuffled_directions`).

Where every pair's difference (P × Σ sizes float32) would not fit the host's free memory
(`store_pair_diffs`: e.g. a LoRA adapter on a 4B model, 66M numbers a pair), k = 1 extraction
streams instead: one pass summing Σ d_i and Σ s_i·d_i per module (the mean and the shuffled
control need nothing else), then a second gradient pass only to count each pair's agreement with
v_hack (`pair_agreement`); k > 1 (an SVD of all the differences) fails before any pass.

Gradients are loss gradients: a training gradient with a positive component along v_hack pushes,
under descent, toward the hacking completions.

A control is only a control if it is about as unrelated to v_hack as a random direction:
`control_alignment` measures each control's cosine with v_hack per module and overall, and calls
it invalid beyond thresholds set by the Haar-random null (√(k/r) per module).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from probe.adapters.base import Adapter, check_names_and_sizes, read_safetensors
from probe.artifacts import AUTO, auto_cap
from probe.batch import TokenBatch, collate
from probe.encoding import encode_completion, encode_prompt, pad_id
from probe.grads import per_sample_grads
from probe.io import atomic_path
from probe import memory
from probe.memory import MemoryBudgetError, oom_names_knob, resolve_grad_batch
from probe.project import check_orthonormal
from probe.world.base import Pair

log = logging.getLogger(__name__)
FORMAT = "probe.v_hack.v1"
KINDS = ("nll", "random", "shuffled")
# "auto" batch_size never exceeds the old fixed default: where memory does not bind (the embedded
# world) pair gradients are batched, and so rounded, as they always were
BATCH_CAP = 16
BATCH_KNOB = "vhack.batch_size"  # named when no pair fits or a batch runs out of memory


class VHackMismatchError(ValueError):
    """A v_hack file does not fit the model's adapter (module names or sizes), or is corrupt."""


@dataclass(frozen=True)
class VHackConfig:
    k: int = 1  # directions per module: 1 = normalised mean difference; >1 = top-k SVD axes
    noise_floor: float = 0.0  # top-k: drop axes whose singular value < floor × the module's largest
    # pairs per batched backward (2 rows each); "auto": as many as fit free memory (probe.memory)
    batch_size: int | str = field(default=AUTO, metadata=auto_cap(BATCH_CAP))
    seed: int = 0  # controls (random V, shuffled labels)
    # the shuffled control: "orthogonal" = balanced label flips, then Gram-Schmidt against v_hack
    # per module; "balanced" = the flips alone (with few pairs it can align strongly with v_hack)
    shuffled: str = "orthogonal"


PairGrads = Callable[[Adapter, TokenBatch, int], dict[str, torch.Tensor]]
"""(adapter, batch of 2n rows: n hack completions then their n clean ones, n) -> per module (n, size),
one gradient difference per pair, oriented so that descent along it makes the hack likelier."""


def nll_pair_grads(adapter: Adapter, batch: TokenBatch, n: int) -> dict[str, torch.Tensor]:
    """The NLL method: ∇ mean-NLL(hack) − ∇ mean-NLL(clean) per pair."""
    grads = per_sample_grads(adapter, batch).grads
    return {name: g[:n] - g[n:] for name, g in grads.items()}


def _each_pair_batch(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair], batch_size: int | str,
                     desc: str, pair_grads: PairGrads,
                     use: Callable[[slice, dict[str, torch.Tensor]], None]) -> None:
    """The batching loop every extraction shares: encode the pairs, resolve `batch_size` ("auto":
    from free memory at the longest pair, before the first backward, at most BATCH_CAP), and hand
    each batch's per-module differences (n, size), on the adapter's device, to `use(rows, diffs)`
    (`rows`: the batch's slice of `pairs`); an out-of-memory in either names vhack.batch_size."""
    if not pairs:
        raise ValueError("no contrastive pairs to extract v_hack from")
    pid = pad_id(tokenizer)
    device = adapter.device
    prompts = [encode_prompt(tokenizer, p.prompt) for p in pairs]
    hacks = [encode_completion(tokenizer, p.hack) for p in pairs]
    cleans = [encode_completion(tokenizer, p.clean) for p in pairs]
    longest = max(len(p) + max(len(h), len(c)) for p, h, c in zip(prompts, hacks, cleans))
    batch_size = resolve_grad_batch(batch_size, adapter.model, longest, device, BATCH_KNOB,
                                    BATCH_CAP, rows_per_item=2)
    with oom_names_knob(BATCH_KNOB, batch_size):
        for i in tqdm(range(0, len(pairs), batch_size), desc=desc, leave=False):
            part = slice(i, i + batch_size)
            batch = collate(prompts[part] * 2, hacks[part] + cleans[part], pid).to(device)
            use(part, pair_grads(adapter, batch, len(prompts[part])))


def pair_grad_diffs(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair],
                    batch_size: int | str = AUTO, desc: str = "v_hack pairs",
                    pair_grads: PairGrads = nll_pair_grads) -> dict[str, torch.Tensor]:
    """Per module, (P, size) on the CPU: each pair's flat gradient difference (by default the
    mean-NLL one). `batch_size` (vhack.batch_size): pairs per backward; "auto" sizes it from free
    memory at the longest pair, before the first backward (at most BATCH_CAP). Holds P × Σ sizes
    float32 numbers: `store_pair_diffs` says whether they fit, `pair_grad_sums` when they do not."""
    out: dict[str, torch.Tensor] = {}

    def store(part: slice, diffs: dict[str, torch.Tensor]) -> None:
        for name, d in diffs.items():  # filled in place: no second copy of every row
            if name not in out:
                out[name] = torch.empty(len(pairs), d.shape[1], dtype=d.dtype)
            out[name][part] = d.cpu()

    _each_pair_batch(adapter, tokenizer, pairs, batch_size, desc, pair_grads, store)
    return out


def pair_grad_sums(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair],
                   batch_size: int | str = AUTO, signs: torch.Tensor | None = None,
                   desc: str = "v_hack pairs", pair_grads: PairGrads = nll_pair_grads
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Per module, float64 (size,) on the CPU: Σ_i d_i and, with `signs` (P,) of ±1, Σ_i s_i·d_i
    (else None); one pass, never holding more than one batch's differences."""
    total: dict[str, torch.Tensor] = {}
    signed: dict[str, torch.Tensor] = {}
    s = None if signs is None else signs.double()

    def add(part: slice, diffs: dict[str, torch.Tensor]) -> None:
        for name, d in diffs.items():
            d = d.double()
            if name not in total:
                total[name] = torch.zeros(d.shape[1], dtype=torch.float64, device=d.device)
                if s is not None:
                    signed[name] = torch.zeros_like(total[name])
            total[name] += d.sum(0)
            if s is not None:
                signed[name] += s[part].to(d.device) @ d

    _each_pair_batch(adapter, tokenizer, pairs, batch_size, desc, pair_grads, add)
    return ({n: t.cpu() for n, t in total.items()},
            None if s is None else {n: t.cpu() for n, t in signed.items()})


def pair_agreement(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair],
                   V: dict[str, torch.Tensor], batch_size: int | str = AUTO,
                   desc: str = "v_hack pair agreement", pair_grads: PairGrads = nll_pair_grads
                   ) -> float:
    """Mean over modules of the fraction of pairs whose difference has a positive component along
    V's first row (1.0 = every pair hack-ward): a second gradient pass, counting only."""
    counts: dict[str, int] = {}
    v0 = {n: v[0].double() for n, v in V.items()}

    def count(part: slice, diffs: dict[str, torch.Tensor]) -> None:
        for name, d in diffs.items():
            hits = int((d.double() @ v0[name].to(d.device) > 0).sum())
            counts[name] = counts.get(name, 0) + hits

    _each_pair_batch(adapter, tokenizer, pairs, batch_size, desc, pair_grads, count)
    return sum(c / len(pairs) for c in counts.values()) / len(counts)


def store_pair_diffs(n_pairs: int, sizes: dict[str, int]) -> bool:
    """Whether every pair's difference (n_pairs × Σ sizes float32 on the CPU) fits in FILL of the
    host's free memory: then extraction stores them (any k); else it streams sums (k = 1 only)."""
    need = n_pairs * sum(sizes.values()) * 4
    free = memory.free_bytes("cpu")
    fits = need <= memory.FILL * free
    log.info("v_hack pair differences: %d pairs x %d numbers = %.2f GiB, %.1f GiB free: %s",
             n_pairs, sum(sizes.values()), need / 2**30, free / 2**30,
             "stored" if fits else "streamed (per-module sums; a second pass for pair_agreement)")
    return fits


def _streamable(k: int, n_pairs: int, sizes: dict[str, int]) -> bool:
    """True when the differences must stream (k = 1); fails before any pass when k > 1 needs them."""
    if store_pair_diffs(n_pairs, sizes):
        return False
    if k != 1:
        need = n_pairs * sum(sizes.values()) * 4
        free = memory.free_bytes("cpu")
        raise MemoryBudgetError(
            f"vhack.k = {k} needs every pair's gradient difference for its SVD: {n_pairs} pairs x "
            f"{sum(sizes.values())} numbers = ~{need / 2**30:.1f} GiB of host memory, but "
            f"{free / 2**30:.1f} GiB is free ({memory.FILL:.0%} of it plannable); set vhack.k = 1 "
            f"(streamed: per-module sums, never the differences) or use fewer pairs")
    return True


def directions_from_diffs(diffs: dict[str, torch.Tensor], k: int = 1, noise_floor: float = 0.0,
                          signs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """(k, size) orthonormal rows per module; `signs` (P,) of ±1 flips pairs (the shuffled control)."""
    out = {}
    for name, d in diffs.items():
        d = d.double()
        if signs is not None:
            d = d * signs.double()[:, None]
        if k == 1:
            out[name] = _unit(d.mean(0))
            continue
        _, s, vh = torch.linalg.svd(d, full_matrices=False)
        keep = min(k, vh.shape[0])
        if noise_floor > 0:
            keep = max(1, int((s[:keep] >= noise_floor * s[0]).sum()))
        rows = vh[:keep]
        proj = d @ rows.T  # (P, keep): orient each axis toward the majority of pairs
        flip = torch.where((proj > 0).double().mean(0) >= 0.5, 1.0, -1.0)
        out[name] = (rows * flip[:, None]).float()
    return out


def _unit(m: torch.Tensor) -> torch.Tensor:
    """The k = 1 direction, (1, size) float32, from a float64 mean difference."""
    return (m / m.norm().clamp(min=1e-30))[None].float()


def directions_from_sums(sums: dict[str, torch.Tensor], n_pairs: int) -> dict[str, torch.Tensor]:
    """The k = 1 directions from per-module Σ_i d_i (or Σ_i s_i·d_i): as `directions_from_diffs`."""
    return {name: _unit(t.double() / n_pairs) for name, t in sums.items()}


def balanced_signs(n: int, seed: int = 0) -> torch.Tensor:
    """±1 labels with Σ = 0 (or 1), in random order: a coin flip per pair would keep a random
    fraction (Σs/n) of the true direction in the 'shuffled' control."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.tensor([1] * ((n + 1) // 2) + [-1] * (n // 2))
    return signs[torch.randperm(n, generator=g)]


def random_unit_directions(sizes: dict[str, int], n: int, seed: int = 0
                           ) -> dict[str, torch.Tensor]:
    """n independent Haar-random unit vectors per module, (n, size): a null distribution of
    directions (not mutually orthogonal, so n may exceed the size)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, r in sizes.items():
        d = torch.randn(n, r, generator=g)
        out[name] = d / d.norm(dim=-1, keepdim=True)
    return out


def random_directions(sizes: dict[str, int], k: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Haar-random orthonormal (k, size) per module (QR of a Gaussian with sign-fixed R)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, r in sizes.items():
        q, rr = torch.linalg.qr(torch.randn(r, min(k, r), generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(rr))[None, :]
        out[name] = q.T.contiguous().float()
    return out


def orthogonalise(C: dict[str, torch.Tensor], V: dict[str, torch.Tensor], seed: int = 0,
                  rel_tol: float = 1e-6) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Per module, C's rows with their component in span(V's rows) removed, re-orthonormalised.
    Where nothing is left (C inside span(V), e.g. one pair, or k > 1 where label flips leave the
    SVD subspace unchanged), a Haar-random direction orthogonal to V stands in; those modules are
    returned too, to be reported."""
    g = torch.Generator().manual_seed(seed)
    out, fallback = {}, []
    for name, c in C.items():
        v = V[name].double()
        c = c.double()
        resid = c - (c @ v.T) @ v
        if resid.norm(dim=-1).min() <= rel_tol * max(c.norm(dim=-1).max().item(), 1e-30):
            fallback.append(name)
            x = torch.randn(c.shape, generator=g, dtype=torch.float64)
            resid = x - (x @ v.T) @ v
        q, rr = torch.linalg.qr(resid.T)  # orthonormal columns spanning the residual, signs kept
        q = (q * torch.where(torch.diagonal(rr) < 0, -1.0, 1.0)[None, :]).T
        q = q - (q @ v.T) @ v  # a second pass: orthogonal to v_hack to double rounding
        out[name] = (q / q.norm(dim=-1, keepdim=True)).contiguous().float()
    if fallback:
        log.warning("shuffled control: %d of %d modules had no component outside v_hack; "
                    "a random direction orthogonal to v_hack stands in there", len(fallback), len(C))
    return out, fallback


def shuffled_directions(diffs: dict[str, torch.Tensor], V: dict[str, torch.Tensor], config: VHackConfig
                        ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The shuffled-label control. Balanced flips (Σ signs = 0) cancel the mean hack signal, but
    with few pairs the flipped mean is a combination of the same P difference vectors as v_hack
    itself, so its cosine with v_hack is O(1/√P), not the O(1/√r) of a random direction, and a
    component shared by all pairs (e.g. length) can align it strongly either way (−0.79 measured on
    16 pairs). Removing its v_hack component (Gram-Schmidt) leaves a direction that is still built
    from the pairs' gradients but carries nothing of v_hack: exactly the neutral control R3 needs."""
    signs = balanced_signs(next(iter(diffs.values())).shape[0], config.seed)
    C = directions_from_diffs(diffs, config.k, config.noise_floor, signs=signs)
    return _finish_shuffled(C, V, config)


def _finish_shuffled(C: dict[str, torch.Tensor], V: dict[str, torch.Tensor], config: VHackConfig
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The flipped-label directions as the configured control: as they are, or orthogonalised."""
    if config.shuffled == "balanced":
        return C, []
    if config.shuffled != "orthogonal":
        raise ValueError(f"VHackConfig.shuffled must be 'orthogonal' or 'balanced', "
                         f"not {config.shuffled!r}")
    return orthogonalise(C, V, config.seed)


# A control is invalid when its alignment with v_hack is one a Haar-random V would show rarely:
MEAN_Z_MAX = 4.0  # |mean over modules of cos| > 4 null SDs (√(Σ_m 1/r_m)/M): P ≈ 6e-5 for random V
RMS_RATIO_MAX = 3.0  # per-module RMS overlap > 3 × √(mean_m k/r_m), the random-V level (facts §5)


def control_alignment(C: dict[str, torch.Tensor], V: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How far control `C` is from v_hack `V`: per module the signed cosine of the principal rows
    and the subspace overlap ‖C Vᵀ‖_F/√k (= |cos| for k = 1; ≈ √(k/r) for a random C); overall the
    mean signed cosine (for k = 1 the cosine of the concatenated unit vectors) and the RMS
    overlap, each with the threshold above which the control is called invalid."""
    cos, overlap, null_var, k_over_r = {}, {}, [], []
    for name, v in V.items():
        c = C[name].double()
        v = v.double()
        k, r = v.shape
        cos[name] = float(c[0] @ v[0])
        overlap[name] = float((c @ v.T).norm() / math.sqrt(k))
        null_var.append(1.0 / r)
        k_over_r.append(k / r)
    m = len(V)
    mean = sum(cos.values()) / m
    rms = math.sqrt(sum(o * o for o in overlap.values()) / m)
    mean_max = MEAN_Z_MAX * math.sqrt(sum(null_var)) / m
    rms_max = RMS_RATIO_MAX * math.sqrt(sum(k_over_r) / m)
    return {"mean_cos": mean, "rms_overlap": rms, "max_abs_cos": max(abs(c) for c in cos.values()),
            "mean_cos_max": mean_max, "rms_overlap_max": rms_max,
            "random_null_rms": math.sqrt(sum(k_over_r) / m),
            "valid": abs(mean) <= mean_max and rms <= rms_max,
            "per_module_cos": cos}


def directions_and_controls(diffs: dict[str, torch.Tensor], config: VHackConfig, name: str = "nll"
                            ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """A method's direction (key `name`) and both controls ('shuffled', 'random') from its pair
    differences, plus extraction statistics (each control's alignment with the direction)."""
    V = directions_from_diffs(diffs, config.k, config.noise_floor)
    shuffled = shuffled_directions(diffs, V, config)
    # how consistently pairs agree with the extracted direction (1.0 = every pair hack-ward)
    agree = torch.stack([(diffs[n].double() @ V[n][0].double() > 0).double().mean()
                         for n in diffs]).mean().item()
    return with_controls(V, shuffled, agree, next(iter(diffs.values())).shape[0], config, name)


def with_controls(V: dict[str, torch.Tensor], shuffled: tuple[dict[str, torch.Tensor], list[str]],
                  agree: float, n_pairs: int, config: VHackConfig, name: str = "nll"
                  ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """`directions_and_controls`' result from its parts, however they were computed: V, the
    shuffled control with its fallback modules, and the pairs' agreement with V."""
    shuffled, fallback = shuffled
    sizes = {n: v.shape[1] for n, v in V.items()}
    vs = {name: V, "shuffled": shuffled, "random": random_directions(sizes, config.k, config.seed)}
    controls = {kind: control_alignment(vs[kind], V) for kind in ("random", "shuffled")}
    controls["shuffled"]["construction"] = config.shuffled
    controls["shuffled"]["fallback_modules"] = fallback
    stats = {"n_pairs": n_pairs, "n_modules": len(V),
             "pair_agreement": agree, f"mean_cos_shuffled_vs_{name}": controls["shuffled"]["mean_cos"],
             "controls": controls}
    return vs, stats


def extract_directions(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair],
                       config: VHackConfig, name: str = "nll", desc: str = "v_hack pairs",
                       pair_grads: PairGrads = nll_pair_grads
                       ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """A method's direction and both controls, with `directions_and_controls`' statistics: from
    the stored differences where they fit host memory (`store_pair_diffs`), else (k = 1 only)
    streamed: one pass summing Σ d_i and Σ s_i·d_i per module, a second for pair_agreement."""
    if not _streamable(config.k, len(pairs), adapter.sizes):
        diffs = pair_grad_diffs(adapter, tokenizer, pairs, config.batch_size, desc, pair_grads)
        return directions_and_controls(diffs, config, name)
    n = len(pairs)
    total, signed = pair_grad_sums(adapter, tokenizer, pairs, config.batch_size,
                                   balanced_signs(n, config.seed), desc, pair_grads)
    V = directions_from_sums(total, n)
    shuffled = _finish_shuffled(directions_from_sums(signed, n), V, config)
    agree = pair_agreement(adapter, tokenizer, pairs, V, config.batch_size,
                           f"{desc} (agreement)", pair_grads)
    return with_controls(V, shuffled, agree, n, config, name)


def extract_direction(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair], config: VHackConfig,
                      desc: str = "v_hack pairs") -> dict[str, torch.Tensor]:
    """The NLL v_hack alone (no controls, no statistics): stored or streamed as
    `extract_directions`, one pass either way."""
    if not _streamable(config.k, len(pairs), adapter.sizes):
        diffs = pair_grad_diffs(adapter, tokenizer, pairs, config.batch_size, desc)
        return directions_from_diffs(diffs, config.k, config.noise_floor)
    total, _ = pair_grad_sums(adapter, tokenizer, pairs, config.batch_size, desc=desc)
    return directions_from_sums(total, len(pairs))


def extract_all(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair], config: VHackConfig
                ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The NLL v_hack and both controls from the pairs (`extract_directions`); plus extraction
    statistics (each control's alignment with v_hack among them)."""
    vs, stats = extract_directions(adapter, tokenizer, pairs, config, "nll")
    stats["hack_styles"] = sorted({p.hack_style for p in pairs})
    return vs, stats


def save_vhack(path: str | Path, V: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    tensors = {n: v.detach().float().cpu().contiguous() for n, v in V.items()}
    md = {"format": FORMAT, "modules": json.dumps(list(V)),
          **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=md)
    return Path(path)


def load_vhack(path: str | Path, sizes: dict[str, int] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load V; with `sizes` (the adapter's flat size per module), any module or size mismatch is
    a clear error."""
    path = Path(path)
    V, meta = read_safetensors(path, FORMAT, "a v_hack file", VHackMismatchError)
    if sizes is not None:
        check_names_and_sizes({n: v.shape[-1] for n, v in V.items()}, sizes, f"{path}: v_hack",
                              VHackMismatchError)
    for name, v in V.items():  # projection assumes orthonormal rows: a file that breaks it is bad
        try:
            check_orthonormal(v, f"{path}: v_hack module {name}")
        except ValueError as e:
            raise VHackMismatchError(str(e)) from None
    return V, meta
