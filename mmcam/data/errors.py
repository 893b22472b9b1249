"""The exception raised for bad input data (files, layouts, caches, options), and the warning issued for
input that is used after a documented repair or skip."""

from __future__ import annotations

__all__ = ["DataError", "DataWarning"]


class DataError(ValueError):
    """Bad input data; the message names the file or directory at fault and what is wrong with it.

    A subclass of :class:`ValueError`, so callers that catch ``ValueError`` keep working; the command
    line tools catch it to print the message without a traceback.
    """


class DataWarning(UserWarning):
    """Input that is used after a documented repair or skipped (e.g. NaN voxels set to 0 on request, a
    listed test image that is absent); the message names the file."""
