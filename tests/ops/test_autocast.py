"""Under torch.autocast('cpu', bfloat16) the operators take low-precision CAMs and compute in float32."""

from __future__ import annotations

import pytest
import torch

from mmcam import losses, ops

from op_cases import cams, random_affine


def test_equivariance_loss_under_cpu_autocast_matches_float32_on_upcast_inputs():
    gen = torch.Generator().manual_seed(21)
    src = cams((2, 2, 12, 10), gen, torch.float32).to(torch.bfloat16).requires_grad_(True)
    dst = cams((2, 2, 9, 11), gen, torch.float32).to(torch.bfloat16).requires_grad_(True)
    matrix = random_affine(2, (12, 10), (9, 11), gen, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ops.equivariance_loss(src, matrix, dst, l2_normalize=True)
    assert loss.dtype == torch.float32
    loss.backward()
    assert src.grad.dtype == torch.bfloat16 and dst.grad.dtype == torch.bfloat16

    s32 = src.detach().float().requires_grad_(True)
    d32 = dst.detach().float().requires_grad_(True)
    expected = ops.equivariance_loss(s32, matrix, d32, l2_normalize=True)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(src.grad, s32.grad.to(torch.bfloat16))
    torch.testing.assert_close(dst.grad, d32.grad.to(torch.bfloat16))


def test_equivariance_terms_under_cpu_autocast():
    gen = torch.Generator().manual_seed(22)
    c = cams((3, 2, 10, 10), gen, torch.float32)
    c_t = cams((3, 2, 10, 10), gen, torch.float32)
    matrix = random_affine(3, (10, 10), (10, 10), gen, dtype=torch.float32)
    labels, pred = torch.tensor([1, 0, 1]), torch.ones(3, 2, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = losses.equivariance_terms(c.bfloat16(), c_t.bfloat16(), matrix, labels, pred, pred)
    expected = losses.equivariance_terms(c.bfloat16().float(), c_t.bfloat16().float(), matrix, labels, pred, pred)
    assert terms.dtype == torch.float32
    torch.testing.assert_close(terms, expected)


def test_low_precision_on_cpu_outside_autocast_is_rejected_with_a_hint():
    x = torch.randn(1, 1, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="autocast"):
        ops.warp_normalized(x, torch.eye(2, 3)[None], (4, 4))
