"""The cross-modality regression matrix, fast tier: every objective x every modality (gmm here; the other
in-repo plugins run through ``unidistill regress --tier fast``, or here with ``UNIDISTILL_MATRIX=all``),
plus a third-party plugin that joins through a real entry point and is defined only in this file."""

import json
import os
import sys
import textwrap

import pytest
import torch

from unidistill.modality import _REGISTRY, available_modalities, register_modality
from unidistill.objectives import DMD2, ConsistencyDistillation, Objective
from unidistill.regress import (
    Cell,
    CellFailure,
    build_matrix,
    compare_goldens,
    format_matrix,
    format_quality,
    objective_classes,
    run_fast,
    run_fast_cell,
)

MATRIX_MODALITIES = None if os.environ.get("UNIDISTILL_MATRIX") == "all" else ["gmm"]
CELLS = build_matrix(MATRIX_MODALITIES)


@pytest.mark.parametrize("cell", [c for c in CELLS if c.status == "ready"], ids=lambda c: c.id)
def test_fast_tier_cell(cell):
    out = run_fast_cell(cell, iterations=4)
    assert all(all(torch.isfinite(torch.tensor(v)) for v in logs.values()) for logs in out["logs"])
    assert out["leaks"] == [], f"a loss reached another role's parameters: {out['leaks']}"


@pytest.mark.parametrize("cell", [c for c in CELLS if c.status != "ready"], ids=lambda c: c.id)
def test_non_ready_cells_carry_a_reason_and_are_listed(cell):
    assert cell.status in ("unsupported", "unavailable", "error")
    assert len(cell.reason) > 10
    assert cell.reason in format_matrix(CELLS)
    # an objective that cannot even build its tiny instance is a failure of this suite, not a skipped cell
    assert not (cell.status == "error" and cell.objective != "*"), f"{cell.id}: {cell.reason}"


def test_every_objective_in_the_package_is_a_column():
    import pkgutil

    import unidistill.objectives as pkg

    classes = objective_classes()
    # every module of the package that defines an Objective subclass contributes its class(es)
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = sys.modules[f"unidistill.objectives.{info.name}"]
        for value in vars(mod).values():
            if isinstance(value, type) and issubclass(value, Objective) and value.__module__ == mod.__name__ \
                    and value is not Objective:
                assert value.__name__ in classes
    gmm = {c.objective_class for c in CELLS if c.modality == "gmm"}
    assert gmm == set(classes), "an objective is missing from the gmm row"
    assert {"DMD2", "DMD2[decoupled]", "DMD2[js+gan+regression]"} <= {c.objective for c in CELLS}


def test_an_objective_without_tiny_defaults_fails_loudly(monkeypatch):
    class NoDefaults(ConsistencyDistillation):
        pass

    NoDefaults.__module__ = "unidistill.objectives.someone_new"
    NoDefaults.tiny = classmethod(Objective.tiny.__func__)
    try:
        cells = build_matrix(["gmm"], ["NoDefaults"])
    finally:
        NoDefaults.__module__ = __name__  # out of the registry for the other tests
    assert [(c.status, c.objective) for c in cells] == [("error", "NoDefaults")]
    assert "defines no tiny() defaults" in cells[0].reason
    results, failures = run_fast(cells)
    assert failures == 1 and results[cells[0].id] == "FAIL"


def test_unsupported_reason_declares_a_cell_instead_of_skipping_it():
    from modalities.gmm import GmmModality

    @register_modality("gmm_causal_probe")
    class CausalGmm(GmmModality):
        causal = True

    try:
        cells = build_matrix(["gmm_causal_probe"], ["DMD2", "ConsistencyDistillation"])
    finally:
        _REGISTRY.pop("gmm_causal_probe", None)
    by = {c.objective: c for c in cells}
    assert by["DMD2"].status == "unsupported" and "causal" in by["DMD2"].reason
    assert by["ConsistencyDistillation"].status == "ready"
    table = format_matrix(cells)
    assert "DMD2[decoupled]" in table and by["DMD2"].reason in table


def test_a_broken_plugin_is_an_error_cell_not_a_crash(tmp_path, monkeypatch):
    from modalities.gmm import GmmModality

    @register_modality("half_built_probe")
    class HalfBuilt(GmmModality):
        @classmethod
        def tiny(cls):
            raise RuntimeError("networks not written yet")

    # an entry point whose module does not exist, like a plugin declared before it is written
    dist = tmp_path / "ghost-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ghost\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[unidistill.modalities]\nghost_probe = no_such_module.plugin:Ghost\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "ghost_probe" in available_modalities()
        cells = build_matrix(["half_built_probe", "ghost_probe", "gmm"], ["Reflow"])
    finally:
        _REGISTRY.pop("half_built_probe", None)
    assert [(c.modality, c.status) for c in cells] == [("half_built_probe", "error"), ("ghost_probe", "error"),
                                                       ("gmm", "ready")]
    assert "networks not written yet" in cells[0].reason
    assert "ModuleNotFoundError" in cells[1].reason and "no_such_module" in cells[1].reason
    results, failures = run_fast(cells)
    assert failures == 2 and results["gmm-Reflow"] == "ok"
    assert "no_such_module" in format_matrix(cells, results)


def test_every_registered_modality_gets_a_row_even_when_half_built():
    cells = build_matrix(None, ["Reflow"])
    assert {c.modality for c in cells} == set(available_modalities())


def test_fast_tier_catches_a_teacher_that_trains_and_a_non_exact_resume(monkeypatch, ripple_plugin):
    # the plugin's teacher has weights (the tiny gmm teacher is analytic: nothing to corrupt)
    cell = next(c for c in build_matrix([ripple_plugin], ["DMD2"]) if c.objective == "DMD2")
    assert run_fast_cell(cell)["leaks"] == []
    original = DMD2.fake_score_loss

    def writes_teacher(self, batch, ctx):
        with torch.no_grad():
            for p in ctx.teacher.parameters():
                p.add_(1e-3)
            for b in ctx.teacher.buffers():
                if b.is_floating_point():
                    b.add_(1e-3)
        return original(self, batch, ctx)

    monkeypatch.setattr(DMD2, "fake_score_loss", writes_teacher)
    with pytest.raises(CellFailure, match="teacher changed"):
        run_fast_cell(cell)
    monkeypatch.setattr(DMD2, "fake_score_loss", original)

    # hidden state that a checkpoint does not hold breaks the resume check
    student_loss = DMD2.student_loss
    calls = []

    def stateful(self, batch, ctx):
        calls.append(1)
        out = student_loss(self, batch, ctx)
        return type(out)(out.loss * (1 + 0.1 * len(calls)), out.logs)

    monkeypatch.setattr(DMD2, "student_loss", stateful)
    with pytest.raises(CellFailure, match="differs from the uninterrupted run"):
        run_fast_cell(cell)


def test_fast_tier_catches_a_gradient_into_the_wrong_role(monkeypatch):
    cell = next(c for c in CELLS if c.objective == "DMD2")
    original = DMD2.fake_score_loss

    def leaks(self, batch, ctx):
        out = original(self, batch, ctx)
        extra = sum(p.sum() for p in ctx.student.parameters()) * 0.0 + sum(
            (p**2).sum() for p in ctx.student.parameters()) * 1e-6
        return type(out)(out.loss + extra, out.logs)

    monkeypatch.setattr(DMD2, "fake_score_loss", leaks)
    out = run_fast_cell(cell)
    assert "fake_score->student" in out["leaks"]


PLUGIN = textwrap.dedent('''
    """A third-party modality: latents [B, 2, 3], a seeded random MLP teacher with a `blocks` list."""
    import torch
    from torch import nn

    from unidistill.denoiser import Denoiser, freeze
    from unidistill.modality import Modality
    from unidistill.objectives.base import Batch
    from unidistill.paths import RectifiedFlow


    class RippleNet(nn.Module):
        def __init__(self, hidden=16):
            super().__init__()
            self.inp, self.time = nn.Linear(6, hidden), nn.Linear(1, hidden)
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU()) for _ in range(2))
            self.out = nn.Linear(hidden, 6)
            self.guidance = None

        def enable_guidance_conditioning(self):
            self.guidance = nn.Linear(1, self.inp.out_features)
            nn.init.zeros_(self.guidance.weight)
            nn.init.zeros_(self.guidance.bias)

        def forward(self, x, t, cond=None, guidance=None):
            h = self.inp(x.reshape(x.shape[0], 6)) + self.time(t.reshape(-1, 1).float())
            if guidance is not None and self.guidance is not None:
                h = h + self.guidance(guidance.reshape(-1, 1).float())
            for block in self.blocks:
                h = h + block(h)
            return self.out(h).reshape(x.shape)


    class RippleModality(Modality):
        name = "ripple"

        @property
        def latent_shape(self):
            return (2, 3)

        def new_denoiser(self):
            return Denoiser(RippleNet(), RectifiedFlow(), "flow")

        def load_teacher(self):
            with torch.random.fork_rng():
                torch.manual_seed(123)
                return freeze(self.new_denoiser())

        def metrics(self, samples, cond, reference):
            return {"mean_abs": float(samples.abs().mean())}

        @classmethod
        def tiny(cls):
            return cls()

        def example_batch(self, n, generator):
            return Batch(1.0 + 0.5 * torch.randn((n, 2, 3), generator=generator))
''')


@pytest.fixture
def ripple_plugin(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "ripple_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(PLUGIN)
    dist = tmp_path / "site" / "ripple_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ripple-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[unidistill.modalities]\nripple = ripple_plugin.plugin:RippleModality\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _REGISTRY.pop("ripple", None)
    yield "ripple"
    _REGISTRY.pop("ripple", None)
    for mod in [m for m in sys.modules if m.startswith("ripple_plugin")]:
        del sys.modules[mod]


def test_a_third_party_plugin_joins_the_matrix_through_its_entry_point(ripple_plugin):
    assert ripple_plugin in available_modalities()
    cells = build_matrix()
    mine = [c for c in cells if c.modality == "ripple"]
    assert {c.objective_class for c in mine} == set(objective_classes())
    # its teacher has parameters, so the adversarial objective runs here (it is unsupported on tiny gmm)
    adversarial = next(c for c in mine if c.objective_class == "AdversarialDistillation")
    assert adversarial.status == "ready"
    results, failures = run_fast(mine)
    assert failures == 0, format_matrix(mine, results)
    assert all(results[c.id] == "ok" for c in mine if c.status == "ready")


def test_goldens_comparison_flags_regressions_improvements_and_missing_entries():
    goldens = {"entries": {
        "a@nfe1": {"value": 0.10, "tolerance": 0.02},
        "b@nfe1": {"value": 0.10, "tolerance": 0.02},
        "c@nfe1": {"value": 0.10, "tolerance": 0.02},
        "gone@nfe1": {"value": 0.10, "tolerance": 0.02, "metric": "sw"},
        "cov@nfe1": {"value": 0.9, "tolerance": 0.05},
    }}
    row = {"metric": "sw", "lower_is_better": True}
    rows = [{**row, "key": "a@nfe1", "value": 0.11}, {**row, "key": "b@nfe1", "value": 0.13},
            {**row, "key": "c@nfe1", "value": 0.07}, {**row, "key": "new@nfe1", "value": 0.2},
            {"metric": "coverage", "lower_is_better": False, "key": "cov@nfe1", "value": 0.8}]
    out, regressions = compare_goldens(rows, goldens)
    verdicts = {r["key"]: r["verdict"] for r in out}
    assert verdicts == {"a@nfe1": "ok", "b@nfe1": "REGRESSED", "c@nfe1": "improved", "new@nfe1": "new (no golden)",
                        "cov@nfe1": "REGRESSED", "gone@nfe1": "MISSING"}
    assert regressions == 3
    table = format_quality(out)
    assert "REGRESSED" in table and "0.1300" in table


@pytest.mark.parametrize("modality", ["gmm", "image", "video", "policy", "audio", "superres", "pointcloud",
                                      "shape_structure", "shape_latent"])
def test_shipped_goldens_are_complete_and_stamped(modality):
    from unidistill.regress.quality import GOLDENS, quality_configs

    data = json.loads((GOLDENS / f"{modality}.json").read_text())
    assert data["command"].startswith("unidistill regress") and len(data["commit"]) >= 40
    assert data["budget"]["max_steps"] > 0 and data["budget"]["samples"] > 0
    configs = quality_configs(modality)
    assert configs and "teacher" not in {p.stem for p in configs}
    for config in configs:  # every config has an entry at each NFE it validates, keyed by task folder and stem
        keys = [k for k in data["entries"] if k.startswith(f"{config.parent.name}/{config.stem}@nfe")]
        assert keys, config
        for key in keys:
            entry = data["entries"][key]
            assert entry["tolerance"] > 0 and entry["value"] > 0 and key.endswith(f"@nfe{entry['nfe']}")


def test_matrix_cell_ids_are_unique():
    ids = [c.id for c in CELLS]
    assert len(ids) == len(set(ids))
    assert isinstance(CELLS[0], Cell)


# image exports a diffusers pipeline folder (fixed file names, needs its text encoder): tests/plugins/test_image.py
@pytest.mark.parametrize("name", sorted(set(available_modalities()) - {"image"}))
def test_every_registered_modality_exports_under_the_stem_unidistill_export_passes(name, tmp_path):
    """``unidistill export --name teacher`` calls ``modality.export(student, out, name)``; a plugin whose override
    drops ``name`` (superres did) breaks every teacher recipe's reproduce command."""
    from unidistill.modality import get_modality_class

    modality = get_modality_class(name).tiny()
    files = modality.export(modality.load_teacher(), tmp_path, "teacher")
    assert {f.name for f in files} >= {"teacher.safetensors", "teacher.json"} and all(f.exists() for f in files)
