"""A Gaussian mixture with anisotropic components and its exact denoiser on any path.

For ``x0 ~ sum_k pi_k N(mu_k, C_k)`` and ``x_t = a x0 + s eps``, each component gives
``x_t | k ~ N(a mu_k, a^2 C_k + s^2 I)``, so the posterior mean ``E[x0 | x_t]`` is a responsibility-weighted
sum of per-component linear estimates. With ``C_k = U_k diag(lam_k) U_k^T`` everything is diagonal in the
component's rotated frame, which keeps the exact teacher cheap for D up to 64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unidistill.paths import Path, expand_like


class GaussianMixture:
    """``num_components`` anisotropic Gaussians in ``dim`` dimensions, drawn from ``seed``.

    Component ``k`` belongs to class ``k % num_classes``; the class condition selects those components.
    """

    def __init__(
        self,
        dim: int = 8,
        num_components: int = 8,
        num_classes: int = 4,
        seed: int = 0,
        spread: float = 2.0,
        scale_range: tuple[float, float] = (0.05, 0.5),
    ) -> None:
        if not 2 <= dim <= 256:
            raise ValueError(f"dim must be in [2, 256], got {dim}")
        if num_classes < 1 or num_components < num_classes:
            raise ValueError(f"need 1 <= num_classes <= num_components, got {num_classes}, {num_components}")
        g = torch.Generator().manual_seed(seed)
        self.dim, self.num_components, self.num_classes = dim, num_components, num_classes
        means = torch.randn(num_components, dim, generator=g, dtype=torch.float64)
        self.means = spread * means / means.norm(dim=1, keepdim=True) * math.sqrt(dim) / 2
        lo, hi = scale_range
        stds = lo * (hi / lo) ** torch.rand(num_components, dim, generator=g, dtype=torch.float64)
        self.eigvals = stds**2
        self.rotations = torch.linalg.qr(torch.randn(num_components, dim, dim, generator=g, dtype=torch.float64))[0]
        self.weights = torch.full((num_components,), 1.0 / num_components, dtype=torch.float64)
        self.classes = torch.arange(num_components) % num_classes

    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` samples and their class labels; with ``labels`` given, samples are drawn from those classes."""
        if labels is None:
            comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            comp = torch.empty(n, dtype=torch.long)
            for c in labels.unique().tolist():
                idx = (labels == c).nonzero().squeeze(1)
                members = (self.classes == c).nonzero().squeeze(1)
                pick = torch.multinomial(self.weights[members], idx.numel(), replacement=True, generator=generator)
                comp[idx] = members[pick]
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + torch.einsum("nij,nj->ni", self.rotations[comp], z * self.eigvals[comp].sqrt())
        return x.float(), self.classes[comp]

    def log_likelihood_per_component(self, x: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component log densities of ``x_t`` and the rotated residuals (internal to the denoiser)."""
        x = x.double()
        a, s = a.double().reshape(-1, 1, 1), s.double().reshape(-1, 1, 1)
        resid = x[:, None, :] - a * self.means[None].to(x.device)
        y = torch.einsum("kji,bkj->bki", self.rotations.to(x.device), resid)
        var = a**2 * self.eigvals[None].to(x.device) + s**2
        logp = -0.5 * (y**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return logp + torch.log(self.weights.to(x.device))[None], y, var

    def posterior_mean(self, x_t: Tensor, a: Tensor, s: Tensor, labels: Tensor | None = None) -> Tensor:
        """``E[x0 | x_t]`` under the (class-conditional when ``labels >= 0``) mixture."""
        logp, y, var = self.log_likelihood_per_component(x_t, a, s)
        if labels is not None:
            allowed = (self.classes.to(x_t.device)[None, :] == labels[:, None]) | (labels[:, None] < 0)
            logp = logp.masked_fill(~allowed, -math.inf)
        resp = torch.softmax(logp, dim=1)
        a3 = a.double().reshape(-1, 1, 1)
        shrink = a3 * self.eigvals[None].to(x_t.device) / var * y
        est = self.means[None].to(x_t.device) + torch.einsum("kij,bkj->bki", self.rotations.to(x_t.device), shrink)
        return (resp[..., None] * est).sum(1).to(x_t.dtype)

    def assign(self, x: Tensor) -> Tensor:
        """Most likely component of each clean sample."""
        one = torch.ones(x.shape[0], dtype=torch.float64)
        logp, _, _ = self.log_likelihood_per_component(x, one, one * 1e-6)
        return logp.argmax(1)


class AnalyticDenoiserNet(nn.Module):
    """The exact x0-prediction of a mixture on ``path``; a parameter-free "network" for a ``Denoiser``.

    The condition is a class label tensor (``-1`` = unconditional) or ``None``.
    """

    def __init__(self, mixture: GaussianMixture, path: Path) -> None:
        super().__init__()
        self.mixture, self.path = mixture, path
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        a = expand_like(self.path.alpha(t), x_t).reshape(-1)
        s = expand_like(self.path.sigma(t), x_t).reshape(-1)
        return self.mixture.posterior_mean(x_t, a, s, cond)
