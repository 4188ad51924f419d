"""Failures that used to end with exit code 0 and a wrong result are loud now (issue #20, part 4): each test
reproduces the user's action and asserts the clear error, or the kept state, that replaced it."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from modalities.gmm import GmmModality
from unidistill.checkpoint import atomic_torch_save, safe_torch_load
from unidistill.cli import main
from unidistill.objectives import DMD2, ConsistencyDistillation
from unidistill.runs import UnidistillCLI, build, load_checkpoint


def _fit(args, steps, ckpt_path=None, every=None):
    cb = [ModelCheckpoint(save_last=True, every_n_train_steps=every, save_top_k=-1)] if every else []
    return UnidistillCLI(args=["fit", *args, f"--trainer.max_steps={steps}", "--trainer.enable_checkpointing=true"]
                         + ([f"--ckpt_path={ckpt_path}"] if ckpt_path else []), trainer_defaults={"callbacks": cb})


def _root(args, where):
    return [*[a for a in args if not a.startswith("--trainer.default_root_dir")], f"--trainer.default_root_dir={where}"]


def test_a_diverging_update_is_stopped_before_it_steps_and_last_good_resumes(tiny_gmm_args, tmp_path, monkeypatch):
    """A finite loss with a NaN gradient used to be stepped: the weights became NaN, the next loss was NaN, and the
    saved ``last_good.ckpt`` held the NaN weights, so resuming from it failed again."""
    original = ConsistencyDistillation.student_loss

    def poisoned(self, batch, ctx):
        out = original(self, batch, ctx)
        if ctx.iteration == 2:  # same value, NaN gradient (d sqrt(x)/dx at x = 0 is inf, times 0 is NaN)
            zero = sum(p.sum() for p in ctx.student.parameters()) * 0.0
            return type(out)(out.loss + 0.0 * zero.abs().sqrt(), out.logs)
        return out

    monkeypatch.setattr(ConsistencyDistillation, "student_loss", poisoned)
    with pytest.raises(FloatingPointError,
                       match=r"non-finite gradient of role\(s\) student \(norm nan\).*iteration 2.*did not step"):
        _fit(tiny_gmm_args, 10)
    good = safe_torch_load(tmp_path / "last_good.ckpt")
    assert int(good["state_dict"]["iteration"]) == 2
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())
    monkeypatch.setattr(ConsistencyDistillation, "student_loss", original)
    resumed = _fit(_root(tiny_gmm_args, tmp_path / "resumed"), 10, ckpt_path=tmp_path / "last_good.ckpt")
    assert int(resumed.model.iteration) == 10
    assert all(torch.isfinite(p).all() for p in resumed.model.student.parameters())


def test_resuming_with_a_changed_learning_rate_uses_it_and_says_so(tiny_gmm_args, tmp_path, caplog):
    first = _fit(_root(tiny_gmm_args, tmp_path / "a"), 4, every=4)
    ckpt = first.trainer.checkpoint_callback.last_model_path
    with caplog.at_level(logging.WARNING, logger="unidistill"):
        resumed = _fit([*_root(tiny_gmm_args, tmp_path / "b"), "--model.learning_rate=5e-5",
                        "--model.betas=[0.5, 0.9]"], 6, ckpt_path=ckpt)
    (opt,) = resumed.trainer.optimizers
    assert opt.param_groups[0]["base_lr"] == 5e-5 and tuple(opt.param_groups[0]["betas"]) == (0.5, 0.9)
    assert resumed.model.learning_rate == 5e-5  # not replaced by the checkpoint's saved hyperparameters
    text = caplog.text
    assert "role student: base_lr 0.001 from the checkpoint replaced by the configured 5e-05" in text
    assert "betas (0.9, 0.999) from the checkpoint replaced by the configured (0.5, 0.9)" in text


def test_resuming_or_loading_a_checkpoint_of_another_objective_is_refused(tmp_path):
    args = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--model.modality.init_args.hidden=32",
            "--model.modality.init_args.teacher=analytic",
            "--model.modality.init_args.depth=1", "--model.modality.init_args.student_init=null",
            "--data.init_args.train_size=256", "--data.init_args.val_size=64", "--data.init_args.batch_size=32",
            "--data.init_args.val_batch_size=64", "--trainer.val_check_interval=1000"]
    dmd = _fit(["--config", "configs/gmm/dmd2.yaml", *args, f"--trainer.default_root_dir={tmp_path / 'dmd'}"], 3,
               every=3)
    ckpt = dmd.trainer.checkpoint_callback.last_model_path
    with pytest.raises(ValueError, match=r"last.ckpt' was trained with objective DMD2; this run is configured with "
                                         r"ScoreIdentityDistillation"):
        _fit(["--config", "configs/gmm/sid.yaml", *args, f"--trainer.default_root_dir={tmp_path / 'sid'}"], 6,
             ckpt_path=ckpt)
    module, _ = build("configs/gmm/sid.yaml", [a for a in args if a.startswith("--model")])
    with pytest.raises(ValueError, match=r"trained with objective DMD2; this run is configured with "
                                         r"ScoreIdentityDistillation"):
        load_checkpoint(module, ckpt)


def test_dmd2_with_a_nan_teacher_stops_instead_of_freezing_the_student():
    """``nan_to_num`` on the DMD direction used to turn a NaN real score into a zero gradient: the student froze
    with loss exactly 0 and exit code 0."""
    from support.context import make_engine, make_roles

    from unidistill.batch import Batch

    roles = make_roles(target=False)
    engine, opts = make_engine(DMD2(guidance_scale=float("nan"), fake_updates_per_student=1), roles, (8,))
    with pytest.raises(FloatingPointError, match="update 'student'"):
        for it in range(2):
            engine.step(Batch(None, cond=torch.tensor([0, 1, 2, 0]), size=4), it, opts)


def test_a_gmm_teacher_whose_card_says_flow_is_refused_as_an_x0_predictor():
    with pytest.raises(ValueError, match=r"prediction: weights 'flow', configured 'x0'"):
        GmmModality(teacher="tasks/gmm/weights/mlp_teacher.safetensors", prediction="x0").load_teacher()


def test_a_policy_teacher_of_another_horizon_is_refused_by_its_card():
    from modalities.policy import PolicyModality

    with pytest.raises(ValueError, match=r"horizon: weights 8, configured 16"):
        PolicyModality(obs_dim=10, action_dim=2, horizon=16, teacher="tasks/reacher/weights/teacher.safetensors",
                       down_dims=[32, 64]).load_teacher()


def test_flipped_bytes_and_truncated_checkpoints_are_refused_naming_the_file(tiny_gmm_args, tmp_path):
    cli = _fit(tiny_gmm_args, 2, every=2)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    raw = bytearray(open(ckpt, "rb").read())
    w = cli.model.ema.module.network.inp.weight.detach().numpy().tobytes()
    at = raw.find(w[:64])
    assert at > 0, "the EMA weights' bytes are not stored verbatim"
    raw[at + 3] ^= 0x40  # one flipped bit in a float's exponent: a 1e24-sized weight if loaded
    flipped = tmp_path / "flipped.ckpt"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flipped.ckpt.*does not match the checksum"):
        safe_torch_load(flipped)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(ValueError, match=r"truncated.ckpt.*corrupted, truncated"):
        _fit(_root(tiny_gmm_args, tmp_path / "r"), 4, ckpt_path=truncated)
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        _fit(_root(tiny_gmm_args, tmp_path / "r"), 4, ckpt_path=tmp_path / "absent.ckpt")


def test_settings_are_checked_before_the_first_step(tiny_gmm_args, tmp_path):
    with pytest.raises(ValueError, match=r"val_nfes and val_teacher_nfes must be >= 1.*\[0\]"):
        _fit([*tiny_gmm_args, "--model.val_nfes=[0]"], 4)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    callback = ModelCheckpoint(dirpath=blocker / "checkpoints", save_last=True)
    with pytest.raises(PermissionError, match=r"cannot write checkpoints or logs in .*a_file/checkpoints"):
        UnidistillCLI(args=["fit", *tiny_gmm_args, "--trainer.max_steps=4"], trainer_defaults={"callbacks": [callback]})


def test_a_cache_with_a_typo_writes_nothing(tmp_path):
    from support.context import make_roles

    from unidistill.cache import generate_cache

    with pytest.raises(ValueError, match="unknown solver 'hune'"):
        generate_cache(make_roles()["teacher"], tmp_path / "cache", 8, (8,), solver="hune", progress=False)
    assert not (tmp_path / "cache").exists()


def test_an_interrupted_write_leaves_no_temporary_behind_the_next_save(tmp_path):
    stale = tmp_path / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_full_disk_says_so_and_names_the_file(tmp_path, monkeypatch):
    import unidistill.checkpoint as ck

    atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "ck.pt")

    def full(prefix, suffix, dir):  # a temporary file on a device with no space left
        path = os.path.join(dir, f"{prefix}x{suffix}")
        open(path, "wb").close()
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(ck.tempfile, "mkstemp", full)
    monkeypatch.setattr(ck, "_device_full", lambda folder: True)
    with pytest.raises(OSError, match=r"no space left on device while writing the checkpoint .*ck.pt") as info:
        atomic_torch_save({"w": torch.ones(10_000)}, tmp_path / "ck.pt")
    assert info.value.errno == errno.ENOSPC
    assert torch.equal(safe_torch_load(tmp_path / "ck.pt")["w"], torch.zeros(3))  # the old file is intact


def test_a_typo_in_regress_objective_is_an_error_listing_the_valid_names(capsys):
    with pytest.raises(SystemExit, match=r"unknown objective \['ConsistencyDistilation'\].*ConsistencyDistillation"):
        main(["regress", "--tier", "fast", "--modality", "gmm", "--objective", "ConsistencyDistilation"])
    with pytest.raises(SystemExit, match=r"unknown modality \['gmmm'\]; registered: .*gmm"):
        main(["regress", "--tier", "fast", "--modality", "gmmm"])
