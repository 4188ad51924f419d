"""The two-stage pipeline: stage 1 samples a structure from a caption, stage 2 samples the latents of its active
voxels, and the grid decodes them to points (as TRELLIS chains its sparse-structure and SLat flows).

Each stage is any sampler ``(noise, cond) -> SampleResult`` (a teacher's ODE solve or a few-step student), so
teacher -> teacher and student -> student pipelines run through the same code. A structure with no active voxel is
a result, not a crash: stage 2 still runs (its network gives zeros for it), the shape decodes to an empty cloud and
``ShapeSamples.empty`` marks it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

import torch
from torch import Tensor

from modalities.shape.pointcloud import PointCloudModality
from modalities.shape.structured import StructuredLatentModality, StructureModality, check_same_grid
from unidistill.solvers import SampleResult

Sampler = Callable[[Tensor, Any], SampleResult]


@dataclass
class ShapeSamples:
    """What the pipeline made: stage-1 latents ``[B, G, G, G]``, occupancy ``[B, G^3]`` (bool), stage-2 latents
    ``[B, G^3, F]``, decoded clouds (variable length), NFE and wall seconds per stage."""

    structure: Tensor
    occupancy: Tensor
    latents: Tensor
    clouds: list[Tensor]
    nfe: tuple[int, int]
    seconds: tuple[float, float] = field(default=(0.0, 0.0))

    @property
    def empty(self) -> Tensor:
        """``[B]`` bool: shapes whose structure has no active voxel (their cloud is empty)."""
        return ~self.occupancy.any(1)


class TwoStagePipeline:
    """Stage-1 and stage-2 modalities (same grid) and a sampler for each stage."""

    def __init__(self, structure: StructureModality, latent: StructuredLatentModality, stage1: Sampler,
                 stage2: Sampler) -> None:
        check_same_grid(structure, latent)
        self.structure, self.latent, self.stage1, self.stage2 = structure, latent, stage1, stage2

    @torch.no_grad()
    def generate(self, text: Tensor, generator: torch.Generator) -> ShapeSamples:
        """Shapes for caption embeddings ``text [B, D]``; both stages' noise comes from ``generator``."""
        n = text.shape[0]
        noise1 = torch.randn((n, *self.structure.latent_shape), generator=generator)
        noise2 = torch.randn((n, *self.latent.latent_shape), generator=generator)
        start = time.perf_counter()
        s1 = self.stage1(noise1, text)
        mid = time.perf_counter()
        occupancy = self.structure.occupancy(s1.x)
        s2 = self.stage2(noise2, {"text": text, "mask": occupancy.float()})
        end = time.perf_counter()
        latents = torch.where(occupancy[..., None], s2.x.float().cpu(), 0.0)
        return ShapeSamples(s1.x.cpu(), occupancy, latents, self.latent.decode(latents, occupancy.float()),
                            (s1.nfe, s2.nfe), (mid - start, end - mid))


def read_card(weights: str | FilePath) -> dict[str, Any]:
    """The weights card beside ``weights`` (``<stem>.json``); a missing card is an error."""
    card = FilePath(weights).with_suffix(".json")
    if not card.is_file():
        raise FileNotFoundError(f"no weights card {str(card)!r} beside {str(weights)!r}; a pipeline pairs stages "
                                "by their cards")
    return json.loads(card.read_text())


def _card_for(weights: str | FilePath, modality: str) -> dict[str, Any]:
    """``weights``' card, refused unless it records ``modality``."""
    card = read_card(weights)
    if card.get("modality") != modality:
        raise ValueError(f"{str(weights)!r} holds {card.get('modality')!r} weights, expected {modality!r}")
    return card


def modalities_from_cards(stage1_weights: str | FilePath, stage2_weights: str | FilePath,
                          **evaluator: Any) -> tuple[StructureModality, StructuredLatentModality]:
    """Both stages' modalities built from their weights cards, teachers set to those weights; a pair whose cards
    record different grids (or the wrong stage) is refused before any weights are read."""
    c1, c2 = _card_for(stage1_weights, "shape_structure"), _card_for(stage2_weights, "shape_latent")
    if c1.get("grid") != c2.get("grid"):
        raise ValueError(f"stage 1 {str(stage1_weights)!r} was trained on a {c1.get('grid')}^3 grid but stage 2 "
                         f"{str(stage2_weights)!r} on a {c2.get('grid')}^3 grid; they cannot be chained")
    a1, a2 = dict(c1["network_args"]), dict(c2["network_args"])
    a2.pop("features")
    structure = StructureModality(**a1, teacher=str(stage1_weights), prediction=c1["prediction"], **evaluator)
    latent = StructuredLatentModality(**a2, points_per_voxel=c2["points_per_voxel"], teacher=str(stage2_weights),
                                      prediction=c2["prediction"], **evaluator)
    return structure, latent


def points_modality_from_card(weights: str | FilePath, **evaluator: Any) -> PointCloudModality:
    """The point-cloud modality its weights card describes (point count, network arguments), teacher set to
    ``weights``: a script that scores a shipped or exported teacher need not repeat its network arguments."""
    card = _card_for(weights, "pointcloud")
    return PointCloudModality(num_points=card["num_points"], **card["network_args"], teacher=str(weights),
                              prediction=card["prediction"], **evaluator)
