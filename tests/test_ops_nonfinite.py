"""Inputs outside the normal domain give one documented behaviour on every device (issue 12).

* A CMER pair whose weight ``y * pred`` is 0 is skipped, not added as ``0 * distance``: a non-finite map of
  network j (a NaN in its CAM, or ``l2_eps = 0`` with an all-negative plane) stays out of the terms and
  gradients of every network that does not weigh it.

Each test runs on the CPU and, where the build has CUDA kernels and a device is present, on CUDA.
"""

from __future__ import annotations

import pytest
import torch

import mmcam
from mmcam import ops
from mmcam.losses import equivariance_terms
from op_cases import cams, random_affine
from op_cases import deterministic_algorithms as _deterministic

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not (torch.cuda.is_available() and mmcam.build_info()["cuda"]), reason="needs a CUDA device and kernels")),
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
