"""The GRPO-loss v_hack (spec R7): the contrastive pairs run through R5's Dr.GRPO surrogate.

Each pair is one group of two rows: Â = +1 on the hack and −1 on the clean completion (R − group
mean for rewards two apart), old log-probs = the current ones (ratio 1, as at the first GRPO update
of a batch), no teacher rows, and a constant normaliser (the world's max_new_tokens: R5's
G·P·max_new_tokens for one pair's worth of rows, up to the factor G·P that no direction sees). The
pair's difference is the sum of its two rows' surrogate gradients,
(∇ΣNLL(hack) − ∇ΣNLL(clean)) / normaliser: token *sums*, where the NLL method takes each
completion's *mean*, so a long hack is not down-weighted (the length bias facts §5 names).
Orientation is the NLL v_hack's: descent along the difference makes the hack likelier relative to
the clean completion. The loss is R5's own code (`probe.rl.dr_grpo.surrogate`), not a copy.
"""
from __future__ import annotations

import torch

from probe.adapters.base import Adapter
from probe.batch import TokenBatch
from probe.grads import per_sample_grads
from probe.rl.config import GRPOConfig
from probe.rl.dr_grpo import SurrogateInputs, surrogate
from probe.vhack import PairGrads

LOSS = "dr_grpo_surrogate"


def pair_inputs(logp: torch.Tensor, batch: TokenBatch, n: int) -> SurrogateInputs:
    """Rows [0, n) hacks (Â = +1), [n, 2n) their clean completions (Â = −1); π_old = π_θ now."""
    dev = logp.device
    adv = torch.cat([torch.ones(n), -torch.ones(n)]).to(dev)
    old = logp.detach()
    return SurrogateInputs(advantages=adv, teacher=torch.zeros(2 * n, dtype=torch.bool, device=dev),
                           old_logp=old, behaviour_logp=old, mask=batch.loss_mask)


def grpo_pair_grads(normaliser: float, cfg: GRPOConfig | None = None) -> PairGrads:
    """The GRPO method's `PairGrads`: per pair, the summed surrogate gradient of its two rows.
    `cfg` supplies the clip and correction settings (inert at ratio 1 on student rows)."""
    if normaliser <= 0:
        raise ValueError(f"the Dr.GRPO normaliser must be positive, not {normaliser}")
    cfg = cfg or GRPOConfig()

    def pair_grads(adapter: Adapter, batch: TokenBatch, n: int) -> dict[str, torch.Tensor]:
        def token_loss(logp: torch.Tensor) -> torch.Tensor:
            return surrogate(logp, pair_inputs(logp, batch, n), epsilon=cfg.epsilon,
                             epsilon_high=cfg.epsilon_high, correction=cfg.correction,
                             is_cap=cfg.is_cap, luffy_gamma=cfg.luffy_gamma, normaliser=normaliser)

        grads = per_sample_grads(adapter, batch, token_loss=token_loss).grads
        return {name: g[:n] + g[n:] for name, g in grads.items()}  # Â carries the clean row's sign

    return pair_grads
