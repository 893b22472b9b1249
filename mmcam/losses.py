"""The equivariance part of the training loss: ER and CMER of every modality's network (docs/method.md,
docs/operator.md).

:func:`equivariance_terms` is the single entry point used by training, tests and benchmarks. It returns
a ``(2, M)`` tensor: row 0 the within-modality equivariance loss ``L_ER`` of each network, row 1 its
cross-modality loss ``L_CMER``. Three interchangeable backends compute it:

- ``"fused"`` (default): the C++ operator :func:`mmcam.ops.fused.fused_equivariance_terms` (every plane is read,
  normalised, warped and L2-normalised once; forward and backward in C++).
- ``"torch"``: eager PyTorch, warp by ``F.affine_grid`` + ``F.grid_sample``
  (:func:`mmcam.ops.reference.warp_normalized_torch`).
- ``"kornia"``: eager PyTorch, warp by ``kornia.geometry.transform.warp_affine``
  (:func:`mmcam.ops.reference.warp_normalized_kornia`).

Notation (shapes): ``N`` samples, ``M >= 2`` modalities, ``(Hs, Ws)`` the size of the original view and
``(Hd, Wd)`` the size of the transformed view. For network ``i``::

    P_i = warp(mn(cams[:, i]))            Q_i = mn(cams_t[:, i])               (N, Hd, Wd)
    A_i = P_i / ||P_i + eps2||            B_i = Q_i / ||Q_i + eps2||           (per-plane Frobenius norm)

    L_ER_i   = mean_{n,h,w} y_n d(P_i - Q_i)                  d = (.)^2 ("sq_l2") or |.| ("l1")
    L_CMER_i = 1 / (2 (M-1)) sum_{j != i} [ mean_{n,h,w} y_n 1[pred_t_j = 1] (A_i - sg B_j)^2
                                          + mean_{n,h,w} y_n 1[pred_j = 1]   (B_i - sg A_j)^2 ]

with ``sg`` the stop-gradient: in ``L_CMER_i`` the other network's map is a fixed target, so the sum of
all entries has, for each network, exactly the gradient of its own loss. Every mean runs over all
``N * Hd * Wd`` entries (samples with weight 0 count as zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mmcam.ops import checks, reference
from mmcam.ops.fused import fused_equivariance_terms

__all__ = ["BACKENDS", "equivariance_terms", "predicted_classes"]

#: Accepted values of the ``backend`` argument of :func:`equivariance_terms`.
BACKENDS = ("fused", "torch", "kornia")

WarpFn = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------------------- helpers
def predicted_classes(logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Each network's predicted class, the ``pred`` / ``pred_t`` argument of :func:`equivariance_terms`.

    Args:
        logits: either a tensor of shape ``(N, M, 2)`` or a sequence of ``M`` tensors of shape ``(N, 2)``
            (one per modality's network), the 2-class logits ``z``.

    Returns:
        ``(N, M)`` int64 tensor, ``argmax`` over the two classes (a tie gives class 0); no gradient.
    """
    if isinstance(logits, torch.Tensor):
        checks.check_tensor(logits, "logits", 3, "(N, M, 2)")
        stacked = logits
    else:
        logits = list(logits)
        if not logits:
            raise ValueError("logits must hold one (N, 2) tensor per modality, got an empty sequence")
        for m, z in enumerate(logits):
            checks.check_tensor(z, f"logits[{m}]", 2, "(N, 2)")
            if z.shape != logits[0].shape:
                raise ValueError(f"logits[{m}] has shape {tuple(z.shape)} but logits[0] has {tuple(logits[0].shape)}")
        stacked = torch.stack([z.detach() for z in logits], dim=1)
    if stacked.shape[-1] != 2:
        raise ValueError(f"logits must have 2 classes in the last dimension, got shape {tuple(stacked.shape)}")
    return stacked.detach().argmax(dim=-1)


def _check_mask_like(t: torch.Tensor, name: str, shape: tuple[int, ...], layout: str, device: torch.device) -> None:
    """``t``: bool, integer or floating tensor of exactly ``shape`` on ``device``."""
    checks.check_tensor(t, name, len(shape), layout)
    if tuple(t.shape) != shape:
        want = "(" + ", ".join(str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want} to match cams, got {tuple(t.shape)}")
    if t.is_complex():
        raise TypeError(f"{name} must be a bool, integer or floating-point tensor, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but cams is on {device}; they must share a device")


def _check_values(matrix: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor, pred_t: torch.Tensor) -> None:
    """Value checks (one host sync): labels and predictions are 0/1, the matrix is finite and invertible.

    Skipped while ``torch.compile`` traces, where a data-dependent branch would break the graph.
    """
    if torch.compiler.is_compiling():
        return

    def not_binary(t: torch.Tensor) -> torch.Tensor:
        return ((t != 0) & (t != 1)).any()

    m = matrix.detach()
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    bad_matrix = ~torch.isfinite(m).all() | (det == 0).any()
    flags = torch.stack([not_binary(labels), not_binary(pred), not_binary(pred_t), bad_matrix]).tolist()
    for flag, name in zip(flags[:3], ("labels", "pred", "pred_t")):
        if flag:
            raise ValueError(f"{name} must hold only 0/1 values (class indices or booleans)")
    if flags[3]:
        raise ValueError("matrix must be finite and invertible (non-zero determinant of its 2x2 part)")


def _validate(
    cams: torch.Tensor,
    cams_t: torch.Tensor,
    matrix: torch.Tensor,
    labels: torch.Tensor,
    pred: torch.Tensor,
    pred_t: torch.Tensor,
    backend: str,
    er_distance: str,
    eps: float,
    l2_eps: float,
) -> None:
    checks.check_option(backend, "backend", BACKENDS)
    checks.check_option(er_distance, "er_distance", checks.DISTANCES)
    checks.check_eps(eps, "eps")
    checks.check_eps(l2_eps, "l2_eps")
    checks.check_tensor(cams, "cams", 4, "(N, M, Hs, Ws)")
    checks.check_tensor(cams_t, "cams_t", 4, "(N, M, Hd, Wd)")
    checks.check_cam_dtype(cams, "cams")
    checks.check_same(cams, "cams", cams_t, "cams_t")
    n, m = cams.shape[:2]
    if tuple(cams_t.shape[:2]) != (n, m):
        raise ValueError(
            f"cams and cams_t must agree in N and M: cams is {tuple(cams.shape)}, cams_t is {tuple(cams_t.shape)}"
        )
    if n < 1:
        raise ValueError(f"cams must hold at least one sample, got shape {tuple(cams.shape)}")
    if m < 2:
        raise ValueError(
            f"equivariance_terms needs M >= 2 modalities (cams has M={m} in shape {tuple(cams.shape)}): "
            "the cross-modality term is undefined for a single network"
        )
    checks.check_nonempty_spatial(cams, "cams")
    checks.check_nonempty_spatial(cams_t, "cams_t")
    checks.check_matrix(matrix, n, cams.device)
    _check_mask_like(labels, "labels", (n,), "(N,)", cams.device)
    _check_mask_like(pred, "pred", (n, m), "(N, M)", cams.device)
    _check_mask_like(pred_t, "pred_t", (n, m), "(N, M)", cams.device)
    _check_values(matrix, labels, pred, pred_t)


def _as_mask(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0/1 tensor of any dtype -> float mask ``1[t == 1]`` in ``dtype`` (no gradient)."""
    return (t.detach() == 1).to(dtype)


# ------------------------------------------------------------------------------------------ eager
def _eager_terms(
    cams: torch.Tensor,
    cams_t: torch.Tensor,
    matrix: torch.Tensor,
    y: torch.Tensor,
    pred_mask: torch.Tensor,
    pred_t_mask: torch.Tensor,
    warp: WarpFn,
    er_distance: str,
    eps: float,
    l2_eps: float,
) -> torch.Tensor:
    """ER and CMER in eager PyTorch from ``warp`` (a ``mmcam.ops.reference.warp_normalized_*`` function).

    Args:
        cams: ``(N, M, Hs, Ws)``; cams_t: ``(N, M, Hd, Wd)``; matrix: ``(N, 2, 3)``.
        y: ``(N,)`` float labels; pred_mask, pred_t_mask: ``(N, M)`` float masks (all in the CAM dtype).

    Returns:
        ``(2, M)`` in the CAM dtype.

    Every plane is normalised and warped once (``P``, ``Q``) and L2-normalised once (``A``, ``B``). The
    ``M (M - 1)`` ordered pairs are visited as ``M - 1`` cyclic shifts ``j = (i + s) mod M``, each
    vectorised over all samples and all networks ``i``.
    """
    n, m = cams.shape[:2]
    hd, wd = cams_t.shape[-2:]
    denom = n * hd * wd
    yw = y[:, None, None, None]

    p = warp(cams, matrix, (hd, wd), eps=eps)  # (N, M, Hd, Wd)
    q = reference.minmax_normalize(cams_t, eps)
    diff = p - q
    dist = diff.square() if er_distance == "sq_l2" else diff.abs()
    er = (yw * dist).sum(dim=(0, 2, 3)) / denom  # (M,)

    a = reference.l2_normalize_planes(p, l2_eps)
    b = reference.l2_normalize_planes(q, l2_eps)
    a_target, b_target = a.detach(), b.detach()  # the other networks' maps are fixed targets
    w_a = y[:, None] * pred_t_mask  # (N, M): weight of the pair (A_i, B_j), indexed by j
    w_b = y[:, None] * pred_mask  # (N, M): weight of the pair (B_i, A_j), indexed by j
    cmer = torch.zeros_like(er)
    for s in range(1, m):
        # column i of a rolled tensor holds network j = (i + s) mod M
        b_j, a_j = b_target.roll(-s, dims=1), a_target.roll(-s, dims=1)
        wa_j, wb_j = w_a.roll(-s, dims=1), w_b.roll(-s, dims=1)
        d_a = (a - b_j).square().sum(dim=(2, 3))  # (N, M)
        d_b = (b - a_j).square().sum(dim=(2, 3))
        cmer = cmer + (wa_j * d_a + wb_j * d_b).sum(dim=0)
    cmer = cmer / (2 * (m - 1) * denom)
    return torch.stack([er, cmer])


def _warp_function(backend: str) -> WarpFn:
    return reference.warp_normalized_torch if backend == "torch" else reference.warp_normalized_kornia


# ----------------------------------------------------------------------------------------- public
def equivariance_terms(
    cams: torch.Tensor,
    cams_t: torch.Tensor,
    matrix: torch.Tensor,
    labels: torch.Tensor,
    pred: torch.Tensor,
    pred_t: torch.Tensor,
    *,
    backend: str = "fused",
    er_distance: str = "sq_l2",
    eps: float = 1e-8,
    l2_eps: float = 1e-12,
) -> torch.Tensor:
    r"""ER and CMER losses of all ``M`` networks for one iteration (docs/method.md).

    Args:
        cams: ``(N, M, Hs, Ws)`` raw foreground CAMs (channel 1 of ``A^m``) of the original view, one
            channel per modality; float32/float64 (any strides).
        cams_t: ``(N, M, Hd, Wd)`` raw foreground CAMs of the transformed view ``x' = pi(x)``; same dtype and
            device as ``cams``.
        matrix: ``(N, 2, 3)`` source->destination pixel affine of ``pi`` (kornia 0.9 convention, see
            :mod:`mmcam.transforms`); not differentiated. The output size ``(Hd, Wd)`` is ``cams_t``'s.
        labels: ``(N,)`` slice labels ``y`` in {0, 1} (bool, integer or float).
        pred: ``(N, M)`` each network's predicted class (0/1) on the original view,
            e.g. :func:`predicted_classes` of the logits ``z``.
        pred_t: ``(N, M)`` the same on the transformed view (from ``z~``).
        backend: ``"fused"`` (C++ operator), ``"torch"`` or ``"kornia"`` (eager references); all agree.
        er_distance: ``"sq_l2"`` (the paper) or ``"l1"``: the distance ``d`` of the ER term. CMER always
            uses the squared L2 distance between L2-normalised planes.
        eps: the ``eps`` of the min-max normalisation ``mn``.
        l2_eps: the ``eps2`` of the plane-wise L2 normalisation.

    Returns:
        ``(2, M)`` tensor in the dtype of ``cams``: ``[0, i] = L_ER_i`` and ``[1, i] = L_CMER_i``.
        Gradients flow to ``cams`` and ``cams_t``; in ``L_CMER_i`` the maps of networks ``j != i`` are
        detached, so ``terms.sum().backward()`` gives every network exactly the gradient of its own
        ``L_ER_i + L_CMER_i``.

    Note:
        The value checks (0/1 labels and predictions, finite invertible ``matrix``) cost one host sync;
        they are skipped while ``torch.compile`` traces. Known backend differences outside the normal
        domain: the fused operator (on every device) skips samples with ``y = 0`` entirely and CMER pairs
        whose weight is 0, so non-finite CAMs of a negative slice, or of a network whose pair with network
        ``i`` has weight 0, give 0 in the terms of network ``i`` there and NaN with the eager backends
        (which multiply by the weight: ``0 * NaN``).

    Raises:
        TypeError: an argument is not a tensor, or has a wrong dtype (``cams`` vs ``cams_t``).
        ValueError: wrong ranks or sizes, ``N``/``M`` disagreement, ``M < 2``, ``N = 0``, an empty
            spatial size, mismatched devices, an unknown ``backend`` or ``er_distance``, labels or
            predictions other than 0/1, a non-finite or singular ``matrix``.
    """
    _validate(cams, cams_t, matrix, labels, pred, pred_t, backend, er_distance, eps, l2_eps)
    dtype = cams.dtype
    y = _as_mask(labels, dtype)
    pred_mask = _as_mask(pred, dtype)
    pred_t_mask = _as_mask(pred_t, dtype)
    if backend == "fused":
        return fused_equivariance_terms(
            cams, cams_t, matrix.detach(), y, pred_mask, pred_t_mask, er_distance=er_distance, eps=eps, l2_eps=l2_eps
        )
    return _eager_terms(
        cams, cams_t, matrix.detach(), y, pred_mask, pred_t_mask, _warp_function(backend), er_distance, eps, l2_eps
    )
