"""Every shipped 3D config (configs/shapes_points, shapes_structure, shapes_latent) builds through the CLI with the
shipped teachers, reads a cache the CLI writes where it names one, and runs real optimizer steps; its student then
samples finite latents of the modality's shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from support.training import build_trained

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("shapes_points", "shapes_structure", "shapes_latent")
CONFIGS = sorted(p for folder in FOLDERS for p in (ROOT / "configs" / folder).glob("*.yaml"))

pytestmark = pytest.mark.usefixtures("one_thread")


def _local_config(config: Path, tmp: Path) -> Path:
    """The config with a tiny data module; the shipped teacher it names must exist (it is a few MB)."""
    doc = yaml.safe_load(config.read_text())
    teacher = doc["model"]["modality"]["init_args"]["teacher"]
    assert (ROOT / teacher).is_file(), f"{config.name}: teacher {teacher} is missing"
    doc["data"]["init_args"].update(batch_size=2, val_batch_size=2, val_size=4, train_size=8)
    out = tmp / f"{config.parent.name}_{config.name}"
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parent.name}/{c.stem}")
def test_shapes_config_runs_optimizer_steps(config, tmp_path):
    local = _local_config(config, tmp_path)
    module, batch = build_trained(local, config.read_text(), tmp_path, "euler", ("--condition-pool", "8"))
    out = module.sample_student(batch.cond, 2, 1, torch.Generator().manual_seed(0))
    assert out.x.shape == (2, *module.modality.latent_shape) and torch.isfinite(out.x).all()


def test_every_objective_the_issue_names_has_a_config_per_representation():
    wanted = {"teacher", "reflow", "regression", "dmd2", "consistency", "scm", "progressive"}
    for folder in FOLDERS:
        assert wanted <= {p.stem for p in (ROOT / "configs" / folder).glob("*.yaml")}, folder
