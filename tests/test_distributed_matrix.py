"""DDP (two CPU processes, gloo, Lightning's DDP strategy) for every gmm objective config: ranks keep identical
module state (student checked after every batch by ``RankAgreementCheck``, every tensor of the final state by
digest), a DDP checkpoint resumes in a single process and a single-process checkpoint resumes under DDP.

One pair of processes trains every objective (tests/ddp_driver.py), so the suite pays the process start-up
and Lightning import once."""

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from launch import launch_two_ranks

from unidistill.cli import UnidistillCLI

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = sorted(p.stem for p in (ROOT / "configs" / "gmm").glob("*.yaml") if p.stem != "teacher")
# CI runs a representative subset, one per distinct role/plan structure: two alternating roles (dmd2), a
# discriminator on teacher features (adversarial), an EMA target (consistency), a frozen phase-teacher copy
# (progressive), an extra trainable head (scm). Every other objective runs under `-m slow`.
FAST = {"adversarial", "consistency", "dmd2", "progressive", "scm"}
PARAMS = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in OBJECTIVES]
STEPS = 6


class _StateAtStart(L.Callback):
    """The module state when training (re)starts, i.e. right after Lightning restored the checkpoint."""

    def on_train_start(self, trainer, pl_module):
        self.state = _state(pl_module)


def _single(name: str, out: Path, steps: int, ckpt: Path | None = None, callbacks=None) -> UnidistillCLI:
    from ddp_driver import SMALL

    args = ["fit", "--config", str(ROOT / "configs" / "gmm" / f"{name}.yaml"), *SMALL,
            f"--trainer.default_root_dir={out}", f"--trainer.max_steps={steps}", "--trainer.devices=1"]
    extra = {"trainer_defaults": {"callbacks": callbacks}} if callbacks is not None else {}
    return UnidistillCLI(args=args + ([f"--ckpt_path={ckpt}"] if ckpt else []), **extra)


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, request):
    """One two-process launch for every objective this session selected."""
    sys.path.insert(0, str(Path(__file__).parent))
    test = "test_ddp_ranks_agree_and_checkpoints_cross_between_ddp_and_single"
    names = sorted({i.callspec.params["name"] for i in request.session.items if i.originalname == test})
    out = tmp_path_factory.mktemp("ddp_matrix")
    singles = {}
    for name in names:
        cli = _single(name, out / name / "single", STEPS)
        singles[name] = Path(cli.trainer.checkpoint_callback.last_model_path)
    launch_two_ranks(["tests/ddp_driver.py", str(out), str(STEPS), *[f"{n}={singles[n]}" for n in names]])
    return out, singles


@pytest.mark.parametrize("name", PARAMS)
def test_ddp_ranks_agree_and_checkpoints_cross_between_ddp_and_single(ddp_runs, name, tmp_path):
    out, singles = ddp_runs
    # 1. fresh DDP run: both ranks hold the same state, tensor for tensor
    r0, r1 = (json.loads((out / name / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["digest"] == r1["digest"]
    assert any(k.startswith("student.") for k in r0["digest"])
    ckpt_path = out / name / "ddp" / "checkpoints" / "last.ckpt"
    ddp_ckpt = torch.load(ckpt_path, weights_only=True)
    assert ddp_ckpt["global_step"] == STEPS and int(ddp_ckpt["state_dict"]["iteration"]) == r0["iteration"] > 0

    # 2. the DDP checkpoint resumes in one process: restored completely, then trains on
    start = _StateAtStart()
    more = _single(name, tmp_path / "more", STEPS + 4, ckpt_path, callbacks=[start])
    assert start.state.keys() == ddp_ckpt["state_dict"].keys()
    for k, v in ddp_ckpt["state_dict"].items():
        assert torch.equal(start.state[k], v), f"{k} not restored from the DDP checkpoint"
    assert more.trainer.global_step >= STEPS + 4  # an iteration of several optimizer steps may cross the limit
    assert int(more.model.iteration) > r0["iteration"]
    assert not torch.equal(_state(more.model)["student.network.inp.weight"],
                           ddp_ckpt["state_dict"]["student.network.inp.weight"])

    # 3. the reverse: a single-process checkpoint resumed under DDP, ranks still identical
    single = torch.load(singles[name], weights_only=True)
    q0, q1 = (json.loads((out / name / "resumed" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert q0["digest"] == q1["digest"]
    assert q0["iteration"] > int(single["state_dict"]["iteration"])
    resumed = torch.load(out / name / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] >= STEPS + 4
