"""DistillationModule: the only LightningModule. It builds the roles into an ``Engine`` and runs the engine's step
with Lightning's manual optimization, samples during validation and checkpoints everything a resumed run needs to
continue exactly (the pattern of stable-audio-tools' multi-network training wrappers)."""

from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path as FilePath
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from unidistill.conditions import cat_cond
from unidistill.data import ResumableDataLoader
from unidistill.denoiser import GuidedDenoiser
from unidistill.engine import Engine, LRSchedule
from unidistill.modality import Modality
from unidistill.objectives.base import Context, Objective
from unidistill.seeds import mix_seed
from unidistill.solvers import SOLVERS, SampleResult, initial_latent, sample

log = logging.getLogger(__name__)


class DistillationModule(L.LightningModule):
    """Distil (or, with ``DenoisingObjective``, train) a denoiser for one modality with one objective.

    Args:
        modality: the plugin (latents, networks, teacher, metrics).
        objective: what to optimise; declares roles and the per-iteration update plan.
        learning_rate: AdamW learning rate of every role unless ``role_learning_rates`` overrides it.
        lr_warmup_iterations: linear learning-rate warm-up over this many iterations.
        lr_decay_iterations: cosine decay of every role's learning rate to ``lr_min_ratio`` of its base value
            over this many iterations (``None`` keeps it constant). An iteration is one objective plan, not
            one optimizer step, so schedules do not depend on the update ratio; the factor is a pure
            function of the checkpointed iteration, so resumes are exact.
        ema_decay: decay of the student's evaluation EMA (``None`` disables it).
        grad_clip: max gradient norm per role update (``None`` disables clipping).
        accumulate_grad_batches: optimizer steps every this many batches.
        seed: root of every random draw of training (per iteration, per rank).
        val_nfes: student NFEs sampled and scored at each validation.
        val_teacher_nfes: teacher NFEs also scored at validation (empty to skip).
        teacher_guidance: the guidance scale used when sampling the teacher.
        teacher_solver: solver for teacher sampling.
        save_val_samples: write each validation's samples through the modality's ``save_samples``
            (PNG grids, audio, point clouds, ...) under ``<log_dir>/samples/step_<n>/``.
        max_iterations: stop training after this many iterations (objective plans). Lightning's
            ``trainer.max_steps`` counts every optimizer step instead: a DMD2 cycle of 2 fake-score updates
            and a student update (2 iterations) is 3 of them, so ``max_steps: 1500`` is 500 student updates
            there. With both set, the first reached ends the run.
        shard_teacher: under Lightning's ``ModelParallelStrategy`` (FSDP2), also ``fully_shard`` the frozen
            teacher's network across the data-parallel mesh (less memory per rank, an all-gather per teacher
            call); by default every rank holds a full replica. The trainable roles are always sharded.
    """

    def __init__(
        self,
        modality: Modality,
        objective: Objective,
        learning_rate: float = 1e-4,
        role_learning_rates: dict[str, float] | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_warmup_iterations: int = 0,
        lr_decay_iterations: int | None = None,
        lr_min_ratio: float = 0.0,
        ema_decay: float | None = 0.999,
        grad_clip: float | None = 1.0,
        accumulate_grad_batches: int = 1,
        seed: int = 0,
        val_nfes: list[int] | None = None,
        val_teacher_nfes: list[int] | None = None,
        teacher_guidance: float = 1.0,
        teacher_solver: str = "heun",
        save_val_samples: bool = True,
        shard_teacher: bool = False,
        max_iterations: int | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.modality, self.objective = modality, objective
        self.learning_rate, self.role_learning_rates = learning_rate, dict(role_learning_rates or {})
        self.weight_decay, self.betas = weight_decay, tuple(betas)
        self.grad_clip, self.accumulate = grad_clip, accumulate_grad_batches
        self.seed = seed
        self.val_nfes = list(val_nfes if val_nfes is not None else [1, 2, 4])
        self.val_teacher_nfes = list(val_teacher_nfes or [])
        self.teacher_guidance, self.teacher_solver = teacher_guidance, teacher_solver
        self.save_val_samples = save_val_samples
        self.shard_teacher = shard_teacher
        if max_iterations is not None and max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1 (or null), got {max_iterations}")
        self.max_iterations = max_iterations
        bad = [n for n in [*self.val_nfes, *self.val_teacher_nfes] if int(n) < 1]
        if bad:
            raise ValueError(f"val_nfes and val_teacher_nfes must be >= 1 (number of network evaluations), got {bad}")
        if objective.student_solver not in SOLVERS:
            raise ValueError(f"{objective.name} samples with unknown solver {objective.student_solver!r}; valid: "
                             f"{', '.join(SOLVERS)}")
        if teacher_solver not in SOLVERS:
            raise ValueError(f"unknown teacher_solver {teacher_solver!r}; valid: {', '.join(SOLVERS)}")
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")

        reason = objective.unsupported_reason(tuple(modality.latent_shape), bool(modality.causal))
        if reason:
            raise ValueError(f"{objective.name} cannot distil the {modality.name or type(modality).__name__} "
                             f"modality: {reason}")
        self.schedule = LRSchedule(lr_warmup_iterations, lr_decay_iterations, lr_min_ratio)
        # The student starts as the teacher (every distillation paper here does), also when the loss reads its
        # pairs from a cache and never calls the teacher: then the teacher is loaded to copy and check, then dropped.
        loads = objective.needs_teacher or objective.init_from_teacher
        teacher = modality.load_teacher() if loads else None
        guided = objective.student_takes_guidance
        from_teacher = teacher is not None and objective.init_from_teacher
        student = modality.build_student(teacher, guided) if from_teacher else modality.new_denoiser()
        if teacher is not None:
            objective.check_teacher(teacher)
            if not objective.needs_teacher:
                teacher = None
        self.engine = Engine(objective, student, teacher, latent_shape=tuple(modality.latent_shape), seed=seed,
                             ema_decay=ema_decay, null_condition=modality.null_condition, prior=self._prior)
        # The teacher is kept out of the module's registered children: never in a checkpoint, never
        # wrapped by DDP, never touched by an optimizer.
        self._teacher: list[nn.Module] = [teacher] if teacher is not None else []
        self.student, self.aux = self.engine.student, self.engine.aux
        self.ema, self.target = self.engine.ema, self.engine.target
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._val_outputs: dict[str, list[tuple[Tensor, Any, Tensor | None]]] = {}

    # --- roles -------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def _sync_teacher_device(self) -> None:
        if self._teacher:
            self._teacher[0].to(self.device)

    def on_fit_start(self) -> None:
        self._sync_teacher_device()
        self._check_writable_folders()
        if str(self.trainer.precision).startswith("16"):
            raise ValueError(f"trainer.precision={self.trainer.precision!r} needs a loss scaler, which the engine's "
                             "finiteness checks and gradient clipping do not drive; use bf16-mixed or 32-true")

    def on_train_start(self) -> None:
        self._apply_configured_optimizer_settings()

    def _check_writable_folders(self) -> None:
        """Fail before the first step, naming the folder, when checkpoints or logs could not be written."""
        folders = {FilePath(self.trainer.default_root_dir)}
        callback = self.trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            folders.add(FilePath(callback.dirpath))
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder):
                    pass
            except OSError as err:
                raise PermissionError(f"cannot write checkpoints or logs in {str(folder)!r} ({err.strerror}); "
                                      "set trainer.default_root_dir to a writable folder") from err

    def _apply_configured_optimizer_settings(self) -> None:
        """A resumed run restores each optimizer's state, including its learning rate, betas and weight decay;
        the configured values win, and each change is logged (never silently ignored)."""
        for role, opt in self._optimizers_by_role().items():
            want = {"base_lr": self.role_learning_rates.get(role, self.learning_rate), "betas": tuple(self.betas),
                    "weight_decay": self.weight_decay}
            for group in opt.param_groups:
                for key, value in want.items():
                    have = tuple(group[key]) if key == "betas" else group.get(key)
                    if have != value:
                        log.warning("role %s: %s %s from the checkpoint replaced by the configured %s",
                                    role, key, have, value)
                        group[key] = value

    def on_validation_start(self) -> None:
        self._sync_teacher_device()

    def on_test_start(self) -> None:
        self._sync_teacher_device()

    def on_predict_start(self) -> None:
        self._sync_teacher_device()

    def role_module(self, role: str) -> nn.Module:
        return self.engine.role_module(role)

    def roles(self) -> dict[str, nn.Module]:
        return self.engine.roles()

    def context(self, iteration: int) -> Context:
        rank = self.global_rank if self._trainer is not None else 0
        world_size = self.trainer.world_size if self._trainer is not None else 1
        return self.engine.context(iteration, self.device, rank, world_size)

    def _prior(self, n: int, cond: Any, generator: torch.Generator) -> Tensor:
        x = self.modality.prior(n, cond, generator)
        if x is None:
            x = torch.randn((n, *self.modality.latent_shape), generator=generator, device=self.device)
        return x

    # --- sharding (FSDP2 through Lightning's ModelParallelStrategy) ----------------------------
    def configure_model(self) -> None:
        """Shard each trainable role's network (and the teacher's with ``shard_teacher``) with FSDP2's
        ``fully_shard`` over the data-parallel mesh. A no-op without a device mesh (every other strategy).
        The networks, not their ``Denoiser`` wrappers, are sharded: objectives call wrapper methods such as
        ``raw`` that only reach the parameters through the network's own forward, where FSDP2 gathers them."""
        mesh = self.device_mesh if self._trainer is not None else None
        if mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        # the EMA / target copies are sharded exactly like the student, so their elementwise averaging runs on
        # matching local shards (DTensor foreach ops) and sampling from them gathers like the student does
        averages = [avg.module for avg in (self.ema, self.target) if avg is not None]
        roles = [self.student, *self.aux.values(), *averages]
        if self.shard_teacher and self.teacher is not None:
            self.teacher.to(self.device)
            roles.append(self.teacher)
        for role in roles:
            for unit in _shard_units(role):
                # explicit: a root unit would otherwise stay gathered after a no_grad forward (FSDP2 keeps
                # roots unsharded for the backward it expects), and every role here is its own root
                fully_shard(unit, mesh=dp, reshard_after_forward=True)

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opts = self.engine.make_optimizers(self.learning_rate, self.role_learning_rates, self.betas, self.weight_decay)
        return [opts[role] for role in self.objective.trainable_roles]

    def lr_factor(self, iteration: int) -> float:
        """Warm-up then cosine decay, times the objective's own factor, as a function of the iteration."""
        return self.schedule.factor(iteration) * self.objective.lr_factor(iteration)

    def _optimizers_by_role(self) -> dict[str, Any]:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return dict(zip(self.objective.trainable_roles, opts, strict=True))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        loader = self.trainer.train_dataloader
        if isinstance(loader, ResumableDataLoader):
            loader.mark_consumed(self.current_epoch, batch_idx + 1)

    def training_step(self, data: Any, batch_idx: int) -> None:
        batch = self.modality.to_batch(data)
        iteration = int(self.iteration)
        opts = self._optimizers_by_role()
        self.engine.set_learning_rates(opts, iteration, self.schedule)
        step_now = (batch_idx + 1) % self.accumulate == 0
        logs = self.engine.step(
            batch, iteration, opts, grad_clip=self.grad_clip, backward=self.manual_backward,
            accumulate=self.accumulate, apply=step_now, micro=batch_idx % self.accumulate, device=self.device,
            rank=self.global_rank, world_size=self.trainer.world_size, on_nonfinite=self._save_last_good)
        # logged every trainer.log_every_n_steps iterations only: each logged value is a host synchronisation and
        # a trip through Lightning's logging, which costs more than the update itself on small networks
        if iteration % max(1, self.trainer.log_every_n_steps) == 0:
            for name, value in logs.items():
                self.log(f"train/{name}", value, prog_bar=name.endswith("/loss"), batch_size=batch.size)
        if step_now:
            self.iteration += 1
            if self.max_iterations is not None and iteration + 1 >= self.max_iterations:
                self.trainer.should_stop = True

    def _save_last_good(self) -> None:
        if self._trainer is None:
            return
        path = FilePath(self.trainer.default_root_dir) / "last_good.ckpt"
        self.trainer.save_checkpoint(str(path))
        log.error("non-finite loss or gradient: saved the state from before the failing update to %s", path)

    # --- checkpoint state that Lightning does not keep ------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unidistill_run"] = run_identity(self)
        checkpoint["unidistill_rng"] = {
            "torch": torch.get_rng_state(),
            "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        check_run_identity(checkpoint, self, f"checkpoint {str(path)!r}" if path else "the checkpoint")
        rng = checkpoint.get("unidistill_rng")
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        state = tuple(int(v) for v in rng["python"].tolist())
        random.setstate((3, state, None))
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), 0, 0, 0.0))

    # --- sampling ----------------------------------------------------------------------------
    def student_model(self, use_ema: bool = True) -> nn.Module:
        net = self.ema.module if (use_ema and self.ema is not None) else self.student
        return self.objective.sampling_model(net)

    @torch.no_grad()
    def sample_student(
        self, cond: Any, n: int, nfe: int, generator: torch.Generator, use_ema: bool = True
    ) -> SampleResult:
        model = self.student_model(use_ema)
        noise = self._prior(n, cond, generator)
        return sample(
            model,
            noise,
            nfe,
            cond,
            solver=self.objective.student_solver,
            generator=generator,
            time_shape=self.modality.time_shape(n),
            **self.objective.student_solver_kwargs,
        )

    @torch.no_grad()
    def sample_teacher(
        self,
        cond: Any,
        n: int,
        nfe: int,
        generator: torch.Generator,
        solver: str | None = None,
        guidance: float | None = None,
    ) -> SampleResult:
        if self.teacher is None:
            raise ValueError("this run has no teacher (teacher training); sample the student instead")
        scale = self.teacher_guidance if guidance is None else guidance
        model = GuidedDenoiser(self.teacher, scale, self.modality.null_condition)
        noise = self._prior(n, cond, generator)
        solver = solver or self.teacher_solver
        if solver == "heun":
            # Heun spends 2 NFE per step (1 on the last); choose the step count that fits the budget.
            steps = max(1, (nfe // model.nfe_per_call + 1) // 2)
        else:
            steps = max(1, nfe // model.nfe_per_call)
        grid = model.path.time_grid(steps, device=noise.device)
        return SOLVERS[solver](
            model,
            initial_latent(model.path, noise, float(grid[0])),
            grid,
            cond,
            generator=generator,
            time_shape=self.modality.time_shape(n),
        )

    # --- validation --------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = {}

    def validation_step(self, data: Any, batch_idx: int) -> None:
        batch = self.modality.to_batch(data)
        g = torch.Generator(self.device).manual_seed(mix_seed(self.seed, 10_000 + batch_idx, self.global_rank))
        runs = {
            f"student_nfe{n}": (lambda n=n: self.sample_student(batch.cond, batch.size, n, g)) for n in self.val_nfes
        }
        if self.teacher is not None:
            runs |= {
                f"teacher_nfe{n}": (lambda n=n: self.sample_teacher(batch.cond, batch.size, n, g))
                for n in self.val_teacher_nfes
            }
        for key, run in runs.items():
            self._val_outputs.setdefault(key, []).append((run().x, batch.cond, batch.x0))

    def on_validation_epoch_end(self) -> None:
        root = None
        if self.save_val_samples and self._trainer is not None:
            # every rank: Trainer.log_dir broadcasts, so asking on rank 0 alone deadlocks a DDP/FSDP run
            root = FilePath(self.trainer.log_dir or self.trainer.default_root_dir)
        for key, parts in self._val_outputs.items():
            samples = torch.cat([p[0] for p in parts])
            cond = cat_cond([p[1] for p in parts])
            ref = None if parts[0][2] is None else torch.cat([p[2] for p in parts])
            for name, value in self.modality.metrics(samples, cond, ref).items():
                self.log(f"val/{name}/{key}", value, sync_dist=True)
            if root is not None and self.trainer.is_global_zero:
                self.modality.save_samples(samples, cond, root / "samples" / f"step_{int(self.iteration)}" / key)
        self._val_outputs = {}


def run_identity(module: DistillationModule) -> dict[str, str]:
    """What a checkpoint was trained as: the objective and modality classes (a resume of another is refused)."""
    return {"objective": type(module.objective).__qualname__, "modality": type(module.modality).__qualname__}


def check_run_identity(checkpoint: dict[str, Any], module: DistillationModule, source: str = "the checkpoint") -> None:
    saved = checkpoint.get("unidistill_run")
    if not saved:
        return
    now = run_identity(module)
    for key in ("objective", "modality"):
        if saved.get(key) != now[key]:
            raise ValueError(f"{source} was trained with {key} {saved.get(key)}; this run is configured with "
                             f"{now[key]}. Load it into a run of the same {key}")


def _shard_units(role: nn.Module) -> list[nn.Module]:
    """What to ``fully_shard`` in one role: every ``network`` inside a ``Denoiser``, then each child holding
    only other parameters (heads), then the role itself if parameters remain; FSDP2 gathers a unit's
    parameters in its forward, and these are the modules the objectives call."""
    units = [m.network for m in role.modules() if isinstance(getattr(m, "network", None), nn.Module)]
    covered = {id(p) for u in units for p in u.parameters()}
    for child in role.children():
        params = list(child.parameters())
        if params and not any(id(p) in covered for p in params):
            units.append(child)
            covered |= {id(p) for p in params}
    if any(id(p) not in covered for p in role.parameters()):
        units.append(role)
    return [u for u in units if any(True for _ in u.parameters())]
