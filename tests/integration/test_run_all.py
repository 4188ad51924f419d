"""benchmarks/run_all.py --no-run: plots and the README results block come only from the JSON files."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    shutil.copy(ROOT / "benchmarks" / "results" / "gmm.json", res / "gmm.json")
    rows = [{"model": "teacher", "solver": "ddim", "nfe": 100, "fd_digits": 3.25, "ms_per_sample": 40.0,
             "speedup_vs_teacher": 1.0},
            {"model": "teacher", "solver": "dpm_solver_pp_2m", "nfe": 8, "fd_digits": 5.5, "ms_per_sample": 3.3,
             "speedup_vs_teacher": 12.1},
            {"model": "dmd2", "solver": "consistency", "nfe": 1, "fd_digits": 7.125, "ms_per_sample": 0.5,
             "speedup_vs_teacher": 80.0}]
    (res / "image.json").write_text(json.dumps({"benchmark": "image", "command": "python benchmarks/image.py --x 1",
                                                "machine": {"cores": 2}, "date": "2026-11-24", "rows": rows}))
    (res / "notes.json").write_text(json.dumps({"not": "a benchmark"}))
    return res


def test_no_run_regenerates_plots_and_only_the_marked_readme_block(tmp_path, monkeypatch):
    run_all = _run_all()
    monkeypatch.setattr(run_all.subprocess, "run", lambda *a, **k: pytest.fail("--no-run must not run benchmarks"))
    res = _results(tmp_path)
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nhand-written text\n\n", "\n\n## Later section\nkept\n"
    readme.write_text(before + run_all.START + "\nstale numbers 999\n" + run_all.END + after)

    assert run_all.main(["--no-run", "--results", str(res), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(before + run_all.START) and text.endswith(run_all.END + after)
    block = text[text.index(run_all.START):text.index(run_all.END)]
    assert "stale numbers 999" not in block
    assert "python benchmarks/run_all.py --no-run" in block and "CPU cores" in block
    gmm = json.loads((res / "gmm.json").read_text())
    assert gmm["command"] in block and "`python benchmarks/image.py --x 1`" in block
    assert f"{gmm['rows'][0]['sliced_wasserstein']:.4g}" in block  # every row, from the JSON
    assert "| dmd2 | consistency | 1 | 7.125 |" in block and "`fd_digits` (lower is better)" in block
    assert "not a benchmark" not in block
    for name in ("gmm_quality", "gmm_speedup", "image_quality", "image_speedup"):
        png = res / f"{name}.png"
        assert f"]({png.relative_to(tmp_path).as_posix()})" in block
        img = Image.open(png).convert("RGB")
        assert img.size[0] >= 400 and len(set(img.getdata())) > 4, f"{name} looks empty"


def test_readme_without_markers_is_refused_and_left_alone(tmp_path):
    run_all = _run_all()
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="results:start"):
        run_all.regenerate_readme(readme, _results(tmp_path), "cmd")
    assert readme.read_text() == "# no markers\n"


def test_modality_benchmarks_are_found_through_the_registry():
    scripts = _run_all().benchmark_scripts()
    assert ROOT / "benchmarks" / "gmm.py" in scripts
    assert all(p.stem not in ("memory", "dmd_gmm", "run_all") for p in scripts)



def test_a_declared_quality_metric_wins_over_the_first_numeric_column():
    run_all = _run_all()
    rows = [{"model": "teacher", "nfe": 126, "steps_per_chunk": None, "identity": 0.4, "fvd_x": 124.0},
            {"model": "student", "nfe": 4, "steps_per_chunk": 4, "identity": 0.7, "fvd_x": 99.0}]
    assert run_all.quality_metric(rows) == "identity"  # steps_per_chunk is a setting, not quality
    assert run_all.quality_metric(rows, "fvd_x") == "fvd_x"
    with pytest.raises(ValueError, match="'fvd_y'"):
        run_all.quality_metric(rows, "fvd_y")
    text = run_all.markdown_for({"_stem": "v", "rows": rows, "quality_metric": "fvd_x"}, [], ROOT)
    assert "Quality metric: `fvd_x` (lower is better)." in text
