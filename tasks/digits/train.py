"""Reproduce the digits task's shipped networks (all on the CPU, seeded).

    python -m tasks.digits.train classifier            # evaluation CNN -> weights/classifier.safetensors
    python -m tasks.digits.train vae                   # 32x32 latent variant's AutoencoderKL -> weights/vae/
    unidistill fit --config configs/digits/teacher.yaml --trainer.default_root_dir=runs/digits_teacher
    python -m tasks.digits.train teacher --config configs/digits/teacher.yaml \
        --ckpt runs/digits_teacher/checkpoints/last.ckpt --out tasks/digits/weights/teacher
    python -m tasks.digits.train report                # guidance sweep -> weights/teacher/report.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path as FilePath

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tasks.digits.classifier import WEIGHTS, DigitsClassifier
from tasks.digits.data import load_digit_images

HERE = FilePath(__file__).parent


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1 pixel and Gaussian pixel noise."""
    shifts = torch.randint(-1, 2, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def train_classifier(out: FilePath = WEIGHTS, epochs: int = 40, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = load_digit_images(16)
    perm = torch.randperm(x.shape[0], generator=g)
    held, train = perm[:360], perm[360:]
    model = DigitsClassifier(weights=None).train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(epochs):
        order = train[torch.randperm(train.shape[0], generator=g)]
        for idx in order.split(64):
            loss = F.cross_entropy(model.logits(augment(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model.logits(x[held]).argmax(1) == y[held]).float().mean())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    report = {"heldout_accuracy": acc, "heldout_images": int(held.numel()), "epochs": epochs, "seed": seed,
              "command": "python -m tasks.digits.train classifier"}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


def vae_config() -> dict:
    """A ~0.2M-parameter AutoencoderKL: 32x32x1 images <-> 8x8x4 latents."""
    return {"in_channels": 1, "out_channels": 1, "latent_channels": 4, "block_out_channels": [16, 32, 32],
            "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
            "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 32}


def train_vae(out: FilePath = HERE / "weights" / "vae", steps: int = 800, seed: int = 0,
              kl_weight: float = 1e-4, batch_size: int = 32) -> dict[str, float]:
    """Reconstruction + small KL, as Stable Diffusion's VAE minus the perceptual and GAN terms."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, _ = load_digit_images(32)
    vae = AutoencoderKL(**vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    for _ in range(steps):
        batch = x[torch.randint(0, x.shape[0], (batch_size,), generator=g)]
        post = vae.encode(batch).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.mse_loss(rec, batch) + kl_weight * post.kl().mean() / batch[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(c).latent_dist.mode() for c in x.split(256)])
        rec = torch.cat([vae.decode(c).sample for c in z.split(256)])
        std = float(z.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(str(out))
    report = {"reconstruction_mse": float(F.mse_loss(rec, x)), "latent_std": std, "steps": steps,
              "command": "python -m tasks.digits.train vae"}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def export_teacher(config: str, ckpt: str, out: str) -> FilePath:
    """The EMA network of a teacher-training run as a diffusers pipeline folder (no text encoder)."""
    from modalities.image.pipeline import save_teacher_folder
    from unidistill.runs import build, load_checkpoint

    module, _ = build(config)
    load_checkpoint(module, ckpt)
    net = (module.ema.module if module.ema is not None else module.student).network
    modality = module.modality
    return save_teacher_folder(out, net, modality.scheduler_config, modality.vae)


def teacher_report(folder: str, scales: list[float], steps: int = 25, samples: int = 600, seed: int = 0) -> dict:
    """Guidance sweep of a teacher folder: ``fd_digits`` and ``prompt_accuracy`` of DDIM samples per scale,
    written to ``<folder>/report.json`` (the best scale is the one the distillation configs use)."""
    from modalities.image import ImageModality
    from tasks.digits.data import DigitsDataModule
    from unidistill.conditions import cat_cond, slice_cond
    from unidistill.denoiser import GuidedDenoiser
    from unidistill.solvers import sample

    modality = ImageModality(teacher=folder, text_encoder="minilm", max_prompt_length=16,
                             evaluator=DigitsClassifier())
    dm = DigitsDataModule(val_size=samples, seed=seed)
    dm.setup("validate")
    parts = [modality.to_batch(b) for b in dm.val_dataloader()]
    x, cond = torch.cat([p.x0 for p in parts]), slice_cond(cat_cond([p.cond for p in parts]), samples)
    real, _ = load_digit_images(16)
    teacher = modality.load_teacher()
    rows = []
    for w in scales:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        out = sample(GuidedDenoiser(teacher, w, modality.null_condition), noise, steps, cond, "ddim").x
        metrics = modality.metrics(out, cond, real)
        rows.append({"guidance": w, "steps": steps, "nfe": steps * (1 if w == 1 else 2),
                     "fd_digits": metrics["fd_digits"], "prompt_accuracy": metrics["prompt_accuracy"]})
        print(rows[-1])
    best = min(rows, key=lambda r: r["fd_digits"])
    report = {"sweep": rows, "best_guidance": best["guidance"], "fd_digits": best["fd_digits"],
              "prompt_accuracy": best["prompt_accuracy"], "samples": samples, "reference": "all 1797 real digits",
              "command": f"python -m tasks.digits.train report --out {folder}"}
    (FilePath(folder) / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tasks.digits.train")
    p.add_argument("what", choices=["classifier", "vae", "teacher", "report"])
    p.add_argument("--scales", nargs="*", type=float, default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument("--config")
    p.add_argument("--ckpt")
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.what == "classifier":
        print(train_classifier(FilePath(args.out) if args.out else WEIGHTS))
    elif args.what == "vae":
        print(train_vae(FilePath(args.out) if args.out else HERE / "weights" / "vae"))
    elif args.what == "report":
        print(teacher_report(args.out or str(HERE / "weights" / "teacher"), args.scales))
    else:
        if not (args.config and args.ckpt and args.out):
            p.error("teacher needs --config, --ckpt and --out")
        print(export_teacher(args.config, args.ckpt, args.out))


if __name__ == "__main__":
    main()
