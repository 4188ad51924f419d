"""The ``pointcloud`` modality: point clouds ``[B, N, 3]`` in ``[-1, 1]^3`` generated directly, as in PVD
("3D Shape Generation and Completion through Point-Voxel Diffusion", Zhou et al., 2021) and PSF ("Fast Point Cloud
Generation with Straight Flows", Wu et al., 2023), with a permutation-equivariant ``PointTransformer`` on a
rectified-flow path. The condition is a caption embedding ``[B, 384]`` (zeros are the null condition).
Quality comes from the task's evaluator (1-NNA / COV / MMD under Chamfer and EMD, ``fd_shapes``,
``prompt_accuracy``); samples are written as PLY files, GLB meshes (marching cubes around the points) and a
multi-view PNG.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any

import torch
from torch import Tensor

from modalities.shape.base import ShapeEvaluator, ShapeModalityBase
from modalities.shape.blocks import check_text_layers
from modalities.shape.export import points_mesh, render_views, save_glb, save_ply
from modalities.shape.networks import PointTransformer
from unidistill.batch import Batch


class PointCloudModality(ShapeModalityBase):
    """Point-cloud latents ``[B, num_points, 3]``.

    Args:
        num_points: points per cloud (the latent shape; recorded in weights cards).
        dim, depth, heads, frequencies, mlp_ratio: the ``PointTransformer``; ``cond_dim``: caption embedding size;
            ``text_layers``: 1 (a linear caption embedding) or 2 (an MLP; recorded in the card only when 2).
        path, prediction: the noise path and what the network predicts.
        teacher: safetensors of the teacher (with its card), or ``"random:<seed>"`` (a seeded random network).
        student_init: optional safetensors to start the student (or a continued teacher) from.
        evaluator: the task's metric provider; without it only point statistics are reported.
        save_meshes: also write a GLB mesh per saved sample (marching cubes, about 10 ms a shape).
    """

    name = "pointcloud"

    def __init__(self, num_points: int = 256, dim: int = 64, depth: int = 4, heads: int = 4, cond_dim: int = 384,
                 frequencies: int = 4, mlp_ratio: float = 2.0, text_layers: int = 1, path: str = "rectified_flow",
                 prediction: str = "flow", teacher: str = "random:0", student_init: str | None = None,
                 evaluator: ShapeEvaluator | None = None, save_meshes: bool = True) -> None:
        if num_points < 2:
            raise ValueError(f"num_points must be >= 2, got {num_points}")
        super().__init__(path, prediction, teacher, student_init, evaluator)
        self.num_points, self.cond_dim, self.save_meshes = num_points, cond_dim, save_meshes
        self.network_args = {"dim": dim, "depth": depth, "heads": heads, "cond_dim": cond_dim,
                             "frequencies": frequencies, "mlp_ratio": float(mlp_ratio)}
        if check_text_layers(text_layers) != 1:
            self.network_args["text_layers"] = text_layers

    @property
    def regression_metric(self) -> tuple[str, bool] | None:
        return getattr(self.evaluator, "regression_metric", ("point_std_gap", True))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.num_points, 3)

    def geometry(self) -> dict[str, Any]:
        return {"num_points": self.num_points}

    def new_network(self) -> PointTransformer:
        return PointTransformer(**self.network_args)

    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        samples = samples.detach().float().cpu()
        out: dict[str, float] = {}
        if self.evaluator is not None:
            out |= self.evaluator.metrics(samples, cond, None if reference is None else reference.float().cpu())
        out["outside_unit_cube"] = float((samples.abs() > 1.05).any(-1).float().mean())
        if reference is not None:
            out["point_std_gap"] = float((samples.std(1) - reference.float().cpu().std(1)).abs().mean())
        return out

    def save_samples(self, samples: Tensor, cond: Any, out_dir: str | FilePath, limit: int = 8) -> list[FilePath]:
        """PLY (and GLB) files of the first ``limit`` samples and one multi-view PNG of them."""
        out = FilePath(out_dir)
        clouds = [c for c in samples[:limit].detach().float().cpu()]
        files = [save_ply(c, out / f"sample_{i:02d}.ply") for i, c in enumerate(clouds)]
        if self.save_meshes:
            files += [f for i, c in enumerate(clouds) if (f := save_glb(points_mesh(c), out / f"sample_{i:02d}.glb"))]
        files.append(render_views({"samples": clouds}, [f"#{i}" for i in range(len(clouds))], out / "views.png"))
        return files

    def save_comparison(self, samples: dict[str, Tensor], cond: Any, out_dir: str | FilePath,
                        captions: list[str] | None = None, limit: int = 4) -> list[FilePath]:
        """One multi-view PNG with a row per model for the same conditions and seeds, plus each row's PLYs."""
        out = FilePath(out_dir)
        rows = {label: [c for c in x[:limit].detach().float().cpu()] for label, x in samples.items()}
        n = len(next(iter(rows.values())))
        files = [render_views(rows, captions[:n] if captions else [f"#{i}" for i in range(n)], out / "comparison.png")]
        for r, (label, clouds) in enumerate(rows.items()):
            safe = "".join(ch if ch.isalnum() else "_" for ch in label)
            files += [save_ply(c, out / f"{r:02d}_{safe}_{i:02d}.ply") for i, c in enumerate(clouds)]
        return files

    # --- regression matrix ---------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> PointCloudModality:
        """32 points, a 2-block transformer of width 16, 8-D captions, a seeded random teacher; no files."""
        return cls(num_points=32, dim=16, depth=2, heads=2, cond_dim=8, frequencies=2, save_meshes=False)

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        """Points on random axis-aligned ellipsoids and random unit caption vectors."""
        directions = torch.randn(n, self.num_points, 3, generator=generator)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        radii = 0.3 + 0.6 * torch.rand(n, 1, 3, generator=generator)
        cond = torch.randn(n, self.cond_dim, generator=generator)
        return Batch(directions * radii, cond / cond.norm(dim=1, keepdim=True))
