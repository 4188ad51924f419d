"""The 3D shape plugins: networks (permutation equivariance, padded tokens), geometry and set metrics on hand-made
sets with known answers, structured latents, trimesh in and out, the two-stage pipeline and bad input."""

import json

import numpy as np
import pytest
import torch

from modalities.shape import (
    PointCloudModality,
    PointTransformer,
    StructuredLatentModality,
    StructureModality,
    TwoStagePipeline,
    VoxelGrid,
    VoxelLatentTransformer,
    encode_mesh,
    load_glb,
    load_ply,
    modalities_from_cards,
    occupancy_mesh,
    points_mesh,
    points_modality_from_card,
    save_glb,
    save_ply,
)
from modalities.shape.geometry import chamfer, emd, iou, pairwise_chamfer, pairwise_emd, pairwise_iou_distance, resample
from modalities.shape.setmetrics import coverage, mmd, one_nna, set_metrics
from unidistill.objectives.fake_score import capture_features
from unidistill.solvers import sample


def _randomised(net):
    torch.manual_seed(0)
    net.randomise_output(0.1)
    return net.eval()


# --- networks ------------------------------------------------------------------------------------------------
def test_point_transformer_is_permutation_equivariant():
    net = _randomised(PointTransformer(dim=32, depth=2, heads=4, cond_dim=8))
    x, t, c = torch.randn(3, 64, 3), torch.rand(3), torch.randn(3, 8)
    perm = torch.randperm(64)
    with torch.no_grad():
        out, out_perm = net(x, t, c), net(x[:, perm], t, c)
    assert out.abs().max() > 1e-3  # not the trivial zero map
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-6, rtol=0)


def _latent_net():
    return _randomised(VoxelLatentTransformer(grid=4, features=6, patch=2, dim=32, depth=2, heads=4, cond_dim=8))


def _structure_with_empty_block(n=2):
    mask = torch.zeros(n, 64, dtype=torch.bool)
    mask.view(n, 4, 4, 4)[:, :2, :2, :2] = torch.rand(n, 2, 2, 2, generator=torch.Generator().manual_seed(0)) > 0.3
    mask.view(n, 4, 4, 4)[:, 2:, 2:, :2] = True  # a second, full block; every other block is padding
    return mask


def test_padded_voxels_cannot_reach_real_ones():
    """Changing (even to NaN) the values of inactive voxels, inside partly active blocks and in empty blocks,
    leaves the outputs at active voxels bit-identical and the outputs at inactive voxels exactly zero."""
    net, mask = _latent_net(), _structure_with_empty_block()
    x, t, text = torch.randn(2, 64, 6), torch.rand(2), torch.randn(2, 8)
    cond = {"text": text, "mask": mask.float()}
    other = torch.where(mask[..., None], x, 100 * torch.randn(2, 64, 6))
    nan = torch.where(mask[..., None], x, torch.full_like(x, float("nan")))
    with torch.no_grad():
        a, b, c = net(x, t, cond), net(other, t, cond), net(nan, t, cond)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(a[~mask], torch.zeros_like(a[~mask])) and a[mask].abs().max() > 1e-3


def test_hooked_features_at_padded_tokens_do_not_depend_on_padded_values():
    """What a discriminator head or GAN head hooks (a block's output) is the same at padded tokens whatever they
    held, so a feature-based loss cannot see padding."""
    net, mask = _latent_net(), _structure_with_empty_block()
    x, t = torch.randn(2, 64, 6), torch.rand(2)
    cond = {"text": torch.randn(2, 8), "mask": mask.float()}
    feats = []
    for values in (x, torch.where(mask[..., None], x, -7.0)):
        with torch.no_grad(), capture_features(net, ["blocks.1"]) as store:
            net(values, t, cond)
        feats.append(store["blocks.1"].clone())
    assert torch.equal(feats[0], feats[1])


def test_empty_structure_gives_zeros_and_finite_gradients():
    net = _latent_net().train()
    x = torch.randn(2, 64, 6)
    cond = {"text": torch.randn(2, 8), "mask": torch.zeros(2, 64)}
    cond["mask"][1, :8] = 1
    out = net(x, torch.rand(2), cond)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_structure_dit_round_trips_its_patches():
    from modalities.shape.networks import patchify, unpatchify

    x = torch.randn(2, 8, 8, 8, 3)
    assert torch.equal(unpatchify(patchify(x, 8, 2), 8, 2), x)
    assert patchify(x, 8, 2).shape == (2, 64, 24)


# --- geometry and set metrics on hand-made sets ---------------------------------------------------------------
def test_chamfer_known_answers():
    a, b = torch.tensor([[[0.0, 0, 0]]]), torch.tensor([[[1.0, 0, 0]]])
    assert chamfer(a, b).item() == 2.0  # 1 each way
    line = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0]]])
    assert chamfer(line, a).item() == 2.0  # (0 + 4) / 2 from the line, 0 back
    clouds = torch.randn(5, 16, 3, generator=torch.Generator().manual_seed(0))
    d = pairwise_chamfer(clouds, clouds[:3])
    torch.testing.assert_close(d[4, 1], chamfer(clouds[4:5], clouds[1:2])[0])
    assert torch.equal(d.diagonal(), torch.zeros(3, dtype=d.dtype))
    torch.testing.assert_close(pairwise_chamfer(clouds), pairwise_chamfer(clouds, clouds))


def test_exact_emd_known_answers():
    cloud = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    assert emd(cloud, cloud[torch.randperm(32)]) == pytest.approx(0.0, abs=1e-12)
    # a translation by v: matching each point to itself is optimal (mean |d + v| >= |mean d + v| = |v|)
    assert emd(cloud, cloud + torch.tensor([0.3, 0.0, 0.4])) == pytest.approx(0.5, abs=1e-6)
    assert pairwise_emd(cloud[None], cloud[None]).shape == (1, 1)
    with pytest.raises(ValueError, match="equal size"):
        emd(cloud, cloud[:5])


def test_one_nna_coverage_mmd_on_hand_made_sets():
    gen = torch.tensor([0.0, 1.0, 2.0, 3.0])
    dist = lambda a, b: (a[:, None] - b[None]).abs()  # noqa: E731
    # identical sets: every shape's nearest other is its twin in the other set (ties count as misses)
    assert one_nna(dist(gen, gen), dist(gen, gen), dist(gen, gen)) == 0.0
    far = gen + 100
    assert one_nna(dist(gen, gen), dist(gen, far), dist(far, far)) == 1.0
    # interleaved at offset 0.4: generated 0,1,2,3 / reference 0.4,1.4,2.4,3.4 -> every nearest is across
    ref = gen + 0.4
    assert one_nna(dist(gen, gen), dist(gen, ref), dist(ref, ref)) == 0.0
    # all generated shapes collapse onto reference 0: coverage 1/4, MMD = mean distance to it
    collapsed, ref4 = torch.zeros(4), torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert coverage(dist(collapsed, ref4)) == 0.25
    assert mmd(dist(collapsed, ref4)) == pytest.approx(1.5)
    out = set_metrics(dist(gen, gen), dist(gen, far), dist(far, far), "x")
    # references 100..103 are all nearest to generated 3
    assert out == {"1nna_x": 1.0, "1nna_gap_x": 0.5, "cov_x": 0.25, "mmd_x": 98.5}


def test_iou_distances():
    a = torch.zeros(2, 8, dtype=torch.bool)
    a[0, :4] = True
    b = a.clone()
    b[0, :2] = False
    assert iou(a, b).tolist() == [0.5, 1.0]  # two empty grids agree
    d = pairwise_iou_distance(a, b)
    assert d.tolist() == [[0.5, 1.0], [1.0, 0.0]]


def test_resample_keeps_points_and_handles_empty_clouds():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(10, 3)
    big = resample(pts, 25, g)
    assert big.shape == (25, 3) and torch.equal(big[:10], pts)
    assert resample(torch.zeros(0, 3), 7, g).abs().sum() == 0 and resample(pts, 4, g).shape == (4, 3)


# --- structured latents, meshes, files ------------------------------------------------------------------------
def test_structured_latents_decode_to_the_selected_surface_points():
    from tasks.shapes.catalog import make_mesh, sample_surface

    grid = VoxelGrid(8, 4)
    mesh, _ = make_mesh(5)
    surface = sample_surface(mesh, 4096, 5)
    occ, latents = grid.encode(surface)
    assert torch.equal(occ, grid.occupancy(surface))
    assert torch.equal(latents[~occ], torch.zeros_like(latents[~occ])) and latents.abs().max() <= 1 + 1e-6
    decoded = grid.decode(latents[None].double(), occ[None])[0]
    assert decoded.shape == (int(occ.sum()) * 4, 3)
    nearest = torch.cdist(decoded, torch.from_numpy(surface).double()).min(1).values
    assert nearest.max() < 1e-5  # every decoded point is one of the surface points


def test_ply_and_glb_round_trip_through_trimesh(tmp_path):
    pts = torch.rand(100, 3) * 2 - 1
    assert torch.equal(load_ply(save_ply(pts, tmp_path / "a.ply")), pts)
    occ = torch.zeros(8, 8, 8, dtype=torch.bool)
    occ[2:6, 2:6, 1:7] = True
    mesh = occupancy_mesh(occ)
    assert mesh.is_watertight and np.all(np.abs(mesh.bounds) <= 1.0)
    back = load_glb(save_glb(mesh, tmp_path / "a.glb"))
    assert len(back.faces) == len(mesh.faces) and np.allclose(back.vertices, mesh.vertices, atol=1e-6)
    assert points_mesh(pts).is_watertight
    assert occupancy_mesh(torch.zeros(8, 8, 8, dtype=torch.bool)) is None and save_glb(None, tmp_path / "b.glb") is None


def test_solid_filling_refuses_a_mesh_that_is_not_watertight():
    import trimesh

    box = trimesh.creation.box(extents=(1, 1, 1))
    grid = VoxelGrid(8)
    assert encode_mesh(box, grid, solid=True)[0].sum() > encode_mesh(box, grid)[0].sum()  # interior added
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2])
    with pytest.raises(ValueError, match="watertight"):
        encode_mesh(open_box, grid, solid=True)
    assert encode_mesh(open_box, grid)[0].any()  # surface voxels need no closed surface


# --- the plugins ------------------------------------------------------------------------------------------------
def test_latents_of_the_wrong_point_count_are_refused():
    modality = PointCloudModality.tiny()
    with pytest.raises(ValueError, match=r"\(4, 31, 3\).*\[B, 32, 3\]"):
        modality.to_batch({"x": torch.zeros(4, 31, 3), "cond": torch.zeros(4, 8)})


def test_shape_latent_metrics_ignore_padding():
    modality = StructuredLatentModality.tiny()
    batch = modality.example_batch(6, torch.Generator().manual_seed(0))
    samples = batch.x0 + 0.1 * torch.randn_like(batch.x0)
    mask = batch.mask[..., None] > 0
    noisy = torch.where(mask, samples, 50 * torch.randn_like(samples))
    assert modality.metrics(samples, batch.cond, batch.x0) == modality.metrics(noisy, batch.cond, batch.x0)
    assert modality.metrics(batch.x0, batch.cond, batch.x0)["chamfer_given_structure"] == 0.0


def test_two_stage_pipeline_shapes_and_an_empty_structure():
    structure, latent = StructureModality.tiny(), StructuredLatentModality.tiny()
    s1, s2 = structure.load_teacher(), latent.load_teacher()

    def stage1(noise, text):
        out = sample(s1, noise, 2, text, "euler")
        return out._replace(x=torch.where(text[:, :1, None, None] > 10, -torch.ones_like(out.x), out.x))

    pipe = TwoStagePipeline(structure, latent, stage1, lambda noise, cond: sample(s2, noise, 3, cond, "euler"))
    text = torch.randn(3, 8)
    text[1, 0] = 100.0  # stage 1 gives this caption an empty structure
    out = pipe.generate(text, torch.Generator().manual_seed(0))
    assert out.structure.shape == (3, 4, 4, 4) and out.latents.shape == (3, 64, 6) and out.nfe == (2, 3)
    assert out.empty.tolist() == [False, True, False] and out.clouds[1].shape == (0, 3)
    assert [c.shape[0] for c in out.clouds] == (out.occupancy.sum(1) * 2).tolist()
    metrics = latent.metrics(out.latents, {"text": text, "mask": out.occupancy.float()}, out.latents)
    assert metrics["chamfer_given_structure"] == 0.0
    assert structure.metrics(out.structure, text, out.structure)["empty_structures"] == pytest.approx(1 / 3)


def _export(modality, tmp_path, name):
    files = modality.export(modality.load_teacher(), tmp_path / name)
    weights = next(f for f in files if f.suffix == ".safetensors")
    return weights, json.loads(weights.with_suffix(".json").read_text())


def test_weights_cards_carry_the_geometry_and_refuse_another(tmp_path):
    weights, card = _export(PointCloudModality.tiny(), tmp_path, "points")
    assert card["num_points"] == 32 and card["modality"] == "pointcloud"
    with pytest.raises(ValueError, match="num_points: weights 32, configured 64"):
        PointCloudModality(**{**PointCloudModality.tiny().network_args, "num_points": 64},
                           teacher=str(weights)).load_teacher()
    w2, card2 = _export(StructuredLatentModality.tiny(), tmp_path, "latent")
    assert card2["grid"] == 4 and card2["points_per_voxel"] == 2
    args = {k: v for k, v in StructuredLatentModality.tiny().network_args.items() if k not in ("features", "grid")}
    with pytest.raises(ValueError, match="grid: weights 4, configured 8"):  # patch 2 divides 8 too
        StructuredLatentModality(grid=8, points_per_voxel=2, teacher=str(w2), **args).load_teacher()


def test_an_mlp_caption_embedding_is_recorded_in_the_card_and_a_linear_one_refused(tmp_path):
    tiny = PointCloudModality.tiny().network_args
    mlp = PointCloudModality(num_points=32, save_meshes=False, **{**tiny, "text_layers": 2})
    assert isinstance(mlp.new_network().cond.text, torch.nn.Sequential)
    assert "text_layers" not in tiny  # old cards (linear embedding) keep reading as they are
    weights, card = _export(mlp, tmp_path, "points_mlp")
    assert card["network_args"]["text_layers"] == 2
    PointCloudModality(num_points=32, teacher=str(weights), **{**tiny, "text_layers": 2}).load_teacher()
    with pytest.raises(ValueError, match="text_layers"):
        PointCloudModality(num_points=32, teacher=str(weights), **tiny).load_teacher()
    from_card = points_modality_from_card(weights)  # what a scoring script builds from the card alone
    assert from_card.network_args == mlp.network_args and from_card.num_points == 32
    teacher, x = from_card.load_teacher(), torch.randn(2, 32, 3)
    assert teacher.network(x, torch.rand(2), torch.randn(2, 8)).shape == x.shape
    with pytest.raises(ValueError, match="text_layers must be 1 .* or 2 .*, got 3"):
        PointTransformer(dim=16, depth=1, heads=2, cond_dim=8, text_layers=3)
    with pytest.raises(ValueError, match="text_layers must be 1 .* or 2 .*, got 0"):
        PointCloudModality(num_points=32, text_layers=0)  # refused when configured, before any network is built
    w2, _ = _export(StructureModality.tiny(), tmp_path, "s1")
    with pytest.raises(ValueError, match="holds 'shape_structure' weights, expected 'pointcloud'"):
        points_modality_from_card(w2)


def test_a_stage_two_of_another_grid_is_refused_by_the_cards(tmp_path):
    w1, _ = _export(StructureModality.tiny(), tmp_path, "s1")
    w2, _ = _export(StructuredLatentModality.tiny(), tmp_path, "s2")
    structure, latent = modalities_from_cards(w1, w2)
    assert structure.grid.grid == latent.grid.grid == 4
    structure.load_teacher(), latent.load_teacher()
    bigger = StructureModality(**{**StructureModality.tiny().network_args, "grid": 8})
    w3 = next(f for f in bigger.export(bigger.load_teacher(), tmp_path / "s1_8") if f.suffix == ".safetensors")
    with pytest.raises(ValueError, match="8\\^3 grid but stage 2 .* 4\\^3 grid"):
        modalities_from_cards(w3, w2)
    with pytest.raises(ValueError, match="expected 'shape_structure'"):
        modalities_from_cards(w2, w2)
    with pytest.raises(ValueError, match="8\\^3 structures but stage 2 reads 4\\^3"):
        TwoStagePipeline(bigger, StructuredLatentModality.tiny(), None, None)
