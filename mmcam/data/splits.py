"""Seeded patient-level splits: train / validation / test fractions, and k-fold cross-validation.

Slices of one patient are strongly correlated, so splits are always drawn over patients (subject ids),
never over slices. The result depends only on the *set* of ids, the fractions and the seed (ids are
sorted before the seeded permutation), not on the order they are given in.

``fractions = (train, val, test)``: three non-negative numbers summing to 1 (``"0.7,0.1,0.2"`` on the
command line, :func:`parse_fractions`). Sizes: ``n_test = round(test * n)`` and ``n_val = round(val * n)``
(halves round up), each at least 1 when its fraction is positive; training gets the rest and must get
at least one patient when its fraction is positive. With a train fraction of 0 (a labelled set kept for
testing only) the rounding remainder goes to validation, or to test if validation is 0 too.

:func:`kfold_patients` holds out the same test set as :func:`split_patients` with the same seed and
test fraction and deals the remaining patients into ``folds`` validation parts of near-equal size (the
first ``len % folds`` parts get one more); the validation fraction is not used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmcam.data.errors import DataError

__all__ = [
    "DEFAULT_FRACTIONS",
    "PatientSplit",
    "parse_fractions",
    "check_fractions",
    "split_patients",
    "kfold_patients",
]

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class PatientSplit:
    """Disjoint sorted tuples of subject ids."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``(train, val, test)`` as floats; :class:`DataError` unless three finite numbers >= 0 summing to
    1 (within 1e-6)."""
    values: tuple[Any, ...]  # what was given: checked below
    try:
        values = tuple(fractions)
    except TypeError:
        values = (fractions,)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) for v in values):
        raise DataError(f"split fractions must be three numbers (train, val, test), got {fractions!r}")
    values = tuple(float(v) for v in values)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise DataError(f"split fractions must be non-negative, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise DataError(f"split fractions (train, val, test) must sum to 1, got {values} (sum {sum(values):g})")
    return values[0], values[1], values[2]


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` -> ``(0.7, 0.1, 0.2)``, checked by :func:`check_fractions`."""
    parts = str(text).split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise DataError(
            f"--splits expects three comma-separated numbers train,val,test such as 0.7,0.1,0.2, got {text!r}"
        ) from None
    if len(values) != 3:
        raise DataError(f"--splits expects three comma-separated numbers train,val,test, got {text!r}")
    return check_fractions(values)


def _count(fraction: float, n: int) -> int:
    if fraction == 0:
        return 0
    return max(1, math.floor(fraction * n + 0.5))


def _shuffled(subject_ids: Iterable[str], seed: int) -> list[str]:
    ids = sorted(subject_ids)
    if len(set(ids)) != len(ids):
        raise DataError("subject ids must be unique")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    return [ids[i] for i in order]


def _sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """(n_train, n_val, n_test) of ``n`` patients (module doc)."""
    train, val, test = fractions
    n_test, n_val = min(_count(test, n), n), _count(val, n)
    n_train = n - n_test - n_val
    if train > 0:
        if n_train < 1:
            raise DataError(f"{n} patients leave none for training with split fractions {fractions} (train, val, test)")
        return n_train, n_val, n_test
    if val > 0:
        n_val += n_train
    else:
        n_test += n_train
    if (val > 0 and n_val < 1) or (test > 0 and n_test < 1):
        raise DataError(f"{n} patients cannot fill every part of split fractions {fractions}")
    return 0, n_val, n_test


def _split(train, val, test) -> PatientSplit:
    return PatientSplit(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def split_patients(
    subject_ids: Iterable[str], fractions: Sequence[float] = DEFAULT_FRACTIONS, *, seed: int = 0
) -> PatientSplit:
    """Split patients into train / val / test by ``fractions = (train, val, test)``.

    The shuffled order is dealt test first, then val, then train. No ids: an empty split.

    Raises:
        DataError: duplicate ids, bad fractions or seed, or too few patients for the positive parts.
    """
    fractions = check_fractions(fractions)
    shuffled = _shuffled(subject_ids, seed)
    if not shuffled:
        return PatientSplit((), (), ())
    n_train, n_val, n_test = _sizes(len(shuffled), fractions)
    return _split(shuffled[n_test + n_val :], shuffled[n_test : n_test + n_val], shuffled[:n_test])


def kfold_patients(
    subject_ids: Iterable[str], *, folds: int, test_fraction: float = 0.2, seed: int = 0
) -> list[PatientSplit]:
    """``folds`` train/val splits of the non-test patients (each patient validates in one fold).

    Raises:
        DataError: ``folds < 2``, a test fraction outside [0, 1], or fewer non-test patients than folds.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise DataError(f"folds must be an int >= 2, got {folds!r}")
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0.0 <= test_fraction <= 1.0
    ):
        raise DataError(f"test_fraction must be a number in [0, 1], got {test_fraction!r}")
    shuffled = _shuffled(subject_ids, seed)
    n_test = min(_count(test_fraction, len(shuffled)), len(shuffled))
    test, rest = shuffled[:n_test], shuffled[n_test:]
    if len(rest) < folds:
        raise DataError(f"{len(rest)} non-test patients cannot fill {folds} folds")
    splits = []
    for part in np.array_split(np.arange(len(rest)), folds):
        val = set(part.tolist())
        splits.append(_split([r for i, r in enumerate(rest) if i not in val], [rest[i] for i in sorted(val)], test))
    return splits
