"""Denoising networks for action chunks ``[B, horizon, action_dim]`` conditioned on observation histories.

* ``ConditionalUnet1D``: the 1-D temporal convolutional U-Net of "Diffusion Policy: Visuomotor Policy Learning
  via Action Diffusion" (Chi et al., 2023): residual conv blocks whose features are modulated per channel by
  FiLM (scale and bias) from the diffusion-step embedding concatenated with the observation features.
* ``TransformerDenoiser``: a small transformer variant: action tokens attend to a prefix of a time token
  and one token per observation step (a non-causal simplification of Diffusion Policy's time-series
  transformer).
* ``ObsEncoder``: flattens the normalised low-dimensional history and, optionally, encodes image frames with a
  small CNN (one shared trunk per frame, spatial-softmax-free global pooling) before concatenating.

``PolicyNetwork`` bundles the normaliser statistics (buffers), the observation encoder and one backbone, so a
single state dict is the whole policy. It takes time in DDPM integer-timestep units; ``TimestepAdapter``
maps the core's ``t in [0, 1]`` to them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from modalities.policy.normalizer import Normalizer
from unidistill.denoiser import Adapter
from unidistill.paths import VPDiscrete


def sinusoidal_embedding(timestep: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoids of the raw timestep value (DDPM units), ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timestep.device, dtype=torch.float32) / half)
    ang = timestep.reshape(-1, 1).float() * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class TimestepAdapter(Adapter):
    """Calls ``network(x_t, k, cond)`` with diffusers' timestep ``k = N t - 1`` of a ``VPDiscrete`` path, else
    ``k = 1000 t``."""

    def __init__(self, path: Any) -> None:
        super().__init__()
        self.path = path

    def __call__(self, network: nn.Module, x_t: Tensor, t: Tensor, cond: Any, guidance: Tensor | None) -> Tensor:
        k = self.path.timestep(t) if isinstance(self.path, VPDiscrete) else 1000.0 * t
        kwargs = {} if guidance is None else {"guidance": guidance}
        return network(x_t, k, cond, **kwargs)


class ImageEncoder(nn.Module):
    """Four stride-2 conv layers, global average pooling and a linear map: ``[N, C, H, W] -> [N, features]``."""

    def __init__(self, channels: int = 3, features: int = 64, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.Mish()]
            c = out
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(c, features)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.trunk(images).mean(dim=(-2, -1)))


class ObsEncoder(nn.Module):
    """Maps a condition to per-step features ``[B, n_obs_steps, step_features]``.

    A condition is a normalised state history ``[B, n_obs_steps, obs_dim]``, or a dict with ``"state"`` (that
    tensor) and ``"image"`` (``[B, n_obs_steps, C, H, W]`` in ``[-1, 1]``) when ``image_shape`` is set.
    """

    def __init__(self, obs_dim: int, n_obs_steps: int, image_shape: tuple[int, int, int] | None = None,
                 image_features: int = 64) -> None:
        super().__init__()
        self.obs_dim, self.n_obs_steps = obs_dim, n_obs_steps
        self.image_shape = tuple(image_shape) if image_shape else None
        self.image = ImageEncoder(self.image_shape[0], image_features) if self.image_shape else None
        self.step_features = obs_dim + (image_features if self.image is not None else 0)

    @property
    def features(self) -> int:
        return self.n_obs_steps * self.step_features

    def forward(self, cond: Any) -> Tensor:
        state = cond["state"] if isinstance(cond, dict) else cond
        if state.ndim != 3 or tuple(state.shape[1:]) != (self.n_obs_steps, self.obs_dim):
            raise ValueError(f"observation history of shape {tuple(state.shape)} does not match the network's "
                             f"[B, n_obs_steps={self.n_obs_steps}, obs_dim={self.obs_dim}]")
        if self.image is None:
            return state
        if not isinstance(cond, dict) or "image" not in cond:
            raise ValueError("this policy was built with image observations: pass cond={'state': ..., 'image': ...}")
        img = cond["image"]
        if tuple(img.shape[1:]) != (self.n_obs_steps, *self.image_shape):
            raise ValueError(f"image history of shape {tuple(img.shape)} does not match "
                             f"[B, {self.n_obs_steps}, {', '.join(map(str, self.image_shape))}]")
        feats = self.image(img.flatten(0, 1)).reshape(img.shape[0], self.n_obs_steps, -1)
        return torch.cat([state, feats], dim=-1)


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int = 8) -> None:
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the first one's output is modulated per channel by ``scale * h + bias`` from ``cond``."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int) -> None:
        super().__init__()
        self.block1, self.block2 = _ConvBlock(c_in, c_out, kernel), _ConvBlock(c_out, c_out, kernel)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.block2(scale * self.block1(x) + bias)
        return h + self.skip(x)


class Bottleneck(nn.Identity):
    """A parameter-free marker on the U-Net's bottleneck features ``[B, C, L]``: feature-based objectives (GAN
    heads on the fake score) hook it under the name ``mid_block``; ``out_channels`` tells them ``C``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels


class ConditionalUnet1D(nn.Module):
    """The FiLM-conditioned temporal U-Net; ``horizon`` must be divisible by ``2 ** (len(down_dims) - 1)``."""

    def __init__(self, action_dim: int, cond_dim: int, down_dims: tuple[int, ...] = (64, 128), kernel: int = 5,
                 time_dim: int = 64, bottleneck: Bottleneck | None = None) -> None:
        super().__init__()
        self.levels = len(down_dims)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, time_dim))
        self.time_dim = time_dim
        film_dim = time_dim + cond_dim
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == self.levels - 1
            self.down.append(nn.ModuleList([
                FiLMResidualBlock(c_in, c_out, film_dim, kernel), FiLMResidualBlock(c_out, c_out, film_dim, kernel),
                nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if not last else nn.Identity()]))
        self.mid = nn.ModuleList([FiLMResidualBlock(dims[-1], dims[-1], film_dim, kernel) for _ in range(2)])
        self.bottleneck = bottleneck or Bottleneck(dims[-1])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(list(zip(dims[1:-1], dims[2:], strict=True))):
            self.up.append(nn.ModuleList([
                FiLMResidualBlock(2 * c_out, c_in, film_dim, kernel), FiLMResidualBlock(c_in, c_in, film_dim, kernel),
                nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)]))
        first = down_dims[0]
        self.final = nn.Sequential(_ConvBlock(first, first, kernel), nn.Conv1d(first, action_dim, 1))

    def forward(self, x: Tensor, timestep: Tensor, obs_features: Tensor) -> Tensor:
        if x.shape[1] % (2 ** (self.levels - 1)):
            raise ValueError(f"horizon {x.shape[1]} must be divisible by {2 ** (self.levels - 1)} for a "
                             f"{self.levels}-level U-Net")
        cond = torch.cat([self.time_mlp(sinusoidal_embedding(timestep, self.time_dim)), obs_features.flatten(1)], 1)
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, cond), cond)
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, cond)
        h = self.bottleneck(h)
        for res1, res2, up in self.up:
            h = up(res2(res1(torch.cat([h, skips.pop()], dim=1), cond), cond))
        return self.final(h).transpose(1, 2)


class TransformerDenoiser(nn.Module):
    """Action tokens plus a prefix of [time token, one token per observation step], pre-norm encoder layers."""

    def __init__(self, action_dim: int, step_features: int, horizon: int, n_obs_steps: int, width: int = 64,
                 depth: int = 4, heads: int = 4, time_dim: int = 64) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.action_in = nn.Linear(action_dim, width)
        self.obs_in = nn.Linear(step_features, width)
        self.time_in = nn.Sequential(nn.Linear(time_dim, width), nn.Mish(), nn.Linear(width, width))
        self.pos = nn.Parameter(torch.zeros(1, 1 + n_obs_steps + horizon, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, action_dim))

    def forward(self, x: Tensor, timestep: Tensor, obs_features: Tensor) -> Tensor:
        time = self.time_in(sinusoidal_embedding(timestep, self.time_dim))[:, None]
        tokens = torch.cat([time, self.obs_in(obs_features), self.action_in(x)], dim=1)
        h = self.encoder(tokens + self.pos[:, : tokens.shape[1]])
        return self.out(h[:, -x.shape[1]:])


class PolicyNetwork(nn.Module):
    """Normaliser statistics + observation encoder + backbone (``"unet"`` or ``"transformer"``)."""

    def __init__(self, obs_dim: int, action_dim: int, horizon: int, n_obs_steps: int, backbone: str = "unet",
                 down_dims: tuple[int, ...] = (64, 128), kernel: int = 5, width: int = 64, depth: int = 4,
                 heads: int = 4, image_shape: tuple[int, int, int] | None = None, image_features: int = 64) -> None:
        super().__init__()
        if backbone not in ("unet", "transformer"):
            raise ValueError(f"unknown backbone {backbone!r}; valid: 'unet', 'transformer'")
        self.obs_dim, self.action_dim, self.horizon, self.n_obs_steps = obs_dim, action_dim, horizon, n_obs_steps
        self.normalizer = Normalizer(obs_dim, action_dim)
        self.obs_encoder = ObsEncoder(obs_dim, n_obs_steps, image_shape, image_features)
        if backbone == "unet":
            # registered before the backbone so that named_modules() lists it as ``mid_block``
            self.mid_block = Bottleneck(tuple(down_dims)[-1])
            self.backbone: nn.Module = ConditionalUnet1D(action_dim, self.obs_encoder.features, tuple(down_dims),
                                                         kernel, bottleneck=self.mid_block)
        else:
            self.backbone = TransformerDenoiser(action_dim, self.obs_encoder.step_features, horizon, n_obs_steps,
                                                width, depth, heads)

    def forward(self, x: Tensor, timestep: Tensor, cond: Any, guidance: Tensor | None = None) -> Tensor:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.horizon, self.action_dim):
            raise ValueError(f"action chunk of shape {tuple(x.shape)} does not match the network's "
                             f"[B, horizon={self.horizon}, action_dim={self.action_dim}]")
        if guidance is not None:
            raise ValueError("policy networks take no guidance input; use a fixed guidance scale of 1")
        return self.backbone(x, timestep, self.obs_encoder(cond))
