"""Robust intensity normalisation of one volume (one modality of one subject), done once at prepare time.

MRI intensities have no absolute unit and a few extreme voxels (vessels, artefacts) can stretch the
range, so each volume is scaled by robust statistics of its own foreground::

    F      = the finite, non-zero voxels of v        (the brain of a skull-stripped BraTS volume; for
                                                      prostate MRI, which has no zero background,
                                                      nearly every voxel)
    lo, hi = the p_lo-th and p_hi-th percentiles of v over F   (default 0.5 and 99.5; numpy's
                                                                "linear" percentile definition)
    out    = clip((v - lo) / (hi - lo), 0, 1)   on F
    out    = 0                                  elsewhere (background and non-finite voxels)

so the foreground lies in ``[0, 1]`` and the background stays exactly 0 (the zero fill of the
geometric transforms π then looks like background). A constant foreground (``hi == lo``) maps to 1; an
empty foreground gives a volume of zeros. The model still z-scores every sample per channel after π
(docs/method.md); this step only makes the stored values comparable between subjects and robust to
outliers. NaN-safe: non-finite voxels are never part of F and come out as 0, so no NaN reaches the
cache (whether they are accepted at all is decided when the file is read, see
:func:`mmcam.data.nifti.load_image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmcam.data.errors import DataError

__all__ = ["DEFAULT_PERCENTILES", "IntensityStats", "check_percentiles", "normalize_intensity"]

DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class IntensityStats:
    """What :func:`normalize_intensity` did: the clipping bounds ``lo``, ``hi`` (raw units; ``None`` for
    an empty foreground) and the number of ``foreground`` voxels."""

    lo: float | None
    hi: float | None
    foreground: int

    def to_json(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "foreground": self.foreground}


def check_percentiles(percentiles) -> tuple[float, float]:
    """``(p_lo, p_hi)`` as floats with ``0 <= p_lo < p_hi <= 100``; :class:`DataError` otherwise."""
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise DataError(f"clip percentiles must be two numbers (low, high), got {percentiles!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 100.0):
        raise DataError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    return lo, hi


def normalize_intensity(volume: np.ndarray, percentiles=DEFAULT_PERCENTILES) -> tuple[np.ndarray, IntensityStats]:
    """Clip ``volume`` to foreground percentiles and scale the foreground to ``[0, 1]`` (module doc).

    Args:
        volume: an array of any shape (one modality of one subject, e.g. ``(X, Y, Z)``).
        percentiles: ``(p_lo, p_hi)`` in percent.

    Returns:
        ``(out, stats)``: float32 array of ``volume``'s shape, and :class:`IntensityStats`.
    """
    p_lo, p_hi = check_percentiles(percentiles)
    values = np.asarray(volume)
    foreground = np.isfinite(values) & (values != 0)
    out = np.zeros(values.shape, dtype=np.float32)
    count = int(np.count_nonzero(foreground))
    if count == 0:
        return out, IntensityStats(None, None, 0)
    inside = values[foreground].astype(np.float64)
    lo, hi = (float(v) for v in np.percentile(inside, [p_lo, p_hi]))
    if hi > lo:
        out[foreground] = np.clip((inside - lo) / (hi - lo), 0.0, 1.0)
    else:
        out[foreground] = 1.0
    return out, IntensityStats(lo, hi, count)
