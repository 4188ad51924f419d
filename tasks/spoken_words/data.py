"""The spoken-words DataModule: cached espeak-ng corpora, captions from templates, labels for the evaluator.

Training clips come from the training templates and the seen (word, voice) combinations; validation clips from
the held-out templates and every combination (20 of them never seen in training), so prompt following is scored
on captions the generator has not seen. Items are ``{"audio": [samples], "prompt": str, "labels": {...}}``.

    python -m tasks.spoken_words.data     # synthesise and cache the corpora, write the shipped mel statistics
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from modalities.audio.mel import MelLatent, compute_stats
from tasks.spoken_words.corpus import Corpus, load_corpus
from unidistill.data import ResumableDataLoader

WEIGHTS = Path(__file__).parent / "weights"
MEL_STATS = WEIGHTS / "mel_stats.json"
TRAIN_SIZE, VAL_SIZE, CLASSIFIER_SIZE = 10_000, 1024, 6000
SAMPLE_RATE, SAMPLES = 16000, 16128  # 64 mel frames of hop 256 (MelLatent's default window)


class SpokenWords(Dataset):
    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> dict:
        spec = self.corpus.specs[i]
        return {"audio": self.corpus.audio[i], "prompt": spec.caption, "labels": spec.labels(),
                "sample_rate": self.corpus.sample_rate}


class SpokenWordsDataModule(L.LightningDataModule):
    """Cached corpora (``tasks.spoken_words.corpus``); ``cache_dir`` defaults to ``~/.cache/unidistill``."""

    def __init__(self, train_size: int = TRAIN_SIZE, val_size: int = 256, batch_size: int = 32,
                 val_batch_size: int = 128, seed: int = 0, cache_dir: str | None = None) -> None:
        super().__init__()
        self.train_size, self.val_size = train_size, val_size
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.seed, self.cache_dir = seed, cache_dir

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_set = SpokenWords(load_corpus("train", self.train_size, self.seed, SAMPLE_RATE, SAMPLES,
                                                     self.cache_dir))
        self.val_set = SpokenWords(load_corpus("val", self.val_size, self.seed, SAMPLE_RATE, SAMPLES, self.cache_dir))

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.train_set, self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="synthesise the spoken-words corpora and write the mel statistics")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--stats", default=str(MEL_STATS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    train = load_corpus("train", TRAIN_SIZE, 0, SAMPLE_RATE, SAMPLES, args.cache_dir)
    load_corpus("val", VAL_SIZE, 0, SAMPLE_RATE, SAMPLES, args.cache_dir)
    load_corpus("classifier", CLASSIFIER_SIZE, 0, SAMPLE_RATE, SAMPLES, args.cache_dir)
    print(f"wrote {compute_stats(MelLatent(), train.audio, args.stats)}")


if __name__ == "__main__":
    main()
