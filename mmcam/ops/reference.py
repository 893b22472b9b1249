"""Eager reference implementations of the fused operators in :mod:`mmcam.ops`.

These functions are the ground truth the C++/CUDA kernels are tested against. They are written for
clarity, not speed, in plain PyTorch, with two independent warps:

- ``*_kornia``: :func:`kornia.geometry.transform.warp_affine` (kornia >= 0.9);
- ``*_torch``: :func:`torch.nn.functional.affine_grid` + :func:`torch.nn.functional.grid_sample`.

Conventions (docs/operator.md):

- CAM planes are ``(N, C, H, W)``; every ``H x W`` plane is normalised on its own.
- ``matrix`` is the ``(N, 2, 3)`` source->destination **pixel** affine of kornia 0.9: integer
  coordinates ``(x, y)`` are pixel centres, ``x`` indexes columns and ``y`` rows, and the warp samples
  ``dst(x, y) = src(M^-1 (x, y, 1))`` bilinearly with zero padding (``align_corners=True``).
- ``matrix`` is not differentiated (it is detached), as in the fused operator.
- The warp runs in ``torch.promote_types(src.dtype, matrix.dtype)`` and returns ``src.dtype``; the
  loss runs in that dtype and returns ``src.dtype``.
- A singleton source axis (``H == 1`` or ``W == 1``) follows ``grid_sample(align_corners=True)``: every
  sample along that axis reads the single pixel (it is never out of bounds). The fused operator and
  :func:`mmcam.transforms.warp_images` treat it as one pixel centre instead (zero outside it).
- Only metadata is validated (``mmcam.ops.checks``); a singular or non-finite matrix is not detected here
  (no host sync, so the references stay ``torch.compile``-friendly for the benchmarks).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmcam.cams.normalize import l2_normalize_planes, minmax_normalize
from mmcam.ops.checks import check_equivariance_args, check_matrix, check_tensor, check_warp_args
from mmcam.transforms import invert_matrix

__all__ = [
    "minmax_normalize",
    "l2_normalize_planes",
    "pixel_matrix_to_theta",
    "warp_normalized_kornia",
    "warp_normalized_torch",
    "equivariance_loss_kornia",
    "equivariance_loss_torch",
]


def _normalization(size: int) -> tuple[float, float, float, float]:
    """Pixel <-> [-1, 1] for ``align_corners=True`` as ``(scale, offset, inv_scale, inv_offset)``:
    ``n = scale * x + offset`` and ``x = inv_scale * n + inv_offset``; a singleton axis maps to 0."""
    if size == 1:
        return 1.0, 0.0, 1.0, 0.0
    half = (size - 1) / 2.0
    return 2.0 / (size - 1), -1.0, half, half


def pixel_matrix_to_theta(matrix: torch.Tensor, src_size: Sequence[int], dst_size: Sequence[int]) -> torch.Tensor:
    r"""Turn a source->destination pixel affine into the ``theta`` of :func:`F.affine_grid`.

    ``affine_grid`` wants the inverse map, destination -> source, in normalised coordinates
    (``align_corners=True``: pixel centre ``0`` -> ``-1``, ``size - 1`` -> ``+1``; a singleton axis
    maps its pixel to ``0``, as kornia does). So ``theta = N_src @ M^-1 @ N_dst^-1`` (top two rows).

    Args:
        matrix: source->destination pixel affine of shape :math:`(N, 2, 3)`, floating point.
        src_size: source size ``(H_src, W_src)``.
        dst_size: destination size ``(H_dst, W_dst)``.

    Returns:
        ``theta`` of shape :math:`(N, 2, 3)`, in the dtype of ``matrix``.
    """
    check_tensor(matrix, "matrix", 3, "(N, 2, 3)")
    check_matrix(matrix, matrix.shape[0], matrix.device)
    inv = invert_matrix(matrix)  # destination pixel -> source pixel
    sy_s, oy_s, _, _ = _normalization(int(src_size[0]))
    sx_s, ox_s, _, _ = _normalization(int(src_size[1]))
    _, _, sy_d, oy_d = _normalization(int(dst_size[0]))
    _, _, sx_d, ox_d = _normalization(int(dst_size[1]))
    dtype, device = matrix.dtype, matrix.device
    norm_src = torch.tensor([[sx_s, 0.0, ox_s], [0.0, sy_s, oy_s], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    denorm_dst = torch.tensor([[sx_d, 0.0, ox_d], [0.0, sy_d, oy_d], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    last_row = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=dtype, device=device)
    inv3 = torch.cat([inv, last_row.expand(inv.shape[0], 1, 3)], dim=1)
    return (norm_src @ inv3 @ denorm_dst)[:, :2, :]


def _work_dtype(src: torch.Tensor, matrix: torch.Tensor) -> torch.dtype:
    return torch.promote_types(src.dtype, matrix.dtype)


def _warp_kornia(src: torch.Tensor, matrix: torch.Tensor, dsize: tuple[int, int], eps: float) -> torch.Tensor:
    """Normalise + warp in the working dtype (no argument checks). kornia is imported here, where a
    reference runs, so that importing mmcam (e.g. for inference) does not import it."""
    import kornia.geometry.transform

    dt = _work_dtype(src, matrix)
    return kornia.geometry.transform.warp_affine(
        minmax_normalize(src.to(dt), eps),
        matrix.detach().to(dt),
        dsize,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )


def _warp_torch(src: torch.Tensor, matrix: torch.Tensor, dsize: tuple[int, int], eps: float) -> torch.Tensor:
    """Normalise + warp in the working dtype (no argument checks)."""
    dt = _work_dtype(src, matrix)
    n, c = src.shape[:2]
    theta = pixel_matrix_to_theta(matrix.detach().to(dt), src.shape[-2:], dsize)
    if min(dsize) == 1:  # a singleton output axis samples coordinate 0, as in kornia; silence torch's note
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*affine_grid behavior has changed for unit-size")
            grid = F.affine_grid(theta, [n, c, dsize[0], dsize[1]], align_corners=True)
    else:
        grid = F.affine_grid(theta, [n, c, dsize[0], dsize[1]], align_corners=True)
    return F.grid_sample(
        minmax_normalize(src.to(dt), eps), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )


def warp_normalized_kornia(
    src: torch.Tensor, matrix: torch.Tensor, dsize: tuple[int, int], *, eps: float = 1e-8
) -> torch.Tensor:
    r"""``P = warp_affine(mn(src), matrix, dsize)`` with kornia (bilinear, zero padding, corner-aligned).

    Args:
        src: raw CAMs of shape :math:`(N, C, H_s, W_s)`.
        matrix: source->destination pixel affine of shape :math:`(N, 2, 3)` (not differentiated).
        dsize: output size ``(H_d, W_d)``.
        eps: min-max normalisation epsilon (:func:`minmax_normalize`).

    Returns:
        the warped normalised maps, shape :math:`(N, C, H_d, W_d)`, dtype of ``src``.
    """
    dsize = check_warp_args(src, matrix, dsize, eps)
    return _warp_kornia(src, matrix, dsize, eps).to(src.dtype)


def warp_normalized_torch(
    src: torch.Tensor, matrix: torch.Tensor, dsize: tuple[int, int], *, eps: float = 1e-8
) -> torch.Tensor:
    r"""Same as :func:`warp_normalized_kornia`, via ``F.affine_grid`` + ``F.grid_sample``.

    The pixel matrix is inverted and converted to normalised coordinates by
    :func:`pixel_matrix_to_theta` in ``promote_types(src.dtype, matrix.dtype)``.

    Args:
        src: raw CAMs of shape :math:`(N, C, H_s, W_s)`.
        matrix: source->destination pixel affine of shape :math:`(N, 2, 3)` (not differentiated).
        dsize: output size ``(H_d, W_d)``.
        eps: min-max normalisation epsilon.

    Returns:
        the warped normalised maps, shape :math:`(N, C, H_d, W_d)`, dtype of ``src``.
    """
    dsize = check_warp_args(src, matrix, dsize, eps)
    return _warp_torch(src, matrix, dsize, eps).to(src.dtype)


def _equivariance_from_warped(
    p: torch.Tensor,
    dst: torch.Tensor,
    weight: torch.Tensor | None,
    distance: str,
    l2_normalize: bool,
    eps: float,
    l2_eps: float,
    reduction: str,
) -> torch.Tensor:
    """The arithmetic after the warp, shared by both references; runs in ``p.dtype``."""
    q = minmax_normalize(dst.to(p.dtype), eps)
    if l2_normalize:
        p, q = l2_normalize_planes(p, l2_eps), l2_normalize_planes(q, l2_eps)
    d = (p - q) ** 2 if distance == "sq_l2" else (p - q).abs()
    n, c, h, w = d.shape
    if weight is None:
        w_n = torch.ones(n, dtype=d.dtype, device=d.device)
    else:
        w_n = weight.detach().to(d.dtype)
    wd = w_n[:, None, None, None] * d
    if reduction == "mean":
        return wd.sum() / (n * c * h * w)
    if reduction == "sum":
        return wd.sum()
    return wd.sum(dim=(1, 2, 3)) / (c * h * w)


def equivariance_loss_kornia(
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
    r"""Equivariance distance between warped normalised ``src`` and normalised ``dst`` (kornia warp).

    ``P = warp(mn(src))``, ``Q = mn(dst)``; optionally ``P, Q`` divided plane-wise by
    ``||plane + l2_eps||``; ``d = (P - Q)^2`` (``"sq_l2"``) or ``|P - Q|`` (``"l1"``), weighted by
    ``weight[n]`` (detached; ones when ``None``).

    Args:
        src: raw CAMs of the untransformed view, shape :math:`(N, C, H_s, W_s)`.
        matrix: source->destination pixel affine, shape :math:`(N, 2, 3)` (not differentiated).
        dst: raw CAMs of the transformed view, shape :math:`(N, C, H_d, W_d)`.
        weight: per-sample weights of shape :math:`(N,)`, or ``None``.
        distance: ``"sq_l2"`` or ``"l1"``.
        l2_normalize: divide each plane of ``P`` and ``Q`` by its norm first.
        eps: min-max normalisation epsilon.
        l2_eps: L2 normalisation epsilon.
        reduction: ``"mean"``: :math:`\sum w d / (N C H_d W_d)`; ``"sum"``: :math:`\sum w d`;
            ``"none"``: per sample :math:`\sum_{c,h,w} w d / (C H_d W_d)`, shape :math:`(N,)`.

    Returns:
        a scalar (``"mean"``, ``"sum"``) or an :math:`(N,)` tensor (``"none"``), dtype of ``src``.
    """
    check_equivariance_args(src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps, reduction)
    p = _warp_kornia(src, matrix, (dst.shape[-2], dst.shape[-1]), eps)
    return _equivariance_from_warped(p, dst, weight, distance, l2_normalize, eps, l2_eps, reduction).to(src.dtype)


def equivariance_loss_torch(
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
    r"""Same as :func:`equivariance_loss_kornia`, with the ``affine_grid`` + ``grid_sample`` warp."""
    check_equivariance_args(src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps, reduction)
    p = _warp_torch(src, matrix, (dst.shape[-2], dst.shape[-1]), eps)
    return _equivariance_from_warped(p, dst, weight, distance, l2_normalize, eps, l2_eps, reduction).to(src.dtype)
