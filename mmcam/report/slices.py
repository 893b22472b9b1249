"""The slices a report shows and the network outputs on them.

Selection (deterministic, no randomness): walk the positive slices of the split in cache order; take the
largest-lesion slice (most ground-truth pixels; ties: the earlier slice) of each of the first subjects
that have a positive slice, one per subject, until ``count`` slices are chosen; when the split has fewer
such subjects, the next-largest slices of the same subjects fill the rest (largest first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcam.cams.pseudo_masks import foreground_maps
from mmcam.data import DataError, SliceDataset
from mmcam.models import MultiModalCAM
from mmcam.report.run_outputs import ReportError
from mmcam.training import checkpoint as ckpt

__all__ = ["SelectedSlice", "SliceMaps", "select_slices", "load_model", "compute_maps", "open_dataset"]


@dataclass(frozen=True)
class SelectedSlice:
    """One chosen slice: its item index in the dataset, subject, slice index ``k`` and lesion area."""

    index: int
    subject: str
    slice: int
    area: int


@dataclass
class SliceMaps:
    """Inputs and outputs of one slice.

    Attributes:
        where: the slice.
        image: ``(M, H, W)`` cache intensities of the M modalities.
        mask: ``(H, W)`` uint8 ground truth.
        maps: ``(M, H, W)`` float32 normalised foreground maps in [0, 1] (zero where network m predicts
            "no target").
        combined: ``(H, W)`` float32 mean of ``maps`` over the modalities (the "combined" entry of the
            Dice table).
        pred: ``(M,)`` predicted class of each modality's network.
    """

    where: SelectedSlice
    image: np.ndarray
    mask: np.ndarray
    maps: np.ndarray
    combined: np.ndarray
    pred: np.ndarray


def open_dataset(cache, split: str, modalities, region) -> SliceDataset:
    """The split's slices of the run's modalities and region, or a :class:`ReportError`."""
    try:
        dataset = SliceDataset(cache, split, modalities, region=region)
    except DataError as exc:
        raise ReportError(f"cannot read split {split!r} of {cache}: {exc}") from None
    if not dataset.has_masks:
        raise ReportError(f"split {split!r} of {cache} has no ground-truth masks; choose a labelled split")
    return dataset


def select_slices(dataset: SliceDataset, count: int) -> list[SelectedSlice]:
    """``count`` positive slices chosen as the module docstring says (fewer if the split has fewer)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ReportError(f"--slices must be an integer >= 1, got {count!r}")
    by_subject: dict[str, list[SelectedSlice]] = {}
    for index in np.flatnonzero(dataset.labels == 1).tolist():
        item = dataset[index]
        subject = item["subject"]
        if subject not in by_subject and len(by_subject) == count:
            break  # items are grouped by subject: the first `count` subjects are complete
        by_subject.setdefault(subject, []).append(SelectedSlice(index, subject, item["slice"], int(item["mask"].sum())))
    ranked = [sorted(found, key=lambda s: (-s.area, s.index)) for found in by_subject.values()]
    chosen = []
    for depth in range(max((len(r) for r in ranked), default=0)):  # round-robin over the subjects
        chosen += [r[depth] for r in ranked if depth < len(r)]
    return chosen[:count]


def load_model(path: Path) -> tuple[MultiModalCAM, list[str]]:
    """The :class:`MultiModalCAM` of a checkpoint (in eval mode, on the CPU) and its modalities."""
    try:
        saved = ckpt.load(path)
    except ckpt.CheckpointError as exc:
        raise ReportError(f"{exc}; restore the file from a copy of the run, or choose another --checkpoint") from None
    missing = [k for k in ("model", "modalities", "config") if k not in saved]
    if missing:
        raise ReportError(f"checkpoint {path} lacks {missing} (not a checkpoint of python -m mmcam.train)")
    modalities = list(saved["modalities"])
    model = MultiModalCAM(modalities, width_divisor=saved["config"]["width_divisor"])
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise ReportError(f"checkpoint {path} does not fit its own model description: {exc}") from None
    return model.eval(), modalities


def compute_maps(
    model: torch.nn.Module, dataset: SliceDataset, chosen: list[SelectedSlice], batch_size: int = 32
) -> list[SliceMaps]:
    """Run the model on the chosen slices (eval mode: batch composition does not matter)."""
    out = []
    for start in range(0, len(chosen), batch_size):
        part = chosen[start : start + batch_size]
        items = [dataset[s.index] for s in part]
        images = torch.stack([item["image"] for item in items])
        maps, pred = foreground_maps(model, images)
        combined = maps.mean(1)  # as the training run's evaluation computes it (float32)
        for k, (where, item) in enumerate(zip(part, items)):
            out.append(
                SliceMaps(
                    where,
                    item["image"].numpy(),
                    item["mask"].numpy(),
                    maps[k].numpy(),
                    combined[k].numpy(),
                    pred[k].numpy(),
                )
            )
    return out
