"""The ResShift residual-shifting path (unidistill.paths.ResidualShift): ResShift's marginal and schedule exactly,
the Path contract (conversions, derivatives, inverse noise ratio), and the core solvers on it."""

from __future__ import annotations

import math

import pytest
import torch

from unidistill import solvers
from unidistill.paths import Prediction, ResidualShift


def resshift_sqrt_etas(kappa: float, steps: int, min_noise_level: float, etas_end: float, power: float):
    """ResShift's ``get_named_eta_schedule('exponential', ...)`` written out (its published recipe)."""
    start = min(min_noise_level / kappa, min_noise_level)
    increaser = math.exp(1 / (steps - 1) * math.log(etas_end / start))
    return [start * increaser ** ((k / (steps - 1)) ** power * (steps - 1)) for k in range(steps)]


@pytest.mark.parametrize("kappa", [2.0, 0.5])
def test_schedule_nodes_are_resshifts(kappa):
    path = ResidualShift(kappa=kappa, num_steps=15)
    expected = torch.tensor(resshift_sqrt_etas(kappa, 15, 0.04, 0.99, 0.3), dtype=torch.float64)
    t = torch.arange(1, 16, dtype=torch.float64) / 15
    assert torch.allclose(path.sqrt_eta(t)[0], expected, rtol=1e-12, atol=0)
    assert float(path.alpha(torch.zeros(1, dtype=torch.float64))) == 1.0
    assert float(path.sigma(torch.zeros(1, dtype=torch.float64))) == 0.0
    assert torch.allclose(path.sigma(t[-1:]), torch.tensor([kappa * 0.99], dtype=torch.float64))


def test_residual_marginal_is_resshifts_image_space_marginal():
    """x_t = y + add_noise(x0 - y) equals x0 + eta (y - x0) + kappa sqrt(eta) eps."""
    g = torch.Generator().manual_seed(0)
    path = ResidualShift(kappa=2.0)
    x0, y, eps = (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(4, generator=g, dtype=torch.float64)
    eta = path.eta(t)[:, None, None, None]
    resshift = x0 + eta * (y - x0) + 2.0 * eta.sqrt() * eps
    assert torch.allclose(y + path.add_noise(x0 - y, eps, t), resshift, atol=1e-12)


def test_conversions_round_trip_and_derivatives_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    path = ResidualShift(kappa=1.0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, 4, 4, generator=g,
                                                                                     dtype=torch.float64)
    # away from the grid nodes, where the piecewise-linear sqrt(eta) has a kink
    t = (torch.arange(6, dtype=torch.float64) + 0.37) / 6 * 0.999
    x_t = path.add_noise(x0, eps, t)
    for kind in ("eps", "x0", "flow"):
        raw = path.from_prediction(Prediction(x0, eps), t, kind)
        back = path.to_prediction(raw, x_t, t, kind)
        assert torch.allclose(back.x0, x0, atol=1e-9) and torch.allclose(back.eps, eps, atol=1e-9), kind
    h = 1e-7
    for f, df in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        assert torch.allclose(df(t), fd, rtol=1e-5, atol=1e-7)


def test_t_from_noise_ratio_inverts_noise_ratio():
    path = ResidualShift(kappa=2.0)
    t = torch.linspace(0.01, 1.0, 101, dtype=torch.float64)
    assert torch.allclose(path.t_from_noise_ratio(path.noise_ratio(t)), t, atol=1e-9)


def test_ddim_on_the_path_reaches_a_point_mass_exactly():
    """With a denoiser that knows x0 (a point mass), deterministic DDIM over ResShift's 15 steps lands on it."""
    path = ResidualShift(kappa=2.0)
    target = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))

    class Oracle(torch.nn.Module):
        nfe_per_call = 1

        def __init__(self) -> None:
            super().__init__()
            self.path = path

        def forward(self, x_t, t, cond=None, guidance=None):
            a = path.alpha(t)[:, None, None, None]
            s = path.sigma(t)[:, None, None, None]
            return Prediction(target, (x_t - a * target) / s)

    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    out = solvers.sample(Oracle(), noise, 15, solver="ddim")
    assert out.nfe == 15 and torch.allclose(out.x, target, atol=1e-5)


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="kappa=-1"):
        ResidualShift(kappa=-1)
    with pytest.raises(ValueError, match="num_steps=1"):
        ResidualShift(num_steps=1)
