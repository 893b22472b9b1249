"""The eager references of mmcam.ops.reference: kornia and torch warps agree, hand-checked normalisation."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcam.ops import reference as R
from mmcam.transforms import affine_matrix, resize_matrix

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-5)}


def tol(dtype, reduction="mean"):
    # float32 normalised coordinates are off by ~size * 6e-8 px between the two warps; with
    # reduction="sum" the gradients are O(1) instead of O(1 / numel), so that shows above 1e-5.
    if dtype == torch.float32 and reduction == "sum":
        return dict(rtol=1e-6, atol=1e-4)
    return TOL[dtype]


def random_matrix(n, src_size, dst_size, gen, dtype=torch.float64):
    """Random rotation/scale/shear mapping the source centre near the destination centre (so part of
    the output falls outside the source and exercises the zero padding)."""
    (hs, ws), (hd, wd) = src_size, dst_size
    u = torch.rand(n, 7, generator=gen, dtype=torch.float64)
    scale = torch.stack([(wd / ws) * (0.8 + 0.4 * u[:, 1]), (hd / hs) * (0.8 + 0.4 * u[:, 2])], -1)
    src_c = torch.tensor([(ws - 1) / 2, (hs - 1) / 2], dtype=torch.float64).expand(n, 2)
    dst_c = torch.tensor([(wd - 1) / 2, (hd - 1) / 2], dtype=torch.float64)
    jitter = (u[:, 5:7] - 0.5) * torch.tensor([0.4 * wd, 0.4 * hd], dtype=torch.float64)
    m, _ = affine_matrix(
        360 * u[:, 0] - 180,
        src_size,
        scale=scale,
        shear=(u[:, 3:5] - 0.5) * 20,
        translation=dst_c - src_c + jitter,
        center=src_c,
        dtype=dtype,
    )
    return m


def make_case(dtype, *, n=3, c=2, src_size=(9, 11), dst_size=(7, 13), seed=0, weight=False):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn(n, c, *src_size, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    dst = torch.randn(n, c, *dst_size, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    matrix = random_matrix(n, src_size, dst_size, gen, dtype)
    w = None
    if weight:
        w = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
        w[0] = 0.0
    return src, matrix, dst, w


# ------------------------------------------------------------------------------ kornia vs torch
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("src_size,dst_size", [((9, 11), (7, 13)), ((16, 16), (16, 16)), ((1, 6), (4, 5))])
def test_warp_references_agree(dtype, src_size, dst_size):
    src, matrix, _, _ = make_case(dtype, src_size=src_size, dst_size=dst_size, n=4)
    pk = R.warp_normalized_kornia(src, matrix, dst_size)
    pt = R.warp_normalized_torch(src, matrix, dst_size)
    assert pk.shape == pt.shape == (4, 2, *dst_size) and pk.dtype == pt.dtype == dtype
    torch.testing.assert_close(pk, pt, **TOL[dtype])
    g = torch.randn_like(pk)
    (gk,) = torch.autograd.grad(pk, src, g)
    (gt,) = torch.autograd.grad(pt, src, g)
    torch.testing.assert_close(gk, gt, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "distance,l2_normalize,reduction,weight",
    list(itertools.product(["sq_l2", "l1"], [False, True], ["mean", "sum", "none"], [False, True])),
)
def test_loss_references_agree(dtype, distance, l2_normalize, reduction, weight):
    src, matrix, dst, w = make_case(dtype, weight=weight, seed=1)
    kw = dict(distance=distance, l2_normalize=l2_normalize, reduction=reduction)
    lk = R.equivariance_loss_kornia(src, matrix, dst, w, **kw)
    lt = R.equivariance_loss_torch(src, matrix, dst, w, **kw)
    assert lk.dtype == lt.dtype == dtype
    assert lk.shape == lt.shape == ((3,) if reduction == "none" else ())
    torch.testing.assert_close(lk, lt, **tol(dtype, reduction))
    gk = torch.autograd.grad(lk.sum(), (src, dst))
    gt = torch.autograd.grad(lt.sum(), (src, dst))
    for a, b in zip(gk, gt):
        torch.testing.assert_close(a, b, **tol(dtype, reduction))


@settings(max_examples=30, deadline=None)
@given(
    src_size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    dst_size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    distance=st.sampled_from(["sq_l2", "l1"]),
    l2_normalize=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    weight=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_loss_references_agree_random_sizes(src_size, dst_size, dtype, distance, l2_normalize, reduction, weight, seed):
    src, matrix, dst, w = make_case(dtype, n=2, src_size=src_size, dst_size=dst_size, seed=seed, weight=weight)
    kw = dict(distance=distance, l2_normalize=l2_normalize, reduction=reduction)
    lk = R.equivariance_loss_kornia(src, matrix, dst, w, **kw)
    lt = R.equivariance_loss_torch(src, matrix, dst, w, **kw)
    torch.testing.assert_close(lk, lt, **tol(dtype, reduction))
    for a, b in zip(torch.autograd.grad(lk.sum(), (src, dst)), torch.autograd.grad(lt.sum(), (src, dst))):
        torch.testing.assert_close(a, b, **tol(dtype, reduction))


def test_loss_matches_explicit_formula():
    src, matrix, dst, w = make_case(torch.float64, weight=True, seed=2)
    p = R.warp_normalized_torch(src, matrix, dst.shape[-2:])
    q = R.minmax_normalize(dst)
    p2, q2 = R.l2_normalize_planes(p), R.l2_normalize_planes(q)
    n, c, h, wd = dst.shape
    expect_none = (w[:, None, None, None] * (p2 - q2).abs()).sum((1, 2, 3)) / (c * h * wd)
    got = R.equivariance_loss_kornia(src, matrix, dst, w, distance="l1", l2_normalize=True, reduction="none")
    torch.testing.assert_close(got, expect_none, rtol=1e-9, atol=1e-12)
    mean = R.equivariance_loss_torch(src, matrix, dst, w)
    total = R.equivariance_loss_torch(src, matrix, dst, w, reduction="sum")
    torch.testing.assert_close(mean, (w[:, None, None, None] * (p - q) ** 2).mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(total, mean * n * c * h * wd, rtol=1e-12, atol=0)
    assert torch.equal(R.equivariance_loss_torch(src, matrix, dst), R.equivariance_loss_torch(src, matrix, dst, None))


def test_weight_is_not_differentiated_and_matrix_is_detached():
    src, matrix, dst, w = make_case(torch.float64, weight=True)
    w.requires_grad_()
    matrix.requires_grad_()
    for fn in (R.equivariance_loss_kornia, R.equivariance_loss_torch):
        loss = fn(src, matrix, dst, w)
        gw, gm = torch.autograd.grad(loss, (w, matrix), allow_unused=True)
        assert gw is None and gm is None


def test_noncontiguous_and_mixed_matrix_dtype():
    src, matrix, dst, _ = make_case(torch.float64, c=3)
    view = src[:, 1:]  # strided view
    assert not view.is_contiguous()
    out = R.warp_normalized_kornia(view, matrix.float(), (7, 13))
    assert out.dtype == torch.float64
    torch.testing.assert_close(
        out, R.warp_normalized_torch(view.contiguous(), matrix.float(), (7, 13)), rtol=1e-9, atol=1e-12
    )
    # a float64 matrix with float32 CAMs: warped in float64, returned in float32 (kornia alone would reject it)
    out32 = R.warp_normalized_kornia(src.float(), matrix, (7, 13))
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, R.warp_normalized_torch(src.float(), matrix, (7, 13)), rtol=0, atol=1e-6)


def test_identity_warp_is_minmax():
    src, _, _, _ = make_case(torch.float64)
    eye = torch.eye(2, 3, dtype=torch.float64).expand(3, 2, 3)
    for fn in (R.warp_normalized_kornia, R.warp_normalized_torch):
        torch.testing.assert_close(fn(src, eye, (9, 11)), R.minmax_normalize(src), rtol=1e-12, atol=1e-14)
    loss = R.equivariance_loss_kornia(src, eye, src.detach().clone())
    assert abs(loss.item()) < 1e-24


def test_pixel_matrix_to_theta():
    eye = torch.eye(2, 3, dtype=torch.float64)[None]
    torch.testing.assert_close(R.pixel_matrix_to_theta(eye, (5, 7), (5, 7)), eye)
    # align_corners=True resize maps corner pixels onto corner pixels: identity in normalised coordinates
    m, dsize = resize_matrix(2, (5, 7), (9, 4), dtype=torch.float64)
    torch.testing.assert_close(R.pixel_matrix_to_theta(m, (5, 7), dsize), eye.expand(2, 2, 3), rtol=0, atol=1e-15)
    # a shift of +2 px in x on a 5-wide image is -1.0 in the normalised inverse map
    shift = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    theta = R.pixel_matrix_to_theta(shift, (3, 5), (3, 5))
    torch.testing.assert_close(theta, torch.tensor([[[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]], dtype=torch.float64))


# ------------------------------------------------------------------------------ normalisation
def test_minmax_normalize_hand_values():
    eps = 1e-8
    x = torch.tensor(
        [
            [[[-1.0, 2.0], [2.0, 0.5]]],  # relu -> min 0, max 2 (tied)
            [[[-3.0, -1.0], [-2.0, -0.5]]],  # all negative -> zeros
            [[[4.0, 4.0], [4.0, 4.0]]],  # constant -> zeros
        ],
        dtype=torch.float64,
    )
    out = R.minmax_normalize(x, eps)
    d = 2.0 + eps
    expect = torch.tensor(
        [
            [[[0.0, (2.0 - eps) / d], [(2.0 - eps) / d, (0.5 - eps) / d]]],
            [[[0.0, 0.0], [0.0, 0.0]]],
            [[[0.0, 0.0], [0.0, 0.0]]],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, expect, rtol=1e-15, atol=0)
    assert out[0, 0, 0, 1] == out[0, 0, 1, 0]  # ties give equal values
    assert out.shape == x.shape


def test_minmax_normalize_tie_gradient_is_shared():
    # x > 0 everywhere, eps = 0: out = (x - lo) / (hi - lo), lo = 1 at (0,0), hi = 3 tied at (0,1), (1,0).
    # d sum/d x_ij through the numerator: [x_ij > lo] / D = [0, .5, .5, .5] with D = 2;
    # d sum/d lo = -3/2 + (0 + 2 + 2 + 1)/4 = -1/4; d sum/d hi = -5/4, split over the two ties: -5/8 each.
    x = torch.tensor([[[1.0, 3.0], [3.0, 2.0]]], dtype=torch.float64, requires_grad=True)
    out = R.minmax_normalize(x, eps=0.0)
    torch.testing.assert_close(out.detach(), torch.tensor([[[0.0, 1.0], [1.0, 0.5]]], dtype=torch.float64))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g, torch.tensor([[[-0.25, -0.125], [-0.125, 0.5]]], dtype=torch.float64))


def test_l2_normalize_planes():
    x = torch.tensor([[[[3.0, 4.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    out = R.l2_normalize_planes(x, l2_eps=0.0)
    assert torch.equal(out[0, 0], torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    assert torch.isnan(out[0, 1]).all()  # 0/0 without epsilon
    out = R.l2_normalize_planes(x)  # default l2_eps = 1e-12 keeps a zero plane at zero
    assert torch.equal(out[0, 1], torch.zeros(1, 2, dtype=torch.float64))
    expect = x[0, 0] / torch.sqrt(((x[0, 0] + 1e-12) ** 2).sum())
    assert torch.equal(out[0, 0], expect)


# ------------------------------------------------------------------------------ argument checks
def test_bad_arguments_raise():
    src, matrix, dst, w = make_case(torch.float64, weight=True)
    for fn in (R.warp_normalized_kornia, R.warp_normalized_torch):
        with pytest.raises(ValueError, match="src"):
            fn(src[0], matrix, (4, 4))
        with pytest.raises(ValueError, match="matrix"):
            fn(src, matrix[:2], (4, 4))
        with pytest.raises(TypeError, match="dsize"):
            fn(src, matrix, (4,))
        with pytest.raises(ValueError, match="dsize"):
            fn(src, matrix, (0, 4))
        with pytest.raises(TypeError, match="src"):
            fn(src.int(), matrix, (4, 4))
    for fn in (R.equivariance_loss_kornia, R.equivariance_loss_torch):
        with pytest.raises(ValueError, match="distance"):
            fn(src, matrix, dst, distance="l3")
        with pytest.raises(ValueError, match="reduction"):
            fn(src, matrix, dst, reduction="max")
        with pytest.raises(ValueError, match="N and C"):
            fn(src, matrix, dst[:, :1])
        with pytest.raises(ValueError, match="weight"):
            fn(src, matrix, dst, w[:2])
        with pytest.raises(TypeError, match="dtype"):
            fn(src, matrix, dst.float())
        with pytest.raises(ValueError, match="eps"):
            fn(src, matrix, dst, eps=-1.0)
        with pytest.raises(TypeError, match="l2_normalize"):
            fn(src, matrix, dst, l2_normalize=1)
