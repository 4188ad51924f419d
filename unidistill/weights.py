"""Loading a safetensors state dict into a network, with errors that name the file and the mismatch.

Every plugin that ships or loads weights (teachers, student initialisations, exports) goes through this one
function, so a missing file, a corrupt file and a network of the wrong size read the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn


def read_safetensors(path: str | Path, what: str) -> dict[str, Tensor]:
    """The state dict in ``path``; a missing or unreadable file is an error naming ``what`` and the path."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {str(path)!r}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{what} weights at {str(path)!r} are not a readable safetensors file: {err}") from err


def load_state(module: nn.Module, state: dict[str, Tensor], path: str | Path, what: str, hint: str = "") -> None:
    """Strictly load ``state`` (read from ``path``) into ``module``, naming every mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{what} weights at {str(path)!r} do not match the configured network{f' ({hint})' if hint else ''}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )
    module.load_state_dict(state)


def load_safetensors(module: nn.Module, path: str | Path, what: str, hint: str = "") -> None:
    """Strictly load ``path`` into ``module``. ``what`` names the weights in errors (``"teacher"``); ``hint``
    says which configuration fields decide the shapes (``"horizon, backbone, sizes"``)."""
    load_state(module, read_safetensors(path, what), path, what, hint)
