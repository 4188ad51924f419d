"""Generation metrics on sets of shapes under a distance, as the point-cloud generation literature reports them
(PointFlow, Yang et al., 2019; "Discrete Point Flow Networks", Klokov et al., 2020; PVD, Zhou et al., 2021):

* **1-NNA** (1-nearest-neighbour accuracy): pool generated and reference shapes, classify each by the set of its
  nearest neighbour among the others; 0.5 is ideal (the sets are indistinguishable), 1.0 means every shape's
  nearest neighbour is in its own set, 0.0 means every generated shape copies a reference one.
* **COV** (coverage): the share of reference shapes that are the nearest reference of at least one generated shape.
* **MMD** (minimum matching distance): the mean, over reference shapes, of the distance to the closest generated one.

All three take precomputed distance matrices, so any distance (Chamfer, EMD, 1 - IoU) works.
"""

from __future__ import annotations

import torch
from torch import Tensor


def one_nna(d_gg: Tensor, d_gr: Tensor, d_rr: Tensor) -> float:
    """1-NNA from the generated-generated ``[n, n]``, generated-reference ``[n, m]`` and reference-reference
    ``[m, m]`` distances. A tie between a same-set and an other-set neighbour counts as a miss (the conservative
    choice: identical sets give 0)."""
    n, m = d_gr.shape
    if d_gg.shape != (n, n) or d_rr.shape != (m, m):
        raise ValueError(f"distance matrices of shapes {tuple(d_gg.shape)}, {tuple(d_gr.shape)}, {tuple(d_rr.shape)}"
                         " do not fit together")
    if n < 2 or m < 2:
        raise ValueError(f"1-NNA needs at least 2 shapes per set, got {n} generated and {m} reference")
    inf = torch.tensor(float("inf"), dtype=d_gg.dtype)
    gg = d_gg.clone().fill_diagonal_(inf)
    rr = d_rr.clone().fill_diagonal_(inf)
    gen_correct = gg.min(1).values < d_gr.min(1).values
    ref_correct = rr.min(1).values < d_gr.min(0).values
    return float((gen_correct.sum() + ref_correct.sum()) / (n + m))


def coverage(d_gr: Tensor) -> float:
    """The share of reference shapes matched as the nearest reference of some generated shape."""
    return float(d_gr.argmin(1).unique().numel() / d_gr.shape[1])


def mmd(d_gr: Tensor) -> float:
    """Mean over reference shapes of the distance to the nearest generated shape."""
    return float(d_gr.min(0).values.mean())


def set_metrics(d_gg: Tensor, d_gr: Tensor, d_rr: Tensor, suffix: str) -> dict[str, float]:
    """``1nna_<suffix>``, ``1nna_gap_<suffix>`` (``|1-NNA - 0.5|``), ``cov_<suffix>`` and ``mmd_<suffix>``."""
    acc = one_nna(d_gg, d_gr, d_rr)
    return {f"1nna_{suffix}": acc, f"1nna_gap_{suffix}": abs(acc - 0.5), f"cov_{suffix}": coverage(d_gr),
            f"mmd_{suffix}": mmd(d_gr)}
