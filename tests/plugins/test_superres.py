"""The super-resolution plugin: degradations, tiled inference, the metrics (LR consistency, ST-LPIPS, NIQE) and bad
input. Task, configs and regression-matrix rows are in tests/test_superres_task.py."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import torch
from torch import nn

from modalities.superres import SuperResModality, TiledDenoiser
from modalities.superres.degradation import Degradation, downsample, upsample
from modalities.superres.inference import as_rgb
from modalities.superres.metrics import lr_psnr, psnr_y
from modalities.superres.tiling import ramp, tile_starts
from unidistill.denoiser import Denoiser
from unidistill.paths import Prediction, RectifiedFlow

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def photo_crop(size: int = 64) -> torch.Tensor:
    from tasks.photo_sr import load_photo

    return load_photo("coffee")[None, :, 100:100 + size, 200:200 + size]


# --- degradations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bicubic", "realistic"])
def test_degradation_shapes_and_determinism_per_seed(kind):
    hr = photo_crop(64).repeat(3, 1, 1, 1)
    deg = Degradation(kind, scale=4)
    a = deg(hr, np.random.default_rng(5))
    b = deg(hr, np.random.default_rng(5))
    c = deg(hr, np.random.default_rng(6))
    assert a.shape == (3, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert torch.equal(a, c) == (kind == "bicubic")  # only the realistic pipeline draws
    if kind == "realistic":  # blur + noise + JPEG: further from the clean bicubic LR than nothing
        assert float((a - downsample(hr, 4)).abs().mean()) > 0.01


def test_bicubic_downsampling_of_a_constant_is_exact_and_sides_must_divide():
    x = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(downsample(x, 4), torch.full((1, 3, 8, 8), 0.25), atol=1e-6)
    with pytest.raises(ValueError, match="multiples of the scale factor 4"):
        downsample(torch.zeros(1, 3, 30, 32), 4)
    with pytest.raises(ValueError, match="unknown degradation 'gaussian'"):
        Degradation("gaussian")


# --- tiling ------------------------------------------------------------------------------------------
class Pointwise(nn.Module):
    """A per-pixel denoiser (1x1 convolutions): tiles cannot change its output."""

    nfe_per_call = 1

    def __init__(self) -> None:
        super().__init__()
        self.path = RectifiedFlow()
        self.conv = nn.Conv2d(6, 3, 1)

    def forward(self, x_t, t, cond=None, guidance=None):
        x0 = self.conv(torch.cat([x_t, cond["up"]], 1)) * (1 + t[:, None, None, None])
        return Prediction(x0, (x_t - (1 - t[:, None, None, None]) * x0) / t[:, None, None, None])


def test_tile_starts_cover_the_image_and_blending_weights_sum_to_one_inside_overlaps():
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_starts(20, 32, 8) == [0]
    w = torch.zeros(100, dtype=torch.float64)
    for s in tile_starts(100, 32, 8):
        w[s:s + 32] += ramp(s, 32, 8, 100)
    assert float(w.min()) > 0  # every pixel is covered with positive weight
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 8, 8)


@pytest.mark.parametrize("overlap", [0, 6])
def test_tiled_pointwise_model_equals_whole_image_exactly(overlap):
    g = torch.Generator().manual_seed(0)
    model = Pointwise()
    x = torch.randn(2, 3, 40, 56, generator=g)
    cond = {"up": torch.randn(2, 3, 40, 56, generator=g), "lr": torch.randn(2, 3, 10, 14, generator=g)}
    t = torch.tensor([0.3, 0.8])
    whole = model(x, t, cond)
    tiled = TiledDenoiser(model, tile=16, overlap=overlap, batch=3)(x, t, cond)
    assert torch.allclose(tiled.x0, whole.x0, atol=1e-6) and torch.allclose(tiled.eps, whole.eps, atol=1e-5)


def tiny_unet_denoiser(seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    return SuperResModality.tiny().load_teacher()


def test_non_overlapping_tiles_equal_each_tile_run_alone_and_overlap_blends_seamlessly():
    den = tiny_unet_denoiser()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 32, 48, generator=g)
    cond = {"up": torch.randn(1, 3, 32, 48, generator=g)}
    t = torch.tensor([0.5])
    abut = TiledDenoiser(den, tile=16, overlap=0)(x, t, cond).x0
    for r in (0, 16):
        for c in (0, 16, 32):
            alone = den(x[..., r:r + 16, c:c + 16], t, {"up": cond["up"][..., r:r + 16, c:c + 16]}).x0
            assert torch.allclose(abut[..., r:r + 16, c:c + 16], alone, atol=1e-6)
    whole = den(x, t, cond).x0
    blended = TiledDenoiser(den, tile=32, overlap=16)(x, t, cond).x0
    # seamless: the blended tiling is closer to the whole-image output than abutting tiles, and across the column
    # where abutting tiles meet (15 | 16) its pixel-to-pixel change is the whole image's, where theirs jumps
    assert float((blended - whole).abs().mean()) < float((abut - whole).abs().mean())
    jump = lambda y: y[..., 16] - y[..., 15]  # noqa: E731
    seam_error = lambda y: float((jump(y) - jump(whole)).abs().mean())  # noqa: E731
    assert seam_error(blended) < 0.5 * seam_error(abut)


# --- metrics -----------------------------------------------------------------------------------------
def test_lr_consistency_on_a_known_case():
    sr = torch.zeros(2, 3, 32, 32)  # 0.5 in [0, 1]
    lr = torch.full((2, 3, 8, 8), 0.1)  # 0.55 in [0, 1]: every pixel off by 0.05
    assert math.isclose(lr_psnr(sr, lr, 4), 20 * math.log10(1 / 0.05), rel_tol=1e-5)
    hr = photo_crop(64)
    assert lr_psnr(hr, downsample(hr, 4), 4) > 80  # the ground truth explains its own bicubic LR (to float error)


def test_psnr_y_of_identical_images_is_infinite_and_drops_with_noise():
    hr = photo_crop(64)
    noisy = hr + 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))
    assert psnr_y(noisy, hr) < psnr_y(hr + 0.01, hr) < float("inf")


def test_st_lpips_loads_offline_and_orders_distortions(no_network):
    from modalities.superres.stlpips import st_lpips_alex

    st_lpips_alex.cache_clear()
    net = st_lpips_alex()
    x = photo_crop(128)
    shifted = torch.roll(x, 1, dims=-1)[..., 1:]
    with torch.no_grad():
        same = float(net(x, x)[0])
        shift = float(net(x[..., 1:], shifted)[0])
        bicubic = float(net(upsample(downsample(x, 4), 4), x)[0])
    assert same == 0.0 and 0 < shift < 0.02 < 0.2 < bicubic


def test_niqe_loads_offline_and_ranks_real_photos_above_bicubic(no_network):
    from modalities.superres.niqe import niqe, pristine_model
    from tasks.photo_sr import crop_to_multiple, load_photo

    pristine_model.cache_clear()
    real = crop_to_multiple(load_photo("chelsea"), 4)[None]
    bicubic = upsample(downsample(real, 4), 4)
    assert niqe(real) < niqe(bicubic) - 3  # measured 4.3 against 14.6
    with pytest.raises(ValueError, match="at least 96x96"):
        niqe(torch.zeros(1, 3, 64, 64))


# --- bad input ---------------------------------------------------------------------------------------
def test_grayscale_is_converted_and_rgba_refused():
    gray = np.full((8, 8), 255, dtype=np.uint8)
    assert torch.equal(as_rgb(gray), torch.ones(3, 8, 8))
    assert as_rgb(torch.zeros(1, 5, 7)).shape == (3, 5, 7)
    with pytest.raises(ValueError, match="RGBA input is refused"):
        as_rgb(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        as_rgb(np.zeros((8, 8, 3), dtype=np.float64))


def test_an_lr_size_the_network_does_not_accept_is_padded_and_cropped_back():
    m = SuperResModality(scale=2, patch=16, blocks=(8, 16, 16), tile=16, tile_overlap=4)
    assert m.multiple == 4  # x2 outputs of a 7x9 input are 14x18: not multiples of 4
    out = m.upscale(m.load_teacher(), torch.zeros(3, 7, 9), steps=1, progress=False)
    assert out.shape == (3, 14, 18) and torch.isfinite(out).all()


def test_an_image_too_large_for_one_piece_is_tiled_automatically():
    m = SuperResModality.tiny()  # tile 16, overlap 4
    den = m.load_teacher()
    shapes = []
    hook = den.network.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape[-2:])))
    lr = torch.rand(3, 12, 10) * 2 - 1
    m.max_pixels = 48 * 40 - 1
    auto = m.upscale(den, lr, steps=2, progress=False)
    assert set(shapes) == {(16, 16)}
    m.max_pixels = 10**9
    shapes.clear()
    forced = m.upscale(den, lr, steps=2, progress=False, tile=16)
    whole = m.upscale(den, lr, steps=2, progress=False)
    hook.remove()
    assert torch.equal(auto, forced) and auto.shape == whole.shape == (3, 48, 40)


def test_weights_for_another_scale_are_refused_by_their_card(tmp_path):
    m = SuperResModality.tiny()
    files = m.export(m.load_teacher(), tmp_path)
    card = json.loads(files[1].read_text())
    assert card["scale"] == 4 and card["latent"] == "residual" and "ResidualShift" in card["path"]
    other = SuperResModality(**{**_tiny_args(), "scale": 2, "teacher": str(files[0])})
    with pytest.raises(ValueError, match="scale: weights 4, configured 2"):
        other.load_teacher()
    same = SuperResModality(**{**_tiny_args(), "teacher": str(files[0])})
    assert same.load_teacher() is not None


def _tiny_args():
    return {"patch": 16, "blocks": (8, 16), "tile": 16, "tile_overlap": 4, "path_args": {"num_steps": 4}}


def test_residual_shift_needs_the_residual_latent_and_unknown_names_are_errors():
    with pytest.raises(ValueError, match="needs latent='residual'"):
        SuperResModality(latent="image", path="residual_shift")
    with pytest.raises(ValueError, match="unknown latent 'hr'"):
        SuperResModality(latent="hr")
    image = SuperResModality(**{**_tiny_args(), "latent": "image", "path": "rectified_flow", "path_args": {}})
    batch = image.example_batch(2, torch.Generator().manual_seed(0))
    assert torch.allclose(image.images(batch.x0, batch.cond), batch.x0.clamp(-1, 1))


def test_perceptual_distance_decodes_residuals_and_passes_gradients():
    from modalities.superres.perceptual import STLPIPSDistance
    from modalities.superres.stlpips import st_lpips_alex

    m = SuperResModality(**{**_tiny_args(), "patch": 32})
    batch = m.example_batch(2, torch.Generator().manual_seed(0))
    pred = (batch.x0 + 0.1 * torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(1)))
    pred.requires_grad_(True)
    d = STLPIPSDistance("residual")(pred, batch.x0, batch.cond)
    expected = st_lpips_alex()(pred.detach() + batch.cond["up"], batch.x0 + batch.cond["up"])
    assert d.shape == (2,) and torch.allclose(d.detach(), expected, atol=1e-6)
    d.sum().backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="at least 24x24"):
        st_lpips_alex()(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def test_lr_consistency_measurement_decodes_residuals_to_the_lr_input_and_passes_gradients():
    from modalities.superres.perceptual import LRConsistency

    m = SuperResModality(**{**_tiny_args(), "patch": 32})
    batch = m.example_batch(2, torch.Generator().manual_seed(0))
    a = LRConsistency(4, "residual")
    # the ground-truth residual decodes to the HR image, whose bicubic x4 is the (bicubic-degraded) LR input
    torch.testing.assert_close(a(batch.x0, batch.cond), batch.cond["lr"], atol=1e-5, rtol=0)
    hr = batch.x0 + batch.cond["up"]
    torch.testing.assert_close(LRConsistency(4, "image")(hr, batch.cond), a(batch.x0, batch.cond))
    pred = batch.x0.clone().requires_grad_(True)
    a(pred, batch.cond).sum().backward()
    assert float(pred.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="latent must be"):
        LRConsistency(4, "rgb")


def test_comparison_png_has_one_column_per_row_label(tmp_path):
    from PIL import Image

    m = SuperResModality.tiny()
    batch = m.example_batch(3, torch.Generator().manual_seed(0))
    (png,) = m.save_comparison({"teacher": batch.x0, "student": batch.x0}, batch.cond, tmp_path)
    w, h = Image.open(png).size
    assert w == 4 * 16 and h == 14 + 3 * 16  # LR | bicubic | teacher | student, 3 rows of 16x16, a label line


def test_a_guidance_input_starts_as_the_teacher():
    m = SuperResModality.tiny()
    teacher = m.load_teacher()
    student = m.build_student(teacher, guidance_conditioned=True)
    batch = m.example_batch(2, torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.5)
    with torch.no_grad():
        a = teacher(batch.x0, t, batch.cond).x0
        b = student(batch.x0, t, batch.cond, torch.full((2,), 0.3)).x0
    assert m.guidance_input and torch.equal(a, b)


def test_a_warm_start_from_the_regression_network_starts_as_it_at_every_noisy_input(tmp_path):
    regression = SuperResModality(**{**_tiny_args(), "regression": True, "path_args": {"num_steps": 4, "kappa": 2.0}})
    files = regression.export(regression.load_teacher(), tmp_path)
    assert json.loads(files[1].read_text())["regression"] is True
    warm = SuperResModality(**{**_tiny_args(), "warm_start": str(files[0])}).new_denoiser()  # another kappa: fine
    base = regression.load_network(files[0])
    batch = SuperResModality.tiny().example_batch(2, torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 1.0])
    with torch.no_grad():
        a = base(batch.x0, t, batch.cond).x0
        for x_t in (batch.x0, torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(2))):
            assert torch.allclose(warm(x_t, t, batch.cond).x0, a, atol=1e-6)
    diffusion = SuperResModality(**_tiny_args())
    other = diffusion.export(diffusion.load_teacher(), tmp_path / "diffusion")
    with pytest.raises(ValueError, match="regression: weights False, configured True"):
        SuperResModality(**{**_tiny_args(), "warm_start": str(other[0])}).new_denoiser()
    with pytest.raises(ValueError, match="needs regression=false"):
        SuperResModality(**{**_tiny_args(), "regression": True, "warm_start": str(files[0])})
