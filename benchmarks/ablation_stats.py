"""The statistics of the ablation study (benchmarks/ablation.py, docs/evaluation.md): per-patient scores of
paired runs, paired differences between variants, and bootstrap intervals over seeds and patients.

A study has S seeds and P test patients; every variant is trained once per seed (the same initialisation,
batch order and transforms π for a seed, whatever the variant) and scored on the same P patients. A score
table is ``(S, P)``: ``[s, p]`` = the score of patient ``p`` under the run of seed ``s``.

Intervals: a two-level percentile bootstrap. Each replicate resamples the seeds with replacement and,
independently, the patients with replacement, and takes the mean of the ``(S, P)`` table over the resampled
rows and columns; the interval is the 2.5th and 97.5th percentiles of ``reps`` replicates (seeded: the same
input gives the same interval). Seeds carry the training randomness, patients the test-set sampling; both
enter the interval. A paired contrast applies this to the difference table ``A - B``, so the run-to-run
variation that both variants share (the seed's initialisation and batch order, the patient's difficulty)
cancels before resampling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_REPS = 10_000


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and patients with its bootstrap interval (``low``, ``high``), and ``n`` = the
    number of (seed, patient) cells that entered it."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    def format(self, digits: int = 3, signed: bool = False) -> str:
        sign = "+" if signed else ""
        return f"{self.mean:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def bootstrap_mean(table: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Estimate:
    """Mean of an ``(S, P)`` table and its two-level bootstrap interval (module doc).

    Patients with an undefined score (NaN in some row) are left out of every row, so the table stays
    paired; raises ``ValueError`` when no column is left or the table is not 2-D.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or 0 in table.shape:
        raise ValueError(f"expected a non-empty (seeds, patients) table, got shape {table.shape}")
    table = table[:, np.isfinite(table).all(axis=0)]
    if table.shape[1] == 0:
        raise ValueError("no patient has a defined score under every seed")
    seeds, patients = table.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, seeds, size=(reps, seeds))
    columns = rng.integers(0, patients, size=(reps, patients))
    # mean over the resampled grid = mean over rows of (mean over the resampled columns of each row)
    replicate = np.empty(reps)
    for start in range(0, reps, 1000):
        r, c = rows[start : start + 1000], columns[start : start + 1000]
        replicate[start : start + 1000] = table[r[:, :, None], c[:, None, :]].mean(axis=(1, 2))
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(replicate, [alpha, 1 - alpha])
    return Estimate(float(table.mean()), float(low), float(high), int(table.size))


def score_table(runs: Mapping[int, Mapping[str, float]], seeds: Sequence[int], patients: Sequence[str]) -> np.ndarray:
    """``(S, P)`` array from ``{seed: {patient: score}}`` (``None`` -> NaN); every seed must score every
    patient."""
    table = np.full((len(seeds), len(patients)), np.nan)
    for i, seed in enumerate(seeds):
        scores = runs[seed]
        missing = [p for p in patients if p not in scores]
        if missing:
            raise ValueError(f"seed {seed} has no score for patients {missing[:3]}")
        table[i] = [math.nan if scores[p] is None else float(scores[p]) for p in patients]
    return table


def paired_contrast(a: np.ndarray, b: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Estimate:
    """The mean paired difference ``a - b`` of two ``(S, P)`` tables of the same seeds and patients, with its
    bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired tables differ in shape: {a.shape} vs {b.shape}")
    return bootstrap_mean(a - b, reps, seed)
