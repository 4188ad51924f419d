"""Modality plugins shipped with unidistill; each registers through the ``unidistill.modalities`` entry point."""
