"""Specification tests for the core probability paths, prediction conversions, the diffusers bridge
and the training-time samplers (unidistill/paths.py, unidistill/timesteps.py)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from support.nets import GaussianX0Net

from unidistill import solvers
from unidistill.denoiser import Denoiser
from unidistill.paths import (
    EDM,
    PATHS,
    Prediction,
    RectifiedFlow,
    TrigFlow,
    VPCosine,
    VPDiscrete,
    expand_like,
    path_from_diffusers,
)
from unidistill.timesteps import LogitNormalTime, LogNormalSigmaTime, ShiftedTime, UniformTime

# --- fixtures ------------------------------------------------------------------------------------

PATH_FACTORIES = {
    "rectified_flow": RectifiedFlow,
    "vp_cosine": VPCosine,
    "vp_linear": lambda: VPDiscrete(beta_schedule="linear"),
    "vp_scaled_linear": lambda: VPDiscrete(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    "vp_squaredcos": lambda: VPDiscrete(beta_schedule="squaredcos_cap_v2"),
    "edm": EDM,
    "trigflow": TrigFlow,  # sigma_data = 0.5: not unit variance
    "trigflow_unit": lambda: TrigFlow(sigma_data=1.0),
}
UNIT_VARIANCE = {"vp_cosine", "vp_linear", "vp_scaled_linear", "vp_squaredcos", "trigflow_unit"}
SHAPES = [(5, 8), (5, 3, 8, 8), (5, 4, 2, 6, 6)]

# diffusers scheduler kwargs per beta schedule (scaled_linear with Stable Diffusion's betas).
BETA_SCHEDULES = {
    "linear": {"beta_schedule": "linear"},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
}


def _times(path, n: int, gen: torch.Generator, lo: float = 0.05, hi: float = 0.95) -> torch.Tensor:
    """``n`` times in ``[lo, hi]`` fractions of the path's range (away from the singular ends)."""
    return (lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)) * path.t_max


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- prediction conversions ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(PATH_FACTORIES))
def test_prediction_round_trip(name, shape):
    path = PATH_FACTORIES[name]()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=gen)
    eps = torch.randn(shape, generator=gen)
    t = _times(path, shape[0], gen).float()
    x_t = path.add_noise(x0, eps, t)
    preds = ["eps", "x0", "flow"] + (["v"] if name in UNIT_VARIANCE else [])
    for pred_type in preds:
        raw = path.from_prediction(Prediction(x0, eps), t, pred_type)
        back = path.to_prediction(raw, x_t, t, pred_type)
        assert _rel(back.x0, x0) < 1e-5, (name, pred_type)
        assert _rel(back.eps, eps) < 1e-5, (name, pred_type)


@pytest.mark.parametrize("name", list(PATH_FACTORIES))
def test_raw_outputs_match_their_definitions(name):
    """The raw targets themselves (not only their round trip) are the documented quantities:
    flow = d x_t / dt (finite difference of add_noise), v = alpha eps - sigma x0."""
    path = PATH_FACTORIES[name]()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 5, dtype=torch.float64, generator=gen)
    eps = torch.randn(4, 3, 5, dtype=torch.float64, generator=gen)
    t = _times(path, 4, gen)
    if isinstance(path, VPDiscrete):  # mid-points between knots, where log alpha-bar is smooth
        n = path.num_train_timesteps
        t = (torch.floor(t * n) + 0.5) / n
    pred = Prediction(x0, eps)
    assert torch.equal(path.from_prediction(pred, t, "x0"), x0)
    assert torch.equal(path.from_prediction(pred, t, "eps"), eps)
    h = 1e-7 * path.t_max
    fd = (path.add_noise(x0, eps, t + h) - path.add_noise(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(path.from_prediction(pred, t, "flow"), fd, rtol=1e-6, atol=1e-6)
    if name in UNIT_VARIANCE:
        v = expand_like(path.alpha(t), x0) * eps - expand_like(path.sigma(t), x0) * x0
        torch.testing.assert_close(path.from_prediction(pred, t, "v"), v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["rectified_flow", "edm", "trigflow"])
def test_v_prediction_needs_unit_variance(name):
    path = PATH_FACTORIES[name]()
    x = torch.randn(3, 8)
    t = torch.full((3,), 0.5 * path.t_max)
    with pytest.raises(ValueError, match=r"alpha\^2 \+ sigma\^2 = 1"):
        path.to_prediction(x, x, t, "v")
    with pytest.raises(ValueError, match=r"alpha\^2 \+ sigma\^2 = 1"):
        path.from_prediction(Prediction(x, x), t, "v")


def test_unknown_prediction_type_raises():
    path = RectifiedFlow()
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="valid: eps, x0, v, flow"):
        path.to_prediction(x, x, torch.full((2,), 0.5), "score")


# --- schedules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PATH_FACTORIES))
def test_derivatives_match_finite_differences(name):
    path = PATH_FACTORIES[name]()
    gen = torch.Generator().manual_seed(2)
    t = _times(path, 64, gen, 0.02, 0.98)
    if isinstance(path, VPDiscrete):
        # log alpha-bar is piecewise linear: test strictly inside a segment, at its mid-point.
        n = path.num_train_timesteps
        t = (torch.floor(t * n) + 0.5) / n
        h = 1e-3 / n
    else:
        h = 1e-6 * path.t_max
    fd_a = (path.alpha(t + h) - path.alpha(t - h)) / (2 * h)
    fd_s = (path.sigma(t + h) - path.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(path.d_alpha(t), fd_a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(path.d_sigma(t), fd_s, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(PATH_FACTORIES))
def test_boundary_values(name):
    """t = 0 is exactly data (alpha 1, sigma 0); the noise ratio increases monotonically in t."""
    path = PATH_FACTORIES[name]()
    zero = torch.zeros(1, dtype=torch.float64)
    assert float(path.alpha(zero)) == pytest.approx(1.0, abs=1e-12)
    assert float(path.sigma(zero)) == pytest.approx(0.0, abs=1e-12)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64) * path.t_max
    assert bool((path.noise_ratio(t).diff() > 0).all())


@pytest.mark.parametrize("name", list(PATH_FACTORIES))
def test_t_from_noise_ratio_inverts_noise_ratio(name):
    path = PATH_FACTORIES[name]()
    gen = torch.Generator().manual_seed(3)
    t = _times(path, 256, gen, 0.01, 0.99)
    torch.testing.assert_close(path.t_from_noise_ratio(path.noise_ratio(t)), t, rtol=1e-9, atol=1e-9)
    ratio = path.noise_ratio(t)
    torch.testing.assert_close(path.noise_ratio(path.t_from_noise_ratio(ratio)), ratio, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(PATH_FACTORIES))
def test_time_grid_and_log_snr(name):
    path = PATH_FACTORIES[name]()
    grid = path.time_grid(7)
    assert grid.shape == (8,) and float(grid[0]) == pytest.approx(path.t_max) and float(grid[-1]) == 0.0
    assert bool((grid.diff() < 0).all())
    with pytest.raises(ValueError, match="steps"):
        path.time_grid(0)
    t = grid[1:-1]
    torch.testing.assert_close(path.log_snr(t), torch.log(path.alpha(t) / path.sigma(t)))


def test_edm_time_grid_is_nested_karras_ending_at_zero():
    """n + 1 evenly spaced Karras positions from sigma_max, the last (sigma_min) replaced by 0 (FastGen's t_list), so
    the 2n-step grid holds the n-step one; time_at is the same Karras position map."""
    path = EDM(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    grid = path.time_grid(5)
    ramp = torch.arange(6, dtype=torch.float64) / 5
    karras = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(grid[:-1], karras[:-1])
    assert float(grid[0]) == 80.0 and float(grid[-1]) == 0.0
    for n in (1, 2, 4, 8, 16, 32):
        assert torch.equal(path.time_grid(2 * n)[::2], path.time_grid(n))
    torch.testing.assert_close(path.time_at(1 - ramp[:-1]), grid[:-1])
    assert float(path.time_at(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(0.002)
    torch.testing.assert_close(path.time_grid(2), torch.tensor([80.0, 2.5152, 0.0], dtype=torch.float64), atol=1e-4,
                               rtol=0)


def test_vp_discrete_time_mapping():
    path = VPDiscrete()
    k = torch.arange(1000)
    t = path.t_from_timestep(k)
    assert float(t[0]) == pytest.approx(1e-3) and float(t[-1]) == pytest.approx(1.0)
    torch.testing.assert_close(path.timestep(t), k.double())
    # At the knots alpha^2 is diffusers' alphas_cumprod[k].
    torch.testing.assert_close(path.alpha(t) ** 2, path.alphas_cumprod, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="beta_schedule"):
        VPDiscrete(beta_schedule="sigmoid")


# --- per-frame time ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rectified_flow", "vp_linear", "edm", "trigflow"])
def test_per_frame_time_broadcasts(name):
    path = PATH_FACTORIES[name]()
    gen = torch.Generator().manual_seed(4)
    b, f = 3, 5
    x0 = torch.randn(b, f, 2, 4, 4, generator=gen)
    eps = torch.randn(b, f, 2, 4, 4, generator=gen)
    t = _times(path, b * f, gen).float().reshape(b, f)
    assert expand_like(t, x0).shape == (b, f, 1, 1, 1)
    x_t = path.add_noise(x0, eps, t)
    for j in range(f):  # each frame is noised with its own time
        torch.testing.assert_close(x_t[:, j], path.add_noise(x0[:, j], eps[:, j], t[:, j]))
    back = path.to_prediction(path.from_prediction(Prediction(x0, eps), t, "flow"), x_t, t, "flow")
    assert _rel(back.x0, x0) < 1e-5 and _rel(back.eps, eps) < 1e-5


@pytest.mark.parametrize("bad_shape", [(4,), (3, 4), (5, 3), (3, 5, 2, 4, 4, 1), (3, 5, 3)])
def test_wrong_time_shape_raises(bad_shape):
    path = RectifiedFlow()
    x = torch.randn(3, 5, 2, 4, 4)
    with pytest.raises(ValueError, match="does not lead the latent shape"):
        path.add_noise(x, x, torch.full(bad_shape, 0.5))


# --- diffusers agreement -------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", list(BETA_SCHEDULES))
def test_vp_discrete_add_noise_matches_ddpm(schedule):
    sched = DDPMScheduler(**BETA_SCHEDULES[schedule])
    path = VPDiscrete.from_config(sched.config)
    assert path.beta_schedule == schedule
    torch.testing.assert_close(path.alphas_cumprod.float(), sched.alphas_cumprod, rtol=1e-6, atol=1e-7)
    gen = torch.Generator().manual_seed(5)
    k = torch.tensor([0, 1, 17, 250, 499, 500, 871, 998, 999])
    x0 = torch.randn(len(k), 3, 4, 4, generator=gen)
    eps = torch.randn(len(k), 3, 4, 4, generator=gen)
    ref = sched.add_noise(x0, eps, k)
    ours = path.add_noise(x0, eps, path.t_from_timestep(k).float())
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


class _ConstantNet(torch.nn.Module):
    """A 'network' that returns a fixed output regardless of its input."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x, t, cond=None):
        return self.out


@pytest.mark.parametrize("schedule", list(BETA_SCHEDULES))
def test_ddim_step_matches_diffusers(schedule):
    sched = DDIMScheduler(**BETA_SCHEDULES[schedule], clip_sample=False, set_alpha_to_one=True,
                          timestep_spacing="trailing")
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [999, 749, 499, 249]
    path, pred_type = path_from_diffusers(sched)
    assert pred_type == "eps"
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, 4, 4, generator=gen)
    eps_hat = torch.randn(4, 3, 4, 4, generator=gen)
    for k, s in [(749, 0.5), (249, 0.0)]:  # the last step goes to final_alpha_cumprod = 1, i.e. t = 0
        ref = sched.step(eps_hat, k, x, eta=0.0).prev_sample
        t = path.t_from_timestep(k)
        assert float(t) == pytest.approx(s + 0.25)
        model = Denoiser(_ConstantNet(eps_hat), path, "eps")
        ours = solvers.ddim(model, x, torch.tensor([float(t), s], dtype=torch.float64)).x
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        tt = torch.full((4,), float(t))
        pred = path.to_prediction(eps_hat, x, tt, "eps")
        torch.testing.assert_close(path.add_noise(pred.x0, pred.eps, torch.full((4,), s)), ref, rtol=1e-5, atol=1e-5)


def test_sample_with_ddim_scheduler_matches_core_ddim():
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    path, _ = path_from_diffusers(sched)
    model = Denoiser(GaussianX0Net(path), path, "x0")
    noise = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    ref = solvers.sample_with_scheduler(model, sched, noise, 4)
    grid = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    ours = solvers.ddim(model, noise, grid)
    assert ref.nfe == ours.nfe == 4
    torch.testing.assert_close(ours.x, ref.x, rtol=1e-5, atol=1e-5)


def test_sample_with_flow_match_scheduler_matches_core_euler():
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    path, pred_type = path_from_diffusers(sched)
    assert isinstance(path, RectifiedFlow) and pred_type == "flow"
    model = Denoiser(GaussianX0Net(path), path, "x0")
    noise = torch.randn(16, 4, 2, 3, 3, generator=torch.Generator().manual_seed(8))
    steps = 8
    ref = solvers.sample_with_scheduler(model, sched, noise, steps)
    # diffusers: sigmas = linspace(1, 1/N, steps) followed by 0.
    grid = torch.cat([torch.linspace(1.0, 1.0 / 1000, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    ours = solvers.euler(model, noise, grid)
    assert ref.nfe == ours.nfe == steps
    torch.testing.assert_close(ours.x, ref.x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("diffusers_type,core_type", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_path_from_diffusers_vp(cls, diffusers_type, core_type):
    sched = cls(prediction_type=diffusers_type, **BETA_SCHEDULES["scaled_linear"])
    for source in (sched, sched.config):
        path, pred = path_from_diffusers(source)
        assert isinstance(path, VPDiscrete) and pred == core_type
        assert path.beta_schedule == "scaled_linear"
        torch.testing.assert_close(path.alphas_cumprod.float(), sched.alphas_cumprod, rtol=1e-6, atol=1e-7)


def test_path_from_diffusers_flow():
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    for source in (sched, sched.config, {"_class_name": "FlowMatchEulerDiscreteScheduler", **sched.config}):
        path, pred = path_from_diffusers(source)
        assert isinstance(path, RectifiedFlow) and pred == "flow"
    shifted_schedulers = (
        FlowMatchEulerDiscreteScheduler(shift=3.0),
        FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
    )
    for shifted in shifted_schedulers:
        with pytest.raises(ValueError, match="shift"):
            path_from_diffusers(shifted)
        with pytest.raises(ValueError, match="shift"):
            path_from_diffusers(shifted.config)


def test_path_from_diffusers_rejects_unknown():
    with pytest.raises(ValueError, match="cannot map"):
        path_from_diffusers({"_class_name": "MysteryScheduler"})
    with pytest.raises(ValueError, match="prediction_type"):
        path_from_diffusers({"_class_name": "DDPMScheduler", "beta_schedule": "linear", "prediction_type": "score"})


def test_paths_registry():
    assert set(PATHS) == {"rectified_flow", "vp_cosine", "vp_discrete", "edm", "trigflow"}


# --- training-time samplers ----------------------------------------------------------------------

SAMPLERS = {
    "uniform": lambda lo, hi: UniformTime(lo, hi),
    "logit_normal": lambda lo, hi: LogitNormalTime(0.0, 1.0, lo, hi),
    "shifted": lambda lo, hi: ShiftedTime(3.0, lo, hi),
    "lognormal_sigma": lambda lo, hi: LogNormalSigmaTime(-1.2, 1.2, lo, hi),
}


@pytest.mark.parametrize("path_name", ["rectified_flow", "vp_linear", "edm", "trigflow"])
@pytest.mark.parametrize("sampler_name", list(SAMPLERS))
@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (0.2, 0.7)])
def test_time_samplers_stay_in_range_and_reproduce(path_name, sampler_name, lo, hi):
    path = PATH_FACTORIES[path_name]()
    sampler = SAMPLERS[sampler_name](lo, hi)
    t = sampler(path, 4096, torch.Generator().manual_seed(9))
    assert t.shape == (4096,) and t.dtype == torch.float32
    # fractions of the range are placed by path.time_at (linear, or EDM's Karras positions)
    t_lo, t_hi = (float(path.time_at(torch.tensor(u, dtype=torch.float64))) for u in (lo, hi))
    tol = 1e-6 * path.t_max
    assert float(t.min()) >= t_lo - tol
    assert float(t.max()) <= t_hi + tol
    assert float(t.std()) > 0.01 * (t_hi - t_lo)  # not collapsed onto a point
    assert torch.equal(t, sampler(path, 4096, torch.Generator().manual_seed(9)))
    assert not torch.equal(t, sampler(path, 4096, torch.Generator().manual_seed(10)))


def test_time_sampler_rejects_bad_range():
    with pytest.raises(ValueError, match="t_min"):
        UniformTime(0.8, 0.2)
    with pytest.raises(ValueError, match="shift"):
        ShiftedTime(0.0)


def test_shifted_time_is_the_sd3_warp_of_uniform():
    path, s = RectifiedFlow(), 3.0
    u = UniformTime()(path, 1000, torch.Generator().manual_seed(11)).double()
    t = ShiftedTime(s)(path, 1000, torch.Generator().manual_seed(11)).double()
    torch.testing.assert_close(t, s * u / (1 + (s - 1) * u), rtol=1e-6, atol=1e-6)


def test_logit_normal_time_median():
    t = LogitNormalTime(mean=1.0, std=0.5)(RectifiedFlow(), 20000, torch.Generator().manual_seed(12))
    assert float(t.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)


@pytest.mark.parametrize("path_name", ["edm", "rectified_flow", "vp_cosine"])
def test_lognormal_sigma_moments(path_name):
    """Untruncated, ln(sigma/alpha) ~ N(P_mean, P_std^2) on every path (on EDM that is ln sigma)."""
    path = PATH_FACTORIES[path_name]()
    p_mean, p_std = -1.2, 1.2
    t = LogNormalSigmaTime(p_mean, p_std)(path, 20000, torch.Generator().manual_seed(13))
    log_ratio = torch.log(path.noise_ratio(t.double()))
    # standard errors: mean 1.2/sqrt(2e4) = 0.0085, std ~0.006; allow ~5 standard errors.
    assert float(log_ratio.mean()) == pytest.approx(p_mean, abs=0.04)
    assert float(log_ratio.std()) == pytest.approx(p_std, abs=0.04)
