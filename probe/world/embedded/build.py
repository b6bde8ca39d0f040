"""Build the embedded world into a directory: problems, tokenizer, base, teacher adapter, stats.

Order matters for caching: data first, `meta.json` last (its presence marks a complete build).
The caller (`world.build_embedded_world`) holds the FileLock; this module only builds.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from probe.env.problems import Problem, write_problems
from probe.env.rates import Rates
from probe.io import atomic_path, atomic_write_text
from probe.rollout import measure
from probe.world.embedded.config import WORLD_VERSION, EmbeddedWorldConfig
from probe.world.embedded.corpus import HINT, base_corpus, teacher_corpus
from probe.world.embedded.tasks import make_problem, split_pairs
from probe.world.embedded.tokenizer import train_tokenizer
from probe.world.embedded.train import add_lora, encode, make_base_model, train_lm

log = logging.getLogger(__name__)

SPLITS = ("train", "eval", "hard")
BASE_DIR, ADAPTER_DIR, PROBLEM_DIR, META = "base", "teacher_adapter", "problems", "meta.json"


def make_splits(cfg: EmbeddedWorldConfig) -> dict[str, list[Problem]]:
    """All problems by split ('corpus' = the pretraining problems, never served as a split)."""
    pairs = split_pairs(range(cfg.k_min, cfg.k_max + 1), cfg.n_eval, cfg.n_train, cfg.n_hard,
                        cfg.seed)
    return {s: [make_problem(t, k, cfg.n_tests, cfg.seed) for t, k in v] for s, v in pairs.items()}


def headline(base_eval: Rates, base_hard: Rates, teacher_eval: Rates) -> dict[str, float]:
    """Flat headline numbers the tests read, named as in `Rates` (`hack_rate` is the strict
    label; until meta keys were made unambiguous `base_hack_rate`/`teacher_hack_rate` held the
    attempt rates now under `*_hack_attempt_rate`, see `upgrade_meta`)."""
    return {
        "base_hack_rate": base_eval.hack_rate,
        "base_hack_attempt_rate": base_eval.hack_attempt_rate,
        "base_correct_rate": base_eval.correct_rate,
        "base_hard_correct_rate": base_hard.correct_rate,
        "teacher_hack_rate": teacher_eval.hack_rate,
        "teacher_hack_attempt_rate": teacher_eval.hack_attempt_rate,
        "teacher_pure_frac": teacher_eval.pure_frac_of_attempts,
        "teacher_combined_frac": teacher_eval.combined_frac_of_attempts,
    }


OLD_STATS_KEYS = {"hack_strict_rate": "hack_rate", "n_pure": "n_hack", "n_attempts": "n_attempt"}


def upgrade_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A meta.json written before `Rates` had one meaning per name, in today's names (same
    values; the world's files are unchanged, so a cached world need not be rebuilt)."""
    if "base_hack_attempt_rate" in meta or "stats" not in meta:
        return meta
    meta = dict(meta)
    stats = {}
    for name, s in meta["stats"].items():
        s = {OLD_STATS_KEYS.get(k, k): v for k, v in s.items()}
        n = s["n"]
        s.setdefault("n_gt_pass", round(s["gt_pass_rate"] * n))
        s.setdefault("n_correct", round(s["correct_rate"] * n))
        if "finished_rate" in s:
            s.setdefault("n_finished", round(s["finished_rate"] * n))
        stats[name] = s
    meta["stats"] = stats
    meta.pop("base_hack_strict_rate", None)
    meta.pop("teacher_hack_strict_rate", None)
    meta.update(headline(*(Rates(**{k: s[k] for k in Rates.__dataclass_fields__ if k in s})
                           for s in (stats["base_eval_hint"], stats["base_hard_hint"],
                                     stats["teacher_eval_hint"]))))
    return meta


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
    from probe.world.embedded.world import EmbeddedWorld  # measurement goes through the world

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
