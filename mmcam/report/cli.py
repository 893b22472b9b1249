"""``python -m mmcam.report RUN_DIR``: write the HTML report of a finished training run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmcam.report.run_outputs import ReportError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mmcam.report",
        description="HTML report of a training run: slice overlays (image, ground-truth contour, CAM, "
        "pseudo-mask) per modality, the metrics table with its protocol, the training curves.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of python -m mmcam.train (with results.json)")
    p.add_argument("--out", help="output folder (default RUN_DIR/report; a previous report there is replaced)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"], help="split of the slices shown")
    p.add_argument("--slices", type=int, default=4, help="slices per modality (default 4)")
    p.add_argument("--checkpoint", help="best | best_dice | last | a .pt path (default: the one results.json used)")
    p.add_argument("--data", help="the slice cache, when it is no longer where config.yaml says")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from mmcam.report.build import write_report

    try:
        index = write_report(
            args.run_dir, args.out, split=args.split, slices=args.slices, checkpoint=args.checkpoint, data=args.data
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
