"""Caption embeddings of the shapes task: all-MiniLM-L6-v2 sentence vectors (the image plugin's offline
``TextEncoder``, mean-pooled over real tokens and L2-normalised as sentence-transformers does), computed once for
the fixed caption list and cached in ``weights/captions.safetensors`` (rewritten when the list changes)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path as FilePath

import torch
from torch import Tensor

from tasks.shapes.catalog import CONCEPTS, all_captions, heldout_captions, train_captions

CACHE = FilePath(__file__).parent / "weights" / "captions.safetensors"
MAX_TOKENS = 16


def embed(captions: list[str]) -> Tensor:
    """``[N, 384]`` sentence embeddings through the local MiniLM (no download)."""
    from modalities.image.text import TextEncoder

    encoder = TextEncoder.shared("minilm", MAX_TOKENS)
    tokens = encoder.tokenizer(list(captions), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                               return_tensors="pt")
    hidden = encoder.encode(list(captions))
    mask = tokens["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@lru_cache(maxsize=1)
def caption_embeddings(cache: str = str(CACHE)) -> Tensor:
    """``[len(all_captions()), 384]`` in ``all_captions()`` order, from the cache when it matches."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    captions = all_captions()
    path = FilePath(cache)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if json.loads((f.metadata() or {}).get("captions", "[]")) == captions:
                return f.get_tensor("embeddings")
    emb = embed(captions)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": emb.contiguous()}, str(path), metadata={"captions": json.dumps(captions)})
    return emb


@lru_cache(maxsize=1)
def caption_concepts() -> Tensor:
    """The concept index of every caption, in ``all_captions()`` order."""
    return torch.tensor([i for i in range(len(CONCEPTS)) for _ in (*train_captions(i), *heldout_captions(i))])


def caption_index(text: str) -> int:
    """The position of ``text`` in ``all_captions()``; an unknown caption is an error listing a few valid ones."""
    captions = all_captions()
    if text not in captions:
        raise KeyError(f"{text!r} is not a caption of the shapes task; e.g. {captions[:3]}")
    return captions.index(text)


def concept_of(cond: Tensor) -> Tensor:
    """The concept of each caption embedding ``[N, 384]`` (its nearest caption's concept)."""
    nearest = (cond.float().cpu() @ caption_embeddings().T).argmax(dim=1)
    return caption_concepts()[nearest]
