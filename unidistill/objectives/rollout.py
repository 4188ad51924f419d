"""Chunk-by-chunk autoregressive rollout of a block-causal denoiser through its KV cache.

One function serves training and inference, as in "Self Forcing: Bridging the Train-Test Gap in
Autoregressive Video Diffusion" (Huang et al., 2025): each chunk starts from fresh noise at the top of the
student's grid, is denoised a few steps (predict ``x0``, re-noise with fresh noise to the next grid time),
and its final ``x0`` is written into the cache by one more call at the context time (``t = 0``, or a small
``context_time`` noise level, "context noise"), so later chunks attend to the model's *own* output. Training
keeps the gradient of one grad-enabled call at the exit step; inference runs every step under ``no_grad``.

``recompute=True`` runs the same rollout without a cache, re-running the whole prefix each call with per-frame
times (context frames at ``context_time``): the reference the KV cache must match. The ``causal`` solver
registered here lets ``DistillationModule`` sample causal students (validation, ``unidistill bench``), and
``stream`` yields chunks for as long as the caller reads. Only the ``CausalNetwork`` contract of
``unidistill.causal`` is used (plus, when a network offers it, ``storing(frames=n)``: see ``stream``); the
frame axis is the latent's first trailing axis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from unidistill.causal import causal_network
from unidistill.solvers import SOLVERS, SampleResult

Randn = Callable[[tuple[int, ...]], Tensor]


def _full(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


class ChunkRollout:
    """Denoise and commit chunks one after another on ``model`` (a denoiser over a ``CausalNetwork``).

    Args:
        model: ``model(x_t, t, cond) -> Prediction`` with a ``path``; its network streams.
        cond: the condition of the whole clip (shared by every chunk).
        grid: decreasing student times ending at 0 (``path.time_grid(steps)``).
        randn: fresh noise of a given shape (the caller's generator).
        context_time: noise level of the cache write (0: clean context).
        recompute: no cache; re-run the whole prefix with per-frame time at each call (reference path).
    """

    def __init__(self, model: Any, cond: Any, grid: list[float], randn: Randn, context_time: float = 0.0,
                 recompute: bool = False) -> None:
        self.model, self.cond, self.grid, self.randn = model, cond, list(grid), randn
        self.context_time, self.recompute = context_time, recompute
        self.net = causal_network(model)
        self.context: list[Tensor] = []  # recompute mode: the context frames as the model saw them
        self.nfe = 0
        if recompute:
            self.net.clear_cache()
        else:
            self.net.reset_cache()

    def call(self, x: Tensor, t: float | Tensor, write: Tensor | None = None) -> Tensor:
        """The model's ``x0`` for the next chunk ``x`` at time ``t`` (a float or per-sample ``[B]``), given the
        committed context; nothing is written, except ``write``: a previous chunk's context input (from
        ``context_input``), committed by this same call (``storing(frames=n)``, counted as its two calls)."""
        if write is not None and self.recompute:
            self.write(write)
            write = None
        per_call = getattr(self.model, "nfe_per_call", 1)
        self.nfe += per_call
        t = _full(t, x) if isinstance(t, (int, float)) else t.to(x)
        if not self.recompute and write is None:
            return self.model(x, t, self.cond).x0
        prefix = [write] if write is not None else self.context
        full = torch.cat([*prefix, x], dim=1)
        n_ctx = full.shape[1] - x.shape[1]
        times = t[:, None].expand(full.shape[0], full.shape[1]).clone()
        times[:, :n_ctx] = self.context_time
        if write is None:
            return self.model(full, times, self.cond).x0[:, n_ctx:]
        self.nfe += per_call
        with self.net.storing(frames=n_ctx):
            return self.model(full, times, self.cond).x0[:, n_ctx:]

    def denoise(self, noise: Tensor, exit_step: int | None = None, grad: bool = False,
                write: Tensor | None = None) -> Tensor:
        """The chunk's ``x0`` after ``exit_step + 1`` grid steps from unit ``noise`` (default: all steps);
        only the exit call is grad-enabled (when ``grad``). ``write``: the previous chunk's context input, to
        commit in the first call (see ``call``)."""
        steps = len(self.grid) - 1
        exit_step = steps - 1 if exit_step is None else exit_step
        if not 0 <= exit_step < steps:
            raise ValueError(f"exit_step must be in [0, {steps - 1}], got {exit_step}")
        path = self.model.path
        x = noise * float(path.sigma(torch.tensor(self.grid[0], dtype=torch.float64)))
        with torch.no_grad():
            for j in range(exit_step):
                x0 = self.call(x, self.grid[j], write if j == 0 else None)
                x = path.add_noise(x0, self.randn(tuple(x.shape)), _full(self.grid[j + 1], x))
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.call(x, self.grid[exit_step], write if exit_step == 0 else None)

    @torch.no_grad()
    def context_input(self, x0: Tensor) -> Tensor:
        """``x0`` as the cache sees it: noised to ``context_time`` (drawing that noise now)."""
        x0 = x0.detach()
        return x0 if self.context_time == 0 else self.model.path.add_noise(
            x0, self.randn(tuple(x0.shape)), _full(self.context_time, x0))

    def commit(self, x0: Tensor) -> None:
        """Make ``x0`` context: noise it to ``context_time`` and write its keys/values (one call)."""
        self.write(self.context_input(x0))

    @torch.no_grad()
    def write(self, x: Tensor) -> None:
        """Write a context input (``context_input``) into the cache (one call)."""
        if self.recompute:
            self.context.append(x)
            return
        self.nfe += getattr(self.model, "nfe_per_call", 1)
        with self.net.storing():
            self.model(x, _full(self.context_time, x), self.cond)

    def close(self) -> None:
        self.net.clear_cache()


def rollout(model: Any, noise: Tensor, cond: Any, grid: list[float], randn: Randn, exit_step: int | None = None,
            grad: bool = False, context_time: float = 0.0, recompute: bool = False) -> tuple[Tensor, int]:
    """Generate a whole clip ``[B, T, ...]`` chunk by chunk from unit ``noise``; returns it and the NFE.

    With ``grad``, every chunk's exit-step call keeps its graph (Self-Forcing's training rollout); the
    cache writes never do. ``exit_step`` is the same for every chunk (Self-Forcing's default).
    """
    k = causal_network(model).chunk_size
    run = ChunkRollout(model, cond, grid, randn, context_time, recompute)
    chunks = []
    try:
        for start in range(0, noise.shape[1], k):
            x0 = run.denoise(noise[:, start:start + k], exit_step, grad)
            chunks.append(x0)
            if start + k < noise.shape[1]:
                run.commit(x0)
    finally:
        run.close()
    return torch.cat(chunks, dim=1), run.nfe


@torch.inference_mode()
def stream(model: Any, cond: Any, chunk_shape: tuple[int, ...], steps: int, generator: torch.Generator | None = None,
           context_time: float = 0.0, max_chunks: int | None = None) -> Iterator[Tensor]:
    """Yield chunks ``[B, k, ...]`` (``chunk_shape = (B, k, ...)``) one after another, indefinitely (or
    ``max_chunks``), each denoised in ``steps`` steps on the rolling KV cache.

    Inference only: it runs under ``torch.inference_mode`` (no autograd bookkeeping at all; the chunks are
    inference tensors). When the network offers ``storing(frames=n)`` (``fuses_cache_writes``), a chunk's
    cache write is the first call of the next chunk rather than a call of its own: the same computation and
    random draws in the same order, one network call fewer per chunk."""
    grid = model.path.time_grid(steps).tolist()
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")

    def randn(shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=generator, device=device)

    run = ChunkRollout(model, cond, grid, randn, context_time)
    fused = getattr(run.net, "fuses_cache_writes", False)
    try:
        i, write = 0, None
        while max_chunks is None or i < max_chunks:
            x0 = run.denoise(randn(tuple(chunk_shape)), write=write)
            yield x0  # before the cache write, so a chunk reaches the caller as soon as it is denoised
            write = run.context_input(x0)  # its context noise is drawn before the next chunk's noise either way
            if not fused:
                run.write(write)
                write = None
            i += 1
    finally:
        run.close()


@torch.no_grad()
def causal_sample(model: Any, x: Tensor, grid: Tensor, cond: Any = None, generator: torch.Generator | None = None,
                  time_shape: tuple[int, ...] | None = None, context_time: float = 0.0, **_: Any) -> SampleResult:
    """The ``causal`` solver: chunk-by-chunk rollout from the starting latent ``x`` (at ``grid[0]``)."""
    sigma = float(model.path.sigma(torch.tensor(float(grid[0]), dtype=torch.float64)))
    noise = x / sigma if sigma > 0 else x

    def randn(shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)

    out, nfe = rollout(model, noise, cond, grid.tolist(), randn, context_time=context_time)
    return SampleResult(out, nfe)


SOLVERS.setdefault("causal", causal_sample)
