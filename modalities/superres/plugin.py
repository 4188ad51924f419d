"""The ``superres`` modality: x``scale`` super-resolution conditioned on the upsampled low-resolution image.

Data batches are dicts ``{"x": HR [B, 3, H, W] in [-1, 1], "cond": {"lr": LR [B, 3, H/s, W/s], "up": bicubic
upsampled LR [B, 3, H, W]}}``. The condition is the dict; networks read ``up`` (channel-concatenated with the noisy
latent, ``modalities.superres.network``), metrics read ``lr``. The latent is either the residual ``HR - up``
(``latent="residual"``, the default: the network only has to add detail) or the HR image itself
(``latent="image"``). Paths: any core path, or ResShift's residual shifting (``path="residual_shift"``,
``unidistill.paths.ResidualShift``), which is defined on the residual, so it requires ``latent="residual"``; there
the unit-noise prior ``sigma(1) eps`` of the residual is ResShift's start ``x_T = up + kappa eps``. There is no
classifier-free guidance (the null condition is the condition itself).
"""

from __future__ import annotations

import json
from pathlib import Path as FilePath
from typing import Any

import torch
from torch import Tensor

from modalities.superres.grid import save_rows
from modalities.superres.metrics import sr_metrics
from modalities.superres.network import SRAdapter, build_unet, size_multiple, unet_config
from unidistill.batch import Batch
from unidistill.denoiser import Denoiser, freeze
from unidistill.modality import Modality
from unidistill.paths import PATHS, Path, ResidualShift, check_prediction_type
from unidistill.weights import load_safetensors

LATENTS = ("residual", "image")
PATH_NAMES = (*PATHS, "residual_shift")
#: about the per-pixel standard deviation of each latent kind on the task's photos (bicubic x4: 0.115 and 0.58)
DATA_STD = {"residual": 0.12, "image": 0.5}


def make_path(name: str, args: dict[str, Any] | None, latent: str) -> Path:
    if name not in PATH_NAMES:
        raise ValueError(f"unknown path {name!r}; valid: {', '.join(PATH_NAMES)}")
    if name == "residual_shift":
        if latent != "residual":
            raise ValueError(f"path='residual_shift' is defined on the residual HR - up; it needs latent='residual', "
                             f"got latent={latent!r}")
        return ResidualShift(**(args or {}))
    return PATHS[name](**(args or {}))


class SuperResModality(Modality):
    """Super-resolution distillation.

    Args:
        scale: the upscaling factor (recorded in weights cards; weights for another scale are refused).
        patch: training patch side (the latent is ``[3, patch, patch]``); inference runs at any size by tiles.
        latent: ``residual`` (HR minus the upsampled LR) or ``image``.
        path, path_args: the noise path (``residual_shift`` or a core path name) and its constructor arguments.
        prediction: the network's output type (ResShift predicts ``x0``).
        blocks, layers_per_block: the ``UNet2DModel`` (no attention).
        regression: an L2 regression network (zeros in place of the noisy latent; the baseline to beat).
        teacher: safetensors of the teacher network (with its card beside it), or ``"random:<seed>"``.
        student_init: safetensors to start the student from (or, when training, the network: continued rounds).
        warm_start: safetensors of an L2 regression network of the same architecture (``regression: true`` in its
            card) to start a diffusion network from when training: its weights on the noisy-latent input are
            zeroed, so the network starts as that regression network (its prediction of ``E[x0 | LR]``) and
            learns the rest (the predict-then-refine idea of Whang et al., 2022, "Deblurring via Stochastic
            Refinement", as a warm start).
        tile, tile_overlap: full-image inference tiles (``upscale``); images with more than ``max_pixels`` output
            pixels are always tiled.
    """

    name = "superres"
    regression_metric = ("st_lpips_alex", True)

    def __init__(self, scale: int = 4, patch: int = 64, latent: str = "residual", path: str = "residual_shift",
                 path_args: dict[str, Any] | None = None, prediction: str = "x0",
                 blocks: list[int] | tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
                 regression: bool = False, teacher: str = "random:0", student_init: str | None = None,
                 warm_start: str | None = None, tile: int = 128, tile_overlap: int = 16,
                 max_pixels: int = 256 * 256) -> None:
        if latent not in LATENTS:
            raise ValueError(f"unknown latent {latent!r}; valid: {', '.join(LATENTS)}")
        if int(scale) < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale, self.patch, self.latent = int(scale), int(patch), latent
        self.path_name, self.path_args = path, dict(path_args or {})
        self.path = make_path(path, path_args, latent)
        self.prediction = check_prediction_type(prediction)
        self.config = unet_config(tuple(blocks), int(layers_per_block), 3, self.patch)
        self.multiple = size_multiple(self.config)
        if self.patch % self.multiple or self.patch % self.scale:
            raise ValueError(f"patch {patch} must be a multiple of the scale {scale} and of the network's size "
                             f"multiple {self.multiple}")
        if tile % self.multiple:
            raise ValueError(f"tile {tile} must be a multiple of the network's size multiple {self.multiple}")
        self.regression = bool(regression)
        if warm_start is not None and self.regression:
            raise ValueError("warm_start starts a diffusion network from a regression network; it needs "
                             "regression=false")
        self.teacher_source, self.student_init, self.warm_start = teacher, student_init, warm_start
        self.tile, self.tile_overlap, self.max_pixels = int(tile), int(tile_overlap), int(max_pixels)

    # -- shapes and networks -----------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (3, self.patch, self.patch)

    def card_fields(self) -> dict[str, Any]:
        """What a weights card must agree on: a teacher for another scale, latent or path samples garbage."""
        return {"modality": self.name, "path": repr(self.path), "prediction": self.prediction, "scale": self.scale,
                "latent": self.latent, "regression": self.regression,
                "blocks": list(self.config["block_out_channels"]), "layers_per_block": self.config["layers_per_block"]}

    def _denoiser(self) -> Denoiser:
        return Denoiser(build_unet(self.config), self.path, self.prediction,
                        SRAdapter(self.path, DATA_STD[self.latent], self.regression))

    def new_denoiser(self) -> Denoiser:
        """A freshly initialised network; from ``student_init`` when set (a teacher recipe's continued round), or
        from the regression network ``warm_start``."""
        den = self._denoiser()
        if self.student_init is not None:
            load_safetensors(den.network, self.student_init, "initialisation", card=self.card_fields())
        elif self.warm_start is not None:
            # a regression network reads no noisy latent, so its card's noise path does not matter
            card = {k: v for k, v in self.card_fields().items() if k != "path"} | {"regression": True}
            load_safetensors(den.network, self.warm_start, "warm-start regression network", card=card)
            with torch.no_grad():
                den.network.conv_in.weight[:, : den.network.config.out_channels].zero_()
        return den

    def load_teacher(self) -> Denoiser:
        if self.teacher_source.startswith("random:"):
            with torch.random.fork_rng():
                torch.manual_seed(int(self.teacher_source.split(":", 1)[1]))
                den = self._denoiser()
        else:
            den = self._denoiser()
            load_safetensors(den.network, self.teacher_source, "super-resolution teacher", card=self.card_fields())
        return freeze(den)

    def build_student(self, teacher: Denoiser, guidance_conditioned: bool = False) -> Denoiser:
        student = super().build_student(teacher, guidance_conditioned)
        if student.adapter.regression:
            raise ValueError("the teacher is a regression network (regression=true); distil a diffusion teacher")
        return student

    def load_network(self, weights: str | FilePath, what: str = "super-resolution network") -> Denoiser:
        """A frozen denoiser from exported weights (a student, the teacher, the regression baseline)."""
        den = self._denoiser()
        load_safetensors(den.network, weights, what, card=self.card_fields())
        return freeze(den)

    def export(self, student: Denoiser, out_dir: str | FilePath, name: str = "student") -> list[FilePath]:
        files = super().export(student, out_dir, name)
        card = files[1]
        card.write_text(json.dumps({**json.loads(card.read_text()), **self.card_fields(),
                                    "network_config": self.config}, indent=2))
        return files

    # -- data <-> latents --------------------------------------------------------------------------------
    def to_batch(self, data: Any) -> Batch:
        if isinstance(data, Batch):
            return data
        if not isinstance(data, dict) or "cond" not in data:
            raise ValueError("superres batches are dicts {'x': HR, 'cond': {'lr': LR, 'up': upsampled LR}}")
        cond = data["cond"]
        x = None if data.get("x") is None else self.encode_hr(data["x"], cond)
        batch = Batch(x, cond, size=int(cond["up"].shape[0]))
        if x is not None:
            self.check_latents(x)
        return batch

    def encode_hr(self, hr: Tensor, cond: dict[str, Tensor]) -> Tensor:
        return hr - cond["up"] if self.latent == "residual" else hr

    def images(self, latents: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Images in ``[-1, 1]`` from latents and their conditions."""
        x = latents + cond["up"].to(latents) if self.latent == "residual" else latents
        return x.clamp(-1, 1)

    def upscale(self, model: torch.nn.Module, lr: Any, steps: int, solver: str = "ddim", **kwargs: Any) -> Tensor:
        """Super-resolve a whole image of any size (tiled when large); see ``modalities.superres.inference``."""
        from modalities.superres.inference import upscale

        return upscale(self, model, lr, steps, solver, **kwargs)

    # -- metrics and artefacts ---------------------------------------------------------------------------
    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        out = self.images(samples.detach().float().cpu(), _cpu(cond))
        if reference is None:
            return {"pixel_std": float(out.std())}
        hr = self.images(reference.detach().float().cpu(), _cpu(cond))
        return sr_metrics(out, hr, _cpu(cond)["lr"], self.scale)

    def save_samples(self, samples: Tensor, cond: Any, out_dir: str | FilePath) -> list[FilePath]:
        cond = _cpu(cond)
        out = FilePath(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = {"LR (nearest)": cond["lr"], "bicubic": cond["up"], "output": self.images(samples.cpu(), cond)}
        return [save_rows(rows, self.scale, out / "samples.png", limit=8)]

    def save_comparison(self, samples: dict[str, Tensor], cond: Any, out_dir: str | FilePath) -> list[FilePath]:
        cond = _cpu(cond)
        out = FilePath(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = {"LR (nearest)": cond["lr"], "bicubic": cond["up"]}
        rows |= {label: self.images(x.cpu(), cond) for label, x in samples.items()}
        return [save_rows(rows, self.scale, out / "comparison.png", limit=8)]

    # -- the regression matrix ---------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> SuperResModality:
        """16x16 patches (4x4 LR), a 2-block UNet of width 8/16, a seeded random teacher on ResShift's path."""
        return cls(patch=16, blocks=(8, 16), tile=16, tile_overlap=4, path_args={"num_steps": 4})

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        """Random ``patch``-pixel crops of a real photo (astronaut), bicubic-degraded, chosen by ``generator``."""
        from modalities.superres.degradation import downsample, upsample
        from tasks.photo_sr.photos import load_photo

        img = load_photo("astronaut")
        h, w = img.shape[-2:]
        p = self.patch
        rows = torch.randint(0, h - p + 1, (n,), generator=generator).tolist()
        cols = torch.randint(0, w - p + 1, (n,), generator=generator).tolist()
        hr = torch.stack([img[:, r:r + p, c:c + p] for r, c in zip(rows, cols, strict=True)])
        lr = downsample(hr, self.scale)
        cond = {"lr": lr, "up": upsample(lr, self.scale)}
        return Batch(self.encode_hr(hr, cond), cond)


def _cpu(cond: Any) -> Any:
    return {k: v.detach().float().cpu() for k, v in cond.items()} if isinstance(cond, dict) else cond
