"""A real ``unidistill fit`` process killed with SIGKILL at a random step resumes from its last checkpoint and
ends with exactly the parameters of an uninterrupted run; a kill never leaves a half-written checkpoint."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from unidistill.checkpoint import safe_torch_load

ROOT = Path(__file__).resolve().parents[2]
TOTAL, EVERY = 60, 5


def _env():
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}


def _args(out: Path, steps: int, progress: Path | None = None) -> list[str]:
    callbacks = out.parent / f"{out.name}_callbacks.yaml"
    lines = ["trainer:", "  callbacks:",
             "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
             f"      init_args: {{every_n_train_steps: {EVERY}, save_last: true, save_top_k: -1}}"]
    if progress is not None:
        lines += ["    - class_path: support.faults.Throttle", f"      init_args: {{progress_file: '{progress}'}}"]
    callbacks.write_text("\n".join(lines) + "\n")
    return [sys.executable, "-m", "unidistill.cli", "fit", "--config", "configs/gmm/consistency.yaml",
            "--config", str(callbacks),
            "--model.modality.init_args.hidden=32", "--model.modality.init_args.depth=1",
            "--data.init_args.train_size=640", "--data.init_args.val_size=64", "--data.init_args.batch_size=64",
            "--data.init_args.val_batch_size=64", "--trainer.val_check_interval=100000",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={out}", f"--trainer.max_steps={steps}"]


def _run(args: list[str], **kw) -> None:
    result = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, result.stderr[-4000:]


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    kill_at = rng.randint(EVERY + 2, TOTAL - EVERY)
    progress = tmp_path / "progress.txt"
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_args(killed, TOTAL, progress), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    reached = -1
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file():
            try:
                reached = int(progress.read_text() or -1)
            except ValueError:
                pass
        if reached >= kill_at:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert reached < TOTAL, "killed after the end"

    ckpts = sorted((killed / "checkpoints").glob("*.ckpt"))
    assert ckpts, "no checkpoint before the kill"
    for path in ckpts:  # every checkpoint file that exists is complete
        assert "state_dict" in safe_torch_load(path)
    last = safe_torch_load(killed / "checkpoints" / "last.ckpt")
    assert 0 < last["global_step"] < TOTAL and last["global_step"] % EVERY == 0
    assert last["global_step"] <= reached + 2

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    _run(_args(resumed, TOTAL) + [f"--ckpt_path={killed / 'checkpoints' / 'last.ckpt'}"])
    _run(_args(straight, TOTAL))
    a = safe_torch_load(straight / "checkpoints" / "last.ckpt")["state_dict"]
    b = safe_torch_load(resumed / "checkpoints" / "last.ckpt")["state_dict"]
    assert int(a["iteration"]) == int(b["iteration"]) == TOTAL
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill at step ~{reached} and resume from " \
                                        f"step {last['global_step']}"
    assert not torch.equal(a["student.network.inp.weight"], last["state_dict"]["student.network.inp.weight"])


def _rewrite_forever(path: str, n: int, started) -> None:
    from unidistill.checkpoint import atomic_torch_save

    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    i = 0
    while True:
        i += 1
        atomic_torch_save({"i": torch.tensor(i), "w": torch.full((n,), float(i))}, path)
        started.set()


def test_sigkill_during_checkpoint_writes_never_leaves_a_partial_file(tmp_path):
    """SIGKILL a process that does nothing but rewrite a 16 MB checkpoint, at random moments (most land inside a
    write): the file is always either absent or complete and self-consistent; a temporary file may remain, never
    under the checkpoint's name. The writer is forked from this process, which has the code imported already."""
    import multiprocessing

    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    path = tmp_path / "model.ckpt"
    ctx = multiprocessing.get_context("fork")
    seen = 0
    for _ in range(8):
        started = ctx.Event()
        proc = ctx.Process(target=_rewrite_forever, args=(str(path), 4_000_000, started), daemon=True)
        proc.start()
        assert started.wait(timeout=60), "the writer never completed a first write"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL
        if path.exists():
            state = safe_torch_load(path)
            assert torch.equal(state["w"], torch.full((4_000_000,), float(int(state["i"]))))
            seen += 1
        path.unlink()  # the next writer starts from nothing, so a partial write would show as a bad file
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.ckpt"]
        assert all(n.startswith(".model.ckpt.") and n.endswith(".tmp") for n in leftovers), leftovers
    assert seen > 0


def test_resume_from_a_checkpoint_taken_at_the_last_batch_of_an_epoch_is_exact(tiny_gmm_args, tmp_path):
    """The SIGKILL test above found this: a step checkpoint written after the epoch's last batch (10 batches per
    epoch here) restarted the next epoch ``consumed`` samples in, so the resumed run saw other data."""
    from test_resume import _fit, _state

    args = [a for a in tiny_gmm_args if not a.startswith("--trainer.default_root_dir")]
    straight = _state(_fit([*args, f"--trainer.default_root_dir={tmp_path / 's'}"], 14))
    _fit([*args, f"--trainer.default_root_dir={tmp_path / 'a'}"], 12, every=10)
    ckpt = tmp_path / "a" / "checkpoints" / "epoch=0-step=10.ckpt"
    assert safe_torch_load(ckpt)["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "consumed": 10}]
    resumed = _state(_fit([*args, f"--trainer.default_root_dir={tmp_path / 'b'}"], 14, ckpt_path=ckpt))
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), f"{k} differs after resuming at an epoch boundary"
