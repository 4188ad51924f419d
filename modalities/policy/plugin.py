"""The ``policy`` modality: robot diffusion policies whose latents are normalised action chunks.

Latents are ``[B, horizon, action_dim]`` action chunks normalised per dimension to ``[-1, 1]``; conditions are
normalised observation histories ``[B, n_obs_steps, obs_dim]`` (or ``{"state", "image"}`` dicts with the image
option). The teacher recipe is "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion" (Chi et al.,
2023): a DDPM with 100 steps of the ``squaredcos_cap_v2`` schedule. We train it with v-prediction instead of
epsilon, because at the last step of that schedule ``alpha`` is about 1e-3 and an epsilon network's x0 estimate
(what a one-step student outputs) is ill-conditioned there. Students follow "Consistency Policy: Accelerated Visuomotor
Policies via Consistency Distillation" (Prasad et al., 2024), "ManiCM: Real-time 3D Diffusion Policy via Consistency
Model for Robotic Manipulation" (Lu et al., 2024) and "Improved Distribution Matching Distillation for Fast Image
Synthesis" (DMD2, Yin et al., 2024).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from modalities.policy.demos import DemoSource, NpzDemos, stack_episodes
from modalities.policy.executor import DiffusionPlanner, RecedingHorizonExecutor
from modalities.policy.networks import PolicyNetwork, TimestepAdapter
from modalities.policy.normalizer import Normalizer
from unidistill.batch import Batch
from unidistill.denoiser import Denoiser, freeze
from unidistill.metrics import sliced_wasserstein
from unidistill.modality import Modality
from unidistill.paths import VPDiscrete, check_prediction_type
from unidistill.weights import check_card, load_state, read_safetensors


def load_policy_weights(network: PolicyNetwork, path: str | FilePath, what: str,
                        card: dict[str, Any] | None = None) -> None:
    """Load a safetensors policy into ``network`` with errors naming the file and any mismatch (the weights card's
    path, prediction type and horizon, then observation or action dimension, since those are what a user gets
    wrong)."""
    if card is not None:
        check_card(path, card, what)
    state = read_safetensors(path, what)
    for key, want, name in (("normalizer.obs_scale", network.obs_dim, "obs_dim"),
                            ("normalizer.action_scale", network.action_dim, "action_dim")):
        if key in state and state[key].shape[0] != want:
            raise ValueError(f"{what} at {str(path)!r} was trained with {name}={state[key].shape[0]}, but the policy "
                             f"is configured with {name}={want}")
    load_state(network, state, path, what, "horizon, backbone, sizes")


class PolicyModality(Modality):
    """Action-chunk latents conditioned on observation histories.

    Args:
        obs_dim, action_dim: low-dimensional observation and action sizes.
        horizon: actions per predicted chunk; n_obs_steps: observation history length; n_action_steps: actions
            executed per plan before re-planning.
        backbone: ``"unet"`` (FiLM temporal U-Net, sizes ``down_dims``/``kernel``) or ``"transformer"``
            (``width``/``depth``/``heads``).
        image_shape: ``[C, H, W]`` to add a CNN image encoder (conditions become ``{"state", "image"}``).
        teacher: safetensors file of a trained policy, or ``"random"`` (a seeded random network, for tests).
        demos: a demo source (or ``.npz`` path) whose statistics normalise a network trained from scratch;
            with a teacher file the statistics come from the file and demos are only checked for shape.
        num_train_timesteps, beta_schedule, prediction: the teacher's DDPM path and output type.
    """

    name = "policy"
    guidance_input = False  # the policy networks take no second scalar input
    regression_metric = ("action_mse", True)

    def __init__(self, obs_dim: int, action_dim: int, horizon: int = 16, n_obs_steps: int = 2,
                 n_action_steps: int = 8, backbone: str = "unet", down_dims: list[int] | None = None,
                 kernel: int = 5, width: int = 64, depth: int = 4, heads: int = 4,
                 image_shape: list[int] | None = None, teacher: str | None = None,
                 demos: DemoSource | str | None = None, num_train_timesteps: int = 100,
                 beta_schedule: str = "squaredcos_cap_v2", prediction: str = "v", seed: int = 0) -> None:
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(f"n_obs_steps - 1 + n_action_steps must be <= horizon; got n_obs_steps={n_obs_steps}, "
                             f"n_action_steps={n_action_steps}, horizon={horizon}")
        self.obs_dim, self.action_dim, self.horizon = obs_dim, action_dim, horizon
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        self.net_args = {"backbone": backbone, "down_dims": tuple(down_dims or (64, 128)), "kernel": kernel,
                         "width": width, "depth": depth, "heads": heads,
                         "image_shape": tuple(image_shape) if image_shape else None}
        self.teacher_source, self.seed = teacher, seed
        self.path = VPDiscrete(num_train_timesteps, beta_schedule=beta_schedule)
        self.prediction = check_prediction_type(prediction)
        self.demos = NpzDemos(demos) if isinstance(demos, str) else demos
        self._normalizer: Normalizer | None = None

    # --- shapes, networks, teacher ----------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.horizon, self.action_dim)

    @property
    def normalizer(self) -> Normalizer:
        """Statistics from the teacher file when there is one, else from the demonstrations."""
        if self._normalizer is None:
            if self.teacher_source not in (None, "random") and FilePath(self.teacher_source).is_file():
                self._normalizer = self._normalizer_from_file(self.teacher_source)
            elif self.demos is not None:
                obs, act = stack_episodes(self.demos.episodes())
                self._check_dims(obs.shape[-1], act.shape[-1], "the demonstrations")
                self._normalizer = Normalizer.from_data(obs, act)
            elif self.teacher_source == "random":
                self._normalizer = Normalizer(self.obs_dim, self.action_dim)
            else:
                raise ValueError("the policy has no normalisation statistics: give demos= (to train a teacher) or a "
                                 f"teacher file that exists (got teacher={self.teacher_source!r})")
        return self._normalizer

    def _check_dims(self, obs_dim: int, action_dim: int, where: str) -> None:
        if (obs_dim, action_dim) != (self.obs_dim, self.action_dim):
            raise ValueError(f"{where} have obs_dim={obs_dim}, action_dim={action_dim}, but the policy is configured "
                             f"with obs_dim={self.obs_dim}, action_dim={self.action_dim}")

    def _normalizer_from_file(self, path: str) -> Normalizer:
        with safe_open(path, "pt") as f:
            keys = set(f.keys())
            if "normalizer.obs_scale" not in keys:
                raise ValueError(f"{path!r} holds no normaliser statistics (normalizer.* tensors); is it a policy?")
            tensors = {k.removeprefix("normalizer."): f.get_tensor(k) for k in keys if k.startswith("normalizer.")}
        self._check_dims(tensors["obs_scale"].shape[0], tensors["action_scale"].shape[0], f"the weights at {path!r}")
        norm = Normalizer(self.obs_dim, self.action_dim)
        norm.load_state_dict(tensors)
        return norm

    def new_network(self) -> PolicyNetwork:
        net = PolicyNetwork(self.obs_dim, self.action_dim, self.horizon, self.n_obs_steps, **self.net_args)
        net.normalizer.load_state_dict(self.normalizer.state_dict())
        return net

    def new_denoiser(self) -> Denoiser:
        return Denoiser(self.new_network(), self.path, self.prediction, TimestepAdapter(self.path))

    def load_teacher(self) -> Denoiser:
        if self.teacher_source is None:
            raise FileNotFoundError("no teacher configured: set teacher= to a policy safetensors file (or train one "
                                    "with the task's teacher.yaml)")
        if self.teacher_source == "random":
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                den = self.new_denoiser()
            return freeze(den)
        den = Denoiser(PolicyNetwork(self.obs_dim, self.action_dim, self.horizon, self.n_obs_steps, **self.net_args),
                       self.path, self.prediction, TimestepAdapter(self.path))
        load_policy_weights(den.network, self.teacher_source, "teacher", self.card())
        self._normalizer = Normalizer(self.obs_dim, self.action_dim)
        self._normalizer.load_state_dict(den.network.normalizer.state_dict())
        if self.demos is not None:
            obs, act = stack_episodes(self.demos.episodes()[:1])
            self._check_dims(obs.shape[-1], act.shape[-1], "the demonstrations")
        return freeze(den)

    def card(self) -> dict[str, Any]:
        """What weights for this configuration must have been trained with (checked against their card)."""
        return {"path": repr(self.path), "prediction": self.prediction, "horizon": self.horizon,
                "n_obs_steps": self.n_obs_steps, "obs_dim": self.obs_dim, "action_dim": self.action_dim}

    # --- data <-> latents ---------------------------------------------------------------------------
    def encode(self, data: Tensor) -> Tensor:
        return self.normalizer.normalize_action(data)

    def decode(self, latents: Tensor) -> Tensor:
        return self.normalizer.unnormalize_action(latents.detach().cpu())

    def encode_obs(self, obs: Tensor, images: Tensor | None = None) -> Any:
        """Raw observation history ``[B, n_obs_steps, obs_dim]`` (+ uint8 images) -> the network's condition."""
        if obs.ndim != 3 or tuple(obs.shape[1:]) != (self.n_obs_steps, self.obs_dim):
            raise ValueError(f"observation history of shape {tuple(obs.shape)}, but the policy takes "
                             f"[B, n_obs_steps={self.n_obs_steps}, obs_dim={self.obs_dim}]")
        state = self.normalizer.normalize_obs(obs)
        if self.net_args["image_shape"] is None:
            return state
        if images is None:
            raise ValueError("this policy was configured with image_shape; pass images with the observations")
        return {"state": state, "image": images.float() / 127.5 - 1.0}

    def to_batch(self, data: Any) -> Batch:
        if isinstance(data, Batch):
            return super().to_batch(data)
        if not isinstance(data, dict) or "obs" not in data or "action" not in data:
            raise ValueError("policy batches are dicts with 'obs' [B, n_obs_steps, obs_dim] and 'action' "
                             f"[B, horizon, action_dim]; got {type(data).__name__}")
        batch = Batch(self.encode(data["action"]), self.encode_obs(data["obs"], data.get("image")))
        self.check_latents(batch.x0)
        return batch

    def null_condition(self, cond: Any) -> Any:
        if isinstance(cond, dict):
            return {k: torch.zeros_like(v) for k, v in cond.items()}
        return None if cond is None else torch.zeros_like(cond)

    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        """Action-chunk error to the demonstrated chunk (normalised units; averages of modes score well here, so
        it is no success measure) and sliced Wasserstein between sampled and demonstrated chunks."""
        samples = samples.detach().float().cpu()
        if reference is None:
            return {"action_abs_max": float(samples.abs().max())}
        reference = reference.detach().float().cpu()
        return {"action_mse": float(((samples - reference) ** 2).mean()),
                "sliced_wasserstein": sliced_wasserstein(samples.flatten(1), reference.flatten(1))}

    def export(self, student: Denoiser, out_dir: str | FilePath, name: str = "student") -> list[FilePath]:
        files = super().export(student, out_dir, name)
        card = files[1]
        info = json.loads(card.read_text())
        info |= {"obs_dim": self.obs_dim, "action_dim": self.action_dim, "horizon": self.horizon,
                 "n_obs_steps": self.n_obs_steps, "n_action_steps": self.n_action_steps,
                 "network_args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.net_args.items()},
                 "num_train_timesteps": self.path.num_train_timesteps, "beta_schedule": self.path.beta_schedule}
        card.write_text(json.dumps(info, indent=2))
        return files

    # --- execution --------------------------------------------------------------------------------
    def planner(self, sample_fn: Callable[[Any, int, torch.Generator], Tensor],
                generator: torch.Generator) -> DiffusionPlanner:
        return DiffusionPlanner(self, sample_fn, generator)

    def executor(self, planner: Callable[[np.ndarray], np.ndarray]) -> RecedingHorizonExecutor:
        return RecedingHorizonExecutor(planner, self.obs_dim, self.action_dim, self.horizon, self.n_obs_steps,
                                       self.n_action_steps)

    # --- the cross-modality regression matrix -----------------------------------------------------
    @classmethod
    def tiny(cls) -> PolicyModality:
        """A seeded random 2-level U-Net teacher (16/32 channels) on 4-D observations and 8x2 action chunks."""
        return cls(obs_dim=4, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4, down_dims=[16, 32],
                   teacher="random")

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        """Normalised observation histories and bimodal action chunks: each chunk ramps to ``+-0.8`` (a random
        side) plus a small dependence on the first observation, all drawn from ``generator``."""
        obs = torch.rand((n, self.n_obs_steps, self.obs_dim), generator=generator) * 2 - 1
        side = torch.randint(0, 2, (n, 1, 1), generator=generator).float() * 2 - 1
        ramp = torch.linspace(0, 1, self.horizon)[None, :, None]
        x0 = (0.8 * side * ramp + 0.1 * obs[:, -1:, : 1]).expand(n, self.horizon, self.action_dim).clone()
        x0 += 0.05 * torch.randn(x0.shape, generator=generator)
        return Batch(x0.clamp(-1, 1), obs)
