"""Bad input gets a clear error naming the offending value and what would be valid."""

import pytest
import torch

from modalities.gmm import GaussianMixture, GmmModality
from unidistill.checkpoint import atomic_torch_save, safe_torch_load
from unidistill.cli import main
from unidistill.paths import RectifiedFlow, VPCosine
from unidistill.solvers import sample


def test_mismatched_latent_shape_names_both_shapes():
    m = GmmModality(GaussianMixture(dim=8))
    with pytest.raises(ValueError, match=r"latent of shape \(4, 6\).*\[B, 8\]"):
        m.to_batch({"x": torch.zeros(4, 6), "cond": torch.zeros(4, dtype=torch.long)})


def test_missing_teacher_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        GmmModality(teacher=str(missing)).load_teacher()


def test_teacher_that_does_not_match_the_network_is_refused(tmp_path):
    from safetensors.torch import save_file

    small = GmmModality(hidden=16, depth=1).new_network()
    path = tmp_path / "small.safetensors"
    save_file(small.state_dict(), str(path))
    with pytest.raises(ValueError, match="do not match the configured network.*shape mismatches"):
        GmmModality(teacher=str(path), hidden=32, depth=1).load_teacher()


def test_weights_whose_card_disagrees_with_the_configured_prediction_are_refused(tmp_path):
    """An x0-predicting teacher read as a velocity predictor has the right shapes and would sample garbage."""
    from modalities.video import VideoModality

    tiny = dict(frames=8, size=8, patch=4, dim=16, depth=2, heads=2, cond_dim=8, chunk_size=2, cache_window=2)
    source = VideoModality(**tiny, prediction="x0")
    weights, card = source.export(source.load_teacher(), tmp_path)
    assert card == weights.with_suffix(".json")
    agreeing = VideoModality(**tiny, prediction="x0", teacher=str(weights), student_init=str(weights))
    agreeing.build_student(agreeing.load_teacher())
    with pytest.raises(ValueError, match=r"video teacher .*prediction: weights 'x0', configured 'flow'"):
        VideoModality(**tiny, prediction="flow", teacher=str(weights)).load_teacher()
    flow = VideoModality(**tiny, prediction="flow", student_init=str(weights))
    with pytest.raises(ValueError, match=r"student initialisation .*prediction: weights 'x0', configured 'flow'"):
        flow.build_student(flow.load_teacher())
    card.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        agreeing.load_teacher()


def test_corrupted_and_truncated_checkpoints_are_refused(tmp_path):
    good = tmp_path / "good.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(1000)}}, good)
    assert torch.equal(safe_torch_load(good)["state_dict"]["w"], torch.ones(1000))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.ckpt.*corrupted, truncated"):
        safe_torch_load(truncated)
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        safe_torch_load(tmp_path / "absent.ckpt")


def test_atomic_save_leaves_old_file_intact_when_writing_fails(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_torch_save({"a": torch.zeros(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.equal(safe_torch_load(path)["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"], "temporary file left behind"


def test_unknown_class_path_in_yaml_is_named(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "model:\n  modality: {class_path: modalities.gmm.NoSuchModality}\n"
        "  objective: {class_path: unidistill.objectives.ConsistencyDistillation}\n"
        "data: {class_path: tasks.gmm.GmmDataModule}\n"
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(cfg)])
    assert "modalities.gmm.NoSuchModality" in capsys.readouterr().err


def test_malformed_yaml_is_reported_with_file_and_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("model:\n  modality: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken.yaml.*not valid YAML(.|\n)*line 2"):
        main(["fit", "--config", str(cfg)])


def test_bench_of_a_missing_config_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        main(["bench", "--config", str(tmp_path / "missing.yaml")])


def test_wrong_time_shape_and_unknown_solver():
    m = GmmModality(GaussianMixture(dim=8))
    T = m.load_teacher()
    with pytest.raises(ValueError, match=r"time of shape \(3,\) does not lead the latent shape \(4, 8\)"):
        T(torch.zeros(4, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="unknown solver 'rk45'.*ddim"):
        sample(T, torch.zeros(4, 8), 4, solver="rk45")


def test_v_prediction_on_a_non_unit_variance_path():
    with pytest.raises(ValueError, match="v-prediction needs alpha"):
        RectifiedFlow().to_prediction(torch.zeros(2, 3), torch.zeros(2, 3), torch.full((2,), 0.5), "v")
    VPCosine().to_prediction(torch.zeros(2, 3), torch.zeros(2, 3), torch.full((2,), 0.5), "v")
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        VPCosine().to_prediction(torch.zeros(2, 3), torch.zeros(2, 3), torch.full((2,), 0.5), "score")


def test_a_causal_objective_on_a_non_causal_modality_is_refused_at_construction():
    from unidistill.module import DistillationModule
    from unidistill.objectives import SelfForcing

    with pytest.raises(ValueError, match=r"SelfForcing cannot distil the gmm modality: .*causal modality"):
        DistillationModule(GmmModality(hidden=8, depth=1), SelfForcing(student_steps=2))


@pytest.mark.parametrize(("extra", "message"), [
    (["--teacher", "ddim:0"], "NFE >= 1"),
    (["--teacher", "rk45:4"], "unknown solver 'rk45'.*ddim"),
    (["--samples", "0"], "--samples >= 1"),
    (["--seeds", "0"], "--seeds >= 1"),
    (["--nfes", "0"], "student NFEs >= 1"),
])
def test_bench_refuses_bad_arguments_before_running(extra, message):
    with pytest.raises(ValueError, match=message):
        main(["bench", "--config", "configs/gmm/consistency.yaml", *extra])


def test_bench_prints_how_many_samples_it_scored_and_refuses_a_nan_metric(monkeypatch, capsys):
    main(["bench", "--config", "configs/gmm/regression.yaml", "--teacher", "ddim:1", "--nfes", "1", "--samples",
          "100000", "--seeds", "1"])
    out = capsys.readouterr().out
    assert "scoring 8192 held-out samples per row (the validation set holds only 8192; asked for 100000)" in out
    monkeypatch.setattr(GmmModality, "metrics", lambda self, s, c, r: {"sliced_wasserstein": float("nan")})
    with pytest.raises(FloatingPointError, match="non-finite metrics.*sliced_wasserstein=nan"):
        main(["bench", "--config", "configs/gmm/regression.yaml", "--teacher", "ddim:1", "--nfes", "1", "--samples",
              "64", "--seeds", "1"])
