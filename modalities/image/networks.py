"""Diffusers image networks behind the core's adapter.

A condition is a dict ``{"emb": [B, L, D] token embeddings, "label": [B] task label or -1}``; the
networks only read ``emb``. Core time ``t`` is mapped to the network's own units by the path: diffusers'
discrete timestep ``k = N t - 1`` on a VP path, ``1000 t`` otherwise, which is what a diffusers scheduler
feeds the same network, so a teacher loaded from a pipeline folder sees exactly its training inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unidistill.denoiser import Adapter
from unidistill.paths import Path

#: the architectures this plugin builds from a config dict (diffusers class names)
ARCHITECTURES = ("UNet2DConditionModel", "PixArtTransformer2DModel")


def network_timestep(path: Path, t: Tensor) -> Tensor:
    """Core time -> the timestep a diffusers scheduler passes to its network for the same noise level."""
    step = getattr(path, "timestep", None)
    return step(t) if step is not None else t * 1000.0


class DiffusersAdapter(Adapter):
    """``(x_t, t, cond) -> network(sample, timestep, encoder_hidden_states).sample`` for UNets and
    PixArt-style transformers."""

    def __init__(self, path: Path) -> None:
        super().__init__(1.0)
        self.path = path

    def __call__(self, network: nn.Module, x_t: Tensor, t: Tensor, cond: Any, guidance: Tensor | None) -> Tensor:
        emb = cond["emb"] if isinstance(cond, dict) else cond
        if emb is None:
            raise ValueError("image networks need a text condition {'emb': [B, L, D]}; got None")
        emb = emb.to(x_t.dtype)
        if emb.shape[0] != x_t.shape[0]:
            raise ValueError(f"condition batch {emb.shape[0]} does not match latent batch {x_t.shape[0]}")
        step = network_timestep(self.path, t.reshape(x_t.shape[0], -1)[:, 0]).to(x_t.dtype)
        if type(network).__name__ == "PixArtTransformer2DModel":
            out = network(x_t, encoder_hidden_states=emb, timestep=step,
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        else:
            extra = {}
            if guidance is not None:
                dim = getattr(network.config, "time_cond_proj_dim", None)
                if dim is None:
                    raise ValueError("this UNet takes no guidance input: build the student with "
                                     "enable_guidance_input() (time_cond_proj_dim), or use a fixed guidance_scale")
                extra["timestep_cond"] = guidance_scale_embedding(guidance.reshape(-1), dim).to(x_t.dtype)
            out = network(x_t, step, encoder_hidden_states=emb, **extra).sample
        return out


def guidance_scale_embedding(w: Tensor, dim: int) -> Tensor:
    """LCM's w-embedding exactly as diffusers' pipelines compute it for ``timestep_cond``: the sinusoidal
    embedding of ``1000 (w - 1)`` (a pipeline called with ``guidance_scale=w`` feeds the same vector).
    Written out in the pipelines' operation order (``get_timestep_embedding`` rounds differently by ~1e-3 at
    large ``w``), so an exported student sees bit-identical inputs."""
    w = (w.float() - 1.0) * 1000.0
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = w[:, None] * freq.to(w.device)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def enable_guidance_input(network: nn.Module, dim: int = 256) -> nn.Module:
    """Give a UNet a guidance-scale input (Luo et al., 2023, "Latent Consistency Models"): diffusers'
    ``time_cond_proj_dim`` projection, zero-initialised so the network starts exactly as it was."""
    if type(network).__name__ != "UNet2DConditionModel":
        raise ValueError(f"{type(network).__name__} has no guidance-scale input; use a fixed guidance_scale")
    te = network.time_embedding
    if te.cond_proj is None:
        te.cond_proj = nn.Linear(dim, te.linear_1.in_features, bias=False)
        nn.init.zeros_(te.cond_proj.weight)
        network.register_to_config(time_cond_proj_dim=dim)
    return network


def build_network(architecture: str, config: dict[str, Any]) -> nn.Module:
    """A freshly initialised diffusers network from its class name and constructor config."""
    import diffusers

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown image architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}")
    cls = getattr(diffusers, architecture)
    return cls(**config)


def tiny_unet_config(channels: int = 1, size: int = 16, text_dim: int = 384,
                     blocks: tuple[int, ...] = (32, 64)) -> dict[str, Any]:
    """The ~1.2M-parameter text-conditioned UNet used by the digits task (see ENV.md's measurements)."""
    n = len(blocks)
    return {
        "sample_size": size, "in_channels": channels, "out_channels": channels, "layers_per_block": 1,
        "block_out_channels": list(blocks), "norm_num_groups": 8, "cross_attention_dim": text_dim,
        "attention_head_dim": 8,
        "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
        "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
    }


def tiny_pixart_config(channels: int = 1, size: int = 16, text_dim: int = 384, layers: int = 4,
                       heads: int = 4, head_dim: int = 16, patch: int = 2) -> dict[str, Any]:
    """A small PixArt-style diffusion transformer with text cross-attention."""
    return {
        "num_attention_heads": heads, "attention_head_dim": head_dim, "in_channels": channels,
        "out_channels": channels, "num_layers": layers, "cross_attention_dim": heads * head_dim,
        "sample_size": size, "patch_size": patch, "caption_channels": text_dim, "norm_num_groups": 8,
        "interpolation_scale": 1,
    }
