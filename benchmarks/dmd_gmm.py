"""DMD2 / SiD quality on the gmm toy (exact analytic teacher, 8 dims): 1-NFE student vs the teacher.

Trains a one-step student (MLP) with an objective from ``unidistill.objectives`` using plain AdamW and
the engine (``unidistill.engine.Engine``) for a CPU-time budget, then compares sliced Wasserstein / MMD / mode
coverage on 8192 class-conditional samples against the teacher at 1 NFE (DDIM) and ~64 NFE (Heun, 32 steps = 63 NFE).
Writes ``benchmarks/results/dmd_gmm.json`` (or ``--out``)::

    python benchmarks/dmd_gmm.py --minutes 8 [--objective dmd2|sid] [--flip]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from modalities.gmm import GaussianMixture, GmmModality
from unidistill.bench import machine
from unidistill.engine import Engine, logs_to_floats
from unidistill.objectives import DMD2, Batch, ScoreIdentityDistillation
from unidistill.solvers import sample


class FlippedDMD2(DMD2):
    """Sanity check: the wrong sign of the DMD direction must diverge."""

    def dm_direction(self, *args, **kwargs):
        g, logs = super().dm_direction(*args, **kwargs)
        return -g, logs


def evaluate(modality, model, steps, solver, n=8192, seed=123):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randint(0, modality.mixture.num_classes, (n,), generator=g)
    noise = torch.randn(n, modality.mixture.dim, generator=g)
    with torch.no_grad():
        out = sample(model, noise, steps, cond, solver, generator=g)
    return {**modality.metrics(out.x, cond, None), "nfe": out.nfe}


def run(minutes=8.0, objective="dmd2", batch_size=256, lr=1e-4, fake_lr=2e-4, ratio=5, flip=False, seed=0,
        log_every=500, eval_n=8192, out=None, ema=0.0):
    torch.manual_seed(seed)
    modality = GmmModality(GaussianMixture(dim=8))
    teacher = modality.load_teacher()
    student = modality.build_student(teacher)
    cls = {"dmd2": FlippedDMD2 if flip else DMD2, "sid": ScoreIdentityDistillation}[objective]
    obj = cls(fake_updates_per_student=ratio)
    engine = Engine(obj, student, teacher, latent_shape=(8,), seed=seed, ema_decay=ema or None,
                    null_condition=modality.null_condition)
    opts = {"student": torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.0, 0.99), weight_decay=0.0),
            "fake_score": torch.optim.AdamW(engine.aux["fake_score"].parameters(), lr=fake_lr, betas=(0.0, 0.99),
                                            weight_decay=0.0)}
    averaged = engine.ema  # the student EMA that DistillationModule keeps and samples with; None = the raw student
    gen = torch.Generator().manual_seed(seed)
    start, it, history = time.process_time(), 0, []
    while time.process_time() - start < minutes * 60:
        cond = torch.randint(0, modality.mixture.num_classes, (batch_size,), generator=gen)
        try:
            logs = logs_to_floats(engine.step(Batch(None, cond=cond, size=batch_size), it, opts, grad_clip=10.0))
        except FloatingPointError as err:
            history.append({"iteration": it, "error": str(err)})
            break
        it += 1
        if it % log_every == 0:
            m = evaluate(modality, obj.sampling_model(averaged.module if averaged else student), 1,
                         obj.student_solver, n=2048)
            history.append({"iteration": it, "cpu_s": round(time.process_time() - start, 1), **m,
                            **{k: round(v, 5) for k, v in logs.items()}})
            print(json.dumps(history[-1]), flush=True)
    final = averaged.module if averaged is not None else student
    rows = [
        {"model": "teacher", "solver": "ddim", **evaluate(modality, teacher, 1, "ddim", eval_n)},
        {"model": "teacher", "solver": "heun", **evaluate(modality, teacher, 32, "heun", eval_n)},
        {"model": obj.name + ("(flipped)" if flip else ""), "solver": obj.student_solver,
         **evaluate(modality, obj.sampling_model(final), 1, obj.student_solver, eval_n)},
    ]
    sw_t1, sw_t64, sw_s = (r["sliced_wasserstein"] for r in rows)
    summary = {"student_vs_teacher_1nfe": sw_s / sw_t1, "student_vs_teacher_64nfe": sw_s / sw_t64,
               "iterations": it, "cpu_minutes": round((time.process_time() - start) / 60, 2)}
    result = {"benchmark": "dmd_gmm", "command": " ".join([sys.executable, *sys.argv]), "machine": machine(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "rows": rows, "summary": summary,
              "config": {"objective": objective, "batch_size": batch_size, "lr": lr, "fake_lr": fake_lr,
                         "fake_updates_per_student": ratio, "flip": flip, "seed": seed, "ema": ema}, "history": history}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    for r in rows:
        print(f"{r['model']:>16} {r['solver']:>12} nfe={r['nfe']:>3} SW={r['sliced_wasserstein']:.4f} "
              f"MMD={r['mmd']:.5f} modes={r['mode_coverage']:.2f}")
    print(json.dumps(summary))
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=8.0, help="CPU-time budget for training")
    p.add_argument("--objective", default="dmd2", choices=["dmd2", "sid"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--fake-lr", type=float, default=2e-4)
    p.add_argument("--ratio", type=int, default=5)
    p.add_argument("--flip", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", type=float, default=0.0, help="student EMA decay used for sampling (0 = none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/dmd_gmm.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    run(a.minutes, a.objective, a.batch_size, a.lr, a.fake_lr, a.ratio, a.flip, a.seed, out=a.out, ema=a.ema)
