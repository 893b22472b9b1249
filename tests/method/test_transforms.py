"""Pixel-matrix transforms of mmcam.transforms: exact against torch ops, the sampler, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcam import transforms as T
from mmcam.ops.reference import minmax_normalize, warp_normalized_kornia, warp_normalized_torch

SETTINGS = settings(max_examples=25, deadline=None)
sizes = st.integers(2, 64)
batch = st.integers(1, 3)
channels = st.integers(1, 2)


def images(n, c, h, w, seed, dtype=torch.float32):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_kornia_warp(x, m, dsize, expect):
    """The kornia reference applies the same transform (in float64: the float32 round trip through
    normalised coordinates is off by ~1e-6 at these sizes)."""
    got = warp_normalized_kornia(x.double(), m.double(), dsize)
    torch.testing.assert_close(got, minmax_normalize(expect.double()), rtol=0, atol=1e-12)


def shifted(x, dx, dy):
    """x moved by (dx, dy) pixels (right, down), zero fill."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


# ------------------------------------------------------------------------------ exact warps
@SETTINGS
@given(n=batch, c=channels, h=sizes, w=sizes, horizontal=st.booleans(), seed=st.integers(0, 2**16))
def test_flip_is_exact(n, c, h, w, horizontal, seed):
    x = images(n, c, h, w, seed)
    m, dsize = T.flip_matrix(n, (h, w), horizontal=horizontal)
    expect = torch.flip(x, (-1,) if horizontal else (-2,))
    assert dsize == (h, w)
    assert torch.equal(T.warp_images(x, m, dsize), expect)
    assert torch.equal(T.warp_images(x, m, dsize, mode="nearest"), expect)
    assert_kornia_warp(x, m, dsize, expect)


@SETTINGS
@given(n=batch, c=channels, h=sizes, w=sizes, data=st.data(), seed=st.integers(0, 2**16))
def test_rot90_is_exact(n, c, h, w, data, seed):
    x = images(n, c, h, w, seed)
    if h == w:
        ks = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    else:  # one parity per batch
        parity = data.draw(st.integers(0, 1))
        ks = data.draw(st.lists(st.sampled_from([parity, parity + 2]), min_size=n, max_size=n))
    m, dsize = T.rot90_matrix(torch.tensor(ks), (h, w))
    expect = torch.stack([torch.rot90(x[i], ks[i], dims=(-2, -1)) for i in range(n)])
    assert dsize == tuple(expect.shape[-2:])
    assert torch.equal(T.warp_images(x, m, dsize), expect)
    masks = (x > 0.5).long() * 3
    assert torch.equal(T.warp_images(masks, m, dsize, mode="nearest"), (expect > 0.5).long() * 3)
    assert_kornia_warp(x, m, dsize, expect)


def test_rot90_direction():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    m, dsize = T.rot90_matrix(torch.tensor([1]), (2, 3))
    assert dsize == (3, 2)
    # counter-clockwise as displayed: the top-right pixel (2) lands top-left
    assert T.warp_images(x, m, dsize)[0, 0].tolist() == [[2.0, 5.0], [1.0, 4.0], [0.0, 3.0]]


@SETTINGS
@given(
    n=batch,
    c=channels,
    h=sizes,
    w=sizes,
    seed=st.integers(0, 2**16),
    shifts=st.lists(st.tuples(st.integers(-70, 70), st.integers(-70, 70)), min_size=3, max_size=3),
)
def test_integer_translation_is_exact(n, c, h, w, seed, shifts):
    x = images(n, c, h, w, seed)
    shift = torch.tensor(shifts[:n])
    m, dsize = T.translation_matrix(shift, (h, w))
    assert dsize == (h, w)
    expect = torch.stack([shifted(x[i], dx, dy) for i, (dx, dy) in enumerate(shifts[:n])])
    assert torch.equal(T.warp_images(x, m, dsize), expect)
    assert torch.equal(T.warp_images(x, m, dsize, mode="nearest"), expect)
    mn = minmax_normalize(x.double())
    expect_mn = torch.stack([shifted(mn[i], dx, dy) for i, (dx, dy) in enumerate(shifts[:n])])
    torch.testing.assert_close(warp_normalized_kornia(x.double(), m.double(), dsize), expect_mn, rtol=0, atol=1e-12)


@SETTINGS
@given(n=batch, c=channels, h=sizes, w=sizes, ho=sizes, wo=sizes, seed=st.integers(0, 2**16))
def test_resize_matches_interpolate(n, c, h, w, ho, wo, seed):
    x = images(n, c, h, w, seed, torch.float64)
    m, dsize = T.resize_matrix(n, (h, w), (ho, wo), dtype=torch.float64)
    assert dsize == (ho, wo)
    expect = F.interpolate(x, size=(ho, wo), mode="bilinear", align_corners=True)
    torch.testing.assert_close(T.warp_images(x, m, dsize), expect, rtol=0, atol=1e-12)
    expect_mn = F.interpolate(minmax_normalize(x), size=(ho, wo), mode="bilinear", align_corners=True)
    torch.testing.assert_close(warp_normalized_kornia(x, m, dsize), expect_mn, rtol=0, atol=1e-12)
    x32 = x.float()
    m32, _ = T.resize_matrix(n, (h, w), (ho, wo))
    expect32 = F.interpolate(x32, size=(ho, wo), mode="bilinear", align_corners=True)
    # the float32 matrix carries the scale (H_out-1)/(H-1) rounded to 24 bits: ~1e-5 px at 64 px
    torch.testing.assert_close(T.warp_images(x32, m32, dsize), expect32, rtol=0, atol=1e-4)


def test_resize_of_singleton_axis():
    x = images(2, 1, 1, 5, 0)
    m, dsize = T.resize_matrix(2, (1, 5), (1, 9))
    expect = F.interpolate(x, size=(1, 9), mode="bilinear", align_corners=True)
    torch.testing.assert_close(T.warp_images(x, m, dsize), expect)
    with pytest.raises(ValueError, match="size 1"):
        T.resize_matrix(2, (1, 5), (3, 9))
    with pytest.raises(ValueError, match="size 1"):
        T.resize_matrix(2, (4, 5), (1, 9))


@SETTINGS
@given(n=batch, c=channels, side=sizes, h=sizes, w=sizes, seed=st.integers(0, 2**16))
def test_affine_quarter_turns_are_rot90(n, c, side, h, w, seed):
    x = images(n, c, side, side, seed)
    for angle, k in ((90.0, 1), (180.0, 2), (-90.0, 3), (270.0, 3), (450.0, 1), (0.0, 0)):
        m, dsize = T.affine_matrix(torch.full((n,), angle), (side, side))
        assert torch.equal(m, T.rot90_matrix(torch.full((n,), k), (side, side))[0])
        assert torch.equal(T.warp_images(x, m, dsize), torch.rot90(x, k, dims=(-2, -1)))
    y = images(n, c, h, w, seed)  # half turn about the centre of a non-square image
    m, dsize = T.affine_matrix(torch.full((n,), 180.0), (h, w))
    assert torch.equal(T.warp_images(y, m, dsize), torch.rot90(y, 2, dims=(-2, -1)))


def test_affine_composition_order():
    n = 2
    angle = torch.tensor([30.0, -75.0], dtype=torch.float64)
    scale = torch.tensor([[1.2, 0.9], [0.8, 1.1]], dtype=torch.float64)
    shear = torch.tensor([[5.0, -8.0], [0.0, 3.0]], dtype=torch.float64)
    trans = torch.tensor([[2.0, -1.5], [0.0, 4.0]], dtype=torch.float64)
    m, dsize = T.affine_matrix(angle, (7, 9), scale=scale, shear=shear, translation=trans, dtype=torch.float64)
    assert dsize == (7, 9)
    ctr = torch.tensor([4.0, 3.0], dtype=torch.float64)
    for i in range(n):
        a = torch.deg2rad(angle[i])
        rot = torch.tensor([[torch.cos(a), torch.sin(a)], [-torch.sin(a), torch.cos(a)]], dtype=torch.float64)
        tx, ty = torch.tan(torch.deg2rad(shear[i]))
        sh = torch.tensor([[1.0, 0.0], [ty, 1.0]], dtype=torch.float64) @ torch.tensor(
            [[1.0, tx], [0.0, 1.0]], dtype=torch.float64
        )
        lin = rot @ torch.diag(scale[i]) @ sh
        p = torch.tensor([1.0, 5.0], dtype=torch.float64)
        expect = lin @ (p - ctr) + ctr + trans[i]
        torch.testing.assert_close(m[i, :, :2] @ p + m[i, :, 2], expect, rtol=0, atol=1e-12)
    # isotropic (N,) scale, and a custom centre that stays fixed under rotation
    c = torch.tensor([[1.0, 2.0], [3.0, 0.5]])
    m, _ = T.affine_matrix(torch.tensor([40.0, 200.0]), (7, 9), scale=torch.tensor([1.0, 1.0]), center=c)
    torch.testing.assert_close(torch.einsum("nij,nj->ni", m[:, :, :2], c) + m[:, :, 2], c)


def test_reference_warps_match_warp_images_on_general_affine():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, 12, 15, dtype=torch.float64, generator=gen)
    m, dsize, _ = T.sample_transform(4, (12, 15), policy="affine", generator=gen, dtype=torch.float64)
    expect = T.warp_images(minmax_normalize(x), m, dsize)
    torch.testing.assert_close(warp_normalized_kornia(x, m, dsize), expect, rtol=0, atol=1e-12)
    torch.testing.assert_close(warp_normalized_torch(x, m, dsize), expect, rtol=0, atol=1e-12)


def test_warp_images_gradcheck():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    m, dsize, _ = T.sample_transform(2, (5, 6), policy="affine", generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: T.warp_images(t, m, (4, 7)), (x,))


def test_warp_images_nearest_keeps_labels():
    masks = torch.randint(0, 4, (2, 1, 9, 8), generator=torch.Generator().manual_seed(5))
    m, dsize, _ = T.sample_transform(2, (9, 8), policy="affine", generator=torch.Generator().manual_seed(6))
    out = T.warp_images(masks, m, dsize, mode="nearest")
    assert out.dtype == masks.dtype and out.shape == masks.shape
    assert set(out.unique().tolist()) <= {0, 1, 2, 3}


# ------------------------------------------------------------------------------ sampler
def sample(seed, **kw):
    return T.sample_transform(
        kw.pop("n", 4), kw.pop("size", (240, 240)), generator=torch.Generator().manual_seed(seed), **kw
    )


@pytest.mark.parametrize("policy", T.POLICIES)
def test_sampler_is_deterministic(policy):
    a, b = sample(7, policy=policy), sample(7, policy=policy)
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    draws = [sample(s, policy=policy) for s in range(8)]
    assert any(not torch.equal(d[0], draws[0][0]) or d[1:] != draws[0][1:] for d in draws[1:])


def test_sampler_reaches_all_families():
    families = {sample(s)[2] for s in range(40)}
    assert families == set(T.FAMILIES)


def test_sampler_families_and_bounds():
    eye = torch.eye(2)
    for s in range(20):
        m, dsize, fam = sample(s, n=8, size=(100, 50), policy="translate")
        assert fam == "translate" and dsize == (100, 50)
        assert torch.equal(m[:, :, :2], eye.expand(8, 2, 2))
        assert (m[:, 0, 2].abs() <= 0.3 * 50).all() and (m[:, 1, 2].abs() <= 0.3 * 100).all()
        assert m[:, :, 2].unique().numel() > 1  # per sample

        m, dsize, _ = sample(s, n=3, policy="resize")
        assert dsize[0] == dsize[1] and dsize[0] in range(192, 289, 8)
        torch.testing.assert_close(m, T.resize_matrix(3, (240, 240), dsize)[0])
        _, dsize, _ = sample(s, n=3, size=(120, 60), policy="resize")
        side = dsize[0] * 2
        assert side in range(192, 289, 8) and dsize[1] == int(side / 4 + 0.5)

        m, dsize, _ = sample(s, n=6, size=(32, 32), policy="rot90")
        assert not (m[:, :, :2] == eye).all((1, 2)).any()  # k in {1, 2, 3}
        m, dsize, _ = sample(s, n=6, size=(32, 48), policy="rot90")  # non-square: k = 2
        assert dsize == (32, 48) and torch.equal(m, T.rot90_matrix(torch.full((6,), 2), (32, 48))[0])

        m, dsize, _ = sample(s, n=3, size=(30, 40), policy="flip")
        assert torch.equal(m[0], m[1]) and torch.equal(m[0], m[2])  # per batch
        assert any(torch.equal(m, T.flip_matrix(3, (30, 40), horizontal=hz)[0]) for hz in (True, False))

        m, dsize, _ = sample(s, n=5, size=(30, 40), policy="affine")
        det = torch.linalg.det(m[:, :, :2].double())
        assert dsize == (30, 40) and ((det > 0.8**2 - 1e-5) & (det < 1.25**2 + 1e-5)).all()


def test_sampler_options():
    m, _, _ = T.sample_transform(
        2, (8, 8), policy="rot90", dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    assert m.dtype == torch.float64 and m.device.type == "cpu"
    torch.manual_seed(0)
    a = T.sample_transform(3, (8, 8))
    torch.manual_seed(0)
    b = T.sample_transform(3, (8, 8))
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert T.sample_transform(0, (8, 8), policy="translate")[0].shape == (0, 2, 3)


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="policy.*'all'.*'affine'"):
        T.sample_transform(2, (8, 8), policy="zoom")
    with pytest.raises(TypeError, match="generator"):
        T.sample_transform(2, (8, 8), generator=0)
    with pytest.raises(ValueError, match="size"):
        T.flip_matrix(2, (0, 8), horizontal=True)
    with pytest.raises(TypeError, match="size"):
        T.flip_matrix(2, (8,), horizontal=True)
    with pytest.raises(TypeError, match="size"):
        T.flip_matrix(2, (8.0, 8), horizontal=True)
    with pytest.raises(TypeError, match="horizontal"):
        T.flip_matrix(2, (8, 8), horizontal="yes")
    with pytest.raises(ValueError, match="n"):
        T.flip_matrix(-1, (8, 8), horizontal=True)
    with pytest.raises(TypeError, match="n"):
        T.resize_matrix(2.0, (8, 8), (4, 4))
    with pytest.raises(ValueError, match="out_size"):
        T.resize_matrix(2, (8, 8), (4, -4))
    with pytest.raises(ValueError, match="k must hold"):
        T.rot90_matrix(torch.tensor([0, 4]), (8, 8))
    with pytest.raises(ValueError, match="k must hold"):
        T.rot90_matrix(torch.tensor([-1]), (8, 8))
    with pytest.raises(TypeError, match="k"):
        T.rot90_matrix(torch.tensor([1.0]), (8, 8))
    with pytest.raises(ValueError, match="k"):
        T.rot90_matrix(torch.tensor([[1]]), (8, 8))
    with pytest.raises(ValueError, match="odd and even"):
        T.rot90_matrix(torch.tensor([1, 2]), (8, 6))
    with pytest.raises(ValueError, match="shift"):
        T.translation_matrix(torch.zeros(2, 3), (8, 8))
    with pytest.raises(ValueError, match="shift"):
        T.translation_matrix(torch.tensor([[float("nan"), 0.0]]), (8, 8))
    with pytest.raises(ValueError, match="angle"):
        T.affine_matrix(torch.zeros(2, 1), (8, 8))
    with pytest.raises(ValueError, match="scale"):
        T.affine_matrix(torch.zeros(2), (8, 8), scale=torch.zeros(3))
    with pytest.raises(ValueError, match="scale"):
        T.affine_matrix(torch.zeros(2), (8, 8), scale=torch.zeros(2))
    with pytest.raises(ValueError, match="shear"):
        T.affine_matrix(torch.zeros(1), (8, 8), shear=torch.tensor([[90.0, 0.0]]))
    with pytest.raises(ValueError, match="translation"):
        T.affine_matrix(torch.zeros(2), (8, 8), translation=torch.zeros(2))
    with pytest.raises(ValueError, match="center"):
        T.affine_matrix(torch.zeros(2), (8, 8), center=torch.zeros(2))
    with pytest.raises(TypeError, match="dtype"):
        T.flip_matrix(2, (8, 8), horizontal=True, dtype=torch.int64)

    x = torch.zeros(2, 1, 8, 8)
    m, dsize = T.flip_matrix(2, (8, 8), horizontal=True)
    with pytest.raises(ValueError, match="images"):
        T.warp_images(x[0], m, dsize)
    with pytest.raises(TypeError, match="images"):
        T.warp_images(x.long(), m, dsize)
    with pytest.raises(ValueError, match="matrix"):
        T.warp_images(x, m[:1], dsize)
    with pytest.raises(TypeError, match="matrix"):
        T.warp_images(x, m.long(), dsize)
    with pytest.raises(ValueError, match="invertible"):
        T.warp_images(x, torch.zeros(2, 2, 3), dsize)
    with pytest.raises(ValueError, match="invertible"):
        T.warp_images(x, torch.full((2, 2, 3), float("inf")), dsize)
    with pytest.raises(ValueError, match="dsize"):
        T.warp_images(x, m, (0, 8))
    with pytest.raises(ValueError, match="mode"):
        T.warp_images(x, m, dsize, mode="bicubic")
