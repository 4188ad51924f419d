"""A resumed run continues exactly: N straight steps equal N/2 steps, a checkpoint, and N/2 resumed steps,
also when the checkpoint falls in the middle of an epoch."""

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from unidistill.runs import UnidistillCLI


def _fit(args, steps, ckpt_path=None, every=None):
    cb = [ModelCheckpoint(save_last=True, every_n_train_steps=every, save_top_k=-1)] if every else []
    cli = UnidistillCLI(
        args=["fit", *args, f"--trainer.max_steps={steps}", "--trainer.enable_checkpointing=true"]
        + ([f"--ckpt_path={ckpt_path}"] if ckpt_path else []),
        trainer_defaults={"callbacks": cb},
    )
    return cli


def _state(cli):
    return {k: v.clone() for k, v in cli.model.state_dict().items()}


def test_resume_mid_epoch_is_exact(tiny_gmm_args, tmp_path):
    # 10 batches per epoch; checkpoint at step 4 (mid-epoch) then continue to 14 (into the next epoch).
    straight = _fit(tiny_gmm_args, 14)
    first = _fit([*tiny_gmm_args[:-1], f"--trainer.default_root_dir={tmp_path / 'a'}"], 4, every=4)
    ckpt = first.trainer.checkpoint_callback.last_model_path
    assert ckpt, "no checkpoint was written"
    resumed = _fit([*tiny_gmm_args[:-1], f"--trainer.default_root_dir={tmp_path / 'b'}"], 14, ckpt_path=ckpt)
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert int(b["iteration"]) == 14
    # The first run must actually have trained: resumed weights differ from the checkpoint's.
    assert not torch.equal(_state(first)["student.network.inp.weight"], b["student.network.inp.weight"])


def test_checkpoint_excludes_teacher_and_holds_ema_and_target(tiny_gmm_args, tmp_path):
    cli = _fit(tiny_gmm_args, 2, every=2)
    ckpt = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("student.") for k in keys)
    assert any(k.startswith("ema.") for k in keys) and any(k.startswith("target.") for k in keys)
    assert not any("teacher" in k for k in keys)
    assert "unidistill_rng" in ckpt and ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "consumed": 2}
    ]


def test_non_finite_loss_stops_with_a_named_error_after_saving_the_last_good_state(tiny_gmm_args, tmp_path):
    import pytest

    from unidistill.objectives import ConsistencyDistillation

    original = ConsistencyDistillation.loss

    def poisoned(self, role, batch, ctx):
        out = original(self, role, batch, ctx)
        return type(out)(out.loss * float("nan"), out.logs) if ctx.iteration == 3 else out

    ConsistencyDistillation.loss = poisoned
    try:
        with pytest.raises(FloatingPointError, match=r"ConsistencyDistillation, update 'student'.*iteration 3"):
            _fit(tiny_gmm_args, 10)
    finally:
        ConsistencyDistillation.loss = original
    good = torch.load(tmp_path / "last_good.ckpt", weights_only=True)
    assert int(good["state_dict"]["iteration"]) == 3
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())
