"""The in-plane geometry between a volume's slices and the stored (cropped / padded / resized) slices.

``python -m mmcam.prepare --size S`` stores every slice at ``S x S``. :class:`InPlaneGeometry` records how
and inverts it, so that predictions can be put back into the original grid.

Convention (voxel *edges*: voxel ``p`` of an axis covers ``[p, p + 1)``): the stored slice of size
``(H, W)`` shows the box ``[x0, x1) x [y0, y1)`` of the volume's ``(X, Y)`` plane. The box has integer
edges and may reach outside the plane: that part is zero padding. Stored pixel ``(i, j)`` has its centre
at volume index coordinates::

    x = x0 + (i + 0.5) * sx - 0.5,   y = y0 + (j + 0.5) * sy - 0.5,   sx = (x1 - x0) / H,  sy = (y1 - y0) / W

so ``sx = sy = 1`` is a pure crop/pad (stored pixel ``(i, j)`` is volume voxel ``(x0 + i, y0 + j)``) and
other scales are a resize of the box (pixel-centre aligned, ``align_corners=False``). Applying is
"crop/pad to the box, then resize the box to (H, W)"; inverting is "resize (H, W) back to the box, then
put the part of the box inside the plane back in place". Crop/pad is inverted exactly; a resize is
inverted up to interpolation (exactly for nearest-neighbour masks when one size is an integer multiple of
the other).

Two plans (:func:`plan_geometry`): ``fit="crop"`` (default) keeps the voxel size: per axis, a plane
smaller than ``S`` is zero-padded on both sides (``(S - n) // 2`` before), a larger one is cropped to a
window of ``S`` centred on the foreground's bounding box (start ``floor(centre - S / 2)``, so a plane
that is all foreground is cropped like :func:`~mmcam.data.cache.center_crop_or_pad`) and kept inside
the plane; ``fit="scale"`` pads
the plane to a centred square of side ``max(X, Y)`` and resizes it to ``S x S`` (voxel size times
``max(X, Y) / S``). Images are resized bilinearly (antialiased when shrinking), masks by nearest neighbour
(``nearest-exact``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mmcam.data.errors import DataError

__all__ = ["FITS", "InPlaneGeometry", "plan_geometry"]

FITS = ("crop", "scale")
_INTERPOLATIONS = ("linear", "nearest", "auto")


def _resize(planes: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize the last two axes of ``planes`` to ``size`` (pixel-centre aligned)."""
    if planes.shape[-2:] == tuple(size):
        return planes
    lead = planes.shape[:-2]
    tensor = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32)).reshape(-1, 1, *planes.shape[-2:])
    if interpolation == "nearest":
        out = F.interpolate(tensor, size=size, mode="nearest-exact")
    else:
        shrinking = size[0] < planes.shape[-2] or size[1] < planes.shape[-1]
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return out.reshape(*lead, *size).numpy().astype(planes.dtype, copy=False)


def _interpolation(planes: np.ndarray, interpolation: str) -> str:
    if interpolation not in _INTERPOLATIONS:
        raise DataError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    if interpolation == "auto":
        return "linear" if np.issubdtype(planes.dtype, np.floating) else "nearest"
    return interpolation


@dataclass(frozen=True)
class InPlaneGeometry:
    """Stored slices ``(H, W)`` = the box ``[x0, x1) x [y0, y1)`` of the ``(X, Y)`` plane (module doc).

    Attributes:
        shape: ``(X, Y)`` of the volume.
        box: ``(x0, y0, x1, y1)``, integer voxel edges, possibly outside ``[0, X] x [0, Y]``.
        size: ``(H, W)`` of the stored slices.
    """

    shape: tuple[int, int]
    box: tuple[int, int, int, int]
    size: tuple[int, int]

    @classmethod
    def identity(cls, shape: Sequence[int]) -> InPlaneGeometry:
        x, y = (int(v) for v in shape)
        return cls((x, y), (0, 0, x, y), (x, y))

    @property
    def is_identity(self) -> bool:
        return self.box == (0, 0) + self.shape and self.size == self.shape

    @property
    def box_shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return x1 - x0, y1 - y0

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: volume voxels per stored pixel along each axis."""
        lx, ly = self.box_shape
        return lx / self.size[0], ly / self.size[1]

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((before, after), (before, after))``: voxels of the box outside the plane, per axis."""
        x0, y0, x1, y1 = self.box
        return ((max(0, -x0), max(0, x1 - self.shape[0])), (max(0, -y0), max(0, y1 - self.shape[1])))

    def _overlap(self) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """Index slices of the box's part inside the plane: (in the plane, in the box array)."""
        plane, box = [], []
        for start, stop, n in ((self.box[0], self.box[2], self.shape[0]), (self.box[1], self.box[3], self.shape[1])):
            lo, hi = max(start, 0), min(stop, n)
            hi = max(hi, lo)
            plane.append(slice(lo, hi))
            box.append(slice(lo - start, hi - start))
        return (plane[0], plane[1]), (box[0], box[1])

    def voxels_outside(self, plane_mask: np.ndarray) -> int:
        """How many true voxels of a boolean ``(..., X, Y)`` array the box leaves out."""
        (px, py), _ = self._overlap()
        return int(np.count_nonzero(plane_mask)) - int(np.count_nonzero(plane_mask[..., px, py]))

    def apply(self, planes: np.ndarray, interpolation: str = "auto") -> np.ndarray:
        """``(..., X, Y)`` -> ``(..., H, W)``: crop/pad to the box (zero fill), then resize.

        ``interpolation``: ``"linear"`` (bilinear, images), ``"nearest"`` (masks) or ``"auto"`` (linear
        for floating dtypes, else nearest). Returns an array of ``planes``' dtype.
        """
        planes = np.asarray(planes)
        if planes.shape[-2:] != self.shape:
            raise DataError(f"geometry of a {self.shape} plane applied to shape {planes.shape}")
        if self.is_identity:
            return planes
        mode = _interpolation(planes, interpolation)
        boxed = np.zeros(planes.shape[:-2] + self.box_shape, dtype=planes.dtype)
        (px, py), (bx, by) = self._overlap()
        boxed[..., bx, by] = planes[..., px, py]
        return _resize(boxed, self.size, mode)

    def invert(self, planes: np.ndarray, interpolation: str = "auto", fill=0) -> np.ndarray:
        """``(..., H, W)`` -> ``(..., X, Y)``: resize back to the box, put its in-plane part in place.

        Voxels of the plane outside the box (cropped away) get ``fill``. ``interpolation`` as in
        :meth:`apply`; bool planes stay bool.
        """
        planes = np.asarray(planes)
        if planes.shape[-2:] != self.size:
            raise DataError(
                f"inverse geometry expects (..., {self.size[0]}, {self.size[1]}) planes, got shape {planes.shape}"
            )
        if self.is_identity:
            return planes
        mode = _interpolation(planes, interpolation)
        boxed = _resize(planes, self.box_shape, mode)
        out = np.full(planes.shape[:-2] + self.shape, fill, dtype=planes.dtype)
        (px, py), (bx, by) = self._overlap()
        out[..., px, py] = boxed[..., bx, by]
        return out

    def stored_affine(self, affine: np.ndarray) -> np.ndarray:
        """The voxel->world matrix of the stored grid ``(i, j, k)``, from the volume's ``affine``."""
        sx, sy = self.scale
        to_volume = np.array(
            [
                [sx, 0.0, 0.0, self.box[0] + 0.5 * sx - 0.5],
                [0.0, sy, 0.0, self.box[1] + 0.5 * sy - 0.5],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        return np.asarray(affine, dtype=np.float64) @ to_volume

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "box": list(self.box),
            "size": list(self.size),
            "scale": list(self.scale),
            "padding": [list(p) for p in self.padding],
        }

    @classmethod
    def from_json(cls, record: dict) -> InPlaneGeometry:
        shape, box, size = (tuple(int(v) for v in record[k]) for k in ("shape", "box", "size"))
        if len(shape) != 2 or len(box) != 4 or len(size) != 2 or min(size) < 1 or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"malformed in-plane geometry {record!r}")
        return cls(shape, box, size)


def _crop_start(n: int, size: int, occupied: np.ndarray | np.bool_) -> int:
    """Start of a window of ``size`` along an axis of ``n`` voxels (``occupied``: (n,) bool)."""
    if n <= size:
        return -((size - n) // 2)
    where = np.flatnonzero(occupied)
    centre = (where[0] + where[-1] + 1) / 2 if where.size else n / 2
    return int(min(max(int(np.floor(centre - size / 2)), 0), n - size))


def plan_geometry(
    shape: Sequence[int], size: int | None, fit: str = "crop", foreground: np.ndarray | None = None
) -> InPlaneGeometry:
    """The geometry storing ``(X, Y)`` planes at ``size x size`` (module doc); identity if ``size`` is
    ``None``.

    Args:
        shape: ``(X, Y)``.
        size: the stored side ``S``, or ``None``.
        fit: ``"crop"`` (crop/pad, voxel size kept) or ``"scale"`` (pad to a square, resize).
        foreground: ``(X, Y)`` bool, the voxels to centre a crop on (any slice, any modality, the mask);
            ``None``: the plane's centre.
    """
    x, y = (int(v) for v in shape)
    if size is None:
        return InPlaneGeometry.identity((x, y))
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"size must be a positive int, got {size!r}")
    if fit not in FITS:
        raise DataError(f"fit must be one of {FITS}, got {fit!r}")
    s = int(size)
    if fit == "scale":
        side = max(x, y)
        x0, y0 = -((side - x) // 2), -((side - y) // 2)
        return InPlaneGeometry((x, y), (x0, y0, x0 + side, y0 + side), (s, s))
    if foreground is None:
        foreground = np.ones((x, y), dtype=bool)
    x0 = _crop_start(x, s, foreground.any(axis=1))
    y0 = _crop_start(y, s, foreground.any(axis=0))
    return InPlaneGeometry((x, y), (x0, y0, x0 + s, y0 + s), (s, s))
