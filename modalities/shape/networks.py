"""The three shape denoisers: a point transformer, the stage-1 structure DiT and the stage-2 voxel-latent
transformer. Each is called as ``network(x_t, time, cond, guidance=None)`` (the core's default adapter) and
predicts a tensor of ``x_t``'s shape.

* ``PointTransformer`` — a transformer over the points of a cloud with no positional input, as Point-E's
  ("Point-E: A System for Generating 3D Point Clouds from Complex Prompts", Nichol et al., 2022): it is exactly
  permutation-equivariant, so it models a set. Points enter through NeRF-style Fourier features.
* ``StructureDiT`` — TRELLIS's sparse-structure flow ("Structured 3D Latents for Scalable and Versatile 3D
  Generation", Xiang et al., 2024) at toy size: an occupancy grid ``[G, G, G]`` cut into ``p^3`` patch tokens.
* ``VoxelLatentTransformer`` — TRELLIS's structured-latent flow: features ``[G^3, F]`` of the active voxels,
  given the occupancy (``cond["mask"]``). Like TRELLIS's SLat flow it works on ``2^3`` blocks of voxels: a block
  with no active voxel is a padded token (masked attention, zeroed state), inactive voxels inside a block are
  zeroed at the input, so no inactive voxel's value reaches an active one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modalities.shape.blocks import Block, Conditioning, FinalLayer, fourier_features


def _check_shape(name: str, x: Tensor, trailing: tuple[int, ...]) -> None:
    if tuple(x.shape[1:]) != trailing:
        raise ValueError(f"{name} takes [B, {', '.join(map(str, trailing))}], got {tuple(x.shape)}")


class _TokenNetwork(nn.Module):
    """Conditioning, a stack of ``blocks`` (the name the core's feature-layer default looks for) and a final
    layer; subclasses embed their latent as tokens and read tokens back."""

    def __init__(self, dim: int, depth: int, heads: int, cond_dim: int, out: int, mlp_ratio: float,
                 text_layers: int = 1) -> None:
        super().__init__()
        self.dim, self.cond_dim = dim, cond_dim
        self.cond = Conditioning(dim, cond_dim, text_layers)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.final = FinalLayer(dim, out)

    def enable_guidance_conditioning(self) -> None:
        """Add a zero-initialised scalar input (a guidance scale or a flow-map jump), embedded like time."""
        self.cond.enable_guidance()

    def randomise_output(self, std: float = 0.02) -> None:
        """Small random gates and output projection instead of adaLN-zero's zeros, so a seeded random network
        (a tiny test teacher) is not the constant zero map."""
        for module in [*(b.mod for b in self.blocks), self.final.mod, self.final.proj]:
            nn.init.normal_(module.weight, std=std)

    def run(self, h: Tensor, t: Tensor, text: Tensor | None, guidance: Tensor | None,
            mask: Tensor | None = None) -> Tensor:
        """Tokens ``h [B, L, D]`` through the blocks; returns the final layer's ``[B, L, out]``."""
        c = self.cond(t, text, guidance)
        h = h.transpose(1, 2)
        if mask is not None:
            h = h.masked_fill(~mask[:, None, :], 0.0)
        for block in self.blocks:
            h = block(h, c, mask)
        return self.final(h, c)


class PointTransformer(_TokenNetwork):
    """Point clouds ``[B, N, 3]`` (any ``N``); ``cond`` a caption embedding ``[B, cond_dim]`` or ``None``
    (``text_layers``: see ``Conditioning``)."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, cond_dim: int = 384, frequencies: int = 4,
                 mlp_ratio: float = 2.0, text_layers: int = 1) -> None:
        super().__init__(dim, depth, heads, cond_dim, 3, mlp_ratio, text_layers)
        self.frequencies = frequencies
        self.embed = nn.Linear(3 + 6 * frequencies, dim)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"PointTransformer takes point clouds [B, N, 3], got {tuple(x.shape)}")
        return self.run(self.embed(fourier_features(x, self.frequencies)), t, cond, guidance)


def _patch_centres(grid: int, patch: int) -> Tensor:
    """Centres of the ``(grid / patch)^3`` patches in ``[-1, 1]``, x-major order ``[L, 3]``."""
    n = grid // patch
    axis = (torch.arange(n, dtype=torch.float32) + 0.5) * 2 / n - 1
    return torch.cartesian_prod(axis, axis, axis)


def patchify(x: Tensor, grid: int, patch: int) -> Tensor:
    """``[B, G, G, G, C]`` to patch tokens ``[B, (G/p)^3, p^3 C]`` (patches x-major, voxels x-major inside)."""
    b, c, n = x.shape[0], x.shape[-1], grid // patch
    x = x.reshape(b, n, patch, n, patch, n, patch, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, n ** 3, patch ** 3 * c)


def unpatchify(tokens: Tensor, grid: int, patch: int) -> Tensor:
    """The inverse of ``patchify``: ``[B, (G/p)^3, p^3 C]`` to ``[B, G, G, G, C]``."""
    b, n = tokens.shape[0], grid // patch
    c = tokens.shape[-1] // patch ** 3
    x = tokens.reshape(b, n, n, n, patch, patch, patch, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, grid, grid, grid, c)


class StructureDiT(_TokenNetwork):
    """Occupancy grids ``[B, G, G, G]`` (values near -1 empty, +1 occupied) as ``(G/p)^3`` patch tokens with
    Fourier features of the patch centres as positions; ``cond`` a caption embedding or ``None``."""

    def __init__(self, grid: int = 8, patch: int = 2, dim: int = 96, depth: int = 4, heads: int = 4,
                 cond_dim: int = 384, frequencies: int = 3, mlp_ratio: float = 2.0) -> None:
        if grid % patch:
            raise ValueError(f"grid {grid} is not divisible by patch {patch}")
        super().__init__(dim, depth, heads, cond_dim, patch ** 3, mlp_ratio)
        self.grid, self.patch = grid, patch
        self.embed = nn.Linear(patch ** 3, dim)
        self.pos = nn.Linear(3 + 6 * frequencies, dim)
        self.register_buffer("centres", fourier_features(_patch_centres(grid, patch), frequencies), persistent=False)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        g = self.grid
        _check_shape("StructureDiT", x, (g, g, g))
        h = self.embed(patchify(x[..., None], g, self.patch)) + self.pos(self.centres)
        return unpatchify(self.run(h, t, cond, guidance), g, self.patch)[..., 0]


class VoxelLatentTransformer(_TokenNetwork):
    """Per-voxel features ``[B, G^3, F]`` (x-major voxel order) given ``cond = {"mask": [B, G^3] occupancy,
    "text": [B, cond_dim] caption embedding}``; the output is zero at inactive voxels."""

    def __init__(self, grid: int = 8, features: int = 12, patch: int = 2, dim: int = 96, depth: int = 4,
                 heads: int = 4, cond_dim: int = 384, frequencies: int = 3, mlp_ratio: float = 2.0) -> None:
        if grid % patch:
            raise ValueError(f"grid {grid} is not divisible by patch {patch}")
        super().__init__(dim, depth, heads, cond_dim, patch ** 3 * features, mlp_ratio)
        self.grid, self.patch, self.features = grid, patch, features
        self.embed = nn.Linear(patch ** 3 * (features + 1), dim)
        self.pos = nn.Linear(3 + 6 * frequencies, dim)
        self.register_buffer("centres", fourier_features(_patch_centres(grid, patch), frequencies), persistent=False)

    def forward(self, x: Tensor, t: Tensor, cond: dict[str, Any], guidance: Tensor | None = None) -> Tensor:
        g, p = self.grid, self.patch
        _check_shape("VoxelLatentTransformer", x, (g ** 3, self.features))
        if not isinstance(cond, dict) or "mask" not in cond:
            raise ValueError("VoxelLatentTransformer needs cond = {'mask': occupancy [B, G^3], 'text': ...}; got "
                             f"{type(cond).__name__}")
        active = cond["mask"].to(x.device) > 0.5
        inputs = torch.cat([torch.where(active[..., None], x, 0.0), active[..., None].to(x.dtype)], dim=-1)
        tokens = patchify(inputs.reshape(x.shape[0], g, g, g, -1), g, p)
        token_mask = patchify(active.reshape(x.shape[0], g, g, g, 1), g, p).any(-1)
        h = self.embed(tokens) + self.pos(self.centres)
        out = unpatchify(self.run(h, t, cond.get("text"), guidance, token_mask), g, p)
        return torch.where(active[..., None], out.reshape(x.shape), 0.0)
