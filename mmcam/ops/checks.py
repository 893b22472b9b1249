"""Argument validation shared by the fused operators (``mmcam.ops``) and the references
(``mmcam.ops.reference``), so both reject the same bad inputs with the same clear messages.

Only metadata (ranks, sizes, dtypes, devices, option strings) is checked here: these checks are static
and trace under ``torch.compile``. Checks that need tensor *values* (a non-finite or singular matrix)
are done inside the compiled kernels, which raise ``ValueError`` as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DISTANCES = ("sq_l2", "l1")
REDUCTIONS = ("mean", "sum", "none")
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensor(t: object, name: str, ndim: int, layout: str) -> None:
    """``t`` must be a tensor of rank ``ndim`` (``layout`` names the axes in messages)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim} dims), got shape {_shape(t)}")


def check_cam_dtype(t: torch.Tensor, name: str) -> None:
    """CAM planes: float32/float64 everywhere, float16/bfloat16 on CUDA, and on the CPU inside a CPU
    autocast region (the operators' autocast rule then runs them in float32)."""
    cpu_autocast = t.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    allowed = _CUDA_DTYPES if t.device.type == "cuda" or cpu_autocast else _CPU_DTYPES
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        hint = " (float16/bfloat16 inputs are accepted inside torch.autocast('cpu'))" if t.device.type == "cpu" else ""
        raise TypeError(f"{name} must have dtype {names} on {t.device.type}, got {t.dtype}{hint}")


def check_same(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str, *, dtype: bool = True) -> None:
    """``a`` and ``b`` must live on the same device (and have the same dtype when ``dtype``)."""
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}; they must share a device")
    if dtype and a.dtype != b.dtype:
        raise TypeError(f"{a_name} has dtype {a.dtype} but {b_name} has dtype {b.dtype}; they must match")


def check_nonempty_spatial(t: torch.Tensor, name: str) -> None:
    if t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"{name} has an empty spatial size {tuple(t.shape[-2:])}; H and W must be >= 1")


def check_matrix(matrix: torch.Tensor, n: int, device: torch.device) -> None:
    """``matrix`` (N, 2, 3) floating point, on the CAMs' device."""
    check_tensor(matrix, "matrix", 3, "(N, 2, 3)")
    if tuple(matrix.shape[1:]) != (2, 3) or matrix.shape[0] != n:
        raise ValueError(f"matrix must have shape ({n}, 2, 3) to match N={n}, got {_shape(matrix)}")
    if not matrix.is_floating_point():
        raise TypeError(f"matrix must be a floating-point tensor, got {matrix.dtype}")
    if matrix.device != device:
        raise ValueError(f"matrix is on {matrix.device} but the CAMs are on {device}; they must share a device")


def check_dsize(dsize: Sequence[int]) -> tuple[int, int]:
    """``dsize`` = (H_out, W_out), two positive ints."""
    if not isinstance(dsize, Sequence) or len(dsize) != 2:
        raise TypeError(f"dsize must be a pair (H_out, W_out), got {dsize!r}")
    h, w = dsize
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
            raise TypeError(f"dsize must hold two ints (H_out, W_out), got {dsize!r}")
    if h < 1 or w < 1:
        raise ValueError(f"dsize must be positive, got {tuple(dsize)}")
    return h, w


def check_eps(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {value!r}")
    if not (value >= 0.0 and value < float("inf")):
        raise ValueError(f"{name} must be a finite non-negative float, got {value!r}")


def check_option(value: str, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def check_warp_args(src: torch.Tensor, matrix: torch.Tensor, dsize: Sequence[int], eps: float) -> tuple[int, int]:
    """Arguments of ``warp_normalized``; returns dsize as (H_out, W_out)."""
    check_tensor(src, "src", 4, "(N, C, H, W)")
    check_cam_dtype(src, "src")
    check_nonempty_spatial(src, "src")
    check_matrix(matrix, src.shape[0], src.device)
    check_eps(eps, "eps")
    return check_dsize(dsize)


def check_equivariance_args(
    src: torch.Tensor,
    matrix: torch.Tensor,
    dst: torch.Tensor,
    weight: torch.Tensor | None,
    distance: str,
    l2_normalize: bool,
    eps: float,
    l2_eps: float,
    reduction: str,
) -> None:
    """Arguments of ``equivariance_loss``."""
    check_tensor(src, "src", 4, "(N, C, Hs, Ws)")
    check_tensor(dst, "dst", 4, "(N, C, Hd, Wd)")
    check_cam_dtype(src, "src")
    check_same(src, "src", dst, "dst")
    if src.shape[:2] != dst.shape[:2]:
        raise ValueError(f"src and dst must agree in N and C: src is {_shape(src)}, dst is {_shape(dst)}")
    check_nonempty_spatial(src, "src")
    check_nonempty_spatial(dst, "dst")
    check_matrix(matrix, src.shape[0], src.device)
    if weight is not None:
        check_tensor(weight, "weight", 1, "(N,)")
        if weight.shape[0] != src.shape[0]:
            raise ValueError(f"weight must have shape ({src.shape[0]},) to match N, got {_shape(weight)}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
        check_same(src, "src", weight, "weight", dtype=False)
    check_option(distance, "distance", DISTANCES)
    check_option(reduction, "reduction", REDUCTIONS)
    if not isinstance(l2_normalize, bool):
        raise TypeError(f"l2_normalize must be a bool, got {l2_normalize!r}")
    check_eps(eps, "eps")
    check_eps(l2_eps, "l2_eps")
