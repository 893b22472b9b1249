"""A threshold-free localisation score: average precision of a map on the slices that hold the target.

The 3-D Dice of a pseudo-mask depends on the threshold and on the classifier (maps are zeroed on slices
the network calls negative). The score here depends on neither: on the slices ``[:, :, k]`` whose truth is
non-empty, it ranks every voxel by its (ungated) map value and measures how well that ranking puts the
target first.

Average precision, as scikit-learn's ``average_precision_score``: with the distinct map values taken as
thresholds in descending order, ``AP = sum_k (R_k - R_{k-1}) P_k``, ``P_k`` and ``R_k`` the precision and
recall of ``map >= t_k`` (``R_0 = 0``); ties are one threshold, so a constant map scores the prevalence.
A random map scores the prevalence of the target on those slices in expectation, a perfect one 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AP_DEFINITION", "average_precision", "positive_slice_ap"]

AP_DEFINITION = (
    "average precision (sum over the distinct map values t_k, descending, of (R_k - R_{k-1}) * P_k, as "
    "scikit-learn) of the voxels of the slices [:, :, k] with truth, ranked by the normalised map before "
    "the classifier's zeroing: threshold-free and classifier-free; NaN when the patient has no target"
)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """AP of ``scores`` (any shape, finite) against the boolean ``truth`` of the same shape.

    Returns ``nan`` when ``truth`` has no positive (AP undefined).
    """
    scores, truth = np.asarray(scores), np.asarray(truth, dtype=bool)
    if scores.shape != truth.shape:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} differ in shape")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    positives = int(truth.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores.ravel(), kind="stable")
    ranked_scores = scores.ravel()[order]
    true_positives = np.cumsum(truth.ravel()[order], dtype=np.int64)
    # the last index of each run of equal scores: one threshold per distinct value
    last = np.r_[np.flatnonzero(ranked_scores[1:] != ranked_scores[:-1]), ranked_scores.size - 1]
    tp = true_positives[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def positive_slice_ap(volume: np.ndarray, truth: np.ndarray) -> float:
    """AP of an ``(X, Y, Z)`` map on the slices ``[:, :, k]`` where the ``(X, Y, Z)`` truth is non-empty
    (``nan`` when there are none)."""
    volume, truth = np.asarray(volume), np.asarray(truth, dtype=bool)
    if volume.shape != truth.shape or volume.ndim != 3:
        raise ValueError(f"map {volume.shape} and truth {truth.shape} must be the same (X, Y, Z) shape")
    positive = truth.any(axis=(0, 1))
    return average_precision(volume[:, :, positive], truth[:, :, positive])
