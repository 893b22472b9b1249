"""Seeded patient-level splits: train / validation / test, and k-fold cross-validation.

Slices of one patient are strongly correlated, so splits are always drawn over patients (subject ids),
never over slices. The result depends only on the *set* of ids, the fractions and the seed (ids are
sorted before the seeded permutation), not on the order they are given in.

Sizes: ``n_test = round(test_fraction * n)`` and ``n_val = round(val_fraction * n)`` (halves round up),
each at least 1 when its fraction is positive. :func:`kfold_patients` holds out the same test set as
:func:`split_patients` with the same seed and ``test_fraction`` and deals the remaining patients into
``folds`` validation parts of near-equal size (the first ``len % folds`` parts get one more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from mmcam.data.errors import DataError

__all__ = ["PatientSplit", "split_patients", "kfold_patients"]


@dataclass(frozen=True)
class PatientSplit:
    """Disjoint sorted tuples of subject ids."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def _count(fraction: float, n: int, name: str) -> int:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 <= fraction < 1.0:
        raise DataError(f"{name} must be a number in [0, 1), got {fraction!r}")
    if fraction == 0:
        return 0
    return max(1, math.floor(fraction * n + 0.5))


def _shuffled(subject_ids: Iterable[str], seed: int) -> list[str]:
    ids = sorted(subject_ids)
    if len(set(ids)) != len(ids):
        raise DataError("subject ids must be unique")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]


def _held_out_test(subject_ids, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(test ids, remaining ids in shuffled order)."""
    shuffled = _shuffled(subject_ids, seed)
    n_test = _count(test_fraction, len(shuffled), "test_fraction")
    return shuffled[:n_test], shuffled[n_test:]


def _split(train, val, test) -> PatientSplit:
    return PatientSplit(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def split_patients(subject_ids: Iterable[str], *, val_fraction: float = 0.1,
                   test_fraction: float = 0.2, seed: int = 0) -> PatientSplit:
    """Split patients into train / val / test.

    Raises:
        DataError: duplicate ids, a fraction outside [0, 1), or no patient left for training.
    """
    ids = list(subject_ids)
    test, rest = _held_out_test(ids, test_fraction, seed)
    n_val = _count(val_fraction, len(ids), "val_fraction")
    if n_val >= len(rest):
        raise DataError(f"{len(ids)} patients leave none for training with "
                        f"val_fraction={val_fraction} and test_fraction={test_fraction}")
    return _split(rest[n_val:], rest[:n_val], test)


def kfold_patients(subject_ids: Iterable[str], *, folds: int, test_fraction: float = 0.2,
                   seed: int = 0) -> list[PatientSplit]:
    """``folds`` train/val splits of the non-test patients (each patient validates in one fold).

    Raises:
        DataError: ``folds < 2``, or fewer non-test patients than folds.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise DataError(f"folds must be an int >= 2, got {folds!r}")
    test, rest = _held_out_test(list(subject_ids), test_fraction, seed)
    if len(rest) < folds:
        raise DataError(f"{len(rest)} non-test patients cannot fill {folds} folds")
    parts = np.array_split(np.arange(len(rest)), folds)
    splits = []
    for part in parts:
        val = set(part.tolist())
        splits.append(_split([r for i, r in enumerate(rest) if i not in val],
                             [rest[i] for i in sorted(val)], test))
    return splits
