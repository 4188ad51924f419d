"""Spoken-words metrics in the task classifier's feature space (never called FAD) and its readings of samples.

* ``fd_spoken_words``: Fréchet distance between the classifier features of samples and of real held-out clips,
  through torchmetrics' ``FrechetInceptionDistance`` with the classifier as its feature network;
* ``precision_spoken_words`` / ``recall_spoken_words``: k-NN manifold precision and recall (Kynkäänniemi et al.,
  2019, "Improved Precision and Recall Metric for Assessing Generative Models") in the same features;
* ``word_accuracy``: the share of samples in which the classifier reads the prompted word; ``gender_accuracy``,
  ``accent_accuracy``, and ``voice_accuracy`` (both right);
* ``duration_error_s``: for prompts that say "slowly" or "quickly", the mean absolute difference in seconds
  between a sample's speech duration and the mean duration of the real clips of the same word and speed (the
  reference clips are those of the same conditions, in the same order); ``duration_slow_over_quick`` is the mean
  duration of "slowly" samples over that of "quickly" ones (real clips: about 1.8).

Speech duration: the span from the first to the last frame whose loudest mel bin is within ``ACTIVE_DB`` of
the clip set's loudest frame.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modalities.audio.mel import MelLatent
from modalities.image.evaluation import frechet_distance_features, knn_precision_recall
from tasks.spoken_words.captions import SPEEDS
from tasks.spoken_words.classifier import WEIGHTS, MelClassifier, load_classifier

#: a frame is speech when its loudest mel bin is within this many natural-log units of the set's loudest frame
ACTIVE_LOG = 6.0


def durations(log_mel: Tensor, hop_seconds: float, loudest: float | None = None) -> Tensor:
    """``[N]`` speech durations in seconds (0 for a clip with no speech frame)."""
    level = log_mel.amax(1)  # [N, frames]
    top = float(level.max()) if loudest is None else loudest
    active = level > top - ACTIVE_LOG
    frames = torch.arange(level.shape[-1])
    first = torch.where(active, frames, level.shape[-1]).amin(-1)
    last = torch.where(active, frames, -1).amax(-1)
    return ((last - first + 1).clamp_min(0)) * hop_seconds


class SpokenWordsEvaluator:
    """The metrics above from the shipped classifier (``weights``: its safetensors, with a JSON card beside it
    that records the mel settings it reads)."""

    name = "spoken_words"
    regression_metric = ("fd_spoken_words", True)

    def __init__(self, weights: str = str(WEIGHTS)) -> None:
        self.weights = weights
        card = Path(weights).with_suffix(".json")
        settings = json.loads(card.read_text())["mel"] if card.is_file() else {}
        self.mel = MelLatent(**settings)
        self._net: MelClassifier | None = None

    @property
    def net(self) -> MelClassifier:
        if self._net is None:
            self._net = load_classifier(self.weights)
        return self._net

    @torch.no_grad()
    def metrics(self, log_mel: Tensor, labels: dict[str, Tensor] | None,
                reference: Tensor | None) -> dict[str, float]:
        log_mel = log_mel.float().cpu()
        out: dict[str, float] = {}
        if reference is not None and log_mel.shape[0] >= 2 and reference.shape[0] >= 2:
            reference = reference.float().cpu()
            out["fd_spoken_words"] = frechet_distance_features(self.net, log_mel, reference)
            p, r = knn_precision_recall(self.net(log_mel), self.net(reference))
            out["precision_spoken_words"], out["recall_spoken_words"] = p, r
        if labels:
            out.update(self.accuracies(log_mel, {k: v.cpu() for k, v in labels.items()}))
            out.update(self.duration_metrics(log_mel, labels, reference))
        return out

    def accuracies(self, log_mel: Tensor, labels: dict[str, Tensor]) -> dict[str, float]:
        pred = self.net.predict(log_mel)
        out: dict[str, float] = {}
        for head in ("word", "gender", "accent"):
            known = labels.get(head, torch.full((log_mel.shape[0],), -1)) >= 0
            if bool(known.any()):
                out[f"{head}_accuracy"] = float((pred[head][known] == labels[head][known]).float().mean())
        if "gender" in labels and "accent" in labels:
            known = (labels["gender"] >= 0) & (labels["accent"] >= 0)
            if bool(known.any()):
                right = (pred["gender"] == labels["gender"]) & (pred["accent"] == labels["accent"])
                out["voice_accuracy"] = float(right[known].float().mean())
        return out

    def duration_metrics(self, log_mel: Tensor, labels: dict[str, Tensor],
                         reference: Tensor | None) -> dict[str, float]:
        if "speed" not in labels or "word" not in labels:
            return {}
        hop = self.mel.hop_length / self.mel.sample_rate
        speed, word = labels["speed"].cpu(), labels["word"].cpu()
        slow, quick = SPEEDS.index("slowly"), SPEEDS.index("quickly")
        loudest = float(reference.amax(1).max()) if reference is not None else None
        d = durations(log_mel, hop, loudest)
        out: dict[str, float] = {}
        if bool((speed == slow).any()) and bool((speed == quick).any()):
            out["duration_slow_over_quick"] = float(d[speed == slow].mean() / d[speed == quick].mean().clamp_min(hop))
        if reference is None or reference.shape[0] != log_mel.shape[0]:
            return out
        d_ref = durations(reference, hop, loudest)
        errors = []
        for i in torch.nonzero((speed == slow) | (speed == quick)).flatten().tolist():
            same = (speed == speed[i]) & (word == word[i])
            errors.append(abs(float(d[i]) - float(d_ref[same].mean())))
        if errors:
            out["duration_error_s"] = sum(errors) / len(errors)
        return out


def describe(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}"
                     for k, v in metrics.items())
