"""Cross-validation: train every fold of a run's data into ``RUN_DIR/fold<k>/`` (each an ordinary run
directory, resumed where it stopped, skipped when finished) and tabulate their test results, per fold and
mean ± std over folds. The command line is :mod:`mmcam.crossval`.

Every fold's network is selected on that fold's validation patients and evaluated on the same held-out
test patients (the cache's k folds split the non-test patients; docs/evaluation.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmcam.atomic_files import atomic_write_json, atomic_write_text
from mmcam.evaluation.overlap import patient_statistics

__all__ = ["TABLE_FILE", "fold_dir", "train_folds", "fold_table", "format_fold_table", "write_fold_table"]

#: The table file in the cross-validation run directory (with a ``.md`` twin).
TABLE_FILE = "crossval.json"


def fold_dir(run_dir: Path, fold: int) -> Path:
    """The run directory of fold ``fold``."""
    return Path(run_dir) / f"fold{fold}"


def train_folds(
    run_dir: Path, folds: int, train_argv: Sequence[str], train: Callable[[list[str]], int], log=print
) -> int:
    """Train folds ``0 .. folds-1`` with ``train`` (``mmcam.train.main``) and the command line
    ``train_argv`` (without ``--run-dir`` / ``--resume``), each as ``folds=<folds> fold=<k>``: a fold with
    ``results.json`` is skipped, one with ``last.pt`` is resumed, others start. Returns the first non-zero
    exit status of ``train``, else 0."""
    for k in range(folds):
        directory = fold_dir(run_dir, k)
        argv = [*train_argv, f"folds={folds}", f"fold={k}"]
        if (directory / "results.json").is_file():
            log(f"fold {k}: finished ({directory / 'results.json'})")
            continue
        if (directory / "last.pt").is_file():
            log(f"fold {k}: resuming {directory}")
            status = train([*argv, "--resume", str(directory)])
        else:
            log(f"fold {k}: training into {directory}")
            status = train([*argv, "--run-dir", str(directory)])
        if status != 0:
            return status
    return 0


def fold_table(run_dir: Path, folds: int) -> dict[str, Any]:
    """``{"folds": [{fold, run_dir, checkpoint, dice: {channel: mean}}], "dice": {channel: {mean, std, n,
    n_undefined}}}``: each fold's mean test Dice per channel (its ``results.json``) and their mean and
    population std over the folds."""
    rows = []
    for k in range(folds):
        results = json.loads((fold_dir(run_dir, k) / "results.json").read_text())
        dice = {channel: entry["mean"] for channel, entry in results["dice"].items()}
        rows.append(
            {"fold": k, "run_dir": str(fold_dir(run_dir, k)), "checkpoint": results["checkpoint"], "dice": dice}
        )
    channels = list(rows[0]["dice"])
    summary = {
        c: patient_statistics(math.nan if r["dice"][c] is None else r["dice"][c] for r in rows) for c in channels
    }
    return {"folds": rows, "dice": summary}


def format_fold_table(table: dict[str, Any]) -> str:
    """The table as Markdown: one row per fold, then mean ± std over the folds."""
    channels = list(table["dice"])
    lines = ["| fold | " + " | ".join(channels) + " |", "|---" * (len(channels) + 1) + "|"]
    for row in table["folds"]:
        lines.append(f"| {row['fold']} | " + " | ".join(f"{row['dice'][c]:.3f}" for c in channels) + " |")
    stats = table["dice"]
    lines.append(
        "| mean ± std | " + " | ".join(f"{stats[c]['mean']:.3f} ± {stats[c]['std']:.3f}" for c in channels) + " |"
    )
    return "\n".join(lines) + "\n"


def write_fold_table(run_dir: Path, folds: int) -> dict[str, Any]:
    """Write ``crossval.json`` and ``crossval.md`` into ``run_dir``; returns the table."""
    table = fold_table(run_dir, folds)
    atomic_write_json(Path(run_dir) / TABLE_FILE, table, indent=2)
    atomic_write_text(Path(run_dir) / TABLE_FILE.replace(".json", ".md"), format_fold_table(table))
    return table
