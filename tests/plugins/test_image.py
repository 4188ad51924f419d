"""The image modality: diffusers pipeline folders in and out, text conditioning, LoRA students, metrics."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from support.image import SD_SCHEDULER, make_sd_pipeline

from modalities.image import ImageModality, TextEncoder, knn_precision_recall, tiny_pixart_config
from modalities.image.networks import network_timestep
from unidistill.engine import Engine
from unidistill.objectives import ConsistencyDistillation, ConsistencyFunction
from unidistill.paths import VPDiscrete
from unidistill.solvers import consistency_sample


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return make_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("minilm", max_length=8)


def test_text_encoder_caches_each_prompt_once(minilm, monkeypatch):
    calls = []
    forward = minilm.model.forward
    monkeypatch.setattr(minilm.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    a = minilm.encode(["a handwritten seven", "digit two"])
    b = minilm.encode(["digit two", "a handwritten seven", "digit two"])
    assert len(calls) == 1
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[0]) and torch.equal(b[0], b[2])
    assert a.shape == (2, 8, 384)


def test_long_prompt_is_truncated_with_a_warning(minilm, caplog):
    long = "a handwritten seven drawn slowly with a thick black pen on white paper"
    with caplog.at_level(logging.WARNING):
        emb = minilm.encode([long])
    assert emb.shape == (1, 8, 384)
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_pipeline_folder_teacher_matches_the_saved_unet_and_scheduler(sd_folder):
    import diffusers

    modality = ImageModality(teacher=str(sd_folder))
    assert isinstance(modality.path, VPDiscrete) and modality.prediction == "eps"
    assert modality.latent_shape == (4, 8, 8) and modality.image_channels == 3
    teacher = modality.load_teacher()
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(sd_folder / "unet"))
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 12, 32, generator=g)
    t = torch.tensor([0.3, 0.9])
    ours = teacher.raw(x, t, {"emb": emb, "label": torch.tensor([-1, -1])})
    theirs = unet(x, network_timestep(modality.path, t), encoder_hidden_states=emb).sample
    assert torch.allclose(ours, theirs, atol=1e-6)
    # the path reproduces the folder's scheduler
    sched = diffusers.PNDMScheduler.from_pretrained(str(sd_folder / "scheduler"))
    k = torch.tensor([10, 500, 999])
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    expected = sched.add_noise(x0, eps, k)
    got = modality.path.add_noise(x0, eps, modality.path.t_from_timestep(k).float())
    assert torch.allclose(got, expected, atol=1e-5)


def test_prompt_condition_and_null_condition_use_the_folders_text_encoder(sd_folder):
    import diffusers

    modality = ImageModality(teacher=str(sd_folder))
    cond = modality.prompt_condition(["a red cube", "a dog"])
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(sd_folder))
    expected, _ = pipe.encode_prompt(["a red cube", "a dog"], "cpu", 1, False)
    assert torch.allclose(cond["emb"], expected, atol=1e-6)
    null = modality.null_condition(cond)
    empty, _ = pipe.encode_prompt([""], "cpu", 1, False)
    assert torch.allclose(null["emb"], empty.expand(2, -1, -1), atol=1e-6)
    assert modality.prompt_text(cond["prompt_id"]) == ["a red cube", "a dog"]


def test_incomplete_pipeline_folders_are_refused_by_name(sd_folder, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageModality(teacher=str(tmp_path / "nowhere"))
    broken = tmp_path / "no_scheduler"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(FileNotFoundError, match="no scheduler/"):
        ImageModality(teacher=str(broken))
    no_weights = tmp_path / "no_weights"
    shutil.copytree(sd_folder, no_weights)
    for f in (no_weights / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        ImageModality(teacher=str(no_weights))


def test_bad_images_and_lora_rank_are_clear_errors(sd_folder):
    modality = ImageModality(teacher=str(sd_folder))
    with pytest.raises(ValueError, match=r"expected \[B, 3, H, W\]"):
        modality.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="lora_rank must be a positive integer"):
        ImageModality(teacher=str(sd_folder), student="lora", lora_rank=0)
    with pytest.raises(ValueError, match="valid: 'full', 'lora'"):
        ImageModality(teacher=str(sd_folder), student="half")


def test_vae_round_trip_shapes_and_data_batches(sd_folder):
    modality = ImageModality(teacher=str(sd_folder))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    batch = modality.to_batch({"x": images, "prompt": ["a", "b"], "label": torch.tensor([1, 2])})
    assert batch.x0.shape == (2, 4, 8, 8)
    assert modality.decode(batch.x0).shape == (2, 3, 16, 16)
    assert torch.equal(batch.cond["label"], torch.tensor([1, 2]))


def test_lora_student_trains_only_adapters_and_starts_at_the_teacher(sd_folder):
    modality = ImageModality(teacher=str(sd_folder), student="lora", lora_rank=4)
    teacher = modality.load_teacher()
    student = modality.build_student(teacher)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    g = torch.Generator().manual_seed(1)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 12, 32, generator=g)
    cond = {"emb": emb, "label": torch.tensor([-1, -1])}
    t = torch.tensor([0.5, 0.7])
    # gaussian init keeps lora_B = 0, so the LoRA student starts exactly at the teacher
    assert torch.allclose(student.raw(x, t, cond), teacher.raw(x, t, cond), atol=1e-6)


def _distil(modality, steps=3):
    teacher = modality.load_teacher()
    student = modality.build_student(teacher)
    # target decay 0: the target is the student of the previous step (the stop-gradient form)
    objective = ConsistencyDistillation(guidance_scale=2.0, num_intervals=20, target_decay=0.0)
    engine = Engine(objective, student, teacher, latent_shape=modality.latent_shape,
                    null_condition=modality.null_condition)
    opts = engine.make_optimizers(1e-2)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
    batch = modality.to_batch({"x": images, "prompt": ["a cube", "a dog", "a cat", "a tree"],
                               "label": torch.full((4,), -1)})
    for i in range(steps):
        engine.step(batch, i, opts)
    return student


SAMPLE_EXPORT = textwrap.dedent("""
    import sys, torch
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
    assert type(pipe.scheduler).__name__ == "LCMScheduler", type(pipe.scheduler).__name__
    latents = torch.load(sys.argv[2], weights_only=True)
    one = pipe(["a cube", "a dog"], num_inference_steps=1, guidance_scale=1.0, latents=latents,
               output_type="latent").images
    four = pipe(["a cube", "a dog"], num_inference_steps=4, guidance_scale=1.0, latents=latents,
                output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert four.shape == (2, 3, 16, 16) and torch.isfinite(four).all()
    torch.save(one, sys.argv[3])
    print("unidistill" in sys.modules)
""")


def test_full_student_exports_a_pipeline_plain_diffusers_samples(sd_folder, tmp_path):
    modality = ImageModality(teacher=str(sd_folder))
    student = _distil(modality)
    out = tmp_path / "export"
    modality.export(student, out)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.save(latents, tmp_path / "latents.pt")
    script = tmp_path / "sample.py"
    script.write_text(SAMPLE_EXPORT)
    res = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "latents.pt"),
                          str(tmp_path / "one.pt")], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "False"  # plain diffusers: unidistill never imported
    theirs = torch.load(tmp_path / "one.pt", weights_only=True)
    cond = modality.prompt_condition(["a cube", "a dog"])
    with torch.no_grad():
        # diffusers starts from x_T = noise; our sample() from sigma(t_max) noise: feed both the same x_T
        ours = consistency_sample(ConsistencyFunction(student), latents, modality.path.time_grid(1), cond).x
    # LCMScheduler's boundary scalings at timestep 999 differ from ours by < 1e-8
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_student_init_starts_the_student_from_an_exported_student(sd_folder, tmp_path):
    modality = ImageModality(teacher=str(sd_folder))
    distilled = _distil(modality)
    modality.export(distilled, tmp_path / "export")
    again = ImageModality(teacher=str(sd_folder), student_init=str(tmp_path / "export"))
    teacher = again.load_teacher()
    student = again.build_student(teacher)
    for (name, p), q in zip(student.network.named_parameters(), distilled.network.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert student.network.training and all(p.requires_grad for p in student.parameters())
    fresh = modality.load_teacher()  # the teacher itself is untouched by the student's initialisation
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), fresh.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), fresh.parameters(), strict=True))


def test_student_init_errors_name_the_path_and_what_was_expected(sd_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="student_init 'nowhere' does not exist"):
        ImageModality(teacher=str(sd_folder), student_init="nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of.*unet/diffusion_pytorch_model.safetensors"):
        ImageModality(teacher=str(sd_folder), student_init=str(tmp_path / "empty"))
    from safetensors.torch import save_file

    other = ImageModality.tiny().new_denoiser().network  # a UNet of another size
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    wrong = ImageModality(teacher=str(sd_folder), student_init=str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="student initialisation weights .* do not match"):
        wrong.build_student(wrong.load_teacher())


def test_lora_student_exports_an_adapter_the_teacher_pipeline_loads(sd_folder, tmp_path):
    import diffusers

    modality = ImageModality(teacher=str(sd_folder), student="lora", lora_rank=4)
    student = _distil(modality)
    out = tmp_path / "lora"
    files = modality.export(student, out)
    assert any(f.name == "pytorch_lora_weights.safetensors" for f in files)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(sd_folder))
    pipe.load_lora_weights(str(out))
    g = torch.Generator().manual_seed(4)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 12, 32, generator=g)
    t = torch.tensor([0.4, 0.95])
    with torch.no_grad():
        ours = student.raw(x, t, {"emb": emb, "label": torch.tensor([-1, -1])})
        theirs = pipe.unet(x, network_timestep(modality.path, t), encoder_hidden_states=emb).sample
        base = modality.load_teacher().raw(x, t, {"emb": emb, "label": torch.tensor([-1, -1])})
    assert not torch.allclose(ours, base, atol=1e-4)  # training moved the adapter
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_pixart_transformer_teacher_trains_with_the_same_objective():
    config = tiny_pixart_config(channels=1, size=8, text_dim=16, layers=1, heads=2, head_dim=8)
    modality = ImageModality(architecture="PixArtTransformer2DModel", network_config=config,
                             scheduler_config=dict(SD_SCHEDULER, prediction_type="v_prediction"),
                             random_teacher_seed=0)
    teacher = modality.load_teacher()
    student = modality.build_student(teacher)
    batch = modality.example_batch(4, torch.Generator().manual_seed(0))
    objective = ConsistencyDistillation(guidance_scale=1.5, num_intervals=10)
    engine = Engine(objective, student, teacher, latent_shape=modality.latent_shape,
                    null_condition=modality.null_condition)
    before = [p.detach().clone() for p in student.parameters()]
    logs = engine.step(batch, 0, engine.make_optimizers(1e-3))
    assert all(torch.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_knn_precision_recall_identities():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g)
    assert knn_precision_recall(real, real) == (1.0, 1.0)
    far = real + 100.0
    assert knn_precision_recall(far, real) == (0.0, 0.0)
    # a generator covering half the real modes has full precision and about half the recall
    real2 = torch.cat([torch.randn(200, 2, generator=g) * 0.1 + 5, torch.randn(200, 2, generator=g) * 0.1 - 5])
    half = torch.randn(200, 2, generator=g) * 0.1 + 5
    p, r = knn_precision_recall(half, real2)
    assert p > 0.95 and 0.4 < r < 0.6


def test_guidance_input_matches_diffusers_and_starts_at_the_teacher(sd_folder):
    from diffusers import StableDiffusionPipeline

    from modalities.image.networks import guidance_scale_embedding

    w = torch.tensor([1.0, 2.5, 8.0])
    expected = StableDiffusionPipeline.get_guidance_scale_embedding(None, w - 1, embedding_dim=256)
    assert torch.allclose(guidance_scale_embedding(w, 256), expected, atol=1e-6)
    modality = ImageModality(teacher=str(sd_folder))
    teacher = modality.load_teacher()
    student = modality.build_student(teacher, guidance_conditioned=True)
    g = torch.Generator().manual_seed(5)
    x, emb = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 12, 32, generator=g)
    cond, t = {"emb": emb, "label": torch.full((3,), -1)}, torch.tensor([0.2, 0.5, 0.9])
    assert torch.allclose(student.raw(x, t, cond, w), teacher.raw(x, t, cond), atol=1e-6)  # zero-initialised
    assert student.network.config.time_cond_proj_dim == 256
    with pytest.raises(ValueError, match="takes no guidance input"):
        teacher.raw(x, t, cond, w)
