"""Per-sample δS gradients: batched == loop, the loss mask, zero-weight samples, accumulation."""
from __future__ import annotations

import pytest
import torch

from probe.adapters.antipasto import AntipastoAdapter
from probe.batch import collate
from probe.grads import per_sample_grads, per_sample_grads_loop, per_sample_loss

pytestmark = pytest.mark.unit

PAD = 0


def reference_nll(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Mean NLL of the completion tokens, from an unpadded forward, one token at a time."""
    ids = torch.tensor([prompt + completion])
    logp = model(ids).logits[0].float().log_softmax(-1)
    terms = [-logp[len(prompt) + i - 1, tok] for i, tok in enumerate(completion)]
    return torch.stack(terms).mean()


def assert_grads_close(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=rtol, atol=atol, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_loop(tiny_model, ragged_pairs, side):
    adapter = AntipastoAdapter(tiny_model)
    for p in adapter.parameters():  # away from δS = 0 so the test covers a trained adapter too
        torch.nn.init.normal_(p, std=0.1)
    batch = collate(*ragged_pairs, pad_id=PAD, side=side)
    fast = per_sample_grads(adapter, batch)
    slow = per_sample_grads_loop(adapter, batch)
    assert_grads_close(fast.grads, slow.grads)
    torch.testing.assert_close(fast.loss, slow.loss, rtol=1e-5, atol=1e-6)
    assert (fast.norms > 0).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_loss_is_mean_nll_over_completion_tokens_only(tiny_model, ragged_pairs, side):
    """Fails if a pad or prompt token enters the NLL, or the mask is off by one."""
    AntipastoAdapter(tiny_model)
    batch = collate(*ragged_pairs, pad_id=PAD, side=side)
    with torch.no_grad():
        losses = per_sample_loss(tiny_model, batch)
        expected = torch.stack([reference_nll(tiny_model, p, c) for p, c in zip(*ragged_pairs)])
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)


def test_mask_marks_exactly_the_completion_tokens(ragged_pairs):
    prompts, completions = ragged_pairs
    for side in ("left", "right"):
        batch = collate(prompts, completions, pad_id=PAD, side=side)
        assert (batch.attention_mask == 0).any(dim=1).sum() >= 3  # rows really are padded
        for n, (p, c) in enumerate(zip(prompts, completions)):
            marked = batch.input_ids[n][batch.loss_mask[n].bool()].tolist()
            assert marked == c, (side, n)
        assert batch.n_completion_tokens.tolist() == [len(c) for c in completions]


@pytest.mark.parametrize("side", ["left", "right"])  # left: pads sit before real tokens
def test_pad_token_value_does_not_matter(tiny_model, ragged_pairs, side):
    adapter = AntipastoAdapter(tiny_model)
    a = per_sample_grads(adapter, collate(*ragged_pairs, pad_id=PAD, side=side))
    b = per_sample_grads(adapter, collate(*ragged_pairs, pad_id=77, side=side))
    assert_grads_close(a.grads, b.grads)


def test_grads_sum_to_batch_grad_for_summed_loss(tiny_model, ragged_pairs):
    adapter = AntipastoAdapter(tiny_model)
    batch = collate(*ragged_pairs, pad_id=PAD, side="left")
    psg = per_sample_grads(adapter, batch)
    adapter.zero_grad()
    per_sample_loss(tiny_model, batch).sum().backward()
    assert_grads_close(psg.summed(), adapter.grads())


def test_accumulate_mean_sets_grad_to_batch_mean(tiny_model, ragged_pairs):
    adapter = AntipastoAdapter(tiny_model)
    batch = collate(*ragged_pairs, pad_id=PAD)
    psg = per_sample_grads(adapter, batch, accumulate_mean=True)
    expected = {n: g.mean(0) for n, g in psg.grads.items()}
    assert_grads_close(adapter.grads(), expected)


def test_zero_weight_sample_gets_exact_zero_not_nan_or_missing(tiny_model, ragged_pairs):
    """The spec's zero-advantage sneaky fail: the row must exist, be finite, and be exactly zero,
    while the other samples' gradients are unaffected."""
    adapter = AntipastoAdapter(tiny_model)
    batch = collate(*ragged_pairs, pad_id=PAD)
    weights = batch.loss_mask / batch.loss_mask.sum(-1, keepdim=True)
    weights[1] = 0.0
    psg = per_sample_grads(adapter, batch, token_weights=weights)
    plain = per_sample_grads(adapter, batch)
    for n, g in psg.grads.items():
        assert g.shape[0] == batch.size
        assert torch.isfinite(g).all(), n
        assert torch.equal(g[1], torch.zeros_like(g[1])), n
        torch.testing.assert_close(g[[0, 2, 3]], plain.grads[n][[0, 2, 3]])
    assert psg.norms[1] == 0 and (psg.norms[[0, 2, 3]] > 0).all()


def test_token_weights_scale_gradients_linearly(tiny_model, ragged_pairs):
    """Any per-token weighted loss (e.g. Dr.GRPO advantage / constant) flows through the same path."""
    adapter = AntipastoAdapter(tiny_model)
    batch = collate(*ragged_pairs, pad_id=PAD)
    w = batch.loss_mask.clone()
    a = per_sample_grads(adapter, batch, token_weights=w)
    b = per_sample_grads(adapter, batch, token_weights=-2.5 * w)
    for n in a.grads:
        torch.testing.assert_close(b.grads[n], -2.5 * a.grads[n], rtol=1e-4, atol=1e-6)
    slow = per_sample_grads_loop(adapter, batch, token_weights=w)
    assert_grads_close(a.grads, slow.grads)


def test_collate_rejects_bad_input():
    with pytest.raises(ValueError, match="prompts but"):
        collate([[1, 2]], [[3], [4]], pad_id=0)
    with pytest.raises(ValueError, match="non-empty prompt"):
        collate([[]], [[3, 4]], pad_id=0)
    with pytest.raises(ValueError, match="padding side"):
        collate([[1]], [[2]], pad_id=0, side="middle")


def test_flat_loss_path_equals_the_full_logits_path(tiny_model, ragged_pairs):
    """The CUDA fast path (LM head and loss on target positions only) must equal the reference
    on every target position and be exactly 0 elsewhere, with the same gradient."""
    from probe.grads import _flat_head, token_nll_flat, token_nll_full

    assert _flat_head(tiny_model)
    adapter = AntipastoAdapter(tiny_model)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.1)
    for side in ("left", "right"):
        batch = collate(*ragged_pairs, pad_id=PAD, side=side)
        flat, full = token_nll_flat(tiny_model, batch), token_nll_full(tiny_model, batch)
        mask = batch.loss_mask.bool()
        torch.testing.assert_close(flat[mask], full[mask], rtol=1e-5, atol=1e-6)
        assert flat[~mask].abs().sum() == 0
        gf = torch.autograd.grad((flat * batch.loss_mask).sum(), adapter.parameters())
        gr = torch.autograd.grad((full * batch.loss_mask).sum(), adapter.parameters())
        for a, b in zip(gf, gr):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
