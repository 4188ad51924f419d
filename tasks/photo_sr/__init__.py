"""Photo SR: x4 super-resolution of real photographs that ship in the scikit-image and scikit-learn wheels."""

from tasks.photo_sr.data import HeldOutCrops, PhotoSRDataModule, TrainPatches, sr_example
from tasks.photo_sr.photos import TEST_PHOTOS, TRAIN_PHOTOS, crop_to_multiple, load_photo

__all__ = ["TEST_PHOTOS", "TRAIN_PHOTOS", "HeldOutCrops", "PhotoSRDataModule", "TrainPatches", "crop_to_multiple",
           "load_photo", "sr_example"]
