"""Per-dimension min-max normalisation of actions and low-dimensional observations to ``[-1, 1]``.

As in "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion" (Chi et al., 2023), each
dimension is mapped affinely from its dataset range to ``[-1, 1]``; a dimension that never varies is only
centred. The statistics are buffers, so they travel inside every state dict that holds the network: the
Lightning checkpoint, the shipped teacher safetensors and exported students.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

_MIN_RANGE = 1e-4


def affine_from_range(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """``(scale, offset)`` with ``low -> -1`` and ``high -> 1`` per dimension (constant dimensions: scale 1)."""
    low, high = low.double(), high.double()
    span = high - low
    scale = torch.where(span > _MIN_RANGE, 2.0 / span.clamp_min(_MIN_RANGE), torch.ones_like(span))
    offset = -1.0 - scale * low
    offset = torch.where(span > _MIN_RANGE, offset, -(low + high) / 2)
    return scale, offset


class Normalizer(nn.Module):
    """``y = scale * x + offset`` for observations and actions; ``unnormalize`` is its exact inverse
    (computed in float64, so a round trip is exact to float32 rounding)."""

    def __init__(self, obs_dim: int, action_dim: int) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.register_buffer("obs_scale", torch.ones(obs_dim, dtype=torch.float64))
        self.register_buffer("obs_offset", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("action_scale", torch.ones(action_dim, dtype=torch.float64))
        self.register_buffer("action_offset", torch.zeros(action_dim, dtype=torch.float64))

    @classmethod
    def from_data(cls, observations: np.ndarray | Tensor, actions: np.ndarray | Tensor) -> Normalizer:
        obs, act = torch.as_tensor(np.asarray(observations)), torch.as_tensor(np.asarray(actions))
        norm = cls(obs.shape[-1], act.shape[-1])
        norm.fit(obs.reshape(-1, obs.shape[-1]), act.reshape(-1, act.shape[-1]))
        return norm

    def fit(self, observations: Tensor, actions: Tensor) -> None:
        for name, data in (("obs", observations), ("action", actions)):
            scale, offset = affine_from_range(data.amin(0), data.amax(0))
            getattr(self, f"{name}_scale").copy_(scale)
            getattr(self, f"{name}_offset").copy_(offset)

    def _check(self, x: Tensor, dim: int, what: str) -> None:
        if x.shape[-1] != dim:
            raise ValueError(f"{what} has {x.shape[-1]} dimensions (shape {tuple(x.shape)}), but the policy's "
                             f"normaliser was fitted on {what} of dimension {dim}")

    def normalize_obs(self, obs: Tensor) -> Tensor:
        self._check(obs, self.obs_dim, "observation")
        return (obs.double() * self.obs_scale + self.obs_offset).to(torch.float32)

    def normalize_action(self, action: Tensor) -> Tensor:
        self._check(action, self.action_dim, "action")
        return (action.double() * self.action_scale + self.action_offset).to(torch.float32)

    def unnormalize_action(self, action: Tensor) -> Tensor:
        self._check(action, self.action_dim, "action")
        return ((action.double() - self.action_offset) / self.action_scale).to(torch.float32)

    def unnormalize_obs(self, obs: Tensor) -> Tensor:
        self._check(obs, self.obs_dim, "observation")
        return ((obs.double() - self.obs_offset) / self.obs_scale).to(torch.float32)
