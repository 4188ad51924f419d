"""Probability paths ``x_t = alpha(t) x0 + sigma(t) eps`` and conversions between prediction types.

Convention (docs/design.md §4.1): ``t = 0`` is data, ``t = t_max`` is noise. Time may be ``[B]`` or ``[B, *T]``
(e.g. one time per video frame); scalars are broadcast against a latent by appending trailing
dimensions, never by assuming an image shape.

A network's raw output is one of four prediction types:

* ``eps``  the noise;
* ``x0``   the clean sample;
* ``v``    ``alpha eps - sigma x0`` (only defined when ``alpha^2 + sigma^2 = 1``; Salimans & Ho, 2022);
* ``flow`` the conditional velocity ``d x_t / dt = alpha' x0 + sigma' eps`` (Lipman et al., 2023).

Every path converts any of them to the canonical pair ``(x0, eps)`` and back.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

PredictionType = Literal["eps", "x0", "v", "flow"]
PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v", "flow")
_EPS = 1e-12


def expand_like(a: Tensor, x: Tensor) -> Tensor:
    """Broadcast a time-shaped tensor ``[B]`` or ``[B, *T]`` against ``x`` ``[B, *T, *rest]``."""
    a = torch.as_tensor(a, device=x.device)
    if a.ndim == 0:
        a = a.expand(x.shape[0])
    if a.ndim > x.ndim or tuple(a.shape) != tuple(x.shape[: a.ndim]):
        raise ValueError(
            f"time of shape {tuple(a.shape)} does not lead the latent shape {tuple(x.shape)}; "
            "valid time shapes are [B] or a prefix [B, *T] of the latent's shape"
        )
    return a.reshape(*a.shape, *([1] * (x.ndim - a.ndim))).to(x.dtype)


def check_prediction_type(prediction: str) -> str:
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTION_TYPES)}")
    return prediction


class Prediction(NamedTuple):
    """The canonical output of a denoiser: the clean-sample and noise estimates at one ``(x_t, t)``."""

    x0: Tensor
    eps: Tensor


class Path(ABC):
    """A Gaussian probability path. Subclasses give ``alpha, sigma`` and their time derivatives."""

    t_min: float = 0.0
    t_max: float = 1.0

    # --- schedule -------------------------------------------------------------------------
    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        ...

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        ...

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        ...

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor:
        ...

    @abstractmethod
    def t_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        """Invert ``sigma(t) / alpha(t) = ratio`` (the inverse square-root SNR)."""
        ...

    def noise_ratio(self, t: Tensor) -> Tensor:
        return self.sigma(t) / self.alpha(t).clamp_min(_EPS)

    def log_snr(self, t: Tensor) -> Tensor:
        """``log(alpha / sigma)`` (half the log-SNR), the time variable of DPM-Solver."""
        return torch.log(self.alpha(t).clamp_min(_EPS)) - torch.log(self.sigma(t).clamp_min(_EPS))

    def time_at(self, u: Tensor) -> Tensor:
        """The time at position ``u`` in ``[0, 1]`` of the path's range (0 = the data end, 1 = ``t_max``).

        Linear here. Fraction-based time samplers (``unidistill.timesteps``) and training grids go through it,
        so a path whose natural discretisation is not uniform in ``t`` (EDM's Karras schedule) gets its own."""
        return u * self.t_max

    def time_grid(self, steps: int, t_start: float | None = None, device: Any = None) -> Tensor:
        """``steps + 1`` decreasing times from ``t_start`` (default ``t_max``) to exactly 0."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        start = self.t_max if t_start is None else t_start
        return torch.linspace(start, 0.0, steps + 1, dtype=torch.float64, device=device)

    # --- forward process ------------------------------------------------------------------
    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return expand_like(self.alpha(t), x0) * x0 + expand_like(self.sigma(t), x0) * eps

    def velocity(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Conditional velocity ``alpha' x0 + sigma' eps``; for a ``Prediction`` it is the PF-ODE drift."""
        return expand_like(self.d_alpha(t), x0) * x0 + expand_like(self.d_sigma(t), x0) * eps

    # --- prediction conversions ----------------------------------------------------------
    def _unit_variance(self, t: Tensor) -> None:
        err = (self.alpha(t) ** 2 + self.sigma(t) ** 2 - 1).abs().max()
        if err > 1e-4:
            raise ValueError(
                f"v-prediction needs alpha^2 + sigma^2 = 1, but {type(self).__name__} deviates by {float(err):.3g}; "
                "use 'eps', 'x0' or 'flow' on this path"
            )

    def to_prediction(self, output: Tensor, x_t: Tensor, t: Tensor, prediction: str) -> Prediction:
        """Convert a raw network output of type ``prediction`` into ``(x0, eps)``."""
        check_prediction_type(prediction)
        a, s = expand_like(self.alpha(t), x_t), expand_like(self.sigma(t), x_t)
        if prediction == "x0":
            return Prediction(output, (x_t - a * output) / s.clamp_min(_EPS))
        if prediction == "eps":
            return Prediction((x_t - s * output) / a.clamp_min(_EPS), output)
        if prediction == "v":
            self._unit_variance(t)
            return Prediction(a * x_t - s * output, s * x_t + a * output)
        da, ds = expand_like(self.d_alpha(t), x_t), expand_like(self.d_sigma(t), x_t)
        # u = da x0 + ds eps and x_t = a x0 + s eps  =>  solve the 2x2 system (determinant a ds - s da).
        det = a * ds - s * da
        x0 = (ds * x_t - s * output) / det
        eps = (a * output - da * x_t) / det
        return Prediction(x0, eps)

    def from_prediction(self, pred: Prediction, t: Tensor, prediction: str) -> Tensor:
        """The raw output of type ``prediction`` that corresponds to ``(x0, eps)``."""
        check_prediction_type(prediction)
        x0, eps = pred
        if prediction == "x0":
            return x0
        if prediction == "eps":
            return eps
        if prediction == "v":
            self._unit_variance(t)
            return expand_like(self.alpha(t), x0) * eps - expand_like(self.sigma(t), x0) * x0
        return self.velocity(x0, eps, t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RectifiedFlow(Path):
    """Rectified flow / flow matching: ``x_t = (1 - t) x0 + t eps`` (Liu et al., 2023; Lipman et al., 2023)."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        return ratio / (1 + ratio)


class VPCosine(Path):
    """Variance-preserving cosine path ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``
    (Nichol & Dhariwal, 2021)."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def t_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        return torch.atan(ratio) * (2 / math.pi)


class VPDiscrete(Path):
    """The discrete variance-preserving schedule of DDPM (Ho et al., 2020), as diffusers defines it.

    Diffusers' integer timestep ``k`` (0..N-1) sits at core time ``t = (k + 1) / N``, so that ``t = 0`` is
    exactly data (diffusers' ``final_alpha_cumprod = 1``) and ``t = 1`` is the last training step.
    Between grid points ``log alphā`` is interpolated linearly, which gives the derivatives that
    flow-type conversions need. ``timestep(t)`` maps core time back to the network's units.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
    ) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        n = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            betas = torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
        else:
            raise ValueError(
                f"unknown beta_schedule {beta_schedule!r}; valid: 'linear', 'scaled_linear', 'squaredcos_cap_v2'"
            )
        # diffusers computes cumprod in float32; follow it so add_noise agrees to float precision.
        alphas_cumprod = torch.cumprod(1.0 - betas.float(), dim=0).double()
        self.alphas_cumprod = alphas_cumprod
        self._log_ac = torch.cat([torch.zeros(1, dtype=torch.float64), alphas_cumprod.log()])

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VPDiscrete:
        if config.get("trained_betas") is not None:
            raise ValueError(
                "schedules given as trained_betas are not supported; use beta_start/beta_end/beta_schedule"
            )
        return cls(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            beta_start=float(config.get("beta_start", 0.0001)),
            beta_end=float(config.get("beta_end", 0.02)),
            beta_schedule=str(config.get("beta_schedule", "linear")),
        )

    def timestep(self, t: Tensor) -> Tensor:
        return t * self.num_train_timesteps - 1

    def t_from_timestep(self, k: Tensor) -> Tensor:
        return (torch.as_tensor(k, dtype=torch.float64) + 1) / self.num_train_timesteps

    def _log_alpha_bar(self, t: Tensor) -> tuple[Tensor, Tensor]:
        table = self._log_ac.to(t.device)
        pos = (t.double() * self.num_train_timesteps).clamp(0, self.num_train_timesteps)
        lo = pos.floor().long().clamp(max=self.num_train_timesteps - 1)
        frac = pos - lo
        slope = (table[lo + 1] - table[lo]) * self.num_train_timesteps
        return (table[lo] + frac * (table[lo + 1] - table[lo])).to(t.dtype), slope.to(t.dtype)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self._log_alpha_bar(t)[0])

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt((1 - torch.exp(self._log_alpha_bar(t)[0])).clamp_min(0))

    def d_alpha(self, t: Tensor) -> Tensor:
        la, slope = self._log_alpha_bar(t)
        return 0.5 * slope * torch.exp(0.5 * la)

    def d_sigma(self, t: Tensor) -> Tensor:
        la, slope = self._log_alpha_bar(t)
        ab = torch.exp(la)
        return -0.5 * slope * ab / torch.sqrt((1 - ab).clamp_min(_EPS))

    def t_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        # log alphā = -log(1 + ratio^2); invert the piecewise-linear table (monotone decreasing in t).
        target = -torch.log1p(ratio.double() ** 2)
        table = self._log_ac.to(ratio.device)
        desc = -table  # increasing
        idx = torch.searchsorted(desc, -target).clamp(1, self.num_train_timesteps)
        lo, hi = table[idx - 1], table[idx]
        frac = ((target - lo) / (hi - lo)).clamp(0, 1)
        return ((idx - 1 + frac) / self.num_train_timesteps).to(ratio.dtype)

    def __repr__(self) -> str:
        return f"VPDiscrete(num_train_timesteps={self.num_train_timesteps}, beta_schedule={self.beta_schedule!r})"


class EDM(Path):
    """Variance-exploding path of EDM (Karras et al., 2022, "Elucidating the Design Space of Diffusion-Based
    Generative Models"): ``alpha = 1``, ``sigma = t``, ``t`` in ``[0, sigma_max]``.

    Positions in the range are Karras rho-schedule positions (``time_at``): ``u`` in ``[0, 1]`` maps to
    ``(sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``, so a uniform fraction sampler draws
    uniformly over the Karras index, as DMD2's EDM code does (median sigma about 2.5 for ``sigma_max = 80``).
    ``time_grid(n)`` is ``n + 1`` evenly spaced Karras positions from ``sigma_max`` down, the last (``sigma_min``)
    replaced by exactly 0 (FastGen's ``get_t_list``): nested, ``time_grid(2n)[::2] == time_grid(n)``, which
    progressive distillation needs, and a 2-step grid ``[80, 2.5, 0]`` rather than ``[80, 0.002, 0]``.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0):
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_data, self.rho = sigma_min, sigma_data, rho
        self.t_max = sigma_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        return ratio

    def _karras(self, u: Tensor, top: float) -> Tensor:
        lo, hi = self.sigma_min ** (1 / self.rho), top ** (1 / self.rho)
        return (lo + u * (hi - lo)) ** self.rho

    def time_at(self, u: Tensor) -> Tensor:
        return self._karras(u, self.t_max)

    def time_grid(self, steps: int, t_start: float | None = None, device: Any = None) -> Tensor:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        # i / steps, not linspace: exactly the same positions for 2 * steps at every even index
        u = 1 - torch.arange(steps + 1, dtype=torch.float64, device=device) / steps
        top = self.t_max if t_start is None else t_start
        sig = self._karras(u, top)
        sig[0], sig[-1] = top, 0.0
        return sig

    def __repr__(self) -> str:
        return f"EDM(sigma_max={self.t_max}, sigma_data={self.sigma_data})"


class TrigFlow(Path):
    """TrigFlow (Lu & Song, 2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models").

    ``x_t = cos(t) x0 + sin(t) z`` with ``z = sigma_data * eps``, ``t`` in ``[0, pi/2]``.
    """

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data
        self.t_max = math.pi / 2

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_data * torch.sin(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.sin(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.sigma_data * torch.cos(t)

    def t_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        return torch.atan(ratio / self.sigma_data)

    def __repr__(self) -> str:
        return f"TrigFlow(sigma_data={self.sigma_data})"


class ResidualShift(Path):
    """ResShift's residual-shifting path (Yue et al., 2023, "ResShift: Efficient Diffusion Model for Image
    Super-resolution by Residual Shifting"), written on the residual ``r = x - y`` to a conditioning image ``y``
    (e.g. the upsampled low-resolution input).

    ResShift's marginal ``x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps`` has a mean that depends on ``y``, so
    in image space it is not ``alpha(t) x0 + sigma(t) eps``; on the residual it is exactly that:
    ``x_t - y = (1 - eta_t) (x0 - y) + kappa sqrt(eta_t) eps``, i.e. ``alpha = 1 - eta``,
    ``sigma = kappa sqrt(eta)``. A modality whose latent is the residual therefore runs ResShift with every core
    solver and objective unchanged; its noise prior ``sigma(1) eps`` is ResShift's ``x_T = y + kappa eps``
    (ResShift's ``sqrt(eta_T) = 0.99`` leaves ``0.02 (x0 - y)`` of data at ``t = 1``, which the prior ignores).

    The schedule is ResShift's: ``sqrt(eta)`` grows geometrically in ``u^power``,
    ``sqrt(eta_k) = s_1 (s_T / s_1)^(u_k^p)`` with ``u_k = (k - 1) / (T - 1)``,
    ``s_1 = min(min_noise_level / kappa, min_noise_level)`` and ``s_T = etas_end`` (ResShift's code calls
    ``sqrt(eta_T)`` ``etas_end``). Step ``k`` sits at core time ``t = k / T`` and ``t = 0`` (``eta = 0``) is data;
    between grid points ``sqrt(eta)`` is linear in ``t``, so ``time_grid(T)``
    visits ResShift's steps exactly and every time in between is defined (with derivatives) for continuous-time
    objectives.
    """

    def __init__(self, kappa: float = 2.0, num_steps: int = 15, min_noise_level: float = 0.04,
                 etas_end: float = 0.99, power: float = 0.3) -> None:
        if kappa <= 0 or num_steps < 2 or not 0 < min_noise_level < 1 or not 0 < etas_end < 1 or power <= 0:
            raise ValueError(
                f"ResidualShift needs kappa > 0, num_steps >= 2, 0 < min_noise_level < 1, 0 < etas_end < 1 and "
                f"power > 0; got kappa={kappa}, num_steps={num_steps}, min_noise_level={min_noise_level}, "
                f"etas_end={etas_end}, power={power}"
            )
        self.kappa, self.num_steps, self.power = float(kappa), int(num_steps), float(power)
        self.min_noise_level, self.etas_end = float(min_noise_level), float(etas_end)
        start = min(min_noise_level / kappa, min_noise_level)
        u = torch.linspace(0, 1, num_steps, dtype=torch.float64) ** power
        sqrt_eta = start * (etas_end / start) ** u
        self._sqrt_eta = torch.cat([torch.zeros(1, dtype=torch.float64), sqrt_eta])  # node k at t = k / T

    def sqrt_eta(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``sqrt(eta(t))`` and its time derivative (piecewise linear between ResShift's steps)."""
        table = self._sqrt_eta.to(t.device)
        pos = (t.double() * self.num_steps).clamp(0, self.num_steps)
        lo = pos.floor().long().clamp(max=self.num_steps - 1)
        slope = (table[lo + 1] - table[lo]) * self.num_steps
        value = table[lo] + (pos - lo) * (table[lo + 1] - table[lo])
        return value.to(t.dtype), slope.to(t.dtype)

    def eta(self, t: Tensor) -> Tensor:
        return self.sqrt_eta(t)[0] ** 2

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - self.sqrt_eta(t)[0] ** 2

    def sigma(self, t: Tensor) -> Tensor:
        return self.kappa * self.sqrt_eta(t)[0]

    def d_alpha(self, t: Tensor) -> Tensor:
        s, ds = self.sqrt_eta(t)
        return -2 * s * ds

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.kappa * self.sqrt_eta(t)[1]

    def t_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        # ratio = kappa s / (1 - s^2) is increasing in s on [0, 1): s is the positive root of r s^2 + kappa s - r
        r = ratio.double()
        s = torch.where(r > 0, (torch.sqrt(self.kappa**2 + 4 * r * r) - self.kappa) / (2 * r.clamp_min(_EPS)),
                        torch.zeros_like(r))
        table = self._sqrt_eta.to(ratio.device)
        idx = torch.searchsorted(table, s.clamp(0, float(table[-1]))).clamp(1, self.num_steps)
        lo, hi = table[idx - 1], table[idx]
        frac = ((s - lo) / (hi - lo)).clamp(0, 1)
        return ((idx - 1 + frac) / self.num_steps).to(ratio.dtype)

    def __repr__(self) -> str:
        return (f"ResidualShift(kappa={self.kappa}, num_steps={self.num_steps}, min_noise_level="
                f"{self.min_noise_level}, etas_end={self.etas_end}, power={self.power})")


def path_from_diffusers(scheduler_or_config: Any) -> tuple[Path, str]:
    """Map a diffusers scheduler (or its config dict) to the core path and prediction type it implies."""
    config = dict(getattr(scheduler_or_config, "config", scheduler_or_config))
    cls = str(config.get("_class_name", type(scheduler_or_config).__name__))
    # ``scheduler.config`` (a FrozenDict) carries no ``_class_name``: recognise the family by its keys.
    is_flow = "FlowMatch" in cls or ("_class_name" not in config and "use_dynamic_shifting" in config)
    is_edm = "EDM" in cls or ("_class_name" not in config and "sigma_data" in config)
    if is_flow:
        if config.get("use_dynamic_shifting") or float(config.get("shift", 1.0)) != 1.0:
            raise ValueError(f"{cls} with a time shift is not a plain rectified-flow path; set shift=1.0")
        return RectifiedFlow(), "flow"
    if is_edm:
        path = EDM(
            sigma_min=float(config.get("sigma_min", 0.002)),
            sigma_max=float(config.get("sigma_max", 80.0)),
            sigma_data=float(config.get("sigma_data", 0.5)),
            rho=float(config.get("rho", 7.0)),
        )
        return path, {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(config.get("prediction_type"), "eps")
    if "beta_schedule" in config or "beta_start" in config:
        pred = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(config.get("prediction_type", "epsilon"))
        if pred is None:
            raise ValueError(f"unsupported prediction_type {config.get('prediction_type')!r} in {cls}")
        return VPDiscrete.from_config(config), pred
    raise ValueError(f"cannot map diffusers scheduler {cls!r} to a path; supported: DDPM/DDIM-like, FlowMatch, EDM")


PATHS: dict[str, type[Path]] = {
    "rectified_flow": RectifiedFlow,
    "vp_cosine": VPCosine,
    "vp_discrete": VPDiscrete,
    "edm": EDM,
    "trigflow": TrigFlow,
}
