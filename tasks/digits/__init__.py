"""Text-to-image on scikit-learn's handwritten digits: data, evaluation classifier, shipped teacher."""

from tasks.digits.classifier import DigitsClassifier
from tasks.digits.data import DigitsDataModule, load_digit_images

__all__ = ["DigitsClassifier", "DigitsDataModule", "load_digit_images"]
