"""DDP (two CPU processes, gloo, Lightning's DDP strategy) for every digits objective config (all of
configs/digits/ but teacher.yaml): the real diffusers UNet teacher (tasks/digits/weights/teacher) and the offline
MiniLM text encoder, each rank on its own shard of the captioned digits. The same machinery as the gmm matrix
(``support/ddp_matrix.py``, ``support/ddp_driver.py``, ``support/launch.py``): one launch of two ranks trains
every selected
objective; every trainable role is compared across ranks after every batch (``RankAgreementCheck``) and every
tensor of the final module state by digest; the DDP checkpoint resumes in one process (every tensor restored)
and trains on; for consistency and dmd2 a single-process checkpoint also resumes under DDP.

Runs are tiny (4 images per rank and batch, 6 optimizer steps, no validation), with schedules shortened so every
role and phase steps within them (see ``ARGS``). CI runs consistency and dmd2 (an EMA target; two alternating
roles) and the single -> DDP resume of dmd2. The rest is marked slow; run it with

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m slow tests/integration/test_distributed_digits.py

or one objective at a time, e.g.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m slow \\
        "tests/integration/test_distributed_digits.py::test_ddp_digits_ranks_agree_and_ddp_checkpoint_resumes_in_one_process[reflow]"
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m slow \\
        "tests/integration/test_distributed_digits.py::test_ddp_digits_single_process_checkpoint_resumes_under_ddp[consistency]"

(slow: adversarial, decoupled_dmd, fdiv, flow_map, phased, progressive, reflow, regression, scm, sid, and the
single -> DDP resume of consistency).
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for the support package

from support.ddp_matrix import (  # noqa: E402
    ROOT,
    Run,
    check_ddp_resumes_in_one_process,
    check_ddp_run,
    check_single_resumes_under_ddp,
    run_matrix,
    selected,
    single_thread,
)

from unidistill.callbacks import RankAgreementCheck  # noqa: E402

CONFIGS = ROOT / "configs" / "digits"
OBJECTIVES = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "teacher")
FAST = {"consistency", "dmd2"}
REVERSE, FAST_REVERSE = ("consistency", "dmd2"), {"dmd2"}
STEPS = 6
SMALL = ["--data.init_args.batch_size=4", "--trainer.limit_val_batches=0"]
# Per objective, what makes every role and phase step within STEPS optimizer steps. The DMD family (dmd2,
# decoupled_dmd, fdiv: fake_updates_per_student 2; sid: 1), adversarial (1 discriminator step per student step)
# and scm (student then logvar) need no change: their plans step every role within two iterations.
ARGS = {
    # phases of 2 iterations: phase 0 from the UNet teacher, then phases 1 and 2 from the frozen phase teacher
    # refreshed from the (DDP-trained) student
    "progressive": ["--model.objective.init_args.phase_length=2"],
    # round 0 (iterations 0-3) reads the teacher cache made in the fixture, then the distillation stage
    # (iterations 4-5) solves the reflowed phase teacher's couplings on the fly
    "reflow": ["--model.objective.init_args.round_length=4"],
}
FWD = "test_ddp_digits_ranks_agree_and_ddp_checkpoint_resumes_in_one_process"
REV = "test_ddp_digits_single_process_checkpoint_resumes_under_ddp"


def _run(name: str, cache: Path | None) -> Run:
    args = [*SMALL, *ARGS.get(name, [])]
    if name == "reflow":
        # configs/digits/reflow.yaml names runs/digits_cache/reflow, which a fresh clone does not have: read the
        # one the fixture made (the single-process resume, in the distillation stage, does not read it)
        args.append(f"--model.objective.init_args.cache.init_args.root={cache}")
    return Run(CONFIGS / f"{name}.yaml", args)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, request):
    """One two-process launch for every digits objective this session selected."""
    reverse = set(selected(request, REV))
    names = set(selected(request, FWD)) | reverse
    out = tmp_path_factory.mktemp("ddp_digits")
    cache = None
    if "reflow" in names:
        from unidistill.cli import cache_main

        cache = out / "reflow_cache"  # 16 teacher couplings, 2 Heun steps: enough to read, seconds to make
        with single_thread():
            cache_main(["--config", str(CONFIGS / "reflow.yaml"), "--out", str(cache), "--samples", "16",
                        "--steps", "2", "--condition-pool", "16", "--shard-size", "16"])
    runs = {n: _run(n, cache) for n in names}
    singles = run_matrix(out, STEPS, runs, reverse=reverse)
    return out, runs, singles


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in OBJECTIVES])
def test_ddp_digits_ranks_agree_and_ddp_checkpoint_resumes_in_one_process(ddp_runs, name, tmp_path):
    out, runs, _ = ddp_runs
    check_ddp_run(out, name, STEPS)
    check_ddp_resumes_in_one_process(runs[name], out, name, STEPS, tmp_path)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST_REVERSE else pytest.mark.slow)
                                  for n in REVERSE])
def test_ddp_digits_single_process_checkpoint_resumes_under_ddp(ddp_runs, name):
    out, _, singles = ddp_runs
    check_single_resumes_under_ddp(out, name, STEPS, singles[name])


def test_rank_agreement_check_compares_every_trainable_role():
    """The callback the matrix relies on names the role whose weights differ from rank 0's, not only the
    student's (here rank 0's fake score differs by one parameter)."""
    torch.manual_seed(0)
    roles = {"student": nn.Linear(3, 3), "fake_score": nn.Linear(3, 2)}
    module = SimpleNamespace(objective=SimpleNamespace(trainable_roles=tuple(roles)), role_module=roles.__getitem__)

    def trainer(shift: float):
        def broadcast(t, src):
            t[1, 0] += shift  # rank 0's checksum of the second role
            return t

        return SimpleNamespace(world_size=2, global_rank=1, strategy=SimpleNamespace(broadcast=broadcast))

    check = RankAgreementCheck()
    check.on_train_batch_end(trainer(0.0), module, None, None, 0)
    with pytest.raises(RuntimeError, match="rank 1 fake_score weights diverged from rank 0 at batch 0"):
        check.on_train_batch_end(trainer(1.0), module, None, None, 0)


def test_ranks_draw_distinct_reflow_couplings_and_dmd_regression_noise(monkeypatch):
    """Per-sample seeds derived from the iteration carry the rank too: two DDP ranks used to regress on the same
    noise (Reflow's on-the-fly coupling ids, DMD2's regression pairs), only their conditions differed. One
    process keeps exactly the seeds it had."""
    from unidistill.objectives import DMD2, Reflow, RegressionOptions
    from unidistill.objectives import dmd as dmd_module
    from unidistill.objectives.base import Batch, Context, make_context
    from unidistill.seeds import mix_seed

    def ctx(rank: int, world_size: int) -> Context:
        return make_context({"student": nn.Identity(), "teacher": nn.Identity()}, (2,), iteration=3, rank=rank,
                            world_size=world_size)

    reflow = Reflow()
    assert torch.equal(reflow.coupling_ids(4, ctx(0, 1)), 3 * 4 + torch.arange(4))  # one process: unchanged
    ids = [set(reflow.coupling_ids(4, ctx(r, 2)).tolist()) for r in (0, 1)]
    assert not ids[0] & ids[1]

    class Drawn(Exception):
        pass

    def stop(model, z, *args, **kwargs):
        raise Drawn(z)

    monkeypatch.setattr(dmd_module, "sample", stop)
    noise = []
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        with pytest.raises(Drawn) as drawn:
            DMD2(regression=RegressionOptions()).regression_loss(Batch(x0=torch.zeros(4, 2)), ctx(rank, world))
        noise.append(drawn.value.args[0])
    # run seed 0, regression_seed 0, iteration 3, rank 0
    one = torch.randn((4, 2), generator=torch.Generator().manual_seed(mix_seed(0, 0, 3, 0)))
    assert torch.equal(noise[0], one) and not torch.equal(noise[1], noise[2])
