"""One training process per run directory: an exclusive lock on ``RUN_DIR/.lock``.

The lock is an ``fcntl.flock`` on an open file, held for the life of the training process: the operating
system releases it when the process ends in any way (normal exit, exception, ``kill -9``, a crashed node),
so a crashed run never leaves it stuck; the file itself may stay and means nothing on its own. The file
records the holder's pid and start time, for the message a second process gets.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

__all__ = ["LOCK_FILE", "RunDirectoryBusy", "RunLock"]

LOCK_FILE = ".lock"


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """The lock of one run directory; :meth:`acquire` once, :meth:`release` (or process exit) frees it."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            RunDirectoryBusy: another process holds it (naming its pid and start time when recorded).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirectoryBusy(
                f"{self.run_dir} is in use by another training process ({holder}); wait for it to end, or "
                "use another --run-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
