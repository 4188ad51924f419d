"""The network contract of causal (streaming) modalities, independent of any objective or plugin."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class CausalNetwork(Protocol):
    """The network contract of a causal modality (``Modality.causal = True``), e.g. streaming video.

    The latent's first trailing axis is the frame axis; frames are grouped into chunks of ``chunk_size``.
    One network runs two ways: ``causal = False`` attends over the whole clip (a bidirectional teacher), and
    ``causal = True`` lets each chunk attend to itself and earlier chunks only (a block-causal student).

    Outside a stream, a call takes a whole clip (block-causal mask when ``causal``). After ``reset_cache()``
    the network streams: each call takes the *next* chunk and attends to the cached keys/values of the
    earlier chunks; calls inside ``storing()`` also append their keys/values to the cache and advance the
    frame position, evicting the oldest chunks beyond ``cache_window`` chunks (``None``: keep all), so
    memory stays bounded however long the stream. ``clear_cache()`` frees the cache and returns to whole
    clips. The core's causal rollout (``unidistill.objectives.rollout``) relies only on this contract.

    Optional: a network with ``fuses_cache_writes = True`` also takes ``storing(frames=n)``, a call whose first
    ``n`` frames are written and whose other frames are the next chunk, seeing the cache after the write; the
    inference ``stream`` then spends one call, not two, on a cache write and the next chunk's first step.
    """

    causal: bool
    chunk_size: int
    cache_window: int | None

    def reset_cache(self) -> None:
        """Start a new stream: empty cache, frame position 0."""

    def clear_cache(self) -> None:
        """Drop the cache and go back to whole-clip calls."""

    def storing(self) -> AbstractContextManager[None]:
        """Calls inside append their keys/values to the cache (the chunk becomes context)."""

    def cached_frames(self) -> int:
        """Frames whose keys/values the cache currently holds (``0`` outside a stream)."""


def causal_network(module: Any) -> CausalNetwork:
    """The ``CausalNetwork`` inside a denoiser-like module (``.network``, ``.denoiser``, ``.base`` or itself);
    a clear error when the module has none."""
    seen = module
    for _ in range(4):
        if isinstance(seen, CausalNetwork):
            return seen
        seen = next((getattr(seen, a) for a in ("network", "denoiser", "base", "module") if hasattr(seen, a)), None)
        if seen is None:
            break
    raise TypeError(f"{type(module).__name__} holds no CausalNetwork (causal, chunk_size, cache_window, "
                    "reset_cache, clear_cache, storing, cached_frames); causal objectives need a causal modality")
