"""Checkpoint I/O that never leaves a half-written file and refuses corrupted ones with a clear error.

Writes go to a temporary file in the same folder, are fsynced and renamed over the target, so a kill leaves either
the old or the new file; temporary files of an interrupted write are removed by the next write of that file. Each
checkpoint carries a sha256 checksum of its tensor data (``unidistill_checksum``), verified on load, so flipped
bytes are refused instead of loading as absurd weights. A full disk is reported as such, naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

CHECKSUM_KEY = "unidistill_checksum"


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists/tuples, with a path naming where it sits, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            if key != CHECKSUM_KEY:
                yield from _tensors(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _tensors(item, f"{prefix}/{i}")


def tensor_checksum(obj: Any) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor in ``obj``."""
    h = hashlib.sha256()
    for name, t in _tensors(obj):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _remove_stale_temporaries(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target. Dicts get a checksum of
    their tensors. A full disk raises ``OSError(ENOSPC)`` naming the file; the old file is left intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    if isinstance(obj, dict):
        obj = {**obj, CHECKSUM_KEY: tensor_checksum(obj)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _out_of_space(err, path):
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"no space left on device while writing the checkpoint {str(path)!r} "
                                        f"({free / 2**20:.1f} MiB free there); free space or choose another "
                                        "folder (trainer.default_root_dir)") from err
        raise


def _out_of_space(err: BaseException, path: Path) -> bool:
    """torch reports a failed write as ``RuntimeError: ... unexpected pos ...``; find the ENOSPC behind it."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(err, RuntimeError) and "unexpected pos" in str(err) and _device_full(path.parent)


def _device_full(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * 65536)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        return err.errno == errno.ENOSPC
    return False


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and say what is wrong; a checkpoint whose
    tensors do not match its stored checksum is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupted, truncated or not a weights-only checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); it was not loaded"
        ) from err
    if isinstance(obj, dict) and CHECKSUM_KEY in obj:
        stored = obj.pop(CHECKSUM_KEY)
        if tensor_checksum(obj) != stored:
            raise ValueError(f"checkpoint {str(path)!r} is corrupted: its tensor data does not match the checksum "
                             "written with it (bytes changed on disk or in transfer); it was not loaded")
    return obj


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic, checksummed writes; weights-only, verified loads with clear errors."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return safe_torch_load(path, map_location or "cpu")
