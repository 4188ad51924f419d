"""``distill_gmm``: distil the exact 8-D Gaussian-mixture teacher into the gmm MLP with any objective and
measure sliced Wasserstein against fresh mixture samples (student at its NFE, teacher at the same NFE and at
64 Heun steps). Reusable by benchmarks; run one objective at a time, the CPU is shared::

    .venv/bin/python benchmarks/gmm_distill.py progressive
"""

from __future__ import annotations

import sys
import time

import torch

from modalities.gmm import GaussianMixture, GmmModality
from unidistill.batch import Batch
from unidistill.engine import Engine, logs_to_floats
from unidistill.objectives.base import Objective
from unidistill.solvers import sample


def distill_gmm(objective: Objective, steps: int, nfe: int, batch_size: int = 256, lr: float = 1e-3,
                ema: float = 0.995, seed: int = 0, n_eval: int = 8192, hidden: int = 128, depth: int = 3,
                teacher_solver_same_nfe: str = "ddim", verbose: bool = True, warm_start: int = 0) -> dict[str, float]:
    """Distil for ``steps`` iterations and score at ``nfe``. ``warm_start`` first fits the student to the
    analytic teacher's x0 prediction for that many iterations, standing in for the usual "student = copy of
    the teacher" initialisation that a parameter-free teacher cannot provide."""
    torch.manual_seed(seed)
    modality = GmmModality(GaussianMixture(dim=8), hidden=hidden, depth=depth)
    teacher = modality.load_teacher()
    student = modality.build_student(teacher, objective.student_takes_guidance)
    if warm_start:
        _fit_to_teacher(student, teacher, modality, warm_start, batch_size, lr, seed)
    engine = Engine(objective, student, teacher, latent_shape=modality.latent_shape, seed=seed, ema_decay=ema,
                    null_condition=modality.null_condition)
    opts = engine.make_optimizers(lr)
    scheds = {r: torch.optim.lr_scheduler.LambdaLR(o, lambda i: min(1.0, 2.0 * (1 - i / steps) + 0.05))
              for r, o in opts.items()}
    start = time.time()
    for it in range(steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + it)
        x0, cond = modality.sample_data(batch_size, g)
        logs = engine.step(Batch(x0, cond), it, opts, grad_clip=1.0)
        for s in scheds.values():
            s.step()
        if verbose and (it % max(1, steps // 5) == 0 or it == steps - 1):
            print(f"  it {it}: " + ", ".join(f"{k}={v:.4g}" for k, v in logs_to_floats(logs).items()), flush=True)
    train_s = time.time() - start
    g = torch.Generator().manual_seed(777)
    labels = modality.sample_data(n_eval, g)[1]
    noise = torch.randn(n_eval, 8, generator=g)

    def sw(x: torch.Tensor) -> float:
        return modality.metrics(x, labels, None)["sliced_wasserstein"]

    with torch.no_grad():
        model = objective.sampling_model(engine.ema.module.eval())
        out = sample(model, noise, nfe, labels, solver=objective.student_solver, generator=g)
        res = {"student_sw": sw(out.x), "student_nfe": out.nfe,
               "teacher_sw_same_nfe": sw(sample(teacher, noise, nfe, labels, solver=teacher_solver_same_nfe).x),
               "teacher_sw_64_heun": sw(sample(teacher, noise, 64, labels, solver="heun").x),
               "train_seconds": train_s}
    res["ratio_vs_teacher_same_nfe"] = res["teacher_sw_same_nfe"] / res["student_sw"]
    res["ratio_vs_teacher_64"] = res["student_sw"] / res["teacher_sw_64_heun"]
    return res


def _fit_to_teacher(student, teacher, modality, iterations: int, batch_size: int, lr: float, seed: int) -> None:
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    for it in range(iterations):
        g = torch.Generator().manual_seed(seed * 7919 + it + 10**9)
        x0, cond = modality.sample_data(batch_size, g)
        t = torch.rand(batch_size, generator=g) * 0.999 + 1e-3
        x_t = teacher.path.add_noise(x0, torch.randn(x0.shape, generator=g), t)
        with torch.no_grad():
            tgt = teacher(x_t, t, cond).x0
        loss = ((student(x_t, t, cond).x0 - tgt) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def objective_for(name: str) -> tuple[Objective, int, int]:
    """A tuned configuration per objective: (objective, training iterations, student NFE)."""
    from unidistill import objectives as O

    if name == "phased":
        return O.PhasedConsistencyDistillation(num_phases=2, num_intervals=64, target_decay=0.95), 3000, 2
    if name == "progressive":
        return O.ProgressiveDistillation(teacher_steps=16, final_steps=2, phase_length=700), 2800, 2
    if name == "regression":
        return O.TrajectoryRegression(student_steps=2, teacher_steps=16), 2000, 2
    if name == "reflow":
        return O.Reflow(rounds=1, round_length=1500, distill_steps=2, coupling_steps=16), 3000, 2
    if name == "scm":
        return O.ContinuousConsistency(tangent_warmup=500), 3000, 2
    if name == "flow_map":
        return O.FlowMapDistillation(tangent_warmup=500), 3000, 2
    raise ValueError(name)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[1:]:
        warm = 0
        if name.endswith("+warm"):
            name, warm = name[: -len("+warm")], 1500
        obj, steps, nfe = objective_for(name)
        print(name, "warm start" if warm else "", flush=True)
        print(name, distill_gmm(obj, steps, nfe, warm_start=warm), flush=True)
