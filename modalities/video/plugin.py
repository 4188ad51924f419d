"""The ``video`` modality: clips ``[B, T, C, H, W]`` in pixel space (values in ``[-1, 1]``), per-frame time.

The teacher is a bidirectional ``VideoDiT``; the student is the same network switched to block-causal mode
(chunks of ``chunk_size`` frames) with a rolling KV cache of ``cache_window`` chunks, so it streams. The
condition is a caption embedding ``[B, cond_dim]``; its null counterpart is zeros. Task-specific quality
(a Fréchet video distance in a task's own feature network, identity consistency, drift) comes from an
``evaluator`` the task supplies; without one, only feature-free pixel statistics are reported.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any, Protocol

import torch
from torch import Tensor

from modalities.video.gif import save_gif
from modalities.video.network import VideoDiT
from unidistill.batch import Batch
from unidistill.denoiser import Denoiser, freeze
from unidistill.modality import Modality
from unidistill.paths import PATHS, Path, check_prediction_type
from unidistill.weights import load_safetensors


class VideoEvaluator(Protocol):
    """What a task supplies for quality: metrics of generated clips given conditions and real clips."""

    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]: ...


class VideoModality(Modality):
    """Pixel-space video latents ``[B, frames, channels, size, size]`` with per-frame time ``[B, frames]``.

    Args:
        frames, channels, size: clip shape (training length; streaming goes on past it).
        patch, dim, depth, heads: the ``VideoDiT``'s size; ``cond_dim``: caption embedding size (0: none).
        chunk_size, cache_window: the causal student's chunk (frames) and rolling KV cache (chunks).
        teacher: safetensors of the bidirectional teacher, or ``"random:<seed>"`` (a seeded random network,
            for tests); ``student_init``: optional safetensors to start the causal student from (e.g. an
            ODE-regression initialisation).
        evaluator: the task's metric provider (``VideoEvaluator``).
    """

    name = "video"
    causal = True

    @property
    def regression_metric(self) -> tuple[str, bool] | None:
        """The task evaluator's own choice (moving digits: ``fvd_moving_digits``); without one, the first metric."""
        return getattr(self.evaluator, "regression_metric", None)

    def __init__(self, frames: int = 16, channels: int = 1, size: int = 32, patch: int = 4, dim: int = 64,
                 depth: int = 4, heads: int = 4, cond_dim: int = 384, chunk_size: int = 4,
                 cache_window: int | None = 3, path: str = "rectified_flow", prediction: str = "flow",
                 teacher: str = "random:0", student_init: str | None = None,
                 evaluator: VideoEvaluator | None = None) -> None:
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.frames, self.channels, self.size = frames, channels, size
        self.net_args = {"channels": channels, "size": size, "patch": patch, "dim": dim, "depth": depth,
                         "heads": heads, "cond_dim": cond_dim, "chunk_size": chunk_size, "cache_window": cache_window}
        self.cond_dim = cond_dim
        self.path: Path = PATHS[path]()
        self.prediction = check_prediction_type(prediction)
        self.teacher_source, self.student_init, self.evaluator = teacher, student_init, evaluator

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.frames, self.channels, self.size, self.size)

    def time_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.frames)

    def new_network(self, causal: bool = False) -> VideoDiT:
        return VideoDiT(causal=causal, **self.net_args)

    def new_denoiser(self) -> Denoiser:
        """A bidirectional denoiser (teacher training); it starts from ``student_init`` when that is set, so a
        teacher recipe can continue from earlier weights."""
        den = Denoiser(self.new_network(), self.path, self.prediction)
        if self.student_init is not None:
            load_safetensors(den.network, self.student_init, "initialisation", card=self.card_fields())
        return den

    def load_teacher(self) -> Denoiser:
        den = Denoiser(self.new_network(), self.path, self.prediction)
        if self.teacher_source.startswith("random:"):
            with torch.random.fork_rng():
                torch.manual_seed(int(self.teacher_source.split(":", 1)[1]))
                den = Denoiser(self.new_network(), self.path, self.prediction)
                for p in den.network.head.parameters():  # a zero head would make the random teacher trivial
                    torch.nn.init.normal_(p, std=0.02)
        else:
            load_safetensors(den.network, self.teacher_source, "video teacher", card=self.card_fields())
        return freeze(den)

    def card_fields(self) -> dict[str, Any]:
        """What a weights card must agree on to be read by this modality's denoisers (``check_card``)."""
        return {"modality": self.name, "path": repr(self.path), "prediction": self.prediction}

    def load_student(self, weights: str | FilePath) -> Denoiser:
        """A frozen block-causal student from exported weights (``unidistill export``), for streaming."""
        den = Denoiser(self.new_network(causal=True), self.path, self.prediction)
        load_safetensors(den.network, weights, "video student", card=self.card_fields())
        return freeze(den)

    def build_student(self, teacher: Denoiser, guidance_conditioned: bool = False) -> Denoiser:
        """A trainable block-causal copy of the bidirectional teacher (or of ``student_init``)."""
        student = super().build_student(teacher, guidance_conditioned)
        student.network.causal = True
        return student

    def null_condition(self, cond: Any) -> Any:
        return None if cond is None else torch.zeros_like(cond)

    def decode(self, latents: Tensor) -> Tensor:
        """Clips in ``[0, 1]``."""
        return ((latents.float() + 1) / 2).clamp(0, 1)

    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        samples = samples.detach().float().cpu()
        out: dict[str, float] = {}
        if self.evaluator is not None:
            out.update(self.evaluator.metrics(samples, cond, None if reference is None else reference.cpu()))
        motion = (samples[:, 1:] - samples[:, :-1]).abs().mean()
        out["temporal_change"] = float(motion)
        if reference is not None:
            ref = reference.detach().float().cpu()
            out["pixel_mean_gap"] = float((samples.mean() - ref.mean()).abs())
        return out

    def save_samples(self, samples: Tensor, cond: Any, out_dir: str | FilePath) -> list[FilePath]:
        out = FilePath(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return [save_gif(self.decode(samples[:16]), out / "samples.gif")]

    # --- regression matrix ---------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> VideoModality:
        """8 frames of 8x8, a 2-block DiT of width 16, chunks of 2 frames, a seeded random teacher."""
        return cls(frames=8, size=8, patch=4, dim=16, depth=2, heads=2, cond_dim=8, chunk_size=2, cache_window=2)

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        """Bright squares sliding with constant random velocity on a dark canvas, random unit captions."""
        s, f = self.size, self.frames
        side = max(2, s // 4)
        start = torch.randint(0, s - side, (n, 2), generator=generator)
        vel = torch.randint(-1, 2, (n, 2), generator=generator)
        x = torch.full((n, f, self.channels, s, s), -1.0)
        for i in range(n):
            for j in range(f):
                r, c = (start[i] + vel[i] * j).clamp(0, s - side).tolist()
                x[i, j, :, r:r + side, c:c + side] = 1.0
        cond = None
        if self.cond_dim:
            cond = torch.randn(n, self.cond_dim, generator=generator)
            cond = cond / cond.norm(dim=1, keepdim=True)
        return Batch(x, cond)
