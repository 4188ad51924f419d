"""Quality of the trajectory-family objectives on the exact 8-D Gaussian-mixture teacher (slow; run alone:
``pytest -m slow tests/test_trajectory_gmm.py``). Targets: student sliced Wasserstein at its NFE at least
5x smaller than the teacher's at the same NFE and at most 2.5x the teacher's at 64 Heun steps."""

from __future__ import annotations

import pytest
from gmm_distill import distill_gmm, objective_for


@pytest.mark.slow
@pytest.mark.parametrize("name", ["phased", "progressive", "regression", "reflow", "scm", "flow_map"])
def test_gmm_quality(name):
    objective, steps, nfe = objective_for(name)
    res = distill_gmm(objective, steps, nfe, verbose=False)
    assert res["ratio_vs_teacher_same_nfe"] >= 5.0, res
    assert res["ratio_vs_teacher_64"] <= 2.5, res
