"""What ``mmcam.infer`` and ``mmcam.evaluate`` share: a trained run's model and data, and per-subject maps
put back on the subject's original voxel grid.

- :func:`load_run`: ``RUN_DIR/config.yaml`` and one checkpoint (``best``, ``best_dice`` or ``last``) ->
  a :class:`LoadedRun` holding the :class:`~mmcam.models.MultiModalCAM` in eval mode.
- :func:`training_cache`: where the run's slice cache is, without building anything;
  :func:`mmcam.training.cache_location.resolve_cache` finds or builds it.
- :func:`subject_maps`: one subject's normalised maps of every modality on the stored slices
  (:class:`SubjectMaps`); :meth:`SubjectMaps.volume` restacks a channel to the ``(X, Y, Z)`` grid of the
  input NIfTI (:meth:`~mmcam.data.cache.SubjectMeta.restack`: the prepare-time crop / pad / resize
  undone, dropped empty slices = 0). Channels: the modality names, and :data:`COMBINED` = the mean of
  the modality maps.
- :func:`truth_volume`: the ground-truth region mask on the same grid.
- :func:`labelled_split` and :func:`patient_volumes`: a split's patients with their map volumes and
  ground truth, for threshold selection and evaluation.

Bad input raises :class:`UsageError` (the command-line tools print it and exit with status 2).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from mmcam.cams.pseudo_masks import MAP_TYPES, class_maps
from mmcam.data import DataError, SliceDataset, SubjectMeta, get_label_spec, load_labels
from mmcam.data.cache import INDEX_FILE
from mmcam.models import MultiModalCAM
from mmcam.training import checkpoint as ckpt
from mmcam.training import config as cfg

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_HELP",
    "COMBINED",
    "UsageError",
    "LoadedRun",
    "load_run",
    "training_cache",
    "SubjectMaps",
    "subject_maps",
    "truth_volume",
    "check_map_types",
    "labelled_split",
    "patient_volumes",
]

#: Checkpoint names of a run directory (``RUN_DIR/<name>.pt``, written by :mod:`mmcam.training.trainer`).
CHECKPOINTS = ("best", "best_dice", "last")
#: The ``--checkpoint`` help of the commands that read a run (evaluate, infer).
CHECKPOINT_HELP = (
    "default: best (each modality's network at its best validation accuracy, the paper's selection) when the "
    "run has it, else last; best_dice (selected on validation Dice: a flagged departure) on request"
)
#: The channel of the combined map: the mean of the modality maps, thresholded like a modality's map.
COMBINED = "combined"


class UsageError(Exception):
    """Bad input (missing file, unknown option value, data without labels...); the message names it."""


@dataclass
class LoadedRun:
    """A trained run ready for inference.

    Attributes:
        run_dir: the run directory.
        config: its :class:`~mmcam.training.config.TrainConfig` (``config.yaml``).
        checkpoint: the checkpoint's name (one of :data:`CHECKPOINTS`).
        checkpoint_path: ``RUN_DIR/<checkpoint>.pt``.
        model: the :class:`~mmcam.models.MultiModalCAM` in eval mode on ``device``.
        device: where the model is.
    """

    run_dir: Path
    config: cfg.TrainConfig
    checkpoint: str
    checkpoint_path: Path
    model: MultiModalCAM
    device: torch.device

    @property
    def selection_note(self) -> str | None:
        """A warning to print and record when the checkpoint was not selected as in the paper."""
        if self.checkpoint == "best_dice":
            return (
                "checkpoint best_dice: selected on validation Dice of the combined map, a departure from the "
                "paper's per-modality selection by validation classification accuracy (best)"
            )
        return None

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    @property
    def channels(self) -> list[str]:
        """The modality names, then :data:`COMBINED`."""
        return list(self.modalities) + [COMBINED]


def load_run(run_dir: str | os.PathLike[str], checkpoint: str | None = None, device: str = "cpu") -> LoadedRun:
    """Load ``RUN_DIR/config.yaml`` and a checkpoint.

    Args:
        run_dir: a run directory of ``python -m mmcam.train``.
        checkpoint: one of :data:`CHECKPOINTS`; ``None``: ``best`` (each modality's network at its best
            validation classification accuracy, the paper's selection) when the run has it, else ``last``;
            the checkpoint that the trainer's own test evaluation uses. ``best_dice`` (selected on
            validation Dice, a departure from the paper) only when asked for.
        device: ``"cpu"`` or ``"cuda"``.

    Raises:
        UsageError: no such directory, no ``config.yaml``, an unknown or missing checkpoint, a corrupt
            file, or CUDA asked for but absent.
    """
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise UsageError(f"--run {run_dir}: no such directory")
    if not config_file.is_file():
        raise UsageError(f"--run {run_dir}: not a run directory of python -m mmcam.train (no config.yaml)")
    try:
        config = cfg.apply(cfg.TrainConfig(), yaml.safe_load(config_file.read_text()) or {}, str(config_file))
    except (cfg.ConfigError, OSError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"{config_file}: {exc}") from None
    present = [name for name in CHECKPOINTS if (run_dir / f"{name}.pt").is_file()]
    if checkpoint is None:
        checkpoint = "best" if "best" in present else "last"
    if checkpoint not in CHECKPOINTS:
        raise UsageError(f"--checkpoint {checkpoint!r}: unknown; choose one of {', '.join(CHECKPOINTS)}")
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file():
        raise UsageError(f"--checkpoint {checkpoint}: no file {path} (the run has {present or 'no checkpoint'})")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    others = [name for name in present if name != checkpoint]
    try:
        saved = ckpt.load(path)
    except ckpt.CheckpointError as exc:
        alternative = f"choose another with --checkpoint ({', '.join(others)})" if others else "train the run again"
        raise UsageError(f"{exc}; restore the file from a copy of the run, or {alternative}") from None
    try:
        model = MultiModalCAM(
            saved["modalities"], width_divisor=saved.get("config", {}).get("width_divisor", config.width_divisor)
        )
        model.load_state_dict(saved["model"])
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: not a usable checkpoint of python -m mmcam.train ({exc})") from None
    target = torch.device(device)
    return LoadedRun(run_dir, config, checkpoint, path, model.to(target).eval(), target)


def training_cache(config: cfg.TrainConfig) -> Path | None:
    """The complete slice cache the run was trained on, or ``None`` when it is not (or no longer) there.

    Looks where :func:`mmcam.training.cache_location.resolve_cache` puts it and builds nothing: the synthetic phantoms'
    cache under ``$MMCAM_HOME`` (no ``data``), ``data`` itself when it is a cache, else ``cache`` or
    ``<data>-mmcam-cache`` next to the raw folder.
    """
    from mmcam.training.cache_location import cache_location

    found = cache_location(config)
    return found if (found / INDEX_FILE).is_file() else None


def check_map_types(names: Sequence[str]) -> list[str]:
    """``names`` if every one is a map type of :data:`~mmcam.cams.pseudo_masks.MAP_TYPES`, else a UsageError."""
    names = list(names)
    unknown = [n for n in names if n not in MAP_TYPES]
    if unknown or not names:
        raise UsageError(f"--maps: unknown map type(s) {unknown or names}; choose among {', '.join(MAP_TYPES)}")
    return names


@dataclass
class SubjectMaps:
    """One subject's maps on its stored slices.

    Attributes:
        meta: the subject's geometry and provenance (affine, header, zooms, slice positions).
        modalities: the M modality names, in the channel order of ``scores``.
        scores: ``(S, M, H, W)`` float32 in [0, 1]: the normalised map of each modality's network on each
            stored slice (in ``meta.slice_index`` order), not zeroed by the classifier.
        predicted: ``(S, M)`` int64, each network's predicted class per slice.
    """

    meta: SubjectMeta
    modalities: tuple[str, ...]
    scores: np.ndarray
    predicted: np.ndarray

    @functools.cached_property
    def maps(self) -> np.ndarray:
        """``(S, M, H, W)``: :attr:`scores` zeroed where a network predicts "no target" (the pseudo-mask maps);
        computed once, however many channels are read."""
        return self.scores * (self.predicted == 1)[:, :, None, None].astype(self.scores.dtype)

    def stored(self, channel: str, gated: bool = True) -> np.ndarray:
        """``(S, H, W)`` map of a modality, or of :data:`COMBINED` (the mean over the modalities), zeroed by
        the classifier when ``gated`` (:attr:`maps`), else from :attr:`scores`."""
        maps = self.maps if gated else self.scores
        if channel == COMBINED:
            return maps.mean(axis=1)
        if channel not in self.modalities:
            raise KeyError(f"unknown channel {channel!r}; the maps have {list(self.modalities) + [COMBINED]}")
        return maps[:, self.modalities.index(channel)]

    def volume(self, channel: str, gated: bool = True) -> np.ndarray:
        """``(X, Y, Z)`` float32 map of ``channel`` (``gated`` as :meth:`stored`) on the input's voxel grid (0
        on dropped slices and outside the prepare-time crop; bilinear where prepare resized)."""
        stored = self.stored(channel, gated)
        return self.meta.restack(np.ascontiguousarray(stored, dtype=np.float32), fill=0.0)


def subject_maps(
    run: LoadedRun, cache_dir: str | os.PathLike[str], subject_id: str, map_type: str = "cam", batch_size: int = 32
) -> SubjectMaps:
    """Run every modality's network on its own modality of every stored slice of one subject.

    Args:
        run: the loaded run (its model's modalities must be in the cache).
        cache_dir: a slice cache holding ``subject_id`` (labelled or not).
        map_type: one of :data:`~mmcam.cams.pseudo_masks.MAP_TYPES`.
        batch_size: slices per forward pass.
    """
    try:
        dataset = SliceDataset(cache_dir, [subject_id], run.modalities, region=run.config.region)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    scores, predicted = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        m, p = class_maps(run.model, batch["image"].to(run.device), map_type, gate=False)
        scores.append(m.float().cpu().numpy())
        predicted.append(p.cpu().numpy())
    return SubjectMaps(
        dataset.subject_meta(subject_id), tuple(run.modalities), np.concatenate(scores), np.concatenate(predicted)
    )


def truth_volume(cache_dir: str | os.PathLike[str], subject_id: str, region: str | None = None) -> np.ndarray:
    """``(X, Y, Z)`` bool ground-truth mask of ``region`` (default: the label spec's) on the input's grid.

    Restacked from the cache when prepare only cropped / padded (exact); read from the source label file
    recorded in ``meta.json`` when it resized the slices (the cached mask is then a nearest-neighbour
    resample).

    Raises:
        UsageError: the subject has no label mask, or the source label file is gone.
    """
    try:
        dataset = SliceDataset(cache_dir, [subject_id], modalities=None, region=region)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    if not dataset.has_masks:
        raise UsageError(f"subject {subject_id} of {cache_dir} has no ground-truth mask")
    meta = dataset.subject_meta(subject_id)
    assert meta.geometry is not None  # SubjectMeta sets it on construction
    if meta.geometry.scale == (1.0, 1.0):
        masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
        return meta.restack(masks.astype(np.uint8), fill=0).astype(bool)
    source = Path(meta.sources["label"]["path"])
    try:
        labels = load_labels(source)
    except DataError as exc:
        raise UsageError(
            f"{exc} (needed as the ground truth of {subject_id}: the cache stores resized masks)"
        ) from None
    return get_label_spec(dataset.index.label_spec).region_mask(labels.data, dataset.region)


def labelled_split(
    run: LoadedRun, cache_dir: str | os.PathLike[str], split: str, option: str = "--split"
) -> SliceDataset:
    """The slices of ``split`` of the cache for ``run``'s modalities and region; a :class:`UsageError`
    naming ``option`` when the split is unknown, empty or without ground-truth masks."""
    try:
        dataset = SliceDataset(cache_dir, split, run.modalities, region=run.config.region)
    except DataError as exc:
        raise UsageError(f"{option} {split}: {exc}") from None
    if not dataset.has_masks:
        raise UsageError(
            f"{option} {split}: the subjects of this split of {cache_dir} have no ground-truth "
            "masks; evaluation needs labels (use python -m mmcam.infer for unlabelled data)"
        )
    return dataset


def patient_volumes(
    run: LoadedRun, dataset: SliceDataset, map_type: str = "cam", batch_size: int = 32
) -> Iterator[tuple[str, SubjectMaps, dict, np.ndarray]]:
    """``(subject, SubjectMaps, {channel: (X, Y, Z) float32 map}, truth (X, Y, Z) bool)`` for every patient
    of a labelled ``dataset``, one at a time (channels: :attr:`LoadedRun.channels`)."""
    for subject in dataset.subject_ids:
        maps = subject_maps(run, dataset.index.root, subject, map_type, batch_size)
        volumes = {c: maps.volume(c) for c in run.channels}
        yield subject, maps, volumes, truth_volume(dataset.index.root, subject, dataset.region)
