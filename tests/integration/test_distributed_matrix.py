"""DDP (two CPU processes, gloo, Lightning's DDP strategy) for every gmm objective config: ranks keep identical
module state (every trainable role checked after every batch by ``RankAgreementCheck``, every tensor of the
final state by digest), a DDP checkpoint resumes in a single process and a single-process checkpoint resumes
under DDP.

One pair of processes trains every objective (``support/ddp_driver.py`` through ``support/ddp_matrix.py``, shared
with the digits matrix in ``test_distributed_digits.py``), so the suite pays the process start-up and Lightning
import once."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for the support package

from support.ddp_matrix import (  # noqa: E402
    ROOT,
    Run,
    check_ddp_resumes_in_one_process,
    check_ddp_run,
    check_single_resumes_under_ddp,
    run_matrix,
    selected,
)

OBJECTIVES = sorted(p.stem for p in (ROOT / "configs" / "gmm").glob("*.yaml") if p.stem != "teacher")
# CI runs a representative subset, one per distinct role/plan structure: two alternating roles (dmd2), a
# discriminator on teacher features (adversarial), an EMA target (consistency), a frozen phase-teacher copy
# (progressive), an extra trainable head (scm). Every other objective runs under `-m slow`.
FAST = {"adversarial", "consistency", "dmd2", "progressive", "scm"}
PARAMS = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in OBJECTIVES]
STEPS = 6
SMALL = ["--data.init_args.train_size=512", "--data.init_args.val_size=64", "--data.init_args.batch_size=32",
         "--data.init_args.val_batch_size=64"]
TEST = "test_ddp_ranks_agree_and_checkpoints_cross_between_ddp_and_single"


def _run(name: str) -> Run:
    return Run(ROOT / "configs" / "gmm" / f"{name}.yaml", SMALL)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, request):
    """One two-process launch for every objective this session selected, both directions for each."""
    names = selected(request, TEST)
    out = tmp_path_factory.mktemp("ddp_matrix")
    singles = run_matrix(out, STEPS, {n: _run(n) for n in names}, reverse=set(names))
    return out, singles


@pytest.mark.parametrize("name", PARAMS)
def test_ddp_ranks_agree_and_checkpoints_cross_between_ddp_and_single(ddp_runs, name, tmp_path):
    out, singles = ddp_runs
    check_ddp_run(out, name, STEPS)  # 1. fresh DDP run: both ranks hold the same state, tensor for tensor
    check_ddp_resumes_in_one_process(_run(name), out, name, STEPS, tmp_path)  # 2. DDP checkpoint -> one process
    check_single_resumes_under_ddp(out, name, STEPS, singles[name])  # 3. the reverse, ranks still identical
