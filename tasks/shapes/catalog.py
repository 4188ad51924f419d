"""The shapes task's catalogue: captioned procedural meshes built from trimesh primitives.

Sixteen concepts: seven primitives (box, icosphere, cylinder, cone, capsule, torus, annulus) in aspect-ratio
variants ("a wide flat box", "a tall thin cylinder", "a tall pipe") and five composites with structure (a table
= a box on four cylinders, a chair, a lamp, a snowman, a dumbbell). Every mesh has random dimensions and a random
rotation about the vertical axis (``z`` is up, so "tall" and "flat" keep their meaning), and is centred and scaled
so that its largest half-extent is 1 (it fits in ``[-1, 1]^3``). A shape is drawn from its own seed only, so any
shape can be rebuilt exactly. Captions pair each concept's phrase with training templates; held-out templates
(never seen in training) caption the validation and evaluation shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh

Rng = np.random.Generator


def _box(extents: tuple[float, float, float], at: tuple[float, float, float] = (0, 0, 0)) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=extents)
    m.apply_translation(at)
    return m


def _cylinder(radius: float, height: float, at: tuple[float, float, float] = (0, 0, 0),
              axis: str = "z") -> trimesh.Trimesh:
    m = trimesh.creation.cylinder(radius=radius, height=height, sections=24)
    if axis == "x":
        m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    m.apply_translation(at)
    return m


def _sphere(radius: float, at: tuple[float, float, float] = (0, 0, 0)) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=2, radius=radius)
    m.apply_translation(at)
    return m


def cube(rng: Rng) -> list[trimesh.Trimesh]:
    return [_box(tuple(rng.uniform(0.85, 1.15, 3)))]


def flat_box(rng: Rng) -> list[trimesh.Trimesh]:
    return [_box((rng.uniform(1.6, 2.4), rng.uniform(1.2, 2.0), rng.uniform(0.2, 0.45)))]


def tall_box(rng: Rng) -> list[trimesh.Trimesh]:
    return [_box((rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6), rng.uniform(1.7, 2.4)))]


def sphere(rng: Rng) -> list[trimesh.Trimesh]:
    return [_sphere(rng.uniform(0.8, 1.2))]


def tall_cylinder(rng: Rng) -> list[trimesh.Trimesh]:
    return [_cylinder(rng.uniform(0.18, 0.32), rng.uniform(1.6, 2.4))]


def wide_cylinder(rng: Rng) -> list[trimesh.Trimesh]:
    return [_cylinder(rng.uniform(0.8, 1.1), rng.uniform(0.25, 0.5))]


def cone(rng: Rng) -> list[trimesh.Trimesh]:
    m = trimesh.creation.cone(radius=rng.uniform(0.55, 0.85), height=rng.uniform(1.3, 2.0), sections=24)
    return [m]


def capsule(rng: Rng) -> list[trimesh.Trimesh]:
    return [trimesh.creation.capsule(height=rng.uniform(1.0, 1.6), radius=rng.uniform(0.3, 0.45), count=[12, 12])]


def torus(rng: Rng) -> list[trimesh.Trimesh]:
    major = rng.uniform(0.75, 0.95)
    return [trimesh.creation.torus(major_radius=major, minor_radius=major * rng.uniform(0.2, 0.35),
                                   major_sections=24, minor_sections=12)]


def flat_ring(rng: Rng) -> list[trimesh.Trimesh]:
    r_max = rng.uniform(0.9, 1.1)
    return [trimesh.creation.annulus(r_min=r_max * rng.uniform(0.55, 0.75), r_max=r_max, height=rng.uniform(0.15, 0.3),
                                     sections=24)]


def pipe(rng: Rng) -> list[trimesh.Trimesh]:
    r_max = rng.uniform(0.35, 0.5)
    return [trimesh.creation.annulus(r_min=r_max * rng.uniform(0.6, 0.8), r_max=r_max, height=rng.uniform(1.7, 2.4),
                                     sections=24)]


def table(rng: Rng) -> list[trimesh.Trimesh]:
    w, d, h = rng.uniform(1.5, 2.1), rng.uniform(1.0, 1.5), rng.uniform(0.8, 1.2)
    top, leg, inset = rng.uniform(0.08, 0.14), rng.uniform(0.05, 0.08), rng.uniform(0.1, 0.2)
    parts = [_box((w, d, top), (0, 0, h - top / 2))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_cylinder(leg, h - top, (sx * (w / 2 - inset), sy * (d / 2 - inset), (h - top) / 2)))
    return parts


def chair(rng: Rng) -> list[trimesh.Trimesh]:
    s, h, back = rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.1)
    t, leg = rng.uniform(0.08, 0.12), rng.uniform(0.06, 0.09)
    parts = [_box((s, s, t), (0, 0, h - t / 2)), _box((t, s, back), (-s / 2 + t / 2, 0, h + back / 2))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box((leg, leg, h - t), (sx * (s / 2 - leg), sy * (s / 2 - leg), (h - t) / 2)))
    return parts


def lamp(rng: Rng) -> list[trimesh.Trimesh]:
    base_r, base_h = rng.uniform(0.3, 0.45), rng.uniform(0.06, 0.1)
    pole_r, pole_h = rng.uniform(0.03, 0.05), rng.uniform(1.1, 1.6)
    shade_r, shade_h = rng.uniform(0.35, 0.55), rng.uniform(0.35, 0.5)
    shade = trimesh.creation.cone(radius=shade_r, height=shade_h, sections=24)
    shade.apply_translation((0, 0, base_h + pole_h - shade_h * 0.4))
    return [_cylinder(base_r, base_h, (0, 0, base_h / 2)), _cylinder(pole_r, pole_h, (0, 0, base_h + pole_h / 2)),
            shade]


def snowman(rng: Rng) -> list[trimesh.Trimesh]:
    radii = [rng.uniform(0.45, 0.6)]
    for _ in range(int(rng.integers(1, 3))):
        radii.append(radii[-1] * rng.uniform(0.65, 0.8))
    parts, z = [], 0.0
    for i, r in enumerate(radii):
        z = r if i == 0 else z + radii[i - 1] * 0.8 + r * 0.8
        parts.append(_sphere(r, (0, 0, z)))
    return parts


def dumbbell(rng: Rng) -> list[trimesh.Trimesh]:
    length, bar_r, ball = rng.uniform(1.3, 1.9), rng.uniform(0.07, 0.12), rng.uniform(0.3, 0.45)
    return [_cylinder(bar_r, length, axis="x"), _sphere(ball, (-length / 2, 0, 0)), _sphere(ball, (length / 2, 0, 0))]


@dataclass(frozen=True)
class Concept:
    """One captionable kind of shape: its phrases (the first is the canonical one) and its builder."""

    name: str
    phrases: tuple[str, ...]
    build: Callable[[Rng], list[trimesh.Trimesh]]


CONCEPTS: tuple[Concept, ...] = (
    Concept("cube", ("cube", "box with equal sides"), cube),
    Concept("flat_box", ("wide flat box", "flat slab"), flat_box),
    Concept("tall_box", ("tall thin box", "square pillar"), tall_box),
    Concept("sphere", ("sphere", "ball"), sphere),
    Concept("tall_cylinder", ("tall thin cylinder", "rod"), tall_cylinder),
    Concept("wide_cylinder", ("short wide cylinder", "disc"), wide_cylinder),
    Concept("cone", ("cone", "pointed cone"), cone),
    Concept("capsule", ("capsule", "pill"), capsule),
    Concept("torus", ("torus", "donut"), torus),
    Concept("flat_ring", ("flat ring", "washer"), flat_ring),
    Concept("pipe", ("tall pipe", "hollow tube"), pipe),
    Concept("table", ("table", "four-legged table"), table),
    Concept("chair", ("chair", "chair with a backrest"), chair),
    Concept("lamp", ("lamp", "table lamp"), lamp),
    Concept("snowman", ("snowman", "stack of snowballs"), snowman),
    Concept("dumbbell", ("dumbbell", "barbell"), dumbbell),
)
CONCEPT_NAMES = tuple(c.name for c in CONCEPTS)

TRAIN_TEMPLATES = ("a {p}", "a 3D model of a {p}", "a {p} shape", "the shape of a {p}", "a point cloud of a {p}",
                   "a simple {p}", "an object that is a {p}", "a mesh of a {p}")
HELDOUT_TEMPLATES = ("a render of a {p}", "a 3D {p}", "the geometry of a {p}")


def caption(concept: int, template: str, phrase: int = 0) -> str:
    """The caption of ``concept`` with ``template`` and its ``phrase``-th phrase."""
    return template.format(p=CONCEPTS[concept].phrases[phrase])


def train_captions(concept: int) -> list[str]:
    """Every training caption of a concept: each training template with each of its phrases."""
    return [caption(concept, t, p) for p in range(len(CONCEPTS[concept].phrases)) for t in TRAIN_TEMPLATES]


def heldout_captions(concept: int) -> list[str]:
    """The validation captions of a concept: the held-out templates with its canonical phrase."""
    return [caption(concept, t) for t in HELDOUT_TEMPLATES]


def all_captions() -> list[str]:
    """Every caption of the task (training then held-out, concept by concept), the embedding cache's order."""
    return [c for i in range(len(CONCEPTS)) for c in (*train_captions(i), *heldout_captions(i))]


def normalise(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Centre the bounding box at the origin and scale its largest half-extent to 1."""
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2)
    mesh.apply_scale(2.0 / float((hi - lo).max()))
    return mesh


def make_mesh(seed: int, concept: int | None = None) -> tuple[trimesh.Trimesh, int]:
    """The mesh of shape ``seed`` (its concept drawn from the seed unless given) and its concept index."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(len(CONCEPTS))) if concept is None else int(concept)
    if not 0 <= k < len(CONCEPTS):
        raise ValueError(f"concept index {k} out of range; valid: 0..{len(CONCEPTS) - 1} ({', '.join(CONCEPT_NAMES)})")
    mesh = trimesh.util.concatenate(CONCEPTS[k].build(rng))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * np.pi), [0, 0, 1]))
    return normalise(mesh), k


def sample_surface(mesh: trimesh.Trimesh, count: int, seed: int) -> np.ndarray:
    """``count`` points uniformly on the surface (by area), ``[count, 3]`` float32, drawn from ``seed``."""
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float32)
