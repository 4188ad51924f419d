"""The digits task: data and captions, the evaluation classifier, the shipped teacher, every config, the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modalities.image import ImageModality
from modalities.image.evaluation import frechet_distance_features
from tasks.digits import DigitsClassifier, DigitsDataModule, load_digit_images
from tasks.digits.data import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption
from unidistill.cli import main
from unidistill.metrics import frechet_distance
from unidistill.runs import UnidistillCLI, configured_cache_root

CONFIGS = sorted(Path("configs/digits").glob("*.yaml"))
TEACHER = Path("tasks/digits/weights/teacher")


@pytest.fixture(scope="module")
def digits():
    return load_digit_images(16)


@pytest.fixture(scope="module")
def classifier():
    return DigitsClassifier()


def test_images_and_captions(digits):
    x, y = digits
    assert x.shape == (1797, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(torch.bincount(y), torch.bincount(y).clamp_min(170))  # every class has >= 170 digits
    train = {caption(d, t) for d in range(10) for t in TRAIN_TEMPLATES}
    held = {caption(d, t) for d in range(10) for t in HELDOUT_TEMPLATES}
    assert len(train) == 80 and len(held) == 30 and not train & held
    dm = DigitsDataModule(batch_size=8)
    dm.setup("fit")
    assert len(dm.train_set) == 1797 * len(TRAIN_TEMPLATES)
    item = dm.train_set[9]  # image 1, template 1
    assert item["prompt"] == caption(int(y[1]), TRAIN_TEMPLATES[1]) and torch.equal(item["x"], x[1])
    assert all(dm.val_set[i]["prompt"] in held for i in range(30))


def test_classifier_reads_real_digits_and_defines_fd_digits(digits, classifier):
    x, y = digits
    acc = (classifier.predict(x) == y).double().mean()
    assert acc > 0.97
    feats = classifier(x)
    assert feats.shape == (1797, classifier.num_features)
    # torchmetrics' Fréchet distance on our feature network equals our own closed form on the same features
    a, b = x[:900], x[900:]
    ours = frechet_distance(classifier(a), classifier(b))
    theirs = frechet_distance_features(classifier, a, b)
    assert abs(ours - theirs) < 1e-3 * max(1.0, ours)
    noise = torch.rand_like(a) * 2 - 1
    assert frechet_distance_features(classifier, noise, b) > 20 * theirs


def test_shipped_teacher_is_a_small_pipeline_folder():
    total = sum(f.stat().st_size for f in TEACHER.rglob("*") if f.is_file())
    assert total < 8 * 2**20
    modality = ImageModality(teacher=str(TEACHER), text_encoder="minilm", max_prompt_length=16)
    assert modality.latent_shape == (1, 16, 16) and modality.prediction == "v"
    report = json.loads((TEACHER / "report.json").read_text())
    assert report["fd_digits"] > 0 and 0 <= report["prompt_accuracy"] <= 1


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_digits_config_runs_fit(config, tmp_path):
    extra = []
    if configured_cache_root(config):  # a config that trains from a teacher cache: make a tiny one first
        main(["cache", "--config", str(config), "--out", str(tmp_path / "cache"), "--samples", "8", "--steps", "2",
              "--shard-size", "4"])
        extra = [f"--model.objective.init_args.cache.init_args.root={tmp_path / 'cache'}"]
    cli = UnidistillCLI(args=[
        "fit", "--config", str(config), "--data.init_args.batch_size=4", "--trainer.max_steps=3",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=0", *extra,
    ])
    module = cli.model
    assert int(module.iteration) >= 1
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    for p in module.student.parameters():
        assert torch.isfinite(p).all()


def test_demo_distils_prints_the_table_and_writes_the_comparison_png(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--samples", "24", "--teacher", "ddim:8", "dpm_solver_pp_2m:4",
          "--nfes", "1", "--trainer.max_steps=2", "--data.init_args.batch_size=4", "--trainer.logger=false"])
    out = capsys.readouterr().out
    assert "fd_digits" in out and "prompt_accuracy" in out
    rows = json.loads((tmp_path / "demo.json").read_text())["rows"]
    assert [(r["model"], r["nfe"]) for r in rows] == [("teacher", 8), ("teacher", 4), ("ConsistencyDistillation", 1)]
    from PIL import Image

    png = Image.open(tmp_path / "comparison" / "comparison.png")
    assert png.width >= 10 * 96 and png.height >= 2 * 96  # 10 prompts x (teacher + one student row)


def test_latent_variant_encodes_through_the_shipped_vae(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained("tasks/digits/weights/vae")
    x, _ = load_digit_images(32)
    with torch.no_grad():
        z = vae.encode(x[:256]).latent_dist.mode()
        rec = vae.decode(z).sample
    assert z.shape == (256, 4, 8, 8)
    assert torch.nn.functional.mse_loss(rec, x[:256]) < 5e-3  # a real autoencoder, not an identity or noise
    cli = UnidistillCLI(args=[
        "fit", "--config", "configs/digits_latent/teacher.yaml", "--data.init_args.batch_size=4",
        "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ])
    modality = cli.model.modality
    assert modality.latent_shape == (4, 8, 8) and modality.image_channels == 1
    batch = modality.to_batch({"x": x[:2], "prompt": ["a handwritten one", "two"], "label": torch.tensor([1, 2])})
    scale = vae.config.scaling_factor
    assert torch.allclose(batch.x0, z[:2] * scale, atol=1e-5)
    assert torch.allclose(modality.decode(batch.x0), rec[:2].clamp(-1, 1), atol=1e-4)


def test_demo_uses_a_verified_teacher_reference_and_detects_a_stale_one(tmp_path, capsys):
    ref = tmp_path / "teacher_reference.json"
    common = ["--samples", "24", "--teacher", "ddim:8", "--nfes", "1", "--teacher-reference", str(ref)]
    main(["demo", *common, "--write-teacher-reference", "--check-samples", "8"])
    stored = json.loads(ref.read_text())
    assert stored["samples"] == 24 and stored["check"]["samples"] == 8 and len(stored["teacher"]) == 64
    fit = ["--trainer.max_steps=2", "--data.init_args.batch_size=4", "--trainer.logger=false"]
    main(["demo", "--out", str(tmp_path / "a"), *common, *fit])
    out = capsys.readouterr().out
    assert "shipped teacher numbers verified on 8 samples" in out and "where the time went" in out
    demo = json.loads((tmp_path / "a" / "demo.json").read_text())
    teacher = demo["rows"][0]
    assert teacher["quality_from"] == str(ref)
    assert teacher["fd_digits"] == stored["runs"]["ddim:8"]["metrics"]["fd_digits"]
    assert set(demo["phases_minutes"]) >= {"distillation (unidistill fit)", "teacher and student tables"}

    stored["check"]["runs"]["ddim:8"]["metrics"]["fd_digits"] *= 2  # the file no longer matches this teacher
    ref.write_text(json.dumps(stored))
    main(["demo", "--out", str(tmp_path / "b"), *common, *fit])
    assert "is stale: teacher ddim:8 fd_digits" in capsys.readouterr().out
    assert "quality_from" not in json.loads((tmp_path / "b" / "demo.json").read_text())["rows"][0]
