"""v_hack: per-module hack-ward directions in the adapter's parameter space, and negative controls.

From contrastive pairs (same prompt, a hacking and a clean completion), each pair gives the
difference of per-completion mean-NLL gradients d_i = ∇L(hack_i) − ∇L(clean_i) per module. The
k=1 direction is the normalised mean difference; top-k takes the right singular vectors of the
stacked differences, each oriented hack-ward by majority vote. Controls from the same code: a Haar
random V of the same shapes, and a shuffled-label V (each pair's hack/clean labels swapped by a
coin flip before the same extraction). Gradients are loss gradients: a training gradient with a
positive component along v_hack pushes, under descent, toward the hacking completions.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from probe.adapters.antipasto import check_names_and_ranks, read_safetensors
from probe.adapters.base import Adapter
from probe.batch import collate
from probe.encoding import encode_completion, encode_prompt, pad_id
from probe.grads import per_sample_grads
from probe.io import atomic_path
from probe.world.base import Pair

log = logging.getLogger(__name__)
FORMAT = "probe.v_hack.v1"
KINDS = ("nll", "random", "shuffled")


class VHackMismatchError(ValueError):
    """A v_hack file does not fit the model's adapter (module names or ranks), or is corrupt."""


@dataclass(frozen=True)
class VHackConfig:
    k: int = 1  # directions per module: 1 = normalised mean difference; >1 = top-k SVD axes
    noise_floor: float = 0.0  # top-k: drop axes whose singular value < floor × the module's largest
    batch_size: int = 16  # pairs per batched backward
    seed: int = 0  # controls (random V, shuffled labels)


def pair_grad_diffs(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16,
                    desc: str = "v_hack pairs") -> dict[str, torch.Tensor]:
    """Per module, (P, r): ∇ mean-NLL(hack) − ∇ mean-NLL(clean) for each pair."""
    if not pairs:
        raise ValueError("no contrastive pairs to extract v_hack from")
    pid = pad_id(tokenizer)
    chunks: dict[str, list[torch.Tensor]] = {}
    device = next(iter(adapter.named_params().values())).device
    for i in tqdm(range(0, len(pairs), batch_size), desc=desc, leave=False):
        part = pairs[i:i + batch_size]
        prompts = [encode_prompt(tokenizer, p.prompt) for p in part]
        comps = [encode_completion(tokenizer, p.hack) for p in part] + \
                [encode_completion(tokenizer, p.clean) for p in part]
        batch = collate(prompts + prompts, comps, pid).to(device)
        grads = per_sample_grads(adapter, batch).grads
        n = len(part)
        for name, g in grads.items():
            chunks.setdefault(name, []).append((g[:n] - g[n:]).cpu())
    return {n: torch.cat(c) for n, c in chunks.items()}


def directions_from_diffs(diffs: dict[str, torch.Tensor], k: int = 1, noise_floor: float = 0.0,
                          signs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """(k, r) orthonormal rows per module; `signs` (P,) of ±1 flips pairs (the shuffled control)."""
    out = {}
    for name, d in diffs.items():
        d = d.double()
        if signs is not None:
            d = d * signs.double()[:, None]
        if k == 1:
            m = d.mean(0)
            out[name] = (m / m.norm().clamp(min=1e-30))[None].float()
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


def balanced_signs(n: int, seed: int = 0) -> torch.Tensor:
    """±1 labels with Σ = 0 (or 1), in random order: a coin flip per pair would keep a random
    fraction (Σs/n) of the true direction in the 'shuffled' control."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.tensor([1] * ((n + 1) // 2) + [-1] * (n // 2))
    return signs[torch.randperm(n, generator=g)]


def random_unit_directions(ranks: dict[str, int], n: int, seed: int = 0
                           ) -> dict[str, torch.Tensor]:
    """n independent Haar-random unit vectors per module, (n, r): a null distribution of
    directions (not mutually orthogonal, so n may exceed r)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, r in ranks.items():
        d = torch.randn(n, r, generator=g)
        out[name] = d / d.norm(dim=-1, keepdim=True)
    return out


def random_directions(ranks: dict[str, int], k: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Haar-random orthonormal (k, r) per module (QR of a Gaussian with sign-fixed R)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, r in ranks.items():
        q, rr = torch.linalg.qr(torch.randn(r, min(k, r), generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(rr))[None, :]
        out[name] = q.T.contiguous().float()
    return out


def extract_all(adapter: Adapter, tokenizer: Any, pairs: Sequence[Pair], config: VHackConfig
                ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """v_hack and both controls from one pass over the pairs; plus extraction statistics."""
    diffs = pair_grad_diffs(adapter, tokenizer, pairs, config.batch_size)
    signs = balanced_signs(len(pairs), config.seed)
    ranks = {n: d.shape[1] for n, d in diffs.items()}
    vs = {"nll": directions_from_diffs(diffs, config.k, config.noise_floor),
          "shuffled": directions_from_diffs(diffs, config.k, config.noise_floor, signs=signs),
          "random": random_directions(ranks, config.k, config.seed)}
    # how consistently pairs agree with the extracted direction (1.0 = every pair hack-ward)
    agree = torch.stack([(diffs[n].double() @ vs["nll"][n][0].double() > 0).double().mean()
                         for n in diffs]).mean().item()
    # the shuffled control must not be a noisy copy of v_hack: report how close it came
    shuffled_cos = torch.stack([(vs["shuffled"][n][0].double() @ vs["nll"][n][0].double())
                                for n in diffs]).mean().item()
    stats = {"n_pairs": len(pairs), "n_modules": len(diffs), "pair_agreement": agree,
             "mean_cos_shuffled_vs_nll": shuffled_cos,
             "hack_styles": sorted({p.hack_style for p in pairs})}
    return vs, stats


def save_vhack(path: str | Path, V: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    tensors = {n: v.detach().float().cpu().contiguous() for n, v in V.items()}
    md = {"format": FORMAT, "modules": json.dumps(list(V)),
          **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=md)
    return Path(path)


def load_vhack(path: str | Path, ranks: dict[str, int] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load V; with `ranks` (the adapter's), any module or rank mismatch is a clear error."""
    path = Path(path)
    V, meta = read_safetensors(path, FORMAT, "a v_hack file", VHackMismatchError)
    if ranks is not None:
        check_names_and_ranks({n: v.shape[-1] for n, v in V.items()}, ranks, f"{path}: v_hack",
                              VHackMismatchError)
    return V, meta
