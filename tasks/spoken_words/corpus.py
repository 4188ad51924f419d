"""Spoken-words corpora: the clips of a split, synthesised once and cached on disk with a manifest.

A corpus is keyed on everything that decides its samples (split, seed, sample rate, window length, the espeak-ng
version and the task's vocabulary/voice tables), so a changed setting regenerates it and an unchanged one is read
back; clip ``i`` depends on its seed and index only, so a cached corpus serves every smaller size (about 11 ms
of espeak-ng per clip: 10k clips are about two CPU minutes). Each cache entry is a safetensors file of 16-bit
audio ``[N, samples]`` plus the clip specs, with a JSON manifest beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from tasks.spoken_words import captions
from tasks.spoken_words.captions import ClipSpec, draw_spec
from tasks.spoken_words.espeak import espeak_version, render

log = logging.getLogger(__name__)
FORMAT = 1
#: offsets that keep the seeds of different splits disjoint
SPLIT_OFFSET = {"train": 0, "val": 1 << 40, "classifier": 2 << 40}
SPEC_FIELDS = [f.name for f in fields(ClipSpec)]


def default_cache_dir() -> Path:
    return Path(os.environ.get("UNIDISTILL_CACHE", Path.home() / ".cache" / "unidistill")) / "spoken_words"


def clip_seed(split: str, seed: int, index: int) -> int:
    return SPLIT_OFFSET[split] + seed * 1_000_003 + index


@dataclass
class Corpus:
    """``audio`` ``[N, samples]`` float32 in [-1, 1], one ``ClipSpec`` per clip, speech lengths in samples."""

    audio: Tensor
    specs: list[ClipSpec]
    lengths: Tensor
    sample_rate: int

    def __len__(self) -> int:
        return len(self.specs)


def settings(split: str, seed: int, sample_rate: int, samples: int) -> dict:
    tables = {k: getattr(captions, k) for k in ("WORDS", "ACCENTS", "VARIANTS", "SPEED_WPM", "WPM_JITTER",
                                                  "PITCH_RANGE", "TRAIN_TEMPLATES", "HELD_OUT_TEMPLATES")}
    tables["HELD_OUT_COMBOS"] = sorted(captions.HELD_OUT_COMBOS)
    return {"format": FORMAT, "split": split, "seed": seed, "sample_rate": sample_rate,
            "samples": samples, "espeak": espeak_version(), "tables": json.loads(json.dumps(tables))}


def corpus_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def generate(split: str, size: int, seed: int, sample_rate: int, samples: int) -> Corpus:
    specs = [draw_spec(split, clip_seed(split, seed, i)) for i in range(size)]
    audio = torch.zeros(size, samples)
    lengths = torch.zeros(size, dtype=torch.long)
    for i, spec in enumerate(specs):
        audio[i], lengths[i] = render(spec, sample_rate, samples)
        if (i + 1) % 2000 == 0:
            log.info("synthesised %d / %d %s clips", i + 1, size, split)
    return Corpus(audio, specs, lengths, sample_rate)


def load_corpus(split: str, size: int, seed: int = 0, sample_rate: int = 16000, samples: int = 16128,
                cache_dir: str | Path | None = None) -> Corpus:
    """The corpus, from the cache when its manifest matches, else synthesised and cached."""
    from safetensors.torch import load_file, save_file

    if size < 1:
        raise ValueError(f"a corpus needs at least one clip, got size={size}")
    config = settings(split, seed, sample_rate, samples)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"{split}_{corpus_key(config)}.safetensors"
    manifest = path.with_suffix(".json")
    if path.is_file() and manifest.is_file():
        info = json.loads(manifest.read_text())
        if info.get("settings") == config and info.get("size", 0) >= size:
            state = load_file(str(path))
            rows = state["specs"][:size].tolist()
            specs = [ClipSpec(*[int(v) if f != "held_out_template" else bool(v)
                                for f, v in zip(SPEC_FIELDS, row, strict=True)]) for row in rows]
            return Corpus(state["audio"][:size].float() / 32767.0, specs, state["lengths"][:size], sample_rate)
    corpus = generate(split, size, seed, sample_rate, samples)
    root.mkdir(parents=True, exist_ok=True)
    pcm = (corpus.audio.clamp(-1, 1) * 32767.0).round().to(torch.int16)
    table = torch.tensor([[int(getattr(s, f)) for f in SPEC_FIELDS] for s in corpus.specs], dtype=torch.int32)
    tmp = path.with_suffix(".tmp")
    save_file({"audio": pcm, "specs": table, "lengths": corpus.lengths}, str(tmp))
    os.replace(tmp, path)
    manifest.write_text(json.dumps({"settings": config, "size": size, "spec_fields": SPEC_FIELDS,
                                    "captions": [s.caption for s in corpus.specs[:50]]}, indent=1))
    corpus.audio = pcm.float() / 32767.0  # what a cached read returns, so the first run trains on the same clips
    return corpus
