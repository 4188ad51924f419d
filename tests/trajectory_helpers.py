"""Tiny any-shape denoisers and a context builder for the trajectory-family objective tests."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from unidistill.denoiser import Denoiser, freeze
from unidistill.objectives.base import Batch, Context, Objective
from unidistill.paths import RectifiedFlow


def _fourier(v: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(100.0) * torch.arange(half, dtype=torch.float32, device=v.device) / half)
    ang = v.reshape(-1, 1).float() * 10.0 * freqs[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1).to(v.dtype if v.is_floating_point() else torch.float32)


class TinyNet(nn.Module):
    """Per-element MLP ``(x_elem, emb(t, cond, guidance)) -> out_elem``; works on any latent shape ``[B, *S]``."""

    def __init__(self, hidden: int = 16, num_classes: int = 3, emb: int = 8) -> None:
        super().__init__()
        self.emb, self.num_classes = emb, num_classes
        self.t_proj = nn.Linear(emb, hidden)
        self.g_proj = nn.Linear(emb, hidden)
        self.c_emb = nn.Embedding(num_classes + 1, hidden)
        self.inp = nn.Linear(1, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        t = t.reshape(t.shape[0], -1)[:, 0]  # per-sample time for the embedding
        e = self.t_proj(_fourier(t, self.emb))
        if guidance is not None:
            e = e + self.g_proj(_fourier(guidance, self.emb))
        if cond is not None:
            e = e + self.c_emb(torch.where(cond < 0, self.num_classes, cond).long())
        e = e.reshape(e.shape[0], *([1] * (x.ndim - 1)), e.shape[1])
        h = torch.nn.functional.silu(self.inp(x.unsqueeze(-1)) + e)
        h = torch.nn.functional.silu(self.mid(h)) + h
        return self.out(h).squeeze(-1)


SHAPES = [(8,), (3, 8, 8), (4, 2, 6, 6)]


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


def make_ctx(roles: dict[str, nn.Module], shape: tuple[int, ...], seed: int = 1, iteration: int = 0) -> Context:
    return Context(roles=roles, latent_shape=shape, generator=torch.Generator().manual_seed(seed),
                   shared_generator=torch.Generator().manual_seed(seed + 1000), iteration=iteration,
                   null_condition=null_condition)


def make_batch(shape: tuple[int, ...], n: int = 4, seed: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn((n, *shape), generator=g), torch.randint(0, 3, (n,), generator=g))


def setup_objective(objective: Objective, roles: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """Add the objective's auxiliary roles and one AdamW per trainable role."""
    aux = objective.build_roles(roles["student"], roles.get("teacher"))
    roles.update(aux)
    return {r: torch.optim.AdamW([p for p in roles[r].parameters() if p.requires_grad], lr=1e-3)
            for r in objective.trainable_roles}


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


__all__ = ["SHAPES", "TinyNet", "make_batch", "make_ctx", "make_roles", "null_condition",
           "same_state", "setup_objective", "snapshot"]
