"""Phased / multistep consistency distillation.

Wang et al., 2024, "Phased Consistency Models" and Heek et al., 2024, "Multistep Consistency Models":
split the time axis into ``K`` phases with edges ``s_0 = 0 < s_1 < ... < s_K = t_max`` (the path's own
``time_grid(K)``, so the deterministic K-step sampler visits exactly these edges). Within a phase
``(s_{m-1}, s_m]`` the consistency target is the phase's lower edge: the student predicts ``(x0, eps)`` at
``t`` and jumps deterministically, in DDIM form, to ``s_{m-1}``:

    jump(x_t, t -> s) = alpha(s) x0_f + sigma(s) eps_f,   eps_f = (x_t - alpha(t) x0_f) / sigma(t),

which is the identity at ``t = s`` whatever the network outputs (the phase boundary condition).
One iteration is latent-consistency distillation (``ConsistencyDistillation``) with the teacher's
solver step clipped at the phase edge, and both the online prediction and the EMA target mapped to
the edge. With ``K = 1`` the edge is 0, the jump returns ``x0_f`` exactly and the loss is *identical*
to ``ConsistencyDistillation``'s for the same generator draws: the whole computation is inherited from
it (time, guidance and noise draws in the same order, the same ``ConsistencyFunction`` and distance).

Sampling: ``sampling_model`` is the consistency function and ``student_solver = "ddim"``; DDIM with
``K`` steps on the path's grid is exactly the chain of phase jumps (``K`` NFE, deterministic).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unidistill.objectives.base import refuse_unused
from unidistill.objectives.consistency import ConsistencyDistillation
from unidistill.paths import Path


class PhasedConsistencyDistillation(ConsistencyDistillation):
    """Consistency distillation within ``num_phases`` phases; every other argument is
    ``ConsistencyDistillation``'s. ``num_phases`` must divide nothing in particular: edges come from
    ``path.time_grid(num_phases)``, training times from the ``num_intervals`` grid; a teacher step that
    would cross an edge stops at the edge."""

    student_solver = "ddim"

    @classmethod
    def tiny(cls, modality: Any) -> PhasedConsistencyDistillation:
        return cls(num_phases=2, num_intervals=8, target_decay=0.9)

    def __init__(self, num_phases: int = 4, **kwargs: Any) -> None:
        if num_phases < 1:
            raise ValueError(f"num_phases must be >= 1, got {num_phases}")
        self.num_phases = num_phases
        refuse_unused(self.name, "student_steps_renoise", kwargs.get("student_steps_renoise", "sde"), "sde",
                      "(the phased student samples with deterministic DDIM phase jumps, it never re-noises)")
        super().__init__(**kwargs)

    @property
    def name(self) -> str:
        return f"PhasedConsistencyDistillation(K={self.num_phases})"

    def phase_edges(self, path: Path, device: Any = None) -> Tensor:
        """Increasing edges ``[s_0 = 0, ..., s_K = t_max]`` (float64)."""
        return path.time_grid(self.num_phases, device=device).flip(0)

    def lower_edge(self, path: Path, t: Tensor) -> Tensor:
        """The lower edge ``s_{m-1}`` of the phase ``(s_{m-1}, s_m]`` holding each ``t``."""
        edges = self.phase_edges(path, t.device)
        tol = 1e-6 * path.t_max
        idx = torch.searchsorted(edges, t.double() - tol, right=False) - 1  # largest edge < t - tol
        return edges[idx.clamp(0, self.num_phases - 1)].to(t.dtype)

    def landing_time(self, path: Path, t_hi: Tensor) -> Tensor:
        return self.lower_edge(path, t_hi)
