"""Causal streaming video on moving digits: the bidirectional teacher at its full schedule against the causal
students (CausVid, Self-Forcing, and the teacher-forcing / diffusion-forcing baselines) at 1, 2 and 4 steps
per chunk, in one run on one machine.

The teacher's full schedule is Heun with 32 steps and classifier-free guidance 2 (126 NFE: a conditional and a
null call per evaluation, as Wan's reference sampler does), the guided score the DMD students distil
(``guidance_scale: 2.0`` in their configs; configs/moving_digits/teacher.yaml says why 2). This x0-predicting
teacher's quality is already flat from 8 Heun steps on, so ``--extra-teachers 8:2`` (the default) also scores and
times it at 8 steps (30 NFE), and every student row carries its speed-up against each extra teacher too
(``speedup_vs_<label>``, ``ttff_reduction_vs_<label>``).

    OMP_NUM_THREADS=1 python benchmarks/video.py --out benchmarks/results/video.json

Students are the exported (EMA) weights ``runs/video/<run>/export/student.safetensors`` of the configs in
``configs/moving_digits/`` (``--students LABEL=RUN ...``). Quality: ``fvd_moving_digits`` and
``fd_frames_moving_digits`` (Fréchet distances in the task's own feature network, not I3D/Inception), identity
consistency and caption accuracy, on ``--samples`` clips of 16 frames against held-out real clips with the same
captions. Speed, at batch 1: time to first frame (teacher: the whole clip, it is bidirectional), steady-state frames
per second (frames 17-64 of a stream, timed inside it; teacher: 16 / clip time), and the time to produce 16, 64 and
256 frames (teacher: consecutive independent 16-frame clips; it cannot continue a clip); at batch 16, steady-state
frames per second summed over the batch. Every student's timing runs in ``--repeats`` rounds, each round also timing
the teachers' clips (at batch 16: eight guided teacher evaluations, scaled to the clip's count), and each
speed-up is the median of the per-round ratios (``unidistill.metrics.paired_ratio``): the machine is shared, and a
ratio of two times taken minutes apart moved by up to 2x between students that run the very same network.
Drift: the FVD of frames 193-256 of 256-frame streams against real clips simulated for 256 frames, divided by the
FVD of frames 1-16 of the same streams.
``fvd_moving_digits_vs_teacher``: a student's clips against the (guided) teacher's clips for the same captions,
i.e. how closely it matches what it distils. A GIF of each model is written next to the JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modalities.video import VideoModality, generate_stream, save_gif  # noqa: E402
from tasks.moving_digits import NETWORK, MovingDigitsEvaluator, make_clips  # noqa: E402
from tasks.moving_digits.features import windows  # noqa: E402
from tasks.moving_digits.text import caption_embeddings  # noqa: E402
from unidistill.bench import write_results  # noqa: E402
from unidistill.denoiser import Denoiser, GuidedDenoiser  # noqa: E402
from unidistill.metrics import paired_ratio, paired_times, time_call, timed  # noqa: E402
from unidistill.objectives.rollout import causal_sample  # noqa: E402
from unidistill.solvers import sample  # noqa: E402

STUDENTS = ["CausVid=causvid", "SelfForcing=self_forcing", "TeacherForcing=teacher_forcing",
            "DiffusionForcing=diffusion_forcing"]
NET = {**NETWORK, "teacher": str(ROOT / "tasks/moving_digits/weights/teacher.safetensors")}
EVALS_PER_ROUND = 8  # guided teacher evaluations per timing round of a batch (about a second at batch 16)


def reference(n: int, frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    clips, captions, _ = make_clips(range(seed, seed + n), frames=frames, held_out=True)
    return clips, caption_embeddings()[captions]


def stream_clip(model: Denoiser, cond: torch.Tensor, steps: int, frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack(list(generate_stream(cond, model, steps, generator=g, max_frames=frames)), dim=1)


def steady_seconds(model: Denoiser, cond: torch.Tensor, steps: int) -> float:
    """Seconds to produce frames 17-64 of one stream, timed inside it (its cache is full by then)."""
    frames = generate_stream(cond, model, steps, max_frames=64)
    for _ in range(16):
        next(frames)
    start = time.perf_counter()
    for _ in frames:
        pass
    return time.perf_counter() - start


def stream_timing(model: Denoiser, cond: torch.Tensor, steps: int, rounds: int,
                  teachers: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Batch-1 streaming in ``rounds`` rounds, each also timing every teacher's whole clip (``teachers``: label ->
    timed clip): time to first frame, steady-state FPS (frames 17-64), time to 16/64/256 frames (medians), and
    each ratio to a teacher as the median of its per-round ratios (``unidistill.metrics.paired_ratio``)."""
    fns: dict[str, Callable[[], float]] = {
        "first": timed(lambda: next(iter(generate_stream(cond, model, steps, max_frames=1)))),
        "steady": lambda: steady_seconds(model, cond, steps),
        **{str(n): timed(lambda n=n: list(generate_stream(cond, model, steps, max_frames=n))) for n in (16, 64, 256)},
        **{f"teacher:{label}": clip for label, clip in teachers.items()}}
    t = paired_times(fns, rounds)
    out = {"time_to_first_frame_ms": 1000 * statistics.median(t["first"]),
           "fps_steady": 48 / statistics.median(t["steady"]),
           **{f"time_{n}_frames_s": statistics.median(t[str(n)]) for n in (16, 64, 256)},
           "time_256_over_16": paired_ratio(t["256"], t["16"])}
    for label in teachers:
        clip = t[f"teacher:{label}"]  # 16 frames
        out[f"speedup_vs_{label}"] = paired_ratio([3 * c for c in clip], t["steady"])  # (48 / steady) / (16 / clip)
        out[f"ttff_reduction_vs_{label}"] = paired_ratio(clip, t["first"])
    return out


def batch_timing(model: Denoiser, many: torch.Tensor, steps: int, rounds: int,
                 teachers: dict[str, tuple[Callable[[], float], float]]) -> dict[str, float]:
    """Steady-state FPS summed over a batch of streams, and its ratio to each teacher's batch clip, whose time is
    estimated from a few guided evaluations timed in the same round (``teachers``: label -> (timed evaluations,
    how many such runs make a clip)): one batch clip takes seconds, a few evaluations one. The estimate leaves
    out the solver's own arithmetic; the teacher's row measures the whole clip against it
    (``batch16_clip_over_evals_estimate``)."""
    key = f"batch{many.shape[0]}"
    fns = {"steady": lambda: steady_seconds(model, many, steps),
           **{f"teacher:{label}": fn for label, (fn, _) in teachers.items()}}
    t = paired_times(fns, rounds)
    out = {f"fps_steady_{key}": many.shape[0] * 48 / statistics.median(t["steady"])}
    for label, (_, runs) in teachers.items():
        out[f"speedup_vs_{label}_{key}"] = paired_ratio([3 * runs * e for e in t[f"teacher:{label}"]], t["steady"])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=256,
                   help="clips scored per model (a Frechet distance is biased upward at small sample sizes)")
    p.add_argument("--drift-samples", type=int, default=64)
    p.add_argument("--teacher-steps", type=int, default=32, help="Heun steps of the teacher (2 NFE each but the last)")
    p.add_argument("--teacher", default=NET["teacher"], help="teacher weights (safetensors with its card)")
    p.add_argument("--guidance", type=float, default=2.0,
                   help="the teacher's classifier-free guidance scale (the students' real score uses the same)")
    p.add_argument("--extra-teachers", nargs="*", default=["8:2"],
                   help="STEPS:GUIDANCE teacher schedules also scored and timed; students report speed-ups to each")
    p.add_argument("--steps", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--drift-steps", type=int, nargs="*", default=[4])
    p.add_argument("--students", nargs="*", default=STUDENTS,
                   help="LABEL=RUN pairs: the weights are runs/video/RUN/export/student.safetensors")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds (each student round also times the teachers)")
    p.add_argument("--throughput-batch", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/video.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    modality = VideoModality(**{**NET, "teacher": args.teacher})
    evaluator = MovingDigitsEvaluator()
    out_dir = Path(args.out).parent
    real, cond = reference(args.samples, 16, 900_000)
    one = cond[:1]
    rows: list[dict[str, Any]] = []

    teacher = modality.load_teacher()
    many = cond[: args.throughput_batch]
    batch_key = f"batch{many.shape[0]}"

    def teacher_row(label: str, steps: int, guidance: float) -> dict[str, Any]:
        """Quality on ``cond`` and batch-1 timing of the teacher at one schedule (whole 16-frame clips); keeps
        the timed callables the student rows pair their own timing with."""
        guided = GuidedDenoiser(teacher, guidance, modality.null_condition)

        def clip(c: torch.Tensor, seed: int) -> Any:
            g = torch.Generator().manual_seed(seed)
            return sample(guided, torch.randn(c.shape[0], *modality.latent_shape, generator=g), steps,
                          c, "heun", time_shape=modality.time_shape(c.shape[0]))

        res = clip(cond, 0)
        evals = res.nfe // guided.nfe_per_call
        x_many = torch.randn(many.shape[0], *modality.latent_shape)
        t_many = torch.full(modality.time_shape(many.shape[0]), 0.5)
        k = min(evals, EVALS_PER_ROUND)
        clips_1[label] = timed(lambda: clip(one, 1))
        evals_many[label] = (timed(lambda: [guided(x_many, t_many, many) for _ in range(k)]), evals / k)
        clip_s = time_call(lambda: clip(one, 1), args.repeats)
        # the batch clip against its estimate from evaluations, in paired rounds: the students' batch ratios use
        # the estimate, and this ratio shows how close it is
        tb = paired_times({"clip": timed(lambda: clip(many, 2)), "evals": evals_many[label][0]}, 3)
        from_evals = [evals / k * e for e in tb["evals"]]
        row = {"model": label, "solver": "heun", "nfe": res.nfe, "steps_per_chunk": None, "guidance": guidance,
               **evaluator.metrics(res.x, cond, real), "time_to_first_frame_ms": 1000 * clip_s,
               "fps_steady": 16 / clip_s, "time_16_frames_s": clip_s,
               "time_64_frames_s": time_call(lambda: [clip(one, s) for s in range(4)], 1),
               "time_256_frames_s": time_call(lambda: [clip(one, s) for s in range(16)], 1),
               "ms_per_sample": 1000 * clip_s,
               f"fps_steady_{batch_key}": many.shape[0] * 16 / statistics.median(tb["clip"]),
               f"fps_steady_{batch_key}_from_evals": many.shape[0] * 16 / statistics.median(from_evals),
               f"{batch_key}_clip_over_evals_estimate": paired_ratio(tb["clip"], from_evals)}
        save_gif(modality.decode(res.x[:16]), out_dir / f"video_{label}.gif")
        print(row, flush=True)
        teacher_clips[label] = res.x
        return row

    teacher_clips: dict[str, torch.Tensor] = {}
    clips_1: dict[str, Callable[[], float]] = {}  # label -> timed batch-1 clip
    evals_many: dict[str, tuple[Callable[[], float], float]] = {}  # label -> (timed evaluations, clips' worth)

    # Inference mode for the teacher too: the students' stream runs in it (modalities.video.generate_stream),
    # and both then skip the same autograd bookkeeping.
    with torch.inference_mode():
        rows.append(teacher_row("teacher", args.teacher_steps, args.guidance))
        for spec in args.extra_teachers:
            steps_s, _, w_s = spec.partition(":")
            steps, w = int(steps_s), float(w_s) if w_s else args.guidance
            label = f"teacher_heun{steps}_w{w:g}".replace(".", "_")
            rows.append(teacher_row(label, steps, w))

        long_real, long_cond = reference(args.drift_samples, 256, 950_000)
        for spec in args.students:
            name, _, run = spec.partition("=")
            weights = ROOT / "runs" / "video" / run / "export" / "student.safetensors"
            if not weights.is_file():
                print(f"skipping {name}: {weights} not found", flush=True)
                continue
            model = modality.load_student(weights)
            for steps in args.steps:
                g = torch.Generator().manual_seed(0)
                x = causal_sample(model, torch.randn(cond.shape[0], *modality.latent_shape, generator=g),
                                  model.path.time_grid(steps), cond, generator=g)
                row = {"model": name, "run": run, "solver": "causal", "nfe": x.nfe // (16 // 4),
                       "steps_per_chunk": steps, **evaluator.metrics(x.x, cond, real)}
                # how closely the student matches what it distils (the teacher's clips for the same captions)
                row["fvd_moving_digits_vs_teacher"] = evaluator.fvd(x.x.float().clamp(-1, 1),
                                                                    teacher_clips["teacher"].float().clamp(-1, 1))
                row.update(stream_timing(model, one, steps, args.repeats, clips_1))
                row["ms_per_sample"] = 1000 * row["time_16_frames_s"]
                row.update(batch_timing(model, many, steps, args.repeats, evals_many))
                if steps in args.drift_steps:
                    long = stream_clip(model, long_cond, steps, 256, 7)
                    first = evaluator.fvd(long[:, :16], long_real[:, :16])
                    late = evaluator.fvd(windows(long, 192, 256), windows(long_real, 192, 256))
                    row.update({"fvd_frames_1_16": first, "fvd_frames_193_256": late, "drift": late / first})
                    save_gif(modality.decode(long[:8, ::4]), out_dir / f"video_{Path(run).name}_{steps}step_256f.gif")
                if steps == max(args.steps):
                    save_gif(modality.decode(x.x[:16]), out_dir / f"video_{Path(run).name}_{steps}step.gif")
                rows.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    command = "OMP_NUM_THREADS=1 python benchmarks/video.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results(Path(args.out).stem, command, rows, out_dir,
                         {"teacher": f"heun {args.teacher_steps} steps, guidance {args.guidance}",
                          "timing": "single thread; medians over rounds that interleave each student with the "
                                    "teachers; a ratio is the median of per-round ratios",
                          "quality_metric": "fvd_moving_digits"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
