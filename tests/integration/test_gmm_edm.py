"""The EDM path end to end: ``configs/gmm/dmd2_edm.yaml`` (the exact mixture teacher on EDM, sigma in [0, 80]) trains
with ``unidistill fit`` and its one-step student samples; the distribution-matching noise levels it draws are the Karras
index of DMD2's EDM code, not uniform in sigma."""

from __future__ import annotations

from pathlib import Path

import torch

from unidistill.cli import main
from unidistill.paths import EDM
from unidistill.runs import build, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "gmm" / "dmd2_edm.yaml"
SMALL = ["--model.modality.init_args.hidden=32", "--model.modality.init_args.depth=1",
         "--data.init_args.train_size=512", "--data.init_args.val_size=128", "--data.init_args.batch_size=64"]


def test_dmd2_on_the_edm_path_fits_and_samples(tmp_path):
    main(["fit", "--config", str(CONFIG), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=6",
          "--trainer.logger=false", "--trainer.enable_progress_bar=false", *SMALL])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    module, _ = build(tmp_path / "config.yaml")
    load_checkpoint(module, ckpt)
    assert isinstance(module.teacher.path, EDM) and isinstance(module.student.path, EDM)
    # 6 optimizer steps = iterations 0..3: [fake, student], [fake], [fake, student], [fake]
    assert int(module.iteration) == 4
    out = module.sample_student(torch.arange(16) % 4, 16, 1, torch.Generator().manual_seed(0))
    assert out.nfe == 1 and out.x.shape == (16, 8) and torch.isfinite(out.x).all()
    sigma = module.objective.dm_time(module.teacher.path, 4096, torch.Generator().manual_seed(0))
    assert 2.0 < float(sigma.median()) < 3.1 and 0.36 < float((sigma < 1).float().mean()) < 0.44
