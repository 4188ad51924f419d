"""The DDP matrix shared by integration/test_distributed_matrix.py (gmm) and .../test_distributed_digits.py (digits):
for each objective config, a fresh DDP fit on two CPU ranks (gloo, Lightning's DDP strategy, started the way
torchrun starts them by support/launch.py and run by support/ddp_driver.py), its checkpoint resumed in one process,
and, for the configs asked for, a single-process checkpoint resumed under DDP.

A test module describes its runs as ``{name: Run(config, args)}`` and calls ``run_matrix`` once (one launch of
the two ranks for every selected objective, so the process start-up and the Lightning import are paid once),
then checks each objective with ``check_ddp_run``, ``check_ddp_resumes_in_one_process`` and
``check_single_resumes_under_ddp``."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
# options every run of the matrix takes (single-process and DDP alike): no logger, no progress bar, CPU
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.enable_model_summary=false",
         "--trainer.accelerator=cpu", "--trainer.val_check_interval=100000"]
MORE = 4  # optimizer steps a resumed run trains past the checkpoint


@dataclass
class Run:
    """One objective of the matrix: its YAML config and the overrides (data size, schedule) of every fit."""

    config: Path
    args: list[str] = field(default_factory=list)


class StateAtStart(L.Callback):
    """The module state when training (re)starts, i.e. right after Lightning restored the checkpoint."""

    def on_train_start(self, trainer, pl_module):
        self.state = state(pl_module)


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def selected(request, test: str) -> list[str]:
    """The ``name`` parameters of ``test`` that this pytest session selected (after ``-m``/``-k``/node ids)."""
    return sorted({i.callspec.params["name"] for i in request.session.items
                   if i.originalname == test and i.module is request.module})


@contextmanager
def single_thread():
    """The conftest gives the test process two intra-op threads; these small networks gain nothing from them,
    and next to other jobs on two cores they ran the in-process fits 3-6x slower (measured on digits). The
    ranks run with OMP_NUM_THREADS=1 (tests/support/launch.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def single(run: Run, out: Path, steps: int, ckpt: Path | None = None, callbacks=None):
    """A single-process fit of ``steps`` optimizer steps into ``out`` (resumed from ``ckpt`` if given)."""
    from unidistill.runs import UnidistillCLI

    args = ["fit", "--config", str(run.config), *QUIET, *run.args, f"--trainer.default_root_dir={out}",
            f"--trainer.max_steps={steps}", "--trainer.devices=1"]
    extra = {"trainer_defaults": {"callbacks": callbacks}} if callbacks is not None else {}
    with single_thread():
        return UnidistillCLI(args=args + ([f"--ckpt_path={ckpt}"] if ckpt else []), **extra)


def run_matrix(out: Path, steps: int, runs: dict[str, Run], reverse: set[str] = frozenset()) -> dict[str, Path]:
    """Train each of ``runs`` under DDP into ``out/NAME/ddp``; for the names in ``reverse``, first a
    single-process fit into ``out/NAME/single`` whose checkpoint the ranks then resume into
    ``out/NAME/resumed``. Returns the single-process checkpoints."""
    from support.launch import launch_two_ranks

    singles = {}
    for name in sorted(reverse):
        cli = single(runs[name], out / name / "single", steps)
        singles[name] = Path(cli.trainer.checkpoint_callback.last_model_path)
    plan = [{"name": name, "config": str(run.config), "args": [*QUIET, *run.args],
             "single": str(singles[name]) if name in singles else None} for name, run in sorted(runs.items())]
    (out / "plan.json").write_text(json.dumps({"out": str(out), "steps": steps, "more": MORE, "runs": plan}))
    launch_two_ranks(["tests/support/ddp_driver.py", str(out / "plan.json")])
    return singles


def _ranks(folder: Path) -> tuple[dict, dict]:
    r0, r1 = (json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1))
    return r0, r1


def check_ddp_run(out: Path, name: str, steps: int) -> dict:
    """The fresh DDP fit: both ranks end with the same module state, tensor for tensor (``RankAgreementCheck``
    already compared every trainable role after every batch), and the checkpoint holds the steps taken."""
    r0, r1 = _ranks(out / name / "ddp")
    assert r0["digest"] == r1["digest"], [k for k in r0["digest"] if r0["digest"][k] != r1["digest"].get(k)]
    assert any(k.startswith("student.") for k in r0["digest"])
    ckpt = torch.load(out / name / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == steps and int(ckpt["state_dict"]["iteration"]) == r0["iteration"] > 0
    return r0


def check_ddp_resumes_in_one_process(run: Run, out: Path, name: str, steps: int, tmp_path: Path) -> None:
    """The DDP checkpoint resumes in one process: every tensor restored, then the student trains on."""
    ckpt_path = out / name / "ddp" / "checkpoints" / "last.ckpt"
    ddp_ckpt = torch.load(ckpt_path, weights_only=True)
    start = StateAtStart()
    more = single(run, tmp_path / "more", steps + MORE, ckpt_path, callbacks=[start])
    assert start.state.keys() == ddp_ckpt["state_dict"].keys()
    for k, v in ddp_ckpt["state_dict"].items():
        assert torch.equal(start.state[k], v), f"{k} not restored from the DDP checkpoint"
    assert more.trainer.global_step >= steps + MORE  # an iteration of several optimizer steps may cross the limit
    assert int(more.model.iteration) > int(ddp_ckpt["state_dict"]["iteration"])
    now = state(more.model)
    assert any(not torch.equal(now[k], v) for k, v in ddp_ckpt["state_dict"].items() if k.startswith("student."))


def check_single_resumes_under_ddp(out: Path, name: str, steps: int, single_ckpt: Path) -> None:
    """The reverse: a single-process checkpoint resumed under DDP trains on, ranks still identical."""
    from support.ddp_driver import digest

    before = torch.load(single_ckpt, weights_only=True)
    q0, q1 = _ranks(out / name / "resumed")
    # both ranks started from exactly the checkpoint's state, every tensor
    assert q0["start_digest"] == q1["start_digest"] == digest(before["state_dict"])
    assert q0["digest"] == q1["digest"]
    assert q0["iteration"] > int(before["state_dict"]["iteration"])
    resumed = torch.load(out / name / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] >= steps + MORE
