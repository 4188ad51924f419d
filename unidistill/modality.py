"""The modality plugin contract and its registry.

A modality owns everything shape- or domain-specific: the latent shape, the networks and their adapter,
how the teacher is loaded and the student built, encode/decode between data and latents, conditions and
the null condition, the noise prior, metrics and how samples are saved. The core only calls these hooks.

Plugins are found by name through the ``unidistill.modalities`` entry-point group, so a third-party
package distils a new domain by shipping a ``Modality`` subclass and declaring, in its pyproject::

    [project.entry-points."unidistill.modalities"]
    mydomain = "my_package.plugin:MyModality"
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path as FilePath
from typing import Any

import torch
from torch import Tensor

from unidistill.batch import Batch
from unidistill.denoiser import Denoiser
from unidistill.weights import load_safetensors

ENTRY_POINT_GROUP = "unidistill.modalities"
_REGISTRY: dict[str, type[Modality]] = {}


class Modality(ABC):
    """Base class of every plugin. Subclasses set ``name`` and implement the abstract hooks."""

    name: str = ""
    #: causal modalities (streaming video) give networks that satisfy ``unidistill.causal.CausalNetwork`` and put
    #: a frame axis first
    causal: bool = False
    #: ``(metric name, lower is better)`` the quality regression tier compares with its goldens; ``None`` means
    #: the first metric ``metrics`` reports, lower is better. Set it: a plugin's first metric is often a
    #: statistic (a pixel mean) rather than a quality measure.
    regression_metric: tuple[str, bool] | None = None
    #: safetensors weights of the student network to start from instead of the teacher's (a plugin sets it from
    #: its ``student_init`` argument); ``build_student`` loads it, strictly, before any guidance input is added
    student_init: str | FilePath | None = None
    #: whether ``build_student(..., guidance_conditioned=True)`` can give the student a second scalar input (an LCM
    #: guidance scale, a flow map's jump length); the default ``build_student`` calls the network's
    #: ``enable_guidance_conditioning()``. Set it to ``False`` when the networks have none, so the objectives that
    #: need one are reported as unsupported rather than failing
    guidance_input: bool = True

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """The trailing shape ``S`` of a latent ``[B, *S]``."""

    @abstractmethod
    def new_denoiser(self) -> Denoiser:
        """A freshly initialised trainable denoiser (teacher training, or a new-architecture student)."""

    @abstractmethod
    def load_teacher(self) -> Denoiser:
        """The frozen teacher. Raise ``FileNotFoundError`` naming the missing path when weights are absent."""

    def build_student(self, teacher: Denoiser, guidance_conditioned: bool = False) -> Denoiser:
        """The student, by default a trainable copy of the teacher network.

        ``guidance_conditioned`` asks for a student that takes the guidance scale as an input
        (the network must offer ``enable_guidance_conditioning()``).
        """
        student = copy.deepcopy(teacher)
        self.load_student_init(student.network, {"path": repr(teacher.path), "prediction": teacher.prediction})
        student.network.train()
        student.network.requires_grad_(True)
        if guidance_conditioned:
            enable = getattr(student.network, "enable_guidance_conditioning", None)
            if enable is None:
                raise ValueError(
                    f"{type(student.network).__name__} cannot take a guidance-scale input; "
                    "use a fixed guidance_scale instead of guidance_range"
                )
            enable()
        return student

    def load_student_init(self, network: torch.nn.Module, card: dict[str, Any] | None = None) -> None:
        """Load ``student_init`` into a freshly built student network, if one is set; a card beside the file
        must agree with ``card`` (the teacher's path and prediction type, see ``check_card``)."""
        if self.student_init is not None:
            load_safetensors(network, self.student_init, "student initialisation",
                             "the student must have the teacher's architecture and config", card=card or {})

    def to_batch(self, data: Any) -> Batch:
        """Turn what the dataloader yields into a latent ``Batch`` (encoding data if needed)."""
        if isinstance(data, Batch):
            batch = data
        elif isinstance(data, dict):
            batch = Batch(self.encode(data["x"]) if "x" in data else None, data.get("cond"), data.get("mask"),
                          size=int(data.get("size", 0)))
        elif isinstance(data, (tuple, list)):
            batch = Batch(self.encode(data[0]), data[1] if len(data) > 1 else None)
        else:
            batch = Batch(self.encode(data))
        if batch.x0 is not None:
            self.check_latents(batch.x0)
        return batch

    def check_latents(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.latent_shape):
            raise ValueError(
                f"{self.name or type(self).__name__}: latent of shape {tuple(x.shape)} does not match "
                f"the modality's latent shape [B, {', '.join(map(str, self.latent_shape))}]"
            )

    def encode(self, data: Tensor) -> Tensor:
        return data

    def decode(self, latents: Tensor) -> Any:
        return latents

    def null_condition(self, cond: Any) -> Any:
        """The null condition for classifier-free guidance; the default modality is unconditional."""
        return cond

    def prior(self, n: int, cond: Any, generator: torch.Generator) -> Tensor | None:
        """The student's starting latent; ``None`` means unit Gaussian noise of the latent shape."""
        return None

    @abstractmethod
    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        """Quality of ``samples`` (latents) given their conditions and held-out reference latents."""

    def save_samples(self, samples: Tensor, cond: Any, out_dir: str | FilePath) -> list[FilePath]:
        """Write samples for people to look at; the default stores the raw latents as safetensors."""
        from safetensors.torch import save_file

        out = FilePath(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "samples.safetensors"
        save_file({"samples": samples.detach().cpu().contiguous()}, str(path))
        return [path]

    def save_comparison(self, samples: dict[str, Tensor], cond: Any, out_dir: str | FilePath) -> list[FilePath]:
        """Write several models' samples for the same conditions and seeds so people can compare them;
        ``samples`` maps a row label (e.g. ``"teacher ddim 100 NFE"``) to latents. Default: one
        ``save_samples`` folder per label."""
        out = FilePath(out_dir)
        files: list[FilePath] = []
        for i, (label, x) in enumerate(samples.items()):
            safe = "".join(ch if ch.isalnum() else "_" for ch in label)
            files += self.save_samples(x, cond, out / f"{i:02d}_{safe}")
        return files

    def export(self, student: Denoiser, out_dir: str | FilePath, name: str = "student") -> list[FilePath]:
        """Write the trained network for use outside unidistill; default: ``<name>.safetensors`` plus its weights
        card ``<name>.json`` (modality, network, path, prediction, latent shape), which loaders check."""
        import json

        from safetensors.torch import save_file

        out = FilePath(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        weights = out / f"{name}.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in student.network.state_dict().items()}
        save_file(state, str(weights))
        card = out / f"{name}.json"
        card.write_text(json.dumps({
            "modality": self.name, "network": type(student.network).__name__, "path": repr(student.path),
            "prediction": student.prediction, "latent_shape": list(self.latent_shape),
        }, indent=2))
        return [weights, card]

    def time_shape(self, batch_size: int) -> tuple[int, ...] | None:
        """The shape of time the networks take; ``None`` means ``[B]``."""
        return None

    # -- the cross-modality regression matrix ------------------------------------------------------------

    @classmethod
    def tiny(cls) -> Modality | None:
        """A CPU-seconds instance of this modality for the regression matrix's fast tier: tiny networks,
        a teacher that loads without files the user must provide (shipped weights or a seeded random
        network). ``None`` keeps the modality out of the matrix, which the matrix reports with a reason."""
        return None

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` training examples as a latent ``Batch`` (data-free objectives ignore ``x0``), drawn only from
        ``generator``; used by the regression matrix so no DataModule is needed."""
        raise NotImplementedError(f"{type(self).__name__} does not provide example_batch()")


def register_modality(name: str):
    """Class decorator registering a modality in-process (entry points do the same across packages)."""

    def deco(cls: type[Modality]) -> type[Modality]:
        cls.name = cls.name or name
        _REGISTRY[name] = cls
        return cls

    return deco


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_modalities() -> list[str]:
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_modality_class(name: str) -> type[Modality]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name not in eps:
        raise KeyError(f"no modality named {name!r}; available: {', '.join(available_modalities()) or 'none'}")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Modality)):
        raise TypeError(f"entry point {name!r} gives {cls!r}, which is not a unidistill Modality subclass")
    _REGISTRY[name] = cls
    return cls
