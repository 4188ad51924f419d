"""Modality-free metric helpers: distances between sample sets and timing.

Nothing here uses a learned feature network, so none of it is called FID: a Fréchet distance in some
task's feature space is named for that feature network by the caller (e.g. ``fd_digits``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor


def sliced_wasserstein(a: Tensor, b: Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equally sized sample sets ``[N, *S]`` (flattened).

    Uses a fixed projection seed so that two calls on the same sets agree exactly.
    """
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"sliced Wasserstein needs equal sample sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(a.shape[1], num_projections, generator=g, dtype=torch.float64).to(a.device)
    proj = proj / proj.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ proj, dim=0)
    pb, _ = torch.sort(b @ proj, dim=0)
    return float((pa - pb).abs().mean())


def mmd_rbf(a: Tensor, b: Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of RBF kernels (Gretton et al., 2012),
    bandwidths relative to the median pairwise distance of the pooled sets."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    pooled = torch.cat([a, b])
    d2 = torch.cdist(pooled, pooled).pow(2)
    med = d2[d2 > 0].median()
    k = sum(torch.exp(-d2 / (2 * bw * bw * med)) for bw in bandwidths)
    n, m = a.shape[0], b.shape[0]
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    term_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    term_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(term_a + term_b - 2 * kab.mean())


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, F]`` (Heusel et al., 2017)."""
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    vals = torch.linalg.eigvals(ca @ cb).real.clamp_min(0)
    return float((mu_a - mu_b).pow(2).sum() + ca.trace() + cb.trace() - 2 * vals.sqrt().sum())


def time_call(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a callable that returns the wall seconds it took (the form ``paired_times`` takes)."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def paired_times(fns: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per round of each callable (each returns the seconds it measured, e.g. ``timed(f)``), the rounds
    interleaving them: every round runs each callable once, in order. A speed ratio then comes from the same
    round's two times (``paired_ratio``), so a shared machine that slows down for a while slows both sides of
    it, where two medians taken minutes apart would not."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(float(fn()))
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of ``numerator[i] / denominator[i]`` (times of the same rounds)."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need two equally long, non-empty lists of round times, got {len(numerator)} and "
                         f"{len(denominator)}")
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))
