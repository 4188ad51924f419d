"""Offline teacher cache: (noise, condition, teacher sample, optional trajectory points) as a dataset.

``generate_cache`` runs a (guided) teacher with any solver of ``unidistill.solvers`` from seeded noise and
writes sharded safetensors files plus ``manifest.json`` recording the teacher's identity (a hash of its
state dict, path, prediction type and a caller-supplied config), the solver, steps, NFE per sample, seed
and shard layout. Shard ``i`` draws its conditions and noise from its own generator seeded by
``(seed, i)``, so any shard can be (re)generated alone; each shard is written atomically (temporary file
then ``os.replace``), so a run interrupted after some shards and rerun produces exactly the shards of one
uninterrupted run. ``TeacherCache`` serves the records as a ``torch.utils.data.Dataset`` and refuses a
cache made by a different teacher than the configured one, naming both.

Trajectory points are the solver's states at the requested ``trajectory_times`` (times of the path,
decreasing; inserted into the solver grid so the solver stops exactly there), e.g. a student's step grid
for trajectory regression (docs/formulations.md §8).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path as FilePath
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from unidistill.denoiser import GuidedDenoiser
from unidistill.seeds import mix_seed
from unidistill.solvers import SOLVERS, initial_latent

FORMAT = "unidistill-teacher-cache"
VERSION = 1
_GEN_KEYS = ("teacher", "solver", "steps", "guidance", "seed", "num_samples", "shard_size", "latent_shape",
             "trajectory_times")


def teacher_fingerprint(teacher: nn.Module, config: dict[str, Any] | None = None) -> str:
    """sha256 over the teacher's state dict (names, dtypes, shapes, bytes), its class, path and prediction
    type, and ``config`` (which must identify parameter-free teachers, e.g. an analytic one)."""
    h = hashlib.sha256()
    inner = getattr(teacher, "network", teacher)
    meta = {"class": type(inner).__name__, "path": repr(getattr(teacher, "path", None)),
            "prediction": getattr(teacher, "prediction", None), "config": config or {}}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def solve_with_checkpoints(model: Any, noise: Tensor, steps: int, cond: Any, solver: str,
                           checkpoints: Sequence[float] = ()) -> tuple[Tensor, list[Tensor], int]:
    """Integrate from unit ``noise`` on ``model.path.time_grid(steps)`` with ``checkpoints`` inserted.

    Returns the sample, the states at each checkpoint time (in the given order) and the NFE spent.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    path = model.path
    grid = path.time_grid(steps, device=noise.device)
    stops = sorted({float(c) for c in checkpoints}, reverse=True)
    if any(c < 0 or c > float(grid[0]) for c in stops):
        raise ValueError(f"checkpoint times {stops} must lie in [0, {float(grid[0])}]")
    full = torch.unique(torch.cat([grid, torch.tensor(stops, dtype=grid.dtype, device=grid.device)]))
    full = full.flip(0)
    x = initial_latent(path, noise, float(full[0]))
    states: dict[float, Tensor] = {float(full[0]): x}
    nfe, seg_start = 0, 0
    for i in range(1, len(full)):
        if float(full[i]) in stops or i == len(full) - 1:
            out = SOLVERS[solver](model, x, full[seg_start : i + 1], cond)
            x, nfe = out.x, nfe + out.nfe
            states[float(full[i])] = x
            seg_start = i
    return x, [states[float(c)] for c in checkpoints], nfe


def _atomic_save(tensors: dict[str, Tensor], path: FilePath, metadata: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(obj: dict[str, Any], path: FilePath) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _cond_tensors(cond: Any) -> dict[str, Tensor]:
    if cond is None:
        return {}
    if isinstance(cond, Tensor):
        return {"cond": cond}
    if isinstance(cond, dict) and all(isinstance(v, Tensor) for v in cond.values()):
        return {f"cond.{k}": v for k, v in cond.items()}
    raise TypeError(
        f"the cache stores conditions that are None, a tensor or a dict of tensors, got {type(cond).__name__}"
    )


def generate_cache(
    teacher: nn.Module, root: str | os.PathLike, num_samples: int, latent_shape: Sequence[int], *,
    solver: str = "heun", steps: int = 32, seed: int = 0, shard_size: int = 1024,
    conditions: Callable[[int, torch.Generator], Any] | None = None, guidance: float = 1.0,
    null_condition: Callable[[Any], Any] | None = None, trajectory_times: Sequence[float] | None = None,
    teacher_config: dict[str, Any] | None = None, progress: bool = True, device: Any = "cpu",
) -> FilePath:
    """Generate (or finish generating) a teacher cache in ``root``; returns the manifest's path.

    ``conditions(n, generator)`` draws the conditions of a shard (``None`` for unconditional teachers).
    An existing manifest with the same generation settings is resumed: finished shards are kept and the
    missing ones generated. A manifest with different settings is refused rather than overwritten.
    """
    from tqdm.auto import tqdm

    # every argument is checked before anything is written: a typo must not leave a manifest behind
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    bad = {k: v for k, v in {"num_samples": num_samples, "steps": steps, "shard_size": shard_size}.items() if v < 1}
    if bad:
        raise ValueError(f"the teacher cache needs positive counts, got {bad}")
    if guidance != 1.0 and null_condition is None:
        raise ValueError("a guided teacher cache (guidance != 1) needs null_condition")
    t_top = float(teacher.path.time_grid(steps)[0])
    if trajectory_times is not None and any(not 0 <= float(t) <= t_top for t in trajectory_times):
        raise ValueError(f"trajectory times {list(trajectory_times)} must lie in [0, {t_top}] (the teacher's path)")
    root = FilePath(root)
    root.mkdir(parents=True, exist_ok=True)
    model = teacher if guidance == 1.0 else GuidedDenoiser(teacher, guidance, null_condition)
    num_shards = -(-num_samples // shard_size)
    manifest = {
        "format": FORMAT, "version": VERSION,
        "teacher": {"hash": teacher_fingerprint(teacher, teacher_config), "config": teacher_config or {}},
        "solver": solver, "steps": steps, "guidance": guidance, "seed": seed, "num_samples": num_samples,
        "shard_size": shard_size, "latent_shape": list(latent_shape),
        "trajectory_times": None if trajectory_times is None else [float(t) for t in trajectory_times],
        "shards": [f"shard-{i:05d}.safetensors" for i in range(num_shards)],
        "nfe_per_sample": None, "complete": False,
    }
    mpath = root / "manifest.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        diff = [k for k in _GEN_KEYS if old.get(k) != manifest[k]]
        if diff:
            raise ValueError(f"{root} holds a different teacher cache (differs in {diff}); use another folder")
        manifest["nfe_per_sample"] = old.get("nfe_per_sample")
    _write_json(manifest, mpath)
    bar = tqdm(total=num_samples, desc="teacher cache", unit="sample", disable=not progress)
    for i, name in enumerate(manifest["shards"]):
        n = min(shard_size, num_samples - i * shard_size)
        if (root / name).is_file():
            bar.update(n)
            continue
        g = torch.Generator(device).manual_seed(mix_seed(seed, i))
        cond = conditions(n, g) if conditions is not None else None
        noise = torch.randn((n, *latent_shape), generator=g, device=device)
        x, traj, nfe = solve_with_checkpoints(model, noise, steps, cond, solver, trajectory_times or ())
        tensors = {"noise": noise, "sample": x, **_cond_tensors(cond)}
        if traj:
            tensors["trajectory"] = torch.stack(traj, dim=1)
        # one metadata key: safetensors orders metadata keys arbitrarily, which would break byte-identity
        _atomic_save(tensors, root / name, {"unidistill": json.dumps({"shard": i, "seed": seed}, sort_keys=True)})
        manifest["nfe_per_sample"] = nfe
        bar.update(n)
    bar.close()
    manifest["complete"] = True
    _write_json(manifest, mpath)
    return mpath


class TeacherCache(Dataset):
    """Records ``{"noise", "sample", "cond"?, "trajectory"?}`` of a finished cache.

    With ``teacher`` given, its fingerprint (with ``teacher_config``) must equal the manifest's; with
    ``expected`` (e.g. ``{"solver": "heun", "steps": 32}``) those manifest entries must match too.
    """

    def __init__(self, root: str | os.PathLike, teacher: nn.Module | None = None,
                 teacher_config: dict[str, Any] | None = None, expected: dict[str, Any] | None = None) -> None:
        self.root = FilePath(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"no teacher cache manifest at {str(mpath)!r}")
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{str(mpath)!r} is not a {FORMAT} manifest")
        if not self.manifest.get("complete"):
            raise ValueError(f"teacher cache at {str(self.root)!r} is incomplete; rerun generate_cache to finish it")
        self._checked: set[int] = set()
        if teacher is not None:
            self.check_teacher(teacher, teacher_config)
        for key, value in (expected or {}).items():
            if self.manifest.get(key) != value:
                raise ValueError(f"teacher cache at {str(self.root)!r} has {key}={self.manifest.get(key)!r}, "
                                 f"expected {value!r}")
        self.shard_size, self.length = self.manifest["shard_size"], self.manifest["num_samples"]
        self._loaded: tuple[int, dict[str, Tensor]] | None = None

    def check_teacher(self, teacher: nn.Module, teacher_config: dict[str, Any] | None = None) -> None:
        """Refuse a cache made by another teacher than ``teacher`` (checked once per teacher object).

        Objectives call this on first use, so a cache named in YAML (where no teacher can be passed) is
        still checked against the teacher the run actually loaded.
        """
        if id(teacher) in self._checked:
            return
        want = teacher_fingerprint(teacher, teacher_config)
        have = self.manifest["teacher"]
        if want != have["hash"]:
            raise ValueError(
                f"teacher cache at {str(self.root)!r} was made by teacher {have['hash'][:16]} "
                f"(config {have['config']}), but the configured teacher is {want[:16]} "
                f"(config {teacher_config or {}}); regenerate the cache for this teacher"
            )
        self._checked.add(id(teacher))

    @property
    def trajectory_times(self) -> list[float] | None:
        return self.manifest["trajectory_times"]

    def __len__(self) -> int:
        return self.length

    def _shard(self, i: int) -> dict[str, Tensor]:
        if self._loaded is None or self._loaded[0] != i:
            with safe_open(str(self.root / self.manifest["shards"][i]), framework="pt") as f:
                self._loaded = (i, {k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
        return self._loaded[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a cache of {self.length}")
        shard = self._shard(index // self.shard_size)
        j = index % self.shard_size
        rec: dict[str, Any] = {k: v[j] for k, v in shard.items() if not k.startswith("cond.")}
        sub = {k[5:]: v[j] for k, v in shard.items() if k.startswith("cond.")}
        if sub:
            rec["cond"] = sub
        return rec

    def batch(self, indices: Sequence[int] | Tensor) -> dict[str, Any]:
        """Stack the records at ``indices`` (conditions stacked too; ``cond`` absent if none stored)."""
        recs = [self[int(i)] for i in indices]
        out: dict[str, Any] = {}
        for key in recs[0]:
            if isinstance(recs[0][key], dict):
                out[key] = {k: torch.stack([r[key][k] for r in recs]) for k in recs[0][key]}
            else:
                out[key] = torch.stack([r[key] for r in recs])
        return out
