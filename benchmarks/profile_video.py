"""Where a causal video student's streaming time goes, next to the bidirectional teacher it is compared with.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_video.py                 # timings (about a minute)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_video.py --profile       # + torch.profiler tables
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_video.py --cprofile      # + cProfile of the Python side

Builds the teacher and a student exactly as ``benchmarks/video.py`` does (the causvid config's network, the shipped
teacher and the exported student weights) and times, at batch 1 on one thread and in inference mode (as the
benchmark): one teacher call on the 16-frame clip, the teacher's whole clip (Heun 32 steps guided, 126 NFE), a
student chunk call on an empty cache and on a full one (``cache_window`` chunks of context), the time to the first
frame of a 4-step stream and a steady-state chunk (4 denoising calls and the previous chunk's cache write, fused
into the first of them). The machine is shared with other jobs, so every measurement is taken once per round, the
rounds interleave them, and the medians over rounds are reported, in wall time and in thread CPU time (which leaves
out the time other jobs hold the core); the ratios that ``benchmarks/video.py`` reports (teacher clip over time to
first frame, steady FPS over the teacher's) come from the same rounds. Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.video import NET  # noqa: E402
from modalities.video import VideoModality, generate_stream  # noqa: E402
from tasks.moving_digits.text import caption_embeddings  # noqa: E402
from unidistill.denoiser import GuidedDenoiser  # noqa: E402
from unidistill.solvers import sample  # noqa: E402


def clock(fn: Callable[[], object], inner: int) -> tuple[float, float]:
    """Median wall and thread-CPU seconds of ``inner`` back-to-back calls (one sample of a round). CPU time
    leaves out the time the scheduler gives other jobs, so it is the steadier of the two on a shared machine."""
    wall, cpu = [], []
    for _ in range(inner):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return statistics.median(wall), statistics.median(cpu)


def build(run: str, teacher_steps: int, steps: int, guidance: float) -> dict[str, Callable[[], object]]:
    """The measured callables, keyed by the name they are reported under."""
    modality = VideoModality(**NET)
    teacher = GuidedDenoiser(modality.load_teacher(), guidance, modality.null_condition)  # as benchmarks/video.py
    model = modality.load_student(ROOT / "runs" / "video" / run / "export" / "student.safetensors")
    net = model.network
    cond = caption_embeddings()[:1]
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(1, *modality.latent_shape, generator=g)
    chunk = clip[:, : net.chunk_size]
    t_clip, t_chunk = torch.full((1, modality.frames), 0.5), torch.full((1,), 0.5)

    def teacher_clip() -> object:
        return sample(teacher, clip, teacher_steps, cond, "heun", time_shape=modality.time_shape(1))

    def chunk_call(context: int) -> Callable[[], object]:
        """A call on the next chunk of a stream with ``context`` committed chunks, on its own copy of the student
        (a non-storing call leaves the cache as it is, so the copy is set up once)."""
        own = copy.deepcopy(model)
        own.network.reset_cache()
        for _ in range(context):
            with own.network.storing():
                own(chunk, torch.zeros(1), cond)
        return lambda: own(chunk, t_chunk, cond)

    stream = iter(generate_stream(cond, copy.deepcopy(model), steps))  # its own copy: its own cache
    for _ in range(net.chunk_size * (net.cache_window + 1)):  # fill the rolling cache
        next(stream)

    def steady_chunk() -> object:
        return [next(stream) for _ in range(net.chunk_size)]  # one cache write + `steps` denoising calls

    return {
        "teacher_call_16f": lambda: teacher(clip, t_clip, cond),
        "teacher_clip": teacher_clip,
        "student_call_empty_cache": chunk_call(0),
        "student_call_full_cache": chunk_call(net.cache_window),
        f"student_first_frame_{steps}step": lambda: next(iter(generate_stream(cond, model, steps, max_frames=1))),
        f"student_steady_chunk_{steps}step": steady_chunk,
    }


def measure(fns: dict[str, Callable[[], object]], rounds: int, inner: int) -> dict[str, dict[str, float]]:
    """Median over ``rounds`` interleaved rounds of each callable's median over ``inner`` calls, in ms, on
    both clocks (``{"wall": {...}, "cpu": {...}}``)."""
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    with torch.inference_mode():  # as benchmarks/video.py
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(rounds):
            for name, fn in fns.items():
                samples[name].append(clock(fn, 1 if name == "teacher_clip" else inner))
    return {c: {k: 1000 * statistics.median(s[i] for s in v) for k, v in samples.items()}
            for i, c in enumerate(("wall", "cpu"))}


def profile_call(fns: dict[str, Callable[[], object]], name: str, use_cprofile: bool, calls: int = 200) -> None:
    fn = fns[name]
    with torch.inference_mode():
        fn()
        if use_cprofile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                fn()
            prof.disable()
            print(f"\n=== cProfile: {calls} x {name} ===")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
    print(f"\n=== torch.profiler: {calls} x {name} (self CPU time) ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="w2/causvid", help="student weights: runs/video/RUN/export/student.safetensors")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per chunk")
    p.add_argument("--teacher-steps", type=int, default=32, help="Heun steps of the teacher clip (63 evaluations)")
    p.add_argument("--guidance", type=float, default=2.0, help="the teacher's guidance (two calls per evaluation)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inner", type=int, default=21, help="calls per round of every callable but the teacher clip")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of a full-cache chunk call")
    p.add_argument("--cprofile", action="store_true", help="cProfile of a steady-state chunk")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fns = build(args.run, args.teacher_steps, args.steps, args.guidance)
    clocks = measure(fns, args.rounds, args.inner)
    print(f"{'':32s} {'wall ms':>9s} {'cpu ms':>9s}")
    for name in fns:
        print(f"{name:32s} {clocks['wall'][name]:9.3f} {clocks['cpu'][name]:9.3f}")
    for clock_name, ms in clocks.items():
        first, steady = ms[f"student_first_frame_{args.steps}step"], ms[f"student_steady_chunk_{args.steps}step"]
        teacher_fps, student_fps = 1000 * NET["frames"] / ms["teacher_clip"], 1000 * NET["chunk_size"] / steady
        print(f"[{clock_name}] teacher clip / student first frame {ms['teacher_clip'] / first:6.1f}x (target >= 50x); "
              f"steady FPS {student_fps:.0f} / teacher {teacher_fps:.1f} = {student_fps / teacher_fps:.1f}x "
              f"(target >= 20x); teacher call / full-cache chunk call "
              f"{ms['teacher_call_16f'] / ms['student_call_full_cache']:.2f}x")
    if args.profile:
        profile_call(fns, "student_call_full_cache", False)
        profile_call(fns, "teacher_call_16f", False, 50)
    if args.cprofile:
        profile_call(fns, f"student_steady_chunk_{args.steps}step", True)


if __name__ == "__main__":
    main()
