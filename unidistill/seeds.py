"""The one seed derivation: every generator of training, validation, caches and couplings is seeded by
``mix_seed(root, *parts)``, so a draw is a pure function of the run's seed and where it happens (iteration, rank,
shard, coupling id), identical after a resume and distinct across data-parallel ranks."""

from __future__ import annotations

_MULT, _INC, _MOD = 6364136223846793005, 1442695040888963407, 1 << 63


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integer ``parts`` (order matters; negative parts are allowed, e.g. ``-1`` for a stream
    shared by every rank)."""
    seed = 0x9E3779B97F4A7C15
    for p in parts:
        seed = (seed * _MULT + int(p) + _INC) % _MOD
    return seed
