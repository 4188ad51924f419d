"""Closed-loop benchmark of the policy modality: expert, mean regression, teacher (full DDPM schedule and DDIM-10)
and the distilled students (consistency at 1 and 3 steps, DMD2 at 1 step) on ReachAround and Reacher-v5.

Every row runs the same fixed seeds (one episode per seed, environments stepped in lockstep with batched planning)
and reports the success rate with its Wilson 95% interval, the mean return, and the control rate of one robot:
``n_action_steps`` over the median wall time of one planning call at batch 1 (observation normalisation and
encoding, sampling, unnormalisation). Speed-ups are ratios to the teacher's full schedule measured in this run.

    OMP_NUM_THREADS=1 python benchmarks/policy.py --episodes 100

expects the student and baseline checkpoints of the task configs under ``runs/<task>_<objective>/checkpoints/``
(the commands are in each config's header); the teachers ship in ``tasks/<task>/weights``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modalities.policy.evaluation import control_rates, evaluate, rollout, save_gif  # noqa: E402
from unidistill.bench import format_table, write_results  # noqa: E402
from unidistill.cli import quiet_known_warnings  # noqa: E402
from unidistill.runs import build, load_checkpoint  # noqa: E402

log = logging.getLogger("benchmarks.policy")


def _task(name: str) -> Any:
    if name == "reach_around":
        import tasks.reach_around as task
    elif name == "reacher":
        import tasks.reacher as task
    else:
        raise ValueError(f"unknown task {name!r}; valid: reach_around, reacher")
    return task


def _module(task: str, objective: str, runs: Path, ckpt: bool = True) -> Any:
    module, _ = build(ROOT / "configs" / task / f"{objective}.yaml")
    if ckpt:
        path = runs / f"{task}_{objective}" / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint for {task}/{objective} at {str(path)!r}; train it with "
                                    f"`unidistill fit --config configs/{task}/{objective}.yaml "
                                    f"--trainer.default_root_dir={runs / f'{task}_{objective}'}`")
        load_checkpoint(module, path)
    module.eval()
    module._sync_teacher_device()
    return module


def _samplers(task: str, runs: Path) -> list[tuple[str, str, int, Any, Callable]]:
    """(model, solver, nfe, modality, sample_fn) per policy row."""
    rows = []
    baseline = _module(task, "mean_regression", runs)
    rows.append(("mean_regression", "ddim", 1, baseline.modality,
                 lambda c, n, g, m=baseline: m.sample_student(c, n, 1, g).x))
    cd = _module(task, "consistency", runs)
    rows.append(("teacher", "ancestral", 100, cd.modality,
                 lambda c, n, g: cd.sample_teacher(c, n, 100, g, solver="ancestral").x))
    rows.append(("teacher", "ddim", 10, cd.modality, lambda c, n, g: cd.sample_teacher(c, n, 10, g, solver="ddim").x))
    for nfe in (1, 3):
        rows.append(("ConsistencyDistillation", "consistency", nfe, cd.modality,
                     lambda c, n, g, k=nfe: cd.sample_student(c, n, k, g).x))
    dmd = _module(task, "dmd2", runs)
    rows.append(("DMD2", "consistency", 1, dmd.modality, lambda c, n, g: dmd.sample_student(c, n, 1, g).x))
    return rows


def bench_task(task_name: str, episodes: int, runs: Path, gif_dir: Path | None) -> list[dict[str, Any]]:
    task = _task(task_name)
    seeds = list(range(episodes))
    out: list[dict[str, Any]] = []
    samplers = _samplers(task_name, runs)
    modality = samplers[0][3]
    obs_dim, action_dim = modality.obs_dim, modality.action_dim
    probe = np.zeros((1, modality.n_obs_steps, obs_dim), dtype=np.float32)

    expert = task.BatchExpert()
    result = evaluate(task.make_env, lambda: task.BatchExpert(), seeds, obs_dim, action_dim)
    out.append({"task": task_name, "model": "expert", "solver": "scripted", "nfe": 0, **result.summary()})
    timed: list[tuple[Callable, int]] = [(lambda w: expert.act(w[:, -1]), 1)]
    for model, solver, nfe, mod, sample_fn in samplers:
        def agent(sample_fn: Callable = sample_fn, mod: Any = mod) -> Any:
            return mod.executor(mod.planner(sample_fn, torch.Generator().manual_seed(0)))

        result = evaluate(task.make_env, agent, seeds, obs_dim, action_dim)
        timed.append((mod.planner(sample_fn, torch.Generator().manual_seed(0)), mod.n_action_steps))
        row = {"task": task_name, "model": model, "solver": solver, "nfe": nfe, **result.summary()}
        out.append(row)
        log.info("%s", row)
        if gif_dir is not None:
            rec = rollout(task.make_env, agent(), seeds[:1], obs_dim, action_dim, record=True)
            save_gif(rec.frames, gif_dir / f"{task_name}_{model}_{solver}{nfe}.gif")
    for row, (rate, ms) in zip(out, control_rates(timed, probe, repeats=40), strict=True):
        row |= {"actions_per_s": rate, "ms_per_sample": ms}
    teacher = next(r for r in out if r["model"] == "teacher" and r["nfe"] == 100)
    for r in out:
        r["speedup_vs_teacher"] = r["actions_per_s"] / teacher["actions_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=["reach_around", "reacher"])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--runs", default=str(ROOT / "runs"))
    p.add_argument("--gif-dir", default=None, help="also save one rollout GIF per row here")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "policy.json"))
    args = p.parse_args()
    quiet_known_warnings()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    rows = []
    for name in args.tasks:
        rows += bench_task(name, args.episodes, Path(args.runs), Path(args.gif_dir) if args.gif_dir else None)
    print(format_table(rows))
    command = "OMP_NUM_THREADS=1 python benchmarks/policy.py " + " ".join(sys.argv[1:])
    extra = {"episodes_per_row": args.episodes, "seeds": f"0..{args.episodes - 1}",
             "success": {"reach_around": "agent within 0.06 of the goal without touching the wall (100 steps max)",
                         "reacher": "final fingertip-target distance < 0.02 after 50 steps"},
             "actions_per_s": "one robot: n_action_steps / median wall time of a batch-1 planning call, including "
                              "observation normalisation/encoding; all rows of a task timed round-robin, 40 rounds",
             "ms_per_sample": "median wall time of one batch-1 planning call (one action chunk)"}
    path = write_results(Path(args.out).stem, command, rows, Path(args.out).parent, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
