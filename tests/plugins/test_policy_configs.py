"""Every shipped policy YAML runs ``unidistill fit`` for a few steps through the CLI (tiny demo sets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unidistill.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for task in ("reach_around", "reacher") for p in (ROOT / "configs" / task).glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_task_ships_teacher_consistency_dmd2_and_the_baseline():
    for task in ("reach_around", "reacher"):
        assert {p.stem for p in CONFIGS if p.parent.name == task} >= {"teacher", "consistency", "dmd2",
                                                                        "mean_regression"}
        assert (ROOT / "tasks" / task / "weights" / "teacher.safetensors").is_file()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parent.name}/{c.stem}")
def test_policy_config_fits_a_few_steps(config, tmp_path):
    args = ["fit", "--config", str(config), "--trainer.max_steps=3", "--trainer.val_check_interval=1000",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.demos.init_args.episodes=12", "--data.init_args.val_episodes=2",
            "--data.init_args.batch_size=32"]
    if "demos" in config.read_text().split("objective:")[0]:
        args.append("--model.modality.init_args.demos.init_args.episodes=12")
    main(args)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
