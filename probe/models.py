"""Strictly offline loading of the base policy, its tokenizer and the merged LoRA teacher.

No machine running this project can reach a hub, so every loader resolves a *local* directory first
(a path, or a hub id's snapshot in the local HF cache) and passes `local_files_only=True`; a missing
model is a `ModelNotFoundError` that says how to fetch it, never a hang on a network timeout.

The teacher is base + LoRA, merged. A merge can fail silently in two ways that would poison every
downstream measurement: the adapter does not fit the base (wrong model, renamed modules: PEFT may
then load nothing and keep B = 0), or the returned model still carries base weights (merge skipped,
adapter merely unloaded). `load_merged_teacher` checks the adapter against the base before wrapping
and checks the merge afterwards: every adapted weight changed, and merged logits equal the unmerged
PeftModel's logits on a probe batch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

KINDS = {"model": ("config.json",), "adapter": ("adapter_config.json",),
         "tokenizer": ("tokenizer.json", "tokenizer_config.json")}
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Relative Frobenius error allowed between merged and unmerged logits, by compute dtype: merging
# rounds W + BA into the weight dtype, which bf16 does coarsely over 36 layers.
LOGIT_REL_TOL = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 2e-2,
                 torch.bfloat16: 5e-2}
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_CACHE_SNAPSHOT = re.compile(r"(?:^|/)(?:models|datasets)--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/")


class ModelNotFoundError(FileNotFoundError):
    """A model / adapter / tokenizer is neither a local directory nor in the local HF cache."""


class AdapterMismatchError(ValueError):
    """The adapter was trained for another base: name, target modules or weight shapes differ."""


class MergeCheckError(RuntimeError):
    """The merged teacher is not base + adapter (weights unchanged, or logits differ)."""


# ---------------------------------------------------------------------------------------------
# Offline resolution


def hub_cache_dir() -> Path:
    """The HF hub cache as the environment names it *now* (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Force HF offline mode for the duration of a load, env *and* the already-imported constant."""
    from huggingface_hub import constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_const = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_const
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s.count("/") > 1 or os.sep in s.replace("/", "")


def _how_to_get(path_or_id: str, kind: str) -> str:
    repo = path_or_id if not _looks_like_path(path_or_id) else "<org>/<name>"
    return (f"On a machine with hub access run `huggingface-cli download {repo}` (or `hf download "
            f"{repo}`), copy the directory here and pass its path, or copy the HF cache and set "
            f"HF_HOME / HF_HUB_CACHE to it. This project never downloads ({kind}).")


def resolve_local(path_or_id: str, kind: str = "model", cache_dir: str | Path | None = None) -> Path:
    """A local directory for `path_or_id`: the directory itself, or a hub id's cached snapshot.

    Never downloads. `kind` ('model', 'adapter', 'tokenizer') decides which file must be present,
    so a wrong directory fails here, naming the missing file, rather than deep inside transformers.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    p = Path(str(path_or_id)).expanduser()
    if p.is_dir():
        found = p
    elif p.exists():
        raise ModelNotFoundError(f"{kind} path {str(path_or_id)!r} is a file; expected a directory")
    elif _looks_like_path(str(path_or_id)) or not str(path_or_id).strip():
        raise ModelNotFoundError(
            f"{kind} {str(path_or_id)!r} not found: no such directory (and a path is not a hub "
            f"id '<org>/<name>'). {_how_to_get(str(path_or_id), kind)}")
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
        try:
            with offline():
                found = Path(snapshot_download(str(path_or_id), cache_dir=str(cache),
                                               local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
            found = _single_snapshot(cache, str(path_or_id))
            if found is not None:
                log.warning("%s: no refs/main in the HF cache; using its only snapshot %s",
                            path_or_id, found)
                return _require_files(found, str(path_or_id), kind)
            raise ModelNotFoundError(
                f"{kind} {str(path_or_id)!r} not found: not a local directory and no snapshot in the "
                f"local HF cache {cache} ({type(e).__name__}). {_how_to_get(str(path_or_id), kind)}"
            ) from None
    return _require_files(found, str(path_or_id), kind)


def _single_snapshot(cache: Path, repo_id: str) -> Path | None:
    """The one snapshot of a cached repo whose refs/ was not copied along (common with rsync -L)."""
    snaps = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    found = [p for p in snaps.iterdir() if p.is_dir()] if snaps.is_dir() else []
    return found[0] if len(found) == 1 else None


def _require_files(found: Path, path_or_id: str, kind: str) -> Path:
    needed = KINDS[kind]
    if not any((found / f).is_file() for f in needed):
        raise ModelNotFoundError(
            f"{kind} directory {found} (for {path_or_id!r}) lacks {' or '.join(needed)}; "
            f"is it a complete {kind} download? {_how_to_get(path_or_id, kind)}")
    return found


def pick_device_dtype(device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """cuda + bf16 when CUDA is there (or asked for), else cpu + float32 (bf16 on CPU is slow)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {dev} requested but CUDA is not available on this machine")
        return dev, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return dev, torch.float32


def _device_dtype(device: Any, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    dev, default = pick_device_dtype(device)
    return dev, dtype or default


# ---------------------------------------------------------------------------------------------
# Loaders


def load_tokenizer(path_or_id: str) -> Any:
    """Offline fast tokenizer; pad_token falls back to eos so batched generation can pad."""
    from transformers import AutoTokenizer

    d = resolve_local(path_or_id, "tokenizer")
    with offline():
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {path_or_id!r} has neither pad_token nor eos_token")
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(path_or_id: str, device: Any = None, dtype: torch.dtype | None = None
                    ) -> PreTrainedModel:
    """Offline causal LM in eval mode on `device` (default: pick_device_dtype)."""
    from transformers import AutoModelForCausalLM

    d = resolve_local(path_or_id, "model")
    dev, dt = _device_dtype(device, dtype)
    with offline():
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dt, local_files_only=True)
    model = model.to(dev).eval()
    log.info("loaded base %s from %s (%s, %s)", path_or_id, d, dev, dt)
    return model


# ---------------------------------------------------------------------------------------------
# Adapter checks


def model_id_from_path(path_or_id: str | None) -> str | None:
    """`Qwen/Qwen3-4B` from a hub id, an HF cache snapshot path, or a dir named after the model."""
    if not path_or_id:
        return None
    s = str(path_or_id).rstrip("/")
    m = _CACHE_SNAPSHOT.search(s)
    if m:
        return f"{m['org']}/{m['name']}"
    return s


def _basename(name: str | None) -> str | None:
    name = model_id_from_path(name)
    return name.rsplit("/", 1)[-1].lower() if name else None


def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """adapter_config.json and the adapter's tensors (CPU), as PEFT saved them."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    for fname in ADAPTER_WEIGHT_FILES:
        f = adapter_dir / fname
        if f.is_file():
            if fname.endswith(".safetensors"):
                from safetensors.torch import load_file

                return cfg, load_file(str(f))
            return cfg, torch.load(str(f), map_location="cpu", weights_only=True)
    raise ModelNotFoundError(f"adapter directory {adapter_dir} has none of {ADAPTER_WEIGHT_FILES}")


def check_adapter_fits(base: torch.nn.Module, adapter_cfg: dict[str, Any],
                       tensors: dict[str, torch.Tensor], base_id: str | None = None) -> list[str]:
    """Raise AdapterMismatchError unless the adapter fits `base`; return the adapted module names.

    Checks, in order: base model name (by basename, only when both are known), PEFT type, target
    module names exist in the base, every LoRA tensor maps to a base Linear of matching shape.
    """
    want = _basename(adapter_cfg.get("base_model_name_or_path"))
    have = _basename(base_id)
    if want and have and want != have:
        raise AdapterMismatchError(
            f"adapter was trained on base_model_name_or_path="
            f"{adapter_cfg.get('base_model_name_or_path')!r} but the base is {base_id!r} (names are "
            f"compared by basename; if the base dir is not named after the model, pass base_id)")
    if adapter_cfg.get("peft_type", "LORA").upper() != "LORA":
        raise AdapterMismatchError(f"adapter peft_type is {adapter_cfg.get('peft_type')!r}, not LORA")
    modules = dict(base.named_modules())
    targets = adapter_cfg.get("target_modules") or []
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, n) for n in modules):
            raise AdapterMismatchError(f"adapter target_modules regex {targets!r} matches no module "
                                       f"of the base")
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
        if missing:
            raise AdapterMismatchError(f"adapter target_modules {missing} do not exist in the base "
                                       f"({type(base).__name__})")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, t in tensors.items():
        m = _LORA_KEY.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["ab"]] = tuple(t.shape)
    if not pairs:
        raise AdapterMismatchError("adapter weights contain no lora_A / lora_B tensors")
    for name, ab in sorted(pairs.items()):
        mod = modules.get(name)
        if mod is None:
            raise AdapterMismatchError(f"adapter weights name module {name!r}, which the base lacks")
        if not isinstance(mod, torch.nn.Linear):
            raise AdapterMismatchError(f"adapter targets {name!r}, a {type(mod).__name__}, not Linear")
        if set(ab) != {"A", "B"}:
            raise AdapterMismatchError(f"adapter module {name!r} has lora_{set('AB') - set(ab)} missing")
        a, b = ab["A"], ab["B"]
        if a[1] != mod.in_features or b[0] != mod.out_features or a[0] != b[1]:
            raise AdapterMismatchError(
                f"adapter module {name!r}: lora_A {a} / lora_B {b} do not fit the base Linear "
                f"(in={mod.in_features}, out={mod.out_features})")
    return sorted(pairs)


# ---------------------------------------------------------------------------------------------
# Merge with checks


def _fingerprint(w: torch.Tensor) -> tuple[int, int]:
    """An exact, cheap digest of a weight's bits: any changed element changes it (w.h.p.)."""
    bits = w.detach().contiguous().view(-1)
    ints = bits.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[bits.element_size()])
    ints = ints.to(torch.int64)
    pos = torch.arange(ints.numel(), device=ints.device, dtype=torch.int64) % 1_000_003 + 1
    return int(ints.sum()), int((ints * pos).sum())


def probe_batch(model: torch.nn.Module, batch: int = 2, length: int = 16, seed: int = 0
                ) -> torch.Tensor:
    """Deterministic token ids inside the vocabulary, to compare models on identical inputs."""
    vocab = int(getattr(model.config, "vocab_size", 1000))
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab, 1000), (batch, length), generator=gen)


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    dev = next(model.parameters()).device
    return model(input_ids=ids.to(dev)).logits.float().cpu()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def load_merged_teacher(base: str | PreTrainedModel, adapter_path_or_id: str, device: Any = None,
                        dtype: torch.dtype | None = None, check: bool = True,
                        base_id: str | None = None) -> PreTrainedModel:
    """Base + LoRA adapter, merged into plain weights and verified (see module docstring).

    `base` is a path / hub id (loaded offline) or a loaded model, which is merged *in place*.
    `base_id` names the base for the adapter's `base_model_name_or_path` check; it defaults to the
    path / id given or the model's `name_or_path`. Returns the merged model in eval mode; its
    `probe_merge_report` attribute holds the check's numbers.
    """
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(base, (str, os.PathLike)):
        base_id = base_id or model_id_from_path(str(base))
        model = load_base_model(str(base), device, dtype)
    else:
        model = base
        base_id = base_id or model_id_from_path(getattr(model.config, "name_or_path", None))
        if device is not None or dtype is not None:
            dev, dt = _device_dtype(device, dtype or next(model.parameters()).dtype)
            model = model.to(device=dev, dtype=dt)
    model.eval()
    adapter_dir = resolve_local(adapter_path_or_id, "adapter")
    cfg, tensors = read_adapter(adapter_dir)
    adapted = check_adapter_fits(model, cfg, tensors, base_id)
    del tensors
    compute_dtype = next(model.parameters()).dtype
    ids = probe_batch(model)
    report: dict[str, Any] = {"adapter": str(adapter_dir), "base_id": base_id,
                              "adapted_modules": len(adapted), "dtype": str(compute_dtype)}
    if check:
        modules = dict(model.named_modules())
        before = {n: _fingerprint(modules[n].weight) for n in adapted}
        base_logits = _logits(model, ids)
    with offline():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    if check:
        unmerged = _logits(peft_model, ids)
    merged = peft_model.merge_and_unload()
    merged.eval()
    if not check:
        return merged
    leftovers = [n for n, m in merged.named_modules() if isinstance(m, BaseTunerLayer)]
    if leftovers:
        raise MergeCheckError(f"merged model still carries {len(leftovers)} LoRA layers (e.g. "
                              f"{leftovers[0]!r}): the adapter was not merged")
    mods = dict(merged.named_modules())
    unchanged = [n for n in adapted if n not in mods or _fingerprint(mods[n].weight) == before[n]]
    if unchanged:
        raise MergeCheckError(
            f"{len(unchanged)}/{len(adapted)} adapted modules kept the base weight after merging "
            f"(e.g. {unchanged[0]!r}): base weights leak through, the merge did not happen")
    merged_logits = _logits(merged, ids)
    tol = LOGIT_REL_TOL.get(compute_dtype, 5e-2)
    err = _rel_err(unmerged, merged_logits)
    effect = _rel_err(unmerged, base_logits)
    report.update(merged_vs_unmerged=err, adapter_effect=effect, tol=tol,
                  changed_modules=len(adapted) - len(unchanged))
    if not torch.isfinite(merged_logits).all():
        raise MergeCheckError("merged model produces non-finite logits on the probe batch")
    if err > tol:
        raise MergeCheckError(
            f"merged logits differ from the unmerged PeftModel's: relative error {err:.3g} > "
            f"{tol:g} ({compute_dtype}); adapter effect on logits was {effect:.3g}")
    if effect > tol and err >= effect:
        raise MergeCheckError(f"merged logits are no closer to the adapter's ({err:.3g}) than the "
                              f"base's are ({effect:.3g})")
    log.info("merged teacher %s: %d modules, logits rel err %.2e (adapter effect %.2e)",
             adapter_path_or_id, len(adapted), err, effect)
    merged.probe_merge_report = report
    return merged
