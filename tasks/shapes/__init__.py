"""Captioned procedural shapes from trimesh primitives and composites: data, the PointNet feature network, the
evaluation protocol and the shipped teachers (``weights/``)."""

from tasks.shapes.catalog import CONCEPT_NAMES, CONCEPTS, make_mesh, sample_surface
from tasks.shapes.data import ShapeBank, ShapesDataModule, load_bank, reference_set
from tasks.shapes.evaluation import ShapesEvaluator

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "ShapeBank", "ShapesDataModule", "ShapesEvaluator", "load_bank",
           "make_mesh", "reference_set", "sample_surface"]
