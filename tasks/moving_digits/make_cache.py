"""Generate the teacher cache of ODE pairs that CausVid's regression stage reads.

    python -m tasks.moving_digits.make_cache --out runs/video/teacher_cache --samples 512

Pairs (noise, caption embedding, teacher sample) plus the teacher's states at the 4-step student grid
(t = 0.75, 0.5, 0.25), from the shipped teacher with Heun on 12 steps and classifier-free guidance 2 (the scale
the teacher samples and the students distil at; 46 NFE), captions drawn uniformly.
"""

from __future__ import annotations

import argparse

import torch

from tasks.moving_digits.text import caption_embeddings
from unidistill.cache import generate_cache
from unidistill.runs import build


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/moving_digits/ode_init.yaml")
    p.add_argument("--out", default="runs/video/teacher_cache")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--student-steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=2.0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    module, _ = build(args.config, ["--model.objective.init_args.cache=null"])
    teacher, modality = module.teacher, module.modality
    table = caption_embeddings()

    def conditions(n: int, g: torch.Generator) -> torch.Tensor:
        return table[torch.randint(0, table.shape[0], (n,), generator=g)]

    times = modality.path.time_grid(args.student_steps).tolist()[1:-1]
    generate_cache(teacher, args.out, args.samples, modality.latent_shape, solver="heun", steps=args.steps,
                   shard_size=128, conditions=conditions, guidance=args.guidance,
                   null_condition=modality.null_condition, trajectory_times=times)


if __name__ == "__main__":
    main()
