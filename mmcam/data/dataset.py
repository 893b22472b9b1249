"""SliceDataset: 2-D multi-modal slices of a cache, with their mask and slice-level label.

Built for a :class:`torch.utils.data.DataLoader` with worker processes: the dataset object holds only
small index arrays (cheap to pickle into every worker); each process memory-maps the ``.npy`` arrays of
the subjects it reads on first use (at most ``max_open_subjects`` at a time, least recently used closed
first, so a large cache does not exhaust file handles), and a forked copy never reuses its parent's maps.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np
import torch

from mmcam.data import cache as fmt
from mmcam.data.errors import DataError
from mmcam.data.labels import get_label_spec

__all__ = ["SliceDataset"]


class SliceDataset(torch.utils.data.Dataset):
    """The stored slices of (some of) a cache's subjects, in cache order.

    Item ``i`` is a dict:

    - ``"image"``: float32 tensor ``(M, H, W)``, the raw intensities of the M selected modalities
      (channel-first, in the order of ``modalities``); no normalisation (the model z-scores each
      sample after the transform π, DESIGN section 1). ``H, W = X, Y`` of the volume, or
      ``spatial_size``.
    - ``"mask"``: bool tensor ``(H, W)``, the ground-truth mask of ``region``.
    - ``"label"``: int64 scalar tensor, 1 if the slice's mask has a voxel of ``region``, else 0.
    - ``"subject"``: the subject id (str).
    - ``"slice"``: the slice's index ``k`` along the volume's third voxel axis (int), for restacking
      with :meth:`~mmcam.data.cache.SubjectMeta.restack`.

    Args:
        cache_dir: a cache written by ``python -m mmcam.prepare``.
        subjects: ids to include (e.g. :func:`~mmcam.data.cache.read_split`), in cache order;
            ``None``: all.
        region: target region of the label spec (e.g. ``"WT"``, ``"TC"``, ``"ET"``, ``"WG"``);
            ``None``: the spec's default.
        modalities: names of the modalities to return, in this order; ``None``: all, in cache order.
        spatial_size: ``(H, W)`` to centre-crop / zero-pad every slice to (for subjects of different
            in-plane sizes); ``None``: keep ``(X, Y)``. An item whose crop would cut off a voxel of the
            region raises :class:`DataError` (its label would no longer describe its image).
        max_open_subjects: how many subjects' arrays one process keeps memory-mapped.

    Attributes:
        labels: ``(N,)`` int64 slice labels of all items (for samplers and class weights).
        subject_ids, modalities, region, spec, index: the selection and the cache's index.
    """

    def __init__(self, cache_dir, subjects: Optional[Sequence[str]] = None, *,
                 region: Optional[str] = None, modalities: Optional[Sequence[str]] = None,
                 spatial_size: Optional[Sequence[int]] = None, max_open_subjects: int = 32):
        self.index = fmt.read_cache_index(cache_dir)
        self.spec = get_label_spec(self.index.label_spec)
        self.region = self.spec.region_name(region)
        self.subject_ids = self._select_subjects(subjects)
        self.modalities, self._channels = self._select_modalities(modalities)
        self.spatial_size = self._check_size(spatial_size)
        if isinstance(max_open_subjects, bool) or not isinstance(max_open_subjects, int) \
                or max_open_subjects < 1:
            raise DataError(f"max_open_subjects must be an int >= 1, got {max_open_subjects!r}")
        self.max_open_subjects = max_open_subjects

        owners, positions, slice_index, labels = [], [], [], []
        for s, subject_id in enumerate(self.subject_ids):
            meta = fmt.read_subject_meta(self.index.root, subject_id)
            n = len(meta.slice_index)
            owners.append(np.full(n, s, dtype=np.int64))
            positions.append(np.arange(n, dtype=np.int64))
            slice_index.append(meta.slice_index)
            labels.append(meta.slice_labels[self.region])
        self._owner = np.concatenate(owners)          # item -> subject number
        self._position = np.concatenate(positions)    # item -> row in the subject's arrays
        self._slice_index = np.concatenate(slice_index)  # item -> k in the volume
        self.labels = np.concatenate(labels)
        self._lookup = self.spec.lookup_table(self.region)
        self._open: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def _select_subjects(self, subjects) -> tuple[str, ...]:
        if subjects is None:
            return self.index.subjects
        if isinstance(subjects, str):
            raise DataError("subjects must be a sequence of ids, not a single string")
        wanted = set(subjects)
        unknown = sorted(wanted - set(self.index.subjects))
        if unknown:
            raise DataError(f"{self.index.root}: subjects not in the cache: {unknown[:10]}")
        if not wanted:
            raise DataError("subjects is empty")
        return tuple(s for s in self.index.subjects if s in wanted)

    def _select_modalities(self, modalities) -> tuple[tuple[str, ...], np.ndarray]:
        available = self.index.modalities
        if modalities is None:
            return available, np.arange(len(available))
        if isinstance(modalities, str):
            raise DataError("modalities must be a sequence of names, not a single string")
        names = tuple(modalities)
        unknown = [m for m in names if m not in available]
        if unknown or not names or len(set(names)) != len(names):
            raise DataError(f"modalities must be distinct names among {list(available)}, got "
                            f"{list(names)}")
        return names, np.array([available.index(m) for m in names])

    @staticmethod
    def _check_size(size) -> Optional[tuple[int, int]]:
        if size is None:
            return None
        size = tuple(size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                 or v < 1 for v in size):
            raise DataError(f"spatial_size must be two positive ints (H, W), got {size!r}")
        return int(size[0]), int(size[1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # memory maps stay in the process that opened them
        return state

    def _arrays(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """The memory-mapped ``(image, labels)`` arrays of subject number ``s`` in this process."""
        if self._pid != os.getpid():  # a forked worker: open its own maps
            self._open, self._pid = OrderedDict(), os.getpid()
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        directory = fmt.subject_dir(self.index.root, self.subject_ids[s])
        try:
            arrays = (np.load(directory / fmt.IMAGE_FILE, mmap_mode="r"),
                      np.load(directory / fmt.LABELS_FILE, mmap_mode="r"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{directory}: cannot read the cached arrays ({exc})") from exc
        self._open[s] = arrays
        while len(self._open) > self.max_open_subjects:
            self._open.popitem(last=False)
        return arrays

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        s, row = int(self._owner[i]), int(self._position[i])
        image_array, label_array = self._arrays(s)
        image = np.asarray(image_array[row, self._channels], dtype=np.float32)  # (M, X, Y) copy
        mask = self._lookup[label_array[row]]                                     # (X, Y) bool
        if self.spatial_size is not None:
            cropped = fmt.center_crop_or_pad(mask, self.spatial_size)
            if cropped.sum() != mask.sum():
                raise DataError(
                    f"subject {self.subject_ids[s]} slice {int(self._slice_index[i])}: "
                    f"spatial_size {self.spatial_size} cuts off part of the {self.region} mask of a "
                    f"{mask.shape} slice; use a larger spatial_size")
            image = fmt.center_crop_or_pad(image, self.spatial_size)
            mask = cropped
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "label": torch.tensor(int(self.labels[i]), dtype=torch.int64),
            "subject": self.subject_ids[s],
            "slice": int(self._slice_index[i]),
        }

    def subject_meta(self, subject_id: str) -> fmt.SubjectMeta:
        """Geometry and provenance of one subject (affine, header, spacing, slice positions)."""
        if subject_id not in self.subject_ids:
            raise DataError(f"subject {subject_id!r} is not in this dataset")
        return fmt.read_subject_meta(self.index.root, subject_id)
