"""Dispatcher integration: torch.library.opcheck (schema, fake tensors, autograd registration,
AOT dispatch) and torch.compile(fullgraph=True), plus thread-count determinism."""

from __future__ import annotations

import pytest
import torch

from mmcam import ops

from op_cases import cams, random_affine


def sample_inputs(dtype=torch.float64, requires_grad=True):
    gen = torch.Generator().manual_seed(11)
    src = cams((3, 2, 9, 8), gen, dtype).requires_grad_(requires_grad)
    dst = cams((3, 2, 7, 10), gen, dtype).requires_grad_(requires_grad)
    matrix = random_affine(3, (9, 8), (7, 10), gen, dtype=dtype)
    weight = torch.tensor([1.0, 0.0, 0.5], dtype=dtype)
    return src, matrix, dst, weight


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("l2_normalize", [False, True])
def test_opcheck_equivariance_loss(reduction, l2_normalize):
    src, matrix, dst, weight = sample_inputs()
    torch.library.opcheck(
        torch.ops.mmcam.equivariance_loss.default,
        (src, matrix, dst, weight, "sq_l2", l2_normalize, 1e-8, 1e-12, reduction),
    )
    torch.library.opcheck(
        torch.ops.mmcam.equivariance_loss.default,
        (src, matrix, dst.detach(), None, "l1", l2_normalize, 1e-8, 1e-12, reduction),
    )


def test_opcheck_warp_normalized():
    src, matrix, dst, _ = sample_inputs()
    torch.library.opcheck(torch.ops.mmcam.warp_normalized.default, (src, matrix, [7, 10], 1e-8))


def test_opcheck_equivariance_terms():
    gen = torch.Generator().manual_seed(12)
    cams_ = cams((3, 3, 8, 8), gen, torch.float64).requires_grad_(True)
    cams_t = cams((3, 3, 6, 7), gen, torch.float64).requires_grad_(True)
    matrix = random_affine(3, (8, 8), (6, 7), gen)
    labels = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    pred = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.mmcam.equivariance_terms.default,
        (cams_, cams_t, matrix, labels, pred, pred.flip(0), "sq_l2", 1e-8, 1e-12, True),
    )
    torch.library.opcheck(
        torch.ops.mmcam.equivariance_terms.default,
        (cams_.detach(), cams_t.detach(), matrix, labels, pred, pred, "l1", 1e-8, 1e-12, False),
    )


def test_torch_compile_fullgraph_matches_eager():
    src, matrix, dst, weight = sample_inputs(torch.float32)

    def step(s, d):
        p = ops.warp_normalized(s, matrix, (7, 10))
        return ops.equivariance_loss(s, matrix, d, weight, l2_normalize=True) + 0.1 * p.mean()

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    s1, d1 = src.detach().clone().requires_grad_(True), dst.detach().clone().requires_grad_(True)
    s2, d2 = src.detach().clone().requires_grad_(True), dst.detach().clone().requires_grad_(True)
    out_c = compiled(s1, d1)
    out_e = step(s2, d2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(s1.grad, s2.grad)
    torch.testing.assert_close(d1.grad, d2.grad)


def run_forward_backward(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(13)
        src = cams((6, 3, 33, 31), gen, torch.float32).requires_grad_(True)
        dst = cams((6, 3, 29, 35), gen, torch.float32).requires_grad_(True)
        matrix = random_affine(6, (33, 31), (29, 35), gen, dtype=torch.float32)
        loss = ops.equivariance_loss(src, matrix, dst, l2_normalize=True)
        loss.backward()
        return loss.detach(), src.grad, dst.grad
    finally:
        torch.set_num_threads(previous)


def test_bitwise_deterministic_across_runs_and_thread_counts():
    one = run_forward_backward(1)
    for threads in (2, 2, 3):
        other = run_forward_backward(threads)
        for a, b in zip(one, other):
            assert torch.equal(a, b)
