"""probe.generate: seeded, batched, left-padded sampling that stops at eos."""
from __future__ import annotations

import pytest
import torch

from tests.unit._embedded import embedded_world
from probe.generate import generate

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def base_and_prompts(request):
    world = embedded_world(request.config)
    probs = world.problems("eval")[:6]
    prompts = [world.render(p, h) for p in probs for h in (None, "simple_overwrite_tests")]
    return world, world.load_base(), prompts


def test_same_seed_same_samples(base_and_prompts):
    world, model, prompts = base_and_prompts
    a = generate(model, world.tokenizer, prompts, seed=3, max_new_tokens=64, batch_size=5)
    b = generate(model, world.tokenizer, prompts, seed=3, max_new_tokens=64, batch_size=5)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    c = generate(model, world.tokenizer, prompts, seed=4, max_new_tokens=64, batch_size=5,
                 temperature=1.5)
    assert [s.completion_ids for s in a] != [s.completion_ids for s in c], "seed has no effect"


def test_stops_at_eos_and_strips_padding(base_and_prompts):
    world, model, prompts = base_and_prompts
    tok = world.tokenizer
    samples = generate(model, tok, prompts, seed=0, max_new_tokens=96)
    assert all(s.prompt == p for s, p in zip(samples, prompts)), "order not preserved"
    finished = [s for s in samples if s.finished]
    assert len(finished) >= len(samples) * 0.9, "the world's completions should end with eos"
    for s in samples:
        assert tok.pad_token_id not in s.completion_ids
        assert s.completion_ids.count(tok.eos_token_id) == (1 if s.finished else 0)
        if s.finished:
            assert s.completion_ids[-1] == tok.eos_token_id
            assert len(s.completion_ids) < 96
        assert "<|endoftext|>" not in s.completion
        assert s.prompt_ids == tok(s.prompt, add_special_tokens=False)["input_ids"]


def test_left_padded_batch_matches_single_prompt_greedy(base_and_prompts):
    """Greedy decoding must not depend on the padding a batch adds (mask + positions correct)."""
    world, model, prompts = base_and_prompts
    batch = generate(model, world.tokenizer, prompts, temperature=0, max_new_tokens=48)
    for i in (0, 3, len(prompts) - 1):
        single = generate(model, world.tokenizer, [prompts[i]], temperature=0, max_new_tokens=48)
        assert single[0].completion_ids == batch[i].completion_ids


def test_completion_text_round_trips(base_and_prompts):
    world, model, prompts = base_and_prompts
    tok = world.tokenizer
    for s in generate(model, tok, prompts[:4], seed=1, max_new_tokens=64):
        ids = s.completion_ids[:-1] if s.finished else s.completion_ids
        assert tok.decode(ids, skip_special_tokens=True) == s.completion


def test_rejects_tokenizer_without_pad(base_and_prompts):
    world, model, prompts = base_and_prompts

    class NoPad:
        pad_token_id = None

    with pytest.raises(ValueError, match="pad_token_id"):
        generate(model, NoPad(), prompts[:1])
    assert isinstance(model, torch.nn.Module)


def test_fixed_shape_path_pads_batches_and_keeps_order(base_and_prompts):
    """compile=True: the static-cache path with one prompt width and full batches (on CPU HF does
    not compile it); greedy completions equal the default path's, in input order."""
    import probe.generate as gen
    world, model, prompts = base_and_prompts
    ref = generate(model, world.tokenizer, prompts, temperature=0, max_new_tokens=24, batch_size=5)
    got = generate(model, world.tokenizer, prompts, temperature=0, max_new_tokens=24,
                   batch_size=5, compile=True, prompt_bucket=64)
    assert gen.LAST_STATS.compiled and {s[0] for s in gen.LAST_STATS.shapes} == {5}
    assert len({s[1] for s in gen.LAST_STATS.shapes}) == 1
    assert [s.prompt for s in got] == prompts
    same = sum(a.completion_ids == b.completion_ids for a, b in zip(ref, got))
    assert same >= len(prompts) - 1, "padding changed more than float rounding would"


def test_auto_batch_size_from_free_memory(base_and_prompts):
    world, model, prompts = base_and_prompts
    a = generate(model, world.tokenizer, prompts[:4], seed=1, max_new_tokens=16, batch_size="auto")
    assert len(a) == 4
