"""Per-patient segmentation metrics on 3-D volumes: Dice, HD95 and ASSD in millimetres, per-slice Dice.

All functions take boolean volumes ``pred`` and ``truth`` of one shape ``(X, Y, Z)`` on the same voxel
grid and the voxel ``spacing`` ``(sx, sy, sz)`` in mm (``SubjectMeta.zooms``, from the NIfTI header).

Definitions (those of MONAI's ``compute_hausdorff_distance(percentile=95)`` and symmetric
``compute_average_surface_distance``, which the tests cross-check when MONAI is installed):

- surface ``∂A``: the voxels of ``A`` with at least one of their 6 face neighbours outside ``A``
  (``A`` xor its erosion by the 3-D cross; outside the volume counts as outside ``A``);
- ``d(a, ∂B)``: Euclidean distance in mm between voxel centres, from ``a`` to the nearest voxel of ``∂B``;
- **Dice** ``= 2|P ∩ G| / (|P| + |G|)``;
- **HD95** ``= max(P95{d(p, ∂G) : p ∈ ∂P}, P95{d(g, ∂P) : g ∈ ∂G})``, P95 = the 95th percentile with
  linear interpolation (``numpy.percentile``);
- **ASSD** ``= (Σ_{p ∈ ∂P} d(p, ∂G) + Σ_{g ∈ ∂G} d(g, ∂P)) / (|∂P| + |∂G|)``;
- **2-D Dice** of a patient: the mean of the per-slice Dice over the slices ``[:, :, k]`` in which the
  prediction or the truth is non-empty (slices where both are empty would score 1 and are left out).

Empty masks (stated in every evaluation summary, :data:`EMPTY_MASK_CONVENTION`): both empty -> Dice 1,
HD95 0, ASSD 0, 2-D Dice 1 (a correct "no target"); exactly one empty -> Dice 0, 2-D Dice 0, and HD95 and
ASSD undefined: ``nan``, left out of their mean and counted (``n_undefined`` in the summary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from mmcam.evaluation.distance_transform import distance_transform
from mmcam.evaluation.overlap import OverlapCounts

__all__ = [
    "EMPTY_MASK_CONVENTION",
    "METRIC_DEFINITIONS",
    "CaseMetrics",
    "surface",
    "surface_distances",
    "dice",
    "hd95",
    "assd",
    "slice_dice",
    "case_metrics",
]

EMPTY_MASK_CONVENTION = (
    "both prediction and truth empty: Dice 1, HD95 0 mm, ASSD 0 mm, 2-D Dice 1; exactly one empty: Dice 0, "
    "2-D Dice 0, HD95 and ASSD undefined (NaN), left out of their mean and std and counted as n_undefined"
)
METRIC_DEFINITIONS = {
    "dice": "3-D Dice 2|P∩G|/(|P|+|G|) of the patient's volume on the original voxel grid",
    "hd95_mm": "max of the two directed 95th percentiles (linear interpolation) of the distances between "
    "surface voxels (6-connected boundary), in mm from the header's voxel spacing (as MONAI "
    "compute_hausdorff_distance(percentile=95))",
    "assd_mm": "average symmetric surface distance: mean of the distances from every surface voxel of each "
    "mask to the other mask's surface, both directions pooled, in mm (as MONAI "
    "compute_average_surface_distance(symmetric=True))",
    "dice_2d": "mean per-slice 2-D Dice over the slices [:, :, k] in which prediction or truth is non-empty",
}


def _check(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}")
    if spacing is not None and len(tuple(spacing)) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} must have one entry per axis of the shape {pred.shape}")
    return pred, truth


def surface(mask: np.ndarray) -> np.ndarray:
    """The boundary voxels of ``mask`` (any rank): in ``mask`` with a face neighbour outside it."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = mask.copy()
    centre = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for step in (-1, 1):
            shifted = list(centre)
            shifted[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            interior &= padded[tuple(shifted)]
    return mask & ~interior


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every ``True`` voxel of ``mask`` (non-empty)."""
    box = []
    for axis in range(mask.ndim):
        where = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(where[0], where[-1] + 1))
    return tuple(box)


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(d(p, ∂G) for p in ∂P, d(g, ∂P) for g in ∂G)`` in mm, two 1-D float64 arrays.

    Both masks must be non-empty. The volumes are cropped to the bounding box of ``pred | truth`` first
    (exact: every surface voxel lies inside it), then one distance transform per surface is computed.
    """
    pred, truth = _check(pred, truth, spacing)
    if not pred.any() or not truth.any():
        raise ValueError("surface distances need two non-empty masks")
    box = _bounding_box(pred | truth)
    pred_surface, truth_surface = surface(pred[box]), surface(truth[box])
    to_truth = distance_transform(truth_surface, spacing)[pred_surface]
    to_pred = distance_transform(pred_surface, spacing)[truth_surface]
    return to_truth, to_pred


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """3-D Dice; 1 when both masks are empty (the convention of :class:`mmcam.evaluation.overlap.OverlapCounts`)."""
    pred, truth = _check(pred, truth)
    return OverlapCounts(int(np.count_nonzero(pred & truth)), int(pred.sum()), int(truth.sum())).dice


def _hd95_and_assd(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """``(HD95, ASSD)`` in mm of checked masks, with the empty-mask convention of the module doc."""
    p, g = pred.any(), truth.any()
    if not (p and g):
        value = 0.0 if not (p or g) else float("nan")
        return value, value
    a, b = surface_distances(pred, truth, spacing)
    return float(max(np.percentile(a, 95), np.percentile(b, 95))), float((a.sum() + b.sum()) / (a.size + b.size))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance (mm); see the module doc for empty masks."""
    return _hd95_and_assd(*_check(pred, truth, spacing), spacing)[0]


def assd(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance (mm); see the module doc for empty masks."""
    return _hd95_and_assd(*_check(pred, truth, spacing), spacing)[1]


def slice_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean 2-D Dice over the slices ``[..., k]`` (last axis) where either mask is non-empty; 1 if none."""
    pred, truth = _check(pred, truth)
    inner = tuple(range(pred.ndim - 1))
    p, g = pred.sum(axis=inner), truth.sum(axis=inner)
    both = np.count_nonzero(pred & truth, axis=inner)
    present = (p + g) > 0
    if not present.any():
        return 1.0
    return float(np.mean(2.0 * both[present] / (p[present] + g[present])))


@dataclass(frozen=True)
class CaseMetrics:
    """The metrics of one patient and channel (module doc); ``hd95_mm`` / ``assd_mm`` may be nan."""

    dice: float
    hd95_mm: float
    assd_mm: float
    dice_2d: float
    predicted_voxels: int
    truth_voxels: int

    def as_dict(self) -> dict:
        return asdict(self)


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> CaseMetrics:
    """All metrics of one patient (one pair of distance transforms for HD95 and ASSD)."""
    pred, truth = _check(pred, truth, spacing)
    hd, average = _hd95_and_assd(pred, truth, spacing)
    return CaseMetrics(dice(pred, truth), hd, average, slice_dice(pred, truth), int(pred.sum()), int(truth.sum()))
