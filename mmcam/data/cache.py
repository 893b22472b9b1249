"""The on-disk slice cache: its layout, its JSON records, and reading them back.

A cache is a directory written by :func:`mmcam.data.build.build_cache` (``python -m mmcam.prepare``)::

    CACHE/
      mmcam_cache.json           the index: format version, dataset, label spec, modality names,
                                 image dtype, stored slice size, subject ids (and those without a
                                 mask); written last, so its presence marks a complete cache
      manifest.json              one record per subject: shape, spacing, affine, crop box, and the
                                 slice index and labels of every stored slice (:mod:`mmcam.data.manifest`)
      splits.json                seeded patient split(s): the test ids, one train/val pair per fold, and
                                 the unlabelled ids
      subjects/<id>/image.npy    (S, M, h, w) uint16 (default; or uint8, float16, float32): the S kept
                                 slices of the M modalities, intensity-normalised, slice-major so one
                                 slice is one contiguous block; only the subject's in-plane foreground
                                 box (h, w) of the (H, W) planes (:class:`Storage`)
      subjects/<id>/labels.npy   (S, h, w) uint8: the raw mask values of the same slices and box
                                 (checked against the label spec; regions are chosen when reading);
                                 absent for a subject without a mask
      subjects/<id>/meta.json    geometry, storage and provenance of the subject (:class:`SubjectMeta`)

Slicing convention: slice ``k`` of a volume ``v`` of shape ``(X, Y, Z)`` is ``v[:, :, k]`` -- the
third voxel axis, axial for BraTS and MSD prostate -- an image of height ``X`` and width ``Y``
(``image[h, w] = v[h, w, k]``); nothing is reoriented. Without ``--size`` the stored ``(H, W)`` is
``(X, Y)``; with it, each plane is cropped / padded / resized to ``S x S`` as recorded in
:attr:`SubjectMeta.geometry` (:class:`~mmcam.data.geometry.InPlaneGeometry`). When the cache was built
with empty-slice dropping, slices in which every modality is 0 everywhere (outside a skull-stripped
brain) and the mask is empty are not stored; ``SubjectMeta.slice_index`` gives the original ``k`` of each
stored slice. :meth:`SubjectMeta.uncrop` undoes the in-plane geometry and :meth:`SubjectMeta.restack`
puts per-slice results back into a full ``(X, Y, Z)`` volume on the input's grid.

Storage (version 3): every pixel of the ``(H, W)`` planes outside a subject's foreground box (the
union over its stored slices, modalities and mask of the non-zero pixels) is 0, so only the box is
written and readers (:class:`~mmcam.data.dataset.SliceDataset`, :func:`read_subject_arrays`) pad it
back with zeros: what they return is the same ``(H, W)`` planes, exactly, and everything downstream
(``spatial_size``, :meth:`SubjectMeta.restack`) is unchanged. Normalised intensities (``[0, 1]``) are
stored as uint16 by default: ``q`` means ``q / 65535`` (a step of 1.5e-5; 0 and 1 exact). A cache
of an older version is refused with a message to rebuild it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmcam.data.errors import DataError
from mmcam.data.geometry import InPlaneGeometry
from mmcam.data.nifti import header_from_text

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "INDEX_FILE",
    "SPLITS_FILE",
    "IMAGE_FILE",
    "LABELS_FILE",
    "META_FILE",
    "SPLIT_PARTS",
    "CacheIndex",
    "QUANTISED",
    "STORED_DTYPES",
    "Storage",
    "SubjectMeta",
    "foreground_box",
    "subject_dir",
    "read_subject_arrays",
    "read_cache_index",
    "read_subject_meta",
    "read_split",
    "center_crop_or_pad",
]

CACHE_FORMAT = "mmcam-slice-cache"
CACHE_VERSION = 3
INDEX_FILE = "mmcam_cache.json"
SPLITS_FILE = "splits.json"
IMAGE_FILE = "image.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
#: The parts of ``splits.json``: ``unlabeled`` holds the subjects without a mask (inference only).
SPLIT_PARTS = ("train", "val", "test", "unlabeled")


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
        unlabeled: the ids of ``subjects`` without a label mask (inference only).
        size: the stored in-plane size ``S`` (``--size``), or ``None`` (each subject's own ``(X, Y)``).
        options: every build option (:class:`~mmcam.data.build.BuildOptions` as a dict).
    """

    root: Path
    dataset: str
    label_spec: str
    modalities: tuple[str, ...]
    image_dtype: str
    drop_empty_slices: bool
    subjects: tuple[str, ...]
    source_root: str
    unlabeled: tuple[str, ...] = ()
    size: int | None = None
    options: dict | None = None

    def to_json(self) -> dict:
        from mmcam import __version__

        return {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "mmcam_version": __version__,
            "dataset": self.dataset,
            "label_spec": self.label_spec,
            "modalities": list(self.modalities),
            "image_dtype": self.image_dtype,
            "drop_empty_slices": self.drop_empty_slices,
            "source_root": self.source_root,
            "slicing": "image[h, w] = volume[h, w, k]: slices along the third voxel axis",
            "size": self.size,
            "options": self.options,
            "subjects": list(self.subjects),
            "unlabeled": list(self.unlabeled),
        }


def read_cache_index(cache_dir) -> CacheIndex:
    """Read and check ``cache_dir/mmcam_cache.json``.

    Raises:
        DataError: no index (not a cache, or an unfinished build), or another format or version.
    """
    root = Path(cache_dir)
    path = root / INDEX_FILE
    if not path.is_file():
        raise DataError(
            f"{root}: not a complete mmcam cache (no {INDEX_FILE}); build one with python -m mmcam.prepare SOURCE CACHE"
        )
    record = _read_json(path, "the cache index")
    if record.get("format") != CACHE_FORMAT or record.get("version") != CACHE_VERSION:
        raise DataError(
            f"{path}: cache format {record.get('format')!r} version "
            f"{record.get('version')!r}, expected {CACHE_FORMAT!r} version "
            f"{CACHE_VERSION}; rebuild it with python -m mmcam.prepare --overwrite"
        )
    try:
        return CacheIndex(
            root,
            record["dataset"],
            record["label_spec"],
            tuple(record["modalities"]),
            record["image_dtype"],
            bool(record["drop_empty_slices"]),
            tuple(record["subjects"]),
            record["source_root"],
            tuple(record["unlabeled"]),
            record["size"],
            record["options"],
        )
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed cache index ({type(exc).__name__}: {exc})") from exc


#: Quantised image dtypes: stored value ``q`` means intensity ``q / QUANTISED[dtype]`` (``[0, 1]``).
QUANTISED = {"uint16": 65535, "uint8": 255}
#: Float rounding tolerated outside ``[0, 1]`` before quantising (interpolated intensities).
_ROUNDING = 1e-5
#: Every stored image dtype (:attr:`Storage.dtype`).
STORED_DTYPES = ("uint16", "uint8", "float16", "float32")


def foreground_box(image: np.ndarray, labels: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """The tightest in-plane box ``(r0, c0, r1, c1)`` (half-open) outside which every plane is 0.

    Args:
        image: ``(S, M, H, W)`` stored-grid intensities.
        labels: ``(S, H, W)`` mask values, or ``None``.

    Returns:
        The union over slices, modalities and the mask of the non-zero pixels' bounding box;
        ``(0, 0, 0, 0)`` when everything is 0.
    """
    occupied = (image != 0).any(axis=(0, 1))
    if labels is not None:
        occupied |= (labels != 0).any(axis=0)
    rows, cols = np.flatnonzero(occupied.any(axis=1)), np.flatnonzero(occupied.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


@dataclass(frozen=True)
class Storage:
    """How one subject's planes are stored in ``image.npy`` / ``labels.npy`` (``meta.json["storage"]``).

    The planes of the stored grid are ``(H, W)`` (:attr:`InPlaneGeometry.size
    <mmcam.data.geometry.InPlaneGeometry.size>`); only the box ``[r0, r1) x [c0, c1)`` of them is
    written (every pixel outside it is 0 in every slice, modality and the mask), and padding with
    zeros on read restores the ``(H, W)`` planes exactly. Intensities are stored as :attr:`dtype`:
    ``float32`` / ``float16`` as they are, ``uint16`` / ``uint8`` quantised (value ``q`` means
    ``q / QUANTISED[dtype]``; only for intensities in ``[0, 1]``, i.e. normalised; 0 and 1 are exact).

    Attributes:
        dtype: one of :data:`STORED_DTYPES`.
        size: ``(H, W)`` of the full stored-grid planes.
        box: ``(r0, c0, r1, c1)``, half-open, inside ``[0, H] x [0, W]``.
    """

    dtype: str
    size: tuple[int, int]
    box: tuple[int, int, int, int]

    @classmethod
    def full(cls, dtype: str, size: Sequence[int]) -> Storage:
        """No crop: the whole ``size = (H, W)`` plane is stored."""
        h, w = (int(v) for v in size)
        return cls(dtype, (h, w), (0, 0, h, w))

    @property
    def crop_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the stored arrays' planes."""
        r0, c0, r1, c1 = self.box
        return r1 - r0, c1 - c0

    @property
    def scale(self) -> float:
        """Intensity per stored unit: ``1 / QUANTISED[dtype]`` for a quantised dtype, else 1."""
        return 1.0 / QUANTISED[self.dtype] if self.dtype in QUANTISED else 1.0

    def crop(self, planes: np.ndarray) -> np.ndarray:
        """``(..., H, W)`` -> ``(..., h, w)``: the box of ``planes`` (a contiguous copy)."""
        r0, c0, r1, c1 = self.box
        return np.ascontiguousarray(planes[..., r0:r1, c0:c1])

    def encode(self, image: np.ndarray, where: str = "image") -> np.ndarray:
        """``(..., H, W)`` float32 intensities -> the stored ``(..., h, w)`` array of :attr:`dtype`.

        Raises:
            DataError: naming ``where``, for intensities a quantised dtype cannot hold (outside
                ``[0, 1]``) or that overflow float16.
        """
        planes = self.crop(image)
        if self.dtype in QUANTISED:
            if planes.size and (planes.min() < -_ROUNDING or planes.max() > 1 + _ROUNDING):
                raise DataError(
                    f"{where}: intensities outside [0, 1] cannot be stored as {self.dtype}; "
                    "normalise them or choose float32 / float16"
                )
            return np.rint(np.clip(planes, 0, 1) * QUANTISED[self.dtype]).astype(self.dtype)
        with np.errstate(over="ignore"):
            stored = planes.astype(self.dtype)
        if not np.isfinite(stored).all():
            raise DataError(
                f"{where}: intensities overflow {self.dtype}; build with image_dtype='float32' or normalisation"
            )
        return stored

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Stored ``(..., h, w)`` intensities -> ``(..., H, W)`` float32, zero-padded outside the box."""
        out = np.zeros(stored.shape[:-2] + self.size, dtype=np.float32)
        r0, c0, r1, c1 = self.box
        if self.dtype in QUANTISED:
            np.divide(stored, np.float32(QUANTISED[self.dtype]), out=out[..., r0:r1, c0:c1])
        else:
            out[..., r0:r1, c0:c1] = stored
        return out

    def pad(self, planes: np.ndarray) -> np.ndarray:
        """Stored ``(..., h, w)`` planes (e.g. mask values) -> ``(..., H, W)``, zero outside the box."""
        if planes.shape[-2:] == self.size:
            return planes
        out = np.zeros(planes.shape[:-2] + self.size, dtype=planes.dtype)
        r0, c0, r1, c1 = self.box
        out[..., r0:r1, c0:c1] = planes
        return out

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "scale": self.scale, "size": list(self.size), "box": list(self.box)}

    @classmethod
    def from_json(cls, record: dict) -> Storage:
        dtype = record["dtype"]
        h, w = (int(v) for v in record["size"])
        r0, c0, r1, c1 = (int(v) for v in record["box"])
        if dtype not in STORED_DTYPES or not (0 <= r0 <= r1 <= h and 0 <= c0 <= c1 <= w):
            raise ValueError(f"malformed storage record {record!r}")
        return cls(dtype, (h, w), (r0, c0, r1, c1))


@dataclass(frozen=True)
class SubjectMeta:
    """The contents of ``subjects/<id>/meta.json``: geometry and provenance of one subject.

    Attributes:
        id: subject id.
        shape: ``(X, Y, Z)`` of the source volumes.
        slice_index: ``(S,)`` int64, the ``k`` (third voxel index) of each stored slice, increasing.
        slice_labels: region name -> ``(S,)`` int64, 1 where the stored slice's mask has a voxel of
            the region; empty for a subject without a mask.
        affine: ``(4, 4)`` voxel->world matrix of the inputs (all inputs agree).
        zooms: ``(3,)`` voxel spacing in mm.
        header_text: the NIfTI header of the label file (of the first image without one), see
            :meth:`header`.
        sources: modality name or ``"label"`` -> ``{"path", "channel", "size", "mtime_ns"}``.
        settings: the build options the subject was written with.
        labeled: whether the subject has a label mask (``labels.npy``).
        geometry: how the stored ``(H, W)`` planes relate to the ``(X, Y)`` plane.
        intensity: modality name -> ``{"lo", "hi", "foreground", "nonfinite"}``: the clipping bounds
            and foreground voxel count of the intensity normalisation (:mod:`mmcam.data.intensity`;
            only ``"nonfinite"`` when it was off) and how many NaN / inf voxels were set to 0.
        storage: how the ``(H, W)`` planes of :attr:`geometry` are stored on disk (dtype, the in-plane
            foreground box written); default: float32, whole planes.
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
    labeled: bool = True
    geometry: InPlaneGeometry | None = None
    intensity: dict | None = None
    storage: Storage | None = None

    def __post_init__(self):
        if self.geometry is None:
            object.__setattr__(self, "geometry", InPlaneGeometry.identity(self.shape[:2]))
        if self.storage is None:
            assert self.geometry is not None  # set above
            object.__setattr__(self, "storage", Storage.full("float32", self.geometry.size))

    @property
    def stored_affine(self) -> np.ndarray:
        """``(4, 4)`` voxel->world matrix of the stored grid: stored ``(i, j, k)`` -> mm."""
        assert self.geometry is not None  # set by __post_init__
        return self.geometry.stored_affine(self.affine)

    def header(self):
        """The input's nibabel NIfTI header, to carry into outputs (see :func:`save_nifti`)."""
        return header_from_text(self.header_text)

    def to_json(self) -> dict:
        assert self.geometry is not None and self.storage is not None  # set by __post_init__
        return {
            "id": self.id,
            "shape": list(self.shape),
            "slice_index": self.slice_index.tolist(),
            "slice_labels": {r: v.tolist() for r, v in self.slice_labels.items()},
            "affine": self.affine.tolist(),
            "zooms": list(self.zooms),
            "header": self.header_text,
            "sources": self.sources,
            "settings": self.settings,
            "labeled": self.labeled,
            "geometry": self.geometry.to_json(),
            "intensity": self.intensity or {},
            "storage": self.storage.to_json(),
        }

    @classmethod
    def from_json(cls, record: dict) -> SubjectMeta:
        x, y, z = (int(v) for v in record["shape"])
        zx, zy, zz = (float(v) for v in record["zooms"])
        return cls(
            record["id"],
            (x, y, z),
            np.asarray(record["slice_index"], dtype=np.int64),
            {r: np.asarray(v, dtype=np.int64) for r, v in record["slice_labels"].items()},
            np.asarray(record["affine"], dtype=np.float64),
            (zx, zy, zz),
            record["header"],
            record["sources"],
            record["settings"],
            bool(record["labeled"]),
            InPlaneGeometry.from_json(record["geometry"]),
            dict(record["intensity"]),
            Storage.from_json(record["storage"]),
        )

    def uncrop(self, planes: np.ndarray, interpolation: str = "auto", fill=0) -> np.ndarray:
        """Put ``(..., h, w)`` planes back on the volume's ``(X, Y)`` in-plane grid.

        Planes of another size than the stored ``(H, W)`` (a dataset's ``spatial_size``) are first
        centre-cropped or zero-padded back to it (:func:`center_crop_or_pad`, which undoes the
        dataset's own crop/pad); then the prepare-time crop / pad / resize is inverted
        (:meth:`~mmcam.data.geometry.InPlaneGeometry.invert`: exact for crop/pad; ``interpolation``
        ``"auto"`` = nearest for bool/integer planes, bilinear for floating ones). Voxels cropped away
        at prepare time get ``fill``.
        """
        planes = np.asarray(planes)
        if planes.ndim < 2:
            raise DataError(f"subject {self.id}: uncrop needs (..., h, w) planes, got shape {planes.shape}")
        assert self.geometry is not None  # set by __post_init__
        planes = center_crop_or_pad(planes, self.geometry.size)
        return self.geometry.invert(planes, interpolation, fill)

    def restack(
        self, planes: np.ndarray, slice_index: Sequence[int] | None = None, fill=0, interpolation: str = "auto"
    ) -> np.ndarray:
        """Put per-slice results back into a full volume of shape ``(X, Y, Z)`` on the input's grid.

        Args:
            planes: ``(K, h, w)`` planes, e.g. predicted masks, of the stored size or of a dataset's
                ``spatial_size``; :meth:`uncrop` maps them back to ``(X, Y)``.
            slice_index: the ``k`` of each plane; by default :attr:`slice_index` (all stored slices,
                in cache order).
            fill: value of the slices not given (dropped empty slices) and of cropped-away voxels.
            interpolation: see :meth:`uncrop`.

        Returns:
            ``(X, Y, Z)`` array of ``planes``' dtype; ``volume[:, :, k] = uncrop(plane)``. Save it with
            :attr:`affine` and :meth:`header` (:func:`~mmcam.data.nifti.save_nifti`).
        """
        planes = np.asarray(planes)
        index = self.slice_index if slice_index is None else np.asarray(slice_index, dtype=np.int64)
        if planes.ndim != 3 or planes.shape[0] != len(index):
            raise DataError(
                f"subject {self.id}: restack needs (K, h, w) planes for {len(index)} slices, got shape {planes.shape}"
            )
        if len(index) and (index.min() < 0 or index.max() >= self.shape[2]):
            raise DataError(f"subject {self.id}: slice index out of range [0, {self.shape[2]})")
        volume = np.full(self.shape, fill, dtype=planes.dtype)
        if len(index):
            volume[:, :, index] = np.moveaxis(self.uncrop(planes, interpolation, fill), 0, -1)
        return volume


def read_subject_meta(cache_dir, subject_id: str) -> SubjectMeta:
    """Read ``subjects/<subject_id>/meta.json`` of a cache."""
    path = subject_dir(cache_dir, subject_id) / META_FILE
    record = _read_json(path, "subject metadata")
    try:
        return SubjectMeta.from_json(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed subject metadata ({type(exc).__name__}: {exc})") from exc


def read_subject_arrays(cache_dir, meta: SubjectMeta) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole decoded arrays of one subject: what :class:`~mmcam.data.dataset.SliceDataset` reads.

    Returns:
        ``(image, labels)``: ``(S, M, H, W)`` float32 intensities and ``(S, H, W)`` uint8 raw mask values
        (``None`` without a mask), on the stored grid (:attr:`SubjectMeta.geometry` ``.size``): the
        stored box dequantised and zero-padded (:class:`Storage`).
    """
    assert meta.storage is not None  # set by __post_init__
    directory = subject_dir(cache_dir, meta.id)
    try:
        image = meta.storage.decode(np.load(directory / IMAGE_FILE))
        labels = meta.storage.pad(np.load(directory / LABELS_FILE)) if meta.labeled else None
    except (OSError, ValueError) as exc:
        raise DataError(f"{directory}: cannot read the cached arrays ({exc})") from exc
    return image, labels


def read_split(cache_dir, part: str, fold: int = 0) -> tuple[str, ...]:
    """The subject ids of ``part`` of ``fold`` in ``splits.json``.

    ``part``: ``"train"``, ``"val"``, ``"test"`` (labelled subjects) or ``"unlabeled"`` (subjects
    without a mask, inference only). Without k-fold the file holds one fold (0).
    """
    path = Path(cache_dir) / SPLITS_FILE
    if part not in SPLIT_PARTS:
        raise DataError(f"unknown split part {part!r}; choose one of {', '.join(SPLIT_PARTS)}")
    record = _read_json(path, "the patient splits")
    try:
        if part in ("test", "unlabeled"):
            return tuple(record[part])
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
