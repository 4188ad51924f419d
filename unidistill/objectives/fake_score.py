"""Fake-score ("critic") networks, their memory strategies, and feature-based discriminator heads.

Shared by the distribution-matching objectives (``dmd.py``, ``sid.py``) and adversarial distillation
(``adversarial.py``). Memory strategies for the fake score (``FakeScoreOptions.memory``):

* ``"full"`` — a trainable deep copy of the teacher (or of the student when the teacher has no parameters,
  e.g. an analytic teacher), as in Yin et al., 2024, "Improved Distribution Matching Distillation for Fast
  Image Synthesis" (DMD2).
* ``"lora"`` — LoRA adapters (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") injected
  with ``peft`` into the frozen teacher network itself. Adapters are *disabled by default* and switched on
  only inside fake-score calls, so one set of base weights serves the real score (teacher) and the fake
  score; only the adapters are trainable (the OSEDiff-style VSD critic, cheaper variant). After injection the
  teacher's base weights are renamed ``*.base_layer.weight`` in its state dict.

``teacher_offload`` keeps the teacher on the CPU and moves it to the compute device only for a call
(``on_device``); on a CPU machine it is numerically the identity.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from unidistill.paths import Prediction


def network_of(denoiser: nn.Module) -> nn.Module:
    """The raw network inside a ``Denoiser`` (hook names are relative to it)."""
    return getattr(denoiser, "network", denoiser)


def has_parameters(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


@contextmanager
def frozen_params(module: nn.Module) -> Iterator[None]:
    """Temporarily stop parameter gradients of ``module`` (a gradient may still flow *through* it)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def on_device(module: nn.Module | None, device: torch.device | str, enabled: bool = True) -> Iterator[None]:
    """Teacher offload: move ``module`` to ``device`` for the body, then back to the CPU."""
    if not enabled or module is None:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")


@contextmanager
def capture_features(root: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    """Forward hooks on ``root``'s submodules ``names``; yields a dict filled with their latest outputs."""
    store: dict[str, Tensor] = {}
    modules = dict(root.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"feature layer(s) {missing} not found in {type(root).__name__}; "
                       f"some valid names: {[n for n in modules if n][:12]}")
    handles = []
    for name in names:
        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            store[name] = out[0] if isinstance(out, (tuple, list)) else out
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def default_feature_layer(network: nn.Module) -> str:
    """A bottleneck-like layer: diffusers' ``mid_block``, else the middle of a ``blocks``/``layers`` list, else the
    middle of the network's top-level submodules that hold parameters."""
    if hasattr(network, "mid_block"):
        return "mid_block"
    for attr in ("blocks", "layers", "transformer_blocks"):
        seq = getattr(network, attr, None)
        if isinstance(seq, nn.ModuleList) and len(seq) > 0:
            return f"{attr}.{len(seq) // 2}"
    children = [name for name, child in network.named_children() if any(True for _ in child.parameters())]
    if children:
        return children[len(children) // 2]
    raise ValueError(f"cannot guess a feature layer for {type(network).__name__}; set feature_layer in the config")


def infer_channels(network: nn.Module, name: str) -> int:
    """Output channels of submodule ``name``: the last ``out_features``/``out_channels`` inside it."""
    module = dict(network.named_modules())[name]
    for m in reversed(list(module.modules())):
        for attr in ("out_features", "out_channels", "embedding_dim"):
            value = getattr(m, attr, None)
            if isinstance(value, int):
                return value
    raise ValueError(f"cannot infer the feature channels of layer {name!r}; set feature_channels in the config")


class FeatureHead(nn.Module):
    """A small classifier on intermediate features, one logit per sample. ``channel_axis`` is 1 for conv
    features ``[B, C, ...]``, -1 for tokens ``[B, L, C]``.

    ``pooling="features"`` pools all axes but the channel axis, then applies the MLP (DMD2's head on the
    fake score's bottleneck). ``pooling="logits"`` applies the MLP at every position (token or pixel) and
    averages the logits: a patch discriminator, as ADD's per-token heads on DINOv2 features, which sees
    local structure that a global average of the features washes out. Identical for ``[B, C]`` features.
    """

    POOLINGS = ("features", "logits")

    def __init__(self, channels: int, hidden: int = 256, channel_axis: int = 1, pooling: str = "features") -> None:
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"unknown head pooling {pooling!r}; valid: {list(self.POOLINGS)}")
        self.channel_axis, self.pooling = channel_axis, pooling
        self.net = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        f = features.float()
        if f.ndim == 2:
            return self.net(f).squeeze(1)
        if self.pooling == "features":
            return self.net(f.movedim(self.channel_axis, 1).flatten(2).mean(2)).squeeze(1)
        return self.net(f.movedim(self.channel_axis, -1)).flatten(1).mean(1)


def _lora_targets(network: nn.Module, targets: list[str] | str | None) -> list[str] | str:
    if targets is not None:
        return targets
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    names = [n for n, m in network.named_modules() if isinstance(m, kinds) and n]
    if not names:
        raise ValueError(f"{type(network).__name__} has no Linear/Conv layers to put LoRA adapters on")
    return "(" + "|".join(re.escape(n) for n in names) + ")"  # a string target is matched with re.fullmatch


@contextmanager
def adapters_enabled(network: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Switch peft adapters of ``network`` on (or off) for the body, restoring the previous state.

    Sets the layers' ``_disable_adapters`` flag directly: peft's ``enable_adapters(False)`` would also
    clear ``requires_grad`` of the adapters, which would hide them from the fake score's optimizer.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in network.modules() if isinstance(m, BaseTunerLayer)]
    previous = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = not enabled
    try:
        yield
    finally:
        for m, flag in zip(layers, previous, strict=True):
            m._disable_adapters = flag


class FakeScore(nn.Module):
    """The fake score role: a denoiser-like module plus an optional classifier head on its features.

    ``strategy="full"`` owns a trainable copy. ``strategy="lora"`` holds the (unregistered) teacher and
    registers only the adapter layers, so its parameters and state dict are exactly the adapters (+ head).
    """

    def __init__(self, denoiser: nn.Module, strategy: str = "full", feature_layer: str | None = None,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        self.strategy, self.feature_layer, self.head = strategy, feature_layer, head
        if strategy == "full":
            self.denoiser = denoiser
            self._shared: list[nn.Module] = []
        elif strategy == "lora":
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._shared = [denoiser]
            layers = {n: m for n, m in network_of(denoiser).named_modules() if isinstance(m, BaseTunerLayer)}
            self.adapters = nn.ModuleDict(
                {re.sub(r"\W", "_", n): nn.ModuleDict({"A": m.lora_A, "B": m.lora_B}) for n, m in layers.items()}
            )
        else:
            raise ValueError(f"unknown fake score memory {strategy!r}; valid: 'full', 'lora'")

    @property
    def base(self) -> nn.Module:
        return self.denoiser if self.strategy == "full" else self._shared[0]

    def train(self, mode: bool = True) -> FakeScore:
        """The critic's network stays in eval mode (no dropout, as DMD2's critic), whatever mode a trainer sets on
        the module tree; only the head follows ``mode``."""
        super().train(mode)
        if self.strategy == "full":
            self.denoiser.eval()
        return self

    @property
    def path(self) -> Any:
        return self.base.path

    @property
    def prediction(self) -> str:
        return self.base.prediction

    nfe_per_call = 1

    @contextmanager
    def _active(self) -> Iterator[None]:
        if self.strategy == "lora":
            with adapters_enabled(network_of(self.base), True):
                yield
        else:
            yield

    def raw(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        with self._active():
            return self.base.raw(x_t, t, cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Prediction:
        with self._active():
            return self.base(x_t, t, cond)

    def with_logits(self, x_t: Tensor, t: Tensor, cond: Any = None,
                    raw: bool = False) -> tuple[Tensor | Prediction, Tensor]:
        """The prediction (or raw output) and the head's logits ``[B]`` from the hooked features."""
        if self.head is None or self.feature_layer is None:
            raise ValueError("this fake score has no classifier head; enable the GAN term or f-divergence weighting")
        with capture_features(network_of(self.base), [self.feature_layer]) as feats:
            out = self.raw(x_t, t, cond) if raw else self(x_t, t, cond)
        return out, self.head(feats[self.feature_layer])


def build_fake_score(student: nn.Module, teacher: nn.Module | None, init: str = "auto", memory: str = "full",
                     lora_rank: int = 8, lora_alpha: float | None = None, lora_targets: list[str] | str | None = None,
                     with_head: bool = False, feature_layer: str | None = None, feature_channels: int | None = None,
                     head_hidden: int = 256, channel_axis: int = 1) -> FakeScore:
    """Build the ``fake_score`` role. ``init``: ``"teacher"``, ``"student"`` or ``"auto"`` (the teacher when
    it has parameters, else the student)."""
    if init == "auto":
        init = "teacher" if has_parameters(teacher) else "student"
    if init not in ("teacher", "student"):
        raise ValueError(f"fake_score_init must be 'teacher', 'student' or 'auto', got {init!r}")
    if memory == "lora":
        if init != "teacher" or not has_parameters(teacher):
            raise ValueError("fake_score.memory='lora' puts adapters on the teacher network, which needs a teacher "
                             "with parameters (fake_score.init='teacher'); use 'full' for an analytic teacher")
        from peft import LoraConfig, inject_adapter_in_model

        net = network_of(teacher)
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank, lora_dropout=0.0,
                            target_modules=_lora_targets(net, lora_targets), init_lora_weights=True)
        from peft.tuners.tuners_utils import BaseTunerLayer

        inject_adapter_in_model(config, net)

        for m in net.modules():
            if isinstance(m, BaseTunerLayer):
                m._disable_adapters = True  # default: the shared network is the teacher
        base = teacher
    elif memory == "full":
        source = teacher if init == "teacher" else student
        base = copy.deepcopy(source)
        base.requires_grad_(True)
        base.eval()  # no dropout in the critic (DMD2 uses dropout 0)
    else:
        raise ValueError(f"unknown fake score memory {memory!r}; valid: 'full', 'lora'")
    head, layer = None, None
    if with_head:
        net = network_of(base)
        layer = feature_layer or default_feature_layer(net)
        head = FeatureHead(feature_channels or infer_channels(net, layer), head_hidden, channel_axis)
    return FakeScore(base, memory, layer, head)
