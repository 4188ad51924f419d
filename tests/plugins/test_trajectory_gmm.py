"""Quality of the trajectory-family objectives on the exact 8-D Gaussian-mixture teacher (slow, several CPU
minutes per objective; run alone: ``pytest -m slow tests/plugins/test_trajectory_gmm.py``).

Each objective is trained with its shipped config (``configs/gmm/<name>.yaml``, full ``max_steps``) exactly as
``unidistill fit`` would, then scored at its target NFE (1, or 2 for PCM with two phases) with sliced Wasserstein
against the held-out mixture samples. Targets: at least 5x better than the teacher (DDIM) at the same NFE, and at
most 2.5x the teacher at 64 Heun NFE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TARGET_NFE = {"phased": 2, "progressive": 1, "regression": 1, "reflow": 1, "scm": 1, "flow_map": 1}


def distil_and_score(name: str, root: Path, samples: int = 8192) -> dict[str, float]:
    from unidistill.runs import UnidistillCLI, reference_batch

    cli = UnidistillCLI(args=["fit", "--config", str(ROOT / "configs" / "gmm" / f"{name}.yaml"),
                              f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
                              "--trainer.val_check_interval=100000", "--trainer.logger=false"])
    module = cli.model.eval()
    module._sync_teacher_device()
    x, cond = reference_batch(module, cli.datamodule, samples)
    nfe = TARGET_NFE[name]

    def sw(out) -> float:
        return module.modality.metrics(out.x, cond, x)["sliced_wasserstein"]

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    student = sw(module.sample_student(cond, x.shape[0], nfe, g()))
    same = sw(module.sample_teacher(cond, x.shape[0], nfe, g(), solver="ddim"))
    ref64 = sw(module.sample_teacher(cond, x.shape[0], 64, g(), solver="heun"))
    return {"student": student, "teacher_same_nfe": same, "teacher_64": ref64,
            "ratio_vs_teacher_same_nfe": same / student, "ratio_vs_teacher_64": student / ref64}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGET_NFE))
def test_gmm_quality(name, tmp_path):
    res = distil_and_score(name, tmp_path)
    assert res["ratio_vs_teacher_same_nfe"] >= 5.0, res
    assert res["ratio_vs_teacher_64"] <= 2.5, res
