"""The on-disk slice cache: its layout, its JSON records, and reading them back.

A cache is a directory written by :func:`mmcam.data.build.build_cache` (``python -m mmcam.prepare``)::

    CACHE/
      mmcam_cache.json           the index: format version, dataset, label spec, modality names,
                                 image dtype, subject ids; written last, so its presence marks a
                                 complete cache
      splits.json                seeded patient split(s): the test ids and one train/val pair per fold
      subjects/<id>/image.npy    (S, M, X, Y) float32 (or float16): the S kept slices of the M
                                 modalities, slice-major so one slice is one contiguous block
      subjects/<id>/labels.npy   (S, X, Y) uint8: the raw mask values of the same slices (checked
                                 against the label spec; regions are chosen when reading)
      subjects/<id>/meta.json    geometry and provenance of the subject (:class:`SubjectMeta`)

Slicing convention: slice ``k`` of a volume ``v`` of shape ``(X, Y, Z)`` is ``v[:, :, k]`` -- the
third voxel axis, axial for BraTS and MSD prostate -- stored as an image of height ``X`` and width
``Y`` (``image[h, w] = v[h, w, k]``); nothing is reoriented or resampled, so the input's affine and
header describe every output. When the cache was built with empty-slice dropping, slices in which
every modality is 0 everywhere (outside a skull-stripped brain) and the mask is empty are not stored;
``SubjectMeta.slice_index`` gives the original ``k`` of each stored slice and :meth:`SubjectMeta.restack`
puts per-slice results back into a full ``(X, Y, Z)`` volume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mmcam.data.errors import DataError
from mmcam.data.nifti import header_from_text

__all__ = [
    "CACHE_FORMAT", "CACHE_VERSION", "INDEX_FILE", "SPLITS_FILE", "IMAGE_FILE", "LABELS_FILE",
    "META_FILE", "CacheIndex", "SubjectMeta", "subject_dir", "read_cache_index",
    "read_subject_meta", "read_split", "center_crop_or_pad",
]

CACHE_FORMAT = "mmcam-slice-cache"
CACHE_VERSION = 1
INDEX_FILE = "mmcam_cache.json"
SPLITS_FILE = "splits.json"
IMAGE_FILE = "image.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
SPLIT_PARTS = ("train", "val", "test")


def subject_dir(cache_dir, subject_id: str) -> Path:
    """``cache_dir/subjects/<subject_id>``."""
    return Path(cache_dir) / "subjects" / subject_id


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from exc


@dataclass(frozen=True)
class CacheIndex:
    """The contents of ``mmcam_cache.json``.

    Attributes:
        root: the cache directory.
        dataset: the source dataset's name (see :data:`mmcam.data.discover.DATASETS`).
        label_spec: the name of its :class:`~mmcam.data.labels.LabelSpec`.
        modalities: modality names, in the channel order of ``image.npy``.
        image_dtype: ``"float32"`` or ``"float16"``.
        drop_empty_slices: whether all-zero slices with empty masks were left out.
        subjects: subject ids in cache order.
        source_root: the raw dataset directory it was built from.
    """

    root: Path
    dataset: str
    label_spec: str
    modalities: tuple[str, ...]
    image_dtype: str
    drop_empty_slices: bool
    subjects: tuple[str, ...]
    source_root: str

    def to_json(self) -> dict:
        from mmcam import __version__
        return {
            "format": CACHE_FORMAT, "version": CACHE_VERSION, "mmcam_version": __version__,
            "dataset": self.dataset, "label_spec": self.label_spec,
            "modalities": list(self.modalities), "image_dtype": self.image_dtype,
            "drop_empty_slices": self.drop_empty_slices, "source_root": self.source_root,
            "slicing": "image[h, w] = volume[h, w, k]: slices along the third voxel axis",
            "subjects": list(self.subjects),
        }


def read_cache_index(cache_dir) -> CacheIndex:
    """Read and check ``cache_dir/mmcam_cache.json``.

    Raises:
        DataError: no index (not a cache, or an unfinished build), or another format or version.
    """
    root = Path(cache_dir)
    path = root / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{root}: not a complete mmcam cache (no {INDEX_FILE}); build one with "
                        "python -m mmcam.prepare SOURCE CACHE")
    record = _read_json(path, "the cache index")
    if record.get("format") != CACHE_FORMAT or record.get("version") != CACHE_VERSION:
        raise DataError(f"{path}: cache format {record.get('format')!r} version "
                        f"{record.get('version')!r}, expected {CACHE_FORMAT!r} version "
                        f"{CACHE_VERSION}; rebuild it with python -m mmcam.prepare --overwrite")
    try:
        return CacheIndex(root, record["dataset"], record["label_spec"],
                          tuple(record["modalities"]), record["image_dtype"],
                          bool(record["drop_empty_slices"]), tuple(record["subjects"]),
                          record["source_root"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed cache index ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class SubjectMeta:
    """The contents of ``subjects/<id>/meta.json``: geometry and provenance of one subject.

    Attributes:
        id: subject id.
        shape: ``(X, Y, Z)`` of the source volumes.
        slice_index: ``(S,)`` int64, the ``k`` (third voxel index) of each stored slice, increasing.
        slice_labels: region name -> ``(S,)`` int64, 1 where the stored slice's mask has a voxel of
            the region.
        affine: ``(4, 4)`` voxel->world matrix of the inputs (the label file's; all inputs agree).
        zooms: ``(3,)`` voxel spacing in mm.
        header_text: the label file's NIfTI header, see :meth:`header`.
        sources: modality name or ``"label"`` -> ``{"path", "channel", "size", "mtime_ns"}``.
        settings: the build options the subject was written with.
    """

    id: str
    shape: tuple[int, int, int]
    slice_index: np.ndarray
    slice_labels: dict
    affine: np.ndarray
    zooms: tuple[float, float, float]
    header_text: str
    sources: dict
    settings: dict

    def header(self):
        """The input's nibabel NIfTI header, to carry into outputs (see :func:`save_nifti`)."""
        return header_from_text(self.header_text)

    def to_json(self) -> dict:
        return {
            "id": self.id, "shape": list(self.shape), "slice_index": self.slice_index.tolist(),
            "slice_labels": {r: v.tolist() for r, v in self.slice_labels.items()},
            "affine": self.affine.tolist(), "zooms": list(self.zooms),
            "header": self.header_text, "sources": self.sources, "settings": self.settings,
        }

    @classmethod
    def from_json(cls, record: dict) -> "SubjectMeta":
        return cls(
            record["id"], tuple(int(v) for v in record["shape"]),
            np.asarray(record["slice_index"], dtype=np.int64),
            {r: np.asarray(v, dtype=np.int64) for r, v in record["slice_labels"].items()},
            np.asarray(record["affine"], dtype=np.float64),
            tuple(float(v) for v in record["zooms"]), record["header"], record["sources"],
            record["settings"],
        )

    def restack(self, planes: np.ndarray, slice_index: Optional[Sequence[int]] = None,
                fill=0) -> np.ndarray:
        """Put per-slice results back into a full volume of shape ``(X, Y, Z)``.

        Args:
            planes: ``(K, h, w)`` planes, e.g. predicted masks. Planes of another in-plane size than
                ``(X, Y)`` (a dataset's ``spatial_size``) are centre-cropped or zero-padded back by
                :func:`center_crop_or_pad`, which undoes the dataset's own crop/pad.
            slice_index: the ``k`` of each plane; by default :attr:`slice_index` (all stored slices,
                in cache order).
            fill: value of the slices not given (dropped empty slices).

        Returns:
            ``(X, Y, Z)`` array of ``planes``' dtype; ``volume[:, :, k] = plane``.
        """
        planes = np.asarray(planes)
        index = self.slice_index if slice_index is None else np.asarray(slice_index, dtype=np.int64)
        if planes.ndim != 3 or planes.shape[0] != len(index):
            raise DataError(f"subject {self.id}: restack needs (K, h, w) planes for {len(index)} "
                            f"slices, got shape {planes.shape}")
        if len(index) and (index.min() < 0 or index.max() >= self.shape[2]):
            raise DataError(f"subject {self.id}: slice index out of range [0, {self.shape[2]})")
        volume = np.full(self.shape, fill, dtype=planes.dtype)
        for k, plane in zip(index.tolist(), planes):
            volume[:, :, k] = center_crop_or_pad(plane, self.shape[:2])
        return volume


def read_subject_meta(cache_dir, subject_id: str) -> SubjectMeta:
    """Read ``subjects/<subject_id>/meta.json`` of a cache."""
    path = subject_dir(cache_dir, subject_id) / META_FILE
    record = _read_json(path, "subject metadata")
    try:
        return SubjectMeta.from_json(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed subject metadata ({type(exc).__name__}: {exc})") from exc


def read_split(cache_dir, part: str, fold: int = 0) -> tuple[str, ...]:
    """The subject ids of ``part`` (``"train"``, ``"val"`` or ``"test"``) of ``fold`` in ``splits.json``.

    Without k-fold the file holds one fold (0).
    """
    path = Path(cache_dir) / SPLITS_FILE
    if part not in SPLIT_PARTS:
        raise DataError(f"unknown split part {part!r}; choose one of {', '.join(SPLIT_PARTS)}")
    record = _read_json(path, "the patient splits")
    try:
        if part == "test":
            return tuple(record["test"])
        folds = record["folds"]
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(folds):
            raise DataError(f"{path}: fold {fold!r} out of range, the file has {len(folds)} fold(s)")
        return tuple(folds[fold][part])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed splits ({type(exc).__name__}: {exc})") from exc


def center_crop_or_pad(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Centre-crop or zero-pad the last two axes of ``array`` to ``size = (h, w)``.

    Along each axis of length ``n`` and target ``t`` the offset is ``|n - t| // 2`` (crop from, or pad
    before), so applying it with the original size undoes it wherever nothing was cropped away.
    Returns ``array`` itself when it already has that size.
    """
    h, w = (int(v) for v in size)
    n_h, n_w = array.shape[-2:]
    if (n_h, n_w) == (h, w):
        return array
    out = np.zeros(array.shape[:-2] + (h, w), dtype=array.dtype)
    src, dst = [], []
    for n, t in ((n_h, h), (n_w, w)):
        offset = abs(n - t) // 2
        length = min(n, t)
        if n >= t:
            src.append(slice(offset, offset + length))
            dst.append(slice(0, length))
        else:
            src.append(slice(0, length))
            dst.append(slice(offset, offset + length))
    out[..., dst[0], dst[1]] = array[..., src[0], src[1]]
    return out
