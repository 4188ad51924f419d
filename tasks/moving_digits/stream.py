"""Stream a causal student for as many frames as asked and write them as a GIF.

    python -m tasks.moving_digits.stream --student runs/video/self_forcing/export/student.safetensors \\
        --caption "a 3 moving to the left" --frames 256 --steps 4 --out runs/video/stream.gif
"""

from __future__ import annotations

import argparse
import time

import torch

from modalities.video import VideoModality, generate_stream, save_gif
from tasks.moving_digits import NETWORK
from tasks.moving_digits.clips import CAPTIONS
from tasks.moving_digits.text import caption_embeddings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True, help="exported causal student (safetensors)")
    p.add_argument("--caption", action="append", help=f"one of the task's captions, e.g. {CAPTIONS[13]!r}")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/video/stream.gif")
    args = p.parse_args(argv)
    captions = args.caption or [CAPTIONS[13]]
    unknown = [c for c in captions if c not in CAPTIONS]
    if unknown:
        raise SystemExit(f"unknown caption(s) {unknown}; the task's captions look like {CAPTIONS[:4]}")
    modality = VideoModality(**NETWORK)
    student = modality.load_student(args.student)
    cond = caption_embeddings()[[CAPTIONS.index(c) for c in captions]]
    start, frames = time.perf_counter(), []
    for frame in generate_stream(cond, student, args.steps, generator=torch.Generator().manual_seed(args.seed),
                                 max_frames=args.frames):
        frames.append(frame)
    seconds = time.perf_counter() - start
    path = save_gif(modality.decode(torch.stack(frames, dim=1)), args.out)
    print(f"{args.frames} frames in {seconds:.2f}s ({args.frames / seconds:.1f} frames/s) -> {path}")


if __name__ == "__main__":
    main()
