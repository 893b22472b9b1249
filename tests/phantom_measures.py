"""How well a threshold of a phantom's image finds its target: the measures the synthetic-data tests use to
show what each modality shows (tests/data/test_synthetic.py, tests/data/test_split_tumour.py)."""

from __future__ import annotations

import numpy as np


def mean_contrast(image, inside, reference):
    """(mean inside - mean of reference) / std of reference."""
    return (image[inside].mean() - image[reference].mean()) / image[reference].std()


def best_threshold_dice(image, target, within):
    """The best Dice of ``image > t`` or ``image < t`` against ``target`` over all thresholds t."""
    values, truth = image[within], target[within]
    order = np.argsort(values, kind="stable")
    hits = np.concatenate([[0], np.cumsum(truth[order])])  # target voxels among the lowest i
    n, total = len(values), truth.sum()
    i = np.arange(n + 1)
    below = 2 * hits / (i + total)  # predict the lowest i voxels
    above = 2 * (total - hits) / (n - i + total)  # predict the highest n - i voxels
    return float(max(below.max(), above.max()))


def best_union_dice(a, b, target, within, steps=40):
    """The best Dice of ``(a > s) | (b > t)`` against ``target`` over a grid of thresholds: each image's
    quantiles that leave the top 10 % ... 0.001 % of ``within`` above (geometric), plus +inf (so the
    single-image rules on the grid are among them)."""
    a, b, target = a[within], b[within], target[within]
    grid = 1 - np.geomspace(0.1, 1e-5, steps)
    best = 0.0
    for s in [*np.quantile(a, grid), np.inf]:
        above_a = a > s
        for t in [*np.quantile(b, grid), np.inf]:
            predicted = above_a | (b > t)
            best = max(best, 2 * (predicted & target).sum() / (predicted.sum() + target.sum()))
    return best
