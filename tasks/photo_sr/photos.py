"""The real photographs of the task: colour images that ship inside the scikit-image and scikit-learn wheels (no
download; each loads with sockets disabled, see tests/test_superres_task.py). Whole images are held out for
testing, never patches of a training image."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import Tensor

#: training photographs (the left view only of the stereo pair: the right view is the same scene)
TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle",
                "china")
#: held-out photographs: a cat, a cup of coffee, a flower
TEST_PHOTOS = ("chelsea", "coffee", "flower")


@cache
def _load(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None or name not in TRAIN_PHOTOS + TEST_PHOTOS:
        raise KeyError(f"unknown photo {name!r}; valid: {', '.join(TRAIN_PHOTOS + TEST_PHOTOS)}")
    img = loader()
    return img[0] if isinstance(img, tuple) else img


def load_photo(name: str) -> Tensor:
    """The photo ``name`` as ``[3, H, W]`` float32 in ``[-1, 1]``."""
    arr = np.asarray(_load(name), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1


def crop_to_multiple(img: Tensor, multiple: int) -> Tensor:
    """Crop the bottom/right so both sides are multiples of ``multiple``."""
    h, w = img.shape[-2:]
    return img[..., : h - h % multiple, : w - w % multiple]
