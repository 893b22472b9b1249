"""The fused equivariance operators (DESIGN §2), registered with the PyTorch dispatcher.

Each public function validates its arguments (shapes, dtypes, devices, options) and calls an operator of
the ``torch.ops.mmcam`` namespace, implemented in C++ (``csrc/``). The operators carry a fake (meta)
implementation and an autograd formula, so they work under ``torch.compile(fullgraph=True)`` and pass
``torch.library.opcheck``.

Conventions:
    * CAMs are channel-first ``(N, C, H, W)``; a *plane* is one ``(H, W)`` map of one sample and channel.
    * ``matrix`` ``(N, 2, 3)`` is the source->destination PIXEL affine of kornia 0.9: integer coordinates
      are pixel centres and ``dst(x, y) = src(M^-1 (x, y, 1))``. It is never differentiated.
    * ``mn(a) = relu(relu(a) - lo - eps) / (hi - lo + eps)`` with ``lo``/``hi`` the min/max of
      ``relu(a)`` over each plane (ties share the gradient, as ``amin``/``amax``).
    * Samples with weight 0 are skipped: they contribute exactly 0 to the loss and get exactly 0 gradient.

Devices: CPU (float32/float64; parallel over planes, bitwise deterministic for any thread count) and CUDA
when the extension was built with its kernels (``mmcam.build_info()["cuda"]``; float32/float64 and
float16/bfloat16 computed in float32). On CUDA the backward scatters with atomics by default and gathers
deterministically (bitwise reproducible) under ``torch.use_deterministic_algorithms(True)``.

A non-invertible ``matrix`` (a non-finite entry or a zero determinant) is an error, never turned into
finite numbers. On the CPU every operator, forward and backward, raises ``ValueError`` naming the sample.
On CUDA no call synchronises with the host, so nothing is raised: instead every output of that sample
that is not skipped is NaN, so that a non-finite check (e.g. the trainer's) catches it:

    * ``warp_normalized``: the sample's planes of ``P`` and of the gradient to ``src``;
    * ``equivariance_loss``: its per-sample loss (so the reduced loss too) and its gradients to ``src`` and
      ``dst``, unless its weight is 0 (then exact zeros, as for any skipped sample);
    * ``equivariance_terms``: every ER term and every CMER term of non-zero weight it enters, and its
      gradients to ``cams`` and ``cams_t``, unless its label is 0 (then exact zeros).

``mmcam.losses.equivariance_terms`` checks matrices (one host sync) before calling the operator, so it
raises ``ValueError`` on both devices.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from mmcam import _checks
from mmcam._extension import _C  # noqa: F401  (loading it registers torch.ops.mmcam)

__all__ = ["warp_normalized", "equivariance_loss", "equivariance_terms"]

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


def warp_normalized(src: torch.Tensor, matrix: torch.Tensor, dsize: Sequence[int], *, eps: float = 1e-8) -> torch.Tensor:
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
    h, w = _checks.check_warp_args(src, matrix, dsize, eps)
    _check_kernels_built(src, "src")
    return _ops.warp_normalized(src, matrix, [int(h), int(w)], float(eps))


def equivariance_loss(
    src: torch.Tensor,
    matrix: torch.Tensor,
    dst: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
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
    _checks.check_equivariance_args(src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps, reduction)
    _check_kernels_built(src, "src")
    return _ops.equivariance_loss(src, matrix, dst, weight, distance, l2_normalize, float(eps), float(l2_eps), reduction)


def equivariance_terms(
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
        ``(2, M)``: row 0 the ER loss of each network, row 1 its CMER loss (DESIGN §1). Each plane is
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
    terms, _warped, _stats = _ops.equivariance_terms(cams, cams_t, matrix, labels, pred_mask, pred_t_mask, er_distance,
                                                     float(eps), float(l2_eps), keep)
    return terms


# --- shape functions for FakeTensor / torch.compile -------------------------------------------------


def _grad_like(t: torch.Tensor, needed: bool) -> torch.Tensor:
    return t.new_empty(t.shape) if needed else t.new_empty((0,))


@torch.library.register_fake("mmcam::warp_normalized")
def _warp_normalized_fake(src, matrix, dsize, eps):
    return src.new_empty((src.shape[0], src.shape[1], dsize[0], dsize[1]))


@torch.library.register_fake("mmcam::warp_normalized_backward")
def _warp_normalized_backward_fake(grad, src, matrix, eps):
    return src.new_empty(src.shape)


@torch.library.register_fake("mmcam::equivariance_loss")
def _equivariance_loss_fake(src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps, reduction):
    return src.new_empty((src.shape[0],) if reduction == "none" else ())


@torch.library.register_fake("mmcam::equivariance_loss_backward")
def _equivariance_loss_backward_fake(grad, src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps,
                                     reduction, need_src, need_dst):
    return _grad_like(src, need_src), _grad_like(dst, need_dst)


_KEPT_STATS_PER_PLANE = 8  # see StatSlot in csrc/cpu/equivariance_terms_cpu.cpp


@torch.library.register_fake("mmcam::equivariance_terms")
def _equivariance_terms_fake(cams, cams_t, matrix, labels, pred_mask, pred_t_mask, er_distance, eps, l2_eps, keep):
    n, m = cams.shape[:2]
    terms = cams.new_empty((2, m))
    if not keep:
        return terms, cams.new_empty((0,)), cams.new_empty((0,), dtype=torch.float64)
    return (terms, cams.new_empty((n, m) + tuple(cams_t.shape[2:])),
            cams.new_empty((n, m, _KEPT_STATS_PER_PLANE), dtype=torch.float64))


@torch.library.register_fake("mmcam::equivariance_terms_backward")
def _equivariance_terms_backward_fake(grad, cams, cams_t, matrix, labels, pred_mask, pred_t_mask, kept_warped,
                                      kept_stats, er_distance, eps, l2_eps, need_cams, need_cams_t):
    return _grad_like(cams, need_cams), _grad_like(cams_t, need_cams_t)


# --- autograd --------------------------------------------------------------------------------------


def _setup_warp_normalized(ctx, inputs, output):
    src, matrix, _dsize, eps = inputs
    ctx.save_for_backward(src, matrix)
    ctx.eps = eps


def _backward_warp_normalized(ctx, grad):
    src, matrix = ctx.saved_tensors
    grad_src = _ops.warp_normalized_backward(grad, src, matrix, ctx.eps) if ctx.needs_input_grad[0] else None
    return grad_src, None, None, None


def _setup_equivariance_loss(ctx, inputs, output):
    src, matrix, dst, weight, *options = inputs
    ctx.save_for_backward(src, matrix, dst, weight)
    ctx.options = options  # distance, l2_normalize, eps, l2_eps, reduction


def _backward_equivariance_loss(ctx, grad):
    src, matrix, dst, weight = ctx.saved_tensors
    need_src, need_dst = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    grad_src = grad_dst = None
    if need_src or need_dst:
        grad_src, grad_dst = _ops.equivariance_loss_backward(grad, src, matrix, dst, weight, *ctx.options,
                                                             need_src, need_dst)
    return (grad_src if need_src else None, None, grad_dst if need_dst else None) + (None,) * 6


def _setup_equivariance_terms(ctx, inputs, output):
    *tensors, er_distance, eps, l2_eps, keep = inputs
    _terms, kept_warped, kept_stats = output
    ctx.mark_non_differentiable(kept_warped, kept_stats)
    # The kept outputs never get a gradient: without this, autograd would fill a zero tensor the size of
    # kept_warped for every backward (~2 ms at the paper shape on one CPU thread).
    ctx.set_materialize_grads(False)
    # cams, cams_t, matrix, labels, pred_mask, pred_t_mask, then what the forward kept
    ctx.save_for_backward(*tensors, kept_warped, kept_stats)
    ctx.options = (er_distance, eps, l2_eps)
    ctx.kept = keep


def _backward_equivariance_terms(ctx, grad, _grad_warped, _grad_stats):
    need_cams, need_cams_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_cams = grad_cams_t = None
    if grad is not None and (need_cams or need_cams_t):
        if not ctx.kept:
            raise RuntimeError("mmcam::equivariance_terms was called with keep_for_backward=False on inputs that "
                               "require grad; call it through mmcam.ops.equivariance_terms")
        grad_cams, grad_cams_t = _ops.equivariance_terms_backward(grad, *ctx.saved_tensors, *ctx.options,
                                                                  need_cams, need_cams_t)
    return (grad_cams if need_cams else None, grad_cams_t if need_cams_t else None) + (None,) * 8


torch.library.register_autograd("mmcam::warp_normalized", _backward_warp_normalized,
                                setup_context=_setup_warp_normalized)
torch.library.register_autograd("mmcam::equivariance_loss", _backward_equivariance_loss,
                                setup_context=_setup_equivariance_loss)
torch.library.register_autograd("mmcam::equivariance_terms", _backward_equivariance_terms,
                                setup_context=_setup_equivariance_terms)

# Under CPU autocast (e.g. bfloat16 model outputs) the CPU kernels run in float32 on upcast inputs.
for _name in ("warp_normalized", "equivariance_loss", "equivariance_terms"):
    torch.library.register_autocast(f"mmcam::{_name}", "cpu", torch.float32)
