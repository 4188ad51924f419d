"""The plugin guide in docs/writing-a-plugin.md works as written: its code is extracted, installed as an
out-of-tree package registered through the ``unidistill.modalities`` entry point, and run end to end — teacher
recipe, guided distillation, bench, the regression matrix's fast tier and an out-of-tree quality tier whose
goldens live in the plugin's own folder."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from unidistill.cli import main
from unidistill.modality import _REGISTRY, available_modalities, get_modality_class

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "writing-a-plugin.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def _commands(block):
    return [line.split()[1:] for line in block.replace("\\\n", " ").strip().splitlines()]


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    py = _blocks("python")
    pkg = tmp_path / "site" / "sine_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(py[0])
    (pkg / "data.py").write_text(py[1])
    (pkg / "exact.py").write_text(py[2])
    dist = tmp_path / "site" / "sine_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sine-plugin\nVersion: 0.1\n")
    toml = _blocks("toml")[0]
    name, target = re.search(r'^(\w+) = "([^"]+)"', toml, flags=re.M).groups()
    (dist / "entry_points.txt").write_text(f"[unidistill.modalities]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.chdir(tmp_path)
    _REGISTRY.pop(name, None)
    yield name
    _REGISTRY.pop(name, None)
    for mod in [m for m in sys.modules if m.startswith("sine_plugin")]:
        del sys.modules[mod]


def test_guide_plugin_trains_a_guided_teacher_distils_it_and_runs_its_own_quality_tier(installed_plugin, tmp_path,
                                                                                        capsys):
    assert installed_plugin in available_modalities()
    assert get_modality_class(installed_plugin).__module__ == "sine_plugin.plugin"
    goldens_before = sorted((ROOT / "benchmarks" / "goldens").iterdir())

    teacher_yaml, student_yaml = _blocks("yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "teacher.yaml").write_text(teacher_yaml)
    (tmp_path / "configs" / "consistency.yaml").write_text(student_yaml)
    train, fast, quality = (_commands(b) for b in _blocks("bash"))
    for argv in train:
        if argv[0] == "fit":
            argv += ["--trainer.max_steps=60"]
        if argv[0] == "bench":
            argv += ["--seeds", "1"]
        main(argv)
    out = capsys.readouterr().out
    # the exported teacher is a teacher, with its card; fit printed its last validation metrics
    assert (tmp_path / "teacher" / "teacher.safetensors").is_file()
    assert json.loads((tmp_path / "teacher" / "teacher.json").read_text())["prediction"] == "flow"
    assert "last validation" in out and "val/band_accuracy/student_nfe1" in out
    assert "scoring 256 held-out samples per row, 1 seed(s)" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["teacher"], ["ConsistencyDistillation"])]
    assert [r[0] for r in rows] == ["teacher", "teacher", "ConsistencyDistillation", "ConsistencyDistillation"]
    ckpt = torch.load(tmp_path / "runs/student/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert "student.network.inp.weight" in ckpt["state_dict"]
    assert not any(k.startswith("teacher") for k in ckpt["state_dict"])

    # the fast tier: every objective on the plugin's tiny(), flow maps and LCM students through `guidance`
    (argv,) = fast
    main(argv)
    out = capsys.readouterr().out
    assert re.search(r"^sine +FlowMapDistillation +ok", out, flags=re.M) and "FAIL" not in out

    # the quality tier writes goldens in the plugin's own folder, then holds, then catches a regression
    update, check = quality
    main(update)
    capsys.readouterr()
    golden_file = tmp_path / "goldens" / "sine.json"
    golden = json.loads(golden_file.read_text())
    assert set(golden["entries"]) == {"configs/consistency@nfe1", "configs/consistency@nfe2"}
    assert sorted((ROOT / "benchmarks" / "goldens").iterdir()) == goldens_before, "wrote into the library"
    main(check)
    assert "0 regression(s)" in capsys.readouterr().out
    entry = golden["entries"]["configs/consistency@nfe1"]
    entry["value"], entry["tolerance"] = entry["value"] / 10, 1e-6
    golden_file.write_text(json.dumps(golden))
    with pytest.raises(SystemExit) as exit_info:
        main(check)
    assert exit_info.value.code == 1 and "REGRESSED" in capsys.readouterr().out


def test_without_folders_a_third_party_quality_tier_says_what_to_pass(installed_plugin, capsys):
    with pytest.raises(SystemExit):
        main(["regress", "--tier", "quality", "--modality", installed_plugin])
    assert "pass --configs DIR and --goldens DIR" in capsys.readouterr().out


def test_guide_analytic_teacher_distils_through_the_module(installed_plugin):
    from sine_plugin.exact import GaussianModality

    from unidistill.module import DistillationModule
    from unidistill.objectives import DMD2, AdversarialDistillation
    from unidistill.objectives.base import Unsupported

    modality = GaussianModality()
    teacher = modality.load_teacher()
    t = torch.full((4096,), 0.3)
    x0 = 1.0 + 0.5 * torch.randn(4096, 4)
    x_t = teacher.path.add_noise(x0, torch.randn(4096, 4), t)
    # the exact posterior mean: its error is uncorrelated with x_t (the defining property of E[x0 | x_t])
    err = x0 - teacher(x_t, t).x0
    assert abs(float(((err - err.mean()) * (x_t - x_t.mean())).mean())) < 5e-3
    module = DistillationModule(modality, DMD2(fake_updates_per_student=1), ema_decay=0.9)
    assert not any(True for _ in module.teacher.parameters())
    before = [p.detach().clone() for p in module.student.parameters()]
    batch = modality.to_batch({"x": x0[:64]})
    logs = module.engine.step(batch, 0, module.engine.make_optimizers(1e-3))
    assert all(torch.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.student.parameters(), strict=True))
    with pytest.raises(Unsupported, match="no parameters"):
        AdversarialDistillation.tiny(modality)
