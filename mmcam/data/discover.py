"""Find the subjects of a raw BraTS or MSD-prostate download, in its own directory layout.

Supported datasets (``dataset=`` name: layout under ``root``):

- ``brats2018``, ``brats2019``: ``{HGG,LGG}/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``
- ``brats2020``: ``<id>/<id>_{t1,t1ce,t2,flair,seg}.nii[.gz]`` (``BraTS20_Training_001``); a subject
  whose mask is not ``<id>_seg`` (subject 355: ``W39_1998.09.19_Segm.nii``) uses the one other NIfTI
  file of its directory whose name contains "seg".
- ``brats2021``: the same flat layout (``BraTS2021_00000``); BraTS 2022 reused this data.
- ``brats2023``, ``brats2024``: ``<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (``BraTS-GLI-00000-000``;
  any ``BraTS-XXX`` sub-challenge). The two share the layout and differ in labels (2024: 4 = resection
  cavity), so detection picks ``brats2023``; a mask holding 4 then fails with a hint to use
  ``brats2024``.
- ``msd_prostate``: Task05_Prostate: ``dataset.json`` (its ``modality``, ``training`` and ``test``
  entries), ``imagesTr/<id>.nii.gz`` 4-D ``(X, Y, Z, 2)`` with channel 0 T2 and 1 ADC,
  ``labelsTr/<id>.nii.gz``; the ``test`` images (``imagesTs/``, no labels) are listed as unlabelled
  subjects (a listed test image that is absent is skipped with a warning).

``dataset`` may also be ``"auto"`` (detect everything), ``"brats"`` (detect the BraTS release; refuse
other layouts) or ``"prostate"`` (= ``msd_prostate``).

Every BraTS release is read with the same modality names, in this order: ``t1, t1ce, t2, flair``
(files of 2023+: t1n, t1c, t2w, t2f; see :mod:`mmcam.data.modalities` for the aliases). Prostate
modalities are ``t2, adc``. Files and directories whose names start with "." or "_" (macOS ``._*``
forks, ``__MACOSX``) are skipped everywhere; other files beside the subject directories (CSV tables) are
ignored. Subjects are listed in sorted order.

Subjects without a label mask (a BraTS validation set, MSD test images) are listed with ``label=None``:
they can be prepared and used for inference, never for training or evaluation (the splits put them in a
separate ``unlabeled`` part). A BraTS subject directory with several candidate masks is an error.

Discovery only looks at names; the files are opened (and checked) when the cache is built.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmcam.data.errors import DataError, DataWarning
from mmcam.data.labels import LabelSpec, get_label_spec
from mmcam.data.modalities import BRATS_MODALITIES, PROSTATE_MODALITIES

__all__ = [
    "DATASETS",
    "DATASET_FAMILIES",
    "ImageSource",
    "Subject",
    "Dataset",
    "detect_dataset",
    "resolve_dataset",
    "discover",
]

_BRATS_LEGACY_SUFFIXES = {m: m for m in BRATS_MODALITIES}
_BRATS_2023_SUFFIXES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
_NIFTI_ENDINGS = (".nii.gz", ".nii")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ImageSource:
    """Where one modality of a subject is stored: ``path`` (3-D file) or its 4th-axis ``channel``."""

    path: Path
    channel: int | None = None


@dataclass(frozen=True)
class Subject:
    """One patient: ``images`` in the dataset's modality order, and the ``label`` mask file (``None``
    when the subject has no mask: inference only)."""

    id: str
    images: tuple[ImageSource, ...]
    label: Path | None


@dataclass(frozen=True)
class Dataset:
    """A discovered dataset: its name, root, label spec, modality names and subjects.

    Behaves as the sequence of its subjects: ``len(dataset)``, ``dataset[i]``, ``for s in dataset``.
    """

    name: str
    root: Path
    spec: LabelSpec
    modalities: tuple[str, ...]
    subjects: tuple[Subject, ...]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> Subject:
        return self.subjects[i]

    def __iter__(self):
        return iter(self.subjects)

    def paths(self, subject: Subject) -> dict[str, ImageSource]:
        """``subject``'s image sources by modality name (in :attr:`modalities` order)."""
        return dict(zip(self.modalities, subject.images))

    @property
    def unlabeled(self) -> tuple[str, ...]:
        """Ids of the subjects without a label mask."""
        return tuple(s.id for s in self.subjects if s.label is None)


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "_"))


def _subject_dirs(parent: Path) -> list[Path]:
    return sorted((p for p in parent.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _nifti_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem.nii.gz`` or ``.nii``; ``None`` if neither; an error if both exist."""
    found = [directory / (stem + ending) for ending in _NIFTI_ENDINGS if (directory / (stem + ending)).is_file()]
    if len(found) > 1:
        raise DataError(f"{directory}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _check_id(subject_id: str, where: Path) -> str:
    if not _SAFE_ID.match(subject_id):
        raise DataError(
            f"{where}: subject id {subject_id!r} is not usable as a file name (letters, digits, '.', '_', '-' only)"
        )
    return subject_id


def _brats_subject(directory: Path, separator: str, suffixes: dict[str, str]) -> Subject:
    """The subject stored as ``directory/<id><separator><suffix>.nii[.gz]``, ``<id>`` = directory name."""
    subject_id = _check_id(directory.name, directory)
    images = []
    for modality in BRATS_MODALITIES:
        stem = f"{subject_id}{separator}{suffixes[modality]}"
        path = _nifti_file(directory, stem)
        if path is None:
            raise DataError(f"{directory}: missing the {modality} image {stem}.nii.gz (or .nii)")
        images.append(ImageSource(path))
    label = _nifti_file(directory, f"{subject_id}{separator}seg")
    if label is None:  # BraTS 2020 subject 355: W39_1998.09.19_Segm.nii
        used = {source.path.name for source in images}
        candidates = sorted(
            p
            for p in directory.iterdir()
            if p.is_file()
            and _visible(p)
            and p.name.endswith(_NIFTI_ENDINGS)
            and p.name not in used
            and "seg" in p.name.lower()
        )
        if len(candidates) > 1:
            raise DataError(
                f"{directory}: no label mask {subject_id}{separator}seg.nii.gz and "
                f"several candidates {[p.name for p in candidates]}; keep one"
            )
        label = candidates[0] if candidates else None  # None: unlabelled (e.g. a validation set)
    return Subject(subject_id, tuple(images), label)


def _brats_grade_dirs(root: Path) -> tuple[tuple[str, ...], list[Subject]]:
    grades = [root / grade for grade in ("HGG", "LGG") if (root / grade).is_dir()]
    if not grades:
        raise DataError(f"{root}: expected HGG/ and/or LGG/ subject directories (BraTS 2018/2019)")
    subjects = [_brats_subject(d, "_", _BRATS_LEGACY_SUFFIXES) for grade in grades for d in _subject_dirs(grade)]
    return BRATS_MODALITIES, sorted(subjects, key=lambda s: s.id)


def _brats_flat(separator: str, suffixes: dict[str, str]) -> Callable[[Path], tuple]:
    def read(root: Path) -> tuple[tuple[str, ...], list[Subject]]:
        return BRATS_MODALITIES, [_brats_subject(d, separator, suffixes) for d in _subject_dirs(root)]

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
        if not isinstance(meta.get("test", []), list):
            raise TypeError("'test' is not a list")
        labels = set(meta["labels"])
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: expected 'modality' {{'0': ..., '1': ...}}, 'labels' and "
            f"'training' entries ({type(exc).__name__}: {exc})"
        ) from exc
    if [n.lower() for n in names] != ["t2", "adc"]:
        raise DataError(
            f"{path}: expected modalities T2 (channel 0) and ADC (channel 1) of Task05_Prostate, got {names}"
        )
    if labels != {"0", "1", "2"}:
        raise DataError(f"{path}: expected labels 0 background, 1 PZ, 2 TZ, got {sorted(labels)}")
    return meta, names


def _msd_subject_id(image: Path) -> str:
    return _check_id(image.name.removesuffix(".gz").removesuffix(".nii"), image)


def _msd_prostate(root: Path) -> tuple[tuple[str, ...], list[Subject]]:
    meta, names = _msd_json(root)
    listing = root / "dataset.json"
    channels = range(len(names))
    subjects = []
    for entry in meta["training"]:
        try:
            image, label = root / entry["image"], root / entry["label"]
        except (KeyError, TypeError):
            raise DataError(f"{listing}: a 'training' entry is not {{'image': ..., 'label': ...}}: {entry!r}") from None
        if not _visible(image):
            continue
        for path in (image, label):
            if not path.is_file():
                raise DataError(f"{listing} lists {path}, which does not exist")
        images = tuple(ImageSource(image, channel) for channel in channels)
        subjects.append(Subject(_msd_subject_id(image), images, label))
    for entry in meta.get("test", []):  # image paths (MSD) or {"image": path}
        relative = entry.get("image") if isinstance(entry, dict) else entry
        if not isinstance(relative, str):
            raise DataError(f"{listing}: a 'test' entry is not an image path: {entry!r}")
        image = root / relative
        if not _visible(image):
            continue
        if not image.is_file():
            warnings.warn(
                f"{listing} lists the test image {image}, which does not exist: skipped", DataWarning, stacklevel=3
            )
            continue
        images = tuple(ImageSource(image, channel) for channel in channels)
        subjects.append(Subject(_msd_subject_id(image), images, None))
    return PROSTATE_MODALITIES, sorted(subjects, key=lambda s: s.id)


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

#: The dataset names :func:`discover` accepts (besides ``"auto"`` and :data:`DATASET_FAMILIES`).
DATASETS = tuple(_READERS)
#: Family names -> the datasets they stand for; the release is detected from the layout.
DATASET_FAMILIES = {"brats": tuple(n for n in DATASETS if n.startswith("brats")), "prostate": ("msd_prostate",)}


def _detect(root: Path) -> str | None:
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd_prostate"
    if any((root / grade).is_dir() for grade in ("HGG", "LGG")):
        first = next((d.name for g in ("HGG", "LGG") if (root / g).is_dir() for d in _subject_dirs(root / g)), "")
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


def resolve_dataset(root, dataset: str = "auto") -> str:
    """The dataset name (one of :data:`DATASETS`) that ``dataset`` stands for at ``root``.

    ``"auto"``: :func:`detect_dataset`; ``"brats"``: the detected BraTS release (an error if the layout
    is not BraTS; 2023 and 2024 share a layout, so ``brats2023`` is detected and a 2024 mask fails with
    a hint to name ``brats2024``); ``"prostate"``: ``msd_prostate``; a name of :data:`DATASETS`: itself.
    """
    if dataset == "auto":
        return detect_dataset(root)
    if dataset in DATASET_FAMILIES:
        family = DATASET_FAMILIES[dataset]
        if len(family) == 1:
            return family[0]
        found = detect_dataset(root)
        if found not in family:
            raise DataError(f"{root}: holds a {found} layout, not {dataset}; pass dataset='auto' or the right one")
        return found
    if dataset in _READERS:
        return dataset
    raise DataError(
        f"unknown dataset {dataset!r}; choose auto, {', '.join(DATASET_FAMILIES)} or one of {', '.join(DATASETS)}"
    )


def discover(root, dataset: str = "auto") -> Dataset:
    """List the subjects of the dataset at ``root``.

    Args:
        root: the directory holding the subject directories (BraTS), ``HGG``/``LGG`` (2018/2019) or
            ``dataset.json`` (MSD).
        dataset: ``"auto"`` (detect), ``"brats"`` (detect the release), ``"prostate"``, or one of
            :data:`DATASETS` (see :func:`resolve_dataset`).

    Returns:
        A :class:`Dataset` with at least one subject; subjects without a mask have ``label=None``.

    Raises:
        DataError: naming the directory or file at fault (unknown layout, missing modality, ambiguous
            files, no subjects).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    name = resolve_dataset(root, dataset)
    modalities, subjects = _READERS[name](root)
    if not subjects:
        raise DataError(f"{root}: no subjects found for dataset {name}")
    duplicates = sorted(i for i, n in Counter(s.id for s in subjects).items() if n > 1)
    if duplicates:
        raise DataError(f"{root}: subject ids occur more than once: {duplicates}")
    return Dataset(name, root, get_label_spec(name), modalities, tuple(subjects))
