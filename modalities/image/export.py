"""Write a distilled image student for plain diffusers.

* a full student becomes a ``StableDiffusionPipeline`` folder (student UNet, the teacher's VAE, the text
  encoder and tokenizer it was trained with, and an ``LCMScheduler`` on the teacher's noise schedule), which
  ``DiffusionPipeline.from_pretrained(folder)`` loads and samples in 1-4 steps with ``guidance_scale=1``
  (the student already contains the teacher's guidance);
* a LoRA student becomes ``pytorch_lora_weights.safetensors`` (diffusers' LoRA format), loaded onto the
  teacher pipeline with ``pipe.load_lora_weights(folder)`` plus that pipeline's scheduler swapped for
  ``LCMScheduler``, as latent consistency LoRAs are used.

Pixel-space students (no VAE) are written without a ``vae/``: call the pipeline with ``output_type="latent"``
and ``height = width = 8 * image size`` (diffusers assumes a VAE factor of 8 when there is none), and read
the returned "latents" as images in [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path as FilePath
from typing import TYPE_CHECKING

from modalities.image.pipeline import lcm_scheduler_config
from unidistill.denoiser import Denoiser

if TYPE_CHECKING:
    from modalities.image.plugin import ImageModality


def export_student(modality: ImageModality, student: Denoiser, out_dir: str | FilePath) -> list[FilePath]:
    import diffusers

    out = FilePath(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    network = student.network
    scheduler = diffusers.LCMScheduler.from_config(lcm_scheduler_config(modality.scheduler_config))
    if modality.student_kind == "lora":
        from peft.utils import get_peft_model_state_dict

        layers = get_peft_model_state_dict(network)
        diffusers.StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers,
                                                            safe_serialization=True)
        scheduler.save_pretrained(str(out / "scheduler"))
        card = {"kind": "lora", "rank": modality.lora_rank, "targets": modality.lora_targets,
                "use": "pipe.load_lora_weights(folder); pipe.scheduler = LCMScheduler.from_pretrained(folder, "
                       "subfolder='scheduler'); pipe(prompt, num_inference_steps=1..4, guidance_scale=1)"}
        (out / "unidistill_student.json").write_text(json.dumps(card, indent=2))
        return sorted(out.rglob("*.safetensors")) + [out / "unidistill_student.json"]
    if type(network).__name__ != "UNet2DConditionModel":
        raise ValueError(f"pipeline export supports UNet2DConditionModel students; got {type(network).__name__}")
    text = modality.text
    text.save_for_pipeline(out)
    tokenizer = _load_tokenizer(out / "tokenizer")
    text_model = type(text.model).from_pretrained(str(out / "text_encoder"), local_files_only=True)
    pipe = diffusers.StableDiffusionPipeline(
        vae=modality.vae, text_encoder=text_model, tokenizer=tokenizer, unet=network, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    card = {"kind": "pipeline", "pixel_space": modality.vae is None, "image_size": modality.latent_shape[1:],
            "use": "DiffusionPipeline.from_pretrained(folder)(prompt, num_inference_steps=1..4, guidance_scale=1"
                   + (", output_type='latent', height=8*size, width=8*size)" if modality.vae is None else ")")}
    (out / "unidistill_student.json").write_text(json.dumps(card, indent=2))
    return [out / "model_index.json", out / "unidistill_student.json"]


def _load_tokenizer(folder: FilePath):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
