"""SliceDataset: 2-D multi-modal slices of a cache, with their mask and slice-level label.

Built for a :class:`torch.utils.data.DataLoader` with worker processes: the dataset object holds only
small index arrays (cheap to pickle into every worker); each process memory-maps the ``.npy`` arrays of
the subjects it reads on first use (at most ``max_open_subjects`` at a time, least recently used closed
first, so a large cache does not exhaust file handles), and a forked copy never reuses its parent's maps.
It never opens a NIfTI file. Each subject's stored box of its planes is dequantised and zero-padded
back to the cache's ``(H, W)`` planes on read (:class:`~mmcam.data.cache.Storage`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmcam.data import cache as fmt
from mmcam.data.errors import DataError
from mmcam.data.labels import get_label_spec
from mmcam.data.modalities import select_modalities

__all__ = ["SliceDataset"]


class SliceDataset(torch.utils.data.Dataset):
    """The stored slices of (some of) a cache's subjects, in cache order.

    Item ``i`` is a dict:

    - ``"image"``: float32 tensor ``(M, H, W)``, the stored (intensity-normalised, see
      :mod:`mmcam.data.intensity`) values of the M selected modalities, channel-first, in the order of
      ``modalities``. The model z-scores each sample after the transform π (docs/method.md).
      ``(H, W)`` is the stored size (``(X, Y)`` of the volume, or ``--size``), or ``spatial_size``.
    - ``"mask"``: uint8 tensor ``(H, W)``, 1 inside the ground-truth mask of ``region``, else 0.
    - ``"label"``: int64 scalar tensor, 1 if the slice's mask has a voxel of ``region``, else 0.
    - ``"subject"``: the subject id (str).
    - ``"slice"``: the slice's index ``k`` along the volume's third voxel axis (int), for restacking
      with :meth:`~mmcam.data.cache.SubjectMeta.restack`.

    Subjects without a label mask (split ``"unlabeled"``) give items without ``"mask"`` and
    ``"label"`` (inference only; :attr:`labels` is ``None``). A dataset holds either labelled or
    unlabelled subjects, never both, so every batch has the same keys.

    Args:
        cache_dir: a cache written by ``python -m mmcam.prepare``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"unlabeled"`` (a part of the cache's
            ``splits.json``, of fold ``fold``), or an explicit sequence of subject ids; ``None``: all
            subjects. Subjects are taken in cache order.
        modalities: names of the modalities to return, in this order (aliases such as ``t2f`` for
            ``flair`` are accepted, :mod:`mmcam.data.modalities`); ``None``: all, in cache order.
        region: target region of the label spec (e.g. ``"WT"``, ``"TC"``, ``"ET"``, ``"WG"``);
            ``None``: the spec's default.
        fold: the cross-validation fold of a ``"train"`` / ``"val"`` split.
        spatial_size: ``(H, W)`` to centre-crop / zero-pad every slice to (for subjects of different
            in-plane sizes); ``None``: keep the stored size. An item whose crop would cut off a voxel of
            the region raises :class:`DataError` (its label would no longer describe its image).
        max_open_subjects: how many subjects' arrays one process keeps memory-mapped.

    Attributes:
        labels: ``(N,)`` int64 slice labels of all items (for samplers and class weights), or ``None``
            for unlabelled subjects.
        has_masks: whether items carry ``"mask"`` and ``"label"``.
        subject_ids, modalities, region, spec, index: the selection and the cache's index.
    """

    def __init__(
        self,
        cache_dir,
        split: str | Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
        *,
        region: str | None = None,
        fold: int = 0,
        spatial_size: Sequence[int] | None = None,
        max_open_subjects: int = 32,
    ):
        self.index = fmt.read_cache_index(cache_dir)
        self.spec = get_label_spec(self.index.label_spec)
        self.region = self.spec.region_name(region)
        self.subject_ids = self._select_subjects(split, fold)
        self.has_masks = self._check_labeled()
        self.modalities, self._channels = select_modalities(modalities, self.index.modalities)
        self.spatial_size = self._check_size(spatial_size)
        if isinstance(max_open_subjects, bool) or not isinstance(max_open_subjects, int) or max_open_subjects < 1:
            raise DataError(f"max_open_subjects must be an int >= 1, got {max_open_subjects!r}")
        self.max_open_subjects = max_open_subjects

        owners, positions, slice_index, labels = [], [], [], []
        #: subject id -> ``(H, W)`` of its stored slices (items come out at ``spatial_size`` when set)
        self.slice_sizes: dict[str, tuple[int, int]] = {}
        storage: list[fmt.Storage] = []
        for s, subject_id in enumerate(self.subject_ids):
            meta = fmt.read_subject_meta(self.index.root, subject_id)
            assert meta.geometry is not None and meta.storage is not None  # set by SubjectMeta.__post_init__
            self.slice_sizes[subject_id] = meta.geometry.size
            storage.append(meta.storage)
            n = len(meta.slice_index)
            owners.append(np.full(n, s, dtype=np.int64))
            positions.append(np.arange(n, dtype=np.int64))
            slice_index.append(meta.slice_index)
            if self.has_masks:
                labels.append(meta.slice_labels[self.region])
        self._owner = np.concatenate(owners)  # item -> subject number
        self._position = np.concatenate(positions)  # item -> row in the subject's arrays
        self._slice_index = np.concatenate(slice_index)  # item -> k in the volume
        self.labels = np.concatenate(labels) if self.has_masks else None
        self._storage = storage  # subject number -> how its planes are stored
        self._lookup = self.spec.lookup_table(self.region)
        self._open: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def _select_subjects(self, split, fold: int) -> tuple[str, ...]:
        if split is None:
            return self.index.subjects
        if isinstance(split, str):
            if split not in fmt.SPLIT_PARTS:
                raise DataError(
                    f"unknown split {split!r}; choose one of {', '.join(fmt.SPLIT_PARTS)} or pass a list of subject ids"
                )
            wanted = set(fmt.read_split(self.index.root, split, fold))
            if not wanted:
                raise DataError(f"{self.index.root / fmt.SPLITS_FILE}: split {split!r} (fold {fold}) is empty")
        else:
            wanted = set(split)
            if not wanted:
                raise DataError("the list of subjects is empty")
        unknown = sorted(wanted - set(self.index.subjects))
        if unknown:
            raise DataError(f"{self.index.root}: subjects not in the cache: {unknown[:10]}")
        return tuple(s for s in self.index.subjects if s in wanted)

    def _check_labeled(self) -> bool:
        without = set(self.index.unlabeled)
        unlabeled = [s for s in self.subject_ids if s in without]
        if unlabeled and len(unlabeled) != len(self.subject_ids):
            raise DataError(
                f"{self.index.root}: the selection mixes subjects with and without a label "
                f"mask ({unlabeled[:5]} have none); select split 'unlabeled' or labelled "
                "subjects only"
            )
        return not unlabeled

    @staticmethod
    def _check_size(size) -> tuple[int, int] | None:
        if size is None:
            return None
        size = tuple(size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in size):
            raise DataError(f"spatial_size must be two positive ints (H, W), got {size!r}")
        return int(size[0]), int(size[1])

    def __len__(self) -> int:
        return len(self._owner)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # memory maps stay in the process that opened them
        return state

    def _arrays(self, s: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The memory-mapped ``(image, labels)`` arrays of subject number ``s`` in this process
        (``labels`` is ``None`` for an unlabelled subject)."""
        if self._pid != os.getpid():  # a forked worker: open its own maps
            self._open, self._pid = OrderedDict(), os.getpid()
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        directory = fmt.subject_dir(self.index.root, self.subject_ids[s])
        try:
            arrays = (
                np.load(directory / fmt.IMAGE_FILE, mmap_mode="r"),
                np.load(directory / fmt.LABELS_FILE, mmap_mode="r") if self.has_masks else None,
            )
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
        storage = self._storage[s]
        image = storage.decode(image_array[row, self._channels])  # (M, H, W) float32
        mask = storage.pad(self._lookup[label_array[row]]) if label_array is not None else None  # (H, W) bool
        if self.spatial_size is not None:
            if mask is not None:
                cropped = fmt.center_crop_or_pad(mask, self.spatial_size)
                if cropped.sum() != mask.sum():
                    raise DataError(
                        f"subject {self.subject_ids[s]} slice {int(self._slice_index[i])}: "
                        f"spatial_size {self.spatial_size} cuts off part of the {self.region} mask of "
                        f"a {mask.shape} slice; use a larger spatial_size"
                    )
                mask = cropped
            image = fmt.center_crop_or_pad(image, self.spatial_size)
        item: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(image))}
        if mask is not None:
            assert self.labels is not None  # masks and labels are both there when has_masks
            item["mask"] = torch.from_numpy(mask.astype(np.uint8))
            item["label"] = torch.tensor(int(self.labels[i]), dtype=torch.int64)
        item["subject"] = self.subject_ids[s]
        item["slice"] = int(self._slice_index[i])
        return item

    def subject_meta(self, subject_id: str) -> fmt.SubjectMeta:
        """Geometry and provenance of one subject (affine, header, spacing, slice positions)."""
        if subject_id not in self.subject_ids:
            raise DataError(f"subject {subject_id!r} is not in this dataset")
        return fmt.read_subject_meta(self.index.root, subject_id)
