"""Inputs outside the normal domain give one documented behaviour on every device (issue 12).

* A CMER pair whose weight ``y * pred`` is 0 is skipped, not added as ``0 * distance``: a non-finite map of
  network j (a NaN in its CAM, or ``l2_eps = 0`` with an all-negative plane) stays out of the terms and
  gradients of every network that does not weigh it.
* A non-invertible (singular or non-finite) ``matrix`` never yields finite numbers for a sample that is not
  skipped: the CPU op raises ``ValueError`` naming the sample (forward and backward operators alike); the
  CUDA op, which cannot raise without a host sync, makes every output of that sample NaN: its warped map,
  the loss values it enters, and its gradients to both inputs. A skipped sample (weight 0, label 0) still
  contributes exact zeros.

Each test runs on the CPU and, where the build has CUDA kernels and a device is present, on CUDA.
"""

from __future__ import annotations

import pytest
import torch

import mmcam
from mmcam import ops
from mmcam.losses import equivariance_terms
from mmcam.ops.fused import fused_equivariance_terms

from op_cases import cams, random_affine
from op_cases import deterministic_algorithms as _deterministic

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and mmcam.build_info()["cuda"]), reason="needs a CUDA device and kernels"
        ),
    ),
]


def _assert_equal_up_to_summation_order(actual, expected, what):
    """Equal to float64 rounding (CUDA's atomic scatter may sum in another order between calls)."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-13 * scale, msg=what)


# ------------------------------------------------------------------------------ CMER pairs of weight 0
def _network0_outputs(c, ct, matrix, device, l2_eps):
    """Network 0's ER and CMER and its gradients (from terms[:, 0] only), and the whole (2, M) terms."""
    c = c.to(device).requires_grad_(True)
    ct = ct.to(device).requires_grad_(True)
    labels = torch.tensor([1, 1], device=device)
    pred = torch.tensor([[1, 0], [1, 1]], device=device)  # network 1 predicts 0 on sample 0: weight 0
    terms = equivariance_terms(c, ct, matrix.to(device), labels, pred, pred.clone(), l2_eps=l2_eps)
    terms[:, 0].sum().backward()
    return terms.detach().cpu(), c.grad[:, 0].cpu(), ct.grad[:, 0].cpu()


def _backward_modes(device):
    """torch.use_deterministic_algorithms settings to test: both on CUDA (atomic scatter and gather), one
    on the CPU (always deterministic)."""
    return (False, True) if device == "cuda" else (False,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("corruption", ["nan in the cam", "all-negative plane with l2_eps=0"])
def test_zero_weight_cmer_pair_is_skipped(device, corruption):
    """M=2, y=1, pred[0, 1] = pred_t[0, 1] = 0: network 1's non-finite map of sample 0 enters only network 1's
    terms; network 0's terms and gradients equal those computed with a clean map there (CUDA used to add
    0 * NaN to every other network's CMER)."""
    gen = torch.Generator().manual_seed(12)
    c = cams((2, 2, 9, 11), gen, torch.float64)
    ct = cams((2, 2, 9, 11), gen, torch.float64)
    matrix = random_affine(2, (9, 11), (9, 11), gen)
    bad = c.clone()
    if corruption == "nan in the cam":
        bad[0, 1, 4, 5] = float("nan")
        l2_eps = 1e-12
    else:  # P = 0 everywhere, ||P + 0|| = 0: the unit map A = P / 0 is NaN
        bad[0, 1] = -c[0, 1].abs() - 0.1
        l2_eps = 0.0
    for deterministic in _backward_modes(device):
        with _deterministic(deterministic):
            terms, g_c, g_ct = _network0_outputs(bad, ct, matrix, device, l2_eps)
            clean_terms, clean_g_c, clean_g_ct = _network0_outputs(c, ct, matrix, device, l2_eps)
        # the corruption is real: network 1's own terms see it
        own = terms[0, 1] if corruption == "nan in the cam" else terms[1, 1]
        assert own.isnan(), f"network 1's own term should be NaN, got {terms}"
        # ... and network 0 does not
        assert bool(torch.isfinite(terms[:, 0]).all()), f"network 0's terms must stay finite, got {terms[:, 0]}"
        torch.testing.assert_close(terms[:, 0], clean_terms[:, 0], rtol=1e-12, atol=0)
        _assert_equal_up_to_summation_order(g_c, clean_g_c, "grad of cams[:, 0]")
        _assert_equal_up_to_summation_order(g_ct, clean_g_ct, "grad of cams_t[:, 0]")


# ---------------------------------------------------------------------------- non-invertible matrix
def _bad_matrix_case():
    """Three samples: 0 singular (active), 1 non-finite (skipped: weight 0 / label 0), 2 valid."""
    gen = torch.Generator().manual_seed(21)
    src = cams((3, 2, 6, 7), gen, torch.float64)
    dst = cams((3, 2, 5, 8), gen, torch.float64)
    matrix = random_affine(3, (6, 7), (5, 8), gen)
    matrix[0, :, :2] = torch.tensor([[1.0, 2.0], [2.0, 4.0]])  # zero determinant
    matrix[1, 0, 2] = float("inf")
    active = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    return src, dst, matrix, active


def _assert_flagged(outputs, what):
    """Sample 0 all NaN, sample 1 exact zeros, sample 2 finite, in every output tensor (N first)."""
    for name, t in outputs.items():
        assert bool(t[0].isnan().all()), f"{what}: {name} of the singular sample must be NaN everywhere"
        assert torch.equal(t[1], torch.zeros_like(t[1])), f"{what}: {name} of the skipped sample must be 0"
        assert bool(torch.isfinite(t[2]).all()), f"{what}: {name} of the valid sample must be finite"


def _raises_naming_sample_0(call):
    with pytest.raises(ValueError, match=r"matrix\[0\].*not an invertible finite affine"):
        call()


@pytest.mark.parametrize("device", DEVICES)
def test_non_invertible_matrix_is_never_silently_finite(device):
    src, dst, matrix, active = (t.to(device) for t in _bad_matrix_case())
    raw = torch.ops.mmcam
    ones = torch.ones_like(active)
    pred = torch.ones(3, 2, dtype=torch.float64, device=device)
    if device == "cpu":  # forward and backward operators raise, through the Python API and raw
        _raises_naming_sample_0(lambda: ops.warp_normalized(src, matrix, (5, 8)))
        _raises_naming_sample_0(lambda: ops.equivariance_loss(src, matrix, dst, active))
        _raises_naming_sample_0(lambda: fused_equivariance_terms(src, dst, matrix, active, pred, pred))
        grad_p = torch.ones(3, 2, 5, 8, dtype=torch.float64)
        _raises_naming_sample_0(lambda: raw.warp_normalized_backward(grad_p, src, matrix, 1e-8))
        _raises_naming_sample_0(
            lambda: raw.equivariance_loss_backward(
                ones, src, matrix, dst, active, "sq_l2", True, 1e-8, 1e-12, "none", True, True
            )
        )
        kept_warped = torch.zeros(3, 2, 5, 8, dtype=torch.float64)
        kept_stats = torch.zeros(3, 2, 8, dtype=torch.float64)
        _raises_naming_sample_0(
            lambda: raw.equivariance_terms_backward(
                torch.ones(2, 2, dtype=torch.float64),
                src,
                dst,
                matrix,
                active,
                pred,
                pred,
                kept_warped,
                kept_stats,
                "sq_l2",
                1e-8,
                1e-12,
                True,
                True,
            )
        )
        return

    for deterministic in (False, True):  # atomic scatter and gather
        with _deterministic(deterministic):
            _check_cuda_flags(src, dst, matrix, active, pred)


def _check_cuda_flags(src, dst, matrix, active, pred):
    """CUDA: the singular sample 0 is NaN in every output, the skipped sample 1 zero, sample 2 finite."""
    s = src.clone().requires_grad_(True)
    warped = ops.warp_normalized(s, matrix, (5, 8))
    warped.backward(torch.ones_like(warped))
    # no weights here: the non-finite sample 1 is NaN too
    assert bool(warped[:2].isnan().all()) and bool(s.grad[:2].isnan().all())
    assert bool(torch.isfinite(warped[2]).all()) and bool(torch.isfinite(s.grad[2]).all())

    s, d = src.clone().requires_grad_(True), dst.clone().requires_grad_(True)
    loss = ops.equivariance_loss(s, matrix, d, active, l2_normalize=True, reduction="none")
    loss.backward(torch.ones_like(loss))
    _assert_flagged({"loss": loss.detach(), "grad of src": s.grad, "grad of dst": d.grad}, "equivariance_loss")

    s, d = src.clone().requires_grad_(True), dst.clone().requires_grad_(True)
    terms = fused_equivariance_terms(s, d, matrix, active, pred, pred)
    assert bool(terms.isnan().all()), f"every term of an active singular sample is NaN, got {terms}"
    terms.sum().backward()
    _assert_flagged({"grad of cams": s.grad, "grad of cams_t": d.grad}, "equivariance_terms")
