"""Grad-CAM and Grad-CAM++ of each modality's network, the baselines of docs/evaluation.md.

For network ``m`` of a :class:`~mmcam.models.MultiModalCAM`, with ``A`` the ``(N, C, h, w)`` output of
its backbone layer (``model.backbone_name(m)``, the ``conv3x3 + BN + ReLU`` before the classifier),
``y = logits[:, m, 1]`` the class-1 ("target") score and ``g = ∂y/∂A``:

- Grad-CAM (Selvaraju et al., ICCV 2017): ``w_c = mean_{h,w} g_c``, ``map = relu(Σ_c w_c A_c)``;
- Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19, the exponential-score closed form):
  ``α = g² / (2 g² + (Σ_{h,w} A_c) g³)`` (0 where ``g = 0``), ``w_c = Σ_{h,w} α relu(g)``,
  ``map = relu(Σ_c w_c A_c)``.

The map is brought to the input's ``(H, W)`` (the network zero-pads inputs to a multiple of 8 and its
backbone output has the padded size: the padding is cropped off, split as the network splits it; a
smaller map is upsampled bilinearly), then treated exactly like the CAM (:mod:`mmcam.cams.pseudo_masks`):
min-max normalised per slice (:func:`mmcam.cams.normalize.minmax_normalize`) and zeroed where the network
predicts class 0.

For this architecture the class score is the spatial mean of a 1x1 convolution of ``A``, so ``g`` is
constant over ``(h, w)`` and Grad-CAM equals the CAM after normalisation (up to the ``ε`` of the
min-max); Grad-CAM++ weighs the channels differently. The tests check the first property.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcam.cams.normalize import gate_maps, minmax_normalize
from mmcam.models import check_images, unwrap_model, zscore_per_sample

__all__ = ["GRADCAM_METHODS", "gradcam_maps", "gradcam_weights"]

#: The methods of :func:`gradcam_maps`.
GRADCAM_METHODS = ("gradcam", "gradcampp")


def gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor, method: str) -> torch.Tensor:
    """Channel weights ``(N, C)`` of ``method`` from the layer's ``activations`` and ``gradients``
    (both ``(N, C, h, w)``)."""
    if method == "gradcam":
        return gradients.mean(dim=(-2, -1))
    if method == "gradcampp":
        g2 = gradients * gradients
        denominator = 2.0 * g2 + activations.sum(dim=(-2, -1), keepdim=True) * g2 * gradients
        alpha = torch.where(gradients != 0, g2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
        return (alpha * torch.relu(gradients)).sum(dim=(-2, -1))
    raise ValueError(f"unknown Grad-CAM method {method!r}; choose one of {', '.join(GRADCAM_METHODS)}")


def _to_input_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` -> ``(N, H, W)``: crop the network's padding (``(h - H) // 2`` before, as
    :class:`~mmcam.models.CAMUNet` pads) or upsample bilinearly when the map is smaller."""
    h, w = maps.shape[-2:]
    H, W = size
    if h >= H and w >= W:
        top, left = (h - H) // 2, (w - W) // 2
        return maps[:, top : top + H, left : left + W]
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def gradcam_maps(
    model: torch.nn.Module, images: torch.Tensor, method: str = "gradcam", target_class: int = 1, gate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised Grad-CAM (``method="gradcam"``) or Grad-CAM++ (``"gradcampp"``) maps of every
    modality's network, in the format of :func:`mmcam.cams.pseudo_masks.foreground_maps`.

    Args:
        model: a :class:`~mmcam.models.MultiModalCAM` in eval mode (possibly wrapped). Its parameters'
            ``.grad`` are not touched (gradients are taken with respect to the hooked activations only).
        images: ``(N, M, H, W)`` raw (cache-normalised) slices; z-scored here as in training.
        method: one of :data:`GRADCAM_METHODS`.
        target_class: the class whose score is explained (1 = target).
        gate: zero the map where the network predicts class 0 (``False``: keep every map).

    Returns:
        ``maps`` ``(N, M, H, W)`` float32 in [0, 1], zero where network ``m`` predicts class 0 when ``gate``;
        ``pred`` ``(N, M)`` int64 predicted classes.
    """
    if method not in GRADCAM_METHODS:
        raise ValueError(f"unknown Grad-CAM method {method!r}; choose one of {', '.join(GRADCAM_METHODS)}")
    model = unwrap_model(model)
    check_images(images, model.modalities)
    inputs = zscore_per_sample(images.detach().float())
    maps, predictions = [], []
    for m, name in enumerate(model.modalities):
        captured = []
        layer = model.get_submodule(model.backbone_name(m))
        handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
        try:
            with torch.enable_grad():
                logits, _ = model.network(name)(inputs[:, m : m + 1])
                (gradients,) = torch.autograd.grad(logits[:, target_class].sum(), captured[0])
        finally:
            handle.remove()
        activations = captured[0].detach()
        weights = gradcam_weights(activations, gradients, method)
        heat = torch.relu((weights[:, :, None, None] * activations).sum(dim=1))
        heat = _to_input_size(heat, (images.shape[-2], images.shape[-1])).float()
        # scale to a maximum of 1 first, so that the ε of the min-max is as small as for the CAM
        heat = minmax_normalize(heat / heat.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30))
        pred = logits.detach().argmax(dim=-1)
        maps.append(heat)
        predictions.append(pred)
    maps_, pred_ = torch.stack(maps, dim=1), torch.stack(predictions, dim=1)
    return (gate_maps(maps_, pred_) if gate else maps_), pred_
