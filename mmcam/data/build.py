"""Build the slice cache (:mod:`mmcam.data.cache`) from a discovered raw dataset.

Per subject: read every modality and the mask (:mod:`mmcam.data.nifti`), check that they share one
grid (shape, and affine within ``affine_tolerance`` mm) and that the mask values fit the label spec,
cut the volumes into slices along the third voxel axis, optionally drop empty slices, and write
``image.npy``, ``labels.npy`` and ``meta.json`` into a temporary directory that is renamed into place
when complete. Subjects run in parallel worker processes; the index ``mmcam_cache.json`` is written
last. An interrupted build leaves no index (the cache is not usable) and is resumed by running it
again: subjects already written from the same source files with the same options are kept.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mmcam.data import cache as fmt
from mmcam.data._atomic import TEMP_PREFIX, atomic_write_json, replace_directory, temporary_sibling
from mmcam.data.discover import Dataset, Subject
from mmcam.data.errors import DataError
from mmcam.data.labels import LabelSpec
from mmcam.data.nifti import Volume, header_to_text, load_image, load_labels
from mmcam.data.splits import kfold_patients, split_patients

__all__ = ["BuildOptions", "build_subject", "build_cache", "splits_record", "write_splits"]

IMAGE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class BuildOptions:
    """How a cache is built.

    Attributes:
        image_dtype: ``"float32"`` (default) or ``"float16"`` (half the disk; intensities must stay
            below 65504).
        drop_empty_slices: leave out slices where every modality is 0 everywhere and the mask is empty.
        affine_tolerance: largest allowed difference (mm) between the affines of a subject's files.
    """

    image_dtype: str = "float32"
    drop_empty_slices: bool = True
    affine_tolerance: float = 1e-3

    def __post_init__(self):
        if self.image_dtype not in IMAGE_DTYPES:
            raise DataError(f"image_dtype must be one of {IMAGE_DTYPES}, got {self.image_dtype!r}")
        if not (isinstance(self.affine_tolerance, (int, float)) and self.affine_tolerance >= 0):
            raise DataError(f"affine_tolerance must be a number >= 0, got {self.affine_tolerance!r}")


def _source_record(path: Path, channel: Optional[int]) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "channel": channel, "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def _sources(subject: Subject, modalities: tuple[str, ...]) -> dict:
    records = {name: _source_record(src.path, src.channel)
               for name, src in zip(modalities, subject.images)}
    records["label"] = _source_record(subject.label, None)
    return records


def _check_same_grid(volume: Volume, reference: Volume, tolerance: float) -> None:
    if volume.data.shape != reference.data.shape:
        raise DataError(f"{volume.path}: shape {volume.data.shape} differs from {reference.path} "
                        f"{reference.data.shape}")
    difference = float(np.abs(volume.affine - reference.affine).max())
    if difference > tolerance:
        raise DataError(f"{volume.path}: affine differs from {reference.path}'s by up to "
                        f"{difference:.3g} mm (tolerance {tolerance:g}; see affine_tolerance)")


def _settings(dataset: Dataset, options: BuildOptions) -> dict:
    return {"dataset": dataset.name, "label_spec": dataset.spec.name,
            "modalities": list(dataset.modalities), **asdict(options)}


def build_subject(subject: Subject, dataset: Dataset, cache_dir, options: BuildOptions
                  ) -> fmt.SubjectMeta:
    """Read, check and write one subject into ``cache_dir/subjects/<id>`` (atomically).

    Raises:
        DataError: naming the file at fault (unreadable, grids differ, unexpected label values, no
            non-empty slice, intensities too large for float16).
    """
    spec: LabelSpec = dataset.spec
    labels = load_labels(subject.label)
    spec.check_values(labels.data, subject.label)
    images = [load_image(src.path, src.channel) for src in subject.images]
    for volume in images:
        _check_same_grid(volume, labels, options.affine_tolerance)

    stack = np.stack([v.data for v in images])  # (M, X, Y, Z)
    if options.drop_empty_slices:
        keep = np.flatnonzero(stack.any(axis=(0, 1, 2)) | labels.data.any(axis=(0, 1)))
        if keep.size == 0:
            raise DataError(f"{subject.images[0].path}: every slice of every modality is empty")
    else:
        keep = np.arange(stack.shape[3])
    with np.errstate(over="ignore"):  # float16 overflow is reported below
        image = np.ascontiguousarray(stack[..., keep].transpose(3, 0, 1, 2),
                                     dtype=options.image_dtype)
    if not np.isfinite(image).all():
        raise DataError(f"{subject.images[0].path} (subject {subject.id}): intensities overflow "
                        f"{options.image_dtype}; build with image_dtype='float32'")
    mask_values = np.ascontiguousarray(labels.data[..., keep].transpose(2, 0, 1), dtype=np.uint8)
    slice_labels = {region: spec.region_mask(mask_values, region).any(axis=(1, 2)).astype(np.int64)
                    for region in spec.regions}
    meta = fmt.SubjectMeta(
        subject.id, tuple(labels.data.shape), keep.astype(np.int64), slice_labels,
        labels.affine, labels.zooms, header_to_text(labels.header),
        _sources(subject, dataset.modalities), _settings(dataset, options),
    )

    final = fmt.subject_dir(cache_dir, subject.id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        tmp.mkdir()
        np.save(tmp / fmt.IMAGE_FILE, image)
        np.save(tmp / fmt.LABELS_FILE, mask_values)
        atomic_write_json(tmp / fmt.META_FILE, meta.to_json())
        replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _reusable(subject: Subject, dataset: Dataset, cache_dir, options: BuildOptions) -> bool:
    """Whether ``subject`` is already in the cache, written from the same files with the same options."""
    directory = fmt.subject_dir(cache_dir, subject.id)
    if not all((directory / name).is_file() for name in (fmt.IMAGE_FILE, fmt.LABELS_FILE)):
        return False
    try:
        meta = fmt.read_subject_meta(cache_dir, subject.id)
        return (meta.settings == _settings(dataset, options)
                and meta.sources == _sources(subject, dataset.modalities))
    except (DataError, OSError):
        return False


def _prepare_directory(cache_dir: Path) -> None:
    """Create ``cache_dir`` or make it ready for (re)building; refuse to clobber other data."""
    index = cache_dir / fmt.INDEX_FILE
    if index.exists():  # overwrite: from here on the directory is an unfinished cache
        index.unlink()
        shutil.rmtree(cache_dir / "subjects", ignore_errors=True)
        (cache_dir / fmt.SPLITS_FILE).unlink(missing_ok=True)
    elif cache_dir.exists():
        if not cache_dir.is_dir():
            raise DataError(f"{cache_dir}: exists and is not a directory")
        foreign = sorted(p.name for p in cache_dir.iterdir() if p.name != "subjects")
        if foreign:
            raise DataError(f"{cache_dir}: not empty and not an mmcam cache (holds {foreign[:5]}); "
                            "choose a new directory")
    (cache_dir / "subjects").mkdir(parents=True, exist_ok=True)
    for stale in (cache_dir / "subjects").glob(TEMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed build


def _progress(total: int, enabled: bool, description: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a missing one must not stop a build
        return None
    return tqdm(total=total, disable=not enabled, desc=description, unit="subject")


def build_cache(dataset: Dataset, cache_dir, *, options: BuildOptions = BuildOptions(),
                workers: int = 1, overwrite: bool = False, progress: bool = False
                ) -> fmt.CacheIndex:
    """Write the cache of ``dataset`` into ``cache_dir``.

    Args:
        dataset: from :func:`mmcam.data.discover.discover` (or the synthetic generator).
        cache_dir: a new or empty directory, an unfinished cache (resumed), or a complete cache:
            returned as it is when built from the same files with the same options, else rebuilt
            with ``overwrite=True``.
        options: see :class:`BuildOptions`.
        workers: number of worker processes (``1``: in this process).
        overwrite: rebuild a complete cache.
        progress: show a tqdm progress bar on stderr.

    Returns:
        The :class:`~mmcam.data.cache.CacheIndex` written to ``cache_dir/mmcam_cache.json``.

    Raises:
        DataError: from the first subject that fails; no index is written.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers must be an int >= 1, got {workers!r}")
    cache_dir = Path(cache_dir)
    index = fmt.CacheIndex(cache_dir, dataset.name, dataset.spec.name, dataset.modalities,
                           options.image_dtype, options.drop_empty_slices,
                           tuple(s.id for s in dataset.subjects), str(dataset.root.resolve()))
    if (cache_dir / fmt.INDEX_FILE).exists() and not overwrite:
        if fmt.read_cache_index(cache_dir) == index and \
                all(_reusable(s, dataset, cache_dir, options) for s in dataset.subjects):
            return index  # up to date
        raise DataError(f"{cache_dir}: already holds a complete cache of other data or options; "
                        "pass overwrite=True (--overwrite) to rebuild it")
    _prepare_directory(cache_dir)
    todo = [s for s in dataset.subjects if not _reusable(s, dataset, cache_dir, options)]
    bar = _progress(len(dataset.subjects), progress, f"prepare {dataset.name}")
    if bar is not None:
        bar.update(len(dataset.subjects) - len(todo))
    try:
        if workers == 1 or len(todo) <= 1:
            for subject in todo:
                build_subject(subject, dataset, cache_dir, options)
                if bar is not None:
                    bar.update()
        else:
            # spawn: workers start clean (no inherited threads), the same on every platform
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), context) as pool:
                futures = [pool.submit(build_subject, s, dataset, cache_dir, options) for s in todo]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        future.result()
                        if bar is not None:
                            bar.update()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()
    atomic_write_json(cache_dir / fmt.INDEX_FILE, index.to_json())
    return index


def splits_record(subject_ids, *, seed: int = 0, val_fraction: float = 0.1,
                  test_fraction: float = 0.2, folds: Optional[int] = None) -> dict:
    """The ``splits.json`` record of ``subject_ids``.

    Without ``folds``: one train/val fold (:func:`~mmcam.data.splits.split_patients`); with ``folds=k``:
    ``k`` cross-validation folds over the non-test patients (:func:`~mmcam.data.splits.kfold_patients`,
    ``val_fraction`` unused). The test set is the same either way.
    """
    if folds is None:
        splits = [split_patients(subject_ids, val_fraction=val_fraction,
                                 test_fraction=test_fraction, seed=seed)]
    else:
        splits = kfold_patients(subject_ids, folds=folds, test_fraction=test_fraction, seed=seed)
    return {
        "seed": seed, "val_fraction": None if folds else val_fraction,
        "test_fraction": test_fraction, "folds_requested": folds,
        "test": list(splits[0].test),
        "folds": [{"train": list(s.train), "val": list(s.val)} for s in splits],
    }


def write_splits(cache_dir, **kwargs) -> dict:
    """Draw the seeded patient split of a complete cache and write ``splits.json`` atomically.

    Keyword arguments as :func:`splits_record`; returns the record.
    """
    record = splits_record(fmt.read_cache_index(cache_dir).subjects, **kwargs)
    atomic_write_json(Path(cache_dir) / fmt.SPLITS_FILE, record)
    return record
