"""Tiny raw datasets written with nibabel in each real layout, for the tests of mmcam.data.

The writers use nibabel directly (not mmcam's own writer) and hard-code every file name, so the tests
check discovery and reading against the layouts as the challenges ship them. Volumes have three
different axis lengths (a transposition cannot go unnoticed), distinct values per modality, a first
slice that is empty in every modality and in the mask, and tumour in some slices only.

Each ``make_*`` returns ``{subject_id: RawSubject}`` with the arrays that were written.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

SHAPE = (9, 7, 6)  # (X, Y, Z)
NIBABEL_DATA = pathlib.Path(nib.__file__).parent / "tests" / "data"
ANATOMICAL = NIBABEL_DATA / "anatomical.nii"  # 3-D, big-endian int16
EXAMPLE_4D = NIBABEL_DATA / "example4d.nii.gz"  # (128, 96, 24, 2) int16, oblique affine


@dataclass
class RawSubject:
    images: list  # per modality (X, Y, Z) arrays, in the dataset's modality order
    seg: np.ndarray  # (X, Y, Z) integer mask
    affine: np.ndarray  # (4, 4)


def affine_for(index: int) -> np.ndarray:
    """A non-trivial affine (flips, anisotropic spacing, offset) that differs per subject."""
    affine = np.diag([-1.0, -1.0, 1.5 + 0.25 * index, 1.0])
    affine[:3, 3] = [10.0 * index, -20.0, 5.0]
    return affine


def write_nifti(path, data, affine, *, big_endian: bool = False) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")
    nib.save(nib.Nifti1Image(np.asarray(data), affine, header), path)
    return path


def subject_arrays(seed: int, n_modalities: int, tumour_labels, shape=SHAPE):
    """Images (int16 valued, distinct per modality) and a mask with an empty first slice and tumour
    in slices 2..4 only: ``tumour_labels`` are concentric layers (outer first), slice 2 holds the
    outer layer only, slice 3 all of them, slice 4 the outer two."""
    rng = np.random.default_rng(seed)
    images = []
    for m in range(n_modalities):
        image = rng.integers(1, 1000, size=shape).astype(np.int16) + 1000 * m
        image[:, :, 0] = 0  # empty slice: dropped by the cache
        images.append(image)
    seg = np.zeros(shape, dtype=np.uint8)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - shape[0] // 2, y - shape[1] // 2)
    for k, layers in ((2, 1), (3, 3), (4, 2)):
        for radius, value in list(zip((3.2, 2.2, 1.1), tumour_labels))[:layers]:
            seg[:, :, k][r <= radius] = value
    return images, seg


def _flat_brats(root, ids, suffixes, separator, ending, tumour_labels, *, big_endian=False, seg_names=None):
    subjects = {}
    for n, subject_id in enumerate(ids):
        images, seg = subject_arrays(n, 4, tumour_labels)
        affine = affine_for(n)
        directory = pathlib.Path(root) / subject_id
        for suffix, image in zip(suffixes, images):
            write_nifti(directory / f"{subject_id}{separator}{suffix}{ending}", image, affine, big_endian=big_endian)
        seg_name = (seg_names or {}).get(subject_id, f"{subject_id}{separator}seg{ending}")
        write_nifti(directory / seg_name, seg, affine, big_endian=big_endian)
        subjects[subject_id] = RawSubject(images, seg, affine)
    return subjects


def make_brats2018(root) -> dict:
    """BraTS 2018: HGG/ and LGG/ grade directories, big-endian files."""
    subjects = {}
    for grade, ids in (("HGG", ["Brats18_2013_10_1", "Brats18_CBICA_AAB_1"]), ("LGG", ["Brats18_2013_0_1"])):
        subjects.update(
            _flat_brats(
                pathlib.Path(root) / grade,
                ids,
                ("t1", "t1ce", "t2", "flair"),
                "_",
                ".nii.gz",
                (2, 1, 4),
                big_endian=True,
            )
        )
    return dict(sorted(subjects.items()))


def make_brats2020(root) -> dict:
    """BraTS 2020: flat, uncompressed .nii, subject 355's mask W39_1998.09.19_Segm.nii, CSV beside."""
    ids = ["BraTS20_Training_001", "BraTS20_Training_355"]
    subjects = _flat_brats(
        root,
        ids,
        ("t1", "t1ce", "t2", "flair"),
        "_",
        ".nii",
        (2, 1, 4),
        seg_names={"BraTS20_Training_355": "W39_1998.09.19_Segm.nii"},
    )
    (pathlib.Path(root) / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")
    return subjects


def make_brats2021(root) -> dict:
    """BraTS 2021: flat ``BraTS2021_00000/BraTS2021_00000_flair.nii.gz``, with macOS junk."""
    ids = ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
    subjects = _flat_brats(root, ids, ("t1", "t1ce", "t2", "flair"), "_", ".nii.gz", (2, 1, 4))
    (pathlib.Path(root) / "__MACOSX").mkdir()
    (pathlib.Path(root) / ".DS_Store").write_bytes(b"\0junk")
    return subjects


def make_brats2021_validation(root) -> dict:
    """A BraTS 2021 validation set: the training layout without ``_seg`` files (masks are unknown)."""
    subjects = make_brats2021(root)
    for subject_id in subjects:
        (pathlib.Path(root) / subject_id / f"{subject_id}_seg.nii.gz").unlink()
    return subjects


def make_brats2020_from_anatomical(root) -> dict:
    """BraTS 2020 layout (.nii) around nibabel's real big-endian ``anatomical.nii`` (33, 41, 25): its
    four modalities are links to that file, the mask a drawn big-endian volume on its grid."""
    source = nib.load(ANATOMICAL)
    subject_id = "BraTS20_Training_007"
    directory = pathlib.Path(root) / subject_id
    directory.mkdir(parents=True)
    for suffix in ("t1", "t1ce", "t2", "flair"):
        os.symlink(ANATOMICAL, directory / f"{subject_id}_{suffix}.nii")
    seg = np.zeros(source.shape, dtype=np.uint8)
    seg[10:21, 15:26, 8:15] = 2
    seg[13:18, 18:23, 10:13] = 1
    seg[15, 20, 11] = 4
    write_nifti(directory / f"{subject_id}_seg.nii", seg, source.affine, big_endian=True)
    data = source.get_fdata()
    return {subject_id: RawSubject([data] * 4, seg, source.affine)}


def make_brats2023(root, *, with_resection_cavity: bool = False) -> dict:
    """BraTS 2023 (or 2024 with label 4 = resection cavity): ``BraTS-GLI-00000-000-t2f.nii.gz``."""
    ids = ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    subjects = _flat_brats(root, ids, ("t1n", "t1c", "t2w", "t2f"), "-", ".nii.gz", (2, 1, 3))
    if with_resection_cavity:
        for subject_id, subject in subjects.items():
            subject.seg[0:2, 0:2, 3] = 4  # beside the tumour
            subject.seg[0:2, 0:2, 5] = 4  # alone: a slice with no tumour
            write_nifti(pathlib.Path(root) / subject_id / f"{subject_id}-seg.nii.gz", subject.seg, subject.affine)
    return subjects


def write_msd_json(root, ids, modality=None, labels=None) -> None:
    record = {
        "name": "Prostate",
        "tensorImageSize": "4D",
        "modality": modality or {"0": "T2", "1": "ADC"},
        "labels": labels or {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": len(ids),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids],
        "test": [],
    }
    (pathlib.Path(root) / "dataset.json").write_text(json.dumps(record))


def make_msd_prostate(root) -> dict:
    """MSD Task05: 4-D (X, Y, Z, 2) float32 images, 3-D masks, macOS ``._`` forks beside them."""
    root = pathlib.Path(root)
    subjects = {}
    ids = ["prostate_00", "prostate_04"]
    for n, subject_id in enumerate(ids):
        images, seg = subject_arrays(10 + n, 2, (1, 2))
        affine = affine_for(n)
        write_nifti(
            root / "imagesTr" / f"{subject_id}.nii.gz", np.stack(images, axis=-1).astype(np.float32) / 7, affine
        )
        write_nifti(root / "labelsTr" / f"{subject_id}.nii.gz", seg, affine)
        subjects[subject_id] = RawSubject([(im.astype(np.float32) / 7) for im in images], seg, affine)
        for folder in ("imagesTr", "labelsTr"):
            (root / folder / f"._{subject_id}.nii.gz").write_bytes(b"\0\5\26\7 not nifti")
    write_msd_json(root, ids)
    return subjects


def make_msd_from_example4d(root) -> dict:
    """MSD layout around nibabel's real example4d.nii.gz (oblique affine), with a drawn mask."""
    root = pathlib.Path(root)
    (root / "imagesTr").mkdir(parents=True)
    target = root / "imagesTr" / "prostate_01.nii.gz"
    os.symlink(EXAMPLE_4D, target)
    image = nib.load(EXAMPLE_4D)
    data = image.get_fdata()
    seg = np.zeros(image.shape[:3], dtype=np.uint8)
    seg[50:70, 40:60, 8:14] = 1
    seg[55:65, 45:55, 9:13] = 2
    write_nifti(root / "labelsTr" / "prostate_01.nii.gz", seg, image.affine)
    write_msd_json(root, ["prostate_01"])
    return {"prostate_01": RawSubject([data[..., 0], data[..., 1]], seg, image.affine)}


LAYOUTS = {
    "brats2018": make_brats2018,
    "brats2020": make_brats2020,
    "brats2021": make_brats2021,
    "brats2023": make_brats2023,
    "brats2024": lambda root: make_brats2023(root, with_resection_cavity=True),
    "msd_prostate": make_msd_prostate,
}


def make_mixed_sizes(root, layout: str, shapes) -> dict:
    """Raw subjects of different in-plane sizes (``shapes``: one ``(X, Y, Z)`` each), in the BraTS 2021
    (``"brats"``) or the MSD prostate (``"prostate"``) layout, as the real MSD download has them."""
    root = pathlib.Path(root)
    subjects = {}
    for n, shape in enumerate(shapes):
        affine = affine_for(n)
        if layout == "brats":
            subject_id = f"BraTS2021_{n:05d}"
            images, seg = subject_arrays(n, 4, (2, 1, 4), shape=shape)
            for suffix, image in zip(("t1", "t1ce", "t2", "flair"), images):
                write_nifti(root / subject_id / f"{subject_id}_{suffix}.nii.gz", image, affine)
            write_nifti(root / subject_id / f"{subject_id}_seg.nii.gz", seg, affine)
        else:
            subject_id = f"prostate_{n:02d}"
            images, seg = subject_arrays(n, 2, (1, 2), shape=shape)
            write_nifti(root / "imagesTr" / f"{subject_id}.nii.gz", np.stack(images, axis=-1), affine)
            write_nifti(root / "labelsTr" / f"{subject_id}.nii.gz", seg, affine)
        subjects[subject_id] = RawSubject(images, seg, affine)
    if layout == "prostate":
        write_msd_json(root, list(subjects))
    return subjects
