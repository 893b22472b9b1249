"""Checkpoints that resume bitwise: model, optimiser, step, epoch and every random state.

Files are written to a temporary name in the same folder and renamed, so a crash never leaves a
half-written checkpoint under the real name.

A checkpoint holds tensors and plain values only (dicts, lists, tuples, str, numbers, bool, None; the
random states are stored as such), and is read with ``torch.load(weights_only=True)``: a run directory
from someone else cannot run code through a pickled object in its ``.pt`` files; such a file is refused.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcam.atomic_files import atomic_write


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a flushed temporary file in the same folder and an atomic rename
    (:func:`mmcam.atomic_files.atomic_write`); a failed write raises :class:`OSError` and leaves ``path`` as
    it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # serialised in memory first: a failing write (full disk, EFBIG) is then a plain OSError, where torch's
    # zip writer would turn it into a RuntimeError
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing, truncated or corrupt, or holding objects other
    than tensors and plain values."""


def _numpy_state() -> dict[str, Any]:
    """NumPy's global random state as a tensor and plain values (loadable with ``weights_only``)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    keys_tensor = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return {"name": name, "keys": keys_tensor, "pos": position, "has_gauss": has_gauss, "gauss": cached_gaussian}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))


def capture_rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) and the named generators' states, as tensors
    and plain values."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of :func:`capture_rng_state`; the named generators must be the ones captured."""
    random.setstate(state["python"])
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    missing = set(state["generators"]) ^ set(generators)
    if missing:
        raise ValueError(f"checkpoint generators {sorted(state['generators'])} do not match {sorted(generators)}")
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`atomic_save`, read with ``weights_only=True`` (no code runs).

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or holds objects other than tensors
            and plain values (never unpickled), with one line naming the file and the cause.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "global" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain values ({first}); mmcam does "
                "not load it, because unpickling such objects can run code; use a checkpoint written by "
                "mmcam's training"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({first})") from None
    except Exception as exc:  # zip / stream errors of a truncated or corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be read: truncated or corrupt ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of mmcam (a {type(saved).__name__})")
    return saved
