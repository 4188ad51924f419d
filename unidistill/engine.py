"""The engine: the one way a distillation iteration runs, in plain PyTorch.

It owns the roles (student, frozen teacher, the objective's auxiliary networks), the student's evaluation EMA
and the objective's target copy, builds each iteration's ``Context`` (seeded by ``(seed, iteration, rank)``) and
executes the objective's plan: for each planned update, the loss, a finiteness check, backward, gradient
clipping, the optimizer steps of the update's roles, every role's gradients cleared, and the averages updated
after a student step. ``DistillationModule`` (Lightning) wraps it, passing Lightning's ``manual_backward`` and
gradient clipping; the regression harness, benchmarks and tests drive it directly. Nothing else runs a plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from unidistill.batch import Batch
from unidistill.objectives.base import Context, Objective, check_finite, make_context, update_roles


def averaged_copy(student: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``student`` (``None`` when ``decay`` is ``None``), frozen."""
    if decay is None:
        return None
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"an EMA decay must be in [0, 1), got {decay}")
    avg = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    avg.requires_grad_(False)
    return avg


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up over ``warmup`` iterations, then cosine decay to ``min_ratio`` of the base rate over
    ``decay`` iterations (``None``: constant). A pure function of the iteration, so resumes are exact; an iteration
    is one objective plan, not one optimizer step, so the schedule does not depend on the update ratio."""

    warmup: int = 0
    decay: int | None = None
    min_ratio: float = 0.0

    def factor(self, iteration: int) -> float:
        factor = 1.0
        if self.warmup > 0:
            factor *= min(1.0, (iteration + 1) / self.warmup)
        if self.decay:
            progress = min(1.0, max(0, iteration - self.warmup) / self.decay)
            factor *= self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return factor


Backward = Callable[[Tensor], None]
Clip = Callable[[Any], None]


class Engine:
    """Roles, optimizers, averages and the step of one objective.

    Args:
        objective: what to optimise (its plan, losses and auxiliary roles).
        student: the trainable denoiser.
        teacher: the frozen teacher (``None`` for teacher training).
        latent_shape: the trailing latent shape ``S``.
        seed: root of every random draw of training.
        ema_decay: decay of the student's evaluation EMA (``None``: none).
        null_condition / prior: the modality's null condition and starting-latent draw (see ``Context``).
        aux: auxiliary roles; by default ``objective.build_roles(student, teacher)``.
    """

    def __init__(self, objective: Objective, student: nn.Module, teacher: nn.Module | None = None, *,
                 latent_shape: tuple[int, ...], seed: int = 0, ema_decay: float | None = None,
                 null_condition: Callable[[Any], Any] | None = None,
                 prior: Callable[[int, Any, torch.Generator], Tensor] | None = None,
                 aux: dict[str, nn.Module] | None = None) -> None:
        self.objective, self.student, self.teacher = objective, student, teacher
        self.latent_shape, self.seed = tuple(latent_shape), seed
        self.null_condition, self.prior = null_condition, prior
        self.aux = nn.ModuleDict(aux if aux is not None else objective.build_roles(student, teacher))
        unknown = [r for r in objective.trainable_roles if r != "student" and r not in self.aux]
        if unknown:
            raise ValueError(f"{objective.name} declares roles {unknown} but build_roles() did not create them")
        self.ema = averaged_copy(student, ema_decay)
        self.target = averaged_copy(student, objective.target_decay)

    # --- roles -------------------------------------------------------------------------------
    def role_module(self, role: str) -> nn.Module:
        return self.student if role == "student" else self.aux[role]

    def roles(self) -> dict[str, nn.Module]:
        roles: dict[str, nn.Module] = {"student": self.student, **dict(self.aux)}
        if self.teacher is not None:
            roles["teacher"] = self.teacher
        if self.target is not None:
            roles["target"] = self.target.module
        return roles

    def context(self, iteration: int, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                micro: int = 0) -> Context:
        kwargs = {} if self.null_condition is None else {"null_condition": self.null_condition}
        return make_context(self.roles(), self.latent_shape, seed=self.seed, iteration=iteration, rank=rank,
                            world_size=world_size, prior=self.prior, device=device, micro=micro, **kwargs)

    def update_averages(self) -> None:
        for avg in (self.ema, self.target):
            if avg is not None:
                avg.update_parameters(self.student)

    # --- optimisation ------------------------------------------------------------------------
    def make_optimizers(self, learning_rate: float, role_learning_rates: dict[str, float] | None = None,
                        betas: tuple[float, float] = (0.9, 0.999),
                        weight_decay: float = 0.0) -> dict[str, torch.optim.Optimizer]:
        """One AdamW per trainable role; each group remembers its ``base_lr`` for the schedule."""
        opts = {}
        for role in self.objective.trainable_roles:
            params = [p for p in self.role_module(role).parameters() if p.requires_grad]
            if not params:
                raise ValueError(f"role {role!r} of {self.objective.name} has no trainable parameters")
            lr = (role_learning_rates or {}).get(role, learning_rate)
            opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
            opt.param_groups[0]["base_lr"] = lr
            opts[role] = opt
        return opts

    def set_learning_rates(self, optimizers: dict[str, Any], iteration: int, schedule: LRSchedule) -> None:
        """Every group's rate = its ``base_lr`` x the schedule x the objective's own factor at ``iteration``."""
        factor = schedule.factor(iteration) * self.objective.lr_factor(iteration)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor

    def step(self, batch: Batch, iteration: int, optimizers: dict[str, Any], *, grad_clip: float | None = None,
             backward: Backward | None = None, clip: Callable[[Any, float], None] | None = None,
             accumulate: int = 1, apply: bool = True, micro: int = 0, device: torch.device | str = "cpu",
             rank: int = 0, world_size: int = 1,
             on_nonfinite: Callable[[], None] | None = None) -> dict[str, Tensor]:
        """Run the objective's plan for ``iteration``; returns ``{"<update>/<term>": detached tensor}``.

        ``backward`` defaults to ``loss.backward()``; ``clip(optimizer, max_norm)`` to clipping the optimizer's
        parameters by the total norm the finiteness check computed. Before any optimizer steps, a non-finite loss
        or gradient calls ``on_nonfinite`` (e.g. to save the last good state) and raises ``FloatingPointError``.
        With ``accumulate = k`` each loss is divided by ``k``; when ``apply`` is false (not the last batch of an
        accumulation window) no optimizer steps, and ``micro`` (the batch's place in the window) gives each batch
        its own random draws. After every optimizer step all roles' gradients are cleared, so a loss that reaches
        another role's parameters (a GAN term through the fake score) never leaks into that role's next step.
        Logs hold each update's loss terms and each stepped role's gradient norm (before clipping).
        """
        backward = backward or Tensor.backward
        ctx = self.context(iteration, device, rank, world_size, micro)
        logs: dict[str, Tensor] = {}
        for update in self.objective.plan(iteration):
            out = self.objective.loss(update, batch, ctx)
            backward(out.loss / accumulate if accumulate > 1 else out.loss)
            roles = update_roles(update) if apply else ()
            grads = {role: _grad_params(optimizers[role]) for role in roles}
            norms = {role: torch.nn.utils.get_total_norm([p.grad for p in params]) for role, params in grads.items()}
            # one host synchronisation per update: the loss terms and the gradient norms together, before any step
            checked = [out.loss.detach().reshape(()), *(v.detach().float().reshape(-1) for v in out.logs.values()),
                       *norms.values()]
            if not bool(torch.cat([c.reshape(-1).float() for c in checked]).isfinite().all()):
                if on_nonfinite is not None:
                    on_nonfinite()
                check_finite(self.objective, update, iteration, out)  # names the loss term when one is non-finite
                bad = [f"{r} (norm {float(n)})" for r, n in norms.items() if not torch.isfinite(n)]
                raise FloatingPointError(f"non-finite gradient of role(s) {', '.join(bad)} in objective "
                                         f"{self.objective.name}, update {update!r}, at iteration {iteration}; the "
                                         "optimizer did not step")
            logs.update({f"{update}/{k}": v.detach() for k, v in out.logs.items()})
            logs[f"{update}/loss"] = out.loss.detach()
            for role in roles:
                logs[f"{update}/grad_norm_{role}"] = norms[role].detach()
                if grad_clip is not None:
                    if clip is not None:
                        clip(optimizers[role], grad_clip)
                    else:
                        torch.nn.utils.clip_grads_with_norm_(grads[role], grad_clip, norms[role])
                optimizers[role].step()
            if not apply:
                continue
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            if "student" in roles:
                self.update_averages()
        return logs


def _grad_params(optimizer: Any) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


def logs_to_floats(logs: dict[str, Tensor]) -> dict[str, float]:
    """Host values of ``Engine.step``'s logs (one synchronisation; call it only where the values are read)."""
    return {k: float(v) for k, v in logs.items()}
