"""The task's own feature network: a small mel-spectrogram CNN trained on real (espeak-ng) clips.

No pretrained audio network (VGGish, PANNs, CLAP) can be loaded offline, so ``fd_spoken_words`` and the
accuracies use this classifier, trained on the ``classifier`` corpus (all (word, voice) combinations, its own
seeds) to read the word, the voice's gender and its accent from a log-mel spectrogram; it is scored on the
held-out validation clips. Its penultimate layer (64 features, pooled over time) is the feature space.

    python -m tasks.spoken_words.classifier           # writes weights/classifier.safetensors and classifier.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.audio.mel import MelLatent
from tasks.spoken_words.captions import ACCENTS, GENDERS, WORDS

WEIGHTS = Path(__file__).parent / "weights" / "classifier.safetensors"
HEADS = {"word": len(WORDS), "gender": len(GENDERS), "accent": len(ACCENTS)}
log = logging.getLogger(__name__)


class MelClassifier(nn.Module):
    """``[N, n_mels, frames]`` natural-log mel -> ``[N, features]`` (``forward``) and per-head logits."""

    num_features = 64

    def __init__(self, n_mels: int = 64, width: int = 24, features: int = 64) -> None:
        super().__init__()
        self.num_features = features
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))

        self.convs = nn.Sequential(block(1, width), block(width, 2 * width), block(2 * width, 4 * width),
                                   block(4 * width, 4 * width))
        self.embed = nn.Sequential(nn.Linear(4 * width * (n_mels // 16), features), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(features, n) for k, n in HEADS.items()})

    def forward(self, log_mel: Tensor) -> Tensor:
        x = (log_mel.float() - self.mean[:, None]) / self.std[:, None]
        h = self.convs(x[:, None])  # [N, C, bins / 16, frames / 16]
        return self.embed(h.mean(-1).flatten(1))  # pooled over time: where the word sits does not matter

    def logits(self, log_mel: Tensor) -> dict[str, Tensor]:
        f = self.forward(log_mel)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, log_mel: Tensor) -> dict[str, Tensor]:
        return {k: v.argmax(-1) for k, v in self.logits(log_mel).items()}


def load_classifier(path: str | Path = WEIGHTS) -> MelClassifier:
    from unidistill.weights import load_safetensors

    net = MelClassifier()
    load_safetensors(net, path, "spoken-words classifier", "train it with python -m tasks.spoken_words.classifier")
    return net.eval().requires_grad_(False)


def shift(log_mel: Tensor, floor: float, generator: torch.Generator, most: int = 6) -> Tensor:
    """Augmentation: move each clip right by 0..``most`` frames, filling with silence."""
    out = torch.full_like(log_mel, floor)
    for i, k in enumerate(torch.randint(0, most + 1, (log_mel.shape[0],), generator=generator).tolist()):
        out[i, :, k:] = log_mel[i, :, : log_mel.shape[-1] - k]
    return out


def labels_of(specs: list) -> dict[str, Tensor]:
    return {k: torch.tensor([s.labels()[k] for s in specs]) for k in HEADS}


@torch.no_grad()
def accuracy(net: MelClassifier, log_mel: Tensor, labels: dict[str, Tensor]) -> dict[str, float]:
    pred = net.eval().predict(log_mel)
    out = {f"{k}_accuracy": float((pred[k] == labels[k]).float().mean()) for k in HEADS}
    out["voice_accuracy"] = float(((pred["gender"] == labels["gender"]) & (pred["accent"] == labels["accent"]))
                                  .float().mean())
    return out


def train(steps: int = 1200, batch: int = 64, lr: float = 2e-3, seed: int = 0, out: Path = WEIGHTS,
          cache_dir: str | None = None) -> dict:
    from safetensors.torch import save_file

    from tasks.spoken_words.corpus import load_corpus
    from tasks.spoken_words.data import CLASSIFIER_SIZE, SAMPLE_RATE, SAMPLES, VAL_SIZE

    mel = MelLatent()
    train_c = load_corpus("classifier", CLASSIFIER_SIZE, 0, SAMPLE_RATE, SAMPLES, cache_dir)
    val_c = load_corpus("val", VAL_SIZE, 0, SAMPLE_RATE, SAMPLES, cache_dir)
    x = torch.cat([mel.log_mel(w) for w in train_c.audio.split(512)])
    xv = torch.cat([mel.log_mel(w) for w in val_c.audio.split(512)])
    y, yv = labels_of(train_c.specs), labels_of(val_c.specs)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = MelClassifier(mel.n_mels)
    net.mean.copy_(x.transpose(0, 1).reshape(mel.n_mels, -1).mean(1))
    net.std.copy_(x.transpose(0, 1).reshape(mel.n_mels, -1).std(1))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        net.train()
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        logits = net.logits(shift(x[idx], math.log(mel.log_floor), g))
        loss = sum(F.cross_entropy(logits[k], y[k][idx]) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log.info("step %d loss %.4f val %s", step, float(loss.detach()), accuracy(net, xv, yv))
    net.eval()
    result = {"held_out_validation": accuracy(net, xv, yv), "training_clips": x.shape[0],
              "validation_clips": xv.shape[0], "steps": steps, "batch": batch, "lr": lr, "seed": seed}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_minutes"] = round((usage.ru_utime + usage.ru_stime) / 60, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    card = {"network": "MelClassifier", "mel": mel.transform_settings(), "heads": {k: list(v) for k, v in
            (("word", WORDS), ("gender", GENDERS), ("accent", list(ACCENTS)))},
            "command": "OMP_NUM_THREADS=1 python -m tasks.spoken_words.classifier", **result}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="train the spoken-words mel classifier (the task's feature network)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    print(json.dumps(train(args.steps, out=Path(args.out), cache_dir=args.cache_dir), indent=2))


if __name__ == "__main__":
    main()
