"""Training loops of the embedded world: the base from scratch, then the teacher's LoRA.

The loss covers completion tokens (and the final eos) only: prompts are context, not targets.
Batches are drawn from length-sorted chunks so little compute goes to padding; everything is
seeded, so a config trains the same model on the same machine.
"""
from __future__ import annotations

import logging
import math
import random
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import Qwen3Config, Qwen3ForCausalLM

from probe.adapters.antipasto import DEFAULT_TARGETS
from probe.batch import collate
from probe.encoding import encode_completion, encode_prompt
from probe.world.embedded.config import EmbeddedWorldConfig
from probe.world.embedded.corpus import Text

log = logging.getLogger(__name__)

LORA_TARGETS = DEFAULT_TARGETS  # the teacher adapts what the δS adapter wraps


def make_base_model(cfg: EmbeddedWorldConfig, tokenizer) -> Qwen3ForCausalLM:
    """A freshly initialised, scaled-down Qwen3 (tied embeddings, GQA) for this tokenizer."""
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0, use_cache=True)
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def encode(tokenizer, texts: Sequence[Text]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + eos): tokenized apart as at sampling (`probe.encoding`)."""
    return [(encode_prompt(tokenizer, t.prompt), encode_completion(tokenizer, t.completion))
            for t in texts]


def _batches(n: int, lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches: shuffle, sort within chunks of 8 batches by length, shuffle batches."""
    idx = list(range(n))
    rng.shuffle(idx)
    chunk = batch_size * 8
    batches = []
    for s in range(0, n, chunk):
        part = sorted(idx[s:s + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def lm_inputs(examples: list[tuple[list[int], list[int]]], idx: list[int], pad_id: int
              ) -> dict[str, torch.Tensor]:
    """A right-padded `probe.batch` batch as HF causal-LM arguments: labels are the completion
    tokens (`loss_mask`), -100 elsewhere; positions default to 0..T-1, which right padding
    leaves exact on every real token."""
    batch = collate([examples[i][0] for i in idx], [examples[i][1] for i in idx], pad_id)
    labels = batch.input_ids.masked_fill(batch.loss_mask == 0, -100)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": labels}


def train_lm(model: torch.nn.Module, examples: list[tuple[list[int], list[int]]], *, steps: int,
             lr: float, batch_size: int, warmup: int, pad_id: int, seed: int,
             desc: str = "train") -> list[float]:
    """AdamW with linear warmup and cosine decay on the trainable parameters; returns losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup))
                                              * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = random.Random(f"{desc}:{seed}")
    lengths = [len(p) + len(c) for p, c in examples]
    torch.manual_seed(seed)
    model.train()
    queue: list[list[int]] = []
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=5)
    for step in bar:
        if not queue:
            queue = _batches(len(examples), lengths, batch_size, rng)
        loss = model(**lm_inputs(examples, queue.pop(), pad_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log.debug("%s step %d loss %.4f", desc, step, loss.item())
    model.eval()
    log.info("%s: %d steps, final loss (mean of last 20) %.4f", desc, steps,
             sum(losses[-20:]) / max(1, len(losses[-20:])))
    return losses


def add_lora(model: torch.nn.Module, cfg: EmbeddedWorldConfig):
    """Wrap the base with a standard PEFT LoRA on all attention and MLP projections."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed + 1)
    return get_peft_model(model, lcfg)
