"""TRELLIS-style structured latents at toy size: a coarse occupancy grid (the *structure*) and, for each active
voxel, local surface detail (its *latent*), encoded exactly from surface points and decoded back to points.

The grid covers ``[-1, 1]^3`` with ``G^3`` voxels in x-major order (index ``i G^2 + j G + k``). A voxel is active
when surface points fall in it (TRELLIS's active voxels are the ones the surface crosses). An active voxel's latent
is ``points_per_voxel`` of its surface points, picked by farthest-point sampling from the one nearest their mean,
as offsets from the voxel centre in units of half a voxel (so within ``[-1, 1]``): ``F = 3 * points_per_voxel``
numbers. Inactive voxels hold zeros and are masked everywhere. Decoding is exact: centre + offset * pitch / 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class VoxelGrid:
    """A ``grid^3`` voxelisation of ``[-1, 1]^3`` with ``points_per_voxel`` surface points per active voxel."""

    grid: int = 8
    points_per_voxel: int = 4

    def __post_init__(self) -> None:
        if self.grid < 2 or self.points_per_voxel < 1:
            raise ValueError(f"need grid >= 2 and points_per_voxel >= 1, got {self.grid}, {self.points_per_voxel}")

    @property
    def pitch(self) -> float:
        return 2.0 / self.grid

    @property
    def voxels(self) -> int:
        return self.grid ** 3

    @property
    def features(self) -> int:
        return 3 * self.points_per_voxel

    def centres(self) -> Tensor:
        """Voxel centres ``[G^3, 3]`` in x-major order."""
        axis = (torch.arange(self.grid, dtype=torch.float32) + 0.5) * self.pitch - 1
        return torch.cartesian_prod(axis, axis, axis)

    def voxel_index(self, points: np.ndarray) -> np.ndarray:
        """The voxel of each point ``[n, 3]`` (points outside ``[-1, 1]^3`` go to the nearest border voxel)."""
        ijk = np.clip(np.floor((points + 1) / self.pitch).astype(np.int64), 0, self.grid - 1)
        return (ijk[:, 0] * self.grid + ijk[:, 1]) * self.grid + ijk[:, 2]

    def occupancy(self, points: np.ndarray | Tensor) -> Tensor:
        """Active voxels of a cloud ``[n, 3]``: bool ``[G^3]``."""
        occ = torch.zeros(self.voxels, dtype=torch.bool)
        occ[torch.from_numpy(self.voxel_index(np.asarray(points, dtype=np.float64)))] = True
        return occ

    def encode(self, points: np.ndarray) -> tuple[Tensor, Tensor]:
        """Occupancy ``[G^3]`` (bool) and latents ``[G^3, F]`` from dense surface points ``[n, 3]``."""
        points = np.asarray(points, dtype=np.float64)
        idx = self.voxel_index(points)
        order = np.argsort(idx, kind="stable")
        ids, starts = np.unique(idx[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        centres = self.centres().double().numpy()
        feats = np.zeros((self.voxels, self.points_per_voxel, 3))
        for v, s, e in zip(ids, starts, ends, strict=True):
            group = points[order[s:e]]
            pick = _farthest_from_mean(group, self.points_per_voxel)
            feats[v] = (group[pick] - centres[v]) / (self.pitch / 2)
        occ = torch.zeros(self.voxels, dtype=torch.bool)
        occ[torch.from_numpy(ids)] = True
        return occ, torch.from_numpy(feats.reshape(self.voxels, -1)).float()

    def decode(self, latents: Tensor, occupancy: Tensor) -> list[Tensor]:
        """Points of each shape: ``latents [B, G^3, F]`` and ``occupancy [B, G^3]`` to ``B`` clouds
        ``[active * points_per_voxel, 3]`` (an empty structure gives an empty cloud)."""
        if latents.ndim != 3 or tuple(latents.shape[1:]) != (self.voxels, self.features):
            raise ValueError(f"latents must be [B, {self.voxels}, {self.features}] for a {self.grid}^3 grid with "
                             f"{self.points_per_voxel} points per voxel, got {tuple(latents.shape)}")
        if tuple(occupancy.shape) != tuple(latents.shape[:2]):
            raise ValueError(f"occupancy {tuple(occupancy.shape)} does not match latents {tuple(latents.shape)}")
        k = self.points_per_voxel
        pts = self.centres().to(latents)[None, :, None] + latents.reshape(*latents.shape[:2], k, 3) * self.pitch / 2
        return [p[occ.bool()].reshape(-1, 3) for p, occ in zip(pts, occupancy, strict=True)]


def _farthest_from_mean(group: np.ndarray, k: int) -> np.ndarray:
    """``k`` indices into ``group [n, 3]``: the point nearest the mean, then farthest-point sampling; a voxel with
    fewer than ``k`` points repeats them in that order."""
    first = int(((group - group.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    dist = ((group - group[first]) ** 2).sum(1)
    for _ in range(min(k, len(group)) - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, ((group - group[nxt]) ** 2).sum(1))
    return np.array([chosen[i % len(chosen)] for i in range(k)])


def encode_mesh(mesh: object, grid: VoxelGrid, surface_points: int = 8192, seed: int = 0,
                solid: bool = False) -> tuple[Tensor, Tensor]:
    """Occupancy and latents of a ``trimesh.Trimesh`` (scaled into ``[-1, 1]^3`` by the caller). ``solid`` also
    marks the voxels inside the mesh (trimesh's ``voxelized(pitch).fill()``), which needs a closed surface: a
    mesh that is not watertight is refused. Interior voxels carry no surface, so their latents stay zero."""
    import trimesh

    if not isinstance(mesh, trimesh.Trimesh):
        raise TypeError(f"encode_mesh takes a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0:
        raise ValueError("the mesh has no faces; there is no surface to sample")
    points, _ = trimesh.sample.sample_surface(mesh, surface_points, seed=seed)
    occ, feats = grid.encode(np.asarray(points))
    if solid:
        if not mesh.is_watertight:
            open_edges = int(len(mesh.edges_unique) - len(mesh.face_adjacency))
            raise ValueError(f"solid voxel filling needs a watertight mesh, and this one is not (about {open_edges} "
                             "open edges): close it first (trimesh.repair.fill_holes) or encode its surface voxels "
                             "only (solid=False)")
        inside = mesh.voxelized(grid.pitch).fill().points
        occ = occ | grid.occupancy(np.asarray(inside))
    return occ, feats
