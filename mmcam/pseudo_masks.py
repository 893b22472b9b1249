"""CAM -> pseudo-mask (DESIGN §5): the foreground CAM, relu, min-max normalised per slice, zeroed where
the classifier predicts "no target", then thresholded."""

from __future__ import annotations

import torch

from mmcam.models import zscore_per_sample
from mmcam.reference import minmax_normalize


@torch.no_grad()
def foreground_maps(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised foreground maps and predicted classes of every modality's network.

    Args:
        model: a :class:`mmcam.models.MultiModalCAM` (in eval mode).
        images: ``(N, M, H, W)`` raw (cache-normalised) slices; z-scored here as in training.

    Returns:
        ``maps`` ``(N, M, H, W)`` in [0, 1]: mn(relu(CAM[:, :, 1])), zero where network m predicts class 0;
        ``pred`` ``(N, M)`` int64 predicted classes.
    """
    logits, cams = model(zscore_per_sample(images))
    pred = logits.argmax(dim=-1)
    maps = minmax_normalize(cams[:, :, 1].float())
    return maps * (pred == 1)[:, :, None, None].to(maps.dtype), pred


def threshold_maps(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """``maps >= threshold`` as uint8 (a map zeroed by a negative prediction stays empty for any threshold
    > 0)."""
    return (maps >= threshold).to(torch.uint8)
