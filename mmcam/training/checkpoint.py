"""Checkpoints that resume bitwise: model, optimiser, step, epoch and every random state.

Files are written to a temporary name in the same folder and renamed, so a crash never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcam.atomic_files import atomic_write


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a flushed temporary file in the same folder and an atomic rename
    (:func:`mmcam.atomic_files.atomic_write`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def capture_rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) and the named generators' states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of :func:`capture_rng_state`; the named generators must be the ones captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    missing = set(state["generators"]) ^ set(generators)
    if missing:
        raise ValueError(f"checkpoint generators {sorted(state['generators'])} do not match {sorted(generators)}")
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`atomic_save`; a clear error names a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle / zip errors of a corrupt file
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
