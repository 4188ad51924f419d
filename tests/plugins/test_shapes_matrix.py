"""The 3D rows of the regression matrix (every objective x pointcloud, shape_structure, shape_latent), and, for
the padded stage-2 latents, that no objective's loss or gradient can see what a padded token holds."""

import pytest
import torch

from unidistill.batch import Batch
from unidistill.module import DistillationModule
from unidistill.objectives.base import update_roles
from unidistill.regress import build_matrix, run_fast_cell

SHAPE_MODALITIES = ["pointcloud", "shape_structure", "shape_latent"]
CELLS = build_matrix(SHAPE_MODALITIES)
LATENT_CELLS = [c for c in CELLS if c.modality == "shape_latent" and c.status == "ready"]


def test_every_shape_cell_runs_or_says_why_not():
    assert {c.modality for c in CELLS} == set(SHAPE_MODALITIES)
    for cell in CELLS:
        assert cell.status in ("ready", "unsupported"), f"{cell.id}: {cell.status} {cell.reason}"
        if cell.status == "unsupported":  # only the causal-video objectives, and they say why
            assert "causal" in cell.reason, cell.id


@pytest.mark.parametrize("cell", [c for c in CELLS if c.status == "ready"], ids=lambda c: c.id)
def test_shape_fast_tier_cell(cell):
    out = run_fast_cell(cell, iterations=3)
    assert all(all(torch.isfinite(torch.tensor(v)) for v in logs.values()) for logs in out["logs"])
    assert out["leaks"] == [], f"a loss reached another role's parameters: {out['leaks']}"


def _losses_and_grads(module: DistillationModule, batch: Batch) -> list[tuple[float, list[torch.Tensor]]]:
    results = []
    for role in module.objective.plan(0):
        ctx = module.context(0)
        params = [p for r in update_roles(role) for p in module.role_module(r).parameters() if p.requires_grad]
        out = module.objective.loss(role, batch, ctx)
        grads = torch.autograd.grad(out.loss, params, allow_unused=True)
        results.append((float(out.loss), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads,
                                                                                                    strict=True)]))
    return results


@pytest.mark.parametrize("cell", LATENT_CELLS, ids=lambda c: c.id)
def test_padded_tokens_change_no_loss_and_no_gradient(cell):
    """Each role's first loss of the plan, and its gradient, on a batch and on the same batch with every padded
    (inactive-voxel) value of x0 replaced by large noise: equal (the stage-2 network zeroes padding before use,
    and every loss reduction is masked)."""
    torch.manual_seed(0)
    modality, objective = cell.make()
    module = DistillationModule(modality, objective, ema_decay=None, save_val_samples=False)
    batch = modality.example_batch(6, torch.Generator().manual_seed(3))
    padded = batch.mask[..., None] < 0.5
    assert padded.any() and (~padded).any()
    noisy = Batch(torch.where(padded, 30 * torch.randn_like(batch.x0), batch.x0), batch.cond, batch.mask)
    for (la, ga), (lb, gb) in zip(_losses_and_grads(module, batch), _losses_and_grads(module, noisy), strict=True):
        assert la == pytest.approx(lb, rel=1e-5, abs=1e-7)
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
