"""Edge cases of the fused operators, each checked against the eager reference or a hand-computed value."""

from __future__ import annotations

import math

import pytest
import torch

from mmcam import ops
from mmcam.ops import reference

from op_cases import cams, random_affine

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def identity(n):
    return IDENTITY.expand(n, 2, 3).clone()


def grads(fn, src, matrix, dst, **kw):
    s = src.clone().requires_grad_(True)
    d = dst.clone().requires_grad_(True)
    out = fn(s, matrix, d, **kw)
    out.sum().backward()
    return out.detach(), s.grad, d.grad


def assert_matches_reference(src, matrix, dst, **kw):
    fused = grads(ops.equivariance_loss, src, matrix, dst, **kw)
    expected = grads(reference.equivariance_loss_torch, src, matrix, dst, **kw)
    for a, e in zip(fused, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12, equal_nan=True)
    return fused


def test_all_negative_plane_normalises_to_zero_with_zero_gradient():
    src = -torch.rand(1, 1, 5, 6, dtype=torch.float64) - 0.1
    dst = cams((1, 1, 5, 6), torch.Generator().manual_seed(0), torch.float64)
    out = ops.warp_normalized(src, identity(1), (5, 6))
    assert torch.equal(out, torch.zeros_like(out))
    loss, g_src, _ = assert_matches_reference(src, identity(1), dst, l2_normalize=True)
    assert torch.equal(g_src, torch.zeros_like(g_src))


def test_constant_plane_normalises_to_zero():
    src = torch.full((2, 1, 4, 4), 0.7, dtype=torch.float64)
    dst = cams((2, 1, 4, 4), torch.Generator().manual_seed(1), torch.float64)
    assert torch.equal(ops.warp_normalized(src, identity(2), (4, 4)), torch.zeros(2, 1, 4, 4, dtype=torch.float64))
    assert_matches_reference(src, identity(2), dst)


def test_hand_computed_normalisation():
    # relu -> [0, 0, 1, 3]; lo = 0, hi = 3: mn = relu(r - 1e-8) / (3 + 1e-8)
    src = torch.tensor([[[[-2.0, 0.0], [1.0, 3.0]]]], dtype=torch.float64)
    out = ops.warp_normalized(src, identity(1), (2, 2))
    expected = torch.tensor([[[[0.0, 0.0], [(1 - 1e-8) / (3 + 1e-8), (3 - 1e-8) / (3 + 1e-8)]]]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=0)


def test_ties_at_max_and_min_share_the_gradient():
    # two maxima (3.0) and two strictly positive minima (0.5): amax/amin split their gradient evenly
    src = torch.tensor([[[[3.0, 0.5, 1.0], [0.5, 2.0, 3.0]]]], dtype=torch.float64)
    # same target value at both maxima (and at both minima): the tied elements get the same gradient
    dst = torch.tensor([[[[0.8, 0.1, 0.4], [0.1, 0.3, 0.8]]]], dtype=torch.float64)
    _, g_src, _ = assert_matches_reference(src, identity(1), dst)
    assert g_src[0, 0, 0, 0] == g_src[0, 0, 1, 2] and g_src[0, 0, 0, 0] != 0
    assert g_src[0, 0, 0, 1] == g_src[0, 0, 1, 0] and g_src[0, 0, 0, 1] != 0


def test_sample_warped_entirely_outside_gives_zero_map_and_zero_source_gradient():
    far = torch.tensor([[[1.0, 0.0, 500.0], [0.0, 1.0, -300.0]]], dtype=torch.float64)
    src = cams((1, 2, 8, 8), torch.Generator().manual_seed(2), torch.float64)
    dst = cams((1, 2, 8, 8), torch.Generator().manual_seed(3), torch.float64)
    assert torch.equal(ops.warp_normalized(src, far, (8, 8)), torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    _, g_src, g_dst = assert_matches_reference(src, far, dst)
    assert torch.equal(g_src, torch.zeros_like(g_src))
    assert g_dst.abs().sum() > 0


def test_huge_translation_does_not_overflow_indices():
    huge = torch.tensor([[[1.0, 0.0, 1e300], [0.0, 1.0, -1e300]]], dtype=torch.float64)
    src = cams((1, 1, 4, 4), torch.Generator().manual_seed(4), torch.float64)
    assert torch.equal(ops.warp_normalized(src, huge, (3, 3)), torch.zeros(1, 1, 3, 3, dtype=torch.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(reduction):
    src = torch.zeros(0, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    dst = torch.zeros(0, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    matrix = torch.zeros(0, 2, 3, dtype=torch.float64)
    out = ops.equivariance_loss(src, matrix, dst, reduction=reduction)
    # affine_grid rejects N = 0; kornia's warp handles it
    expected = reference.equivariance_loss_kornia(src, matrix, dst, reduction=reduction)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, equal_nan=True)
    if reduction == "mean":
        assert math.isnan(out.item())  # 0 / 0, as torch's mean of an empty tensor
    out.sum().backward()
    assert src.grad.shape == src.shape and dst.grad.shape == dst.shape
    assert ops.warp_normalized(src, matrix, (3, 3)).shape == (0, 2, 3, 3)


def test_zero_weight_sample_contributes_nothing():
    gen = torch.Generator().manual_seed(5)
    src = cams((3, 2, 7, 7), gen, torch.float64)
    dst = cams((3, 2, 7, 7), gen, torch.float64)
    matrix = random_affine(3, (7, 7), (7, 7), gen)
    weight = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    _, g_src, g_dst = assert_matches_reference(src, matrix, dst, weight=weight, reduction="none")
    assert torch.equal(g_src[1], torch.zeros_like(g_src[1])) and torch.equal(g_dst[1], torch.zeros_like(g_dst[1]))


def test_nan_in_cam_propagates_like_reference():
    src = cams((1, 1, 4, 4), torch.Generator().manual_seed(6), torch.float64)
    src[0, 0, 1, 1] = float("nan")
    dst = cams((1, 1, 4, 4), torch.Generator().manual_seed(7), torch.float64)
    assert math.isnan(ops.equivariance_loss(src, identity(1), dst).item())
    assert math.isnan(reference.equivariance_loss_torch(src, identity(1), dst).item())


def test_identity_warp_equals_normalisation():
    src = cams((2, 3, 6, 5), torch.Generator().manual_seed(8), torch.float64)
    torch.testing.assert_close(
        ops.warp_normalized(src, identity(2), (6, 5)), reference.minmax_normalize(src), rtol=0, atol=0
    )
