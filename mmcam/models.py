"""The per-modality U-Net CAM network of the method and the multi-modal container (docs/method.md).

One :class:`CAMUNet` per MRI modality, trained from scratch, no weight sharing:

- encoder: a double conv block (``conv3x3 + BN + ReLU`` twice) at full resolution, then three times
  ``max-pool 2x2`` + double conv block; widths ``64-128-256-256`` divided by ``width_divisor``
  (1 for BraTS, 4 for prostate; 8, 16, ... for CPU smoke runs);
- decoder: three times ``nearest-neighbour upsampling x2`` + concatenation with the encoder feature of the
  same resolution (skip connection) + double conv block, with output widths ``128-64-64`` (divided the same
  way), i.e. each decoder block halves the width of the deeper feature it receives, down to the first
  encoder width;
- ``backbone``: one more ``conv3x3 + BN + ReLU`` (the layer Grad-CAM hooks, see :data:`BACKBONE_LAYER`);
- ``classifier``: a ``1x1`` conv **without bias** to the 2 classes: the class activation map
  ``A`` ``(N, 2, H, W)`` at the input resolution; the logits are its global average ``z = mean_{h,w} A``.

Convolutions followed by batch normalisation carry no bias (BN's shift replaces it). Every conv weight
is initialised Xavier-normal (gain 1); BN starts at weight 1, bias 0.

Input size: the three poolings need ``H`` and ``W`` divisible by 8. Any other size is accepted: the input
is zero-padded to the next multiple of 8 (split evenly, the extra pixel at the bottom/right), and the CAM
is cropped back to ``(H, W)`` before the global average, so ``z`` is always the mean of the returned CAM.
Zero is the mean intensity of a z-scored image (:func:`zscore_per_sample`), so the padding looks like
the zero fill the transforms and the convolutions already use.

The network expects z-scored input: call :func:`zscore_per_sample` on every view (after the transform
π in training; at inference on the plain slices) before :meth:`MultiModalCAM.forward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BASE_WIDTHS",
    "BACKBONE_LAYER",
    "NUM_CLASSES",
    "CAMUNet",
    "MultiModalCAM",
    "zscore_per_sample",
    "check_images",
    "unwrap_model",
]

#: Encoder widths of the paper's BraTS network; each is divided by ``width_divisor``.
BASE_WIDTHS = (64, 128, 256, 256)
#: Attribute name of the ``conv3x3 + BN + ReLU`` layer before the classifier (the Grad-CAM layer).
BACKBONE_LAYER = "backbone"
#: Classes of the CAM: 0 = no target, 1 = target (the foreground channel of the equivariance terms).
NUM_CLASSES = 2
_DOWNSAMPLING = 2**3  # three max-pools


# ----------------------------------------------------------------------------------- input norm
def zscore_per_sample(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Per-sample, per-channel z-score over ``H x W`` (docs/method.md: "applied after π").

    .. math:: \hat x_{n,c} = \frac{x_{n,c} - \mathrm{mean}_{h,w}\, x_{n,c}}
                                  {\max(\mathrm{std}_{h,w}\, x_{n,c},\ \epsilon)}

    with the population standard deviation (no Bessel correction). In training it is applied to each view
    *after* the transform, so the zero fill of a translation or rotation enters the statistics of the
    transformed view. A constant plane (e.g. an empty slice) maps to zeros, never NaN.

    Args:
        images: ``(N, C, H, W)`` floating-point images (any strides).
        eps: lower bound of the standard deviation, ``> 0``.

    Returns:
        ``(N, C, H, W)`` tensor of the dtype of ``images``; differentiable.

    Raises:
        TypeError: ``images`` is not a floating-point tensor, or ``eps`` is not a number.
        ValueError: wrong rank, empty spatial size, or ``eps <= 0``.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if images.shape[-1] == 0 or images.shape[-2] == 0:
        raise ValueError(f"images has an empty spatial size {tuple(images.shape[-2:])}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {eps!r}")
    if not 0.0 < eps < float("inf"):
        raise ValueError(f"eps must be a finite positive float, got {eps!r}")
    var, mean = torch.var_mean(images, dim=(-2, -1), correction=0, keepdim=True)
    return (images - mean) / var.sqrt().clamp_min(eps)


# ------------------------------------------------------------------------------------- building blocks
def _conv_bn_relu(in_channels: int, out_channels: int, *, inplace: bool = True) -> list[nn.Module]:
    """``conv3x3 (padding 1, no bias) + BN + ReLU``: ``(N, in, H, W) -> (N, out, H, W)``."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=inplace),
    ]


class DoubleConv(nn.Sequential):
    """``(conv3x3 + BN + ReLU) x 2``: ``(N, in, H, W) -> (N, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(*_conv_bn_relu(in_channels, out_channels), *_conv_bn_relu(out_channels, out_channels))


class Down(nn.Sequential):
    """``max-pool 2x2`` + :class:`DoubleConv`: ``(N, in, H, W) -> (N, out, H/2, W/2)``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Nearest-neighbour upsampling x2, concatenation with the skip feature, :class:`DoubleConv`.

    ``forward(x (N, in, h, w), skip (N, skip, 2h, 2w)) -> (N, out, 2h, 2w)``; the concatenation is
    ``[skip, upsampled]`` along channels.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.upsample(x)], dim=1))


def _check_width_divisor(width_divisor: int) -> tuple[int, int, int, int]:
    """The four encoder widths for ``width_divisor`` (a positive int dividing 64)."""
    if isinstance(width_divisor, bool) or not isinstance(width_divisor, int):
        raise TypeError(f"width_divisor must be an int, got {width_divisor!r}")
    if width_divisor < 1 or BASE_WIDTHS[0] % width_divisor != 0:
        raise ValueError(
            f"width_divisor must be a positive divisor of {BASE_WIDTHS[0]} (1, 2, 4, 8, 16, 32, 64) so that "
            f"every width {BASE_WIDTHS} divides evenly; got {width_divisor}"
        )
    return tuple(w // width_divisor for w in BASE_WIDTHS)  # type: ignore[return-value]


def _padding_to_multiple(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) zero padding that makes ``size`` a multiple of ``multiple``, split evenly."""
    total = (-size) % multiple
    return total // 2, total - total // 2


# ------------------------------------------------------------------------------------------ network
class CAMUNet(nn.Module):
    """The U-Net CAM network of one modality (docs/method.md), see the module docstring for the layout.

    Args:
        width_divisor: divides the encoder widths ``64-128-256-256``: 1 (BraTS), 4 (prostate), or any
            other positive divisor of 64 (8, 16, 32 make CPU-sized networks).
        in_channels: input channels (1: one modality).

    Attributes:
        widths: the encoder widths ``(c0, c1, c2, c3)``.
        backbone: the ``conv3x3 + BN + ReLU`` layer feeding the classifier (Grad-CAM target), output
            ``(N, c0, H, W)``.
        classifier: the ``1x1`` conv without bias, ``c0 -> 2``.

    ``forward(x)`` takes ``(N, in_channels, H, W)`` (z-scored, any ``H, W >= 1``) and returns
    ``(logits (N, 2), cam (N, 2, H, W))`` with ``logits == cam.mean(dim=(-2, -1))``.
    """

    def __init__(self, width_divisor: int = 1, *, in_channels: int = 1):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        c0, c1, c2, c3 = self.widths = _check_width_divisor(width_divisor)
        self.in_channels = in_channels
        self.width_divisor = width_divisor
        self.inc = DoubleConv(in_channels, c0)  # H
        self.down1 = Down(c0, c1)  # H/2
        self.down2 = Down(c1, c2)  # H/4
        self.down3 = Down(c2, c3)  # H/8
        self.up1 = Up(c3, c2, c1)  # H/4
        self.up2 = Up(c1, c1, c0)  # H/2
        self.up3 = Up(c0, c0, c0)  # H
        # not in place: Grad-CAM hooks read this layer's output and its gradient
        self.backbone = nn.Sequential(*_conv_bn_relu(c0, c0, inplace=False))
        self.classifier = nn.Conv2d(c0, NUM_CLASSES, kernel_size=1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal conv weights (gain 1), zero conv biases, BN weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, in_channels, H, W) -> (logits (N, 2), cam (N, 2, H, W))``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h == 0 or w == 0:
            raise ValueError(f"x has an empty spatial size {(h, w)}")
        top, bottom = _padding_to_multiple(h, _DOWNSAMPLING)
        left, right = _padding_to_multiple(w, _DOWNSAMPLING)
        padded = top + bottom + left + right > 0
        if padded:
            x = F.pad(x, (left, right, top, bottom))

        s0 = self.inc(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        bottom_feature = self.down3(s2)
        f = self.up1(bottom_feature, s2)
        f = self.up2(f, s1)
        f = self.up3(f, s0)
        cam = self.classifier(self.backbone(f))

        if padded:
            # contiguous, so that the mean below reduces in the same order as any later mean of the CAM
            cam = cam[..., top : top + h, left : left + w].contiguous()
        logits = cam.mean(dim=(-2, -1))
        return logits, cam


# ------------------------------------------------------------------------------------- multi-modal
class MultiModalCAM(nn.Module):
    """One independent :class:`CAMUNet` per modality (no weight sharing), in a :class:`nn.ModuleDict`.

    Args:
        modalities: the modality names, in the channel order of the images (e.g. ``("t1", "t2")``);
            unique, non-empty, without ``"."``. Parameter names are ``networks.<modality>.<layer>...``.
        width_divisor: see :class:`CAMUNet` (the same for every network).

    ``forward(images)`` takes ``(N, M, H, W)`` z-scored images (channel ``m`` = modality
    ``modalities[m]``) and returns ``(logits (N, M, 2), cams (N, M, 2, H, W))``; network ``m`` sees only
    channel ``m``.
    """

    def __init__(self, modalities: Sequence[str], width_divisor: int = 1):
        super().__init__()
        if isinstance(modalities, str) or not isinstance(modalities, Sequence):
            raise TypeError(f"modalities must be a sequence of names such as ('t1', 't2'), got {modalities!r}")
        names = tuple(modalities)
        if not names:
            raise ValueError("modalities must name at least one modality")
        for name in names:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"every modality must be a non-empty str without '.', got {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"modalities must be unique, got {names}")
        self.modalities = names
        self.width_divisor = width_divisor
        networks = nn.ModuleDict()
        for name in names:
            try:
                networks[name] = CAMUNet(width_divisor)
            except KeyError as err:  # a name that collides with a ModuleDict attribute
                raise ValueError(f"modality name {name!r} cannot be used as a module name: {err}") from None
        self.networks = networks

    def __len__(self) -> int:
        return len(self.modalities)

    def modality_name(self, modality: str | int) -> str:
        """The name of ``modality`` given as its name or its channel index (negative counts from the end)."""
        if isinstance(modality, int) and not isinstance(modality, bool):
            if not -len(self) <= modality < len(self):
                raise IndexError(f"modality index {modality} out of range for {len(self)} modalities")
            return self.modalities[modality]
        if modality not in self.modalities:
            raise KeyError(f"unknown modality {modality!r}; the model has {self.modalities}")
        return modality

    def network(self, modality: str | int) -> CAMUNet:
        """The network of ``modality`` (its name or its channel index)."""
        # nn.ModuleDict is not generic: its items are typed as nn.Module
        return cast(CAMUNet, self.networks[self.modality_name(modality)])

    def backbone_name(self, modality: str | int) -> str:
        """Qualified name of the Grad-CAM layer of ``modality``, for :meth:`nn.Module.get_submodule`."""
        return f"networks.{self.modality_name(modality)}.{BACKBONE_LAYER}"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, M, H, W) -> (logits (N, M, 2), cams (N, M, 2, H, W))``."""
        check_images(images, self.modalities)
        outputs = [self.networks[name](images[:, m : m + 1]) for m, name in enumerate(self.modalities)]
        logits = torch.stack([z for z, _ in outputs], dim=1)
        cams = torch.stack([a for _, a in outputs], dim=1)
        return logits, cams


def check_images(images: torch.Tensor, modalities: Sequence[str]) -> None:
    """``images`` must be a floating-point ``(N, M, H, W)`` tensor with ``M == len(modalities)``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, M, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, M, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if images.shape[1] != len(modalities):
        raise ValueError(
            f"images has M={images.shape[1]} channels (shape {tuple(images.shape)}) but the model has "
            f"{len(modalities)} modalities {tuple(modalities)}"
        )
    if images.shape[0] == 0 or images.shape[-1] == 0 or images.shape[-2] == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")


def unwrap_model(model: nn.Module) -> MultiModalCAM:
    """The :class:`MultiModalCAM` inside ``model``, through DDP / DataParallel (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers."""
    inner: nn.Module | torch.Tensor = model  # what nn.Module's attribute lookup is typed to return
    for _ in range(8):  # wrappers nest at most a few levels
        if isinstance(inner, MultiModalCAM):
            return inner
        if isinstance(inner, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = inner.module
        elif hasattr(inner, "_orig_mod"):
            inner = inner._orig_mod
        else:
            break
    raise TypeError(f"model must be a mmcam.models.MultiModalCAM (possibly wrapped), got {type(model).__name__}")
