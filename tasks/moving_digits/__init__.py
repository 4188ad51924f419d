"""Moving digits: captioned clips of handwritten digits bouncing on a 32x32 canvas (causal streaming video)."""

from tasks.moving_digits.clips import CAPTIONS, make_clip, make_clips
from tasks.moving_digits.data import MovingDigitClips, MovingDigitsDataModule
from tasks.moving_digits.features import MovingDigitsEvaluator, VideoFeatureNet

#: The VideoModality settings of every moving-digits config (configs/moving_digits/*.yaml), for scripts that build
#: the modality in Python: 8x8-pixel patches of a 32x32 frame, x0 prediction (see configs/moving_digits/teacher.yaml).
NETWORK = {"frames": 16, "size": 32, "patch": 8, "dim": 64, "depth": 4, "heads": 4, "cond_dim": 384, "chunk_size": 4,
           "cache_window": 3, "prediction": "x0"}

__all__ = ["CAPTIONS", "NETWORK", "MovingDigitClips", "MovingDigitsDataModule", "MovingDigitsEvaluator",
           "VideoFeatureNet", "make_clip", "make_clips"]
