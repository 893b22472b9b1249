"""Overlap metrics per patient, from per-slice counts (docs/evaluation.md).

A patient's 3-D Dice is computed from the voxel counts of all of its slices, so it equals the Dice of
the re-stacked volumes. Convention: a patient whose prediction and ground truth are both empty has
Dice 1 (a correct "no target"); if only one is empty, 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class OverlapCounts:
    """Running voxel counts of one patient: |P ∩ G|, |P|, |G|."""

    intersection: int = 0
    predicted: int = 0
    truth: int = 0

    def add(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        p, g = pred.bool(), truth.bool()
        self.intersection += int((p & g).sum())
        self.predicted += int(p.sum())
        self.truth += int(g.sum())

    @property
    def dice(self) -> float:
        denominator = self.predicted + self.truth
        return 1.0 if denominator == 0 else 2.0 * self.intersection / denominator


@dataclass
class PatientDice:
    """Per-patient 3-D Dice for several thresholds at once (one accumulator per threshold)."""

    thresholds: Sequence[float]
    counts: dict = field(default_factory=lambda: defaultdict(dict))

    def add(self, subjects: Sequence[str], maps: torch.Tensor, masks: torch.Tensor) -> None:
        """maps ``(N, H, W)`` in [0, 1], masks ``(N, H, W)`` {0, 1}; subjects: the patient of each slice."""
        for t in self.thresholds:
            predicted = maps >= t
            for i, subject in enumerate(subjects):
                self.counts[subject].setdefault(t, OverlapCounts()).add(predicted[i], masks[i])

    def per_patient(self, threshold: float) -> dict[str, float]:
        return {s: c[threshold].dice for s, c in sorted(self.counts.items())}

    def mean(self, threshold: float) -> float:
        values = list(self.per_patient(threshold).values())
        return float(np.mean(values)) if values else float("nan")

    def best_threshold(self) -> float:
        """The threshold with the highest mean patient Dice (ties: the smallest threshold)."""
        return max(self.thresholds, key=lambda t: (self.mean(t), -t))


def threshold_grid(step: float = 0.05) -> list[float]:
    """Candidate thresholds step, 2 step, ..., 1 - step (0 and 1 are degenerate)."""
    n = int(round(1.0 / step))
    return [round(k * step, 10) for k in range(1, n)]


def patient_statistics(values: Iterable[float]) -> dict[str, float | int]:
    """Summary of one per-patient metric: ``mean`` and population ``std`` over the finite values, ``n`` of
    them and ``n_undefined`` (NaN: e.g. HD95 of an empty mask) others; mean and std are NaN when none is
    finite. The one aggregation of every reported per-patient figure (training results and evaluate)."""
    v = np.asarray(list(values), dtype=np.float64)
    finite = v[np.isfinite(v)]
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std()) if finite.size else math.nan
    return {"mean": mean, "std": std, "n": int(finite.size), "n_undefined": int(v.size - finite.size)}
