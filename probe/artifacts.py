"""Artifacts: config-hash cache keys, step files (jsonl.gz), manifests, validation.

Recording is separate from checking: stages write here, requirement checks only read. A step file
is written atomically and validated on read (complete gzip stream, every row parses, the expected
row count, required fields present); an invalid file is reported, never silently used. Every
manifest carries the resolved config, package versions, seed and git commit.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

from probe.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """An artifact is missing, partial, corrupt, or does not match the expected schema."""


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


AUTO = "auto"  # a batch knob's value that sizes it from free memory (probe.memory)


def auto_cap(cap: int) -> dict[str, int]:
    """Field metadata of a batch knob that may be "auto": the most it ever resolves to."""
    return {"auto_cap": cap}


def as_keyed(obj: Any) -> Any:
    """`obj` as it keys artifacts: an "auto" batch knob counts as its cap, which is what it
    resolves to wherever memory does not bind (the embedded world, a small model on a GPU) and
    what the knob's fixed default was, so those runs keep their keys and cached artifacts. A
    memory-bound machine's smaller batch changes sampled tokens, not their distribution: pin an
    int where runs must be bit-identical across machines."""
    if isinstance(obj, dict):
        return {k: as_keyed(v) for k, v in obj.items()}
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, str) and v == AUTO and "auto_cap" in f.metadata:
            changes[f.name] = f.metadata["auto_cap"]
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            keyed = as_keyed(v)
            if keyed is not v:
                changes[f.name] = keyed
    return dataclasses.replace(obj, **changes) if changes else obj


def config_hash(*parts: Any, length: int = 12) -> str:
    """A stable hash of configs (dataclasses/dicts): the cache key of what they produce."""
    blob = json.dumps([to_jsonable(as_keyed(p)) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


FULL_DIGEST_BYTES = 256 << 20  # files up to this size are hashed whole (configs, adapters, data)
SAMPLED_BLOCKS, BLOCK_BYTES = 16, 1 << 20


def file_digest(path: str | Path) -> str:
    """Content identity of one file. Files up to 256 MiB (problem files, configs, tokenizers, LoRA
    adapters) are hashed whole; larger ones (base weights, GBs) by their size plus 16 blocks of
    1 MiB spread evenly from the first byte to the last: seconds instead of minutes for Qwen3-4B,
    stable under copying and `touch` (unlike mtime), and any retrained checkpoint changes every
    block. An edit confined to unsampled bytes of a huge file is not seen (documented limit)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}:".encode())
    with path.open("rb") as fh:
        if size <= FULL_DIGEST_BYTES:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            span = size - BLOCK_BYTES
            for i in range(SAMPLED_BLOCKS):
                fh.seek(span * i // (SAMPLED_BLOCKS - 1))
                h.update(fh.read(BLOCK_BYTES))
    return h.hexdigest()[:16]


def tree_digest(path: str | Path) -> dict[str, str]:
    """`file_digest` of every file under a directory (a model or adapter folder; symlinks, as in
    the HF cache, followed), by relative path; hidden entries (`.cache/`, `.git`) are skipped."""
    root = Path(path)
    if root.is_file():
        return {root.name: file_digest(root)}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out[rel.as_posix()] = file_digest(p)
    return out


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import torch
    import transformers

    import probe

    v = {"python": platform.python_version(), "torch": torch.__version__,
         "transformers": transformers.__version__, "probe": probe.__version__}
    try:
        import peft

        v["peft"] = peft.__version__
    except ImportError:
        pass
    return v


def provenance(config: Any, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"config": to_jsonable(config), "seed": seed, "versions": versions(),
            "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **to_jsonable(extra)}


# -- step files -------------------------------------------------------------------------------

def step_path(stage_dir: Path, step: int) -> Path:
    return Path(stage_dir) / f"step_{step:03d}.jsonl.gz"


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as gzip JSON lines, atomically (a reader never sees a partial file)."""
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, allow_nan=True) + "\n")
    return Path(path)


def read_rows(path: Path, required: Sequence[str] = (), expected_rows: int | None = None
              ) -> list[dict[str, Any]]:
    """Read and validate a step file; raise ArtifactError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    rows = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ArtifactError(f"{path}:{i}: corrupt row ({e.msg})") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: corrupt or truncated ({e})") from None
    if expected_rows is not None and len(rows) != expected_rows:
        raise ArtifactError(f"{path}: {len(rows)} rows, expected {expected_rows} (partial?)")
    for i, row in enumerate(rows, 1):
        missing = [k for k in required if k not in row]
        if missing:
            raise ArtifactError(f"{path}:{i}: row lacks field {missing[0]!r}")
    return rows


def valid_step(path: Path, required: Sequence[str] = (), expected_rows: int | None = None) -> bool:
    """True if the file exists and validates; logs why not when it exists but is bad."""
    if not Path(path).exists():
        return False
    try:
        read_rows(path, required, expected_rows)
        return True
    except ArtifactError as e:
        log.warning("will regenerate: %s", e)
        return False


def read_stage(stage_dir: Path, n_steps: int | None = None, required: Sequence[str] = ()
               ) -> list[list[dict[str, Any]]]:
    """All step files of a stage, in order; checks the manifest says the stage completed."""
    stage_dir = Path(stage_dir)
    man = read_manifest(stage_dir)
    n = man.get("n_steps") if n_steps is None else n_steps
    if n is None:
        raise ArtifactError(f"{stage_dir}/manifest.json: no n_steps")
    return [read_rows(step_path(stage_dir, s), required) for s in range(n)]


# -- manifests ----------------------------------------------------------------------------------

def write_manifest(stage_dir: Path, data: dict[str, Any], name: str = "manifest.json") -> Path:
    """The completion mark of a stage: written last."""
    return atomic_write_text(Path(stage_dir) / name, json.dumps(to_jsonable(data), indent=1))


def read_manifest(stage_dir: Path, name: str = "manifest.json") -> dict[str, Any]:
    path = Path(stage_dir) / name
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (the stage has not completed)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: corrupt ({e})") from None


def point_latest(link_dir: Path, target: Path) -> None:
    """`<link_dir>/latest` names the newest run (a text file: symlinks do not travel everywhere)."""
    atomic_write_text(Path(link_dir) / "LATEST", str(Path(target).resolve()) + "\n")
    link = Path(link_dir) / "latest"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(Path(target).resolve(), link)
    except OSError:
        pass
