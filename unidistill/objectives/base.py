"""The objective contract: roles, the per-iteration update plan, and a pure-PyTorch runner.

An objective never touches Lightning. It declares

* ``trainable_roles``: the roles that get an optimizer (always ``student``, plus e.g. ``fake_score``);
* ``needs_teacher`` and ``target_decay`` (an EMA/stop-grad copy of the student kept by the caller);
* ``build_roles``: auxiliary trainable networks it owns (a fake score, a discriminator head);
* ``plan(iteration)``: which roles step, in which order, in one training iteration;
* ``loss(role, batch, ctx)``: the loss for one role's update and named scalar logs.

``run_iteration`` executes a plan with plain optimizers, so an objective is testable on random tensors;
``DistillationModule`` runs the same plan with Lightning's manual optimization.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from unidistill.batch import Batch
from unidistill.denoiser import GuidedDenoiser


def _identity(cond: Any) -> Any:
    return cond


@dataclass
class Context:
    """What an objective may use during one iteration.

    ``generator`` is this rank's (per-sample noise, times); ``shared_generator`` is identical on every
    rank and must be used for any choice that changes the computation graph. ``latent_shape`` is the
    trailing shape S; ``prior`` draws the starting latent for a batch (unit noise by default). ``rank`` and
    ``world_size`` place this process among the data-parallel ranks (``0`` and ``1`` in one process), for
    objectives that derive per-sample seeds from the iteration and must keep them distinct across ranks.
    """

    roles: dict[str, nn.Module]
    latent_shape: tuple[int, ...]
    generator: torch.Generator
    shared_generator: torch.Generator
    iteration: int = 0
    null_condition: Callable[[Any], Any] = _identity
    prior: Callable[[int, Any, torch.Generator], Tensor] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    rank: int = 0
    world_size: int = 1

    @property
    def student(self) -> nn.Module:
        return self.roles["student"]

    @property
    def teacher(self) -> nn.Module:
        if "teacher" not in self.roles:
            raise KeyError("this objective needs a teacher, but none was given")
        return self.roles["teacher"]

    def guided_teacher(self, scale: float) -> nn.Module:
        return GuidedDenoiser(self.teacher, scale, self.null_condition)

    def randn(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=self.device, dtype=self.dtype)

    def rand(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        return torch.rand(tuple(shape), generator=self.generator, device=self.device, dtype=self.dtype)

    def guidance(self, n: int, scale: float, scale_range: tuple[float, float] | None) -> tuple[Tensor, Tensor | None]:
        """Per-sample teacher guidance ``w`` and the student's guidance input: a fixed ``scale`` with no
        student input, or ``w ~ U[scale_range]`` fed to the student too (w-conditioning)."""
        if scale_range is None:
            return torch.full((n,), scale, device=self.device, dtype=self.dtype), None
        lo, hi = scale_range
        w = lo + (hi - lo) * self.rand((n,))
        return w, w

    def noise(self, batch: Batch) -> Tensor:
        """Starting noise for the student: the modality's prior, else unit Gaussian of the latent shape."""
        if self.prior is not None:
            return self.prior(batch.size, batch.cond, self.generator)
        return self.randn((batch.size, *self.latent_shape))


class LossOutput(NamedTuple):
    loss: Tensor
    logs: dict[str, Tensor]


class Unsupported(Exception):
    """Raised by ``Objective.tiny`` when the objective cannot run on a modality; the message is the reason
    (e.g. it hooks teacher features and the modality's tiny teacher is analytic)."""


class Objective(ABC):
    """Base class; see the module docstring for the contract."""

    trainable_roles: tuple[str, ...] = ("student",)
    needs_teacher: bool = True
    target_decay: float | None = None
    #: how the trained student samples: a solver name from ``unidistill.solvers.SOLVERS``
    student_solver: str = "consistency"

    @property
    def student_solver_kwargs(self) -> dict[str, Any]:
        """Extra arguments for ``student_solver`` (e.g. how a consistency sampler re-noises)."""
        return {}

    @property
    def student_takes_guidance(self) -> bool:
        """Whether the student network gets an extra scalar input through the ``guidance`` slot (the
        guidance scale for w-conditioned students, or e.g. a jump length for flow maps)."""
        return getattr(self, "guidance_range", None) is not None

    def build_roles(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, nn.Module]:
        """Auxiliary trainable roles (name -> module); the default objective has none."""
        return {}

    def plan(self, iteration: int) -> list[str]:
        """Roles to update in this iteration, in order; the same role may appear several times."""
        return list(self.trainable_roles)

    @abstractmethod
    def loss(self, role: str, batch: Batch, ctx: Context) -> LossOutput:
        """The loss of one update of ``role`` and named scalar logs."""

    def lr_factor(self, iteration: int) -> float:
        """A multiplier on every role's learning rate at ``iteration``, on top of the run's warm-up and decay
        (e.g. annealing within each progressive-distillation phase); a pure function of the iteration."""
        return 1.0

    @property
    def cache_trajectory_steps(self) -> int:
        """The student step grid whose interior times a teacher cache must store for this objective (0: only
        noise and sample); ``unidistill cache`` uses it when ``--trajectory-steps`` is not given."""
        return 0

    def sampling_model(self, student: nn.Module) -> nn.Module:
        """The denoiser-like view of the student that few-step sampling uses (e.g. a consistency function)."""
        return student

    def unsupported_reason(self, latent_shape: tuple[int, ...], causal: bool) -> str | None:
        """Why this objective cannot run on a modality, or ``None`` when it can."""
        return None

    @property
    def name(self) -> str:
        return type(self).__name__

    # -- the cross-modality regression matrix (unidistill.regress) -----------------------------------
    @classmethod
    def tiny(cls, modality: Any) -> Objective:
        """A CPU-seconds instance for ``modality`` (a ``Modality``): few teacher steps, short phases, small
        heads. Every concrete objective must define it, or the regression matrix reports it as an error; raise
        ``Unsupported(reason)`` when the objective cannot run on this modality for a reason that
        ``unsupported_reason`` cannot see (e.g. an analytic teacher has no features to hook)."""
        raise NotImplementedError(
            f"{cls.__name__} defines no tiny() defaults; add a classmethod tiny(modality) so the regression matrix "
            "can run it"
        )

    @classmethod
    def tiny_variants(cls, modality: Any) -> dict[str, Objective]:
        """Named tiny instances, one matrix column each; override to cover options that change the code path."""
        return {cls.__name__: cls.tiny(modality)}


def check_finite(objective: Objective, role: str, iteration: int, out: LossOutput) -> None:
    """Raise a clear error naming the objective, the loss term and the step when a loss is NaN/Inf."""
    bad = [k for k, v in {"loss": out.loss, **out.logs}.items() if not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(
            f"non-finite loss in objective {objective.name}, role {role!r}, term(s) {bad}, at iteration {iteration}"
        )


def run_iteration(
    objective: Objective,
    batch: Batch,
    ctx: Context,
    optimizers: dict[str, torch.optim.Optimizer],
    grad_clip: float | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> dict[str, float]:
    """Execute one iteration of ``objective.plan`` with plain optimizers; returns the logs.

    Every optimizer's gradients are cleared before each update, so a loss that reaches another role's
    parameters (e.g. a GAN term through the fake score) never leaks into that role's next step.
    """
    logs: dict[str, float] = {}
    for role in objective.plan(ctx.iteration):
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        out = objective.loss(role, batch, ctx)
        check_finite(objective, role, ctx.iteration, out)
        (backward or Tensor.backward)(out.loss)
        if grad_clip is not None:
            params = [p for g in optimizers[role].param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizers[role].step()
        logs.update({f"{role}/{k}": float(v) for k, v in out.logs.items()})
        logs[f"{role}/loss"] = float(out.loss.detach())
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    return logs


def trainable_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    return (p for p in module.parameters() if p.requires_grad)
