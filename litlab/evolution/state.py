"""Checkpoint files of an evolutionary run: atomic writes (temporary file, then rename).

The state is a plain ``dict`` (see ``EvolutionEngine.state_dict``) saved with ``torch.save``; the optimizer
inside it is a pickle (bytes). Load only checkpoints you wrote: unpickling runs code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from litlab.errors import DataError


def save_state(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Writes ``state`` to ``path`` atomically: a reader sees the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a state written by :func:`save_state`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError) as err:
        raise DataError(f"cannot read the evolution checkpoint {str(path)!r}: {err}") from err
    if not isinstance(state, dict) or "optimizer" not in state:
        raise DataError(f"{str(path)!r} is not an evolution checkpoint (no 'optimizer' entry)")
    return state
