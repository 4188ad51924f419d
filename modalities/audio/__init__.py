"""Text-to-speech / text-to-audio modality: audio latents (log-mel, waveform, Oobleck VAE), a diffusers
``StableAudioDiTModel`` denoiser with text cross-attention, WAV and spectrogram artefacts."""

from modalities.audio.latents import AudioLatent, WaveformLatent
from modalities.audio.mel import MelLatent, compute_stats
from modalities.audio.network import SpeechDiT, SpeechDiTAdapter
from modalities.audio.plugin import AudioEvaluator, AudioModality
from modalities.audio.spectrogram import save_spectrograms
from modalities.audio.wav import read_wav, write_wav

__all__ = ["AudioEvaluator", "AudioLatent", "AudioModality", "MelLatent", "SpeechDiT", "SpeechDiTAdapter",
           "WaveformLatent", "compute_stats", "read_wav", "save_spectrograms", "write_wav"]
