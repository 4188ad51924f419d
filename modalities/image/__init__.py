"""Text-to-image modality: diffusers networks, transformers text encoders, pipeline folders in and out."""

from modalities.image.evaluation import ImageEvaluator, image_metrics, knn_precision_recall
from modalities.image.networks import DiffusersAdapter, tiny_pixart_config, tiny_unet_config
from modalities.image.pipeline import load_pipeline_folder, save_teacher_folder
from modalities.image.plugin import ImageModality
from modalities.image.text import TextEncoder

__all__ = [
    "DiffusersAdapter",
    "ImageEvaluator",
    "ImageModality",
    "TextEncoder",
    "image_metrics",
    "knn_precision_recall",
    "load_pipeline_folder",
    "save_teacher_folder",
    "tiny_pixart_config",
    "tiny_unet_config",
]
