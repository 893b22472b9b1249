"""Synthetic multi-modal MRI phantoms, written in the real raw layouts (BraTS 2021, MSD prostate).

The data of the quick start, the ablation and the tests: deterministic for a seed, fast (numpy + a few
torch interpolations), and read through exactly the same path as real data
(:func:`~mmcam.data.discover.discover` -> :func:`~mmcam.data.build.build_cache` -> ``SliceDataset``)::

    python -m mmcam.data.synthetic --out DIR --subjects N --layout brats|prostate [--seed S]
                                   [--shape X Y Z]

``layout="brats"`` -- a skull-stripped brain (background exactly 0, so the end slices are empty) with
CSF, grey and white matter, ventricles with choroid plexus, and one glioma: edema (label 2) around a
core of fluid-filled necrosis (label 1) inside an enhancing rim (label 4); 20 % of subjects have a
non-enhancing core (no label 4, like low-grade gliomas). Four modalities with their clinical contrasts,
so each shows a different part of the tumour (base intensities):

==========  =====  =====  =====  =======  =====  =====  =====  =========  ==============================
modality    CSF    GM     WM     plexus   WMH    edema  rim    necrosis   what the tumour looks like
==========  =====  =====  =====  =======  =====  =====  =====  =========  ==============================
t1          0.25   0.55   0.80   0.45     0.70   0.45   0.55   0.25       dark core, edema ~ GM (faint)
t1ce        0.25   0.55   0.80   1.15     0.70   0.45   1.30   0.25       enhancing rim only
t2          1.00   0.62   0.42   0.70     0.75   0.88   0.70   1.00       whole tumour, as bright as CSF
flair       0.15   0.55   0.45   0.30     0.85   0.92   0.78   0.30       edema bright, core dark
==========  =====  =====  =====  =======  =====  =====  =====  =========  ==============================

What makes it hard (a classification-only CAM, or a threshold on one modality, does not give the mask):

- no modality shows the whole tumour alone: FLAIR misses the fluid core, T1ce shows only the rim, T2
  shows the tumour together with CSF, T1 shows little but the core;
- look-alikes that are not tumour (label 0): white-matter hyperintensities (0-5 small blobs, bright in
  FLAIR and T2 like edema) and the choroid plexus (enhancing in T1ce like the rim);
- per subject and modality, the tumour's contrast to normal tissue is scaled by a factor in [0.45, 1],
  so in some subjects and modalities it overlaps grey matter;
- tumours of very different sizes (semi-axes log-uniform in 12-34 mm; the smallest cover a handful of
  slices with a few voxels each), irregular shapes (perturbed ellipsoids) and random positions;
- a smooth multiplicative bias field (intensity inhomogeneity, about +-20 %), tissue heterogeneity,
  partial-volume blur and Rician noise, and a random intensity scale per subject and modality.

On the default phantoms the best global intensity threshold of FLAIR reaches a whole-tumour Dice of
about 0.75 on average (0.6 to 0.93 per subject), that of every other modality below 0.4, and about 30 %
of the brain slices contain tumour (``tests/data/test_synthetic.py`` checks both).

``tumour="split"`` (brats only; ``--tumour split``) -- the same brain, but a glioma of two touching lobes
of similar size, each shown by one of T1ce and FLAIR and hidden by the other: an edema lobe (label 2),
bright in FLAIR and T2 and absent from T1ce (the tissue it replaced shows there), and a solid enhancing
lobe (label 4), bright in T1ce and absent from FLAIR. No core, no necrosis; some slices cut only one lobe.
Neither modality alone finds the whole target, the pair does: the best single threshold reaches a
whole-tumour Dice of about 0.63 on T1ce and 0.45 on FLAIR, a threshold on each combined by "or" about
0.82 (subjects 0-5; on the nested phantoms FLAIR alone reaches 0.82 and the pair adds nothing). It is
the family on which cross-modal information has something to add (docs/data.md).

Default shape ``(96, 96, 40)`` voxels of ``2.5 x 2.5 x 3.875`` mm: the 240 x 240 x 155 mm field of
view of BraTS at 40 % of its resolution. Images are int16 like BraTS, masks uint8 with the BraTS
2018-2022 labels {0, 1, 2, 4}; the affine flips x and y (RAS+ with the LPS storage of BraTS).

``layout="prostate"`` -- a pelvis (fat, muscle, rectum, bladder in the upper slices) and a prostate
gland of peripheral (label 1) and transition (label 2) zones, half the subjects with a small PZ lesion
(inside the gland label). Two modalities as MSD Task05 stores them, one 4-D int16 file ``(X, Y, Z, 2)``:
T2 (channel 0: PZ bright, TZ darker and nodular, dark capsule, fat bright; strong bias field as from
an endorectal / surface coil) and ADC (channel 1: fat dark, gland bright, lesion dark, blurrier and
noisier). The gland borders muscle and rectal wall of similar intensity, so neither modality separates
it by intensity. Default shape ``(96, 96, 24)`` voxels of ``1.25 x 1.25 x 3.6`` mm (a 120 x 120 x
86.4 mm field of view, anisotropic like MSD); an oblique affine (axial-oblique acquisition: tilted by up
to 12 degrees about x and 5 about z) like the scanner's.

Another ``shape`` keeps the field of view (:data:`FIELDS_OF_VIEW`), so only the resolution changes.
Subject ``i`` of seed ``s`` depends only on ``(s, i)``, not on the number of subjects.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmcam.atomic_files import atomic_write_json, replace_directory, temporary_sibling
from mmcam.data.errors import DataError
from mmcam.data.nifti import save_nifti
from mmcam.progress import progress_bar

__all__ = [
    "LAYOUTS",
    "TUMOURS",
    "DEFAULT_SHAPES",
    "FIELDS_OF_VIEW",
    "spacing",
    "SyntheticSubject",
    "make_subject",
    "generate_synthetic",
    "prepare_synthetic",
    "main",
]

LAYOUTS = ("brats", "prostate")
#: The gliomas of the brats phantoms: ``nested`` (the default) and ``split`` (module docstring).
TUMOURS = ("nested", "split")
#: Default volume shape (X, Y, Z) of each layout.
DEFAULT_SHAPES = {"brats": (96, 96, 40), "prostate": (96, 96, 24)}
#: Field of view (mm) of each layout; the voxel spacing is field of view / shape, so a phantom looks the
#: same at any resolution.
FIELDS_OF_VIEW = {"brats": (240.0, 240.0, 155.0), "prostate": (120.0, 120.0, 86.4)}
MARKER_FILE = "mmcam_synthetic.json"


def spacing(layout: str, shape) -> tuple[float, float, float]:
    """Voxel spacing (mm) of a ``layout`` phantom of ``shape``: :data:`FIELDS_OF_VIEW` / shape."""
    return tuple(f / n for f, n in zip(FIELDS_OF_VIEW[layout], shape))


_BRAIN_MODALITIES = ("t1", "t1ce", "t2", "flair")
# tissue -> intensity per modality (_BRAIN_MODALITIES), the table of the module docstring
_BRAIN_TISSUES = {
    "csf": (0.25, 0.25, 1.00, 0.15),
    "gm": (0.55, 0.55, 0.62, 0.55),
    "wm": (0.80, 0.80, 0.42, 0.45),
    "plexus": (0.45, 1.15, 0.70, 0.30),
    "wmh": (0.70, 0.70, 0.75, 0.85),
    "edema": (0.45, 0.45, 0.88, 0.92),
    "rim": (0.55, 1.30, 0.70, 0.78),
    "necrosis": (0.25, 0.25, 1.00, 0.30),
}
_TUMOUR_TISSUES = ("edema", "rim", "necrosis")
# tissue -> (T2, ADC)
_PELVIS_TISSUES = {
    "air": (0.0, 0.0),
    "fat": (0.85, 0.08),
    "muscle": (0.30, 0.50),
    "rectal_wall": (0.35, 0.45),
    "rectal_lumen": (0.05, 0.05),
    "bladder": (1.00, 1.00),
    "capsule": (0.15, 0.45),
    "pz": (0.75, 0.72),
    "tz": (0.45, 0.55),
    "lesion": (0.28, 0.22),
}


@dataclass(frozen=True)
class SyntheticSubject:
    """One phantom.

    Attributes:
        images: ``(M, X, Y, Z)`` float32 intensities, already scaled and int16-valued.
        labels: ``(X, Y, Z)`` uint8 mask with the values of the layout's label spec.
        affine: ``(4, 4)`` voxel->world matrix (mm).
        modalities: the M modality names.
        confounders: name -> ``(X, Y, Z)`` bool mask of a non-target look-alike, for analysis
            (brats: ``"wmh"`` white-matter hyperintensities, ``"plexus"`` choroid plexus; prostate:
            none).
    """

    images: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    modalities: tuple[str, ...]
    confounders: dict | None = None


# ----------------------------------------------------------------------------------------- fields
def _smooth_noise(rng: np.random.Generator, shape, cells) -> np.ndarray:
    """A smooth random field of ``shape``, unit-variance noise on a ``cells`` grid, trilinearly
    interpolated."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, *cells)).astype(np.float32))
    fine = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
    return fine[0, 0].numpy()


def _blur(volume: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Separable Gaussian blur of ``(X, Y, Z)`` with per-axis ``sigma`` in voxels, edges replicated."""
    out = np.asarray(volume, dtype=np.float32)
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        radius = max(1, int(3 * s + 0.5))
        taps = np.arange(-radius, radius + 1, dtype=np.float32)
        weights = np.exp(-0.5 * (taps / s) ** 2)
        weights /= weights.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(t, t + n), axis=axis) for t, w in enumerate(weights))
    return out.astype(np.float32, copy=False)


def _grid(shape, spacing, centre_mm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (mm) of every voxel relative to ``centre_mm``, each ``(X, Y, Z)``."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s - c for n, s, c in zip(shape, spacing, centre_mm)]
    return np.meshgrid(*axes, indexing="ij")


def _ellipsoid_radius(coords, semi_axes) -> np.ndarray:
    """Normalised ellipsoidal radius: < 1 inside the ellipsoid of ``semi_axes`` (mm)."""
    return np.sqrt(sum((c / a) ** 2 for c, a in zip(coords, semi_axes)))


def _rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of standard deviation ``sigma``."""
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def _compose(tissue_masks: dict, table: dict, modality: int, shape) -> np.ndarray:
    """The piecewise-constant image of one modality (later masks overwrite earlier ones)."""
    image = np.zeros(shape, dtype=np.float32)
    for tissue, mask in tissue_masks.items():
        image[mask] = table[tissue][modality]
    return image


def _affine(shape, spacing, flips=(1.0, 1.0, 1.0), rotation=None) -> np.ndarray:
    """Voxel->world matrix: ``rotation @ diag(flips * spacing)`` (rotation: identity when ``None``), the volume
    centre at the origin."""
    linear = np.asarray(np.eye(3) if rotation is None else rotation, dtype=np.float64) @ np.diag(
        np.multiply(flips, spacing)
    )
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape, dtype=np.float64) - 1) / 2)
    return affine


def _rotation(rng: np.random.Generator, max_x_deg: float, max_z_deg: float) -> np.ndarray:
    """A rotation about x then z by random angles within the given bounds (degrees)."""
    a, b = np.radians(rng.uniform(-max_x_deg, max_x_deg)), np.radians(rng.uniform(-max_z_deg, max_z_deg))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def _to_int16(image: np.ndarray, scale: float) -> np.ndarray:
    """``image * scale`` rounded and clipped to the int16 range (kept as float32 values)."""
    return np.clip(np.round(image * scale), 0, np.iinfo(np.int16).max).astype(np.float32)


# ------------------------------------------------------------------------------------ phantoms
def _blobs(
    rng: np.random.Generator, coords, allowed: np.ndarray, count: int, radius_mm: tuple[float, float]
) -> np.ndarray:
    """Union of ``count`` small random ellipsoids centred on voxels of ``allowed``."""
    x, y, z = coords
    out = np.zeros(allowed.shape, dtype=bool)
    where = np.argwhere(allowed)
    for _ in range(count if len(where) else 0):
        at = tuple(where[rng.integers(len(where))])
        r = _ellipsoid_radius((x - x[at], y - y[at], z - z[at]), rng.uniform(*radius_mm, 3))
        out |= r < 1
    return out & allowed


def _lobe(rng: np.random.Generator, coords, brain: np.ndarray, centre, size) -> tuple[np.ndarray, np.ndarray]:
    """An irregular lobe: a perturbed ellipsoid of semi-axes ``size`` (mm) at ``centre`` (mm), inside
    ``brain``, and the ellipsoidal radius ``d`` of every voxel (``(X, Y, Z)`` each); never empty (a lobe
    too small for the grid keeps its central voxel)."""
    x, y, z = coords
    d = _ellipsoid_radius((x - centre[0], y - centre[1], z - centre[2]), size)
    lobe = (d + 0.3 * _smooth_noise(rng, brain.shape, (14, 14, 10)) < 1.0) & brain
    if not lobe.any():
        lobe[np.unravel_index(np.argmin(d + ~brain * 1e3), brain.shape)] = True
    return lobe, d


def _nested_glioma(rng: np.random.Generator, coords, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The default glioma: edema (2) around a core (4, or 1 when non-enhancing) with necrosis (1) inside.

    Returns the ``(X, Y, Z)`` uint8 labels and the ellipsoidal radius of the tumour (< 1 inside)."""
    centre = rng.uniform(-1, 1, 3) * np.array([30.0, 38.0, 22.0])
    size = np.exp(rng.uniform(np.log(12), np.log(34))) * rng.uniform(0.8, 1.2, 3)
    whole, d = _lobe(rng, coords, brain, centre, size)
    d_core = d + 0.1 * _smooth_noise(rng, brain.shape, (10, 10, 8))
    core_radius = rng.uniform(0.35, 0.7)
    core = whole & (d_core < core_radius)
    necrosis = core & (d_core < core_radius * rng.uniform(0.4, 0.7))
    enhancing = rng.uniform() >= 0.2
    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[whole] = 2
    labels[core] = 4 if enhancing else 1
    labels[necrosis] = 1
    return labels, d


def _split_glioma(rng: np.random.Generator, coords, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two touching lobes of similar size: edema (2) and a solid enhancing lobe (4). A scale log-uniform
    in 10-24 mm, each lobe's semi-axes that scale times 0.75-1 times 0.8-1.2 per axis; their centres
    ``0.8 x`` the sum of their mean semi-axes apart along a random direction (so they touch and overlap a
    little; the enhancing lobe wins the overlap, and some slices cut only one lobe).

    Returns the ``(X, Y, Z)`` uint8 labels and the smaller of the two lobes' ellipsoidal radii."""
    centre = rng.uniform(-1, 1, 3) * np.array([24.0, 30.0, 16.0])
    scale = np.exp(rng.uniform(np.log(10), np.log(24)))
    sizes = [scale * rng.uniform(0.75, 1.0) * rng.uniform(0.8, 1.2, 3) for _ in range(2)]
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    half_offset = 0.4 * (sizes[0].mean() + sizes[1].mean()) * direction
    edema, d_edema = _lobe(rng, coords, brain, centre - half_offset, sizes[0])
    enhancing, d_enhancing = _lobe(rng, coords, brain, centre + half_offset, sizes[1])
    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[edema] = 2
    labels[enhancing] = 4
    return labels, np.minimum(d_edema, d_enhancing)


#: ``tumour="split"``: the lobe each modality does not show (it keeps the tissue it replaced there).
_SPLIT_HIDDEN = {"t1ce": "edema", "flair": "rim"}


def _brain(rng: np.random.Generator, shape, tumour: str = "nested") -> SyntheticSubject:
    voxel = spacing("brats", shape)
    x, y, z = _grid(shape, voxel, rng.uniform(-4, 4, 3))
    r = _ellipsoid_radius((x, y, z), (rng.uniform(62, 72), rng.uniform(76, 88), rng.uniform(58, 66)))
    brain = r + 0.04 * _smooth_noise(rng, shape, (6, 6, 4)) < 1.0
    folds = 0.06 * _smooth_noise(rng, shape, (12, 12, 8))
    ventricles = np.zeros(shape, dtype=bool)
    plexus = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        ventricles |= _ellipsoid_radius((x - side * 11, y + 4, z - 6), (6, 22, 12)) < 1
        plexus |= _ellipsoid_radius((x - side * 11, y - 12, z - 6), (3.5, 6, 4)) < 1
    white = brain & (r + folds < 0.80)

    if tumour == "nested":
        labels, d = _nested_glioma(rng, (x, y, z), brain)
    else:
        labels, d = _split_glioma(rng, (x, y, z), brain)

    # look-alikes that are not tumour: white-matter hyperintensities away from the tumour
    wmh = _blobs(rng, (x, y, z), white & (d > 1.6) & ~ventricles, int(rng.integers(0, 6)), (2.5, 6.0))
    tissues = {
        "gm": brain,
        "wm": white,
        "csf": brain & ((r + folds > 0.94) | ventricles),
        "plexus": brain & plexus & ventricles & (labels == 0),
        "wmh": wmh,
        "edema": labels == 2,
        "rim": labels == 4,
        "necrosis": labels == 1,
    }
    heterogeneity = 1.0 + 0.08 * _smooth_noise(rng, shape, (16, 16, 10))
    images = []
    for m in range(4):
        table: dict[str, tuple[float, ...]] = dict(_BRAIN_TISSUES)
        normal = (table["gm"][m] + table["wm"][m]) / 2
        contrast = rng.uniform(0.45, 1.0)  # this subject's tumour contrast in this modality
        for tissue in _TUMOUR_TISSUES:
            values = list(table[tissue])
            values[m] = normal + contrast * (values[m] - normal)
            table[tissue] = tuple(values)
        hidden = _SPLIT_HIDDEN.get(_BRAIN_MODALITIES[m]) if tumour == "split" else None
        shown = {tissue: mask for tissue, mask in tissues.items() if tissue != hidden}
        image = _compose(shown, table, m, shape) * heterogeneity
        image = _blur(image, (0.6, 0.6, 0.4))
        image *= np.exp(0.2 * _smooth_noise(rng, shape, (3, 3, 2)))  # bias field
        image = _rician(rng, image, 0.025) * brain  # skull-stripped
        images.append(_to_int16(image, rng.uniform(400, 1200)))
    return SyntheticSubject(
        np.stack(images),
        labels,
        _affine(shape, voxel, flips=(-1.0, -1.0, 1.0)),
        _BRAIN_MODALITIES,
        {"wmh": wmh, "plexus": tissues["plexus"]},
    )


def _pelvis(rng: np.random.Generator, shape) -> SyntheticSubject:
    voxel = spacing("prostate", shape)
    x, y, z = _grid(shape, voxel, (0.0, 0.0, 0.0))

    def plane_r(cx, cy, ax, ay):  # elliptic-cylinder radius (the same ellipse on every slice)
        return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)

    body = plane_r(0, 0, 56, 48) + 0.03 * _smooth_noise(rng, shape, (5, 5, 3)) < 1
    pelvic_fat = plane_r(0, 0, 40, 33) < 1
    rectum_y = rng.uniform(20, 25)
    rectum = plane_r(0, rectum_y, 10, 8)

    gland_centre = np.array([rng.uniform(-3, 3), rng.uniform(-4, 0), rng.uniform(-8, 8)])
    gland_axes = np.array([rng.uniform(19, 24), rng.uniform(14, 18), rng.uniform(17, 23)])
    g = _ellipsoid_radius(
        (x - gland_centre[0], y - gland_centre[1], z - gland_centre[2]), gland_axes
    ) + 0.06 * _smooth_noise(rng, shape, (8, 8, 5))
    gland = g < 1
    # transition zone: anterior-central, larger towards the base (superior slices)
    base = np.clip((z - gland_centre[2]) / gland_axes[2], -1, 1)
    tz_scale = rng.uniform(0.55, 0.7) * (1.0 + 0.25 * base)
    tz = gland & (
        _ellipsoid_radius(
            (x - gland_centre[0], y - gland_centre[1] + 4, z - gland_centre[2]), [a * tz_scale for a in gland_axes]
        )
        < 1
    )
    labels = np.zeros(shape, dtype=np.uint8)
    labels[gland] = 1
    labels[tz] = 2
    bladder = (
        _ellipsoid_radius(
            (x - gland_centre[0], y - gland_centre[1] + 6, z - gland_centre[2] - gland_axes[2] - 20), (24, 20, 22)
        )
        < 1
    )
    lesion = np.zeros(shape, dtype=bool)
    if rng.uniform() < 0.5:
        pz = np.argwhere(labels == 1)
        if len(pz):
            at = tuple(pz[rng.integers(len(pz))])
            r = _ellipsoid_radius((x - x[at], y - y[at], z - z[at]), rng.uniform(4, 7, 3))
            lesion = (r < 1) & (labels == 1)

    tissues = {
        "air": ~body,
        "muscle": body,
        "fat": body & (pelvic_fat | (plane_r(0, 0, 56, 48) > 0.86)),
        "rectal_wall": rectum < 1,
        "rectal_lumen": rectum < 0.55,
        "bladder": bladder & ~gland,
        "capsule": (g < 1.12) & ~gland,
        "pz": labels == 1,
        "tz": labels == 2,
        "lesion": lesion,
    }
    nodules = 1.0 + 0.18 * _smooth_noise(rng, shape, (20, 20, 8)) * (labels == 2)
    t2 = _compose(tissues, _PELVIS_TISSUES, 0, shape) * nodules
    t2 = _blur(t2, (0.5, 0.5, 0.3)) * np.exp(0.3 * _smooth_noise(rng, shape, (3, 3, 2)))
    t2 = _to_int16(_rician(rng, t2, 0.02), rng.uniform(300, 900))
    adc = _blur(_compose(tissues, _PELVIS_TISSUES, 1, shape), (1.5, 1.5, 0.4))
    adc = _to_int16(_rician(rng, adc, 0.05), rng.uniform(1500, 2500))
    return SyntheticSubject(
        np.stack([t2, adc]), labels, _affine(shape, voxel, rotation=_rotation(rng, 12.0, 5.0)), ("t2", "adc"), {}
    )


def _check_layout_shape(layout: str, shape) -> tuple[int, int, int]:
    if layout not in LAYOUTS:
        raise DataError(f"unknown synthetic layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    shape = DEFAULT_SHAPES[layout] if shape is None else tuple(shape)
    if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 8 for v in shape):
        raise DataError(f"shape must be three ints >= 8 (X, Y, Z), got {shape!r}")
    x, y, z = shape
    return int(x), int(y), int(z)


def _check_tumour(layout: str, tumour: str) -> str:
    if tumour not in TUMOURS:
        raise DataError(f"unknown tumour {tumour!r}; choose one of {', '.join(TUMOURS)}")
    if tumour != "nested" and layout != "brats":
        raise DataError(f"tumour={tumour!r} is a brats phantom; the {layout} layout has none")
    return tumour


def make_subject(layout: str, seed: int, index: int, shape=None, tumour: str = "nested") -> SyntheticSubject:
    """Phantom ``index`` of ``seed`` (depends on nothing else), see the module docstring; ``tumour``
    (brats only): ``"nested"`` or ``"split"``."""
    shape = _check_layout_shape(layout, shape)
    tumour = _check_tumour(layout, tumour)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    return _brain(rng, shape, tumour) if layout == "brats" else _pelvis(rng, shape)


# ------------------------------------------------------------------------------------- writing
def _write_brats_subject(root: Path, subject_id: str, subject: SyntheticSubject) -> None:
    """BraTS 2021 layout: ``root/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``."""
    final = root / subject_id
    tmp = temporary_sibling(final)
    tmp.mkdir()
    try:
        for name, image in zip(subject.modalities, subject.images):
            save_nifti(tmp / f"{subject_id}_{name}.nii.gz", image.astype(np.int16), subject.affine)
        save_nifti(tmp / f"{subject_id}_seg.nii.gz", subject.labels, subject.affine)
        replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_msd_subject(root: Path, subject_id: str, subject: SyntheticSubject) -> None:
    """MSD layout: ``imagesTr/<id>.nii.gz`` (X, Y, Z, 2) int16 and ``labelsTr/<id>.nii.gz``."""
    image = np.moveaxis(subject.images, 0, -1).astype(np.int16)  # (X, Y, Z, M)
    save_nifti(root / "imagesTr" / f"{subject_id}.nii.gz", image, subject.affine)
    save_nifti(root / "labelsTr" / f"{subject_id}.nii.gz", subject.labels, subject.affine)


def _msd_dataset_json(ids: Sequence[str]) -> dict:
    return {
        "name": "mmcam synthetic prostate",
        "description": "synthetic phantoms, MSD Task05 layout",
        "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": len(ids),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids],
        "test": [],
    }


def generate_synthetic(
    root,
    layout: str = "brats",
    n_subjects: int = 20,
    seed: int = 0,
    shape=None,
    progress: bool = False,
    tumour: str = "nested",
) -> Path:
    """Write ``n_subjects`` phantoms to ``root`` in the raw ``layout`` and return ``root``.

    ``brats``: BraTS 2021 layout, ids ``synth_00000``...; ``prostate``: MSD Task05 layout with
    ``dataset.json``, ids ``prostate_00000``.... ``tumour`` (brats only): ``"nested"`` or ``"split"``
    (module docstring). ``root`` must be new or empty; a ``root`` already
    generated with the same arguments is returned as it is (the marker file ``mmcam_synthetic.json``
    is written last and records them).
    """
    shape = _check_layout_shape(layout, shape)
    tumour = _check_tumour(layout, tumour)
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, int) or n_subjects < 1:
        raise DataError(f"n_subjects must be an int >= 1, got {n_subjects!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    root = Path(root)
    params: dict = {"layout": layout, "n_subjects": n_subjects, "seed": seed, "shape": list(shape)}
    if tumour != "nested":  # markers of the default phantoms stay as earlier versions wrote them
        params["tumour"] = tumour
    marker = root / MARKER_FILE
    if marker.is_file():
        if json.loads(marker.read_text()) == params:
            return root
        raise DataError(
            f"{root}: holds synthetic data generated with other parameters "
            f"({marker.read_text().strip()}); choose a new directory"
        )
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root}: not empty; choose a new directory for the synthetic data")
    prefix = "synth" if layout == "brats" else "prostate"
    ids = [f"{prefix}_{i:05d}" for i in range(n_subjects)]
    if layout == "prostate":
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    write = _write_brats_subject if layout == "brats" else _write_msd_subject
    with progress_bar(n_subjects, enabled=progress, description=f"synthetic {layout}", unit="subject") as bar:
        for i in range(n_subjects):
            write(root, ids[i], make_subject(layout, seed, i, shape, tumour))
            bar.update()
    if layout == "prostate":
        atomic_write_json(root / "dataset.json", _msd_dataset_json(ids))
    atomic_write_json(marker, params)
    return root


def prepare_synthetic(
    workdir,
    layout: str = "brats",
    n_subjects: int = 20,
    seed: int = 0,
    shape=None,
    workers: int = 1,
    progress: bool = False,
    options=None,
) -> Path:
    """Generate phantoms into ``workdir/raw`` and build their cache with splits into
    ``workdir/cache`` (default split: seed ``seed``, fractions 0.7, 0.1, 0.2; ``options``: a
    :class:`~mmcam.data.build.BuildOptions`); return the cache directory. Reuses both when already
    complete with the same arguments.
    """
    from mmcam.data.build import BuildOptions, build_cache, write_splits
    from mmcam.data.cache import INDEX_FILE, SPLITS_FILE
    from mmcam.data.discover import discover

    workdir = Path(workdir)
    raw = generate_synthetic(workdir / "raw", layout, n_subjects, seed, shape, progress)
    cache_dir = workdir / "cache"
    if not (cache_dir / INDEX_FILE).is_file():
        build_cache(discover(raw), cache_dir, options=options or BuildOptions(), workers=workers, progress=progress)
    if not (cache_dir / SPLITS_FILE).is_file():
        write_splits(cache_dir, seed=seed)
    return cache_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mmcam.data.synthetic --out DIR [--subjects N] [--layout brats|prostate] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m mmcam.data.synthetic",
        description="Write synthetic multi-modal MRI phantoms in a real raw layout (brats: BraTS "
        "2021, prostate: MSD Task05); then run python -m mmcam.prepare --data DIR.",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (new or empty)")
    parser.add_argument("--subjects", type=int, default=20, metavar="N", help="number of subjects (default 20)")
    parser.add_argument("--layout", choices=LAYOUTS, default="brats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tumour",
        choices=TUMOURS,
        default="nested",
        help="brats: nested (edema around core, default) or split (two lobes, each shown by one of T1ce, FLAIR)",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="volume shape (default brats 96 96 40, prostate 96 96 24)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        generate_synthetic(
            args.out, args.layout, args.subjects, args.seed, args.shape, not args.no_progress, args.tumour
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.subjects} synthetic {args.layout} subjects to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
