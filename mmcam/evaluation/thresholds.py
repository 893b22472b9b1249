"""How the pseudo-mask threshold is chosen (docs/evaluation.md): never from the labels of the data it is applied to.

A pseudo-mask is ``map >= t`` with ``map`` a normalised map in [0, 1] (:mod:`mmcam.cams.pseudo_masks`).
:class:`ThresholdRule` modes:

- ``val`` (default): per channel (each modality and the combined map), the threshold of the grid
  0.05, 0.10, ..., 0.95 (:func:`mmcam.evaluation.overlap.threshold_grid`) with the highest mean per-patient 3-D Dice
  on the validation split (ties: the smallest), :func:`sweep_thresholds`;
- ``otsu``: label-free, per patient and channel: Otsu's threshold (:func:`otsu_threshold`) of the
  non-zero voxels of that patient's map volume (a map that is zero everywhere gives an empty mask);
- ``fixed``: the given number in (0, 1] for every channel and patient;
- ``oracle``: as ``val`` but swept on the labels of the evaluated split itself. It is NOT a valid
  result, only an upper bound for the threshold choice, and every output that uses it says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmcam.evaluation.overlap import PatientDice, threshold_grid
from mmcam.evaluation.runs import LoadedRun, UsageError, labelled_split, patient_volumes

__all__ = [
    "THRESHOLD_MODES",
    "ORACLE_WARNING",
    "ThresholdRule",
    "parse_threshold",
    "pseudo_mask",
    "otsu_threshold",
    "sweep_thresholds",
    "choose_on_split",
]

THRESHOLD_MODES = ("val", "otsu", "fixed", "oracle")
ORACLE_WARNING = (
    "ORACLE: the threshold was swept on the labels of the evaluated split itself; an upper bound "
    "for the threshold choice, not a valid result"
)


@dataclass(frozen=True)
class ThresholdRule:
    """A threshold choice (module doc): ``mode`` in :data:`THRESHOLD_MODES`, ``value`` for ``fixed``."""

    mode: str
    value: float | None = None

    @property
    def oracle(self) -> bool:
        return self.mode == "oracle"

    @property
    def tag(self) -> str:
        """File-name tag: ``""`` for ``val``, else ``otsu``, ``fixed0.5``, ``oracle``."""
        if self.mode == "val":
            return ""
        return f"fixed{self.value:g}" if self.mode == "fixed" else self.mode

    @property
    def fixed_value(self) -> float:
        """``value`` of a ``fixed`` rule; :class:`ValueError` for a rule without a value."""
        if self.value is None:
            raise ValueError(f"the {self.mode!r} threshold rule has no fixed value")
        return self.value

    def threshold_for(self, volume: np.ndarray, chosen: float | None = None) -> float:
        """The threshold of one patient's normalised map ``volume``: Otsu's of its non-zero values
        (``otsu``, NaN when it has none), ``value`` (``fixed``), else ``chosen``, the value chosen on a split
        (``val``, ``oracle``)."""
        if self.mode == "otsu":
            return otsu_threshold(volume[volume > 0])
        threshold = self.fixed_value if self.mode == "fixed" else chosen
        if threshold is None:
            raise ValueError(f"threshold mode {self.mode!r} needs the value chosen on a split")
        return float(threshold)

    def describe(self, split: str = "test") -> str:
        """One sentence stating how the threshold is chosen (for summaries and reports)."""
        if self.mode == "val":
            return (
                "per channel, the grid value (0.05 ... 0.95) of highest mean per-patient 3-D Dice on the "
                "validation split; no label of the evaluated split is used"
            )
        if self.mode == "otsu":
            return (
                "label-free: per patient and channel, Otsu's threshold (256 bins on [0, 1]) of the non-zero "
                "voxels of the map volume"
            )
        if self.mode == "fixed":
            return f"fixed at {self.value:g} for every channel and patient"
        return (
            f"ORACLE (not a valid result): per channel, the grid value of highest mean per-patient 3-D Dice "
            f"on the labels of the evaluated {split} split itself"
        )


def pseudo_mask(volume: np.ndarray, threshold: float) -> np.ndarray:
    """The pseudo-mask ``volume >= threshold`` (bool, the shape of ``volume``); empty for a NaN threshold
    (Otsu's of a map with no positive value)."""
    if not math.isfinite(threshold):
        return np.zeros(volume.shape, dtype=bool)
    return volume >= threshold


def parse_threshold(text: str | None) -> ThresholdRule:
    """``None`` or ``"val"`` -> val; ``"otsu"``; a number in (0, 1] -> fixed. Raises :class:`UsageError`."""
    if text is None or text == "val":
        return ThresholdRule("val")
    if text == "otsu":
        return ThresholdRule("otsu")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise UsageError(
            f"--threshold {text!r}: expected val, otsu or a number in (0, 1] (maps lie in [0, 1], "
            "and 0 would select every voxel)"
        )
    return ThresholdRule("fixed", value)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1]: the histogram bin edge ``t`` maximising the between-class
    variance of ``values < t`` and ``values >= t`` (``bins`` equal bins on [0, 1]).

    Returns ``nan`` when ``values`` is empty (no mask), and the smallest value when all values fall in one
    bin (the mask keeps them all).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return math.nan
    counts, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)[:-1].astype(np.float64)  # weight of values < edges[k + 1]
    above = values.size - below
    sum_below = np.cumsum(counts * centres)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below = sum_below / below
        mean_above = (np.sum(counts * centres) - sum_below) / above
        between = below * above * (mean_below - mean_above) ** 2
    between = np.where((below > 0) & (above > 0), between, -1.0)
    if between.max() < 0:
        return float(values.min())
    return float(edges[int(np.argmax(between)) + 1])


def sweep_thresholds(
    cases: Iterable[tuple[str, Mapping[str, np.ndarray], np.ndarray]],
    channels: Sequence[str],
    grid: Sequence[float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per channel, the grid threshold of highest mean per-patient 3-D Dice (ties: the smallest).

    Args:
        cases: ``(subject, {channel: (X, Y, Z) map}, truth (X, Y, Z) bool)`` per patient.
        channels: the channels to choose a threshold for.
        grid: candidate thresholds (default :func:`~mmcam.evaluation.overlap.threshold_grid`).

    Returns:
        ``(thresholds, mean_dice)``: channel -> chosen threshold, and the mean Dice it reached there.
    """
    grid = list(grid or threshold_grid())
    dice = {c: PatientDice(grid) for c in channels}
    count = 0
    for subject, volumes, truth in cases:
        mask = torch.from_numpy(np.asarray(truth, dtype=np.uint8))[None]
        for c in channels:
            dice[c].add([subject], torch.from_numpy(np.asarray(volumes[c]))[None], mask)
        count += 1
    if count == 0:
        raise UsageError("no patient to choose the threshold on")
    chosen = {c: d.best_threshold() for c, d in dice.items()}
    return chosen, {c: dice[c].mean(t) for c, t in chosen.items()}


def choose_on_split(
    run: LoadedRun,
    cache_dir: str | os.PathLike[str],
    split: str,
    map_type: str = "cam",
    batch_size: int = 32,
    option: str = "--split",
) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`sweep_thresholds` over the patients of a labelled ``split`` of ``cache_dir`` (every channel of
    ``run``); ``option`` names the command-line option in errors (e.g. a missing validation split)."""
    dataset = labelled_split(run, cache_dir, split, option)
    cases = ((s, volumes, truth) for s, _, volumes, truth in patient_volumes(run, dataset, map_type, batch_size))
    return sweep_thresholds(cases, run.channels)
