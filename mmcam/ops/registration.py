"""Registration of the ``torch.ops.mmcam`` operators with PyTorch beyond their C++ kernels: fake (meta)
kernels for FakeTensor and ``torch.compile``, autograd formulas (each forward's backward operator) and the
CPU autocast rule (16-bit inputs run in float32)."""

from __future__ import annotations

import torch

from mmcam.ops.extension import _C  # noqa: F401  (loading it defines the operators registered here)

_ops = torch.ops.mmcam


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
def _equivariance_loss_backward_fake(
    grad, src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps, reduction, need_src, need_dst
):
    return _grad_like(src, need_src), _grad_like(dst, need_dst)


_KEPT_STATS_PER_PLANE = 8  # see StatSlot in csrc/cpu/equivariance_terms_cpu.cpp


@torch.library.register_fake("mmcam::equivariance_terms")
def _equivariance_terms_fake(cams, cams_t, matrix, labels, pred_mask, pred_t_mask, er_distance, eps, l2_eps, keep):
    n, m = cams.shape[:2]
    terms = cams.new_empty((2, m))
    if not keep:
        return terms, cams.new_empty((0,)), cams.new_empty((0,), dtype=torch.float64)
    return (
        terms,
        cams.new_empty((n, m) + tuple(cams_t.shape[2:])),
        cams.new_empty((n, m, _KEPT_STATS_PER_PLANE), dtype=torch.float64),
    )


@torch.library.register_fake("mmcam::equivariance_terms_backward")
def _equivariance_terms_backward_fake(
    grad,
    cams,
    cams_t,
    matrix,
    labels,
    pred_mask,
    pred_t_mask,
    kept_warped,
    kept_stats,
    er_distance,
    eps,
    l2_eps,
    need_cams,
    need_cams_t,
):
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
        grad_src, grad_dst = _ops.equivariance_loss_backward(
            grad, src, matrix, dst, weight, *ctx.options, need_src, need_dst
        )
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
            raise RuntimeError(
                "mmcam::equivariance_terms was called with keep_for_backward=False on inputs that "
                "require grad; call it through mmcam.losses.equivariance_terms"
            )
        grad_cams, grad_cams_t = _ops.equivariance_terms_backward(
            grad, *ctx.saved_tensors, *ctx.options, need_cams, need_cams_t
        )
    return (grad_cams if need_cams else None, grad_cams_t if need_cams_t else None) + (None,) * 8


torch.library.register_autograd(
    "mmcam::warp_normalized", _backward_warp_normalized, setup_context=_setup_warp_normalized
)
torch.library.register_autograd(
    "mmcam::equivariance_loss", _backward_equivariance_loss, setup_context=_setup_equivariance_loss
)
torch.library.register_autograd(
    "mmcam::equivariance_terms", _backward_equivariance_terms, setup_context=_setup_equivariance_terms
)

# Under CPU autocast (e.g. bfloat16 model outputs) the CPU kernels run in float32 on upcast inputs.
for _name in ("warp_normalized", "equivariance_loss", "equivariance_terms"):
    torch.library.register_autocast(f"mmcam::{_name}", "cpu", torch.float32)
