"""The fused operators against both eager references (kornia warp_affine; affine_grid + grid_sample):
values and gradients, over random shapes, matrices, π families, options and strides."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmcam import ops
from mmcam.ops import reference

from op_cases import FAMILIES, cams, family_matrix, random_affine, seeds, sizes, small_nc

REFERENCES = {
    "kornia": (reference.equivariance_loss_kornia, reference.warp_normalized_kornia),
    "torch": (reference.equivariance_loss_torch, reference.warp_normalized_torch),
}


def as64(x):
    return None if x is None else x.to(torch.float64)


def assert_close(actual, expected, expected_same_dtype, what):
    """float64: relative 1e-9 against the float64 reference.

    float32: against the reference evaluated in float64 on the same (float32-representable) inputs, to
    absolute and relative 1e-5 plus 1e-6 of the tensor's largest magnitude (norm-wise accuracy: "sum"
    reductions give O(100) gradients) -- or, where the problem is ill-conditioned in float32 (min-max
    normalisation of a nearly constant plane), to within twice the error of the float32 reference itself
    (``expected_same_dtype``): the fused op must be about as accurate as the eager float32 computation.
    """
    if actual.dtype == torch.float64:
        torch.testing.assert_close(
            actual, expected, rtol=1e-9, atol=1e-12, equal_nan=True, msg=lambda m: f"{what}: {m}"
        )
        return
    exact = expected.to(torch.float64)
    reference_error = (expected_same_dtype.to(torch.float64) - exact).abs()
    scale = float(exact[exact.isfinite()].abs().max()) if exact.isfinite().any() else 0.0
    tolerance = 1e-5 + 1e-6 * scale + 1e-5 * exact.abs() + 2 * reference_error
    error = (actual.to(torch.float64) - exact).abs()
    bad = ~(error <= tolerance) & ~(actual.isnan() & exact.isnan())
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.numel()} elements off; worst error {float(error[bad].max()):.3g} "
        f"(tolerance there {float(tolerance[bad][error[bad].argmax()]):.3g})"
    )


def loss_and_grads(fn, src, matrix, dst, weight, **options):
    s = src.detach().clone().requires_grad_(True)
    d = dst.detach().clone().requires_grad_(True)
    out = fn(s, matrix, d, weight, **options)
    out.sum().backward()
    return out.detach(), s.grad, d.grad


options_strategy = st.fixed_dictionaries(
    {
        "distance": st.sampled_from(["sq_l2", "l1"]),
        "l2_normalize": st.booleans(),
        "reduction": st.sampled_from(["mean", "sum", "none"]),
    }
)


@given(
    n=small_nc,
    c=small_nc,
    hs=sizes,
    ws=sizes,
    hd=sizes,
    wd=sizes,
    seed=seeds,
    options=options_strategy,
    weighted=st.sampled_from(["none", "random", "binary"]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    non_contiguous=st.booleans(),
)
def test_equivariance_loss_matches_references_random_affine(
    n, c, hs, ws, hd, wd, seed, options, weighted, dtype, non_contiguous
):
    gen = torch.Generator().manual_seed(seed)
    src = cams((n, c, hs, ws), gen, dtype, non_contiguous=non_contiguous)
    dst = cams((n, c, hd, wd), gen, dtype, non_contiguous=non_contiguous)
    matrix = random_affine(n, (hs, ws), (hd, wd), gen, dtype=dtype)
    weight = {
        "none": None,
        "random": torch.rand(n, generator=gen, dtype=torch.float64).to(dtype),
        "binary": (torch.rand(n, generator=gen) < 0.5).to(dtype),
    }[weighted]
    _check_against_references(src, matrix, dst, weight, options, dtype)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(n=small_nc, c=small_nc, h=sizes, w=sizes, seed=seeds, options=options_strategy)
def test_equivariance_loss_matches_references_for_every_family(family, dtype, n, c, h, w, seed, options):
    gen = torch.Generator().manual_seed(seed)
    matrix, dsize = family_matrix(family, n, (h, w), gen, dtype=dtype)
    src = cams((n, c, h, w), gen, dtype, non_contiguous=True)
    dst = cams((n, c) + tuple(dsize), gen, dtype)
    weight = (torch.rand(n, generator=gen) < 0.7).to(dtype)
    _check_against_references(src, matrix, dst, weight, options, dtype)


def _check_against_references(src, matrix, dst, weight, options, dtype):
    # the strided view goes to the fused op as it is
    fused = loss_and_grads(ops.equivariance_loss, src, matrix, dst, weight, **options)
    for name, (ref_loss, _) in REFERENCES.items():
        expected = loss_and_grads(ref_loss, as64(src), as64(matrix), as64(dst), as64(weight), **options)
        same_dtype = (
            loss_and_grads(ref_loss, src, matrix, dst, weight, **options) if dtype != torch.float64 else expected
        )
        for what, a, e, e_same in zip(("loss", "grad src", "grad dst"), fused, expected, same_dtype):
            assert_close(a, e, e_same, f"{what} vs {name} reference, options={options}")


@given(
    n=small_nc,
    c=small_nc,
    hs=sizes,
    ws=sizes,
    hd=sizes,
    wd=sizes,
    seed=seeds,
    dtype=st.sampled_from([torch.float64, torch.float32]),
    non_contiguous=st.booleans(),
)
def test_warp_normalized_matches_references(n, c, hs, ws, hd, wd, seed, dtype, non_contiguous):
    gen = torch.Generator().manual_seed(seed)
    src = cams((n, c, hs, ws), gen, dtype, non_contiguous=non_contiguous)
    matrix = random_affine(n, (hs, ws), (hd, wd), gen, dtype=dtype)
    upstream = torch.randn(n, c, hd, wd, generator=gen, dtype=torch.float64).to(dtype)

    def run(fn, x, m):
        s = x.detach().clone().requires_grad_(True)
        out = fn(s, m, (hd, wd))
        (out * upstream.to(x.dtype)).sum().backward()
        return out.detach(), s.grad

    fused = run(ops.warp_normalized, src, matrix)
    for name, (_, ref_warp) in REFERENCES.items():
        expected = run(ref_warp, as64(src), as64(matrix))
        same_dtype = run(ref_warp, src, matrix) if dtype != torch.float64 else expected
        assert_close(fused[0], expected[0], same_dtype[0], f"warp vs {name}")
        assert_close(fused[1], expected[1], same_dtype[1], f"warp grad vs {name}")


def test_warp_normalized_keeps_strided_input_values():
    gen = torch.Generator().manual_seed(3)
    base = cams((2, 3, 9, 11), gen, torch.float64)
    view = base[:, 1:]
    assert not view.is_contiguous()
    matrix = random_affine(2, (9, 11), (7, 5), gen)
    torch.testing.assert_close(
        ops.warp_normalized(view, matrix, (7, 5)),
        ops.warp_normalized(view.contiguous(), matrix, (7, 5)),
        rtol=0,
        atol=0,
    )


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    src = cams((2, 2, 6, 7), gen, torch.float64).requires_grad_(True)
    dst = cams((2, 2, 5, 6), gen, torch.float64).requires_grad_(True)
    matrix = random_affine(2, (6, 7), (5, 6), gen)
    weight = torch.tensor([1.0, 0.25], dtype=torch.float64)
    for distance in ("sq_l2", "l1"):
        for l2 in (False, True):
            for reduction in ("mean", "sum", "none"):
                assert torch.autograd.gradcheck(
                    lambda s, d: ops.equivariance_loss(
                        s, matrix, d, weight, distance=distance, l2_normalize=l2, reduction=reduction
                    ),
                    (src, dst),
                )
    assert torch.autograd.gradcheck(lambda s: ops.warp_normalized(s, matrix, (5, 6)), (src,))


def test_stop_gradient_skips_detached_side():
    gen = torch.Generator().manual_seed(1)
    src = cams((2, 1, 8, 8), gen, torch.float64).requires_grad_(True)
    dst = cams((2, 1, 8, 8), gen, torch.float64)
    matrix = random_affine(2, (8, 8), (8, 8), gen)
    loss = ops.equivariance_loss(src, matrix, dst.detach())
    loss.backward()
    expected_src = torch.autograd.grad(reference.equivariance_loss_torch(src, matrix, dst), src)[0]
    torch.testing.assert_close(src.grad, expected_src, rtol=1e-9, atol=1e-12)
