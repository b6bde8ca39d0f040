"""Batched sampling with a KV cache, left padding and a seed: the one generation path of the harness.

Prompts are sorted by length so a batch wastes little padding, then results are put back in input
order. Each batch reseeds from (seed, batch index), so the same prompts and seed give the same
completions on the same machine.

`compile=True` (CUDA): HF's static KV cache, whose decode step `generate` compiles (torch.compile,
CUDA graphs) once per shape. Shapes are fixed per call: every batch is left-padded to the call's
longest prompt rounded up to `prompt_bucket` and filled up to `batch_size` rows with copies of its
last prompt (dropped after), so a run compiles once per (batch, cache length) and HF keeps the
cache length at the largest seen. Eager generation is host-bound (tens of ms of kernel launches
per token at 4B); the compile costs about a minute per shape (benchmarks/bench_real_shape.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from probe.memory import MAX_AUTO_BATCH, oom_names_knob, resolve_generation_batch

log = logging.getLogger(__name__)

COMPILE_ON_CUDA = False  # compile=None: the default on CUDA (CPU never compiles by default)
PROMPT_BUCKET = 256


@dataclass
class GenerationStats:
    """What the last `generate` call did: seconds per batch (the first batch of a new shape
    includes its compile), and the shapes it ran."""

    compiled: bool = False
    batch_seconds: list[float] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)  # (rows, prompt width)


LAST_STATS = GenerationStats()


@dataclass
class Sample:
    """One completion; `completion_ids` exclude padding and include the final eos if produced."""

    prompt: str
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool  # hit eos before max_new_tokens


def stop_ids(model, tokenizer) -> set[int]:
    """Every token that ends a completion: the tokenizer's eos and the model's generation_config
    eos list (Qwen3 stops on both <|im_end|> and <|endoftext|>)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation_config has an eos token")
    return {int(i) for i in ids}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, temperature: float = 0.7, top_p: float = 0.95,
             max_new_tokens: int = 256, seed: int = 0, batch_size: int | str = 64,
             desc: str | None = None, compile: bool | None = None,
             prompt_bucket: int = PROMPT_BUCKET, knob: str = "gen_batch_size",
             cap: int = MAX_AUTO_BATCH) -> list[Sample]:
    """Sample one completion per prompt (greedy when temperature == 0).

    `batch_size="auto"` sizes batches from free memory (probe.memory), at most `cap`; `knob` (the
    config key it came from) is named when nothing fits or a batch runs out of memory.
    `compile=None` compiles on CUDA when `COMPILE_ON_CUDA` is set (see the module docstring)."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad_token_id; set one before generating")
    eos_ids = stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    batch_size = resolve_generation_batch(batch_size, model,
                                          max(map(len, encoded), default=1) + max_new_tokens,
                                          device, knob, cap)
    if compile is None:
        compile = COMPILE_ON_CUDA and torch.device(device).type == "cuda"
    fixed_width = -(-max(map(len, encoded), default=1) // prompt_bucket) * prompt_bucket \
        if compile else None
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    out: list[Sample | None] = [None] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    LAST_STATS.__init__(compiled=compile)
    for b, idx in enumerate(tqdm(batches, desc=desc or "generate", disable=desc is None,
                                 leave=False)):
        rows = [encoded[i] for i in idx]
        if compile:  # fixed shapes: full batches, one prompt width per call
            rows += [rows[-1]] * (batch_size - len(rows))
        width = fixed_width or max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, r in enumerate(rows):
            ids[row, width - len(r):] = torch.tensor(r)
            mask[row, width - len(r):] = 1
        torch.manual_seed(seed * 100003 + b)
        # top_k=0 explicitly: a checkpoint's generation_config (Qwen3: top_k=20) must not add a
        # filter the upstream sampler (temperature + top_p) does not have
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) \
            if temperature > 0 else dict(do_sample=False)
        if compile:
            sampling["cache_implementation"] = "static"
        t0 = time.perf_counter()
        with oom_names_knob(knob, batch_size):
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=list(eos_ids),
                                 **sampling)
        new = gen[:, width:].tolist()
        LAST_STATS.batch_seconds.append(time.perf_counter() - t0)
        LAST_STATS.shapes.append((len(rows), width))
        for row, i in enumerate(idx):
            comp: list[int] = []
            finished = False
            for t in new[row]:
                if t in eos_ids:
                    comp.append(t)
                    finished = True
                    break
                if t == tokenizer.pad_token_id:
                    break
                comp.append(t)
            text_ids = comp[:-1] if finished else comp
            out[i] = Sample(prompt=prompts[i], completion=tokenizer.decode(
                text_ids, skip_special_tokens=True), prompt_ids=encoded[i], completion_ids=comp,
                finished=finished)
    if was_training:
        model.train()
    return out  # type: ignore[return-value]
