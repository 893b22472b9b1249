"""The exception raised for bad input data (files, layouts, caches, options)."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data; the message names the file or directory at fault and what is wrong with it.

    A subclass of :class:`ValueError`, so callers that catch ``ValueError`` keep working; the command
    line tools catch it to print the message without a traceback.
    """
