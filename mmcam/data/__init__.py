"""Data: raw BraTS / MSD-prostate layouts -> checked slice cache -> 2-D multi-modal slices.

The pipeline::

    dataset = discover(root)                     # find subjects in a raw download (discover.py)
    build_cache(dataset, cache_dir, workers=4)   # read, check, normalise, slice, write (build.py)
    write_splits(cache_dir, fractions=(0.7, 0.1, 0.2), seed=0)   # seeded patient split (splits.py)
    ds = SliceDataset(cache_dir, "train", ["t2", "flair"])       # dataset.py

or on the command line ``python -m mmcam.prepare --data RAW --out CACHE``.
:mod:`mmcam.data.synthetic` writes phantoms in the real raw layouts
(``python -m mmcam.data.synthetic --out RAW --layout brats``; import it explicitly). One module per
job: :mod:`~mmcam.data.labels` (label specs), :mod:`~mmcam.data.modalities` (names and aliases),
:mod:`~mmcam.data.nifti` (checked NIfTI reading, atomic writing), :mod:`~mmcam.data.intensity`
(percentile normalisation), :mod:`~mmcam.data.geometry` (crop / pad / resize and its inverse),
:mod:`~mmcam.data.cache` and :mod:`~mmcam.data.manifest` (the on-disk format). Bad input raises
:class:`DataError` naming the file.
"""

from mmcam.data.build import BuildOptions, build_cache, prepare_raw, write_splits
from mmcam.data.cache import (
    CacheIndex,
    SubjectMeta,
    center_crop_or_pad,
    read_cache_index,
    read_split,
    read_subject_meta,
)
from mmcam.data.dataset import SliceDataset
from mmcam.data.discover import DATASET_FAMILIES, DATASETS, Dataset, ImageSource, Subject, detect_dataset, discover
from mmcam.data.errors import DataError, DataWarning
from mmcam.data.geometry import InPlaneGeometry, plan_geometry
from mmcam.data.intensity import normalize_intensity
from mmcam.data.labels import LABEL_SPECS, LabelSpec, get_label_spec
from mmcam.data.manifest import read_manifest
from mmcam.data.modalities import canonical_modality
from mmcam.data.nifti import Volume, load_image, load_labels, save_nifti
from mmcam.data.splits import PatientSplit, kfold_patients, parse_fractions, split_patients

__all__ = [
    "BuildOptions",
    "build_cache",
    "prepare_raw",
    "write_splits",
    "CacheIndex",
    "SubjectMeta",
    "center_crop_or_pad",
    "read_cache_index",
    "read_split",
    "read_subject_meta",
    "SliceDataset",
    "DATASET_FAMILIES",
    "DATASETS",
    "Dataset",
    "ImageSource",
    "Subject",
    "detect_dataset",
    "discover",
    "DataError",
    "DataWarning",
    "InPlaneGeometry",
    "plan_geometry",
    "normalize_intensity",
    "LABEL_SPECS",
    "LabelSpec",
    "get_label_spec",
    "read_manifest",
    "canonical_modality",
    "Volume",
    "load_image",
    "load_labels",
    "save_nifti",
    "PatientSplit",
    "kfold_patients",
    "parse_fractions",
    "split_patients",
]
