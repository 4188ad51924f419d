"""Helpers for opaque conditions: tensors, dicts or tuples of tensors (or ``None``), batch-first.

The core never looks inside a condition; it only needs to concatenate batches of them and take the first
rows, which these do structurally.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def cat_cond(conds: list[Any]) -> Any:
    """Concatenate conditions along the batch dimension."""
    if conds[0] is None:
        return None
    if isinstance(conds[0], Tensor):
        return torch.cat(conds)
    if isinstance(conds[0], dict):
        return {k: cat_cond([c[k] for c in conds]) for k in conds[0]}
    if isinstance(conds[0], (tuple, list)):
        return type(conds[0])(cat_cond(list(parts)) for parts in zip(*conds, strict=True))
    raise TypeError(f"cannot concatenate conditions of type {type(conds[0]).__name__}")


def slice_cond(cond: Any, stop: int | None) -> Any:
    """The first ``stop`` rows of a condition."""
    if cond is None or stop is None:
        return cond
    if isinstance(cond, Tensor):
        return cond[:stop]
    if isinstance(cond, dict):
        return {k: slice_cond(v, stop) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(slice_cond(c, stop) for c in cond)
    raise TypeError(f"cannot slice a condition of type {type(cond).__name__}")
