"""Shapes out (and back in) through trimesh: PLY point clouds, GLB meshes by marching cubes (scikit-image) from an
occupancy grid or from points, and multi-view PNG renders (matplotlib, orthographic views coloured by depth)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path as FilePath

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: (azimuth, elevation) in degrees of the rendered views; z is up
VIEWS = ((30.0, 20.0), (120.0, 20.0), (30.0, 75.0))


def save_ply(points: Tensor | np.ndarray, path: str | FilePath) -> FilePath:
    """Write a point cloud ``[n, 3]`` as a PLY file."""
    import trimesh

    path = FilePath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.PointCloud(np.asarray(torch.as_tensor(points).detach().cpu(), dtype=np.float64)).export(str(path))
    return path


def load_ply(path: str | FilePath) -> Tensor:
    """The points ``[n, 3]`` of a PLY point cloud (or the vertices of a PLY mesh)."""
    import trimesh

    path = FilePath(path)
    if not path.is_file():
        raise FileNotFoundError(f"no PLY file at {str(path)!r}")
    return torch.from_numpy(np.asarray(trimesh.load(str(path)).vertices, dtype=np.float32))


def _marching_cubes(volume: np.ndarray, lo: float, spacing: float) -> object | None:
    """Marching cubes at level 0.5 of a padded ``volume`` whose voxel (0, 0, 0) is centred at ``lo``."""
    import trimesh
    from skimage.measure import marching_cubes

    if not volume.any():
        return None
    verts, faces, _, _ = marching_cubes(volume.astype(np.float32), level=0.5, spacing=(spacing,) * 3)
    return trimesh.Trimesh(vertices=verts + lo, faces=faces[:, ::-1], process=True)


def occupancy_mesh(occupancy: Tensor, smooth: float = 0.6) -> object | None:
    """A closed mesh around an occupancy grid ``[G, G, G]`` (bool) of ``[-1, 1]^3``: holes of the (surface) voxel
    shell filled, lightly smoothed, marching cubes at the half level. ``None`` for an empty grid."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter

    occ = np.pad(binary_fill_holes(np.asarray(occupancy.cpu(), dtype=bool)), 1)
    pitch = 2 / occupancy.shape[0]
    volume = gaussian_filter(occ.astype(np.float32), smooth) if smooth > 0 else occ
    return _marching_cubes(volume, -1 - pitch / 2, pitch)  # the padding's first voxel is centred at -1 - pitch / 2


def points_mesh(points: Tensor, resolution: int = 32, smooth: float = 0.8) -> object | None:
    """A closed mesh around a point cloud ``[n, 3]`` in ``[-1, 1]^3``: the points voxelised at ``resolution``,
    dilated by one voxel, interior filled, smoothed, marching cubes. ``None`` for an empty cloud."""
    from scipy.ndimage import binary_dilation, binary_fill_holes, gaussian_filter

    if points.shape[0] == 0:
        return None
    pitch = 2 / resolution
    ijk = np.clip(np.floor((np.asarray(points.detach().cpu(), dtype=np.float64) + 1) / pitch), 0, resolution - 1)
    occ = np.zeros((resolution,) * 3, dtype=bool)
    occ[tuple(ijk.astype(np.int64).T)] = True
    occ = np.pad(binary_fill_holes(binary_dilation(occ)), 1)
    return _marching_cubes(gaussian_filter(occ.astype(np.float32), smooth), -1 - pitch / 2, pitch)


def save_glb(mesh: object | None, path: str | FilePath) -> FilePath | None:
    """Write a trimesh mesh as GLB; ``None`` (an empty shape) writes nothing and returns ``None``."""
    if mesh is None:
        log.warning("empty shape: no mesh written to %s", path)
        return None
    path = FilePath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(str(path), file_type="glb")
    return path


def load_glb(path: str | FilePath) -> object:
    """The (single) mesh of a GLB file as a ``trimesh.Trimesh``."""
    import trimesh

    path = FilePath(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GLB file at {str(path)!r}")
    scene = trimesh.load(str(path), file_type="glb")
    return scene.to_geometry() if isinstance(scene, trimesh.Scene) else scene


def project(points: np.ndarray, azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic screen coordinates ``[n, 2]`` and depth ``[n]`` (larger is nearer) of ``[n, 3]`` points."""
    a, e = math.radians(azimuth), math.radians(elevation)
    right = np.array([-math.sin(a), math.cos(a), 0.0])
    toward = np.array([math.cos(a) * math.cos(e), math.sin(a) * math.cos(e), math.sin(e)])
    up = np.cross(toward, right)
    return np.stack([points @ right, points @ up], 1), points @ toward


def render_views(rows: dict[str, Sequence[Tensor]], captions: Sequence[str], path: str | FilePath,
                 views: Sequence[tuple[float, float]] = VIEWS, point_size: float = 2.0) -> FilePath:
    """One PNG: a row per model (``rows``: label -> clouds ``[n, 3]``, one per caption), a block of ``views``
    columns per caption, points coloured by depth. Empty clouds show as an empty panel marked "empty"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(captions) * len(views)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols, 1.45 * n_rows + 0.4), squeeze=False)
    for r, (label, clouds) in enumerate(rows.items()):
        if len(clouds) != len(captions):
            raise ValueError(f"row {label!r} has {len(clouds)} clouds for {len(captions)} captions")
        for c, cloud in enumerate(clouds):
            pts = np.asarray(torch.as_tensor(cloud).detach().cpu(), dtype=np.float64)
            for v, (az, el) in enumerate(views):
                ax = axes[r, c * len(views) + v]
                ax.set_xlim(-1.1, 1.1)
                ax.set_ylim(-1.1, 1.1)
                ax.set_aspect("equal")
                ax.set_xticks([])
                ax.set_yticks([])
                if len(pts) == 0:
                    ax.text(0, 0, "empty", ha="center", va="center", fontsize=7)
                else:
                    xy, depth = project(pts, az, el)
                    order = np.argsort(depth)
                    ax.scatter(xy[order, 0], xy[order, 1], c=depth[order], cmap="viridis", s=point_size,
                               linewidths=0, vmin=-1.2, vmax=1.2)
                if r == 0 and v == 0:
                    ax.set_title(captions[c], fontsize=7, loc="left")
                if c == 0 and v == 0:
                    ax.set_ylabel(label, fontsize=7)
    fig.tight_layout(pad=0.2)
    path = FilePath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return path
