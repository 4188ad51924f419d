"""Moving digits: captioned clips of handwritten digits bouncing on a 32x32 canvas (causal streaming video)."""

from tasks.moving_digits.clips import CAPTIONS, make_clip, make_clips
from tasks.moving_digits.data import MovingDigitClips, MovingDigitsDataModule
from tasks.moving_digits.features import MovingDigitsEvaluator, VideoFeatureNet

__all__ = ["CAPTIONS", "MovingDigitClips", "MovingDigitsDataModule", "MovingDigitsEvaluator", "VideoFeatureNet",
           "make_clip", "make_clips"]
