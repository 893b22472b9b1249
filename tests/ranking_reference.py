"""The brute-force average precision the tests compare mmcam.evaluation.ranking with."""

import numpy as np


def brute_force_ap(scores, truth) -> float:
    """AP from its definition: for every distinct score t (descending), the precision and recall of
    ``scores >= t``; AP = sum (R_k - R_{k-1}) P_k."""
    scores, truth = np.ravel(scores), np.ravel(truth).astype(bool)
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        chosen = scores >= t
        precision = (chosen & truth).sum() / chosen.sum()
        recall = (chosen & truth).sum() / truth.sum()
        ap += (recall - previous_recall) * precision
        previous_recall = recall
    return float(ap)
