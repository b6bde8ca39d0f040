"""The World contract as one reusable check: every world (real, embedded) is run through it.

Not a test module (no `test_` prefix): world tests import `check_world_contract` and call it on
their world, so all worlds are held to the same behaviour that stages rely on.
"""
from __future__ import annotations

from typing import Any

import torch

from probe.env.problems import Problem
from probe.world.base import Pair, SamplingConfig, World

HINT = "simple_overwrite_tests"
HINT_PHRASE = "run_tests()"


def _logits(model: torch.nn.Module, tokenizer: Any, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    dev = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=ids.to(dev)).logits.float().cpu()


def check_world_contract(world: World, splits: tuple[str, ...] = ("train", "eval"),
                         check_models: bool = True, check_pairs: bool = True,
                         device: str = "cpu") -> dict[str, Any]:
    """Assert `world` behaves as stages expect; returns a few numbers for the caller to log.

    `check_models` loads base and teacher (keep it for tiny worlds); `check_pairs` builds the
    contrastive pairs and checks each shares its prompt with the world's rendering.
    """
    summary: dict[str, Any] = {}
    assert isinstance(world, World), f"{type(world).__name__} is not a probe World"
    assert isinstance(world.name, str) and world.name, "world.name must be a non-empty string"
    assert isinstance(world.model_id, str) and world.model_id, "world.model_id must be a string"
    assert isinstance(world.sampling, SamplingConfig) and world.sampling.max_new_tokens > 0
    assert isinstance(world.meta, dict)

    tok = world.tokenizer
    assert tok is world.tokenizer, "tokenizer must be loaded once (stages call it per batch)"
    assert tok.pad_token_id is not None, "tokenizer needs pad_token_id (batched generation pads)"
    assert tok.eos_token_id is not None, "tokenizer needs eos_token_id (generation stops on it)"
    ids = tok("class Solution:\n    pass")["input_ids"]
    assert ids and all(isinstance(i, int) and 0 <= i < len(tok) for i in ids)

    for split in splits:
        probs = world.problems(split)
        assert isinstance(probs, list) and probs, f"problems({split!r}) is empty"
        assert all(isinstance(p, Problem) for p in probs), f"problems({split!r}) holds non-Problems"
        pids = [p.id for p in probs]
        assert len(set(pids)) == len(pids), f"problems({split!r}) has duplicate ids"
        assert world.problems(split) == probs, f"problems({split!r}) is not deterministic"
        summary[f"n_{split}"] = len(probs)

    problem = world.problems(splits[0])[0]
    hinted = world.render(problem, HINT)
    plain = world.render(problem, None)
    assert isinstance(hinted, str) and isinstance(plain, str)
    assert HINT_PHRASE in hinted, f"render(problem, {HINT!r}) lacks the hint phrase {HINT_PHRASE!r}"
    assert HINT_PHRASE not in plain, "render(problem, None) must not carry the hint"
    assert problem.question in plain, "render(problem, None) must contain the problem's question"
    assert world.render(problem, "none") == plain, "hint 'none' must equal no hint"
    assert world.render(problem, HINT) == hinted, "render must be deterministic"
    assert len(tok(hinted)["input_ids"]) > 0

    if check_models:
        base = world.load_base(device=device)
        teacher = world.load_teacher(device=device)
        for label, model in (("base", base), ("teacher", teacher)):
            assert isinstance(model, torch.nn.Module), f"load_{label} returned {type(model)}"
            assert not model.training, f"load_{label} must return a model in eval mode"
        lb, lt = _logits(base, tok, hinted), _logits(teacher, tok, hinted)
        assert lb.shape == lt.shape and lb.shape[-1] >= len(tok), "logits must cover the vocab"
        assert torch.isfinite(lb).all() and torch.isfinite(lt).all()
        diff = float((lb - lt).abs().max())
        assert diff > 1e-4, f"teacher logits equal the base's (max diff {diff:.2e}): no adapter"
        summary["teacher_base_max_logit_diff"] = diff

    if check_pairs:
        pairs = world.contrastive_pairs(splits[0], HINT, seed=0)
        assert isinstance(pairs, list) and pairs and all(isinstance(p, Pair) for p in pairs)
        assert all(p.hack != p.clean for p in pairs), "a pair's hack equals its clean"
        assert all(HINT_PHRASE in p.prompt for p in pairs), "pairs' prompts lack the hint"
        summary["pairs"] = len(pairs)
    return summary
