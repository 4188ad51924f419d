"""WAV files through soundfile (torchaudio's save/load need FFmpeg libraries that are not always present)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def write_wav(path: str | Path, wave: Tensor, sample_rate: int) -> Path:
    """Write a mono waveform ``[N]`` in [-1, 1] as 16-bit PCM."""
    import soundfile

    if wave.ndim != 1:
        raise ValueError(f"write_wav takes one mono waveform [N], got shape {tuple(wave.shape)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(out), wave.detach().float().cpu().clamp(-1, 1).numpy(), int(sample_rate), subtype="PCM_16")
    return out


def read_wav(path: str | Path, sample_rate: int | None = None) -> tuple[Tensor, int]:
    """``(waveform [N] float32, sample_rate)`` of a mono WAV; with ``sample_rate`` given, a file at another rate is
    refused (resample it first, e.g. with ``torchaudio.functional.resample``)."""
    import soundfile

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"WAV file {str(path)!r} not found")
    data, rate = soundfile.read(str(file), dtype="float32", always_2d=True)
    if sample_rate is not None and rate != sample_rate:
        raise ValueError(f"{str(path)!r} is sampled at {rate} Hz, the audio latent expects {sample_rate} Hz; resample "
                         f"it first (torchaudio.functional.resample(wave, {rate}, {sample_rate}))")
    if data.shape[1] != 1:
        raise ValueError(f"{str(path)!r} has {data.shape[1]} channels; the audio modality is mono (mix them down)")
    return torch.from_numpy(data[:, 0].copy()), int(rate)
