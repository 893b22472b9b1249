"""``python -m mmcam.prepare --data RAW --out CACHE``: build the slice cache of a raw dataset, with splits.

Reads a raw BraTS (2018-2021, 2023, 2024) or MSD Task05 prostate download in its own layout
(:mod:`mmcam.data.discover`), checks every file (:mod:`mmcam.data.nifti`, label specs), normalises the
intensities of every volume (:mod:`mmcam.data.intensity`), optionally stores the slices at a fixed
in-plane size (``--size``, :mod:`mmcam.data.geometry`), writes the slice cache and its manifest
(:mod:`mmcam.data.cache`, :mod:`mmcam.data.manifest`) with ``--workers`` processes, and draws the seeded
patient split (``splits.json``; ``--splits train,val,test``, or ``--folds K`` for K-fold
cross-validation). Bad input stops with ``error: <file>: <what is wrong>`` and exit status 2, leaving
no cache index (rerun to resume). Rerunning on a complete cache of the same files and options only
redraws the splits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mmcam.data import cache as fmt
from mmcam.data.build import IMAGE_DTYPES, BuildOptions, default_workers, prepare_raw
from mmcam.data.discover import DATASET_FAMILIES, DATASETS
from mmcam.data.errors import DataError
from mmcam.data.geometry import FITS
from mmcam.data.intensity import DEFAULT_PERCENTILES
from mmcam.data.labels import get_label_spec
from mmcam.data.nifti import NONFINITE_POLICIES
from mmcam.data.splits import parse_fractions

__all__ = ["main", "parse_args", "summary"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mmcam.prepare",
        description="Build the slice cache of a raw BraTS or MSD prostate dataset.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="RAW",
        help="raw dataset directory (subject directories, HGG/LGG, or the MSD task directory with dataset.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="CACHE",
        help="output cache directory (new, or an unfinished cache to resume)",
    )
    parser.add_argument(
        "--dataset",
        default="auto",
        choices=("auto",) + tuple(DATASET_FAMILIES) + DATASETS,
        help="layout and label convention: auto (detect), brats (detect the "
        "release), prostate, or a release; BraTS 2024 must be named "
        "(brats2024): its layout equals 2023's",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="S",
        help="store slices at S x S (default: native in-plane size; BraTS is natively 240)",
    )
    parser.add_argument(
        "--fit",
        choices=FITS,
        default="crop",
        help="how --size is reached: crop (crop/pad around the foreground, voxel "
        "size kept; default) or scale (pad to a square, resize)",
    )
    parser.add_argument(
        "--splits",
        default="0.7,0.1,0.2",
        metavar="TRAIN,VAL,TEST",
        help="patient fractions, non-negative, summing to 1 (default 0.7,0.1,0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="K-fold cross-validation over the non-test patients (the val fraction is then unused)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help="worker processes (default: min(4, CPUs))",
    )
    parser.add_argument(
        "--dtype",
        choices=IMAGE_DTYPES,
        default="auto",
        help="stored intensity type: uint16 (steps of 1/65535 of the normalised [0, 1] range), uint8 "
        "(steps of 1/255, as the original code's PNGs), float16 or float32 (4x uint8's bytes); "
        "default auto: uint16, or float32 with --no-normalize",
    )
    parser.add_argument(
        "--no-crop",
        action="store_true",
        help="store whole planes (default: only each subject's in-plane foreground box, padded back "
        "with zeros on read)",
    )
    parser.add_argument(
        "--clip-percentiles",
        type=float,
        nargs=2,
        default=DEFAULT_PERCENTILES,
        metavar=("LOW", "HIGH"),
        help="intensity clipping percentiles inside the foreground (default 0.5 99.5)",
    )
    parser.add_argument(
        "--no-normalize", action="store_true", help="store raw intensities (no percentile clipping and scaling)"
    )
    parser.add_argument(
        "--nonfinite",
        choices=NONFINITE_POLICIES,
        default="error",
        help="NaN/inf image voxels: error (default) or zero (treated as background, with a warning naming the file)",
    )
    parser.add_argument(
        "--keep-empty-slices",
        action="store_true",
        help="also store slices where every modality is 0 and the mask is empty",
    )
    parser.add_argument(
        "--affine-tolerance",
        type=float,
        default=1e-3,
        metavar="MM",
        help="largest allowed affine difference between a subject's files (default 1e-3 mm)",
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild a complete cache of other files or options")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def summary(cache_dir: Path) -> str:
    """A few lines describing a complete cache (subjects, slices, positives of the default region)."""
    index = fmt.read_cache_index(cache_dir)
    region = get_label_spec(index.label_spec).default_region
    metas = [fmt.read_subject_meta(cache_dir, s) for s in index.subjects]
    labeled = [m for m in metas if m.labeled]
    n_slices = sum(len(m.slice_index) for m in metas)
    n_positive = sum(int(m.slice_labels[region].sum()) for m in labeled)
    size = f"{index.size}x{index.size}" if index.size else "native size"
    lines = [
        f"{cache_dir}: {index.dataset}, {len(metas)} subjects, {n_slices} slices "
        f"({n_positive} containing {region}), modalities {', '.join(index.modalities)}, {size}"
    ]
    if index.unlabeled:
        lines.append(
            f"warning: {len(index.unlabeled)} subject(s) without a label mask, for inference "
            f"only (split 'unlabeled'): {list(index.unlabeled[:10])}"
        )
    absent = [m.id for m in labeled if not m.slice_labels[region].any()]
    if absent:
        lines.append(f"warning: {len(absent)} subject(s) without any {region} voxel: {absent[:10]}")
    repaired = [
        f"{m.id} ({name}: {record['nonfinite']})"
        for m in metas
        for name, record in (m.intensity or {}).items()
        if record.get("nonfinite")
    ]
    if repaired:
        lines.append(f"warning: non-finite voxels set to 0 in {len(repaired)} volume(s): {repaired[:10]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fractions = parse_fractions(args.splits)
        options = BuildOptions(
            args.dtype,
            not args.keep_empty_slices,
            args.affine_tolerance,
            not args.no_normalize,
            tuple(args.clip_percentiles),
            args.nonfinite,
            args.size,
            args.fit,
            not args.no_crop,
        )
        prepare_raw(
            args.data,
            args.out,
            dataset=args.dataset,
            options=options,
            fractions=fractions,
            seed=args.seed,
            folds=args.folds,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
