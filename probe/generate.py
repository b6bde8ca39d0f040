"""Batched sampling with a KV cache, left padding and a seed: the one generation path of the harness.

Prompts are sorted by length so a batch wastes little padding, then results are put back in input
order. Each batch reseeds from (seed, batch index), so the same prompts and seed give the same
completions on the same machine.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


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
             max_new_tokens: int = 256, seed: int = 0, batch_size: int = 64,
             desc: str | None = None) -> list[Sample]:
    """Sample one completion per prompt (greedy when temperature == 0)."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad_token_id; set one before generating")
    eos_ids = stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    out: list[Sample | None] = [None] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for b, idx in enumerate(tqdm(batches, desc=desc or "generate", disable=desc is None,
                                 leave=False)):
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        torch.manual_seed(seed * 100003 + b)
        # top_k=0 explicitly: a checkpoint's generation_config (Qwen3: top_k=20) must not add a
        # filter the upstream sampler (temperature + top_p) does not have
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) \
            if temperature > 0 else dict(do_sample=False)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=list(eos_ids), **sampling)
        new = gen[:, width:].tolist()
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
