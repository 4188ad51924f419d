"""The plugin guide in docs/writing-a-plugin.md works as written: its code is extracted, installed as an
out-of-tree package registered through the ``unidistill.modalities`` entry point, and run end to end."""

import re
import sys
from pathlib import Path

import pytest
import torch

from unidistill.cli import main
from unidistill.modality import _REGISTRY, available_modalities, get_modality_class

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-plugin.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), flags=re.S)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    py = _blocks("python")
    pkg = tmp_path / "site" / "sine_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(py[0])
    (pkg / "data.py").write_text(py[1])
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


def test_guide_plugin_registers_trains_a_teacher_and_distils(installed_plugin, tmp_path, capsys):
    assert installed_plugin in available_modalities()
    cls = get_modality_class(installed_plugin)
    assert cls.__module__ == "sine_plugin.plugin"

    teacher_yaml, student_yaml = _blocks("yaml")
    (tmp_path / "teacher.yaml").write_text(teacher_yaml)
    (tmp_path / "consistency.yaml").write_text(student_yaml)
    short = ["--trainer.max_steps=60"]
    for line in _blocks("bash")[0].replace("\\\n", " ").strip().splitlines():
        argv = line.split()[1:]
        if argv[0] == "fit":
            argv += short
        if argv[0] == "bench":
            argv += ["--seeds", "1"]
        main(argv)
    out = capsys.readouterr().out
    assert (tmp_path / "teacher" / "student.safetensors").is_file()
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["teacher"], ["ConsistencyDistillation"])]
    assert [r[0] for r in rows] == ["teacher", "teacher", "ConsistencyDistillation", "ConsistencyDistillation"]
    ckpt = torch.load(tmp_path / "runs/student/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert "student.network.inp.weight" in ckpt["state_dict"]
    assert not any(k.startswith("teacher") for k in ckpt["state_dict"])
