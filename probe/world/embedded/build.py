"""Build the embedded world into a directory: problems, tokenizer, base, teacher adapter, stats.

Order matters for caching: data first, `meta.json` last (its presence marks a complete build).
`build_embedded_world` is the entry point: it loads a cached build, or builds under a FileLock.
The build measures the new world through its reader (`world.EmbeddedWorld`), which never imports
this module: the dependency runs one way.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from probe.env.problems import Problem, write_problems
from probe.io import atomic_path, atomic_write_text
from probe.rollout import measure
from probe.world.embedded.config import WORLD_VERSION, EmbeddedWorldConfig
from probe.world.embedded.corpus import HINT, base_corpus, teacher_corpus
from probe.world.embedded.files import ADAPTER_DIR, BASE_DIR, META, PROBLEM_DIR, SPLITS
from probe.world.embedded.meta import headline
from probe.world.embedded.tasks import make_problem, split_pairs
from probe.world.embedded.tokenizer import train_tokenizer
from probe.world.embedded.train import add_lora, encode, make_base_model, train_lm
from probe.world.embedded.world import EmbeddedWorld, load_built

log = logging.getLogger(__name__)


def make_splits(cfg: EmbeddedWorldConfig) -> dict[str, list[Problem]]:
    """All problems by split ('corpus' = the pretraining problems, never served as a split)."""
    pairs = split_pairs(range(cfg.k_min, cfg.k_max + 1), cfg.n_eval, cfg.n_train, cfg.n_hard,
                        cfg.seed)
    return {s: [make_problem(t, k, cfg.n_tests, cfg.seed) for t, k in v] for s, v in pairs.items()}


def build_world_dir(cfg: EmbeddedWorldConfig, root: Path) -> dict[str, Any]:
    """Build everything under `root` (emptied first) and return the meta written last.

    Runs with `cfg.n_threads` torch threads (fixed, so a config trains the same model) and gives
    the caller's thread count back afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.n_threads)
    try:
        return _build(cfg, root)
    finally:
        torch.set_num_threads(threads)


def _build(cfg: EmbeddedWorldConfig, root: Path) -> dict[str, Any]:
    t0 = time.time()
    if root.exists():
        shutil.rmtree(root)
    (root / PROBLEM_DIR).mkdir(parents=True)
    splits = make_splits(cfg)
    for s in (*SPLITS, "corpus"):
        with atomic_path(root / PROBLEM_DIR / f"{s}.jsonl") as tmp:
            write_problems(splits[s], tmp)
    base_texts, teacher_texts = base_corpus(splits["corpus"], cfg), teacher_corpus(splits["corpus"], cfg)
    tok = train_tokenizer([t.prompt + t.completion for t in base_texts + teacher_texts], cfg.vocab_size)
    timings = {"data_s": time.time() - t0}

    model = make_base_model(cfg, tok)
    base_losses = train_lm(model, encode(tok, base_texts), steps=cfg.base_steps, lr=cfg.base_lr,
                           batch_size=cfg.batch_size, warmup=cfg.warmup_steps,
                           pad_id=tok.pad_token_id, seed=cfg.seed, desc="base")
    model.save_pretrained(root / BASE_DIR)
    tok.save_pretrained(root / BASE_DIR)
    timings["base_s"] = time.time() - t0 - sum(timings.values())

    model_id = f"embedded-qwen3-{cfg.hash()}"
    model.config.name_or_path = model_id  # the adapter's base_model_name_or_path, checked on load
    peft_model = add_lora(model, cfg)
    teacher_losses = train_lm(peft_model, encode(tok, teacher_texts), steps=cfg.teacher_steps,
                              lr=cfg.teacher_lr, batch_size=cfg.batch_size, warmup=10,
                              pad_id=tok.pad_token_id, seed=cfg.seed + 1, desc="teacher")
    peft_model.save_pretrained(root / ADAPTER_DIR)
    del peft_model, model
    timings["teacher_s"] = time.time() - t0 - sum(timings.values())

    world = EmbeddedWorld(name="embedded", root=root, config=cfg,
                          meta={"model_id": model_id})
    kw = dict(seed=cfg.seed + 7, temperature=cfg.temperature, top_p=cfg.top_p,
              max_new_tokens=cfg.max_new_tokens)
    base = world.load_base()
    _, base_eval = measure(base, world, world.problems("eval"), HINT, n=cfg.n_measure_base,
                           desc="base/eval/hint", **kw)
    _, base_hard = measure(base, world, world.problems("hard"), HINT, n=cfg.n_measure_hard,
                           desc="base/hard/hint", **kw)
    teacher = world.load_teacher()
    _, teacher_eval = measure(teacher, world, world.problems("eval"), HINT,
                              n=cfg.n_measure_teacher, desc="teacher/eval/hint", **kw)
    timings["measure_s"] = time.time() - t0 - sum(timings.values())
    meta = {
        "model_id": world.meta["model_id"],
        "world_version": WORLD_VERSION,
        "config_hash": cfg.hash(),
        "config": cfg.to_dict(),
        "n_params": sum(p.numel() for p in base.parameters()),
        "vocab_size": len(tok),
        "n_problems": {s: len(v) for s, v in splits.items()},
        "n_texts": {"base": len(base_texts), "teacher": len(teacher_texts)},
        "final_loss": {"base": sum(base_losses[-20:]) / 20, "teacher": sum(teacher_losses[-20:]) / 20},
        "stats": {"base_eval_hint": base_eval.to_dict(), "base_hard_hint": base_hard.to_dict(),
                  "teacher_eval_hint": teacher_eval.to_dict()},
        **headline(base_eval, base_hard, teacher_eval),
        "timings": timings,
        "build_seconds": time.time() - t0,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    atomic_write_text(root / META, json.dumps(meta, indent=2, sort_keys=True))
    log.info("embedded world built in %.1fs at %s", meta["build_seconds"], root)
    return meta


def build_embedded_world(config: EmbeddedWorldConfig | None = None, *, out_dir: str | Path = "out",
                         refresh: bool = False) -> EmbeddedWorld:
    """Build (or load the cached) embedded world for `config` under `out_dir/world/<hash>/`.

    xdist-safe: one process builds under the lock, the others wait and then load. With
    `refresh`, a build finished by another process after this call began counts as fresh.
    """
    cfg = config or EmbeddedWorldConfig()
    root = Path(out_dir) / "world" / cfg.hash()
    meta = root / META
    if meta.is_file() and not refresh:
        return load_built(root, cfg)
    asked = time.time()
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if meta.is_file() and (not refresh or meta.stat().st_mtime >= asked):
            return load_built(root, cfg)
        if meta.is_file():
            meta.unlink()  # the completion mark goes first: no reader trusts a half-rebuilt dir
        log.info("building embedded world %s (config %s)", root, cfg.hash())
        build_world_dir(cfg, root)
        return load_built(root, cfg)
