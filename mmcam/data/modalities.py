"""Modality names and their aliases.

Every BraTS release is read with the same canonical names, in this order: ``t1, t1ce, t2, flair``; the
names of BraTS 2023+ files are aliases of them (``t1n`` = ``t1``, ``t1c`` = ``t1ce``, ``t2w`` = ``t2``,
``t2f`` = ``flair``; ``t1gd`` = ``t1ce`` as some tools write it). The prostate modalities are ``t2`` and
``adc``. Names are case-insensitive (``"T2"``, ``"ADC"`` and ``"FLAIR"`` are accepted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmcam.data.errors import DataError

__all__ = ["BRATS_MODALITIES", "PROSTATE_MODALITIES", "ALIASES", "canonical_modality", "select_modalities"]

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
PROSTATE_MODALITIES = ("t2", "adc")
#: alias (lower case) -> canonical name
ALIASES = {"t1n": "t1", "t1c": "t1ce", "t1gd": "t1ce", "t2w": "t2", "t2f": "flair"}


def canonical_modality(name: str) -> str:
    """The canonical (lower-case) name of modality ``name``, resolving :data:`ALIASES`."""
    if not isinstance(name, str):
        raise DataError(f"a modality name must be a string, got {name!r}")
    lower = name.strip().lower()
    return ALIASES.get(lower, lower)


def select_modalities(requested: Sequence[str] | None, available: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Resolve ``requested`` names (aliases allowed) against the ``available`` canonical names.

    Returns:
        ``(names, channels)``: the canonical names in the requested order and their ``(K,)`` int64
        channel indices in ``available``; ``requested=None`` selects all, in order.

    Raises:
        DataError: a single string, an empty list, an unknown or a repeated name.
    """
    available = tuple(available)
    if requested is None:
        return available, np.arange(len(available), dtype=np.int64)
    if isinstance(requested, str):
        raise DataError(
            f"modalities must be a sequence of names, not the single string {requested!r} (write [{requested!r}])"
        )
    names = tuple(canonical_modality(m) for m in requested)
    unknown = [m for m, c in zip(requested, names) if c not in available]
    if unknown or not names or len(set(names)) != len(names):
        raise DataError(
            f"modalities must be distinct names among {list(available)} (aliases: "
            f"{', '.join(f'{a}={c}' for a, c in ALIASES.items())}), got {list(requested)}"
        )
    return names, np.array([available.index(m) for m in names], dtype=np.int64)
