"""Spoken-words text-to-speech: the teacher at its full schedule and with training-free few-step solvers against
the distilled students at 1, 2 and 4 NFE, plus real clips and a per-word mean baseline, in one run.

    OMP_NUM_THREADS=1 python benchmarks/audio.py --out benchmarks/results/audio.json

Quality on ``--samples`` held-out validation captions (held-out templates; 20 (word, voice) pairs never seen in
training) against the real clips of the same captions: ``fd_spoken_words`` (Fréchet distance in the task
classifier's features, not FAD), word / gender / accent / voice accuracy as the classifier reads them, duration
error for "slowly"/"quickly" prompts, k-NN precision/recall; metrics are averaged over ``--seeds``. Baselines:
``real`` (other real held-out clips: the floor every model is measured against) and ``word_mean`` (the mean
training log-mel of the prompted word: right words, no variety).

Speed (one thread): the generator alone and end to end (generator + Griffin-Lim back to audio), at batch 1 (a
real-time factor: seconds of compute per second of audio) and batch ``--batch``; each student row is timed in
``--repeats`` rounds that also time the teacher's full schedule, and its speed-ups are the medians of per-round
ratios (``unidistill.metrics.paired_ratio``). ``ms_per_sample`` is the batch generator time per clip.

Students are training runs ``runs/audio/<RUN>/`` (their ``config.yaml`` and ``checkpoints/last.ckpt``) given as
``--students LABEL=RUN``. WAVs of the same prompts and seeds from every model and one PNG of their captioned
spectrograms go to ``<out stem>_samples/``.
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

from modalities.audio import AudioModality, MelLatent  # noqa: E402
from tasks.spoken_words.corpus import load_corpus  # noqa: E402
from tasks.spoken_words.data import MEL_STATS, SAMPLE_RATE, SAMPLES, TRAIN_SIZE  # noqa: E402
from tasks.spoken_words.evaluation import SpokenWordsEvaluator  # noqa: E402
from unidistill.bench import format_table, write_results  # noqa: E402
from unidistill.conditions import slice_cond  # noqa: E402
from unidistill.denoiser import GuidedDenoiser  # noqa: E402
from unidistill.metrics import paired_ratio, paired_times, timed  # noqa: E402
from unidistill.solvers import sample  # noqa: E402

TEACHER = ROOT / "tasks/spoken_words/weights/teacher.safetensors"
STUDENTS = ["consistency=consistency", "dmd2=dmd2", "flow_map=flow_map"]
#: fewer teacher steps, and the training-free few-step solvers at <= 4 NFE (guided: 2 NFE per step)
TEACHER_RUNS = ["heun:16:G", "heun:8:G", "euler:2:G", "dpm_solver_pp_2m:2:G", "euler:4:1", "dpm_solver_pp_2m:4:1",
                "heun:2:1"]


def modality(teacher: str, network: dict, prediction: str) -> AudioModality:
    return AudioModality(latent=MelLatent(stats=str(MEL_STATS)), network=network, prediction=prediction,
                         teacher=teacher, evaluator=SpokenWordsEvaluator())


def reference(m: AudioModality, n: int, start: int = 0) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    corpus = load_corpus("val", start + n, 0, SAMPLE_RATE, SAMPLES)
    specs = corpus.specs[start:]
    labels = {k: torch.tensor([s.labels()[k] for s in specs]) for k in ("word", "gender", "accent", "speed")}
    prompts = [s.caption for s in specs]
    return m.encode(corpus.audio[start:]), m.prompt_condition(prompts, labels), prompts


def word_means(m: AudioModality) -> torch.Tensor:
    """``[20, 64, 64]`` mean training latent of each word (the ``word_mean`` baseline)."""
    corpus = load_corpus("train", TRAIN_SIZE, 0, SAMPLE_RATE, SAMPLES)
    words = torch.tensor([s.word for s in corpus.specs])
    latents = torch.cat([m.encode(w) for w in corpus.audio.split(512)])
    return torch.stack([latents[words == k].mean(0) for k in range(int(words.max()) + 1)])


def averaged(m: AudioModality, draw: Any, cond: Any, real: torch.Tensor, seeds: list[int]) -> tuple[dict, Any]:
    metrics: dict[str, list[float]] = {}
    first = None
    for seed in seeds:
        out = draw(cond, real.shape[0], seed)
        first = out if first is None else first
        for k, v in m.metrics(out.x, cond, real).items():
            metrics.setdefault(k, []).append(v)
    return {k: statistics.fmean(v) for k, v in metrics.items()}, first


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(TEACHER), help="teacher weights (safetensors with its card)")
    p.add_argument("--network", default="patch=2", help="SpeechDiT options of the teacher, k=v,k=v")
    p.add_argument("--prediction", default="x0")
    p.add_argument("--teacher-steps", type=int, default=32, help="Heun steps of the teacher's full schedule")
    p.add_argument("--guidance", type=float, default=2.0, help="the teacher's classifier-free guidance scale")
    p.add_argument("--teacher-runs", nargs="*", default=TEACHER_RUNS,
                   help="SOLVER:STEPS:GUIDANCE teacher schedules also scored (not timed); G = --guidance")
    p.add_argument("--students", nargs="*", default=STUDENTS, help="LABEL=RUN: runs/audio/RUN/")
    p.add_argument("--nfes", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--batch", type=int, default=16, help="batch of the throughput timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-timing", action="store_true", help="quality only (e.g. to score a teacher recipe round)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/audio.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = {k: int(v) for k, v in (kv.split("=") for kv in args.network.split(",") if kv)}
    m = modality(args.teacher, network, args.prediction)
    real, cond, prompts = reference(m, args.samples)
    seconds = m.latent.seconds
    rows: list[dict[str, Any]] = []
    artefacts: dict[str, torch.Tensor] = {}

    other, other_cond, _ = reference(m, args.samples, start=args.samples)
    row = {"model": "real", "solver": "-", "nfe": 0, **m.metrics(other, other_cond, real)}
    rows.append(row)
    print(row, flush=True)
    means = word_means(m)[cond["labels"]["word"]]
    rows.append({"model": "word_mean", "solver": "-", "nfe": 0, **m.metrics(means, cond, real)})
    print(rows[-1], flush=True)

    teacher = m.load_teacher()

    def teacher_draw(solver: str, steps: int, w: float) -> Any:
        model = GuidedDenoiser(teacher, w, m.null_condition)

        def draw(c: Any, n: int, seed: int) -> Any:
            g = torch.Generator().manual_seed(seed)
            return sample(model, torch.randn(n, *m.latent_shape, generator=g), steps, c, solver)
        return draw

    def timing(draw: Any) -> dict[str, Any]:
        """Timed callables: generator and end to end at batch 1, generator at ``--batch``."""
        one, many = slice_cond(cond, 1), slice_cond(cond, args.batch)
        return {"gen1": timed(lambda: draw(one, 1, 1)),
                "e2e1": timed(lambda: m.decode(draw(one, 1, 1).x)),
                "genB": timed(lambda: draw(many, args.batch, 2))}

    with torch.no_grad():
        full = teacher_draw("heun", args.teacher_steps, args.guidance)
        metrics, out = averaged(m, full, cond, real, args.seeds)
        teacher_nfe = out.nfe
        rows.append({"model": "teacher", "solver": "heun", "nfe": out.nfe, "guidance": args.guidance, **metrics})
        artefacts[f"teacher heun {out.nfe} NFE"] = out.x
        print(rows[-1], flush=True)
        for spec in args.teacher_runs:
            solver, steps, w = spec.split(":")
            w_ = args.guidance if w == "G" else float(w)
            metrics, out = averaged(m, teacher_draw(solver, int(steps), w_), cond, real, args.seeds)
            rows.append({"model": "teacher", "solver": solver, "nfe": out.nfe, "guidance": w_, **metrics})
            print(rows[-1], flush=True)

        teacher_times = timing(full)
        for spec in args.students:
            label, _, run = spec.partition("=")
            folder = ROOT / "runs" / "audio" / run
            ckpt = folder / "checkpoints" / "last.ckpt"
            if not ckpt.is_file():
                print(f"skipping {label}: no checkpoint at {ckpt}", flush=True)
                continue
            from unidistill.runs import build, load_checkpoint

            module, _ = build(folder / "config.yaml")
            load_checkpoint(module, ckpt)
            module.eval()
            for nfe in args.nfes:
                def draw(c: Any, n: int, seed: int, nfe: int = nfe, module: Any = module) -> Any:
                    return module.sample_student(c, n, nfe, torch.Generator().manual_seed(seed))

                metrics, out = averaged(m, draw, cond, real, args.seeds)
                row = {"model": label, "run": run, "solver": module.objective.student_solver, "nfe": out.nfe,
                       **metrics}
                if not args.no_timing:
                    t = paired_times({**{f"s_{k}": v for k, v in timing(draw).items()},
                                      **{f"t_{k}": v for k, v in teacher_times.items()}}, args.repeats)
                    row |= {"ms_per_sample": 1000 * statistics.median(t["s_genB"]) / args.batch,
                            "speedup_vs_teacher": paired_ratio(t["t_genB"], t["s_genB"]),
                            "speedup_vs_teacher_batch1": paired_ratio(t["t_gen1"], t["s_gen1"]),
                            "nfe_ratio": teacher_nfe / out.nfe,
                            "rtf_generator": statistics.median(t["s_gen1"]) / seconds,
                            "rtf_end_to_end": statistics.median(t["s_e2e1"]) / seconds,
                            "teacher_rtf_generator": statistics.median(t["t_gen1"]) / seconds}
                    row["speedup_share_of_nfe_ratio"] = row["speedup_vs_teacher"] / row["nfe_ratio"]
                rows.append(row)
                artefacts[f"{label} {out.nfe} NFE"] = out.x
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

        if not args.no_timing:
            t = paired_times({**{f"t_{k}": v for k, v in teacher_times.items()}}, args.repeats)
            trow = next(r for r in rows if r["model"] == "teacher")
            trow |= {"ms_per_sample": 1000 * statistics.median(t["t_genB"]) / args.batch, "speedup_vs_teacher": 1.0,
                     "rtf_generator": statistics.median(t["t_gen1"]) / seconds,
                     "rtf_end_to_end": statistics.median(t["t_e2e1"]) / seconds}

    out_dir = Path(args.out).resolve().parent
    samples_dir = out_dir / f"{Path(args.out).stem}_samples"
    files = m.save_comparison(artefacts, cond, samples_dir, limit=6)
    print(format_table(rows))
    command = "OMP_NUM_THREADS=1 python benchmarks/audio.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results(Path(args.out).stem, command, rows, out_dir, {
        "quality_metric": "fd_spoken_words", "teacher": f"heun {args.teacher_steps} steps, guidance {args.guidance}",
        "samples": args.samples, "prompts": prompts[:6], "artefacts": [str(f.relative_to(ROOT)) for f in files
                                                                      if f.suffix == ".png"],
        "timing": "single thread; generator at batch 1 and --batch, end to end (with Griffin-Lim) at batch 1; "
                  "speed-ups are medians of per-round ratios against the teacher's full schedule"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
