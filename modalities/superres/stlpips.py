"""``st_lpips_alex``: the shift-tolerant LPIPS distance of Ghildyal & Liu, 2022, "Shift-tolerant Perceptual
Similarity Metric", with the AlexNet trunk and linear calibration weights that ship inside the ``stlpips-pytorch``
wheel (``stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth``, trunk and heads in one file).

The package's own module imports IPython, torchsummary and torchvision at import time, so it is never imported:
the file is located with ``importlib.util.find_spec`` and loaded with ``torch.load(weights_only=True)`` into the
network defined here, whose layers and state-dict keys are those of the package's ``alexnet(variant=
"shift_tolerant")`` (reflect-padded blur-pool downsampling after the first convolution and each max-pool) and
``LPIPS(version="0.1")``. It is not the standard LPIPS (whose AlexNet needs a download), so it is not called that.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.superres.package_data import installed_file

CHANNELS = (64, 192, 384, 256, 256)
#: the smallest image side the trunk accepts (its reflect padding needs feature maps of at least 3 pixels)
MIN_SIDE = 24


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling with the binomial [1, 2, 1] filter, reflect-padded by 2 on every side
    (the package's ``Downsample(filt_size=3, pad_more=True)``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class ShiftTolerantAlexNet(nn.Module):
    """The five feature stages; module indices match the package's ``features`` numbering."""

    def __init__(self) -> None:
        super().__init__()
        self.slice1 = nn.Sequential()
        self.slice1.add_module("0", nn.Conv2d(3, 64, 11, stride=1, padding=2))
        self.slice1.add_module("1", BlurPool(64))
        self.slice1.add_module("2", nn.ReLU())
        self.slice2 = nn.Sequential()
        self.slice2.add_module("3", nn.MaxPool2d(3, stride=1))
        self.slice2.add_module("4", BlurPool(64))
        self.slice2.add_module("5", nn.Conv2d(64, 192, 5, padding=2))
        self.slice2.add_module("6", nn.ReLU())
        self.slice3 = nn.Sequential()
        self.slice3.add_module("7", nn.MaxPool2d(3, stride=1))
        self.slice3.add_module("8", BlurPool(192))
        self.slice3.add_module("9", nn.Conv2d(192, 384, 3, padding=1))
        self.slice3.add_module("10", nn.ReLU())
        self.slice4 = nn.Sequential()
        self.slice4.add_module("11", nn.Conv2d(384, 256, 3, padding=1))
        self.slice4.add_module("12", nn.ReLU())
        self.slice5 = nn.Sequential()
        self.slice5.add_module("13", nn.Conv2d(256, 256, 3, padding=1))
        self.slice5.add_module("14", nn.ReLU())

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in (self.slice1, self.slice2, self.slice3, self.slice4, self.slice5):
            x = stage(x)
            feats.append(x)
        return feats


class _Lin(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        # index 0 is the (evaluation-time inactive) dropout of the package's NetLinLayer
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


class ShiftTolerantLPIPS(nn.Module):
    """``d(x, y)`` per image ``[B]`` for images ``[B, 3, H, W]`` in ``[-1, 1]``: unit-normalised trunk features,
    squared differences weighted by the calibrated 1x1 heads, averaged over positions, summed over stages."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.net = ShiftTolerantAlexNet()
        self.lins = nn.ModuleList([_Lin(c) for c in CHANNELS])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"st_lpips_alex compares two RGB batches [B, 3, H, W] of one shape; got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"st_lpips_alex needs images of at least {MIN_SIDE}x{MIN_SIDE}, got {tuple(x.shape[-2:])}")
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for a, b, lin in zip(fx, fy, self.lins, strict=True):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin.model((a - b) ** 2).mean((1, 2, 3))
        return total


def weights_file() -> Path:
    """The AlexNet shift-tolerant weights inside the installed ``stlpips-pytorch`` package (not imported)."""
    return installed_file("stlpips_pytorch", "weights/vST0.0/alex_shift_tolerant.pth", "st_lpips_alex",
                          "stlpips-pytorch")


def _state_dict(path: Path) -> dict[str, Tensor]:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = {("shift" if k == "scaling_layer.shift" else "scale" if k == "scaling_layer.scale" else k): v
             for k, v in raw.items()}
    return {(f"lins.{k[3]}.model.1.weight" if k.startswith("lin") else k): v for k, v in state.items()}


@lru_cache(maxsize=1)
def st_lpips_alex() -> ShiftTolerantLPIPS:
    """The frozen metric network, loaded once per process (strictly: every weight of the file is used)."""
    net = ShiftTolerantLPIPS()
    net.load_state_dict(_state_dict(weights_file()), strict=True)
    return net.eval().requires_grad_(False)
