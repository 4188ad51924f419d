"""The objective contract: roles, the per-iteration update plan, and the context an update sees.

An objective never touches Lightning. It declares

* ``trainable_roles``: the roles that get an optimizer (always ``student``, plus e.g. ``fake_score``);
* ``needs_teacher`` (the loss calls the teacher), ``init_from_teacher`` (the student starts as a copy of the
  teacher, loaded for that alone when the loss does not need it) and ``target_decay`` (an EMA/stop-grad copy of
  the student kept by the caller);
* ``build_roles``: auxiliary trainable networks it owns (a fake score, a discriminator head);
* ``plan(iteration)``: the updates of one training iteration, in order; an update is a role name, or several
  joined by ``+`` (``"student+logvar"``) when one loss steps several roles' optimizers (one backward);
* ``loss(update, batch, ctx)``: the loss of one update and named scalar logs; the base class dispatches
  ``"fake_score"`` to ``fake_score_loss(batch, ctx)`` and ``"student+logvar"`` to ``student_logvar_loss``.

``unidistill.engine.Engine`` runs a plan (training, the regression harness, benchmarks and tests all go through
it); ``DistillationModule`` wraps the engine with Lightning's manual optimization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from unidistill.batch import Batch
from unidistill.denoiser import GuidedDenoiser
from unidistill.seeds import mix_seed


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
    root_seed: int = 0

    def seed(self, *parts: int) -> int:
        """A seed derived from the run's root seed and ``parts`` (``unidistill.seeds.mix_seed``): for draws an
        objective must reproduce independently of the iteration's generators (couplings, regression pairs)."""
        return mix_seed(self.root_seed, *parts)

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


class Objective:
    """Base class; see the module docstring for the contract."""

    trainable_roles: tuple[str, ...] = ("student",)
    needs_teacher: bool = True
    init_from_teacher: bool = True
    target_decay: float | None = None
    #: how the trained student samples: a solver name from ``unidistill.solvers.SOLVERS``
    student_solver: str = "consistency"

    def check_teacher(self, teacher: nn.Module) -> None:
        """Refuse a teacher the objective's own inputs were not made with (e.g. a teacher cache's); called once
        with the teacher the student is initialised from, also when the loss never calls it."""

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
        """Updates of this iteration, in order (a role, or roles joined by ``+``); a role may appear several
        times."""
        return list(self.trainable_roles)

    def loss(self, update: str, batch: Batch, ctx: Context) -> LossOutput:
        """The loss of one planned update and named scalar logs: ``<role>_loss(batch, ctx)`` (``+`` -> ``_``)."""
        fn = getattr(self, update.replace("+", "_") + "_loss", None)
        if fn is None or any(r not in self.trainable_roles for r in update_roles(update)):
            raise ValueError(f"{self.name} has no update {update!r}; its roles are {list(self.trainable_roles)}")
        return fn(batch, ctx)

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


def refuse_unused(owner: str, option: str, value: Any, default: Any, reason: str) -> None:
    """Refuse a non-default ``value`` of ``option`` that the rest of the configuration makes meaningless: it would
    be silently ignored (e.g. ``huber_c`` with the ``l2`` distance), which hides a typo or a wrong assumption."""
    if value != default:
        raise ValueError(f"{owner}: {option}={value!r} has no effect {reason}; remove it (its default is {default!r})")


def check_choice(owner: str, option: str, value: Any, valid: tuple[Any, ...]) -> None:
    """Refuse an unknown value of an option with a closed set of choices at construction, not at the first step."""
    if value not in valid:
        raise ValueError(f"{owner}: unknown {option} {value!r}; valid: {', '.join(map(repr, valid))}")


def update_roles(update: str) -> tuple[str, ...]:
    """The roles whose optimizers one planned update steps (``"student+logvar"`` -> both)."""
    return tuple(update.split("+"))


def check_finite(objective: Objective, update: str, iteration: int, out: LossOutput) -> None:
    """Raise a clear error naming the objective, the loss term and the step when a loss is NaN/Inf."""
    bad = [k for k, v in {"loss": out.loss, **out.logs}.items() if not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(
            f"non-finite loss in objective {objective.name}, update {update!r}, term(s) {bad}, at iteration "
            f"{iteration}"
        )


def make_context(roles: dict[str, nn.Module], latent_shape: tuple[int, ...], *, seed: int = 0, iteration: int = 0,
                 rank: int = 0, world_size: int = 1, null_condition: Callable[[Any], Any] = _identity,
                 prior: Callable[[int, Any, torch.Generator], Tensor] | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, micro: int = 0) -> Context:
    """The context of one iteration: its per-rank generator seeded by ``(seed, iteration, rank)`` and its shared
    generator by ``(seed, iteration, -1)`` (the same on every rank), both through ``unidistill.seeds.mix_seed``.
    ``micro`` numbers the batches of one gradient-accumulation window (each draws its own noise; 0 = the first)."""
    device = torch.device(device)
    extra = (micro,) if micro else ()
    return Context(
        roles=roles, latent_shape=tuple(latent_shape),
        generator=torch.Generator(device).manual_seed(mix_seed(seed, iteration, rank, *extra)),
        shared_generator=torch.Generator(device).manual_seed(mix_seed(seed, iteration, -1, *extra)),
        iteration=iteration, null_condition=null_condition, prior=prior, device=device, dtype=dtype, rank=rank,
        world_size=world_size, root_seed=seed)
