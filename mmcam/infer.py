"""``python -m mmcam.infer``: maps and pseudo-masks of a trained run as NIfTI volumes on the input's grid
(:mod:`mmcam.evaluation.export`, which describes the inputs, outputs and threshold rules).

::

    python -m mmcam.infer --run RUN_DIR --data RAW_OR_CACHE [--subjects ID ...] --out DIR
    python -m mmcam.infer --run RUN_DIR --files t2=a.nii.gz flair=b.nii.gz [--subject-id ID] --out DIR
        [--checkpoint best|best_dice|last] [--threshold val|otsu|T] [--map cam|gradcam|gradcampp]
        [--cache DIR] [--dataset auto] [--device cpu|cuda] [--batch-size N] [--workers N]

Bad input prints ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmcam.cams.pseudo_masks import MAP_TYPES
from mmcam.data import DataError
from mmcam.evaluation.export import MANIFEST, ExportRequest, export_run_maps
from mmcam.evaluation.runs import CHECKPOINT_HELP, CHECKPOINTS, UsageError

__all__ = ["MANIFEST", "main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mmcam.infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory of python -m mmcam.train")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="RAW_OR_CACHE", help="a raw dataset folder or a slice cache")
    source.add_argument(
        "--files",
        nargs="+",
        metavar="MODALITY=PATH[:C]",
        help="one subject's modality files (C: channel of a 4-D file)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--subjects", nargs="+", metavar="ID", help="only these subjects (default: all)")
    p.add_argument("--subject-id", metavar="ID", help="the subject's id for --files (default: the first file's name)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default=None, help=CHECKPOINT_HELP)
    p.add_argument(
        "--threshold",
        default=None,
        metavar="val|otsu|T",
        help="val (default: chosen on the validation split), otsu (per subject) or a number in (0, 1]",
    )
    p.add_argument("--map", default="cam", choices=MAP_TYPES, help="map type (default cam)")
    p.add_argument("--cache", metavar="DIR", help="where to prepare raw input (default: a temporary folder)")
    p.add_argument("--dataset", default="auto", help="layout of a raw --data folder (see mmcam.prepare)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    p.add_argument("--workers", type=int, default=1, help="processes preparing raw input")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = vars(args)
        options["map_type"] = options.pop("map")
        export_run_maps(ExportRequest(**options))
    except (UsageError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
