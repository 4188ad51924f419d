"""Roles, batches and contexts for objective tests, built the way the engine builds them."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from support.nets import TinyNet
from unidistill.batch import Batch
from unidistill.denoiser import Denoiser, freeze
from unidistill.engine import Engine
from unidistill.objectives.base import Context, Objective, make_context
from unidistill.paths import RectifiedFlow


def make_roles(seed: int = 0, path=None, prediction: str = "flow", target: bool = True) -> dict[str, nn.Module]:
    path = path or RectifiedFlow()
    torch.manual_seed(seed)
    teacher = freeze(Denoiser(TinyNet(), path, prediction))
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    student.train()
    # perturb the student so that it differs from the teacher
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    roles = {"student": student, "teacher": teacher}
    if target:
        roles["target"] = copy.deepcopy(student).requires_grad_(False)
    return roles


def null_condition(cond):
    return None if cond is None else torch.full_like(cond, -1)


def make_ctx(roles: dict[str, nn.Module], shape: tuple[int, ...], seed: int = 1, iteration: int = 0,
             null=null_condition) -> Context:
    """The context ``Engine`` builds for ``roles`` at ``iteration`` (rank 0 of 1)."""
    return make_context(roles, shape, seed=seed, iteration=iteration, null_condition=null)


def make_batch(shape: tuple[int, ...], n: int = 4, seed: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn((n, *shape), generator=g), torch.randint(0, 3, (n,), generator=g))


def make_engine(objective: Objective, roles: dict[str, nn.Module], shape: tuple[int, ...], seed: int = 1,
                lr: float = 1e-3, ema_decay: float | None = None, null=null_condition
                ) -> tuple[Engine, dict[str, torch.optim.Optimizer]]:
    """An ``Engine`` over ``roles["student"]`` and ``roles.get("teacher")`` (auxiliary roles and the target built as
    in training) with one AdamW per trainable role; ``roles`` gains the engine's roles."""
    engine = Engine(objective, roles["student"], roles.get("teacher"), latent_shape=shape, seed=seed,
                    ema_decay=ema_decay, null_condition=null)
    roles.update(engine.roles())
    return engine, engine.make_optimizers(lr)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
