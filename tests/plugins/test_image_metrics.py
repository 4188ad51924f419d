"""Image metrics from local pretrained weights: real Inception FID (`fid`) and CLIP score (`clip_score`)."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from modalities.image import ImageModality, image_metrics, tiny_unet_config
from modalities.image.pretrained_metrics import INCEPTION_WEIGHTS_FILE, to_uint8_rgb

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red cube", "digit seven", "a seven", "red"]


def _uint8_images(n: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 16x16 uint8 images and the same images in [-1, 1] (exactly on the 8-bit grid)."""
    u = torch.randint(0, 256, (n, channels, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return u, u.float() / 127.5 - 1


# -- real Inception FID --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torch-fidelity's FID InceptionV3 with seeded random weights, saved as the state dict that
    ``FeatureExtractorInceptionV3(feature_extractor_weights_path=...)`` reads with ``torch.load``."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng():
        # build the architecture only: its __init__ would otherwise download (or load) the real weights
        mp.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
        torch.manual_seed(0)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        for m in net.modules():  # He-initialised convolutions keep the features' scale through ~90 layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return path


def _frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) with numpy/scipy. Both covariances live in the span of the
    centred features (rank < 10 of 2048), so they are taken in an orthonormal basis of that span: the same
    distance exactly, and a 10x10 sqrtm instead of a 2048x2048 one (20 s on one core)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    basis = scipy.linalg.orth(np.concatenate([f1 - mu1, f2 - mu2]).T)
    s1, s2 = np.cov(f1 @ basis, rowvar=False), np.cov(f2 @ basis, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def test_images_in_minus_one_one_become_rounded_uint8_rgb():
    u, x = _uint8_images(3, 1, seed=0)
    assert torch.equal(to_uint8_rgb(x), u.repeat(1, 3, 1, 1))
    u3, x3 = _uint8_images(2, 3, seed=1)
    assert torch.equal(to_uint8_rgb(x3), u3)
    ends = to_uint8_rgb(torch.tensor([-1.5, -1.0, 1.0, 1.5]).view(1, 1, 2, 2))
    assert ends.dtype == torch.uint8 and ends[0, 0].flatten().tolist() == [0, 0, 255, 255]


def test_fid_matches_torch_fidelity_features_and_the_frechet_formula(inception_file):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    u_fake, fake = _uint8_images(5, 1, seed=2)
    u_real, real = _uint8_images(5, 1, seed=3)
    out = image_metrics(fake, real, None, None, inception_weights=str(inception_file))
    assert set(out) == {"pixel_mean", "pixel_std", "fid"}
    # independently: torch-fidelity's own extractor on the uint8 RGB images, then the formula in numpy
    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(inception_file))
    with torch.no_grad():
        f_fake, f_real = (extractor(u.repeat(1, 3, 1, 1))[0].double().numpy() for u in (u_fake, u_real))
    expected = _frechet(f_fake, f_real)
    assert expected > 0
    assert out["fid"] == pytest.approx(expected, rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero_and_the_modality_reports_it(inception_file):
    modality = ImageModality(network_config=tiny_unet_config(channels=3), random_teacher_seed=0,
                             inception_weights=str(inception_file))
    _, images = _uint8_images(5, 3, seed=4)
    out = modality.metrics(images, {"label": torch.full((5,), -1)}, images)
    assert abs(out["fid"]) < 1e-3  # the trace terms are of order 1 here
    # no reference, or no weights: no fid
    assert "fid" not in modality.metrics(images, {"label": torch.full((5,), -1)}, None)
    assert "fid" not in image_metrics(images, images, None, None)


def test_missing_inception_weights_name_the_path_and_the_expected_file(tmp_path):
    missing = tmp_path / "nowhere" / "inception.pth"
    _, images = _uint8_images(2, 1, seed=5)
    with pytest.raises(FileNotFoundError) as err:
        image_metrics(images, images, None, None, inception_weights=str(missing))
    assert str(missing) in str(err.value) and INCEPTION_WEIGHTS_FILE in str(err.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in str(err.value)
    with pytest.raises(FileNotFoundError, match="inception.pth"):  # the modality fails before any training
        ImageModality(inception_weights=str(missing))


# -- CLIP score ---------------------------------------------------------------------------------------------------

def _write_clip_tokenizer_files(folder) -> dict[str, int]:
    """A byte-level BPE vocabulary in CLIP's format: single letters (``x`` inside a word, ``x</w>`` ending one),
    left-to-right merges up to each word of ``PROMPTS``, and the two special tokens."""
    letters = string.ascii_lowercase
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": len(letters) + i for i, c in enumerate(letters)}
    merges = []
    for word in sorted({w for p in PROMPTS for w in p.split()}):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return vocab


def _save_tiny_clip(folder, seed: int = 0, flip_text: bool = False):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True)
    vocab = _write_clip_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    assert tokenizer.tokenize("a red cube") == ["a</w>", "red</w>", "cube</w>"]
    special = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
               "pad_token_id": vocab["<|endoftext|>"]}
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(text_config={"vocab_size": len(vocab), "max_position_embeddings": 16, **special, **small},
                        vision_config={"image_size": 32, "patch_size": 8, **small}, projection_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    if flip_text:  # every text feature negated: every cosine flips sign
        model.text_projection.weight.data.neg_()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(str(folder))
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return _save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def _cosines(folder, u: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """100 * cos(image features, text features) per pair, straight from transformers after the processor."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(folder)).eval()
    processor = CLIPProcessor.from_pretrained(str(folder))
    with torch.no_grad():
        pixels = processor(images=list(u.repeat(1, 3, 1, 1) if u.shape[1] == 1 else u), return_tensors="pt")
        text = processor(text=prompts, return_tensors="pt", padding=True)
        image_f = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
        text_f = model.get_text_features(input_ids=text["input_ids"],
                                         attention_mask=text["attention_mask"]).pooler_output
    return 100 * torch.nn.functional.cosine_similarity(image_f, text_f, dim=-1)


def test_clip_score_is_the_clamped_mean_cosine_of_clip_features(clip_folder, tmp_path):
    u, images = _uint8_images(4, 1, seed=6)
    out = image_metrics(images, None, None, None, clip_model=str(clip_folder), prompts=PROMPTS)
    assert set(out) == {"pixel_mean", "pixel_std", "clip_score"}
    mean = float(_cosines(clip_folder, u, PROMPTS).mean())
    assert mean > 0, "seeded so that the clamp at 0 is not what makes the two agree"
    assert out["clip_score"] == pytest.approx(mean, rel=1e-5)
    # torchmetrics clamps the mean at 0: with the text features negated the mean cosine is -mean, the score 0
    flipped = _save_tiny_clip(tmp_path / "flipped", flip_text=True)
    assert float(_cosines(flipped, u, PROMPTS).mean()) == pytest.approx(-mean, rel=1e-5)
    assert image_metrics(images, None, None, None, clip_model=str(flipped), prompts=PROMPTS)["clip_score"] == 0.0


def test_the_modality_scores_samples_against_their_own_prompts(clip_folder):
    modality = ImageModality(text_encoder="minilm", max_prompt_length=8, network_config=tiny_unet_config(channels=3),
                             clip_model=str(clip_folder))
    u, images = _uint8_images(4, 3, seed=7)
    cond = modality.prompt_condition(PROMPTS)
    out = modality.metrics(images, cond, None)
    assert out["clip_score"] == pytest.approx(max(float(_cosines(clip_folder, u, PROMPTS).mean()), 0.0), rel=1e-5)


def test_a_missing_clip_folder_is_named(tmp_path):
    _, images = _uint8_images(2, 1, seed=8)
    missing = tmp_path / "no_clip"
    with pytest.raises(FileNotFoundError, match="no_clip.*does not exist"):
        image_metrics(images, None, None, None, clip_model=str(missing), prompts=PROMPTS[:2])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*has no config.json"):
        image_metrics(images, None, None, None, clip_model=str(tmp_path / "empty"), prompts=PROMPTS[:2])
    with pytest.raises(FileNotFoundError, match="no_clip"):  # the modality fails before any training
        ImageModality(clip_model=str(missing))
