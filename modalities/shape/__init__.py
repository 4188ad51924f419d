"""3D shapes: point clouds (``pointcloud``) and TRELLIS-style two-stage structured latents (``shape_structure``
then ``shape_latent``), with trimesh in and out."""

from modalities.shape.export import load_glb, load_ply, occupancy_mesh, points_mesh, render_views, save_glb, save_ply
from modalities.shape.networks import PointTransformer, StructureDiT, VoxelLatentTransformer
from modalities.shape.pipeline import ShapeSamples, TwoStagePipeline, modalities_from_cards, points_modality_from_card
from modalities.shape.pointcloud import PointCloudModality
from modalities.shape.structure import VoxelGrid, encode_mesh
from modalities.shape.structured import StructuredLatentModality, StructureModality, check_same_grid

__all__ = ["PointCloudModality", "PointTransformer", "ShapeSamples", "StructureDiT", "StructureModality",
           "StructuredLatentModality", "TwoStagePipeline", "VoxelGrid", "VoxelLatentTransformer", "check_same_grid",
           "encode_mesh", "load_glb", "load_ply", "modalities_from_cards", "occupancy_mesh", "points_mesh",
           "points_modality_from_card", "render_views", "save_glb", "save_ply"]
