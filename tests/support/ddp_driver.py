"""Run by tests/support/ddp_matrix.py (for the distributed integration tests) in two
processes that the test creates itself, as torchrun or SLURM would (``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/
``MASTER_*`` set), so Lightning's DDP strategy joins them instead of launching children; one launch then trains
every objective in turn (the process group is set up once).

    python tests/support/ddp_driver.py PLAN.json

``PLAN.json`` (written by ``ddp_matrix.run_matrix``) holds ``out``, ``steps``, ``more`` and ``runs``, each run a
``name``, a ``config``, its override ``args`` and an optional ``single`` checkpoint. For each run: a fresh DDP fit
of ``steps`` optimizer steps into ``OUT/NAME/ddp`` with ``RankAgreementCheck`` (every trainable role compared
across ranks after every batch), then, when a single-process checkpoint is given, a DDP resume from it for
``more`` steps into ``OUT/NAME/resumed``. Each rank writes a digest of every tensor of its module state at the
start of training (after any restore) and at the end to ``.../rank<r>.json``.
"""

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from unidistill.cli import quiet_known_warnings  # noqa: E402
from unidistill.runs import UnidistillCLI  # noqa: E402


def digest(state: dict) -> dict[str, str]:
    """sha256 of every tensor of a state dict (or of a module's)."""
    state = state.state_dict() if hasattr(state, "state_dict") else state
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()}


class _DigestAtStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.digest = digest(pl_module)


def fit(config: str, out: Path, steps: int, args: list[str]) -> None:
    start = _DigestAtStart()
    cli = UnidistillCLI(args=["fit", "--config", config, *args, f"--trainer.default_root_dir={out}",
                              f"--trainer.max_steps={steps}", "--trainer.devices=2",
                              "--trainer.strategy=ddp_find_unused_parameters_true",
                              "--trainer.callbacks+=unidistill.callbacks.RankAgreementCheck"],
                        # these replace the CLI's default callbacks: keep its last.ckpt
                        trainer_defaults={"callbacks": [ModelCheckpoint(save_last=True), start]})
    rank = cli.trainer.global_rank
    (out / f"rank{rank}.json").write_text(json.dumps({"iteration": int(cli.model.iteration),
                                                       "start_digest": start.digest, "digest": digest(cli.model)}))


def main() -> None:
    quiet_known_warnings()
    plan = json.loads(Path(sys.argv[1]).read_text())
    out, steps = Path(plan["out"]), int(plan["steps"])
    for run in plan["runs"]:
        fit(run["config"], out / run["name"] / "ddp", steps, run["args"])
        if run["single"]:
            fit(run["config"], out / run["name"] / "resumed", steps + int(plan["more"]),
                [*run["args"], f"--ckpt_path={run['single']}"])


if __name__ == "__main__":
    main()
