"""3D shapes: the point-cloud teacher against its students, and the two-stage (structure -> structured latents)
pipeline teacher -> teacher against student -> student, end to end, in one run.

    OMP_NUM_THREADS=1 python benchmarks/shapes.py --out benchmarks/results/shapes.json

Students are runs of ``configs/shapes_points/*.yaml`` (``--points-students LABEL=RUN``), ``configs/shapes_structure``
(``--stage1-students``) and ``configs/shapes_latent`` (``--stage2-students``); each run folder holds the
``config.yaml`` and ``checkpoints/last.ckpt`` that ``unidistill fit`` wrote (the EMA student is scored). Quality, on
``--samples`` shapes for held-out captions against held-out real shapes: 1-NNA / COV / MMD under Chamfer (and under
the exact EMD at ``--emd-points`` points on ``--emd-shapes`` shapes), ``fd_shapes`` (Fréchet distance in the task's
PointNet features) and ``prompt_accuracy``; pipeline rows also score stage 1 alone (1-NNA / COV / MMD under
``1 - IoU`` against real structures; IoU with the teacher pipeline's structure for the same seeds) and stage 2
alone on the real structures (``chamfer_given_structure``). Reference rows: other held-out real shapes (the
metrics' floor), a simple baseline (per-concept Gaussian point blobs; per-concept independent voxel occupancy with
voxel-centre points) and, for the pipeline, the real shapes encoded and decoded (the representation's ceiling).
Speed: every student's batch (``--timing-batch`` shapes) is timed in rounds interleaved with the teacher's full
schedule and each speed-up is the median of per-round ratios (``unidistill.metrics.paired_ratio``); pipeline rows
also report milliseconds per shape of each stage. A multi-view PNG of teacher vs students for the same prompts and
seeds, and PLY / GLB files, are written next to the JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modalities.shape import (  # noqa: E402
    StructuredLatentModality,
    StructureModality,
    TwoStagePipeline,
    points_mesh,
    points_modality_from_card,
    render_views,
    save_glb,
    save_ply,
)
from modalities.shape.geometry import iou, pairwise_iou_distance, resample  # noqa: E402
from modalities.shape.setmetrics import set_metrics  # noqa: E402
from tasks.shapes import ShapesEvaluator, load_bank, reference_set  # noqa: E402
from tasks.shapes.catalog import CONCEPTS, all_captions  # noqa: E402
from unidistill.bench import write_results  # noqa: E402
from unidistill.denoiser import GuidedDenoiser  # noqa: E402
from unidistill.metrics import paired_ratio, paired_times, timed  # noqa: E402
from unidistill.runs import build, load_checkpoint  # noqa: E402
from unidistill.solvers import SampleResult, sample  # noqa: E402

WEIGHTS = ROOT / "tasks" / "shapes" / "weights"
Sampler = Callable[[torch.Tensor, Any], SampleResult]


def teacher_sampler(modality: Any, solver: str, steps: int, guidance: float) -> Sampler:
    model = GuidedDenoiser(modality.load_teacher(), guidance, modality.null_condition)
    return lambda noise, cond: sample(model, noise, steps, cond, solver)


def student_sampler(run: Path, nfe: int) -> tuple[Sampler, Any]:
    module, _ = build(run / "config.yaml")
    load_checkpoint(module, run / "checkpoints" / "last.ckpt")
    model, obj = module.student_model(), module.objective
    g = torch.Generator().manual_seed(12345)
    return (lambda noise, cond: sample(model, noise, nfe, cond, obj.student_solver, generator=g,
                                       **obj.student_solver_kwargs)), module


def draw(sampler: Sampler, shape: tuple[int, ...], cond: Any, seed: int) -> SampleResult:
    n = cond.shape[0] if isinstance(cond, torch.Tensor) else cond["text"].shape[0]
    with torch.no_grad():
        return sampler(torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed)), cond)


def concept_gaussians(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Baseline statistics per concept from training shapes: point mean and covariance, voxel occupancy rate."""
    bank = load_bank(0, count, False, StructuredLatentModality().grid)
    k = len(CONCEPTS)
    means, covs, occ = torch.zeros(k, 3), torch.zeros(k, 3, 3), torch.zeros(k, bank.occupancy.shape[1])
    for c in range(k):
        pts = bank.points[bank.concepts == c].reshape(-1, 3)
        means[c], covs[c] = pts.mean(0), torch.cov(pts.T)
        occ[c] = bank.occupancy[bank.concepts == c].float().mean(0)
    return means, covs, occ


def points_part(args: argparse.Namespace, evaluator: ShapesEvaluator, out_dir: Path) -> list[dict[str, Any]]:
    modality = points_modality_from_card(args.points_teacher, evaluator=evaluator)
    ref, cond, bank = reference_set("points", args.samples)
    other, other_cond, _ = reference_set("points", args.samples, offset=args.samples)
    shape = modality.latent_shape
    rows: list[dict[str, Any]] = [{"model": "real_other_shapes", "task": "points", "solver": None, "nfe": 0,
                                   **evaluator.metrics(other, other_cond, ref)}]
    means, covs, _ = concept_gaussians(args.baseline_shapes)
    c = bank.concepts
    g = torch.Generator().manual_seed(0)
    blobs = means[c][:, None] + torch.einsum("bij,bnj->bni", torch.linalg.cholesky(covs[c]),
                                             torch.randn(len(c), shape[0], 3, generator=g))
    rows.append({"model": "baseline_concept_gaussian", "task": "points", "solver": None, "nfe": 0,
                 **evaluator.metrics(blobs, cond, ref)})
    full = teacher_sampler(modality, args.teacher_solver, args.points_teacher_steps, args.guidance)
    tcond = cond[: args.timing_batch]
    timed_full = timed(lambda: draw(full, shape, tcond, 1))
    views: dict[str, list[torch.Tensor]] = {}
    schedules = [(args.teacher_solver, args.points_teacher_steps), *[("euler", s) for s in args.teacher_cheap]]
    for solver, steps in schedules:
        run = teacher_sampler(modality, solver, steps, args.guidance)
        res = draw(run, shape, cond, 0)
        t = paired_times({"full": timed_full, "this": timed(lambda run=run: draw(run, shape, tcond, 1))}, args.repeats)
        label = "teacher" if (solver, steps) == schedules[0] else f"teacher_{solver}{steps}"
        rows.append({"model": label, "task": "points", "solver": solver, "nfe": res.nfe, "guidance": args.guidance,
                     **evaluator.metrics(res.x, cond, ref), "ms_per_sample": _ms(t["this"], args.timing_batch),
                     "speedup_vs_teacher": paired_ratio(t["full"], t["this"])})
        if label == "teacher":
            views[f"teacher {res.nfe} NFE"] = list(res.x[: args.views])
            _save_files(res.x, out_dir / "shapes_files" / "points_teacher")
        print(_short(rows[-1]), flush=True)
    for spec in args.points_students:
        label, _, run_name = spec.partition("=")
        run = ROOT / "runs" / "shapes" / run_name
        if not (run / "checkpoints" / "last.ckpt").is_file():
            print(f"skipping {label}: no {run}/checkpoints/last.ckpt", flush=True)
            continue
        for nfe in args.nfes:
            sampler, module = student_sampler(run, nfe)
            res = draw(sampler, shape, cond, 0)
            this = timed(lambda s=sampler: draw(s, shape, tcond, 1))
            t = paired_times({"full": timed_full, "this": this}, args.repeats)
            rows.append({"model": label, "run": run_name, "task": "points", "solver": module.objective.student_solver,
                         "nfe": res.nfe, **evaluator.metrics(res.x, cond, ref),
                         "ms_per_sample": _ms(t["this"], args.timing_batch),
                         "speedup_vs_teacher": paired_ratio(t["full"], t["this"])})
            if nfe == 1:
                views[f"{label} 1 NFE"] = list(res.x[: args.views])
                _save_files(res.x, out_dir / "shapes_files" / f"points_{label}")
            print(_short(rows[-1]), flush=True)
    captions = [all_captions()[int(i)] for i in bank.captions[: args.views]]
    render_views(views, captions, out_dir / "shapes_points_views.png")
    return rows


def pipeline_part(args: argparse.Namespace, evaluator: ShapesEvaluator, out_dir: Path) -> list[dict[str, Any]]:
    structure = StructureModality(teacher=str(args.structure_teacher))
    latent = StructuredLatentModality(teacher=str(args.latent_teacher))
    real_latents, cond, bank = reference_set("latent", args.samples)
    text, real_occ = cond["text"], bank.occupancy
    ref = bank.points[:, :256]
    s1, s2 = structure.latent_shape, latent.latent_shape

    def score(label: str, samples: Any, extra: dict[str, Any]) -> dict[str, Any]:
        clouds = torch.stack([resample(p, 256, torch.Generator().manual_seed(i)) for i, p in enumerate(samples.clouds)])
        occ = samples.occupancy
        row = {"model": label, "task": "pipeline", **extra, **evaluator.metrics(clouds, text, ref),
               "empty_structures": float(samples.empty.float().mean()),
               "active_voxels": float(occ.sum(1).float().mean()),
               **set_metrics(pairwise_iou_distance(occ, occ), pairwise_iou_distance(occ, real_occ),
                             pairwise_iou_distance(real_occ, real_occ), "iou")}
        if teacher_occ:
            row["iou_vs_teacher"] = float(iou(occ, teacher_occ[0]).mean())
        return row

    class Fixed:  # a "sampler" that returns given latents (real or baseline structures and latents)
        def __init__(self, x: torch.Tensor) -> None:
            self.x = x

        def __call__(self, noise: torch.Tensor, c: Any) -> SampleResult:
            return SampleResult(self.x[: noise.shape[0]], 0)

    teacher_occ: list[torch.Tensor] = []
    g = torch.Generator().manual_seed(0)
    rows = [score("real_encoded", TwoStagePipeline(structure, latent, Fixed(real_occ.reshape(-1, *s1).float() * 2 - 1),
                                                   Fixed(real_latents)).generate(text, g), {"nfe": 0})]
    _, _, occ_rate = concept_gaussians(args.baseline_shapes)
    base_occ = torch.rand(occ_rate[bank.concepts].shape, generator=g) < occ_rate[bank.concepts]
    rows.append(score("baseline_independent_voxels", TwoStagePipeline(
        structure, latent, Fixed(base_occ.reshape(-1, *s1).float() * 2 - 1),
        Fixed(torch.zeros(len(text), *s2))).generate(text, g), {"nfe": 0}))
    print(_short(rows[0]), _short(rows[1]), flush=True)

    stage1: dict[str, tuple[Sampler, str, int]] = {}  # label -> (sampler, solver, nfe)
    stage2: dict[str, tuple[Sampler, str, int]] = {}
    for modality, table, steps_list, prefix in ((structure, stage1, args.stage_teacher_steps, "teacher"),
                                                (latent, stage2, args.stage_teacher_steps, "teacher")):
        for i, steps in enumerate(steps_list):
            table[prefix if i == 0 else f"{prefix}_euler{steps}"] = (
                teacher_sampler(modality, "euler", steps, args.guidance), "euler", steps)
    for specs, table in ((args.stage1_students, stage1), (args.stage2_students, stage2)):
        for spec in specs:
            label, _, run_name = spec.partition("=")
            run = ROOT / "runs" / "shapes" / run_name
            if not (run / "checkpoints" / "last.ckpt").is_file():
                print(f"skipping {label}: no {run}/checkpoints/last.ckpt", flush=True)
                continue
            for nfe in args.nfes:
                sampler, module = student_sampler(run, nfe)
                table[f"{label}@{nfe}"] = (sampler, module.objective.student_solver, nfe)

    # stage 2 alone, on the real structures
    given: dict[str, float] = {}
    for label, (sampler, _, _) in stage2.items():
        x = draw(sampler, s2, cond, 3).x
        given[label] = latent.metrics(x, cond, real_latents).get("chamfer_given_structure", float("nan"))
        given[label + ":outside"] = latent.metrics(x, cond, None)["outside_voxel"]
    pairs = [("teacher", "teacher")] + [(a, b) for a in stage1 for b in stage2 if (a, b) != ("teacher", "teacher")
                                        and _pair_wanted(a, b)]
    t_text = text[: args.timing_batch]
    full = TwoStagePipeline(structure, latent, stage1["teacher"][0], stage2["teacher"][0])
    stage_seconds: dict[str, list[tuple[float, float]]] = {}

    def timed_pipe(pipe: TwoStagePipeline, key: str) -> Callable[[], float]:
        def run() -> float:
            out = pipe.generate(t_text, torch.Generator().manual_seed(1))
            stage_seconds.setdefault(key, []).append(out.seconds)
            return sum(out.seconds)
        return run

    views: dict[str, list[torch.Tensor]] = {}
    for a, b in pairs:
        pipe = TwoStagePipeline(structure, latent, stage1[a][0], stage2[b][0])
        samples = pipe.generate(text, torch.Generator().manual_seed(0))
        if (a, b) == ("teacher", "teacher"):
            teacher_occ.append(samples.occupancy)
        t = paired_times({"full": timed_pipe(full, "full"), "this": timed_pipe(pipe, f"{a}|{b}")}, args.repeats)
        per_stage = stage_seconds[f"{a}|{b}"][-args.repeats:]
        row = score(f"{a} -> {b}", samples, {
            "stage1": a, "stage2": b, "solver": f"{stage1[a][1]} / {stage2[b][1]}", "nfe": sum(samples.nfe),
            "nfe_stage1": samples.nfe[0], "nfe_stage2": samples.nfe[1],
            "chamfer_given_structure": given[b], "outside_voxel_given_structure": given[b + ":outside"],
            "ms_per_sample": _ms(t["this"], args.timing_batch),
            "ms_stage1": _ms([s[0] for s in per_stage], args.timing_batch),
            "ms_stage2": _ms([s[1] for s in per_stage], args.timing_batch),
            "speedup_vs_teacher": paired_ratio(t["full"], t["this"])})
        # the target: an end-to-end speed-up of at least 80% of the NFE ratio
        row["speedup_over_nfe_ratio"] = row["speedup_vs_teacher"] * max(row["nfe"], 1) / _full_nfe(stage1, stage2)
        rows.append(row)
        if a == "teacher" and b == "teacher" or (a.endswith("@1") and b.endswith("@1")):
            views[f"{a} -> {b}"] = samples.clouds[: args.views]
            _save_files(samples.clouds, out_dir / "shapes_files" / f"pipeline_{_safe(a)}_{_safe(b)}")
        print(_short(row), flush=True)
    captions = [all_captions()[int(i)] for i in bank.captions[: args.views]]
    render_views(views, captions, out_dir / "shapes_pipeline_views.png")
    return rows


def _full_nfe(stage1: dict, stage2: dict) -> int:
    return stage1["teacher"][2] + stage2["teacher"][2]


def _pair_wanted(a: str, b: str) -> bool:
    """Teacher with each student, students with students of the same NFE, and cheap teachers with each other."""
    if a == "teacher" or b == "teacher":
        return True
    if "@" in a and "@" in b:
        return a.rpartition("@")[2] == b.rpartition("@")[2]
    return a.startswith("teacher_") and b.startswith("teacher_") and a.split("euler")[1] == b.split("euler")[1]


def _save_files(clouds: Any, folder: Path, count: int = 4) -> None:
    for i, c in enumerate(list(clouds)[:count]):
        save_ply(c, folder / f"shape_{i}.ply")
        save_glb(points_mesh(c), folder / f"shape_{i}.glb")


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label)


def _ms(seconds: list[float], batch: int) -> float:
    return 1000 * statistics.median(seconds) / batch


def _short(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "nfe", "fd_shapes", "1nna_cd", "prompt_accuracy", "mmd_iou", "chamfer_given_structure",
            "ms_per_sample", "speedup_vs_teacher")
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k in keys}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="*", default=["points", "pipeline"])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--points-teacher", default=str(WEIGHTS / "points_teacher.safetensors"))
    p.add_argument("--structure-teacher", default=str(WEIGHTS / "structure_teacher.safetensors"))
    p.add_argument("--latent-teacher", default=str(WEIGHTS / "latent_teacher.safetensors"))
    p.add_argument("--teacher-solver", default="heun")
    p.add_argument("--points-teacher-steps", type=int, default=32, help="Heun steps of the points teacher")
    p.add_argument("--teacher-cheap", type=int, nargs="*", default=[1, 2, 4, 8], help="Euler steps also scored")
    p.add_argument("--stage-teacher-steps", type=int, nargs="*", default=[25, 2, 4],
                   help="Euler steps per stage: the first is the teacher's full schedule (TRELLIS: 25)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--points-students", nargs="*", default=[])
    p.add_argument("--stage1-students", nargs="*", default=[])
    p.add_argument("--stage2-students", nargs="*", default=[])
    p.add_argument("--nfes", type=int, nargs="*", default=[1, 2])
    p.add_argument("--emd-points", type=int, default=64)
    p.add_argument("--emd-shapes", type=int, default=128)
    p.add_argument("--baseline-shapes", type=int, default=4096)
    p.add_argument("--timing-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/shapes.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    evaluator = ShapesEvaluator(emd_points=args.emd_points, emd_shapes=args.emd_shapes)
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    if "points" in args.parts:
        rows += points_part(args, evaluator, out.parent)
    if "pipeline" in args.parts:
        rows += pipeline_part(args, evaluator, out.parent)
    command = "OMP_NUM_THREADS=1 python benchmarks/shapes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results(out.stem, command, rows, out.parent, {
        "quality_metric": "fd_shapes",
        "teacher": f"points: {args.teacher_solver} {args.points_teacher_steps} steps; pipeline: Euler "
                   f"{args.stage_teacher_steps[0]} steps per stage; guidance {args.guidance}",
        "timing": f"single thread, batches of {args.timing_batch} shapes; each row's rounds interleave it with the "
                  "teacher's full schedule; a speed-up is the median of per-round ratios",
        "emd": f"exact (Hungarian) at {args.emd_points} farthest points on the first {args.emd_shapes} shapes"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
