"""Find the subjects of a raw BraTS or MSD-prostate download, in its own directory layout.

Supported datasets (``dataset=`` name: layout under ``root``):

- ``brats2018``, ``brats2019``: ``{HGG,LGG}/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``
- ``brats2020``: ``<id>/<id>_{t1,t1ce,t2,flair,seg}.nii[.gz]`` (``BraTS20_Training_001``); a subject
  whose mask is not ``<id>_seg`` (subject 355: ``W39_1998.09.19_Segm.nii``) uses the one other NIfTI
  file of its directory whose name contains "seg".
- ``brats2021``: the same flat layout (``BraTS2021_00000``); BraTS 2022 reused this data.
- ``brats2023``, ``brats2024``: ``<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (``BraTS-GLI-00000-000``;
  any ``BraTS-XXX`` sub-challenge). The two share the layout and differ in labels (2024: 4 = resection
  cavity), so ``"auto"`` picks ``brats2023``; a mask holding 4 then fails with a hint to use
  ``brats2024``.
- ``msd_prostate``: Task05_Prostate: ``dataset.json`` (its ``modality`` and ``training`` entries),
  ``imagesTr/<id>.nii.gz`` 4-D ``(X, Y, Z, 2)`` with channel 0 T2 and 1 ADC, ``labelsTr/<id>.nii.gz``.

Every BraTS release is read with the same modality names, in this order: ``t1, t1ce, t2, flair``
(2023+: t1n, t1c, t2w, t2f). Prostate modalities are dataset.json's names in lower case
(``t2, adc``). Files and directories whose names start with "." or "_" (macOS ``._*`` forks,
``__MACOSX``) are skipped everywhere; other files beside the subject directories (CSV tables) are
ignored. Subjects are listed in sorted order.

Discovery only looks at names; the files are opened (and checked) when the cache is built.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mmcam.data.errors import DataError
from mmcam.data.labels import LabelSpec, get_label_spec

__all__ = ["DATASETS", "ImageSource", "Subject", "Dataset", "detect_dataset", "discover"]

_BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
_BRATS_LEGACY_SUFFIXES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
_BRATS_2023_SUFFIXES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
_NIFTI_ENDINGS = (".nii.gz", ".nii")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ImageSource:
    """Where one modality of a subject is stored: ``path`` (3-D file) or its 4th-axis ``channel``."""

    path: Path
    channel: Optional[int] = None


@dataclass(frozen=True)
class Subject:
    """One patient: ``images`` in the dataset's modality order, and the ``label`` mask file."""

    id: str
    images: tuple[ImageSource, ...]
    label: Path


@dataclass(frozen=True)
class Dataset:
    """A discovered dataset: its name, root, label spec, modality names and subjects."""

    name: str
    root: Path
    spec: LabelSpec
    modalities: tuple[str, ...]
    subjects: tuple[Subject, ...]


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "_"))


def _subject_dirs(parent: Path) -> list[Path]:
    return sorted((p for p in parent.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _nifti_file(directory: Path, stem: str) -> Optional[Path]:
    """``directory/stem.nii.gz`` or ``.nii``; ``None`` if neither; an error if both exist."""
    found = [directory / (stem + ending) for ending in _NIFTI_ENDINGS
             if (directory / (stem + ending)).is_file()]
    if len(found) > 1:
        raise DataError(f"{directory}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _check_id(subject_id: str, where: Path) -> str:
    if not _SAFE_ID.match(subject_id):
        raise DataError(f"{where}: subject id {subject_id!r} is not usable as a file name "
                        "(letters, digits, '.', '_', '-' only)")
    return subject_id


def _brats_subject(directory: Path, separator: str, suffixes: dict[str, str]) -> Subject:
    """The subject stored as ``directory/<id><separator><suffix>.nii[.gz]``, ``<id>`` = directory name."""
    subject_id = _check_id(directory.name, directory)
    images = []
    for modality in _BRATS_MODALITIES:
        stem = f"{subject_id}{separator}{suffixes[modality]}"
        path = _nifti_file(directory, stem)
        if path is None:
            raise DataError(f"{directory}: missing the {modality} image {stem}.nii.gz (or .nii)")
        images.append(ImageSource(path))
    label = _nifti_file(directory, f"{subject_id}{separator}seg")
    if label is None:  # BraTS 2020 subject 355: W39_1998.09.19_Segm.nii
        used = {source.path.name for source in images}
        candidates = sorted(
            p for p in directory.iterdir()
            if p.is_file() and _visible(p) and p.name.endswith(_NIFTI_ENDINGS)
            and p.name not in used and "seg" in p.name.lower()
        )
        if len(candidates) != 1:
            found = f"; candidates: {[p.name for p in candidates]}" if candidates else ""
            raise DataError(f"{directory}: no label mask {subject_id}{separator}seg.nii.gz "
                            f"(or a single other *seg* NIfTI file){found}")
        label = candidates[0]
    return Subject(subject_id, tuple(images), label)


def _brats_grade_dirs(root: Path) -> tuple[tuple[str, ...], list[Subject]]:
    grades = [root / grade for grade in ("HGG", "LGG") if (root / grade).is_dir()]
    if not grades:
        raise DataError(f"{root}: expected HGG/ and/or LGG/ subject directories (BraTS 2018/2019)")
    subjects = [_brats_subject(d, "_", _BRATS_LEGACY_SUFFIXES)
                for grade in grades for d in _subject_dirs(grade)]
    return _BRATS_MODALITIES, sorted(subjects, key=lambda s: s.id)


def _brats_flat(separator: str, suffixes: dict[str, str]) -> Callable[[Path], tuple]:
    def read(root: Path) -> tuple[tuple[str, ...], list[Subject]]:
        return _BRATS_MODALITIES, [_brats_subject(d, separator, suffixes)
                                   for d in _subject_dirs(root)]
    return read


def _msd_json(root: Path) -> tuple[dict, list[str]]:
    """dataset.json of an MSD prostate task and its modality names, checked."""
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{root}: no dataset.json (expected an MSD task directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    try:
        modality = meta["modality"]
        names = [modality[str(i)] for i in range(len(modality))]
        if not isinstance(meta["training"], list):
            raise TypeError("'training' is not a list")
        labels = set(meta["labels"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: expected 'modality' {{'0': ..., '1': ...}}, 'labels' and "
                        f"'training' entries ({type(exc).__name__}: {exc})") from exc
    if [n.lower() for n in names] != ["t2", "adc"]:
        raise DataError(f"{path}: expected modalities T2 (channel 0) and ADC (channel 1) of "
                        f"Task05_Prostate, got {names}")
    if labels != {"0", "1", "2"}:
        raise DataError(f"{path}: expected labels 0 background, 1 PZ, 2 TZ, got {sorted(labels)}")
    return meta, names


def _msd_prostate(root: Path) -> tuple[tuple[str, ...], list[Subject]]:
    meta, names = _msd_json(root)
    subjects = []
    for entry in meta["training"]:
        try:
            image, label = root / entry["image"], root / entry["label"]
        except (KeyError, TypeError):
            raise DataError(f"{root / 'dataset.json'}: a 'training' entry is not "
                            f"{{'image': ..., 'label': ...}}: {entry!r}") from None
        if not _visible(image):
            continue
        for path in (image, label):
            if not path.is_file():
                raise DataError(f"{root / 'dataset.json'} lists {path}, which does not exist")
        subject_id = _check_id(image.name.removesuffix(".gz").removesuffix(".nii"), image)
        images = tuple(ImageSource(image, channel) for channel in range(len(names)))
        subjects.append(Subject(subject_id, images, label))
    return tuple(n.lower() for n in names), sorted(subjects, key=lambda s: s.id)


# dataset name -> reader returning (modality names, subjects); each dataset's label spec has its name
_READERS: dict[str, Callable[[Path], tuple]] = {
    "brats2018": _brats_grade_dirs,
    "brats2019": _brats_grade_dirs,
    "brats2020": _brats_flat("_", _BRATS_LEGACY_SUFFIXES),
    "brats2021": _brats_flat("_", _BRATS_LEGACY_SUFFIXES),
    "brats2023": _brats_flat("-", _BRATS_2023_SUFFIXES),
    "brats2024": _brats_flat("-", _BRATS_2023_SUFFIXES),
    "msd_prostate": _msd_prostate,
}

#: The dataset names :func:`discover` accepts (besides ``"auto"``).
DATASETS = tuple(_READERS)


def _detect(root: Path) -> Optional[str]:
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd_prostate"
    if any((root / grade).is_dir() for grade in ("HGG", "LGG")):
        first = next((d.name for g in ("HGG", "LGG") if (root / g).is_dir()
                      for d in _subject_dirs(root / g)), "")
        return "brats2018" if first.startswith("Brats18") else "brats2019"
    for directory in _subject_dirs(root):
        name = directory.name
        if _nifti_file(directory, f"{name}-t2f") is not None:
            return "brats2023"
        if _nifti_file(directory, f"{name}_flair") is not None:
            return "brats2020" if name.startswith("BraTS20_") else "brats2021"
    return None


def detect_dataset(root) -> str:
    """The name (one of :data:`DATASETS`) of the dataset layout found at ``root``.

    MSD: ``dataset.json`` and ``imagesTr/``; BraTS 2018/2019: ``HGG/`` or ``LGG/`` (``Brats18_*``
    subjects -> 2018); BraTS 2023: subject directories holding ``<id>-t2f.nii[.gz]``; BraTS 2020/2021:
    ``<id>_flair.nii[.gz]`` (``BraTS20_*`` -> 2020). Raises :class:`DataError` when nothing matches,
    suggesting a subdirectory that would.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    found = _detect(root)
    if found is not None:
        return found
    suggestions = [d for d in _subject_dirs(root) if _detect(d) is not None]
    hint = f"; did you mean {suggestions[0]}?" if suggestions else ""
    raise DataError(
        f"{root}: no known dataset layout (BraTS: HGG/LGG/<id>/<id>_flair.nii.gz, "
        f"<id>/<id>_flair.nii.gz or <id>/<id>-t2f.nii.gz; MSD: dataset.json + imagesTr/){hint}"
    )


def discover(root, dataset: str = "auto") -> Dataset:
    """List the subjects of the dataset at ``root``.

    Args:
        root: the directory holding the subject directories (BraTS), ``HGG``/``LGG`` (2018/2019) or
            ``dataset.json`` (MSD).
        dataset: one of :data:`DATASETS`, or ``"auto"`` to detect it (:func:`detect_dataset`).

    Returns:
        A :class:`Dataset` with at least one subject.

    Raises:
        DataError: naming the directory or file at fault (unknown layout, missing modality or mask,
            ambiguous files, no subjects).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    name = detect_dataset(root) if dataset == "auto" else dataset
    if name not in _READERS:
        raise DataError(f"unknown dataset {dataset!r}; choose auto or one of {', '.join(DATASETS)}")
    modalities, subjects = _READERS[name](root)
    if not subjects:
        raise DataError(f"{root}: no subjects found for dataset {name}")
    duplicates = sorted(i for i, n in Counter(s.id for s in subjects).items() if n > 1)
    if duplicates:
        raise DataError(f"{root}: subject ids occur more than once: {duplicates}")
    return Dataset(name, root, get_label_spec(name), modalities, tuple(subjects))
