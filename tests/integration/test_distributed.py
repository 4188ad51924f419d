"""Data-parallel training with Lightning's real DDP strategy on two CPU processes (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _fit(tmp_path, extra):
    args = [
        sys.executable, "-m", "unidistill.cli", "fit", "--config", "configs/gmm/consistency.yaml",
        "--model.modality.init_args.hidden=32", "--model.modality.init_args.depth=1",
        "--data.init_args.train_size=512", "--data.init_args.val_size=128", "--data.init_args.batch_size=32",
        "--data.init_args.val_batch_size=128", "--trainer.val_check_interval=1000",
        "--trainer.enable_progress_bar=false", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.accelerator=cpu", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)


def test_ddp_two_processes_keep_ranks_identical_and_resume_in_one_process(tmp_path):
    ddp = _fit(tmp_path / "ddp", ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_steps=6",
                                  "--trainer.callbacks+=unidistill.callbacks.RankAgreementCheck"])
    assert int(ddp["state_dict"]["iteration"]) == 6
    # each rank consumed its own half of the epoch: 512 samples / 32 per batch / 2 ranks = 8 batches
    assert ddp["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "consumed": 6}]
    ckpt = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    single = _fit(tmp_path / "single", ["--trainer.devices=1", "--trainer.max_steps=8", f"--ckpt_path={ckpt}"])
    assert int(single["state_dict"]["iteration"]) == 8
    moved = single["state_dict"]["student.network.inp.weight"] - ddp["state_dict"]["student.network.inp.weight"]
    assert moved.abs().max() > 0
