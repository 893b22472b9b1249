"""``python -m mmcam.prepare SOURCE CACHE``: build the slice cache of a raw dataset, with its splits.

Reads a raw BraTS (2018-2021, 2023, 2024) or MSD Task05 prostate download in its own layout
(:mod:`mmcam.data.discover`), checks every file (:mod:`mmcam.data.nifti`, label specs), writes the
slice cache (:mod:`mmcam.data.cache`) with ``--workers`` processes and draws the seeded patient split
(``splits.json``; ``--folds K`` for K-fold cross-validation). Bad input stops with ``error: <file>: <what
is wrong>`` and exit status 2, leaving no cache index (rerun to resume). Rerunning on a complete cache
of the same files and options only redraws the splits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from mmcam.data import cache as fmt
from mmcam.data.build import IMAGE_DTYPES, BuildOptions, build_cache, splits_record, write_splits
from mmcam.data.discover import DATASETS, discover
from mmcam.data.errors import DataError
from mmcam.data.labels import get_label_spec

__all__ = ["main", "parse_args", "summary"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mmcam.prepare",
        description="Build the slice cache of a raw BraTS or MSD prostate dataset.",
    )
    parser.add_argument("source", type=Path, help="raw dataset directory (subject directories, "
                        "HGG/LGG, or the MSD task directory with dataset.json)")
    parser.add_argument("cache", type=Path, help="output cache directory (new, or an unfinished "
                        "cache to resume)")
    parser.add_argument("--dataset", default="auto", choices=("auto",) + DATASETS,
                        help="dataset layout and label convention (default: detect; BraTS 2024 "
                             "must be named, its layout equals 2023's)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (default: min(4, CPUs))")
    parser.add_argument("--dtype", choices=IMAGE_DTYPES, default="float32",
                        help="stored image type (float16 halves the disk)")
    parser.add_argument("--keep-empty-slices", action="store_true",
                        help="also store slices where every modality is 0 and the mask is empty")
    parser.add_argument("--affine-tolerance", type=float, default=1e-3, metavar="MM",
                        help="largest allowed affine difference between a subject's files "
                             "(default 1e-3 mm)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="K-fold cross-validation over the non-test patients")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild a complete cache of other files or options")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def summary(cache_dir: Path) -> str:
    """A few lines describing a complete cache (subjects, slices, positives of the default region)."""
    index = fmt.read_cache_index(cache_dir)
    region = get_label_spec(index.label_spec).default_region
    metas = [fmt.read_subject_meta(cache_dir, s) for s in index.subjects]
    n_slices = sum(len(m.slice_index) for m in metas)
    n_positive = sum(int(m.slice_labels[region].sum()) for m in metas)
    lines = [f"{cache_dir}: {index.dataset}, {len(metas)} subjects, {n_slices} slices "
             f"({n_positive} containing {region}), modalities {', '.join(index.modalities)}"]
    absent = [m.id for m in metas if not m.slice_labels[region].any()]
    if absent:
        lines.append(f"warning: {len(absent)} subject(s) without any {region} voxel: {absent[:10]}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        dataset = discover(args.source, args.dataset)
        options = BuildOptions(args.dtype, not args.keep_empty_slices, args.affine_tolerance)
        split = {"seed": args.seed, "val_fraction": args.val_fraction,
                 "test_fraction": args.test_fraction, "folds": args.folds}
        splits_record([s.id for s in dataset.subjects], **split)  # bad split options fail early
        build_cache(dataset, args.cache, options=options, workers=args.workers,
                    overwrite=args.overwrite, progress=not args.no_progress)
        write_splits(args.cache, **split)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
