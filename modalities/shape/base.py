"""What the three shape plugins share: the path and prediction type, teacher loading from safetensors or a seeded
random network, weights cards that carry the geometry (point count, grid size, points per voxel, network size),
so weights made for another geometry are refused, and the task's evaluator."""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path as FilePath
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from unidistill.denoiser import Denoiser, freeze
from unidistill.modality import Modality
from unidistill.paths import PATHS, Path, check_prediction_type
from unidistill.weights import load_safetensors


class ShapeEvaluator(Protocol):
    """What a task supplies for point-cloud quality (``tasks.shapes.ShapesEvaluator``)."""

    def metrics(self, clouds: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]: ...


class ShapeModalityBase(Modality):
    """Subclasses set ``network_args`` and implement ``new_network`` and ``geometry``."""

    network_args: dict[str, Any]

    def __init__(self, path: str, prediction: str, teacher: str, student_init: str | None,
                 evaluator: ShapeEvaluator | None) -> None:
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
        self.path: Path = PATHS[path]()
        self.prediction = check_prediction_type(prediction)
        self.teacher_source, self.student_init, self.evaluator = teacher, student_init, evaluator

    @abstractmethod
    def new_network(self) -> nn.Module:
        """A freshly initialised network of this representation."""

    @abstractmethod
    def geometry(self) -> dict[str, Any]:
        """The fields of the latent's geometry a weights card records (e.g. ``num_points``, ``grid``)."""

    def card_fields(self) -> dict[str, Any]:
        """What a weights card must agree on for this modality's denoisers to read the weights."""
        return {"modality": self.name, "path": repr(self.path), "prediction": self.prediction, **self.geometry(),
                "network_args": self.network_args}

    def new_denoiser(self) -> Denoiser:
        """A trainable denoiser; it starts from ``student_init`` when set (a teacher recipe continuing a round)."""
        den = Denoiser(self.new_network(), self.path, self.prediction)
        if self.student_init is not None:
            load_safetensors(den.network, self.student_init, f"{self.name} initialisation", card=self.card_fields())
        return den

    def load_teacher(self) -> Denoiser:
        if self.teacher_source.startswith("random:"):
            with torch.random.fork_rng():
                torch.manual_seed(int(self.teacher_source.split(":", 1)[1]))
                network = self.new_network()
                network.randomise_output()
        else:
            network = self.new_network()
            load_safetensors(network, self.teacher_source, f"{self.name} teacher",
                             "the network arguments and geometry must match the card", card=self.card_fields())
        return freeze(Denoiser(network, self.path, self.prediction))

    def load_student(self, weights: str | FilePath) -> Denoiser:
        """A frozen denoiser from exported student weights (``unidistill export``), checked against their card."""
        den = Denoiser(self.new_network(), self.path, self.prediction)
        load_safetensors(den.network, weights, f"{self.name} student", card=self.card_fields())
        return freeze(den)

    def load_student_init(self, network: nn.Module, card: dict[str, Any] | None = None) -> None:
        super().load_student_init(network, {**(card or {}), **self.geometry()})

    def null_condition(self, cond: Any) -> Any:
        return None if cond is None else torch.zeros_like(cond)

    def export(self, student: Denoiser, out_dir: str | FilePath, name: str = "student") -> list[FilePath]:
        """Safetensors plus a card (``<name>.json``) that also records the geometry and the network arguments."""
        files = super().export(student, out_dir, name)
        card = next(f for f in files if f.suffix == ".json")
        info = json.loads(card.read_text())
        card.write_text(json.dumps({**info, **self.geometry(), "network_args": self.network_args}, indent=2))
        return files
