"""Helpers that tests/integration/test_fault_tolerance.py loads into real ``unidistill fit`` subprocesses."""

import os
import time

import lightning as L


class Throttle(L.Callback):
    """Sleep after every optimizer batch and publish the step reached (atomically) to ``progress_file``, so a
    test can SIGKILL the process at a step it chose. Sleeping does not change any number the run computes."""

    def __init__(self, progress_file: str, seconds: float = 0.05) -> None:
        self.progress_file, self.seconds = progress_file, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tmp = self.progress_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(trainer.global_step))
        os.replace(tmp, self.progress_file)
        time.sleep(self.seconds)
