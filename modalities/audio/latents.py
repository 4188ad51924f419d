"""What the audio modality diffuses: a latent representation of a fixed-length mono waveform window.

``AudioLatent`` is the plugin's extension point for representations: the core only sees the latent tensor
``[B, channels, frames]``, so a new representation (a codec's latents, a VAE) is one subclass here, not a core
change. Two ship: ``MelLatent`` (``modalities.audio.mel``: per-bin normalised log-mel, Griffin-Lim back to audio)
and ``WaveformLatent`` (the raw waveform cut into frames: exact in both directions). ``OobleckLatent``
(``modalities.audio.oobleck``) wraps a diffusers ``AutoencoderOobleck`` from a local folder.

A waveform longer than the window is refused by default (``overlong="error"``: a cut word is a different
word); ``overlong="trim"`` keeps its first window with a warning. Shorter waveforms are zero padded at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)
OVERLONG = ("error", "trim")


class AudioLatent(ABC):
    """A representation of ``samples``-long mono waveforms at ``sample_rate`` as ``[channels, frames]`` latents."""

    sample_rate: int
    overlong: str = "error"

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """``(channels, frames)``: the trailing latent shape; frames are the network's tokens."""

    @property
    @abstractmethod
    def samples(self) -> int:
        """Waveform samples per latent window."""

    @abstractmethod
    def encode(self, wave: Tensor) -> Tensor:
        """``[B, samples]`` waveforms (already fitted to the window) -> ``[B, channels, frames]`` latents."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """``[B, channels, frames]`` latents -> ``[B, samples]`` waveforms."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting a network trained on these latents depends on (recorded in weights cards)."""

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def card(self) -> dict[str, Any]:
        """``settings()`` plus the class name, as JSON values (a weights card's ``latent`` field)."""
        return json.loads(json.dumps({"class": type(self).__name__, **self.settings()}))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.card(), sort_keys=True).encode()).hexdigest()[:16]

    def fit_window(self, wave: Tensor) -> Tensor:
        """``[B, N]`` or ``[N]`` waveforms as ``[B, samples]``: zero padded, or (``overlong``) refused or cut."""
        if wave.ndim == 1:
            wave = wave[None]
        if wave.ndim != 2:
            raise ValueError(f"waveforms must be [B, samples] (mono), got shape {tuple(wave.shape)}")
        n = wave.shape[-1]
        if n > self.samples:
            seconds = n / self.sample_rate
            if self.overlong == "error":
                raise ValueError(f"a clip of {n} samples ({seconds:.3f} s) is longer than the latent window of "
                                 f"{self.samples} samples ({self.seconds:.3f} s at {self.sample_rate} Hz); trim it, "
                                 "or build the latent with overlong='trim' to keep its first window")
            log.warning("clip of %.3f s cut to the %.3f s latent window", seconds, self.seconds)
            return wave[:, : self.samples]
        return torch.nn.functional.pad(wave, (0, self.samples - n))


def check_overlong(value: str) -> str:
    if value not in OVERLONG:
        raise ValueError(f"overlong={value!r}; valid: {', '.join(OVERLONG)}")
    return value


class WaveformLatent(AudioLatent):
    """The raw waveform cut into ``frames`` frames of ``frame`` samples: ``[frame, frames]``, scaled by
    ``1 / scale`` so speech has about unit variance. Encode and decode are exact inverses."""

    def __init__(self, sample_rate: int = 16000, frame: int = 256, frames: int = 63, scale: float = 0.1,
                 overlong: str = "error") -> None:
        if frame < 1 or frames < 1 or scale <= 0:
            raise ValueError(f"frame, frames and scale must be positive, got {frame}, {frames}, {scale}")
        self.sample_rate, self.frame, self.frames, self.scale = int(sample_rate), int(frame), int(frames), float(scale)
        self.overlong = check_overlong(overlong)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.frame, self.frames)

    @property
    def samples(self) -> int:
        return self.frame * self.frames

    def encode(self, wave: Tensor) -> Tensor:
        return wave.reshape(wave.shape[0], self.frames, self.frame).transpose(1, 2) / self.scale

    def decode(self, latents: Tensor) -> Tensor:
        return (latents * self.scale).transpose(1, 2).reshape(latents.shape[0], self.samples).clamp(-1, 1)

    def settings(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "frame": self.frame, "frames": self.frames, "scale": self.scale}
