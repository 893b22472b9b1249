"""Per-plane normalisation of class-activation maps: min-max after a ReLU (``mn`` of docs/method.md), used for
pseudo-masks, Grad-CAM and by the eager references of the fused operator, and the per-plane L2
normalisation of the cross-modality term, and the zeroing of maps where the classifier says "no target"
(:func:`gate_maps`). Plain PyTorch, no other dependency."""

from __future__ import annotations

import torch

__all__ = ["minmax_normalize", "l2_normalize_planes", "gate_maps"]


def minmax_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    r"""Min-max normalise every ``H x W`` plane of a CAM after a ReLU.

    .. math::
        r = \mathrm{relu}(x),\quad
        \mathrm{mn}(x) = \frac{\mathrm{relu}((r - \min r) - \epsilon)}{(\max r - \min r) + \epsilon}

    with min and max over the last two axes. The gradient of the min and max follows
    :func:`torch.amin` / :func:`torch.amax`: tied extrema share it evenly. An all-negative or
    constant plane maps to zeros. The operation order is the one the C++ kernel reproduces.

    Args:
        x: tensor of shape :math:`(*, H, W)`.
        eps: :math:`\epsilon \ge 0`.

    Returns:
        tensor of the shape and dtype of ``x``, values in :math:`[0, 1)`.
    """
    r = torch.relu(x)
    lo = r.amin(dim=(-2, -1), keepdim=True)
    hi = r.amax(dim=(-2, -1), keepdim=True)
    return torch.relu((r - lo) - eps) / ((hi - lo) + eps)


def l2_normalize_planes(x: torch.Tensor, l2_eps: float = 1e-12) -> torch.Tensor:
    r"""Divide every ``H x W`` plane by the Frobenius norm of (plane + ``l2_eps``).

    .. math:: x / \sqrt{\textstyle\sum_{h,w} (x_{hw} + \epsilon_2)^2}

    Args:
        x: tensor of shape :math:`(*, H, W)`.
        l2_eps: :math:`\epsilon_2`, keeps an all-zero plane finite (it maps to zeros).

    Returns:
        tensor of the shape and dtype of ``x``.
    """
    return x / torch.sqrt(((x + l2_eps) ** 2).sum(dim=(-2, -1), keepdim=True))


def gate_maps(maps: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``maps`` ``(N, M, H, W)`` zeroed where ``pred`` ``(N, M)`` is class 0 ("no target")."""
    return maps * (pred == 1)[:, :, None, None].to(maps.dtype)
