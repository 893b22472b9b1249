"""``python -m mmcam.evaluate --run RUN_DIR``: the evaluation protocol of docs/evaluation.md
(:mod:`mmcam.evaluation.protocol`, which lists the outputs), stated in its outputs.

::

    python -m mmcam.evaluate --run RUN_DIR [--split test] [--threshold val|otsu|T] [--maps cam,gradcam,gradcampp]
                             [--oracle] [--checkpoint best|best_dice|last] [--data CACHE] [--device cpu|cuda]

Writes ``RUN_DIR/eval/<name>_summary.json`` and ``<name>_<map>_cases.csv`` and prints a table. Bad input
(no run directory, unknown checkpoint or map type, a split without labels) prints ``error: ...`` and exits
with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmcam.cams.pseudo_masks import MAP_TYPES
from mmcam.data import DataError
from mmcam.evaluation.protocol import evaluate_run
from mmcam.evaluation.runs import CHECKPOINT_HELP, CHECKPOINTS, UsageError

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mmcam.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory of python -m mmcam.train")
    p.add_argument("--split", default="test", help="split to evaluate (default test; train, val, test)")
    p.add_argument(
        "--threshold",
        default=None,
        metavar="val|otsu|T",
        help="val (default: chosen on the validation split), otsu (label-free, per patient) or a number in (0, 1]",
    )
    p.add_argument(
        "--maps",
        default="cam",
        metavar="cam,gradcam,gradcampp",
        help=f"comma-separated map types among {', '.join(MAP_TYPES)} (default cam)",
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="sweep the threshold on the evaluated split's own labels (flagged ORACLE: not a valid result)",
    )
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default=None, help=CHECKPOINT_HELP)
    p.add_argument("--data", metavar="CACHE", help="the slice cache (default: the run's, from its config)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        evaluate_run(
            args.run,
            split=args.split,
            threshold=args.threshold,
            maps=[m.strip() for m in args.maps.split(",") if m.strip()],
            oracle=args.oracle,
            checkpoint=args.checkpoint,
            data=args.data,
            device=args.device,
            batch_size=args.batch_size,
        )
    except (UsageError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
