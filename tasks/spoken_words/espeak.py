"""Speech from the espeak-ng engine (a Debian package, offline): one word per call, resampled and trimmed.

espeak-ng writes a 22.05 kHz 16-bit WAV to stdout (``--stdout``); it is read with soundfile, resampled to the
task's rate with torchaudio, trimmed of leading and trailing silence and placed at the start of a fixed window.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import subprocess

import numpy as np
import torch
from torch import Tensor

from tasks.spoken_words.captions import ACCENT_VOICES, VARIANTS, WORDS, ClipSpec

INSTALL_COMMAND = "apt-get install -y espeak-ng"
#: amplitude (relative to the clip's peak) below which leading/trailing samples count as silence
SILENCE_THRESHOLD = 0.02
#: seconds of the silence kept before the first and after the last loud sample
MARGIN_SECONDS = 0.02
log = logging.getLogger(__name__)


def espeak_binary() -> str:
    """The espeak-ng executable; a clear error naming the install command when it is missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise FileNotFoundError(f"espeak-ng is not installed, and the spoken-words task synthesises its clips with it; "
                                f"install it with `{INSTALL_COMMAND}` (Debian/Ubuntu)")
    return path


@functools.lru_cache(maxsize=1)
def espeak_version() -> str:
    out = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip()


def synthesise(text: str, voice: str, variant: str, wpm: int, pitch: int) -> tuple[np.ndarray, int]:
    """``(samples float32 in [-1, 1], sample_rate)`` of ``text`` spoken by ``voice+variant``."""
    import soundfile

    cmd = [espeak_binary(), "-v", f"{voice}+{variant}", "-s", str(int(wpm)), "-p", str(int(pitch)), "--stdout", text]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return samples, int(rate)


def trim_silence(wave: Tensor, sample_rate: int) -> Tensor:
    """``wave`` without the silence before its first and after its last loud sample (a margin is kept)."""
    loud = torch.nonzero(wave.abs() > SILENCE_THRESHOLD * wave.abs().max()).flatten()
    if loud.numel() == 0:
        raise ValueError("espeak-ng returned a silent clip")
    margin = int(MARGIN_SECONDS * sample_rate)
    return wave[max(0, int(loud[0]) - margin): int(loud[-1]) + margin + 1]


@functools.lru_cache(maxsize=4)
def _resampler(source: int, target: int) -> torch.nn.Module:
    import torchaudio

    return torchaudio.transforms.Resample(source, target)


def render(spec: ClipSpec, sample_rate: int, samples: int) -> tuple[Tensor, int]:
    """The clip of ``spec`` as ``[samples]`` float32 (speech first, zero padded) and its speech length in samples.
    A word longer than the window is cut to it with a warning (the task's speeds keep every word inside 1 s)."""
    raw, rate = synthesise(WORDS[spec.word], ACCENT_VOICES[spec.accent], VARIANTS[spec.variant], spec.wpm, spec.pitch)
    with torch.no_grad():
        wave = _resampler(rate, sample_rate)(torch.from_numpy(raw))
    wave = trim_silence(wave, sample_rate)
    if wave.shape[0] > samples:
        log.warning("clip %s is %.3f s long, longer than the %.3f s window: cut to the window", spec,
                    wave.shape[0] / sample_rate, samples / sample_rate)
        wave = wave[:samples]
    out = torch.zeros(samples)
    out[: wave.shape[0]] = wave
    return out, int(wave.shape[0])
