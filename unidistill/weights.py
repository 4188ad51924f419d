"""Loading a safetensors state dict into a network, with errors that name the file and the mismatch.

Every plugin that ships or loads weights (teachers, student initialisations, exports) goes through this one
function, so a missing file, a corrupt file and a network of the wrong size read the same everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def load_safetensors(module: nn.Module, path: str | Path, what: str, hint: str = "",
                     card: dict[str, Any] | None = None) -> None:
    """Strictly load ``path`` into ``module``. ``what`` names the weights in errors (``"teacher"``); ``hint``
    says which configuration fields decide the shapes (``"horizon, backbone, sizes"``); ``card``: the fields a
    card beside the file must agree on (``check_card``), checked before anything is read."""
    if card is not None:
        check_card(path, card, what)
    load_state(module, read_safetensors(path, what), path, what, hint)


def check_card(path: str | Path, expected: dict[str, Any], what: str) -> None:
    """When the weights at ``path`` have a card beside them (``<stem>.json``, as ``Modality.export`` writes),
    every field of ``expected`` it records must agree (e.g. the noise path and prediction type): weights trained
    to predict ``x0`` but read as a velocity predictor load without a shape error and sample garbage."""
    card = Path(path).with_suffix(".json")
    if not card.is_file():
        return
    try:
        info = json.loads(card.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"the card {str(card)!r} of the {what} weights is not valid JSON: {err}") from err
    wrong = [f"{k}: weights {info[k]!r}, configured {v!r}" for k, v in expected.items() if k in info and info[k] != v]
    if wrong:
        raise ValueError(f"{what} weights at {str(path)!r} were trained for another setting ({'; '.join(wrong)}); "
                         f"configure the modality as its card {str(card)!r} says")
