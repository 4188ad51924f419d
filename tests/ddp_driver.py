"""Run by tests/test_distributed_matrix.py in two processes that the test creates itself, as torchrun or SLURM
would (``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` set), so Lightning's DDP strategy joins them instead
of launching children; one launch then trains every objective in turn (the process group is set up once).

    python tests/ddp_driver.py OUT_DIR STEPS NAME[=SINGLE_CKPT] ...

For each config ``configs/gmm/NAME.yaml``: a fresh DDP fit of ``STEPS`` optimizer steps into ``OUT_DIR/NAME/ddp``
with ``RankAgreementCheck`` (student weights compared across ranks after every batch), then, when a
single-process checkpoint is given, a DDP resume from it for 4 more steps into ``OUT_DIR/NAME/resumed``. Each
rank writes a digest of every tensor of its final module state to ``.../rank<r>.json``.
"""

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unidistill.cli import UnidistillCLI, quiet_known_warnings  # noqa: E402

SMALL = ["--data.init_args.train_size=512", "--data.init_args.val_size=64", "--data.init_args.batch_size=32",
         "--data.init_args.val_batch_size=64", "--trainer.val_check_interval=100000",
         "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.enable_model_summary=false",
         "--trainer.accelerator=cpu"]


def digest(module) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in module.state_dict().items()}


def fit(config: str, out: Path, steps: int, extra: list[str]) -> None:
    cli = UnidistillCLI(args=["fit", "--config", config, *SMALL, f"--trainer.default_root_dir={out}",
                              f"--trainer.max_steps={steps}", "--trainer.devices=2",
                              "--trainer.strategy=ddp_find_unused_parameters_true",
                              "--trainer.callbacks+=unidistill.callbacks.RankAgreementCheck", *extra])
    rank = cli.trainer.global_rank
    (out / f"rank{rank}.json").write_text(json.dumps({"iteration": int(cli.model.iteration),
                                                       "digest": digest(cli.model)}))


def main() -> None:
    quiet_known_warnings()
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    for spec in sys.argv[3:]:
        name, _, single = spec.partition("=")
        config = str(ROOT / "configs" / "gmm" / f"{name}.yaml")
        fit(config, out / name / "ddp", steps, [])
        if single:
            fit(config, out / name / "resumed", steps + 4, [f"--ckpt_path={single}"])


if __name__ == "__main__":
    main()
