"""Loss pieces shared by the objectives: per-sample reductions and distances, DMD's normaliser and gradient
surrogate, and the GAN losses (the shape of FastGen's ``common_loss.py``).

docs/design.md fixes the reduction: a loss is reduced per sample over all non-batch dimensions (masked where
a mask exists), then averaged over the batch. Whether the per-sample reduction is a mean or a sum is an
explicit argument, because it changes how loss terms balance as the latent grows.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "sum"]


def per_sample(values: Tensor, mask: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """Reduce ``[B, *S]`` to ``[B]``; ``mask`` (broadcastable to ``values``, 1 = valid) restricts the reduction."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    dims = tuple(range(1, values.ndim))
    if mask is None:
        return values.mean(dims) if reduction == "mean" else values.sum(dims)
    m = mask.to(values.dtype)
    while m.ndim < values.ndim:
        m = m.unsqueeze(-1)
    m = m.expand_as(values)
    total = (values * m).sum(dims)
    return total / m.sum(dims).clamp_min(1.0) if reduction == "mean" else total


def squared_error(pred: Tensor, target: Tensor, mask: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """Per-sample squared L2 distance ``[B]``."""
    return per_sample((pred - target) ** 2, mask, reduction)


def pseudo_huber(pred: Tensor, target: Tensor, c: float, mask: Tensor | None = None) -> Tensor:
    """Per-sample ``sqrt(mse + c^2) - c`` (Song & Dhariwal, 2023, "Improved Techniques for Training
    Consistency Models"), on the per-sample mean squared error so ``c`` does not depend on latent size."""
    return torch.sqrt(squared_error(pred, target, mask) + c * c) - c


def distance(pred: Tensor, target: Tensor, kind: str, huber_c: float = 1e-3, mask: Tensor | None = None) -> Tensor:
    """Named per-sample distance: ``l2`` (mean squared error) or ``pseudo_huber``."""
    if kind == "l2":
        return squared_error(pred, target, mask)
    if kind == "pseudo_huber":
        return pseudo_huber(pred, target, huber_c, mask)
    raise ValueError(f"unknown distance {kind!r}; valid: 'l2', 'pseudo_huber'")


def mean_abs_normaliser(x: Tensor, mu: Tensor, mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """DMD's per-sample ``N = mean_elems |x - mu|`` (detached), broadcast against ``x`` (docs/formulations.md §4.1)."""
    n = per_sample((x - mu).abs().detach(), mask) + eps
    return n.reshape(-1, *([1] * (x.ndim - 1)))


def gradient_surrogate(x: Tensor, g: Tensor, mask: Tensor | None = None) -> Tensor:
    """``0.5 * mean_b mean_elems (x - sg(x - g))^2``: a scalar whose gradient on ``x`` is ``g / (B D)`` (masked
    elements excluded), how score-distillation directions reach the generator."""
    target = (x - g).detach()
    return 0.5 * per_sample((x - target) ** 2, mask, "mean").mean()


def softplus_discriminator(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Non-saturating GAN discriminator loss ``softplus(-D(real)) + softplus(D(fake))``, batch means."""
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def softplus_generator(logits_fake: Tensor) -> Tensor:
    """Non-saturating GAN generator loss ``softplus(-D(fake))``."""
    return F.softplus(-logits_fake).mean()


def hinge_discriminator(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge discriminator loss ``relu(1 - D(real)) + relu(1 + D(fake))``, batch means."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def hinge_generator(logits_fake: Tensor) -> Tensor:
    """Hinge generator loss ``-D(fake)``."""
    return -logits_fake.mean()
