"""The public fused operators: argument checks in Python, then one ``torch.ops.mmcam`` call (conventions,
devices and error behaviour: :mod:`mmcam.ops`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmcam.ops import (
    checks,
    registration,  # noqa: F401  (fakes, autograd and autocast of the operators)
)
from mmcam.ops.extension import _C

__all__ = ["warp_normalized", "equivariance_loss", "fused_equivariance_terms"]

_ops = torch.ops.mmcam
_BUILD = _C.build_info()


def _check_kernels_built(t: torch.Tensor, name: str) -> None:
    """The fused operators run where the extension has kernels: the CPU always, CUDA when it was built
    with its CUDA kernels. Read once at import, so the check is static under ``torch.compile``."""
    kind = t.device.type
    if kind == "cuda" and not _BUILD["cuda"]:
        raise RuntimeError(
            f"{name} is on {t.device}, but mmcam was built without CUDA kernels ({_BUILD['cuda_status']}). "
            "Rebuild with the CUDA toolkit's nvcc on PATH: "
            "MMCAM_CUDA=on pip install --no-build-isolation --force-reinstall --no-deps . "
            "(see README.md, Install)"
        )
    if kind not in ("cpu", "cuda"):
        raise RuntimeError(f"{name} is on {t.device}; mmcam's fused operators run on cpu and cuda")


def warp_normalized(
    src: torch.Tensor, matrix: torch.Tensor, dsize: Sequence[int], *, eps: float = 1e-8
) -> torch.Tensor:
    """Min-max normalise each plane of ``src``, then warp it bilinearly with zero padding.

    Args:
        src: ``(N, C, Hs, Ws)`` raw CAMs (any strides; dtypes per device, see the module docstring).
        matrix: ``(N, 2, 3)`` source->destination pixel affine.
        dsize: ``(Hd, Wd)`` output size.
        eps: the ``eps`` of ``mn``.

    Returns:
        ``P`` ``(N, C, Hd, Wd)``, contiguous, same dtype as ``src``; equal to
        ``kornia.geometry.transform.warp_affine(mn(src), matrix, dsize, align_corners=True)``.

    Raises:
        ValueError: on the CPU, a non-invertible (singular or non-finite) ``matrix``, naming the sample; on
            CUDA that sample's outputs and gradients are NaN instead (see the module docstring).
    """
    h, w = checks.check_warp_args(src, matrix, dsize, eps)
    _check_kernels_built(src, "src")
    return _ops.warp_normalized(src, matrix, [int(h), int(w)], float(eps))


def equivariance_loss(
    src: torch.Tensor,
    matrix: torch.Tensor,
    dst: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    distance: str = "sq_l2",
    l2_normalize: bool = False,
    eps: float = 1e-8,
    l2_eps: float = 1e-12,
    reduction: str = "mean",
) -> torch.Tensor:
    """Fused warp + normalisation + distance between two views' CAMs.

    ``P = warp(mn(src))`` to ``dst``'s size, ``Q = mn(dst)``; with ``l2_normalize`` each plane of ``P`` and
    ``Q`` is divided by ``||plane + l2_eps||_F``; ``d = (P - Q)^2`` (``"sq_l2"``) or ``|P - Q|`` (``"l1"``),
    weighted per sample by ``weight`` (no gradient).

    Args:
        src: ``(N, C, Hs, Ws)`` raw CAMs of the untransformed view.
        matrix: ``(N, 2, 3)`` source->destination pixel affine.
        dst: ``(N, C, Hd, Wd)`` raw CAMs of the transformed view (same dtype/device as ``src``).
        weight: optional ``(N,)`` per-sample weights.
        reduction: ``"mean"`` -> ``sum(w d) / (N C Hd Wd)`` (0-dim); ``"sum"`` -> ``sum(w d)`` (0-dim);
            ``"none"`` -> ``(N,)`` with ``sum_{c,h,w}(w d) / (C Hd Wd)``.

    Gradients flow to ``src`` and ``dst`` (pass a detached tensor for a stop-gradient target; no work is
    spent on inputs that do not require grad). On the CPU: bitwise equal results for any thread count.

    Raises:
        ValueError: on the CPU, a non-invertible (singular or non-finite) ``matrix``, naming the sample; on
            CUDA that sample's loss and gradients are NaN instead, exact zeros when its weight is 0 (see the
            module docstring).
    """
    checks.check_equivariance_args(src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps, reduction)
    _check_kernels_built(src, "src")
    return _ops.equivariance_loss(
        src, matrix, dst, weight, distance, l2_normalize, float(eps), float(l2_eps), reduction
    )


def fused_equivariance_terms(
    cams: torch.Tensor,
    cams_t: torch.Tensor,
    matrix: torch.Tensor,
    labels: torch.Tensor,
    pred_mask: torch.Tensor,
    pred_t_mask: torch.Tensor,
    *,
    er_distance: str = "sq_l2",
    eps: float = 1e-8,
    l2_eps: float = 1e-12,
) -> torch.Tensor:
    """Fused ER and CMER terms of all M networks (the operator behind ``mmcam.losses.equivariance_terms``).

    Args:
        cams: ``(N, M, Hs, Ws)`` raw foreground CAMs of the original view, one channel per modality.
        cams_t: ``(N, M, Hd, Wd)`` raw foreground CAMs of the transformed view.
        matrix: ``(N, 2, 3)`` source->destination pixel affine of the transform.
        labels: ``(N,)`` slice labels y as floats (0 or 1).
        pred_mask, pred_t_mask: ``(N, M)`` floats, 1 where network m predicts class 1 on the original /
            transformed view.

    Pairs of weight 0 are skipped on both devices: in ``CMER_i`` the pair ``(A_i, B_j)`` of sample ``n`` is
    added only when ``labels[n] * pred_t_mask[n, j] != 0`` and ``(B_i, A_j)`` only when
    ``labels[n] * pred_mask[n, j] != 0`` (a sample with label 0 is skipped entirely). So a non-finite map of
    network ``j`` (a NaN in its CAM, or ``l2_eps = 0`` with a plane that is all <= 0, whose unit map is
    0 / 0) reaches network ``i``'s terms and gradients only through a pair that counts; the forward and
    backward passes agree on this.

    Returns:
        ``(2, M)``: row 0 the ER loss of each network, row 1 its CMER loss (docs/method.md). Each plane is
        normalised, warped and L2-normalised once and reused by every term; when a gradient is needed the
        forward pass keeps the warped maps ``(N, M, Hd, Wd)`` and per-plane statistics for the backward
        pass, which then does not warp or reduce the source planes again. Inputs are validated by the
        caller (``mmcam.losses.equivariance_terms``).

    Raises:
        ValueError: on the CPU, a non-invertible (singular or non-finite) ``matrix``, naming the sample; on
            CUDA that sample's terms and gradients are NaN instead, exact zeros when its label is 0 (see the
            module docstring).
    """
    _check_kernels_built(cams, "cams")
    keep = torch.is_grad_enabled() and (cams.requires_grad or cams_t.requires_grad)
    terms, _warped, _stats = _ops.equivariance_terms(
        cams, cams_t, matrix, labels, pred_mask, pred_t_mask, er_distance, float(eps), float(l2_eps), keep
    )
    return terms
