"""Write files and directories so that a reader never sees a half-written one (caches, checkpoints, run
outputs, reports: every file mmcam writes goes through here).

Everything is first written under a temporary name in the destination's own directory (same file
system, so the final :func:`os.replace` is atomic), flushed to disk, then renamed. Temporary names
start with :data:`TEMP_PREFIX`, keep the final name's ending (``.nii.gz`` must stay last for nibabel to
compress) and are removed when writing fails.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_PREFIX",
    "temporary_sibling",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_tree",
    "replace_directory",
]

#: Prefix of every temporary file or directory this package creates.
TEMP_PREFIX = ".tmp-mmcam-"


def temporary_sibling(path: Path) -> Path:
    """A fresh temporary path next to ``path`` whose name ends like ``path``'s."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to create a temporary file, then rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def fsync_tree(directory: Path) -> None:
    """Flush every file directly inside ``directory`` to disk."""
    for child in Path(directory).iterdir():
        if child.is_file():
            _fsync_file(child)


def replace_directory(tmp_dir: Path, final_dir: Path) -> None:
    """Move the complete directory ``tmp_dir`` to ``final_dir``, replacing an existing one.

    A directory cannot be renamed over a non-empty one, so an existing ``final_dir`` is first renamed
    aside and removed after the new one is in place; a reader sees the old or the new directory, or
    (for an instant) none, never a mixture.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    fsync_tree(tmp_dir)
    old = None
    if final_dir.exists():
        old = temporary_sibling(final_dir)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old)
