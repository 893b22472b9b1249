"""Reading and writing NIfTI volumes with checks and errors that name the file.

Conventions:

- A *volume* is the voxel array as stored, shape ``(X, Y, Z)`` (voxel axes i, j, k), with its
  ``affine`` (4, 4) float64 voxel->world (mm) matrix and its nibabel header. Nothing is reoriented, so
  the affine and header of the input describe every output computed on the same grid.
- Images are returned as native-endian float32 with the header's scaling (``scl_slope``/``scl_inter``)
  applied, whatever the file's type or byte order (big-endian files exist). Non-finite voxels (NaN,
  inf) are an error by default; ``nonfinite="zero"`` sets them to 0 (background) instead and issues a
  :class:`~mmcam.data.errors.DataWarning` naming the file and the count. Never silently.
- Label masks are returned as native-endian int64; float-typed masks are accepted when every value is a
  whole number.
- A 4-D file ``(X, Y, Z, C)`` holds C co-registered images (MSD stores modalities this way): read one
  with ``channel=c``. Trailing axes of length 1 beyond the third are dropped.

Every problem (missing, unreadable or corrupt file, wrong number of axes, channel out of range,
non-finite intensities unless asked to zero them, non-integer labels) raises
:class:`~mmcam.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import base64
import gzip
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from mmcam.atomic_files import atomic_write
from mmcam.data.errors import DataError, DataWarning

__all__ = [
    "NONFINITE_POLICIES",
    "Volume",
    "load_image",
    "load_labels",
    "save_nifti",
    "header_to_text",
    "header_from_text",
]

# What nibabel, gzip and numpy raise for missing, truncated or corrupt files.
_READ_ERRORS = (OSError, EOFError, ValueError, ImageFileError, zlib.error, gzip.BadGzipFile, MemoryError)

#: What :func:`load_image` does with NaN / inf voxels: raise, or set them to 0 with a warning.
NONFINITE_POLICIES = ("error", "zero")

_HEADER_CLASSES = {"Nifti1Header": nib.Nifti1Header, "Nifti2Header": nib.Nifti2Header}


@dataclass(frozen=True)
class Volume:
    """A voxel array with its geometry.

    Attributes:
        data: ``(X, Y, Z)`` array (float32 for images, int64 for labels), native byte order.
        affine: ``(4, 4)`` float64 voxel->world matrix (the header's best affine: sform, else qform).
        header: the file's nibabel header (``Nifti1Header`` or ``Nifti2Header``).
        path: the file it was read from.
        nonfinite: how many NaN / inf voxels were set to 0 (``nonfinite="zero"``), else 0.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path
    nonfinite: int = 0

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel spacing (mm) along the three spatial axes."""
        x, y, z = self.header.get_zooms()[:3]
        return float(x), float(y), float(z)


def _open(path) -> nib.Nifti1Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        image = nib.load(path)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI file (nibabel read it as {type(image).__name__})")
    return image


def _spatial_shape(path: Path, shape: tuple[int, ...], channel: int | None) -> None:
    """Check that ``shape`` is 3-D (``channel is None``) or 4-D with ``channel`` in range."""
    while len(shape) > (3 if channel is None else 4) and shape[-1] == 1:
        shape = shape[:-1]
    if channel is None:
        if len(shape) != 3:
            extra = " (a 4-D file holds several images: pass a channel)" if len(shape) == 4 else ""
            raise DataError(f"{path}: expected a 3-D volume, got shape {shape}{extra}")
    else:
        if len(shape) != 4:
            raise DataError(
                f"{path}: expected a 4-D (X, Y, Z, C) file to read channel {channel} from, got shape {shape}"
            )
        if not 0 <= channel < shape[3]:
            raise DataError(f"{path}: channel {channel} out of range, the file has {shape[3]} channels (shape {shape})")
    if min(shape[:3]) < 1:
        raise DataError(f"{path}: empty volume, shape {shape}")


def _read(image, path: Path, channel: int | None) -> np.ndarray:
    """The scaled voxel values of one 3-D volume (of ``channel`` of a 4-D file), as stored."""
    try:
        proxy = image.dataobj
        if channel is None:
            data = np.asanyarray(proxy)
            data = data.reshape(data.shape[:3])
        else:
            index = (slice(None),) * 3 + (channel,) + (0,) * (len(image.shape) - 4)
            data = np.asanyarray(proxy[index])
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read the voxel data ({type(exc).__name__}: {exc})") from exc
    return data


def load_image(path, channel: int | None = None, nonfinite: str = "error") -> Volume:
    """Read an image volume as native float32 ``(X, Y, Z)``.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        channel: for a 4-D ``(X, Y, Z, C)`` file, which image to read; ``None`` for a 3-D file.
        nonfinite: ``"error"`` (default): NaN / inf voxels raise; ``"zero"``: they are set to 0 (the
            background) with a :class:`~mmcam.data.errors.DataWarning` naming the file.

    Raises:
        DataError: naming ``path`` if it cannot be read, has the wrong number of axes, ``channel`` is out
            of range or (``nonfinite="error"``) a value is not finite.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise DataError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    path = Path(path)
    image = _open(path)
    _spatial_shape(path, image.shape, channel)
    data = np.asarray(_read(image, path, channel), dtype=np.float32)  # native byte order
    finite = np.isfinite(data)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad:
        where = f"{path}" + ("" if channel is None else f" (channel {channel})")
        if nonfinite == "error":
            raise DataError(
                f"{where}: {bad} non-finite intensity values (NaN or inf); pass "
                "nonfinite='zero' (--nonfinite zero) to treat them as background"
            )
        warnings.warn(
            f"{where}: {bad} non-finite intensity values (NaN or inf) set to 0 (background)", DataWarning, stacklevel=2
        )
        data = np.where(finite, data, np.float32(0))
    return Volume(data, image.affine.astype(np.float64), image.header, path, bad)


def load_labels(path) -> Volume:
    """Read a label mask as native int64 ``(X, Y, Z)``.

    Raises:
        DataError: naming ``path`` if it cannot be read, is not 3-D, or holds a value that is not a whole
            number.
    """
    path = Path(path)
    image = _open(path)
    _spatial_shape(path, image.shape, None)
    data = _read(image, path, None)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.issubdtype(data.dtype, np.floating):
            raise DataError(f"{path}: label mask has unsupported type {data.dtype}")
        whole = np.isfinite(data) & (data == np.round(data))
        if not whole.all():
            examples = np.unique(data[~whole])[:5].tolist()
            raise DataError(f"{path}: label mask holds values that are not whole numbers, e.g. {examples}")
    return Volume(data.astype(np.int64), image.affine.astype(np.float64), image.header, path)


def header_to_text(header) -> str:
    """Serialise a NIfTI-1/2 header to ``"<class>:<base64 of its bytes>"`` (for JSON)."""
    name = type(header).__name__
    if name not in _HEADER_CLASSES:
        raise TypeError(f"header must be a Nifti1Header or Nifti2Header, got {name}")
    return f"{name}:{base64.b64encode(header.binaryblock).decode('ascii')}"


def header_from_text(text: str):
    """Rebuild the header serialised by :func:`header_to_text` (in the byte order it was stored)."""
    name, _, blob = text.partition(":")
    if name not in _HEADER_CLASSES:
        raise DataError(f"cannot rebuild a NIfTI header of class {name!r}")
    cls = _HEADER_CLASSES[name]
    return cls(binaryblock=base64.b64decode(blob), check=False)


def save_nifti(path, data: np.ndarray, affine: np.ndarray, header=None) -> Path:
    """Write ``data`` ``(X, Y, Z)`` (or ``(X, Y, Z, C)``) to ``path`` (``.nii``/``.nii.gz``) atomically.

    The output keeps ``header``'s fields (orientation codes, units, description, ...) with its data
    type, shape and scaling replaced by those of ``data`` (no scaling), in native byte order, and
    ``affine`` as both sform and qform. Written to a temporary name, then renamed: an interrupted or
    failed write leaves no file at ``path``.

    Args:
        path: destination; must end in ``.nii`` or ``.nii.gz``.
        data: any numeric array (bool is stored as uint8).
        affine: ``(4, 4)`` voxel->world matrix.
        header: a header to carry over (e.g. the input's, see :func:`header_from_text`), or ``None``.
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise DataError(f"{path}: a NIfTI output must end in .nii or .nii.gz")
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise DataError(f"{path}: affine must be a finite (4, 4) matrix, got shape {affine.shape}")
    if header is not None:
        header = header.copy()
        if header.endianness != nib.volumeutils.native_code:
            header = header.as_byteswapped(nib.volumeutils.native_code)
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    else:
        image_class = nib.Nifti1Image
    image = image_class(data, affine, header)
    image.header.set_data_dtype(data.dtype)  # nibabel would keep the carried header's type
    image.header.set_slope_inter(1.0, 0.0)
    image.set_qform(
        affine, code=int(header["qform_code"]) if header is not None and int(header["qform_code"]) > 0 else 1
    )
    image.set_sform(
        affine, code=int(header["sform_code"]) if header is not None and int(header["sform_code"]) > 0 else 1
    )
    return atomic_write(path, lambda tmp: nib.save(image, tmp))
