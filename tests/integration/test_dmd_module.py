"""DMD2 through the real Lightning module: roles, checkpoint contents and exact resume.

With manual optimization ``trainer.max_steps`` counts every optimizer step: with ``fake_updates_per_student=2``
the plan is ``[fake_score, student]``, ``[fake_score]``, ... so iterations cost 2, 1, 2, 1, ... steps.
"""

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from unidistill.runs import UnidistillCLI


def _args(tmp_path, root):
    return [
        "--config", "configs/gmm/dmd2.yaml",
        "--model.modality.init_args.hidden=32", "--model.modality.init_args.depth=1",
        "--model.modality.init_args.student_init=null",  # the shipped weights are 256 x 4
        "--model.objective.init_args.fake_updates_per_student=2",
        "--model.objective.init_args.gan.generator_weight=3e-3",
        "--model.objective.init_args.gan.hidden=16",
        "--data.init_args.train_size=320", "--data.init_args.val_size=64", "--data.init_args.batch_size=32",
        "--data.init_args.val_batch_size=64",
        "--trainer.val_check_interval=1000", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / root}",
    ]


def _fit(args, steps, ckpt_path=None, every=None):
    cb = [ModelCheckpoint(save_last=True, every_n_train_steps=every, save_top_k=-1)] if every else []
    return UnidistillCLI(
        args=["fit", *args, f"--trainer.max_steps={steps}", "--trainer.enable_checkpointing=true"]
        + ([f"--ckpt_path={ckpt_path}"] if ckpt_path else []),
        trainer_defaults={"callbacks": cb},
    )


def _state(cli):
    return {k: v.clone() for k, v in cli.model.state_dict().items()}


def test_dmd2_gan_checkpoint_holds_all_roles_and_resumes_exactly(tmp_path):
    # 6 optimizer steps = iterations 0..3 (2+1+2+1); the checkpoint after 3 steps is at iteration 2.
    straight = _fit(_args(tmp_path, "straight"), 6)
    assert int(straight.model.iteration) == 4 and straight.trainer.global_step == 6
    first = _fit(_args(tmp_path, "a"), 3, every=3)
    ckpt_path = first.trainer.checkpoint_callback.last_model_path
    assert ckpt_path, "no checkpoint was written"
    ckpt = torch.load(ckpt_path, weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("student.") for k in keys) and any(k.startswith("ema.") for k in keys)
    assert any(k.startswith("aux.fake_score.denoiser.") for k in keys), "fake score missing from the checkpoint"
    assert any(k.startswith("aux.fake_score.head.") for k in keys), "discriminator head missing from the checkpoint"
    assert not any("teacher" in k for k in keys)
    assert len(ckpt["optimizer_states"]) == 2  # student and fake score (+ head)

    resumed = _fit(_args(tmp_path, "b"), 6, ckpt_path=ckpt_path)
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    # every role actually trained in the second half
    c = _state(first)
    for key in ("student.network.inp.weight", "aux.fake_score.denoiser.network.inp.weight",
                "aux.fake_score.head.net.1.weight"):
        assert not torch.equal(c[key], b[key]), f"{key} did not change after the checkpoint"


def test_max_iterations_counts_objective_plans_not_optimizer_steps(tmp_path):
    """4 iterations with 2 fake-score updates per student update are 2 + 1 + 2 + 1 = 6 optimizer steps."""
    cli = _fit([*_args(tmp_path, "iters"), "--model.max_iterations=4"], 1000)
    assert int(cli.model.iteration) == 4 and cli.trainer.global_step == 6
