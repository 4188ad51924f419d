"""The audio denoiser: diffusers' ``StableAudioDiTModel`` with text cross-attention and rotary positions.

Latents ``[B, channels, frames]`` are the transformer's token sequence (one token per frame); MiniLM token states
``[B, L, D]`` feed its cross-attention and the pooled caption embedding ``[B, D]`` its global (prepended) token,
which also carries the time embedding, as in Stable Audio (Evans et al., 2024, "Stable Audio Open"). Rotary
position embeddings over the global token plus the frames are built as diffusers' ``StableAudioPipeline`` builds
them. The random Fourier frequencies of the time embedding are a fixed buffer (never trained).

``enable_guidance_conditioning`` adds a second scalar input (an LCM guidance scale, or a flow map's jump length)
through a zero-initialised projection added to the global conditioning vector (Luo et al., 2023, "Latent
Consistency Models"), so a student built from the teacher starts exactly as the teacher.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from unidistill.denoiser import Adapter

NETWORK_DEFAULTS = {"width": 128, "layers": 4, "heads": 4, "kv_heads": 2, "cross_dim": 128, "time_dim": 256}


def sinusoidal(value: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """``[B, dim]`` sinusoidal embedding of one scalar per sample."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=value.device, dtype=torch.float32) / half)
    angles = value.reshape(-1, 1).float() * scale * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class FeatureTap(nn.Module):
    """Identity view of the middle block's output tokens, channels first (``[B, width, 1 + frames]``), under the
    name (``mid_block``) that discriminator and fake-score heads hook by default, so they read this transformer's
    features as they read a convolutional network's."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_channels = width

    def forward(self, tokens: Tensor) -> Tensor:
        return tokens.transpose(1, 2)


class SpeechDiT(nn.Module):
    """``StableAudioDiTModel`` over ``[B, channels, frames]`` latents, conditioned on text.

    Args:
        channels, frames: the latent shape; text_dim: the text encoder's hidden size.
        patch: frames per token (a token holds ``patch`` consecutive frames of every channel).
        width, layers, heads, kv_heads, cross_dim, time_dim: the transformer's size (width = heads x head dim).
    """

    def __init__(self, channels: int, frames: int, text_dim: int = 384, patch: int = 1, width: int = 128,
                 layers: int = 4, heads: int = 4, kv_heads: int = 2, cross_dim: int = 128, time_dim: int = 256) -> None:
        super().__init__()
        from diffusers import StableAudioDiTModel

        if width % heads or heads % kv_heads or (width // heads) % 4:
            raise ValueError(f"width {width} must split into {heads} heads of a size divisible by 4, and heads into "
                             f"{kv_heads} key/value heads")
        if patch < 1 or frames % patch:
            raise ValueError(f"patch={patch} must be a positive divisor of the {frames} frames")
        self.config = {"channels": channels, "frames": frames, "text_dim": text_dim, "patch": patch, "width": width,
                       "layers": layers, "heads": heads, "kv_heads": kv_heads, "cross_dim": cross_dim,
                       "time_dim": time_dim}
        self.transformer = StableAudioDiTModel(
            sample_size=frames // patch, in_channels=channels * patch, num_layers=layers,
            attention_head_dim=width // heads, num_attention_heads=heads, num_key_value_attention_heads=kv_heads,
            out_channels=channels * patch,
            cross_attention_dim=cross_dim, time_proj_dim=time_dim, global_states_input_dim=text_dim,
            cross_attention_input_dim=text_dim)
        proj = self.transformer.time_proj
        frequencies = proj.weight.detach().clone()
        del proj.weight
        proj.register_buffer("weight", frequencies)
        self.mid_block = FeatureTap(width)
        self.transformer.transformer_blocks[layers // 2].register_forward_hook(self._tap)
        self.guidance: nn.Module | None = None
        self._rope: tuple[tuple, tuple[Tensor, Tensor]] | None = None

    def _tap(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self.mid_block(output)

    def enable_guidance_conditioning(self, dim: int = 128) -> None:
        """Add the zero-initialised scalar input (see the module docstring); a no-op if it is there already."""
        if self.guidance is not None:
            return
        text_dim, width = self.config["text_dim"], self.config["width"]
        self.guidance = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, text_dim))
        nn.init.zeros_(self.guidance[-1].weight)
        nn.init.zeros_(self.guidance[-1].bias)
        self.guidance.to(next(self.transformer.parameters()).device)

    def rotary(self, tokens: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Rotary tables over ``tokens`` positions (the global token and the frames), kept between calls."""
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        key = (tokens, device, dtype)
        if self._rope is None or self._rope[0] != key:
            head_dim = self.config["width"] // self.config["heads"]
            with torch.inference_mode(False), torch.no_grad():
                cos, sin = get_1d_rotary_pos_embed(head_dim // 2, tokens, use_real=True, repeat_interleave_real=False)
            self._rope = (key, (cos.to(device, dtype), sin.to(device, dtype)))
        return self._rope[1]

    def tokens(self, x: Tensor) -> Tensor:
        """``[B, C, F]`` -> ``[B, C * patch, F / patch]``: token ``j`` holds frames ``j * patch ..`` of all channels."""
        b, c, f = x.shape
        p = self.config["patch"]
        return x.reshape(b, c, f // p, p).transpose(2, 3).reshape(b, c * p, f // p)

    def untokens(self, y: Tensor) -> Tensor:
        b, cp, n = y.shape
        p = self.config["patch"]
        return y.reshape(b, cp // p, p, n).transpose(2, 3).reshape(b, cp // p, n * p)

    def forward(self, x: Tensor, t: Tensor, emb: Tensor, pooled: Tensor, guidance: Tensor | None = None) -> Tensor:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.config["channels"], self.config["frames"]):
            raise ValueError(f"latents of shape {tuple(x.shape)}, expected [B, {self.config['channels']}, "
                             f"{self.config['frames']}]")
        if emb.shape[0] != x.shape[0] or pooled.shape[0] != x.shape[0]:
            raise ValueError(f"condition batch {emb.shape[0]} does not match latent batch {x.shape[0]}")
        global_in = pooled.to(x.dtype)
        if guidance is not None:
            if self.guidance is None:
                raise ValueError("this network takes no guidance input; call enable_guidance_conditioning() first")
            w = sinusoidal(guidance.reshape(x.shape[0]), self.guidance[0].in_features)
            global_in = global_in + self.guidance(w)
        tokens = self.tokens(x)
        out = self.transformer(tokens, timestep=t.to(x.dtype), encoder_hidden_states=emb.to(x.dtype),
                               global_hidden_states=global_in[:, None],
                               rotary_embedding=self.rotary(tokens.shape[-1] + 1, x.device, x.dtype), return_dict=False)
        return self.untokens(out[0])


class SpeechDiTAdapter(Adapter):
    """``(x_t, t, cond, guidance) -> SpeechDiT(x_t, t, cond["emb"], cond["pooled"], guidance)``; core time ``t`` in
    ``[0, 1]`` is the transformer's timestep as is (Stable Audio's DiT embeds continuous time in ``[0, 1]``).

    ``default_guidance``: the scale a guidance-conditioned (LCM-style) student is given when a caller passes none,
    i.e. when it is sampled like any other student; such a student called without one is otherwise an error
    (its guidance input was always set in training)."""

    def __init__(self, default_guidance: float | None = None) -> None:
        super().__init__(1.0)
        self.default_guidance = default_guidance

    def __call__(self, network: nn.Module, x_t: Tensor, t: Tensor, cond: Any, guidance: Tensor | None) -> Tensor:
        if not isinstance(cond, dict) or "emb" not in cond or "pooled" not in cond:
            raise ValueError("audio networks need a text condition {'emb': [B, L, D], 'pooled': [B, D]}; got "
                             f"{type(cond).__name__}")
        if guidance is None and getattr(network, "guidance", None) is not None:
            if self.default_guidance is None:
                raise ValueError("this student takes a guidance scale and none was given: pass guidance=, or set the "
                                 "modality's student_guidance (the scale to sample it at)")
            guidance = torch.full((x_t.shape[0],), float(self.default_guidance), device=x_t.device, dtype=x_t.dtype)
        step = t.reshape(x_t.shape[0], -1)[:, 0] * self.time_scale
        return network(x_t, step, cond["emb"], cond["pooled"], guidance)
