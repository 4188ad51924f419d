"""The quality tier of the regression matrix: ``unidistill regress --tier quality``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unidistill.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_quality_tier_writes_goldens_passes_on_a_rerun_and_fails_on_a_regression(tmp_path, capsys):
    argv = ["regress", "--tier", "quality", "--modality", "gmm", "--objective", "regression", "--max-steps", "20",
            "--samples", "1024", "--goldens", str(tmp_path), "--workdir", str(tmp_path / "runs")]
    main([*argv, "--update-goldens"])
    golden = json.loads((tmp_path / "gmm.json").read_text())
    assert set(golden["entries"]) == {"gmm/regression@nfe1", "gmm/regression@nfe2", "gmm/regression@nfe4"}
    assert golden["budget"] == {"max_steps": 20, "samples": 1024, "seed": 0}
    assert golden["command"].startswith("unidistill regress") and golden["commit"]
    capsys.readouterr()

    main(argv)  # same seeds, same budget: nothing moves
    out = capsys.readouterr().out
    assert out.count(" ok") >= 3 and "0 regression(s)" in out and "REGRESSED" not in out

    entry = golden["entries"]["gmm/regression@nfe1"]
    entry["value"], entry["tolerance"] = entry["value"] / 10, entry["value"] / 100  # the past was much better
    (tmp_path / "gmm.json").write_text(json.dumps(golden))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "gmm/regression@nfe1" in out and "REGRESSED" in out and "1 regression(s)" in out


def test_a_config_with_its_own_checkpoint_callback_runs_in_the_quality_tier(tmp_path):
    """Configs may carry periodic ``ModelCheckpoint`` callbacks for their own runs (photo_sr does); the quality tier
    trains without checkpoints, so it must drop them, not fail on Lightning's enable_checkpointing conflict."""
    import yaml

    doc = yaml.safe_load((ROOT / "configs" / "gmm" / "regression.yaml").read_text())
    doc["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "init_args": {"save_last": True, "every_n_train_steps": 2}}]
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "regression.yaml").write_text(yaml.safe_dump(doc))
    main(["regress", "--tier", "quality", "--modality", "gmm", "--configs", str(configs), "--max-steps", "4",
          "--samples", "64", "--goldens", str(tmp_path), "--workdir", str(tmp_path / "runs"), "--update-goldens"])
    assert set(json.loads((tmp_path / "gmm.json").read_text())["entries"]) >= {"configs/regression@nfe1"}
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_partial_golden_update_keeps_the_files_stamp_and_stamps_its_own_entries(tmp_path):
    budget = {"max_steps": 20, "samples": 1024, "seed": 0}
    other = {"objective": "X", "config": "configs/gmm/x.yaml", "nfe": 1, "metric": "sliced_wasserstein",
             "lower_is_better": True, "value": 0.5, "tolerance": 0.1, "all_metrics": {}, "distill_seconds": 1.0}
    before = {"modality": "gmm", "command": "unidistill regress --tier quality --modality gmm --update-goldens",
              "commit": "abc", "date": "2026-01-01T00:00:00Z", "machine": {}, "budget": budget,
              "tolerance_rule": "r", "entries": {"gmm/x@nfe1": other}}
    (tmp_path / "gmm.json").write_text(json.dumps(before))
    argv = ["regress", "--tier", "quality", "--modality", "gmm", "--objective", "regression", "--samples", "1024",
            "--goldens", str(tmp_path), "--workdir", str(tmp_path / "runs"), "--update-goldens"]
    with pytest.raises(ValueError, match="budget .* was made with"):
        main([*argv, "--max-steps", "10"])  # other entries were measured with 20 steps
    main([*argv, "--max-steps", "20"])
    after = json.loads((tmp_path / "gmm.json").read_text())
    assert {k: after[k] for k in ("command", "commit", "date", "budget")} == \
        {k: before[k] for k in ("command", "commit", "date", "budget")}
    assert after["entries"]["gmm/x@nfe1"] == other
    mine = after["entries"]["gmm/regression@nfe1"]
    assert "--objective regression" in mine["updated"]["command"] and mine["updated"]["commit"]


GOLDENS = sorted(p.stem for p in (ROOT / "benchmarks" / "goldens").glob("*.json"))


def test_every_registered_task_modality_ships_goldens():
    from unidistill.regress import quality_configs

    assert set(GOLDENS) >= set(EXPECTED_METRIC)  # every modality this repository ships
    for modality in GOLDENS:
        golden = json.loads((ROOT / "benchmarks" / "goldens" / f"{modality}.json").read_text())
        configs = {str(c.relative_to(ROOT)) for c in quality_configs(modality)}
        assert {e["config"] for e in golden["entries"].values()} == configs, modality
        # each shipped golden compares the plugin's quality measure, not a statistic such as a pixel mean
        assert {e["metric"] for e in golden["entries"].values()} == {EXPECTED_METRIC[modality]}, modality


EXPECTED_METRIC = {"gmm": "sliced_wasserstein", "image": "fd_digits", "video": "fvd_moving_digits",
                   "policy": "action_mse", "audio": "fd_spoken_words", "superres": "st_lpips_alex",
                   "pointcloud": "fd_shapes", "shape_structure": "mmd_iou", "shape_latent": "chamfer_given_structure"}


def test_regression_metric_must_be_one_the_plugin_reports():
    from modalities.gmm import GaussianMixture, GmmModality
    from unidistill.regress import metric_choice

    modality = GmmModality(GaussianMixture(dim=2, num_components=4))
    metrics = {"mmd": 0.1, "sliced_wasserstein": 0.2}
    assert metric_choice(modality, metrics) == ("sliced_wasserstein", True)  # named, not the first reported
    with pytest.raises(ValueError, match="sliced_wasserstein.*'mmd'"):
        metric_choice(modality, {"mmd": 0.1})


@pytest.mark.slow
@pytest.mark.parametrize("modality", GOLDENS)
def test_shipped_goldens_hold(modality):
    """Every objective of the modality distilled with its goldens' budget and seeds (gmm about 4 CPU minutes;
    image, video and policy each tens of minutes)."""
    result = subprocess.run([sys.executable, "-m", "unidistill.cli", "regress", "--tier", "quality", "--modality",
                             modality], cwd=ROOT, capture_output=True, text=True, timeout=7200,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "0 regression(s)" in result.stdout
