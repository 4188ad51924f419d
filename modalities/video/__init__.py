"""Causal streaming video: a bidirectional video DiT teacher, a block-causal KV-cached student, GIF output."""

from modalities.video.gif import save_gif
from modalities.video.network import KVCache, VideoDiT
from modalities.video.plugin import VideoEvaluator, VideoModality
from modalities.video.streaming import generate_stream

__all__ = ["KVCache", "VideoDiT", "VideoEvaluator", "VideoModality", "generate_stream", "save_gif"]
