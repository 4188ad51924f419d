"""The moving-digits configs build through the CLI and run real optimizer steps; the task's pieces behave."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.training import train_two_steps

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "moving_digits").glob("*.yaml"))
FAST = ["--trainer.max_steps=2", "--model.objective.init_args.fake_updates_per_student=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_required_configs_are_shipped():
    assert {"teacher", "causvid", "self_forcing"} <= {c.stem for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_configs_build_the_network_the_task_scripts_build(config):
    """The benchmark and the stream command build the modality from ``NETWORK``; a config that drifted from it
    (e.g. another prediction type) would be scored with the wrong denoiser."""
    import yaml

    from tasks.moving_digits import NETWORK

    args = yaml.safe_load(config.read_text())["model"]["modality"]["init_args"]
    assert {k: args.get(k) for k in NETWORK} == NETWORK


def _overrides(config: Path, tmp: Path) -> list[str]:
    text = config.read_text()
    extra = []
    if "fake_updates_per_student" in text:
        extra.append(FAST[1])
    if "TeacherCache" in text:  # the cache is not shipped: a tiny one from `unidistill cache`
        from unidistill.cache import TeacherCache
        from unidistill.cli import main

        root = tmp / "cache"
        main(["cache", "--config", str(config), "--out", str(root), "--samples", "8", "--steps", "2",
              "--shard-size", "8"])
        # with no --trajectory-steps, the cache stores the interior times of the objective's 4-step student grid
        assert TeacherCache(str(root)).trajectory_times == [0.75, 0.5, 0.25]
        extra.append(f"--model.objective.init_args.cache.init_args.root={root}")
    return extra


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_moving_digits_config_runs_optimizer_steps(config, tmp_path):
    from unidistill.runs import build

    torch.manual_seed(0)
    module, dm = build(config, _overrides(config, tmp_path))
    batch = train_two_steps(module, dm)
    if config.stem != "teacher":
        assert module.student.network.causal and not module.teacher.network.causal
        out = module.sample_student(batch.cond, 2, 1, torch.Generator().manual_seed(0))
        assert out.x.shape == (2, *module.modality.latent_shape) and torch.isfinite(out.x).all()


def test_clips_are_reproducible_and_captioned():
    from tasks.moving_digits import CAPTIONS, make_clip

    a, cap, digit = make_clip(5)
    b, _, _ = make_clip(5)
    assert torch.equal(a, b) and a.shape == (16, 1, 32, 32) and a.min() == -1
    assert CAPTIONS[cap].startswith(f"a {digit} moving")
    long, _, _ = make_clip(5, frames=64)
    assert torch.equal(long[:16], a)  # a longer clip continues the same simulation


def test_caption_embeddings_are_cached_and_separable():
    from tasks.moving_digits.text import caption_embeddings, caption_of

    emb = caption_embeddings()
    assert emb.shape == (40, 384)
    assert torch.equal(caption_of(emb), torch.arange(40))


def test_video_metrics_rank_real_clips_above_corrupted_ones():
    from tasks.moving_digits import MovingDigitsEvaluator, make_clips
    from tasks.moving_digits.text import caption_embeddings

    x, cap, _ = make_clips(range(100, 164), held_out=True)
    y, _, _ = make_clips(range(200, 264), held_out=True)
    ev = MovingDigitsEvaluator()
    good = ev.metrics(x, caption_embeddings()[cap], y)
    bad = ev.metrics((x + torch.randn_like(x)).clamp(-1, 1), caption_embeddings()[cap], y)
    assert good["fvd_moving_digits"] < bad["fvd_moving_digits"]
    assert good["fd_frames_moving_digits"] < bad["fd_frames_moving_digits"]
    assert good["identity_consistency"] > 0.8 and good["caption_accuracy"] > 0.7


def test_shipped_ode_init_student_streams_past_the_training_length():
    from modalities.video import VideoModality, generate_stream
    from tasks.moving_digits import NETWORK
    from tasks.moving_digits.text import caption_embeddings

    weights = ROOT / "tasks" / "moving_digits" / "weights" / "ode_init.safetensors"
    modality = VideoModality(**NETWORK, teacher=str(weights.with_name("teacher.safetensors")))
    assert not modality.load_teacher().network.causal
    student = modality.load_student(weights)
    net = student.network
    peak = 0
    for frame in generate_stream(caption_embeddings()[:2], student, steps=1, max_frames=4 * modality.frames):
        assert torch.isfinite(frame).all()
        peak = max(peak, net.cached_frames())
    assert peak == net.cache_window * net.chunk_size
