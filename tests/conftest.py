import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Helper modules are imported by bare name (``from helpers import``), never as ``tests.helpers``: torch-fidelity's
# wheel installs a top-level ``tests`` package that would shadow this folder.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from intra-op threads, and on a loaded machine they lose a lot; modules
    opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_gmm_args(tmp_path):
    """LightningCLI arguments for a seconds-long gmm run (small MLP, small batches) in ``tmp_path``."""
    return [
        "--config", "configs/gmm/consistency.yaml",
        "--model.modality.init_args.hidden=32", "--model.modality.init_args.depth=1",
        "--data.init_args.train_size=640", "--data.init_args.val_size=256", "--data.init_args.batch_size=64",
        "--data.init_args.val_batch_size=256",
        "--trainer.val_check_interval=1000", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
