"""x4 super-resolution of held-out real photos: bicubic, the L2 regression baseline, the ResShift teacher at its full
schedule and at few steps, and the one-step students, in one run on one machine.

    OMP_NUM_THREADS=1 python benchmarks/superres.py --out benchmarks/results

Inputs: the three held-out photos (chelsea, coffee, flower; never seen in training), each cropped to
``--crop`` x ``--crop`` at its centre (``--crop 0``: the whole photo), downsampled x4 by bicubic with antialiasing.
Every model super-resolves the whole input by tiles (128x128, overlap 16, blended) with ``upscale``. Quality per
image, averaged over images and ``--seeds``: ``st_lpips_alex`` (shift-tolerant LPIPS, AlexNet; not LPIPS), PSNR and
SSIM on Y (4-pixel border shaved), LR-consistency PSNR; ``niqe`` pooled over the outputs (all >= 192x192);
``diversity``: per-pixel standard deviation across seeds. Speed: each round of ``--rounds`` times every model once
on the same 64x64 LR input (256x256 output) at batch 1 (``unidistill.metrics.paired_times``); ``ms_per_sample`` is
the median, ``ms_per_megapixel`` per output megapixel, ``speedup_vs_teacher`` the median of per-round ratios to the
teacher's full schedule. PNG rows (LR nearest | bicubic | baseline | teacher | students | ground truth) with a zoomed
crop are written to ``--artefacts``.

Students are read from their runs (``--students LABEL=CONFIG:CHECKPOINT``; defaults: ``runs/sr/<name>/checkpoints/
last.ckpt`` of ``configs/photo_sr/<name>.yaml`` where present) and sampled with their objective's sampling model
(EMA weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modalities.superres import SuperResModality  # noqa: E402
from modalities.superres.degradation import downsample, upsample  # noqa: E402
from modalities.superres.grid import save_rows  # noqa: E402
from modalities.superres.metrics import diversity, sr_metrics  # noqa: E402
from modalities.superres.niqe import niqe  # noqa: E402
from tasks.photo_sr import TEST_PHOTOS, crop_to_multiple, load_photo  # noqa: E402
from unidistill.bench import format_table, write_results  # noqa: E402
from unidistill.metrics import paired_ratio, paired_times, timed  # noqa: E402

WEIGHTS = ROOT / "tasks" / "photo_sr" / "weights"
STUDENT_NAMES = ["sinsr", "dmd2", "dmd2_lr", "consistency", "adversarial", "reflow"]
#: where the zoomed crop of each held-out photo sits in its (centre-cropped) frame: (top, left, side)
ZOOM = {"chelsea": (90, 100, 48), "coffee": (60, 120, 48), "flower": (100, 80, 48)}


def modality(weights: Path | None = None, regression: bool = False) -> SuperResModality:
    """The task's modality as configs/photo_sr/teacher.yaml builds it (weights for the teacher or the baseline)."""
    return SuperResModality(scale=4, patch=48, latent="residual", path="residual_shift",
                            path_args={"kappa": 1.0, "num_steps": 15}, prediction="x0", regression=regression,
                            teacher=str(weights) if weights else "random:0")


def held_out(crop: int) -> dict[str, torch.Tensor]:
    out = {}
    for name in TEST_PHOTOS:
        img = crop_to_multiple(load_photo(name), 4)
        if crop:
            h, w = img.shape[-2:]
            top, left = (h - crop) // 2, (w - crop) // 2
            img = img[:, top:top + crop, left:left + crop]
        out[name] = img
    return out


def student_models(specs: list[str]) -> dict[str, tuple[Any, str, str]]:
    """``label -> (sampling model, solver, config)`` of each student run."""
    from unidistill.runs import build, load_checkpoint

    found = {}
    for spec in specs:
        label, _, rest = spec.partition("=")
        config, _, ckpt = rest.partition(":")
        module, _ = build(config)
        load_checkpoint(module, ckpt)
        module.eval()
        found[label] = (module.student_model(use_ema=True), module.objective.student_solver, config)
    return found


def repo_relative(path: str) -> str:
    """A path inside the repository as the README's commands write it (results files are read by users)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def default_students() -> list[str]:
    specs = []
    for name in STUDENT_NAMES:
        ckpt = ROOT / "runs" / "sr" / name / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            specs.append(f"{name}={ROOT / 'configs' / 'photo_sr' / f'{name}.yaml'}:{ckpt}")
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(WEIGHTS / "teacher.safetensors"))
    parser.add_argument("--baseline", default=str(WEIGHTS / "baseline.safetensors"))
    parser.add_argument("--students", nargs="*", default=None, help="LABEL=CONFIG:CHECKPOINT ...")
    parser.add_argument("--teacher-runs", nargs="*", default=["ancestral:15", "ddim:15", "ddim:4", "ddim:2", "ddim:1"],
                        help="SOLVER:STEPS of the teacher; the first is its full schedule (ResShift samples "
                             "ancestrally; SinSR distils the deterministic DDIM sampler)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--crop", type=int, default=256, help="centre crop side of each held-out photo (0: whole)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--artefacts", default=str(ROOT / "benchmarks" / "results" / "superres"))
    parser.add_argument("--name", default="superres")
    args = parser.parse_args()
    torch.set_num_threads(1)

    teacher_mod = modality(Path(args.teacher))
    teacher = teacher_mod.load_teacher()
    base_mod = modality(Path(args.baseline), regression=True)
    baseline = base_mod.load_teacher()
    runs: dict[str, tuple[SuperResModality, Any, str, int]] = {"baseline": (base_mod, baseline, "ddim", 1)}
    for spec in args.teacher_runs:
        solver, _, k = spec.partition(":")
        runs[f"teacher {solver} {k}"] = (teacher_mod, teacher, solver, int(k))
    students = student_models(args.students if args.students is not None else default_students())
    for label, (model, solver, _) in students.items():
        runs[label] = (teacher_mod, model, solver, 1)

    photos = held_out(args.crop)
    lrs = {n: downsample(img[None], 4)[0] for n, img in photos.items()}
    rows: list[dict[str, Any]] = []
    outputs: dict[str, dict[str, list[torch.Tensor]]] = {}

    def score(label: str, model_name: str, solver: str, nfe: int, outs: dict[str, list[torch.Tensor]]) -> None:
        per_seed = []
        for s in range(len(next(iter(outs.values())))):
            m = [sr_metrics(outs[n][s][None], photos[n][None], lrs[n][None], 4) for n in photos]
            per_seed.append({k: statistics.fmean(d[k] for d in m) for k in m[0]})
        row = {"model": model_name, "label": label, "solver": solver, "nfe": nfe}
        row |= {k: statistics.fmean(d[k] for d in per_seed) for k in per_seed[0]}
        row["niqe"] = niqe([outs[n][0] for n in photos])
        if len(next(iter(outs.values()))) > 1:
            row["diversity"] = statistics.fmean(diversity(outs[n]) for n in photos)
        rows.append(row)
        print(format_table([row]), flush=True)

    bicubic = {n: [upsample(lr[None], 4)[0]] for n, lr in lrs.items()}
    outputs["bicubic"] = bicubic
    score("bicubic", "bicubic", "-", 0, bicubic)
    for label, (mod, model, solver, steps) in runs.items():
        seeds = 1 if label == "baseline" else args.seeds
        outs = {n: [mod.upscale(model, lrs[n], steps, solver, seed=s, progress=False) for s in range(seeds)]
                for n in photos}
        outputs[label] = outs
        name = "teacher" if label.startswith("teacher") else label
        score(label, name, solver, steps, outs)

    # paired timing on one 64x64 LR input (256x256 output), batch 1
    lr = lrs[TEST_PHOTOS[1]][:, :64, :64]
    fns = {label: timed(lambda mod=mod, model=model, solver=solver, steps=steps:
                        mod.upscale(model, lr, steps, solver, progress=False))
           for label, (mod, model, solver, steps) in runs.items()}
    fns["bicubic"] = timed(lambda: upsample(lr[None], 4))
    times = paired_times(fns, rounds=args.rounds)
    solver, _, k = args.teacher_runs[0].partition(":")
    full = f"teacher {solver} {k}"
    megapixels = 256 * 256 / 1e6
    for row in rows:
        t = times[row["label"]]
        row["ms_per_sample"] = 1000 * statistics.median(t)
        row["ms_per_megapixel"] = row["ms_per_sample"] / megapixels
        row["speedup_vs_teacher"] = paired_ratio(times[full], t)
    teacher_row = next(r for r in rows if r["label"] == full)
    for row in rows:
        row["st_lpips_vs_teacher"] = row["st_lpips_alex"] / teacher_row["st_lpips_alex"]
        row["psnr_y_vs_teacher"] = row["psnr_y"] - teacher_row["psnr_y"]
        for ref in rows:  # against every other teacher schedule with the full NFE too (e.g. the DDIM one)
            if ref["model"] == "teacher" and ref["nfe"] == teacher_row["nfe"] and ref is not teacher_row:
                tag = ref["label"].replace("teacher ", "").replace(" ", "")
                row[f"st_lpips_vs_teacher_{tag}"] = row["st_lpips_alex"] / ref["st_lpips_alex"]
                row[f"psnr_y_vs_teacher_{tag}"] = row["psnr_y"] - ref["psnr_y"]
        if row["label"] in students:
            row["speedup_fraction_of_nfe_ratio"] = row["speedup_vs_teacher"] / (teacher_row["nfe"] / row["nfe"])

    art = Path(args.artefacts)
    for n, img in photos.items():
        shown = {"LR (nearest)": lrs[n][None], "bicubic": outputs["bicubic"][n][0][None],
                 "baseline": outputs["baseline"][n][0][None], "teacher": outputs[full][n][0][None]}
        shown |= {label: outputs[label][n][0][None] for label in students}
        shown["ground truth"] = img[None]
        save_rows(shown, 4, art / f"{n}.png", limit=1, zoom=ZOOM[n] if args.crop == 256 else None)

    command = "OMP_NUM_THREADS=1 python benchmarks/superres.py " + " ".join(sys.argv[1:])
    path = write_results(args.name, command.strip(), rows, args.out, extra={
        "quality_metric": "st_lpips_alex", "photos": list(TEST_PHOTOS), "crop": args.crop,
        "students": {k: repo_relative(v[2]) for k, v in students.items()},
        "timing_input": "64x64 LR -> 256x256, batch 1"})
    print(format_table([{k: v for k, v in r.items() if k not in ("label",)} for r in rows]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
