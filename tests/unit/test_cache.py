"""Teacher cache: deterministic sharded generation, atomic resumable writes, manifest identity checks."""

from __future__ import annotations

import json

import pytest
import torch
from support.context import make_batch, make_ctx, make_roles

import unidistill.cache as cache_mod
from unidistill.cache import TeacherCache, generate_cache, solve_with_checkpoints
from unidistill.objectives.reflow import Reflow
from unidistill.objectives.trajectory import TrajectoryRegression
from unidistill.solvers import sample

SHAPE = (2, 4, 4)


def conds(n, g):
    return torch.randint(0, 3, (n,), generator=g)


def gen(teacher, root, **kw):
    args = dict(num_samples=10, latent_shape=SHAPE, solver="heun", steps=4, seed=3, shard_size=3,
                conditions=conds, teacher_config={"name": "tiny"}, trajectory_times=[0.5], progress=False)
    args.update(kw)
    return generate_cache(teacher, root, **args)


def test_cache_records_match_teacher(tmp_path):
    teacher = make_roles()["teacher"]
    gen(teacher, tmp_path)
    ds = TeacherCache(tmp_path, teacher=teacher, teacher_config={"name": "tiny"}, expected={"solver": "heun"})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(ds) == 10 and len(manifest["shards"]) == 4 and manifest["complete"]
    assert manifest["nfe_per_sample"] == 7  # heun, 4 steps (0.5 is on the grid): 3 x 2 + 1 Euler step onto 0
    rec = ds.batch([0, 4, 9])
    ref = sample(teacher, rec["noise"], 4, rec["cond"], solver="heun").x
    assert torch.allclose(rec["sample"], ref, atol=1e-5)
    x, traj, _ = solve_with_checkpoints(teacher, rec["noise"], 4, rec["cond"], "heun", [0.5])
    assert torch.allclose(rec["trajectory"][:, 0], traj[0], atol=1e-6)


def test_cache_interrupted_run_resumes_to_identical_shards(tmp_path, monkeypatch):
    teacher = make_roles()["teacher"]
    gen(teacher, tmp_path / "full")
    real_save, calls = cache_mod._atomic_save, []

    def failing_save(tensors, path, metadata):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(path.name)
        real_save(tensors, path, metadata)

    monkeypatch.setattr(cache_mod, "_atomic_save", failing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        gen(teacher, tmp_path / "resumed")
    monkeypatch.setattr(cache_mod, "_atomic_save", real_save)
    written = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert written == ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors"]  # no temp files
    with pytest.raises(ValueError, match="incomplete"):
        TeacherCache(tmp_path / "resumed")
    gen(teacher, tmp_path / "resumed")
    for name in json.loads((tmp_path / "full" / "manifest.json").read_text())["shards"] + ["manifest.json"]:
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_cache_refuses_other_teacher_and_other_settings(tmp_path):
    teacher = make_roles(seed=0)["teacher"]
    other = make_roles(seed=1)["teacher"]
    gen(teacher, tmp_path)
    with pytest.raises(ValueError, match="configured teacher") as err:
        TeacherCache(tmp_path, teacher=other, teacher_config={"name": "tiny"})
    assert "tiny" in str(err.value)
    with pytest.raises(ValueError, match="configured teacher"):
        TeacherCache(tmp_path, teacher=teacher, teacher_config={"name": "other"})
    with pytest.raises(ValueError, match="steps"):
        TeacherCache(tmp_path, expected={"steps": 8})
    with pytest.raises(ValueError, match="different teacher cache"):
        gen(teacher, tmp_path, steps=5)


def test_objectives_train_from_cache(tmp_path):
    roles = make_roles()
    gen(roles["teacher"], tmp_path, trajectory_times=[1.0, 0.5])
    ds = TeacherCache(tmp_path, teacher=roles["teacher"], teacher_config={"name": "tiny"})
    batch = make_batch(SHAPE)
    for obj in (TrajectoryRegression(student_steps=2, cache=ds), Reflow(rounds=1, cache=ds)):
        out = obj.loss("student", batch, make_ctx(roles, SHAPE))
        assert torch.isfinite(out.loss)
        out.loss.backward()
    with pytest.raises(ValueError, match="trajectory times"):
        TrajectoryRegression(student_steps=4, cache=ds).loss("student", batch, make_ctx(roles, SHAPE))


def test_objectives_refuse_a_cache_of_another_teacher_on_first_use(tmp_path):
    """A cache named in YAML carries no teacher; the objective checks it against the run's teacher."""
    roles, other = make_roles(seed=0), make_roles(seed=1)
    gen(roles["teacher"], tmp_path, teacher_config=None)
    batch = make_batch(SHAPE)
    for make in (lambda ds: Reflow(rounds=1, cache=ds), lambda ds: TrajectoryRegression(student_steps=1, cache=ds)):
        ds = TeacherCache(tmp_path)
        with pytest.raises(ValueError, match="configured teacher"):
            make(ds).loss("student", batch, make_ctx(other, SHAPE))
        assert torch.isfinite(make(ds).loss("student", batch, make_ctx(roles, SHAPE)).loss)


GMM_REFLOW = """
model:
  modality:
    class_path: modalities.gmm.GmmModality
    init_args:
      mixture: &mixture
        class_path: modalities.gmm.GaussianMixture
        init_args: {{dim: 4, num_components: 4, num_classes: 3, seed: 0}}
      teacher: analytic
      path: rectified_flow
      prediction: flow
      hidden: 16
      depth: 2
  objective:
    class_path: unidistill.objectives.Reflow
    init_args:
      rounds: 1
      round_length: 2
      coupling_steps: 2
      cache:
        class_path: unidistill.cache.TeacherCache
        init_args: {{root: {root}}}
data:
  class_path: tasks.gmm.GmmDataModule
  init_args:
    mixture: *mixture
    batch_size: 8
"""


def test_cli_cache_writes_the_cache_a_config_reads(tmp_path):
    from unidistill.cli import main
    from unidistill.runs import build

    root = tmp_path / "cache"
    cfg = tmp_path / "reflow.yaml"
    cfg.write_text(GMM_REFLOW.format(root=root))
    main(["cache", "--config", str(cfg), "--samples", "20", "--shard-size", "8", "--solver", "heun", "--steps", "3",
          "--trajectory-steps", "2"])
    module, dm = build(cfg)
    ds = module.objective.cache
    assert isinstance(ds, TeacherCache) and len(ds) == 20
    assert ds.manifest["solver"] == "heun" and ds.trajectory_times == [0.5]
    rec = ds.batch(range(20))
    # conditions are the training data's classes; samples are the run's teacher solved from the stored noise
    assert set(rec["cond"].tolist()) <= set(range(3)) and len(set(rec["cond"].tolist())) > 1
    ref, (mid,), _ = solve_with_checkpoints(module.teacher, rec["noise"], 3, rec["cond"], "heun", [0.5])
    assert torch.allclose(rec["sample"], ref, atol=1e-5) and torch.allclose(rec["trajectory"][:, 0], mid, atol=1e-5)
    ds.check_teacher(module.teacher)  # the configured teacher is the one that made it


def test_cli_cache_needs_a_folder(tmp_path):
    from unidistill.cli import main

    cfg = tmp_path / "reflow.yaml"
    cfg.write_text(GMM_REFLOW.replace("      cache:\n        class_path: unidistill.cache.TeacherCache\n"
                                      "        init_args: {{root: {root}}}\n", "").format())
    with pytest.raises(ValueError, match="pass --out"):
        main(["cache", "--config", str(cfg)])


GMM_CACHED_REGRESSION = """
model:
  modality:
    class_path: modalities.gmm.GmmModality
    init_args:
      mixture: &mixture
        class_path: modalities.gmm.GaussianMixture
        init_args: {{dim: 8, num_components: 8, num_classes: 4, seed: 0}}
      path: rectified_flow
      prediction: flow
      teacher: {teacher}
  objective:
    class_path: unidistill.objectives.TrajectoryRegression
    init_args:
      cache:
        class_path: unidistill.cache.TeacherCache
        init_args: {{root: {root}}}
data:
  class_path: tasks.gmm.GmmDataModule
  init_args:
    mixture: *mixture
    batch_size: 8
"""


def test_a_cached_regression_student_starts_as_the_teacher_and_keeps_no_teacher(tmp_path):
    """SinSR and Luhman & Luhman start the student from the teacher; a cache makes the teacher's calls needless, not
    its weights. The run loads the teacher to copy it, checks the cache against it, and then drops it."""
    from unidistill.cli import main
    from unidistill.runs import build

    mlp = "tasks/gmm/weights/mlp_teacher.safetensors"
    cfg = tmp_path / "regression.yaml"
    cfg.write_text(GMM_CACHED_REGRESSION.format(teacher=mlp, root=tmp_path / "cache"))
    main(["cache", "--config", str(cfg), "--samples", "8", "--shard-size", "8", "--solver", "euler", "--steps", "2"])
    module, _ = build(cfg)
    assert module.teacher is None and "teacher" not in module.engine.roles()
    teacher = module.modality.load_teacher()
    for name, value in teacher.network.state_dict().items():
        assert torch.equal(module.student.network.state_dict()[name], value), name
    # init_from_teacher: false starts from the modality's fresh network instead (e.g. when no teacher weights exist)
    fresh, _ = build(cfg, ["--model.objective.init_args.init_from_teacher=false"])
    assert fresh.teacher is None
    fresh_weights = fresh.student.network.state_dict()
    assert any(not torch.equal(fresh_weights[k], v) for k, v in teacher.network.state_dict().items())
    # a cache made by another teacher is refused when the run is built, before any step
    other = tmp_path / "other.yaml"
    other.write_text(GMM_CACHED_REGRESSION.format(teacher="analytic", root=tmp_path / "cache"))
    with pytest.raises(ValueError, match="configured teacher"):
        build(other)
    # reflow reads the same cache for its first round: refused when built, too
    reflow = tmp_path / "reflow.yaml"
    reflow.write_text(other.read_text().replace("TrajectoryRegression", "Reflow"))
    with pytest.raises(ValueError, match="configured teacher"):
        build(reflow)
