"""Build the slice cache (:mod:`mmcam.data.cache`) from a discovered raw dataset.

Per subject: read every modality and the mask if there is one (:mod:`mmcam.data.nifti`), check that
they share one grid (shape, and affine within ``affine_tolerance`` mm) and that the mask values fit the
label spec, normalise each modality's intensities (:mod:`mmcam.data.intensity`), cut the volumes into
slices along the third voxel axis, optionally drop empty slices, optionally crop / pad / resize the
planes to ``size x size`` (:mod:`mmcam.data.geometry`), crop the planes to the subject's foreground box
and quantise the intensities (:class:`~mmcam.data.cache.Storage`), and write ``image.npy``,
``labels.npy`` and ``meta.json`` into a temporary directory that is renamed into place when complete. Subjects run in
parallel worker processes; ``manifest.json`` and then the index ``mmcam_cache.json`` are written last.
An interrupted build leaves no index (the cache is not usable) and is resumed by running it again:
subjects already written from the same source files with the same options are kept.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmcam.atomic_files import TEMP_PREFIX, atomic_write_json, replace_directory, temporary_sibling
from mmcam.data import cache as fmt
from mmcam.data.discover import Dataset, Subject, discover
from mmcam.data.errors import DataError
from mmcam.data.geometry import FITS, plan_geometry
from mmcam.data.intensity import DEFAULT_PERCENTILES, check_percentiles, normalize_intensity
from mmcam.data.labels import LabelSpec
from mmcam.data.manifest import MANIFEST_FILE, write_manifest
from mmcam.data.nifti import NONFINITE_POLICIES, Volume, header_to_text, load_image, load_labels
from mmcam.data.splits import DEFAULT_FRACTIONS, check_fractions, kfold_patients, split_patients
from mmcam.progress import progress_bar

__all__ = [
    "IMAGE_DTYPES",
    "BuildOptions",
    "build_subject",
    "build_cache",
    "splits_record",
    "write_splits",
    "default_workers",
    "prepare_raw",
]

#: ``"auto"``: ``"uint16"`` for normalised intensities, else ``"float32"``.
IMAGE_DTYPES = ("auto",) + fmt.STORED_DTYPES


@dataclass(frozen=True)
class BuildOptions:
    """How a cache is built.

    Attributes:
        image_dtype: how intensities are stored (:class:`~mmcam.data.cache.Storage`): ``"uint16"``
            (quantised to steps of 1/65535, half of float32's bytes), ``"uint8"`` (steps of 1/255, a
            quarter; as the original code's PNGs), ``"float16"`` or ``"float32"``. The quantised
            dtypes need ``normalize``. Default ``"auto"``: ``"uint16"`` when normalising, else
            ``"float32"`` (resolved on construction).
        drop_empty_slices: leave out slices where every modality is 0 everywhere and the mask is empty.
        affine_tolerance: largest allowed difference (mm) between the affines of a subject's files.
        normalize: robust intensity normalisation per volume and modality (percentile clipping inside
            the foreground, then the foreground scaled to [0, 1]; :mod:`mmcam.data.intensity`).
            ``False`` stores the raw intensities.
        clip_percentiles: ``(low, high)`` percentiles of the clipping (default 0.5 and 99.5).
        nonfinite: NaN / inf image voxels: ``"error"`` (default) or ``"zero"`` (set to 0 = background,
            with a warning naming the file; counted in ``meta.json``).
        size: store every slice at ``size x size`` (``None``: the native ``(X, Y)``).
        fit: how ``size`` is reached: ``"crop"`` (crop/pad, voxel size kept; refuses to cut off mask
            voxels) or ``"scale"`` (pad to a square and resize); :mod:`mmcam.data.geometry`.
        crop_to_foreground: store only each subject's in-plane foreground box of the planes (the rest
            is 0 and is padded back on read, exactly).
    """

    image_dtype: str = "auto"
    drop_empty_slices: bool = True
    affine_tolerance: float = 1e-3
    normalize: bool = True
    clip_percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    nonfinite: str = "error"
    size: int | None = None
    fit: str = "crop"
    crop_to_foreground: bool = True

    def __post_init__(self):
        if self.image_dtype not in IMAGE_DTYPES:
            raise DataError(f"image_dtype must be one of {IMAGE_DTYPES}, got {self.image_dtype!r}")
        if self.image_dtype == "auto":
            object.__setattr__(self, "image_dtype", "uint16" if self.normalize else "float32")
        if self.image_dtype in fmt.QUANTISED and not self.normalize:
            raise DataError(
                f"image_dtype {self.image_dtype!r} stores intensities normalised to [0, 1]; "
                "without normalisation choose 'float32' or 'float16'"
            )
        if not (isinstance(self.affine_tolerance, (int, float)) and self.affine_tolerance >= 0):
            raise DataError(f"affine_tolerance must be a number >= 0, got {self.affine_tolerance!r}")
        object.__setattr__(self, "clip_percentiles", check_percentiles(self.clip_percentiles))
        if self.nonfinite not in NONFINITE_POLICIES:
            raise DataError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise DataError(f"size must be a positive int or None, got {self.size!r}")
        if self.fit not in FITS:
            raise DataError(f"fit must be one of {FITS}, got {self.fit!r}")


def _source_record(path: Path, channel: int | None) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "channel": channel, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _sources(subject: Subject, modalities: tuple[str, ...]) -> dict:
    records = {name: _source_record(src.path, src.channel) for name, src in zip(modalities, subject.images)}
    if subject.label is not None:
        records["label"] = _source_record(subject.label, None)
    return records


def _check_same_grid(volume: Volume, reference: Volume, tolerance: float) -> None:
    if volume.data.shape != reference.data.shape:
        raise DataError(
            f"{volume.path}: shape {volume.data.shape} differs from {reference.path} {reference.data.shape}"
        )
    difference = float(np.abs(volume.affine - reference.affine).max())
    if difference > tolerance:
        raise DataError(
            f"{volume.path}: affine differs from {reference.path}'s by up to "
            f"{difference:.3g} mm (tolerance {tolerance:g}; see affine_tolerance)"
        )


def _settings(dataset: Dataset, options: BuildOptions) -> dict:
    """The settings a subject is written with, as they read back from JSON (tuples become lists)."""
    return json.loads(
        json.dumps(
            {
                "dataset": dataset.name,
                "label_spec": dataset.spec.name,
                "modalities": list(dataset.modalities),
                **asdict(options),
            }
        )
    )


def _read_subject(subject: Subject, spec: LabelSpec, options: BuildOptions) -> tuple[list[Volume], Volume | None]:
    """The checked image volumes and label volume (``None`` without a mask) of ``subject``."""
    labels = None
    if subject.label is not None:
        labels = load_labels(subject.label)
        spec.check_values(labels.data, subject.label)
    images = [load_image(src.path, src.channel, options.nonfinite) for src in subject.images]
    reference = labels if labels is not None else images[0]
    for volume in images:
        _check_same_grid(volume, reference, options.affine_tolerance)
    return images, labels


def _normalized_stack(
    images: list[Volume], modalities: Sequence[str], options: BuildOptions
) -> tuple[np.ndarray, dict]:
    """``(M, X, Y, Z)`` float32 intensities (normalised if asked) and the per-modality record."""
    stack = np.empty((len(images),) + images[0].data.shape, dtype=np.float32)
    record = {}
    for m, (name, volume) in enumerate(zip(modalities, images)):
        if options.normalize:
            stack[m], stats = normalize_intensity(volume.data, options.clip_percentiles)
            record[name] = {**stats.to_json(), "nonfinite": volume.nonfinite}
        else:
            stack[m] = volume.data
            record[name] = {"nonfinite": volume.nonfinite}
    return stack, record


def _plan_storage(image: np.ndarray, mask_values: np.ndarray | None, options: BuildOptions) -> fmt.Storage:
    """How to store ``(S, M, H, W)`` float32 ``image`` and ``(S, H, W)`` ``mask_values``: the dtype of
    ``options`` and, with ``crop_to_foreground``, their non-zero box (:func:`~mmcam.data.cache.foreground_box`)."""
    size = image.shape[-2:]
    if not options.crop_to_foreground:
        return fmt.Storage.full(options.image_dtype, size)
    return fmt.Storage(options.image_dtype, (size[0], size[1]), fmt.foreground_box(image, mask_values))


def build_subject(subject: Subject, dataset: Dataset, cache_dir, options: BuildOptions) -> fmt.SubjectMeta:
    """Read, check and write one subject into ``cache_dir/subjects/<id>`` (atomically).

    Raises:
        DataError: naming the file at fault (unreadable, grids differ, unexpected label values, no
            non-empty slice, a ``size`` crop that cuts off mask voxels, intensities too large for
            float16).
    """
    spec: LabelSpec = dataset.spec
    images, labels = _read_subject(subject, spec, options)
    raw_nonzero = np.stack([v.data != 0 for v in images]).any(axis=0)  # (X, Y, Z)
    mask = labels.data != 0 if labels is not None else np.zeros_like(raw_nonzero)
    reference = labels if labels is not None else images[0]  # geometry and header to carry
    affine, zooms, header = reference.affine, reference.zooms, header_to_text(reference.header)
    stack, intensity = _normalized_stack(images, dataset.modalities, options)
    del images, reference

    occupied = raw_nonzero | mask
    if options.drop_empty_slices:
        keep = np.flatnonzero(occupied.any(axis=(0, 1)))
        if keep.size == 0:
            raise DataError(f"{subject.images[0].path}: every slice of every modality is empty")
    else:
        keep = np.arange(stack.shape[3])
    geometry = plan_geometry(stack.shape[1:3], options.size, options.fit, np.asarray(occupied.any(axis=2)))
    cut = geometry.voxels_outside(mask.transpose(2, 0, 1))
    if cut:
        raise DataError(
            f"{subject.label}: --size {options.size} (fit crop) would cut off {cut} "
            f"voxels of the label mask of a {stack.shape[1:3]} plane; use a larger size "
            "or fit 'scale'"
        )
    image = geometry.apply(stack[..., keep].transpose(3, 0, 1, 2), "linear")  # (S, M, H, W) float32
    del stack
    slice_labels, mask_values = {}, None
    if labels is not None:
        mask_values = np.ascontiguousarray(
            geometry.apply(labels.data[..., keep].transpose(2, 0, 1).astype(np.uint8), "nearest")
        )  # (S, H, W)
        slice_labels = {
            region: spec.region_mask(mask_values, region).any(axis=(1, 2)).astype(np.int64) for region in spec.regions
        }
    storage = _plan_storage(image, mask_values, options)
    image = storage.encode(image, f"{subject.images[0].path} (subject {subject.id})")  # (S, M, h, w)
    if mask_values is not None:
        mask_values = storage.crop(mask_values)  # (S, h, w)
    meta = fmt.SubjectMeta(
        subject.id,
        tuple(mask.shape),
        keep.astype(np.int64),
        slice_labels,
        affine,
        zooms,
        header,
        _sources(subject, dataset.modalities),
        _settings(dataset, options),
        labels is not None,
        geometry,
        intensity,
        storage,
    )
    _write_subject(cache_dir, subject.id, image, mask_values, meta)
    return meta


def _write_subject(
    cache_dir, subject_id: str, image: np.ndarray, mask_values: np.ndarray | None, meta: fmt.SubjectMeta
) -> None:
    """Write one subject's arrays and meta into a temporary directory, then rename it into place."""
    final = fmt.subject_dir(cache_dir, subject_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        tmp.mkdir()
        np.save(tmp / fmt.IMAGE_FILE, image)
        if mask_values is not None:
            np.save(tmp / fmt.LABELS_FILE, mask_values)
        atomic_write_json(tmp / fmt.META_FILE, meta.to_json())
        replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reusable(subject: Subject, dataset: Dataset, cache_dir, options: BuildOptions) -> bool:
    """Whether ``subject`` is already in the cache, written from the same files with the same options."""
    directory = fmt.subject_dir(cache_dir, subject.id)
    needed = (fmt.IMAGE_FILE,) + ((fmt.LABELS_FILE,) if subject.label is not None else ())
    if not all((directory / name).is_file() for name in needed):
        return False
    try:
        meta = fmt.read_subject_meta(cache_dir, subject.id)
        return meta.settings == _settings(dataset, options) and meta.sources == _sources(subject, dataset.modalities)
    except (DataError, OSError):
        return False


def _prepare_directory(cache_dir: Path) -> None:
    """Create ``cache_dir`` or make it ready for (re)building; refuse to clobber other data."""
    index = cache_dir / fmt.INDEX_FILE
    if index.exists():  # overwrite: from here on the directory is an unfinished cache
        index.unlink()
        shutil.rmtree(cache_dir / "subjects", ignore_errors=True)
        (cache_dir / fmt.SPLITS_FILE).unlink(missing_ok=True)
        (cache_dir / MANIFEST_FILE).unlink(missing_ok=True)
    elif cache_dir.exists():
        if not cache_dir.is_dir():
            raise DataError(f"{cache_dir}: exists and is not a directory")
        ours = {"subjects", MANIFEST_FILE}
        foreign = sorted(
            p.name for p in cache_dir.iterdir() if p.name not in ours and not p.name.startswith(TEMP_PREFIX)
        )
        if foreign:
            raise DataError(
                f"{cache_dir}: not empty and not an mmcam cache (holds {foreign[:5]}); choose a new directory"
            )
    (cache_dir / "subjects").mkdir(parents=True, exist_ok=True)
    for stale in [*cache_dir.glob(TEMP_PREFIX + "*"), *(cache_dir / "subjects").glob(TEMP_PREFIX + "*")]:
        if stale.is_dir():  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def build_cache(
    dataset: Dataset,
    cache_dir,
    *,
    options: BuildOptions = BuildOptions(),
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
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
    index = fmt.CacheIndex(
        cache_dir,
        dataset.name,
        dataset.spec.name,
        dataset.modalities,
        options.image_dtype,
        options.drop_empty_slices,
        tuple(s.id for s in dataset.subjects),
        str(dataset.root.resolve()),
        dataset.unlabeled,
        options.size,
        _settings(dataset, options),
    )
    if (cache_dir / fmt.INDEX_FILE).exists() and not overwrite:
        if fmt.read_cache_index(cache_dir) == index and all(
            _reusable(s, dataset, cache_dir, options) for s in dataset.subjects
        ):
            return index  # up to date
        raise DataError(
            f"{cache_dir}: already holds a complete cache of other data or options; "
            "pass overwrite=True (--overwrite) to rebuild it"
        )
    _prepare_directory(cache_dir)
    todo = [s for s in dataset.subjects if not _reusable(s, dataset, cache_dir, options)]
    bar = progress_bar(
        len(dataset.subjects),
        enabled=progress,
        description=f"prepare {dataset.name}",
        unit="subject",
        initial=len(dataset.subjects) - len(todo),
    )
    try:
        if workers == 1 or len(todo) <= 1:
            for subject in todo:
                build_subject(subject, dataset, cache_dir, options)
                bar.update()
        else:
            # spawn: workers start clean (no inherited threads), the same on every platform
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), context) as pool:
                futures = [pool.submit(build_subject, s, dataset, cache_dir, options) for s in todo]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        future.result()
                        bar.update()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    except OSError as exc:  # a full disk, a file-size limit (EFBIG), a quota: what is written stays
        kept = sum(_reusable(s, dataset, cache_dir, options) for s in dataset.subjects)
        raise DataError(
            f"{cache_dir}: preparing stopped, a file could not be written ({exc}); the {kept} of "
            f"{len(dataset.subjects)} subjects already in the cache are complete and kept: free space and run "
            "the same command again to continue"
        ) from None
    finally:
        bar.close()
    write_manifest(cache_dir, index, [fmt.read_subject_meta(cache_dir, s.id) for s in dataset.subjects])
    atomic_write_json(cache_dir / fmt.INDEX_FILE, index.to_json())
    return index


def splits_record(
    subject_ids,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    folds: int | None = None,
    unlabeled: Sequence[str] = (),
) -> dict:
    """The ``splits.json`` record of the labelled ``subject_ids`` (plus the ``unlabeled`` ids).

    Without ``folds``: one train/val fold (:func:`~mmcam.data.splits.split_patients` with
    ``fractions = (train, val, test)``); with ``folds=k``: ``k`` cross-validation folds over the
    non-test patients (:func:`~mmcam.data.splits.kfold_patients`, the val fraction unused). The test
    set is the same either way. Unlabelled subjects are in no part but ``"unlabeled"``.
    """
    fractions = check_fractions(fractions)
    ids = list(subject_ids)
    if set(ids) & set(unlabeled):
        raise DataError(f"subjects both labelled and unlabelled: {sorted(set(ids) & set(unlabeled))}")
    if folds is None:
        splits = [split_patients(ids, fractions, seed=seed)]
    else:
        splits = kfold_patients(ids, folds=folds, test_fraction=fractions[2], seed=seed)
    return {
        "seed": seed,
        "fractions": list(fractions),
        "folds_requested": folds,
        "test": list(splits[0].test),
        "folds": [{"train": list(s.train), "val": list(s.val)} for s in splits],
        "unlabeled": sorted(unlabeled),
    }


def write_splits(cache_dir, **kwargs) -> dict:
    """Draw the seeded patient split of a complete cache and write ``splits.json`` atomically.

    Keyword arguments as :func:`splits_record` (``fractions``, ``seed``, ``folds``); the labelled and
    unlabelled ids come from the cache index. Returns the record.
    """
    index = fmt.read_cache_index(cache_dir)
    labeled = [s for s in index.subjects if s not in set(index.unlabeled)]
    record = splits_record(labeled, unlabeled=index.unlabeled, **kwargs)
    atomic_write_json(Path(cache_dir) / fmt.SPLITS_FILE, record)
    return record


def default_workers() -> int:
    """Worker processes of a cache build when none is given: min(4, CPUs)."""
    return min(4, os.cpu_count() or 1)


def prepare_raw(
    data,
    cache_dir,
    *,
    dataset: str = "auto",
    options: BuildOptions | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    folds: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> fmt.CacheIndex:
    """A raw download -> a complete slice cache with its patient splits: :func:`~mmcam.data.discover.discover`
    (``dataset`` as ``--dataset``), :func:`build_cache`, :func:`write_splits`. What ``python -m mmcam.prepare``
    does, and how training prepares a raw ``--data`` on first use. Bad split options fail before any file is
    read or written.

    Raises:
        DataError: naming the file, folder or option at fault.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    found = discover(data, dataset)
    labeled = [s.id for s in found.subjects if s.label is not None]
    splits_record(labeled, unlabeled=found.unlabeled, fractions=fractions, seed=seed, folds=folds)  # fail early
    index = build_cache(
        found, cache_dir, options=options or BuildOptions(), workers=workers, overwrite=overwrite, progress=progress
    )
    write_splits(cache_dir, fractions=fractions, seed=seed, folds=folds)
    return index
