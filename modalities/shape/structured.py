"""TRELLIS-style two-stage shape generation ("Structured 3D Latents for Scalable and Versatile 3D Generation",
Xiang et al., 2024), one plugin per stage so that each stage is distilled on its own (as MDT-dist distils both of
TRELLIS's flow transformers, "Few-step Flow for 3D Generation via Marginal-Data Transport Distillation", 2025):

* ``shape_structure`` (stage 1): an occupancy grid ``[G, G, G]`` (+1 active, -1 empty) from a caption; a
  ``StructureDiT`` over patch tokens.
* ``shape_latent`` (stage 2): per-voxel latents ``[G^3, F]`` (local surface points, see ``structure.VoxelGrid``)
  given the caption and the structure, ``cond = {"text": [B, 384], "mask": [B, G^3]}``. The occupancy is also the
  batch's token mask: inactive voxels are padding that no loss, network output or metric reads.

Both write their grid size (and stage 2 its points per voxel) into their weights cards; ``modalities.shape.pipeline``
chains the two and refuses a pair made for different grids.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any

import torch
from torch import Tensor

from modalities.shape.base import ShapeEvaluator, ShapeModalityBase
from modalities.shape.export import occupancy_mesh, points_mesh, render_views, save_glb, save_ply
from modalities.shape.geometry import chamfer, pairwise_iou_distance, resample
from modalities.shape.networks import StructureDiT, VoxelLatentTransformer
from modalities.shape.setmetrics import set_metrics
from modalities.shape.structure import VoxelGrid
from unidistill.batch import Batch


def random_structures(n: int, grid: int, generator: torch.Generator) -> Tensor:
    """``n`` random boolean occupancy grids ``[n, G^3]``: shells of random axis-aligned ellipsoids."""
    centres = VoxelGrid(grid).centres()
    radii = 0.35 + 0.6 * torch.rand(n, 1, 3, generator=generator)
    r = ((centres[None] / radii) ** 2).sum(-1).sqrt()
    return (r > 1 - 2.5 / grid) & (r < 1 + 0.5 / grid)


class StructureModality(ShapeModalityBase):
    """Stage 1: occupancy latents ``[B, G, G, G]`` in ``{-1, +1}``; a voxel is active where the latent is > 0.

    Args:
        grid, patch: the occupancy grid and the DiT's patch size (both recorded in weights cards).
        dim, depth, heads, frequencies, mlp_ratio, cond_dim: the ``StructureDiT``.
        path, prediction, teacher, student_init: as for every shape plugin (``teacher="random:<seed>"`` for tests).
        evaluator: the task's point-cloud metrics, applied to voxel-centre clouds (``prompt_accuracy``) when given.
    """

    name = "shape_structure"
    regression_metric = ("mmd_iou", True)

    def __init__(self, grid: int = 8, patch: int = 2, dim: int = 96, depth: int = 4, heads: int = 4,
                 cond_dim: int = 384, frequencies: int = 3, mlp_ratio: float = 2.0, path: str = "rectified_flow",
                 prediction: str = "flow", teacher: str = "random:0", student_init: str | None = None,
                 evaluator: ShapeEvaluator | None = None) -> None:
        super().__init__(path, prediction, teacher, student_init, evaluator)
        self.grid, self.cond_dim = VoxelGrid(grid), cond_dim
        self.network_args = {"grid": grid, "patch": patch, "dim": dim, "depth": depth, "heads": heads,
                             "cond_dim": cond_dim, "frequencies": frequencies, "mlp_ratio": float(mlp_ratio)}
        StructureDiT(**self.network_args)  # validates grid / patch / heads now, not at the first call

    @property
    def latent_shape(self) -> tuple[int, ...]:
        g = self.grid.grid
        return (g, g, g)

    def geometry(self) -> dict[str, Any]:
        return {"grid": self.grid.grid}

    def new_network(self) -> StructureDiT:
        return StructureDiT(**self.network_args)

    def occupancy(self, latents: Tensor) -> Tensor:
        """Active voxels ``[B, G^3]`` (bool) of stage-1 latents."""
        return (latents.detach() > 0).reshape(latents.shape[0], -1).cpu()

    def centre_clouds(self, occupancy: Tensor, points: int = 256, seed: int = 0) -> Tensor:
        """Voxel-centre clouds ``[B, points, 3]`` of occupancy grids (an empty grid: all points at the origin)."""
        g, centres = torch.Generator().manual_seed(seed), self.grid.centres()
        return torch.stack([resample(centres[o], points, g) for o in occupancy.bool()])

    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        occ = self.occupancy(samples)
        counts = occ.sum(1).float()
        out = {"active_voxels": float(counts.mean()), "empty_structures": float((counts == 0).float().mean()),
               "undecided_voxels": float((samples.detach().abs() < 0.5).float().mean())}
        if self.evaluator is not None:
            out |= {f"centres_{k}": v for k, v in self.evaluator.metrics(self.centre_clouds(occ), cond, None).items()}
        if reference is not None:
            ref = self.occupancy(reference)
            out["active_voxel_gap"] = float((counts.mean() - ref.sum(1).float().mean()).abs())
            out |= set_metrics(pairwise_iou_distance(occ, occ), pairwise_iou_distance(occ, ref),
                               pairwise_iou_distance(ref, ref), "iou")
        return out

    def save_samples(self, samples: Tensor, cond: Any, out_dir: str | FilePath, limit: int = 8) -> list[FilePath]:
        """A GLB mesh per structure (marching cubes around the filled voxels) and a PNG of the voxel centres."""
        out, g = FilePath(out_dir), self.grid.grid
        occ = self.occupancy(samples[:limit])
        files = [f for i, o in enumerate(occ) if (f := save_glb(occupancy_mesh(o.reshape(g, g, g)),
                                                                 out / f"structure_{i:02d}.glb"))]
        centres = self.grid.centres()
        files.append(render_views({"structure": [centres[o] for o in occ]}, [f"#{i}" for i in range(len(occ))],
                                  out / "views.png", point_size=6.0))
        return files

    # --- regression matrix ---------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> StructureModality:
        """A 4^3 grid, 2^3 patches, a 2-block DiT of width 16, 8-D captions, a seeded random teacher."""
        return cls(grid=4, patch=2, dim=16, depth=2, heads=2, cond_dim=8, frequencies=2)

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        """Ellipsoid shells as +1/-1 grids and random unit caption vectors."""
        g = self.grid.grid
        x0 = random_structures(n, g, generator).reshape(n, g, g, g).float() * 2 - 1
        cond = torch.randn(n, self.cond_dim, generator=generator)
        return Batch(x0, cond / cond.norm(dim=1, keepdim=True))


class StructuredLatentModality(ShapeModalityBase):
    """Stage 2: per-voxel latents ``[B, G^3, F]`` given the structure; ``F = 3 * points_per_voxel``.

    Args:
        grid, points_per_voxel: the voxelisation (both recorded in weights cards).
        patch, dim, depth, heads, frequencies, mlp_ratio, cond_dim: the ``VoxelLatentTransformer``.
        metric_points: decoded clouds are resampled to this many points for the evaluator's metrics.
        path, prediction, teacher, student_init, evaluator: as for every shape plugin.
    """

    name = "shape_latent"
    regression_metric = ("chamfer_given_structure", True)

    def __init__(self, grid: int = 8, points_per_voxel: int = 4, patch: int = 2, dim: int = 96, depth: int = 4,
                 heads: int = 4, cond_dim: int = 384, frequencies: int = 3, mlp_ratio: float = 2.0,
                 metric_points: int = 256, path: str = "rectified_flow", prediction: str = "flow",
                 teacher: str = "random:0", student_init: str | None = None,
                 evaluator: ShapeEvaluator | None = None) -> None:
        super().__init__(path, prediction, teacher, student_init, evaluator)
        self.grid, self.cond_dim, self.metric_points = VoxelGrid(grid, points_per_voxel), cond_dim, metric_points
        self.network_args = {"grid": grid, "features": 3 * points_per_voxel, "patch": patch, "dim": dim,
                             "depth": depth, "heads": heads, "cond_dim": cond_dim, "frequencies": frequencies,
                             "mlp_ratio": float(mlp_ratio)}
        VoxelLatentTransformer(**self.network_args)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.grid.voxels, self.grid.features)

    def geometry(self) -> dict[str, Any]:
        return {"grid": self.grid.grid, "points_per_voxel": self.grid.points_per_voxel}

    def new_network(self) -> VoxelLatentTransformer:
        return VoxelLatentTransformer(**self.network_args)

    def null_condition(self, cond: Any) -> Any:
        """The caption is dropped; the structure stays (guidance is on the text only)."""
        return {**cond, "text": torch.zeros_like(cond["text"])}

    def to_batch(self, data: Any) -> Batch:
        batch = super().to_batch(data)
        if batch.cond is None or "mask" not in batch.cond:
            raise ValueError("shape_latent batches need cond = {'text': ..., 'mask': occupancy [B, G^3]}")
        if batch.mask is None:
            batch.mask = batch.cond["mask"]
        return batch

    def decode(self, latents: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """Point clouds of latents given the structure ``mask [B, G^3]`` (required: latents alone carry none)."""
        if mask is None:
            raise ValueError("decoding stage-2 latents needs the structure: pass mask=cond['mask']")
        return self.grid.decode(latents.detach().float().cpu(), mask.detach().cpu() > 0.5)

    def clouds(self, latents: Tensor, mask: Tensor, seed: int = 0) -> Tensor:
        """Decoded clouds resampled to ``metric_points`` points ``[B, metric_points, 3]``."""
        g = torch.Generator().manual_seed(seed)
        return torch.stack([resample(p, self.metric_points, g) for p in self.decode(latents, mask)])

    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        mask = cond["mask"].detach().cpu() > 0.5
        active = samples.detach().float().cpu()[mask]
        out = {"outside_voxel": float((active.abs() > 1.25).float().mean()) if active.numel() else 0.0}
        if self.evaluator is not None:
            ref = None if reference is None else self.clouds(reference, mask, seed=1)
            out |= self.evaluator.metrics(self.clouds(samples, mask), cond["text"], ref)
        if reference is not None:
            per = [chamfer(s[None], r[None]) for s, r in zip(self.decode(samples, mask), self.decode(reference, mask),
                                                              strict=True) if len(r)]
            out["chamfer_given_structure"] = float(torch.cat(per).mean()) if per else 0.0
        return out

    def save_samples(self, samples: Tensor, cond: Any, out_dir: str | FilePath, limit: int = 8) -> list[FilePath]:
        """PLY and GLB (marching cubes around the decoded points) per shape, and a multi-view PNG."""
        out = FilePath(out_dir)
        clouds = self.decode(samples[:limit], cond["mask"][:limit])
        files = [save_ply(c, out / f"sample_{i:02d}.ply") for i, c in enumerate(clouds)]
        files += [f for i, c in enumerate(clouds) if (f := save_glb(points_mesh(c), out / f"sample_{i:02d}.glb"))]
        files.append(render_views({"samples": clouds}, [f"#{i}" for i in range(len(clouds))], out / "views.png"))
        return files

    # --- regression matrix ---------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> StructuredLatentModality:
        """A 4^3 grid with 2 points per voxel, a 2-block transformer of width 16, a seeded random teacher."""
        return cls(grid=4, points_per_voxel=2, patch=2, dim=16, depth=2, heads=2, cond_dim=8, frequencies=2,
                   metric_points=16)

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        """Ellipsoid-shell structures (some 2^3 blocks entirely empty, i.e. padded tokens) with random offsets
        in ``[-1, 1]`` on active voxels, zeros elsewhere, and random unit caption vectors."""
        g = self.grid
        mask = random_structures(n, g.grid, generator).float()
        x0 = (torch.rand(n, g.voxels, g.features, generator=generator) * 2 - 1) * mask[..., None]
        text = torch.randn(n, self.cond_dim, generator=generator)
        return Batch(x0, {"text": text / text.norm(dim=1, keepdim=True), "mask": mask}, mask)


def check_same_grid(structure: StructureModality, latent: StructuredLatentModality) -> None:
    """Refuse to chain a stage 1 and a stage 2 made for different grids."""
    if structure.grid.grid != latent.grid.grid:
        raise ValueError(f"stage 1 makes {structure.grid.grid}^3 structures but stage 2 reads {latent.grid.grid}^3 "
                         "ones; pair weights whose cards record the same grid")
