"""Registration of the ``torch.ops.mmcam`` operators with PyTorch beyond their C++ kernels: fake (meta)
kernels for FakeTensor and ``torch.compile``, autograd formulas (each forward's backward operator) and the
CPU autocast rule (16-bit inputs run in float32)."""

from __future__ import annotations

import torch

from mmcam.ops.checks import DISTANCES, REDUCTIONS
from mmcam.ops.extension import _C  # loading it defines the operators registered here

_ops = torch.ops.mmcam


# --- shape functions for FakeTensor / torch.compile -------------------------------------------------
# Each fake checks what its C++ kernel checks before it computes (csrc/op_args.cpp, the ops' dsize), with
# the same exception types and messages, so a traced or compiled call fails where an eager one would.
# Value checks (a singular matrix) need data and stay in the kernels.

_PLANE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_planes(t: torch.Tensor, name: str) -> None:
    torch._check_value(t.dim() == 4, lambda: f"mmcam: {name} must have shape (N, C, H, W), got {list(t.shape)}")
    torch._check_type(t.dtype in _PLANE_DTYPES, lambda: f"mmcam: {name} must be a floating-point tensor, got {t.dtype}")
    torch._check_value(t.shape[2] > 0 and t.shape[3] > 0, lambda: f"mmcam: {name} has an empty spatial size")


def _check_matrix(matrix: torch.Tensor, n: int) -> None:
    torch._check_value(
        matrix.dim() == 3 and matrix.shape[0] == n and tuple(matrix.shape[1:]) == (2, 3),
        lambda: f"mmcam: matrix must have shape ({n}, 2, 3), got {list(matrix.shape)}",
    )
    torch._check_type(matrix.is_floating_point(), lambda: f"mmcam: matrix must be floating point, got {matrix.dtype}")


def _check_pair(src: torch.Tensor, matrix: torch.Tensor, dst: torch.Tensor) -> None:
    _check_planes(src, "src")
    _check_planes(dst, "dst")
    torch._check_type(src.dtype == dst.dtype, lambda: f"mmcam: src and dst dtypes differ: {src.dtype} vs {dst.dtype}")
    torch._check_value(
        src.shape[:2] == dst.shape[:2],
        lambda: f"mmcam: src {list(src.shape)} and dst {list(dst.shape)} must agree in N and C",
    )
    _check_matrix(matrix, src.shape[0])


def _check_option(value: str, name: str, choices: tuple[str, ...]) -> None:
    torch._check_value(value in choices, lambda: f"mmcam: {name} must be one of {choices}, got {value!r}")


def _check_terms(cams, cams_t, matrix, labels, pred_mask, pred_t_mask, er_distance) -> None:
    _check_planes(cams, "cams")
    _check_planes(cams_t, "cams_t")
    torch._check_type(cams.dtype == cams_t.dtype, lambda: "mmcam: cams and cams_t dtypes differ")
    n, m = cams.shape[:2]
    torch._check_value(cams_t.shape[:2] == (n, m), lambda: "mmcam: cams and cams_t must agree in N and M")
    torch._check_value(m >= 2, lambda: f"mmcam: equivariance_terms needs M >= 2 modalities, got {m}")
    _check_matrix(matrix, n)
    torch._check_value(labels.shape == (n,), lambda: f"mmcam: labels must have shape ({n},)")
    torch._check_value(
        pred_mask.shape == (n, m) and pred_t_mask.shape == (n, m),
        lambda: f"mmcam: pred and pred_t must have shape ({n}, {m})",
    )
    _check_option(er_distance, "distance", DISTANCES)


def _grad_like(t: torch.Tensor, needed: bool) -> torch.Tensor:
    return t.new_empty(t.shape) if needed else t.new_empty((0,))


@torch.library.register_fake("mmcam::warp_normalized")
def _warp_normalized_fake(src, matrix, dsize, eps):
    _check_planes(src, "src")
    _check_matrix(matrix, src.shape[0])
    torch._check_value(
        len(dsize) == 2 and dsize[0] > 0 and dsize[1] > 0,
        lambda: f"mmcam: dsize must be two positive ints (H_out, W_out), got {list(dsize)}",
    )
    return src.new_empty((src.shape[0], src.shape[1], dsize[0], dsize[1]))


@torch.library.register_fake("mmcam::warp_normalized_backward")
def _warp_normalized_backward_fake(grad, src, matrix, eps):
    return src.new_empty(src.shape)


@torch.library.register_fake("mmcam::equivariance_loss")
def _equivariance_loss_fake(src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps, reduction):
    _check_pair(src, matrix, dst)
    if weight is not None:
        n = src.shape[0]
        torch._check_value(
            weight.shape == (n,), lambda: f"mmcam: weight must have shape ({n},), got {list(weight.shape)}"
        )
    _check_option(distance, "distance", DISTANCES)
    _check_option(reduction, "reduction", REDUCTIONS)
    return src.new_empty((src.shape[0],) if reduction == "none" else ())


@torch.library.register_fake("mmcam::equivariance_loss_backward")
def _equivariance_loss_backward_fake(
    grad, src, matrix, dst, weight, distance, l2_normalize, eps, l2_eps, reduction, need_src, need_dst
):
    return _grad_like(src, need_src), _grad_like(dst, need_dst)


# float64 statistics per plane that equivariance_terms keeps for its backward (csrc/kept_stats.h)
_KEPT_STATS_PER_PLANE = _C.KEPT_STATS_PER_PLANE


@torch.library.register_fake("mmcam::equivariance_terms")
def _equivariance_terms_fake(cams, cams_t, matrix, labels, pred_mask, pred_t_mask, er_distance, eps, l2_eps, keep):
    _check_terms(cams, cams_t, matrix, labels, pred_mask, pred_t_mask, er_distance)
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
