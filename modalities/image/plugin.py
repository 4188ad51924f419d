"""The ``image`` modality: text-to-image with diffusers networks, in pixel space or a VAE's latent space.

Data batches are dicts ``{"x": images [B, C, H, W] in [-1, 1], "prompt": list[str], "label": [B]}``;
``to_batch`` encodes images through the VAE (if any) and prompts through the cached text encoder, giving
the condition ``{"emb": [B, L, D], "label": [B], "prompt_id": [B]}`` (``label``/``prompt_id`` only feed
metrics and sample captions; the networks read ``emb``). The null condition is the empty prompt.
"""

from __future__ import annotations

import copy
from pathlib import Path as FilePath
from typing import Any

import torch
from torch import Tensor, nn

from modalities.image.evaluation import ImageEvaluator, image_metrics
from modalities.image.grid import save_grid
from modalities.image.networks import (
    ARCHITECTURES,
    DiffusersAdapter,
    build_network,
    enable_guidance_input,
    tiny_unet_config,
)
from modalities.image.pipeline import PipelineParts, load_pipeline_folder
from modalities.image.pretrained_metrics import check_clip_folder, check_inception_weights
from modalities.image.text import TextEncoder
from unidistill.batch import Batch
from unidistill.denoiser import Denoiser, freeze
from unidistill.modality import Modality
from unidistill.paths import path_from_diffusers

DEFAULT_SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
                     "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "v_prediction"}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class ImageModality(Modality):
    """Text-to-image distillation.

    Args:
        teacher: a diffusers pipeline folder (``save_pretrained`` output) holding the teacher's UNet or
            transformer, its scheduler, and optionally its VAE, text encoder and tokenizer.
        text_encoder: a local transformers folder or a built-in name (``minilm``); overrides the folder's.
        max_prompt_length: tokens per prompt (longer prompts are truncated with a warning); ``None`` takes
            the tokenizer's ``model_max_length``, as diffusers' pipelines do.
        architecture / network_config / scheduler_config / vae: what ``new_denoiser`` builds when training
            a teacher from scratch (``vae`` is an ``AutoencoderKL`` folder for latent-space training).
        student: ``"full"`` (a trainable copy of the teacher) or ``"lora"`` (peft LoRA adapters on a frozen
            copy, so the distilled result is a small adapter, as latent consistency LoRA does).
        evaluator: the task's feature network (``fd_<name>``, precision/recall) and classifier
            (``prompt_accuracy``); without it only pixel statistics are reported.
        clip_model: a local folder holding a transformers ``CLIPModel`` and ``CLIPProcessor``
            (``save_pretrained``); when given, ``clip_score`` is reported (torchmetrics' CLIPScore).
        inception_weights: the local path of torch-fidelity's FID InceptionV3 weights
            (``weights-inception-2015-12-05-6726825d.pth``; pytorch-fid ships the same network as
            ``pt_inception-2015-12-05-6726825d.pth``); when given, real FID is reported as ``fid``
            (torchmetrics' FrechetInceptionDistance, 2048-D features). Nothing is downloaded.
        random_teacher_seed: build a seeded random teacher from ``network_config`` instead of loading one
            (tests and the regression matrix only).
        student_init: start the student from already distilled weights instead of the teacher's: a
            ``diffusion_pytorch_model.safetensors`` file, a diffusers model folder holding one, or a pipeline
            folder written by ``unidistill export`` (its ``unet/`` or ``transformer/``). Used to post-train a
            distilled student, e.g. adversarially from a consistency student as in Lin et al., 2025,
            "Diffusion Adversarial Post-Training for One-Step Video Generation" (APT).
    """

    name = "image"

    @property
    def regression_metric(self) -> tuple[str, bool]:
        """Frechet distance in the task's feature network; the Inception FID when there is none."""
        if self.evaluator is not None:
            return f"fd_{self.evaluator.name}", True
        if self.inception_weights is not None:
            return "fid", True
        return "pixel_std", False  # with no feature network, at least detect collapse

    def __init__(
        self,
        teacher: str | None = None,
        text_encoder: str | None = None,
        max_prompt_length: int | None = None,
        architecture: str = "UNet2DConditionModel",
        network_config: dict[str, Any] | None = None,
        scheduler_config: dict[str, Any] | None = None,
        vae: str | None = None,
        student: str = "full",
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lora_targets: list[str] | None = None,
        evaluator: ImageEvaluator | None = None,
        clip_model: str | None = None,
        inception_weights: str | None = None,
        random_teacher_seed: int | None = None,
        student_init: str | None = None,
    ) -> None:
        if student not in ("full", "lora"):
            raise ValueError(f"student={student!r}; valid: 'full', 'lora'")
        if student == "lora" and int(lora_rank) < 1:
            raise ValueError(f"lora_rank must be a positive integer for a LoRA student, got {lora_rank}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown image architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        self.teacher_folder, self.text_encoder_name = teacher, text_encoder
        self.max_prompt_length = max_prompt_length
        self.student_kind, self.lora_rank, self.lora_alpha = student, int(lora_rank), lora_alpha
        self.lora_targets = list(lora_targets or LORA_TARGETS)
        # a wrong metric path fails here, not at the first validation after training has started
        self.clip_model = check_clip_folder(clip_model) if clip_model is not None else None
        self.inception_weights = check_inception_weights(inception_weights) if inception_weights is not None else None
        self.evaluator = evaluator
        self.random_teacher_seed = random_teacher_seed
        self.student_init = student_weights_file(student_init) if student_init is not None else None
        self._parts: PipelineParts | None = load_pipeline_folder(teacher) if teacher is not None else None
        if self._parts is not None:
            self.architecture = self._parts.architecture
            self.network_config = dict(self._parts.network.config)
            self.scheduler_config = dict(self._parts.scheduler_config)
            self.vae = self._parts.vae
        else:
            self.architecture = architecture
            self.network_config = dict(network_config or tiny_unet_config())
            self.scheduler_config = dict(scheduler_config or DEFAULT_SCHEDULER)
            self.vae = _load_vae(vae) if vae is not None else None
        if self.vae is not None:
            self.vae.eval().requires_grad_(False)
        self.path, self.prediction = path_from_diffusers(self.scheduler_config)
        self._text: TextEncoder | None = None
        self._prompts: dict[str, int] = {}

    # -- shapes and networks -------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = int(self.network_config.get("in_channels", 4))
        s = self.network_config.get("sample_size", 32)
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return (c, int(h), int(w))

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels) if self.vae is not None else self.latent_shape[0]

    @property
    def guidance_input(self) -> bool:
        """UNets take one through diffusers' ``time_cond_proj_dim`` (see ``enable_guidance_input``)."""
        return self.architecture == "UNet2DConditionModel"

    def _denoiser(self, network: nn.Module) -> Denoiser:
        return Denoiser(network, self.path, self.prediction, DiffusersAdapter(self.path))

    def new_denoiser(self) -> Denoiser:
        return self._denoiser(build_network(self.architecture, self.network_config))

    def load_teacher(self) -> Denoiser:
        if self._parts is not None:
            return freeze(self._denoiser(copy.deepcopy(self._parts.network)))
        if self.random_teacher_seed is not None:
            with torch.random.fork_rng():
                torch.manual_seed(self.random_teacher_seed)
                return freeze(self.new_denoiser())
        raise FileNotFoundError("ImageModality has no teacher: set teacher=<diffusers pipeline folder>")

    def build_student(self, teacher: Denoiser, guidance_conditioned: bool = False) -> Denoiser:
        student = super().build_student(teacher, False)  # loads student_init, if set
        if guidance_conditioned:
            enable_guidance_input(student.network)
        if self.student_kind == "lora":
            from peft import LoraConfig

            net = student.network
            net.requires_grad_(False)
            net.add_adapter(LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha or self.lora_rank,
                                       init_lora_weights="gaussian", target_modules=self.lora_targets))
            for name, p in net.named_parameters():
                p.requires_grad_("lora_" in name or "cond_proj" in name)
        return student

    # -- text ----------------------------------------------------------------------------------------------
    @property
    def has_text_encoder(self) -> bool:
        """False only for embedding-conditioned test instances (``tiny``), whose null embedding is zeros."""
        return self.text_encoder_name is not None or (self._parts is not None and self._parts.text_folder is not None)

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            name = self.text_encoder_name
            if name is None and self._parts is not None and self._parts.text_folder is not None:
                folder = FilePath(self.teacher_folder)
                self._text = TextEncoder.shared(folder / "text_encoder", self.max_prompt_length, folder / "tokenizer")
            elif name is None:
                raise ValueError("no text encoder: the teacher folder has none, so set text_encoder=<folder|minilm>")
            else:
                self._text = TextEncoder.shared(name, self.max_prompt_length)
            cross = self.network_config.get("cross_attention_dim", self.network_config.get("caption_channels"))
            if cross is not None and int(cross) != self._text.hidden_size and "caption_channels" not in \
                    self.network_config:
                raise ValueError(f"text encoder hidden size {self._text.hidden_size} does not match the "
                                 f"network's cross_attention_dim {cross}")
        return self._text

    def prompt_condition(self, prompts: list[str], labels: Tensor | None = None) -> dict[str, Tensor]:
        """The condition dict for a list of prompts (embeddings come from the cache after the first call)."""
        ids = torch.tensor([self._prompts.setdefault(p, len(self._prompts)) for p in prompts], dtype=torch.long)
        label = labels if labels is not None else torch.full((len(prompts),), -1, dtype=torch.long)
        return {"emb": self.text.encode(prompts), "label": label.long(), "prompt_id": ids}

    def prompt_text(self, prompt_ids: Tensor) -> list[str]:
        names = {i: p for p, i in self._prompts.items()}
        return [names.get(int(i), "") for i in prompt_ids]

    def null_condition(self, cond: Any) -> Any:
        if cond is None:
            return None
        n = cond["emb"].shape[0]
        null = self.text.encode([""]).to(cond["emb"]) if self.has_text_encoder else torch.zeros_like(cond["emb"][:1])
        ids = torch.full_like(cond["prompt_id"], self._prompts.setdefault("", len(self._prompts))) \
            if "prompt_id" in cond else None
        out = {"emb": null.expand(n, *null.shape[1:]), "label": torch.full_like(cond["label"], -1)}
        if ids is not None:
            out["prompt_id"] = ids
        return out

    # -- data <-> latents ----------------------------------------------------------------------------------
    def to_batch(self, data: Any) -> Batch:
        if isinstance(data, Batch):
            return super().to_batch(data)
        if not isinstance(data, dict) or "prompt" not in data:
            raise TypeError("image batches are dicts {'x': images, 'prompt': list[str], 'label': ...}; "
                            f"got {type(data).__name__}")
        x = data.get("x")
        x0 = self.encode(x) if x is not None else None
        labels = data.get("label")
        cond = self.prompt_condition(list(data["prompt"]), labels.to(torch.long) if labels is not None else None)
        if x0 is not None:
            self.check_latents(x0)
            cond = {k: v.to(x0.device) for k, v in cond.items()}
        return Batch(x0, cond)

    def encode(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise ValueError(f"images of shape {tuple(images.shape)}: expected [B, {self.image_channels}, H, W] "
                             f"({self.image_channels} channel(s), values in [-1, 1])")
        if self.vae is None:
            return images
        with torch.no_grad():
            z = self.vae.to(images.device).encode(images).latent_dist.mode()
        return z * self.vae.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        with torch.no_grad():
            out = self.vae.to(latents.device).decode(latents / self.vae.config.scaling_factor).sample
        return out.clamp(-1, 1)

    # -- evaluation and export -----------------------------------------------------------------------------
    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        images = self.decode(samples.detach().float())
        ref = self.decode(reference.detach().float()) if reference is not None else None
        labels = cond.get("label") if isinstance(cond, dict) else None
        prompts = self.prompt_text(cond["prompt_id"]) if self.clip_model and isinstance(cond, dict) else None
        return image_metrics(images, ref, labels, self.evaluator, self.clip_model, prompts, self.inception_weights)

    def save_samples(self, samples: Tensor, cond: Any, out_dir: str | FilePath) -> list[FilePath]:
        images = self.decode(samples.detach().float())
        captions = self.prompt_text(cond["prompt_id"]) if isinstance(cond, dict) and "prompt_id" in cond else None
        out = FilePath(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return [save_grid(images[:64], out / "samples.png", captions[:64] if captions else None)]

    def save_comparison(self, samples: dict[str, Tensor], cond: Any, out_dir: str | FilePath) -> list[FilePath]:
        """One PNG: a row per model, a column per prompt (same prompts and seeds in every row)."""
        labels = list(samples)
        n = min(x.shape[0] for x in samples.values())
        images = torch.cat([self.decode(samples[k][:n].detach().float()) for k in labels])
        prompts = self.prompt_text(cond["prompt_id"][:n]) if isinstance(cond, dict) and "prompt_id" in cond else []
        captions = [f"{k}" if j == 0 else "" for k in labels for j in range(n)]
        if prompts:
            captions = [f"{k}: {p}" if j == 0 else p for k in labels for j, p in enumerate(prompts)]
        out = FilePath(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return [save_grid(images, out / "comparison.png", captions, columns=n)]

    def export(self, student: Denoiser, out_dir: str | FilePath, name: str = "student") -> list[FilePath]:
        """A diffusers pipeline folder (or a LoRA file); its layout is diffusers', so ``name`` is not used."""
        from modalities.image.export import export_student

        return export_student(self, student, out_dir)

    # -- regression matrix ---------------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> ImageModality:
        """8x8 pixels, a 2-level UNet of width (8, 16) and 16-D random text embeddings; no files needed."""
        config = tiny_unet_config(channels=1, size=8, text_dim=16, blocks=(8, 16))
        config.update(norm_num_groups=4, attention_head_dim=4)
        return cls(network_config=config, random_teacher_seed=0)

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        c, h, w = self.latent_shape
        dim = int(self.network_config.get("cross_attention_dim", 16))
        x0 = torch.rand((n, c, h, w), generator=generator) * 2 - 1
        emb = torch.randn((n, 4, dim), generator=generator)
        label = torch.randint(0, 10, (n,), generator=generator)
        return Batch(x0, {"emb": emb, "label": label})


def _load_vae(folder: str) -> nn.Module:
    from diffusers import AutoencoderKL

    path = FilePath(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"VAE folder {folder!r} has no config.json "
                                "(save it with AutoencoderKL.save_pretrained)")
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True)


STUDENT_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                        "transformer/diffusion_pytorch_model.safetensors")


def student_weights_file(path: str) -> FilePath:
    """The safetensors file behind ``student_init``: the path itself, or the first of ``STUDENT_WEIGHT_FILES``
    inside a folder; anything else is an error that names what was looked for."""
    p = FilePath(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in STUDENT_WEIGHT_FILES:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"student_init folder {path!r} holds none of {list(STUDENT_WEIGHT_FILES)}")
    raise FileNotFoundError(f"student_init {path!r} does not exist (give a safetensors file, a diffusers model "
                            "folder or a pipeline folder from `unidistill export`)")
