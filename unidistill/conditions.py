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


def map_cond(cond: Any, fn: Any) -> Any:
    """Apply ``fn`` to every tensor of a condition, keeping its structure."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return fn(cond)
    if isinstance(cond, dict):
        return {k: map_cond(v, fn) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(map_cond(c, fn) for c in cond)
    raise TypeError(f"cannot index a condition of type {type(cond).__name__}")


def slice_cond(cond: Any, stop: int | None) -> Any:
    """The first ``stop`` rows of a condition."""
    return cond if stop is None else map_cond(cond, lambda t: t[:stop])


def index_cond(cond: Any, index: Tensor) -> Any:
    """The rows ``index`` of a condition."""
    return map_cond(cond, lambda t: t[index.to(t.device)])


def cond_size(cond: Any) -> int:
    """The batch size of a (non-``None``) condition: the length of its first tensor."""
    if isinstance(cond, Tensor):
        return cond.shape[0]
    if isinstance(cond, dict):
        return cond_size(next(iter(cond.values())))
    if isinstance(cond, (tuple, list)):
        return cond_size(cond[0])
    raise TypeError(f"cannot size a condition of type {type(cond).__name__}")
