"""The small interface every adapter arm implements (δS now, LoRA for R6).

An adapter owns one trainable tensor per wrapped module, keyed by the module's own dotted path, and
knows how to give each sample of a batch its own zero "probe" offset of those tensors. A per-sample
gradient is then just `autograd.grad(sum of per-sample losses, probes)`: sample n's loss depends only
on probe n, so one batched backward yields every sample's gradient (facts.md §6).
"""
from __future__ import annotations

import abc
import contextlib
from typing import Iterator

import torch
from torch import nn


class Adapter(abc.ABC):
    """Named trainable per-module tensors attached to a model, plus per-sample probing."""

    model: nn.Module

    @abc.abstractmethod
    def named_params(self) -> dict[str, nn.Parameter]:
        """Module name -> its trainable tensor (δS: shape (r,)). Ordered as the model's modules."""

    @abc.abstractmethod
    @contextlib.contextmanager
    def probing(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Install zero probes of shape (batch_size, *param.shape) that require grad; yield them.

        Inside the context, sample n's forward uses `param + probe[n]`, so the values are unchanged
        and d(loss_n)/d(probe[n]) is sample n's gradient.
        """

    @abc.abstractmethod
    @contextlib.contextmanager
    def zeroed(self) -> Iterator[None]:
        """Temporarily the reference policy: the adapter contributes nothing."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Detach from the model, leaving it as it was before wrapping."""

    @property
    def module_names(self) -> list[str]:
        return list(self.named_params())

    def parameters(self) -> list[nn.Parameter]:
        return list(self.named_params().values())

    def grads(self) -> dict[str, torch.Tensor]:
        """Current `.grad` of every trainable tensor (zeros where backward left none)."""
        return {n: (p.grad if p.grad is not None else torch.zeros_like(p))
                for n, p in self.named_params().items()}

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None
