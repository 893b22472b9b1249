"""``python -m mmcam.crossval --folds K --run-dir DIR [train options]``: train every cross-validation fold
(``DIR/fold<k>``, each an ordinary run of ``python -m mmcam.train`` with ``folds=K fold=k``; finished folds
are skipped and interrupted ones resumed when the command is run again) and write the per-fold and mean ±
std table of test Dice, ``DIR/crossval.json`` and ``DIR/crossval.md`` (:mod:`mmcam.training.crossval`).

::

    python -m mmcam.crossval --folds 3 --run-dir runs/prostate-cv --data /data/Task05_Prostate \\
        --dataset prostate --preset paper-prostate --device cuda
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mmcam import train
from mmcam.training.crossval import format_fold_table, train_folds, write_fold_table

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The cross-validation options, and the rest of the command line for ``python -m mmcam.train``."""
    p = argparse.ArgumentParser(prog="python -m mmcam.crossval", description=__doc__.split("\n\n")[0])
    p.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds (>= 2)")
    p.add_argument("--run-dir", required=True, metavar="DIR", help="the folds go to DIR/fold<k>")
    args, rest = p.parse_known_args(argv)
    for option in ("--resume", "--run-dir"):
        if option in rest:
            p.error(f"{option} is set by crossval itself (DIR/fold<k>); run the same command again to resume")
    if args.folds < 2:
        p.error(f"--folds must be >= 2, got {args.folds}")
    return args, rest


def main(argv: Sequence[str] | None = None) -> int:
    args, train_argv = parse_args(argv)
    status = train_folds(Path(args.run_dir), args.folds, train_argv, train.main)
    if status != 0:
        return status
    table = write_fold_table(Path(args.run_dir), args.folds)
    print(format_fold_table(table), end="")
    print(f"wrote {Path(args.run_dir) / 'crossval.json'} and crossval.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
