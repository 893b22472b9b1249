"""Data: raw BraTS / MSD-prostate layouts -> checked slice cache -> 2-D multi-modal slices.

The pipeline::

    dataset = discover(root)                     # find subjects in a raw download (discover.py)
    build_cache(dataset, cache_dir, workers=4)   # read, check, slice, write (build.py, cache.py)
    write_splits(cache_dir, seed=0)              # seeded patient split (splits.py)
    ds = SliceDataset(cache_dir, read_split(cache_dir, "train"), region="WT")   # dataset.py

or on the command line ``python -m mmcam.prepare RAW CACHE``. :mod:`mmcam.data.synthetic` writes
phantoms in the real raw layouts (``python -m mmcam.data.synthetic RAW``; import it explicitly); :mod:`mmcam.data.labels` holds the label specs and
:mod:`mmcam.data.nifti` the checked NIfTI reading and atomic writing. Bad input raises
:class:`DataError` naming the file.
"""

from mmcam.data.build import BuildOptions, build_cache, write_splits
from mmcam.data.cache import CacheIndex, SubjectMeta, center_crop_or_pad, read_cache_index, \
    read_split, read_subject_meta
from mmcam.data.dataset import SliceDataset
from mmcam.data.discover import DATASETS, Dataset, ImageSource, Subject, detect_dataset, discover
from mmcam.data.errors import DataError
from mmcam.data.labels import LABEL_SPECS, LabelSpec, get_label_spec
from mmcam.data.nifti import Volume, load_image, load_labels, save_nifti
from mmcam.data.splits import PatientSplit, kfold_patients, split_patients

__all__ = [
    "BuildOptions", "build_cache", "write_splits",
    "CacheIndex", "SubjectMeta", "center_crop_or_pad", "read_cache_index", "read_split",
    "read_subject_meta",
    "SliceDataset",
    "DATASETS", "Dataset", "ImageSource", "Subject", "detect_dataset", "discover",
    "DataError",
    "LABEL_SPECS", "LabelSpec", "get_label_spec",
    "Volume", "load_image", "load_labels", "save_nifti",
    "PatientSplit", "kfold_patients", "split_patients",
]
