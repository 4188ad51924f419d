"""Log-mel latents: a per-bin normalised log-mel spectrogram, inverted to audio by Griffin-Lim.

The forward transform is torchaudio's ``MelSpectrogram`` (magnitude, Slaney mel scale and norm, centred
frames) followed by ``log(max(mel, log_floor))``; each mel bin is then normalised by the mean and standard
deviation of that bin over a task's training clips (``stats``, a JSON file written by ``compute_stats``), so
every latent channel has about zero mean and unit variance. A window of ``frames`` frames covers
``(frames - 1) * hop_length`` samples (64 frames of hop 256 at 16 kHz: 1.008 s).

Decoding inverts the normalisation and the log, recovers a linear spectrogram with ``InverseMelScale``
(a least-squares solve: the lossy step) and phases with ``GriffinLim`` (Griffin & Lim, 1984, "Signal estimation
from modified short-time Fourier transform"), started from zero phase so the same latent always gives the same
audio.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modalities.audio.latents import AudioLatent, check_overlong


class MelLatent(AudioLatent):
    """Per-bin normalised log-mel latents ``[n_mels, frames]``.

    Args:
        sample_rate, n_fft, hop_length, n_mels, f_min, f_max: the mel transform (window length = ``n_fft``).
        frames: frames per latent window.
        log_floor: magnitudes are clamped to it before the log (the latent's silence level).
        stats: a JSON file of per-bin ``mean``/``std`` (``compute_stats``) made with the same mel settings;
            ``None`` uses one global affine map (``log_floor`` to -2, magnitude 1 to +2) for every bin.
        griffin_lim_iters: Griffin-Lim iterations when decoding (does not affect training).
        overlong: ``"error"`` or ``"trim"`` for waveforms longer than the window (see ``AudioLatent``).
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, hop_length: int = 256, n_mels: int = 64,
                 frames: int = 64, f_min: float = 0.0, f_max: float = 8000.0, log_floor: float = 1e-5,
                 stats: str | None = None, griffin_lim_iters: int = 32, overlong: str = "error") -> None:
        if min(sample_rate, n_fft, hop_length, n_mels, frames, griffin_lim_iters) < 1 or not 0 < log_floor < 1:
            raise ValueError("sample_rate, n_fft, hop_length, n_mels, frames and griffin_lim_iters must be positive "
                             f"and log_floor in (0, 1); got {sample_rate}, {n_fft}, {hop_length}, {n_mels}, {frames}, "
                             f"{griffin_lim_iters}, {log_floor}")
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max} at "
                             f"{sample_rate} Hz")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = int(sample_rate), int(n_fft), int(hop_length), \
            int(n_mels)
        self.frames, self.f_min, self.f_max, self.log_floor = int(frames), float(f_min), float(f_max), float(log_floor)
        self.griffin_lim_iters, self.overlong = int(griffin_lim_iters), check_overlong(overlong)
        self.stats_path = stats
        if stats is None:
            low = math.log(self.log_floor)
            self.mean = torch.full((self.n_mels,), low / 2)
            self.std = torch.full((self.n_mels,), -low / 4)
        else:
            self.mean, self.std = load_stats(stats, self.transform_settings())
        self._modules: dict[str, torch.nn.Module] = {}

    # -- settings --------------------------------------------------------------------------------------
    def transform_settings(self) -> dict[str, Any]:
        """The mel transform alone (what a stats file must have been computed with)."""
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop_length": self.hop_length,
                "n_mels": self.n_mels, "frames": self.frames, "f_min": self.f_min, "f_max": self.f_max,
                "log_floor": self.log_floor}

    def settings(self) -> dict[str, Any]:
        return {**self.transform_settings(), "stats": stats_digest(self.mean, self.std)}

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_mels, self.frames)

    @property
    def samples(self) -> int:
        return (self.frames - 1) * self.hop_length

    # -- transforms ------------------------------------------------------------------------------------
    def _module(self, name: str) -> torch.nn.Module:
        if name not in self._modules:
            import torchaudio.transforms as T

            common = {"sample_rate": self.sample_rate, "f_min": self.f_min, "f_max": self.f_max, "norm": "slaney",
                      "mel_scale": "slaney"}
            self._modules = {
                "mel": T.MelSpectrogram(n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels, power=1.0,
                                        center=True, **common),
                "inverse": T.InverseMelScale(self.n_fft // 2 + 1, self.n_mels, **common),
                "griffin_lim": T.GriffinLim(n_fft=self.n_fft, n_iter=self.griffin_lim_iters, hop_length=self.hop_length,
                                            power=1.0, length=self.samples, rand_init=False),
            }
        return self._modules[name]

    def log_mel(self, wave: Tensor) -> Tensor:
        """``[B, samples]`` waveforms -> ``[B, n_mels, frames]`` natural-log mel magnitudes (not normalised)."""
        if wave.shape[-1] != self.samples:
            raise ValueError(f"waveforms of {wave.shape[-1]} samples; this mel latent's window is {self.samples} "
                             "(use fit_window)")
        mel = self._module("mel").to(wave.device)(wave.float())
        return mel.clamp_min(self.log_floor).log()

    def normalise(self, log_mel: Tensor) -> Tensor:
        return (log_mel - self.mean.to(log_mel)[:, None]) / self.std.to(log_mel)[:, None]

    def denormalise(self, latents: Tensor) -> Tensor:
        return latents * self.std.to(latents)[:, None] + self.mean.to(latents)[:, None]

    def encode(self, wave: Tensor) -> Tensor:
        return self.normalise(self.log_mel(wave))

    def decode(self, latents: Tensor) -> Tensor:
        with torch.no_grad():
            magnitude = self.denormalise(latents.float()).clamp(max=math.log(1e3)).exp()
            linear = self._module("inverse").to(latents.device)(magnitude)
            return self._module("griffin_lim").to(latents.device)(linear).clamp(-1, 1)


def stats_digest(mean: Tensor, std: Tensor) -> str:
    values = [round(float(v), 5) for v in torch.cat([mean, std])]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def compute_stats(latent: MelLatent, waves: Tensor, path: str | Path, batch: int = 256) -> Path:
    """Per-bin mean and standard deviation of ``latent``'s log-mel over ``waves`` ``[N, samples]``, as JSON."""
    parts = [latent.log_mel(w) for w in waves.split(batch)]
    frames = torch.cat(parts).transpose(0, 1).reshape(latent.n_mels, -1).double()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mel": latent.transform_settings(), "clips": int(waves.shape[0]),
                               "mean": frames.mean(1).tolist(), "std": frames.std(1).clamp_min(1e-3).tolist()},
                              indent=1))
    return out


def load_stats(path: str | Path, expected: dict[str, Any]) -> tuple[Tensor, Tensor]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"mel statistics file {str(path)!r} not found (write one with "
                                "modalities.audio.mel.compute_stats)")
    data = json.loads(file.read_text())
    if data.get("mel") != expected:
        raise ValueError(f"mel statistics {str(path)!r} were computed for mel settings {data.get('mel')}, "
                         f"but this latent uses {expected}")
    mean, std = torch.tensor(data["mean"], dtype=torch.float32), torch.tensor(data["std"], dtype=torch.float32)
    if mean.shape != (expected["n_mels"],) or std.shape != mean.shape:
        raise ValueError(f"mel statistics {str(path)!r} hold {mean.numel()} bins, expected {expected['n_mels']}")
    return mean, std
