"""Every shipped gmm YAML parses and instantiates through ``unidistill.cli.build`` (no training), and the
pieces the trajectory configs rely on (flow-map solver entry, smooth time embeddings) behave."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unidistill.runs import build
from unidistill.solvers import SOLVERS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "gmm").glob("*.yaml"))


def test_trajectory_configs_are_shipped():
    names = {c.stem for c in CONFIGS}
    assert {"phased", "scm", "progressive", "reflow", "flow_map", "regression"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_gmm_config_builds_and_samples(config):
    module, datamodule = build(config)
    assert module.objective.student_solver in SOLVERS
    assert module.student is not None and datamodule is not None
    if config.stem == "teacher":
        return
    cond = torch.arange(4) % 4
    out = module.sample_student(cond, 4, 1, torch.Generator().manual_seed(0))
    assert out.x.shape == (4, 8) and torch.isfinite(out.x).all()


def test_flow_map_solver_is_registered_and_takes_guidance():
    from unidistill.objectives import FlowMapDistillation
    from unidistill.solvers import flow_map_sample

    assert SOLVERS["flow_map"] is flow_map_sample
    assert FlowMapDistillation().student_takes_guidance
    with pytest.raises(TypeError, match="average_velocity"):
        flow_map_sample(object(), torch.zeros(2, 8), torch.tensor([1.0, 0.0]))


def test_time_scale_default_unchanged_and_configurable():
    from modalities.gmm.network import MLPDenoiserNet, time_embedding

    t = torch.rand(5)
    half = 8
    freqs = torch.exp(-torch.log(torch.tensor(1000.0)) * torch.arange(half) / half)
    ang = t[:, None] * 1000.0 * freqs[None]
    assert torch.allclose(time_embedding(t, 16), torch.cat([ang.sin(), ang.cos()], 1), atol=1e-5)
    torch.manual_seed(0)
    a = MLPDenoiserNet(dim=8, hidden=16, depth=1)
    torch.manual_seed(0)
    b = MLPDenoiserNet(dim=8, hidden=16, depth=1, time_scale=10.0)
    x = torch.randn(5, 8)
    assert torch.allclose(a(x, t), b(x, t * 100.0), atol=1e-4)  # only the embedding's input scale differs


def test_bench_reads_the_config_a_run_saved_with_its_overrides(tmp_path, capsys):
    """A run's own config.yaml (Lightning adds ``ckpt_path`` etc.) rebuilds the run's model, overrides included,
    so ``unidistill bench --config <run>/config.yaml --ckpt <run>/checkpoints/last.ckpt`` scores that student."""
    from unidistill.cli import main
    from unidistill.runs import load_checkpoint

    config = next(c for c in CONFIGS if c.stem == "regression")
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2",
          "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--model.modality.init_args.hidden=24"])
    saved = tmp_path / "config.yaml"
    assert "ckpt_path" in saved.read_text()
    module, _ = build(saved)
    assert module.student.network.inp.out_features == 24  # the override, not the shipped 128
    load_checkpoint(module, tmp_path / "checkpoints" / "last.ckpt")
    main(["bench", "--config", str(saved), "--ckpt", str(tmp_path / "checkpoints" / "last.ckpt"), "--teacher",
          "--nfes", "1", "--samples", "64", "--seeds", "1"])
    assert "TrajectoryRegression" in capsys.readouterr().out


def test_benchmark_reuses_a_student_only_for_the_same_settings_and_budget(tmp_path):
    """``benchmarks/gmm.py --reuse`` keys a distilled student on the parsed config and the step budget."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gmm_benchmark", ROOT / "benchmarks" / "gmm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = (ROOT / "configs" / "gmm" / "sid.yaml").read_text()
    config = tmp_path / "sid.yaml"
    config.write_text(text)
    key = bench.config_key(config, None)
    assert "alpha: 1.0 " in text  # the edits below change something
    config.write_text("# a new comment\n" + text.replace("alpha: 1.0 ", "alpha: 1.0   "))  # comments and layout
    assert bench.config_key(config, None) == key
    assert bench.config_key(config, 100) != key  # another budget
    config.write_text(text.replace("alpha: 1.0 ", "alpha: 1.2 "))  # another setting
    assert bench.config_key(config, None) != key


def test_compare_scores_guided_teacher_runs_with_their_guidance():
    """``compare`` takes ``(solver, nfe, guidance)`` teacher runs: the row records the guidance, and its samples
    are the guided teacher's (different from the unguided run with the same seeds)."""
    from unidistill.bench import compare
    from unidistill.runs import reference_batch

    module, dm = build(next(c for c in CONFIGS if c.stem == "regression"))
    x, cond = reference_batch(module, dm, 256)
    rows = compare(module, cond, x, student_nfes=[], teacher_runs=[("ddim", 4), ("ddim", 4, 3.0)], seeds=[0],
                   timing_batch=16, timing_repeats=1)
    plain, guided = rows
    assert "guidance" not in plain and guided["guidance"] == 3.0 and plain["nfe"] == 4
    assert guided["sliced_wasserstein"] != pytest.approx(plain["sliced_wasserstein"], rel=1e-3)
