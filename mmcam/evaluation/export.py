"""A trained run's maps and pseudo-masks as NIfTI volumes on the input's grid: what ``python -m mmcam.infer``
runs (:func:`export_run_maps`, options as :class:`ExportRequest`, named like the command's).

::

    python -m mmcam.infer --run RUN_DIR --data RAW_OR_CACHE [--subjects ID ...] --out DIR
    python -m mmcam.infer --run RUN_DIR --files t2=a.nii.gz flair=b.nii.gz [--subject-id ID] --out DIR
        [--checkpoint best|best_dice|last] [--threshold val|otsu|T] [--map cam|gradcam|gradcampp]
        [--cache DIR] [--dataset auto] [--device cpu|cuda] [--batch-size N] [--workers N]

Input: ``--data`` is a slice cache (``python -m mmcam.prepare``) or a raw download in one of the layouts
of :mod:`mmcam.data.discover` (labelled or not); ``--files MODALITY=PATH`` (``MODALITY=PATH:C`` for
channel ``C`` of a 4-D file) is one subject given as files, without labels. Raw input is prepared with
the library code of ``mmcam.prepare`` (discover + build_cache) and the build options of the run's own
cache (intensity normalisation, ``--size``, fit; the defaults with the run's ``size`` when that cache is
gone), into ``--cache DIR`` (kept and reused) or a temporary folder removed at the end.

Per subject, each modality's network runs on its own modality's slices; its map (``--map``, default the
CAM: :mod:`mmcam.cams.pseudo_masks`) is put back on the input's voxel grid (the prepare-time crop / pad /
resize undone, dropped empty slices = 0). Written, with the input's affine and header (qform / sform codes,
units, description):

- ``OUT/<subject>/<map>_<modality>.nii.gz``: float32 map in [0, 1] (0 where the network predicts "no
  target");
- ``OUT/<subject>/mask_<modality>.nii.gz``: uint8 pseudo-mask ``map >= threshold``;
- ``OUT/<subject>/<map>_combined.nii.gz`` and ``mask_combined.nii.gz``: the mean of the modality maps,
  thresholded with the combined channel's threshold;
- ``OUT/infer.json`` (last): run, checkpoint, map type, the threshold rule, source and values, and the
  files of every subject.

Threshold (``--threshold``): ``val`` (default) = per channel, the one chosen on the run's validation
split: taken from ``RUN_DIR/results.json`` when the trainer chose it for the same checkpoint and map
(``cam``), else recomputed on the validation split of the run's cache (:mod:`mmcam.evaluation.thresholds`); ``otsu``
= label-free, per subject and channel; or a number in (0, 1]. Bad input raises
:class:`~mmcam.evaluation.runs.UsageError` or :class:`~mmcam.data.DataError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmcam.atomic_files import atomic_write_text
from mmcam.data import build_cache, discover, get_label_spec, read_cache_index, save_nifti
from mmcam.data.build import BuildOptions
from mmcam.data.cache import INDEX_FILE
from mmcam.data.discover import Dataset, ImageSource, Subject
from mmcam.data.modalities import canonical_modality
from mmcam.evaluation.runs import LoadedRun, UsageError, load_run, subject_maps, training_cache
from mmcam.evaluation.thresholds import ThresholdRule, choose_on_split, parse_threshold, pseudo_mask

__all__ = ["MANIFEST", "ExportRequest", "export_run_maps", "parse_files"]

MANIFEST = "infer.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What to export (the options of ``python -m mmcam.infer``, see the module doc).

    ``run``: the run directory; ``out``: the output folder; the input is ``data`` (a raw folder or a slice
    cache) or ``files`` (``MODALITY=PATH[:C]`` strings of one subject, named ``subject_id``); ``subjects``
    limits a ``data`` input; ``checkpoint`` and ``threshold`` as for :func:`~mmcam.evaluation.runs.load_run`
    and :func:`~mmcam.evaluation.thresholds.parse_threshold`; ``map_type`` in
    :data:`~mmcam.cams.pseudo_masks.MAP_TYPES`; raw input is prepared into ``cache`` (default: a temporary
    folder) as layout ``dataset`` with ``workers`` processes.
    """

    run: str
    out: str
    data: str | None = None
    files: Sequence[str] | None = None
    subjects: Sequence[str] | None = None
    subject_id: str | None = None
    checkpoint: str | None = None
    threshold: str | None = None
    map_type: str = "cam"
    cache: str | None = None
    dataset: str = "auto"
    device: str = "cpu"
    batch_size: int = 32
    workers: int = 1

    def __post_init__(self) -> None:
        if (self.data is None) == (self.files is None):
            raise UsageError("give the input as --data (a folder) or --files (one subject), exactly one of them")


# ------------------------------------------------------------------------------------------ input
def parse_files(items: Sequence[str]) -> dict[str, ImageSource]:
    """``["t2=a.nii.gz", "adc=b.nii.gz:1"]`` -> canonical modality name -> :class:`ImageSource`.

    ``PATH:C`` reads channel ``C`` of a 4-D file (when ``PATH:C`` itself is not a file)."""
    sources = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path:
            raise UsageError(f"--files {item!r}: expected MODALITY=PATH or MODALITY=PATH:CHANNEL")
        modality = canonical_modality(name)
        channel = None
        match = re.fullmatch(r"(.+):(\d+)", path)
        if match and not Path(path).exists():
            path, channel = match.group(1), int(match.group(2))
        if not Path(path).is_file():
            raise UsageError(f"--files {item}: no such file {path}")
        if modality in sources:
            raise UsageError(f"--files: modality {modality} given twice")
        sources[modality] = ImageSource(Path(path), channel)
    return sources


def _build_options(run: LoadedRun) -> tuple[BuildOptions, str | None]:
    """The build options of the run's cache (and its dataset name), or the defaults with the run's size."""
    cache = training_cache(run.config)
    if cache is None:
        return BuildOptions(size=run.config.size), None
    index = read_cache_index(cache)
    names = {f.name for f in dataclasses.fields(BuildOptions)}
    # as the cache index recorded them (JSON): BuildOptions checks them
    options: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in (index.options or {}).items() if k in names
    }
    return BuildOptions(**options), index.dataset


def _files_dataset(args: ExportRequest, run: LoadedRun, dataset_name: str | None) -> Dataset:
    sources = parse_files(args.files or ())
    missing = [m for m in run.modalities if m not in sources]
    if missing:
        raise UsageError(f"--files: the run's networks need the modalities {list(run.modalities)}; missing {missing}")
    first = next(iter(sources.values())).path
    subject_id = args.subject_id or first.name.removesuffix(".gz").removesuffix(".nii")
    subject_id = _SAFE.sub("_", subject_id).lstrip("._-") or "subject"
    # the label spec only matters for masks, and these files have none
    name = dataset_name or ("msd_prostate" if "adc" in sources else "brats2021")
    subject = Subject(subject_id, tuple(sources.values()), None)
    return Dataset(name, first.parent, get_label_spec(name), tuple(sources), (subject,))


def _prepared_input(args: ExportRequest, run: LoadedRun, workdir: Path, log: Callable[[str], None]) -> Path:
    """The slice cache holding the input: ``--data`` itself when it is a cache, else a prepared one."""
    if args.data is not None and (Path(args.data) / INDEX_FILE).is_file():
        return Path(args.data)
    options, dataset_name = _build_options(run)
    if args.files:
        dataset = _files_dataset(args, run, dataset_name)
    else:
        assert args.data is not None  # one of data / files: ExportRequest checks it
        data = Path(args.data)
        dataset = discover(data, args.dataset)
        if args.subjects:
            wanted = set(args.subjects)
            unknown = sorted(wanted - {s.id for s in dataset.subjects})
            if unknown:
                raise UsageError(f"--subjects: not in {data}: {unknown[:10]}")
            dataset = dataclasses.replace(dataset, subjects=tuple(s for s in dataset.subjects if s.id in wanted))
    cache = Path(args.cache) if args.cache else workdir / "cache"
    log(f"preparing {len(dataset.subjects)} subject(s) into {cache}")
    build_cache(dataset, cache, options=options, workers=args.workers)
    return cache


# ------------------------------------------------------------------------------------ thresholds
def _val_thresholds(run: LoadedRun, map_type: str, batch_size: int) -> tuple[dict[str, float], str]:
    """Per-channel validation thresholds and where they come from (module doc)."""
    results_file = run.run_dir / "results.json"
    if map_type == "cam" and results_file.is_file():
        try:
            results = json.loads(results_file.read_text())
            dice = results["dice"]
            if Path(str(results.get("checkpoint", ""))).stem == run.checkpoint and all(c in dice for c in run.channels):
                return (
                    {c: float(dice[c]["threshold"]) for c in run.channels},
                    f"{results_file} (chosen by the trainer on the validation split, same checkpoint)",
                )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or of another shape: recompute
    cache = training_cache(run.config)
    if cache is None:
        raise UsageError(
            f"--threshold val: the run's cache (data {run.config.data or 'synthetic phantoms'}) is not "
            f"there to choose the threshold on its validation split, and {results_file} has none for "
            f"checkpoint {run.checkpoint} and map {map_type}; pass --threshold otsu or a number"
        )
    thresholds, _ = choose_on_split(run, cache, "val", map_type, batch_size, "--threshold val: the validation split")
    return thresholds, f"recomputed on the validation split of {cache}"


# ------------------------------------------------------------------------------------------- main
def export_run_maps(args: ExportRequest, log: Callable[[str], None] = print) -> dict:
    """Export as the module doc describes; returns the manifest written to ``OUT/infer.json``."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    rule: ThresholdRule = parse_threshold(args.threshold)
    run = load_run(args.run, args.checkpoint, args.device)
    if args.files:  # cheap checks of the input before any threshold sweep
        parse_files(args.files)
    elif args.data is None or not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    thresholds: dict[str, float] = {}
    source = rule.describe()
    if rule.mode == "val":
        thresholds, source = _val_thresholds(run, args.map_type, args.batch_size)
    elif rule.mode == "fixed":
        thresholds = {c: rule.fixed_value for c in run.channels}
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="mmcam-infer-") as workdir:
        cache = _prepared_input(args, run, Path(workdir), log)
        subjects = list(read_cache_index(cache).subjects)
        if args.subjects:
            unknown = sorted(set(args.subjects) - set(subjects))
            if unknown:
                raise UsageError(f"--subjects: not in {cache}: {unknown[:10]}")
            subjects = [s for s in subjects if s in set(args.subjects)]
        written = {}
        for subject in subjects:
            written[subject] = _write_subject(
                run, cache, subject, args.map_type, rule, thresholds, out / subject, args.batch_size
            )
            log(f"{subject}: " + ", ".join(f"{c} {v['mask_voxels']} voxels" for c, v in written[subject].items()))
    manifest = {
        "format": "mmcam-inference",
        "version": 1,
        "run_dir": str(run.run_dir),
        "checkpoint": run.checkpoint,
        "departure": run.selection_note,
        "map": args.map_type,
        "modalities": list(run.modalities),
        "threshold": {
            "mode": rule.mode,
            "source": source,
            "values": thresholds if rule.mode != "otsu" else "per subject and channel",
        },
        "pseudo_mask": f"{args.map_type} map (normalised to [0, 1], 0 where the network predicts no target) "
        ">= threshold",
        "combined": "mean of the modality maps, thresholded with the combined channel's threshold",
        "grid": "the input's voxel grid, affine and header; slices dropped as empty are 0",
        "input": {"data": args.data, "files": args.files},
        "subjects": written,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {len(written)} subject(s) to {out}")
    return manifest


def _write_subject(
    run: LoadedRun,
    cache: Path,
    subject: str,
    map_type: str,
    rule: ThresholdRule,
    thresholds: dict,
    folder: Path,
    batch_size: int,
) -> dict:
    """Write one subject's map and mask volumes; returns ``{channel: {threshold, files, voxel count}}``."""
    maps = subject_maps(run, cache, subject, map_type, batch_size)
    affine, header = maps.meta.affine, maps.meta.header()
    folder.mkdir(parents=True, exist_ok=True)
    record = {}
    for channel in run.channels:
        volume = maps.volume(channel).astype(np.float32)
        t = rule.threshold_for(volume, thresholds.get(channel))
        mask = pseudo_mask(volume, t)
        map_file, mask_file = folder / f"{map_type}_{channel}.nii.gz", folder / f"mask_{channel}.nii.gz"
        save_nifti(map_file, volume, affine, header)
        save_nifti(mask_file, mask.astype(np.uint8), affine, header)
        record[channel] = {
            "threshold": t if math.isfinite(t) else None,
            "map": str(map_file),
            "mask": str(mask_file),
            "mask_voxels": int(mask.sum()),
        }
    return record
