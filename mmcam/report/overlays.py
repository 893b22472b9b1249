"""Slice overlays as RGB arrays (numpy only): grey image, ground-truth contour, CAM heat map, pseudo-mask.

Every panel is drawn at the slice's own pixel grid and then enlarged by an integer factor with
nearest-neighbour repetition, so pixel ``(r, c)`` of the slice is the block
``[r*s:(r+1)*s, c*s:(c+1)*s]`` of the panel: what a panel shows can be checked pixel by pixel.

Conventions: arrays are ``(H, W)`` as stored in the slice cache (row = first voxel axis); RGB panels are
``(H*s, W*s, 3)`` uint8. The ground-truth contour is the inner 4-connected boundary of the mask, drawn
last in :data:`CONTOUR_RGB` (pure green, a colour no other layer produces: the grey image has R = G = B,
the pseudo-mask tint keeps G = B, and the heat-map colour map is chosen without pure green).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CONTOUR_RGB",
    "MASK_RGB",
    "MASK_ALPHA",
    "HEAT_ALPHA",
    "PANEL_KINDS",
    "mask_boundary",
    "grey_image",
    "draw_contour",
    "tint",
    "heat_overlay",
    "enlarge",
    "display_scale",
    "slice_dice",
    "slice_panels",
]

#: Colour of the ground-truth contour.
CONTOUR_RGB = (0, 255, 0)
#: Colour and opacity of the pseudo-mask fill.
MASK_RGB = (255, 0, 0)
MASK_ALPHA = 0.45
#: Opacity of the heat map over the grey image.
HEAT_ALPHA = 0.6
#: The panels of a slice, in display order.
PANEL_KINDS = ("image", "cam", "mask")


def _check_plane(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty (H, W) array, got shape {array.shape}")
    return array


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a binary mask: the mask pixels with at least one 4-neighbour outside the mask
    (pixels on the image border count as having an outside neighbour). ``(H, W)`` bool."""
    inside = _check_plane(mask, "mask").astype(bool)
    padded = np.pad(inside, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~interior


def grey_image(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """``(H, W)`` intensities -> ``(H, W, 3)`` uint8 grey, windowed between the ``low`` and ``high``
    percentiles of the slice (a constant slice is black)."""
    image = _check_plane(image, "image").astype(np.float64)
    finite = image[np.isfinite(image)]
    lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 0.0)
    scaled = np.zeros_like(image) if hi <= lo else np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    grey = np.round(np.nan_to_num(scaled) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def tint(rgb: np.ndarray, where: np.ndarray, colour=MASK_RGB, alpha: float = MASK_ALPHA) -> np.ndarray:
    """A copy of ``rgb`` with ``colour`` blended at opacity ``alpha`` over the pixels in ``where``."""
    out = rgb.astype(np.float64)
    where = _check_plane(where, "where").astype(bool)
    out[where] = (1 - alpha) * out[where] + alpha * np.asarray(colour, dtype=np.float64)
    return np.round(out).astype(np.uint8)


def heat_overlay(rgb: np.ndarray, values: np.ndarray, lut: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """``values`` in [0, 1] mapped through ``lut`` (``(K, 3)`` uint8 colour table, value ``v`` -> row
    ``round(v (K-1))``) and blended at opacity ``alpha`` over ``rgb`` everywhere."""
    values = np.clip(np.nan_to_num(_check_plane(values, "values").astype(np.float64)), 0.0, 1.0)
    lut = np.asarray(lut)
    if lut.ndim != 2 or lut.shape[1] != 3:
        raise ValueError(f"lut must be a (K, 3) colour table, got shape {lut.shape}")
    colours = lut[np.round(values * (len(lut) - 1)).astype(np.int64)].astype(np.float64)
    return np.round((1 - alpha) * rgb.astype(np.float64) + alpha * colours).astype(np.uint8)


def draw_contour(rgb: np.ndarray, mask: np.ndarray, colour=CONTOUR_RGB) -> np.ndarray:
    """A copy of ``rgb`` with the inner boundary of ``mask`` (:func:`mask_boundary`) in ``colour``."""
    out = rgb.copy()
    out[mask_boundary(mask)] = colour
    return out


def enlarge(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor`` (each pixel becomes a factor² block)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be an int >= 1, got {factor!r}")
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def display_scale(shape, target: int = 192) -> int:
    """The integer enlargement that brings the longer side of ``shape`` to at least ``target`` pixels."""
    return max(1, -(-int(target) // max(int(shape[0]), int(shape[1]))))


def slice_dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """2-D Dice of two binary masks (1 when both are empty)."""
    p, g = np.asarray(predicted, bool), np.asarray(truth, bool)
    denominator = int(p.sum()) + int(g.sum())
    return 1.0 if denominator == 0 else 2.0 * int((p & g).sum()) / denominator


def slice_panels(
    image: np.ndarray, truth: np.ndarray, values: np.ndarray, pseudo_mask: np.ndarray, lut: np.ndarray, scale: int
) -> dict[str, np.ndarray]:
    """The three panels of one slice, each with the ground-truth contour on top, enlarged ``scale`` times.

    Args:
        image: ``(H, W)`` intensities (background, shown in grey).
        truth: ``(H, W)`` ground-truth mask.
        values: ``(H, W)`` normalised map in [0, 1] (the heat map).
        pseudo_mask: ``(H, W)`` thresholded map (the red fill).
        lut: ``(K, 3)`` uint8 colour table of the heat map.
        scale: integer enlargement.

    Returns:
        ``{"image": grey + contour, "cam": heat map + contour, "mask": pseudo-mask + contour}``, each
        ``(H*scale, W*scale, 3)`` uint8.
    """
    grey = grey_image(image)
    layers = {"image": grey, "cam": heat_overlay(grey, values, lut), "mask": tint(grey, pseudo_mask)}
    return {kind: enlarge(draw_contour(layers[kind], truth), scale) for kind in PANEL_KINDS}
