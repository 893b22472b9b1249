"""CAM -> pseudo-mask (docs/evaluation.md): the foreground CAM, relu, min-max normalised per slice, zeroed where
the classifier predicts "no target", then thresholded.

Map types (:data:`MAP_TYPES`, :func:`class_maps`): ``"cam"`` (:func:`foreground_maps`), ``"gradcam"`` and
``"gradcampp"`` (:func:`mmcam.cams.gradcam.gradcam_maps`, the same normalisation and zeroing)."""

from __future__ import annotations

import torch

from mmcam.cams.gradcam import GRADCAM_METHODS, gradcam_maps
from mmcam.cams.normalize import gate_maps, minmax_normalize
from mmcam.models import zscore_per_sample

#: The map types of :func:`class_maps`.
MAP_TYPES = ("cam",) + GRADCAM_METHODS


@torch.no_grad()
def foreground_maps(
    model: torch.nn.Module, images: torch.Tensor, gate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised foreground maps and predicted classes of every modality's network.

    Args:
        model: a :class:`mmcam.models.MultiModalCAM` (in eval mode).
        images: ``(N, M, H, W)`` raw (cache-normalised) slices; z-scored here as in training.
        gate: zero the map of a slice where its network predicts class 0 (the pseudo-mask rule);
            ``False`` keeps every map (for threshold-free scores, :mod:`mmcam.evaluation.ranking`).

    Returns:
        ``maps`` ``(N, M, H, W)`` in [0, 1]: mn(relu(CAM[:, :, 1])), zero where network m predicts class 0
        when ``gate``; ``pred`` ``(N, M)`` int64 predicted classes.
    """
    logits, cams = model(zscore_per_sample(images))
    pred = logits.argmax(dim=-1)
    maps = minmax_normalize(cams[:, :, 1].float())
    return (gate_maps(maps, pred) if gate else maps), pred


def class_maps(
    model: torch.nn.Module, images: torch.Tensor, map_type: str = "cam", gate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised target maps of ``map_type`` (one of :data:`MAP_TYPES`): ``(maps (N, M, H, W) in
    [0, 1], pred (N, M))`` as :func:`foreground_maps` returns them (``gate`` as there)."""
    if map_type == "cam":
        return foreground_maps(model, images, gate)
    if map_type in GRADCAM_METHODS:
        return gradcam_maps(model, images, map_type, gate=gate)
    raise ValueError(f"unknown map type {map_type!r}; choose one of {', '.join(MAP_TYPES)}")


def threshold_maps(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """``maps >= threshold`` as uint8 (a map zeroed by a negative prediction stays empty for any threshold
    > 0)."""
    return (maps >= threshold).to(torch.uint8)
