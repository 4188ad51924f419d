"""The photo-SR task: photos that ship in wheels and load offline, whole held-out images, training patches; the
configs build through the CLI and run real optimizer steps; the superres row of the regression matrix."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from support.training import build_trained

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "photo_sr").glob("*.yaml"))

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_photo_loads_with_sockets_disabled_and_held_out_photos_are_whole_images(monkeypatch):
    from tasks.photo_sr import TEST_PHOTOS, TRAIN_PHOTOS, load_photo
    from tasks.photo_sr.photos import _load

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    _load.cache_clear()
    photos = {name: load_photo(name) for name in TRAIN_PHOTOS + TEST_PHOTOS}
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    for name, img in photos.items():
        assert img.shape[0] == 3 and min(img.shape[1:]) >= 300, name
        assert -1 <= float(img.min()) and float(img.max()) <= 1 and float(img.std()) > 0.05, name
    # no held-out photo is a copy (or crop) of a training photo: compare a 32x32 corner block against all positions
    # is too slow; compare global colour statistics, which differ clearly between the ten photos
    means = {n: img.mean((1, 2)) for n, img in photos.items()}
    for a in TEST_PHOTOS:
        assert all(float((means[a] - means[b]).abs().max()) > 0.01 for b in TRAIN_PHOTOS)


def test_training_patches_are_a_pure_function_of_their_index_and_use_all_flips():
    from tasks.photo_sr import TrainPatches

    ds = TrainPatches(64, patch=32, seed=3)
    a, b = ds[5], ds[5]
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["cond"]["lr"], b["cond"]["lr"])
    assert a["x"].shape == (3, 32, 32) and a["cond"]["lr"].shape == (3, 8, 8) and a["cond"]["up"].shape == (3, 32, 32)
    assert not torch.equal(ds[5]["x"], ds[6]["x"])
    draws = {int(np.random.default_rng([3, i]).integers(len(ds.images))) for i in range(64)}
    assert len(draws) == len(ds.images)  # every training photo is used


def test_held_out_crops_are_from_held_out_photos_only():
    from tasks.photo_sr import HeldOutCrops, load_photo

    crops = HeldOutCrops(patch=64)
    assert len(crops) == 142
    first = crops[0]["x"]
    assert torch.equal(first, load_photo("chelsea")[:, :64, :64])


def _local_config(config: Path, tmp: Path) -> Path:
    """The config with a seeded random teacher (tests must not depend on training) and a tiny data module; a
    warm start from the shipped full-size baseline must name a file that exists, and is dropped for the tiny net."""
    doc = yaml.safe_load(config.read_text())
    doc["model"]["modality"]["init_args"]["teacher"] = "random:0"
    warm = doc["model"]["modality"]["init_args"].pop("warm_start", None)
    assert warm is None or (ROOT / warm).is_file(), f"{config.name}: warm_start {warm} is missing"
    doc["model"]["modality"]["init_args"]["blocks"] = [8, 16, 16]
    doc["data"]["init_args"].update(batch_size=2, val_size=4, train_size=64)
    out = tmp / config.name
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_photo_sr_config_runs_optimizer_steps(config, tmp_path):
    local = _local_config(config, tmp_path)
    module, batch = build_trained(local, config.read_text(), tmp_path, "ddim")
    out = module.sample_student(batch.cond, 2, 1, torch.Generator().manual_seed(0))
    assert out.x.shape == (2, *module.modality.latent_shape) and torch.isfinite(out.x).all()
    metrics = module.modality.metrics(out.x, batch.cond, batch.x0)
    assert set(metrics) >= {"st_lpips_alex", "psnr_y", "ssim_y", "lr_psnr"}


def test_required_configs_are_shipped():
    assert {"teacher", "baseline", "sinsr", "dmd2", "adversarial", "consistency", "reflow"} <= {c.stem for c in CONFIGS}


def _matrix_cells():
    from unidistill.regress import build_matrix

    return build_matrix(["superres"])


@pytest.mark.parametrize("cell", [c for c in _matrix_cells() if c.status == "ready"], ids=lambda c: c.objective)
def test_superres_matrix_cell_runs(cell):
    from unidistill.regress import run_fast_cell

    facts = run_fast_cell(cell, iterations=2, batch_size=2)
    assert facts["leaks"] == []


def test_superres_matrix_cells_that_cannot_run_say_why():
    cells = _matrix_cells()
    not_ready = {c.objective: c.reason for c in cells if c.status != "ready"}
    assert all(c.status in ("ready", "unsupported") for c in cells)
    assert set(not_ready) == {"CausVid", "DiffusionForcing", "SelfForcing", "TeacherForcing"}
    assert all(len(reason) > 20 for reason in not_ready.values())
