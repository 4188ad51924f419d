"""The quality tier of the regression matrix: ``unidistill regress --tier quality``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unidistill.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_quality_tier_writes_goldens_passes_on_a_rerun_and_fails_on_a_regression(tmp_path, capsys):
    argv = ["regress", "--tier", "quality", "--modality", "gmm", "--objective", "regression", "--max-steps", "20",
            "--samples", "1024", "--goldens-dir", str(tmp_path), "--workdir", str(tmp_path / "runs")]
    main([*argv, "--update-goldens"])
    golden = json.loads((tmp_path / "gmm.json").read_text())
    assert set(golden["entries"]) == {"regression@nfe1", "regression@nfe2", "regression@nfe4"}
    assert golden["budget"] == {"max_steps": 20, "samples": 1024, "seed": 0}
    assert golden["command"].startswith("unidistill regress") and golden["commit"]
    capsys.readouterr()

    main(argv)  # same seeds, same budget: nothing moves
    out = capsys.readouterr().out
    assert out.count(" ok") >= 3 and "0 regression(s)" in out and "REGRESSED" not in out

    entry = golden["entries"]["regression@nfe1"]
    entry["value"], entry["tolerance"] = entry["value"] / 10, entry["value"] / 100  # the past was much better
    (tmp_path / "gmm.json").write_text(json.dumps(golden))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "regression@nfe1" in out and "REGRESSED" in out and "1 regression(s)" in out


@pytest.mark.slow
def test_shipped_gmm_goldens_hold():
    """Every gmm objective distilled with the goldens' budget and seeds (about 4 CPU minutes)."""
    result = subprocess.run([sys.executable, "-m", "unidistill.cli", "regress", "--tier", "quality", "--modality",
                             "gmm"], cwd=ROOT, capture_output=True, text=True, timeout=3600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "0 regression(s)" in result.stdout
