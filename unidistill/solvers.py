"""Samplers over any denoiser and any latent shape; each returns the sample and the NFE it spent.

A *model* here is anything with ``model(x_t, t, cond) -> Prediction``, a ``path`` and an ``nfe_per_call``
(a ``Denoiser``, a ``GuidedDenoiser`` counting 2 per call, an ``OnPath`` view). Times are scalars on a
decreasing grid that ends at 0; they are broadcast to ``time_shape`` (``[B]`` by default, or e.g.
``[B, T]`` for per-frame time) when the model is called.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from unidistill.paths import Path, RectifiedFlow, VPDiscrete


class SampleResult(NamedTuple):
    x: Tensor
    nfe: int


def initial_latent(path: Path, noise: Tensor, t_start: float | None = None) -> Tensor:
    """The solver's starting point ``sigma(t_start) * eps`` (the prior; data leak at ``t_max`` ignored)."""
    t = torch.tensor(path.t_max if t_start is None else t_start, dtype=torch.float64)
    return noise * float(path.sigma(t))


def _coeffs(path: Path, t: float) -> tuple[float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return float(path.alpha(tt)), float(path.sigma(tt))


def _time(t: float, x: Tensor, time_shape: tuple[int, ...] | None) -> Tensor:
    return torch.full(time_shape or (x.shape[0],), float(t), dtype=x.dtype, device=x.device)


@torch.no_grad()
def ddim(
    model: Any, x: Tensor, grid: Tensor, cond: Any = None, eta: float = 0.0,
    generator: torch.Generator | None = None, time_shape: tuple[int, ...] | None = None,
) -> SampleResult:
    """DDIM (Song et al., 2021, "Denoising Diffusion Implicit Models") on any path.

    ``eta = 0`` is the deterministic first-order ODE step ``x_s = alpha_s x0 + sigma_s eps``;
    ``eta = 1`` is ancestral sampling from the exact Gaussian posterior ``q(x_s | x_t, x0)``.
    """
    path, nfe = model.path, 0
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        pred = model(x, _time(t, x, time_shape), cond)
        nfe += model.nfe_per_call
        a_t, s_t = _coeffs(path, t)
        a_s, s_s = _coeffs(path, s)
        if s_s == 0.0:
            x = a_s * pred.x0
            continue
        ratio = (a_t * s_s) / (a_s * s_t) if a_s > 0 and s_t > 0 else 0.0
        noise_std = eta * s_s * math.sqrt(max(1.0 - ratio**2, 0.0))
        x = a_s * pred.x0 + math.sqrt(max(s_s**2 - noise_std**2, 0.0)) * pred.eps
        if noise_std > 0:
            x = x + noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return SampleResult(x, nfe)


@torch.no_grad()
def euler(
    model: Any, x: Tensor, grid: Tensor, cond: Any = None, time_shape: tuple[int, ...] | None = None, **_: Any
) -> SampleResult:
    """Explicit Euler on the probability-flow ODE ``dx/dt = alpha' x0 + sigma' eps``."""
    nfe = 0
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        tt = _time(t, x, time_shape)
        v = model.path.velocity(*model(x, tt, cond), tt)
        nfe += model.nfe_per_call
        x = x + (s - t) * v
    return SampleResult(x, nfe)


@torch.no_grad()
def heun(
    model: Any, x: Tensor, grid: Tensor, cond: Any = None, time_shape: tuple[int, ...] | None = None, **_: Any
) -> SampleResult:
    """Heun's second-order method on the PF-ODE (Karras et al., 2022); the last step to ``t = 0`` is Euler."""
    nfe = 0
    path = model.path
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        tt = _time(t, x, time_shape)
        d = path.velocity(*model(x, tt, cond), tt)
        nfe += model.nfe_per_call
        x_next = x + (s - t) * d
        if s > 0:
            ss = _time(s, x, time_shape)
            d2 = path.velocity(*model(x_next, ss, cond), ss)
            nfe += model.nfe_per_call
            x_next = x + (s - t) * 0.5 * (d + d2)
        x = x_next
    return SampleResult(x, nfe)


@torch.no_grad()
def dpm_solver_pp_2m(
    model: Any, x: Tensor, grid: Tensor, cond: Any = None, time_shape: tuple[int, ...] | None = None, **_: Any
) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models"): second-order multistep in ``lambda = log(alpha/sigma)`` with data prediction.

    The first step and the final step onto ``t = 0`` are first order (``lower_order_final``).
    ``exp(-h)`` is computed as a ratio of coefficients so that a start at ``alpha = 0`` is exact.
    """
    path, nfe = model.path, 0
    prev_x0: Tensor | None = None
    prev_h = math.inf
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        pred = model(x, _time(t, x, time_shape), cond)
        nfe += model.nfe_per_call
        a_t, s_t = _coeffs(path, t)
        a_s, s_s = _coeffs(path, s)
        if s_s == 0.0:
            x = a_s * pred.x0
            break
        exp_neg_h = (a_t * s_s) / (s_t * a_s)  # = exp(-(lambda_s - lambda_t))
        h = -math.log(exp_neg_h) if exp_neg_h > 0 else math.inf
        if prev_x0 is None or math.isinf(prev_h):
            d = pred.x0
        else:
            half_inv_r = 0.5 * h / prev_h
            d = (1 + half_inv_r) * pred.x0 - half_inv_r * prev_x0
        x = (s_s / s_t) * x + a_s * (1 - exp_neg_h) * d
        prev_x0, prev_h = pred.x0, h
    return SampleResult(x, nfe)


@torch.no_grad()
def consistency_sample(
    model: Any, x: Tensor, grid: Tensor, cond: Any = None, renoise: str = "sde",
    generator: torch.Generator | None = None, time_shape: tuple[int, ...] | None = None, **_: Any
) -> SampleResult:
    """Few-step student sampling (Song et al., 2023, "Consistency Models", Algorithm 1): predict ``x0``,
    re-noise it to the next grid time with fresh noise (``sde``) or the predicted noise (``ode``)."""
    if renoise not in ("sde", "ode"):
        raise ValueError(f"renoise must be 'sde' or 'ode', got {renoise!r}")
    path, nfe = model.path, 0
    times = grid.tolist()
    for i, t in enumerate(times[:-1]):
        tt = _time(t, x, time_shape)
        pred = model(x, tt, cond)
        nfe += model.nfe_per_call
        s = times[i + 1]
        if s <= 0:
            x = pred.x0
            break
        if renoise == "ode":
            eps = pred.eps
        else:
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = path.add_noise(pred.x0, eps, _time(s, x, time_shape))
    return SampleResult(x, nfe)


@torch.no_grad()
def flow_map_sample(
    model: Any, x: Tensor, grid: Tensor, cond: Any = None, time_shape: tuple[int, ...] | None = None, **_: Any
) -> SampleResult:
    """Flow-map jumps (Geng et al., 2025, "Mean Flows for One-step Generative Modeling"):
    ``x <- x - (t - s) u(x, t, s)`` between consecutive grid times, one call each. ``model`` must offer
    ``average_velocity(x, t, r, cond)``, the average PF-ODE velocity over ``[r, t]`` (e.g.
    ``unidistill.objectives.FlowMapModel``)."""
    if not hasattr(model, "average_velocity"):
        raise TypeError(f"the flow_map solver needs a model with average_velocity(x, t, r, cond); "
                        f"got {type(model).__name__}")
    nfe = 0
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        tt = _time(t, x, time_shape)
        x = x - (t - s) * model.average_velocity(x, tt, torch.full_like(tt, s), cond)
        nfe += model.nfe_per_call
    return SampleResult(x, nfe)


SOLVERS: dict[str, Callable[..., SampleResult]] = {
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpm_solver_pp_2m": dpm_solver_pp_2m,
    "ancestral": lambda *a, **k: ddim(*a, **{**k, "eta": 1.0}),
    "consistency": consistency_sample,
    "flow_map": flow_map_sample,
}


def sample(
    model: Any, noise: Tensor, steps: int, cond: Any = None, solver: str = "ddim",
    generator: torch.Generator | None = None, time_shape: tuple[int, ...] | None = None, **kwargs: Any,
) -> SampleResult:
    """Sample from unit noise with ``steps`` grid intervals of the model's path and the named solver."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    grid = model.path.time_grid(steps, device=noise.device)
    x = initial_latent(model.path, noise, float(grid[0]))
    return SOLVERS[solver](model, x, grid, cond, generator=generator, time_shape=time_shape, **kwargs)


@torch.no_grad()
def sample_with_scheduler(
    model: Any, scheduler: Any, noise: Tensor, steps: int, cond: Any = None,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Sample with any diffusers scheduler on a VP (DDPM-family) or flow-matching path.

    The scheduler decides the grid and the update; the model's prediction is converted to the output
    type the scheduler expects (``epsilon``, ``v_prediction``, ``sample``, or flow velocity).
    """
    path = model.path
    scheduler.set_timesteps(steps, device=noise.device)
    # Flow-matching schedulers define neither ``init_noise_sigma`` nor ``scale_model_input`` (both identity).
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    pred_type = getattr(scheduler.config, "prediction_type", None)
    flow = "FlowMatch" in type(scheduler).__name__
    if not flow and not isinstance(path, VPDiscrete):
        raise ValueError(f"{type(scheduler).__name__} needs a VPDiscrete path, the model has {path!r}")
    if flow and not isinstance(path, RectifiedFlow):
        raise ValueError(f"{type(scheduler).__name__} needs a RectifiedFlow path, the model has {path!r}")
    out_type = "flow" if flow else {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[pred_type]
    nfe = 0
    for i, k in enumerate(scheduler.timesteps):
        if flow:
            t = torch.full((x.shape[0],), float(scheduler.sigmas[i]), dtype=x.dtype, device=x.device)
        else:
            t = path.t_from_timestep(k.to(torch.float64)).to(x.dtype).expand(x.shape[0]).to(x.device)
        x_in = scheduler.scale_model_input(x, k) if hasattr(scheduler, "scale_model_input") else x
        pred = model(x_in, t, cond)
        nfe += model.nfe_per_call
        out = path.from_prediction(pred, t, out_type)
        kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        x = scheduler.step(out, k, x, **kwargs).prev_sample
    return SampleResult(x, nfe)


def ode_step(model: Any, x: Tensor, t: Tensor, s: Tensor, cond: Any = None, method: str = "ddim",
             guidance: Tensor | None = None) -> Tensor:
    """One ODE step from per-sample times ``t`` to ``s`` (shape ``[B]`` or ``[B, *T]``), for objectives
    that need a teacher step inside a training iteration. ``ddim`` costs one call, ``heun`` two
    (Euler where ``s = 0``). Call it under ``no_grad`` for targets."""
    from unidistill.paths import expand_like

    kw = {} if guidance is None else {"guidance": guidance}
    pred = model(x, t, cond, **kw)
    if method == "ddim":
        return model.path.add_noise(pred.x0, pred.eps, s)
    if method == "heun":
        d = model.path.velocity(*pred, t)
        dt = expand_like(s - t, x)
        x_e = x + dt * d
        s_safe = torch.where(s > 0, s, t)
        d2 = model.path.velocity(*model(x_e, s_safe, cond, **kw), s_safe)
        return torch.where(expand_like(s > 0, x).bool(), x + dt * 0.5 * (d + d2), x_e)
    raise ValueError(f"unknown ODE step method {method!r}; valid: 'ddim', 'heun'")
