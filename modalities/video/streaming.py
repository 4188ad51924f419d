"""Endless streaming: ``generate_stream`` yields frames chunk by chunk on the student's rolling KV cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from unidistill.causal import causal_network
from unidistill.objectives.rollout import stream


def generate_stream(condition: Any, student: torch.nn.Module, steps: int = 4, batch_size: int | None = None,
                    generator: torch.Generator | None = None, context_time: float = 0.0,
                    max_frames: int | None = None) -> Iterator[Tensor]:
    """Frames ``[B, C, H, W]`` of a causal video student (a ``Denoiser`` over a ``VideoDiT``), for as long as the
    caller keeps reading (or ``max_frames``). Each chunk is denoised in ``steps`` steps, then written into the
    rolling KV cache, whose size stays at ``cache_window`` chunks however long the stream runs.

    ``condition``: caption embeddings ``[B, cond_dim]`` (``None`` for an unconditional network, then give
    ``batch_size``).
    """
    net = causal_network(student)
    if not net.causal:
        raise ValueError("generate_stream needs a block-causal network (causal=True), got a bidirectional one")
    n = condition.shape[0] if condition is not None else batch_size
    if n is None:
        raise ValueError("give a condition [B, cond_dim] or batch_size")
    chunk_shape = (n, net.chunk_size, net.channels, net.size, net.size)
    emitted = 0
    chunks = None if max_frames is None else -(-max_frames // net.chunk_size)
    for chunk in stream(student, condition, chunk_shape, steps, generator, context_time, chunks):
        for i in range(chunk.shape[1]):
            if max_frames is not None and emitted >= max_frames:
                return
            emitted += 1
            yield chunk[:, i]
