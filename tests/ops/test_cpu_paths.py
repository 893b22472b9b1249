"""Dedicated coverage of the CPU kernels' code paths behind ``equivariance_terms(..., backend="fused")``.

The min-max backward runs in one vectorised pass over blocks of 8 elements (a scalar tail for the rest
of a row) and gives the elements tied at the plane's minimum or maximum their share in a fix-up pass;
the gradient of each side is produced row by row. These tests pin the cases that exercise those paths:
row widths around the block size, planes with many tied maxima, all-positive planes (ties at the minimum
count), and every transform family, against the eager torch reference in float64. Maps whose taps land on
pixel centres (flips, 90° rotations, integer translations) skip zero-weight taps of finite gradient rows
in the warp adjoint: they are checked in float64 and float32, at 1 and 2 threads, and with NaN / inf.
"""

from __future__ import annotations

import pytest
import torch

from mmcam import ops, transforms
from mmcam.losses import equivariance_terms

from op_cases import family_matrix

FAMILIES = ("flip", "rot90", "translate", "resize", "affine")


def _run(args, backend):
    """Forward + backward of a weighted sum of the terms; returns (terms, grad_cams, grad_cams_t)."""
    cams, cams_t, *rest = args
    cams = cams.detach().clone().requires_grad_(True)
    cams_t = cams_t.detach().clone().requires_grad_(True)
    terms = equivariance_terms(cams, cams_t, *rest, backend=backend)
    weights = torch.arange(1, terms.numel() + 1, dtype=terms.dtype).view_as(terms)
    (weights * terms).sum().backward()
    return terms.detach(), cams.grad, cams_t.grad


def _plane_batch(shape, gen, kind):
    """(N, M, H, W) float64 CAMs: "tied_max" has a plateau of equal maxima, "positive" no value <= 0 (so
    lo > 0 and its ties get a gradient), "mixed" random signs."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "tied_max":
        x[..., : shape[-2] // 2, : shape[-1] // 3] = x.amax(dim=(-2, -1), keepdim=True) + 1.0
    elif kind == "positive":
        x = x.abs() + 0.25
        x[..., 0, :2] = 0.25  # two elements tied at the minimum
    return x


def _case(n, m, src, family, kind, seed):
    """One batch of the family's transform; the destination size is the family's (resize changes it)."""
    gen = torch.Generator().manual_seed(seed)
    matrix, dsize = family_matrix(family, n, src, gen, dtype=torch.float64)
    return (
        _plane_batch((n, m, *src), gen, kind),
        _plane_batch((n, m, *dsize), gen, kind),
        matrix,
        torch.ones(n, dtype=torch.long),
        torch.randint(0, 2, (n, m), generator=gen),
        torch.randint(0, 2, (n, m), generator=gen),
    )


def _assert_fused_matches_torch_float64(args):
    """Terms and both gradients of the fused backend equal the eager torch reference's (float64)."""
    fused = _run(args, "fused")
    expected = _run(args, "torch")
    for name, a, b in zip(("terms", "grad cams", "grad cams_t"), fused, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["mixed", "tied_max", "positive"])
@pytest.mark.parametrize("width", [7, 8, 9, 17])
def test_fused_matches_torch_reference_on_block_edges_and_ties(family, kind, width):
    _assert_fused_matches_torch_float64(_case(3, 2, (width + 3, width), family, kind, seed=width))


@pytest.mark.parametrize("width", [63, 64, 65, 150])
def test_general_affine_rows_longer_than_a_chunk_match_torch_reference(width):
    """The general warp and its adjoint form the interior pixels of a row in chunks of 64 (coordinates,
    blend and tap products vectorised around a scalar gather / scatter): spans shorter than, equal to and
    longer than one chunk, with a tail, agree with the float64 eager reference."""
    _assert_fused_matches_torch_float64(_case(3, 2, (width // 2 + 5, width), "affine", "mixed", seed=width))


def _at_1_and_2_threads(run):
    """[run() at 1 thread, run() at 2 threads]; the thread count is restored afterwards."""
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(run())
    finally:
        torch.set_num_threads(previous)
    return results


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_paper_like_float32_bitwise_across_threads(family):
    """The reductions run in fixed lanes and fixed order: 1 and 2 threads agree bitwise."""
    args = _case(4, 2, (40, 44), family, "mixed", seed=3)
    args = tuple(a.float() if a.is_floating_point() and a.dim() == 4 else a for a in args)
    results = _at_1_and_2_threads(lambda: _run(args, "fused"))
    for a, b in zip(*results):
        assert torch.equal(a, b)


# --- exact (integer-tap) maps: the separable warp adjoint skips zero-weight taps of finite gradient rows ---


def _exact_matrix(kind, n, size):
    """(matrix, dsize) of a map whose taps all land on pixel centres: flips, 90° rotations (square planes
    only keep the size), integer translations (some sample shifted by more than the plane: all zero)."""
    h, w = size
    if kind == "hflip":
        return transforms.flip_matrix(n, size, horizontal=True, dtype=torch.float64)
    if kind == "vflip":
        return transforms.flip_matrix(n, size, horizontal=False, dtype=torch.float64)
    if kind == "rot90":
        return transforms.rot90_matrix(torch.arange(n) % 4, size, dtype=torch.float64)
    shifts = torch.tensor([[3.0, -2.0], [-1.0, 4.0], [0.0, 0.0], [w + 2.0, 1.0]], dtype=torch.float64)[:n]
    return transforms.translation_matrix(shifts, size, dtype=torch.float64)


EXACT = ("hflip", "vflip", "rot90", "int_translate")


def _exact_case(kind, size, dtype, seed, n=4):
    gen = torch.Generator().manual_seed(seed)
    matrix, dsize = _exact_matrix(kind, n, size)
    cams = _plane_batch((n, 2, *size), gen, "mixed").to(dtype)
    cams_t = _plane_batch((n, 2, *dsize), gen, "mixed").to(dtype)
    return (
        cams,
        cams_t,
        matrix.to(dtype),
        torch.ones(n, dtype=torch.long),
        torch.randint(0, 2, (n, 2), generator=gen),
        torch.ones(n, 2, dtype=torch.long),
    )


@pytest.mark.parametrize("kind", EXACT)
@pytest.mark.parametrize("size", [(9, 9), (16, 16), (12, 17)])
def test_exact_maps_match_torch_reference_float64(kind, size):
    if kind == "rot90" and size[0] != size[1]:
        size = (size[0], size[0])
    args = _exact_case(kind, size, torch.float64, seed=size[1])
    for name, a, b in zip(("terms", "grad cams", "grad cams_t"), _run(args, "fused"), _run(args, "torch")):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("kind", EXACT)
def test_exact_maps_float32_match_float64_reference_and_threads(kind):
    args = _exact_case(kind, (24, 24), torch.float32, seed=5)
    args64 = tuple(a.double() if a.is_floating_point() else a for a in args)
    expected = _run(args64, "torch")
    results = _at_1_and_2_threads(lambda: _run(args, "fused"))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    for name, a, b in zip(("terms", "grad cams", "grad cams_t"), results[0], expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6, msg=lambda s: f"{name}: {s}")


def _run_with_upstream(args, backend, upstream):
    cams, cams_t, *rest = args
    cams = cams.detach().clone().requires_grad_(True)
    cams_t = cams_t.detach().clone().requires_grad_(True)
    terms = equivariance_terms(cams, cams_t, *rest, backend=backend)
    terms.backward(upstream)
    return terms.detach(), cams.grad, cams_t.grad


@pytest.mark.parametrize("kind", EXACT + ("resize",))
@pytest.mark.parametrize("poison", ["inf_cam", "nan_cam", "inf_upstream"])
def test_non_finite_values_stay_deterministic(kind, poison):
    """A zero-weight tap is skipped only in gradient rows that are all finite, so NaN / inf still spread
    through 0 * value as before. (The fused op's NaN / inf positions are not those of the eager references
    for non-finite inputs -- that predates the skip -- so this pins determinism and that non-finite values
    do reach the outputs.)"""
    if kind == "resize":
        gen = torch.Generator().manual_seed(11)
        matrix, dsize = transforms.resize_matrix(4, (12, 12), (18, 18), dtype=torch.float64)
        args = (
            _plane_batch((4, 2, 12, 12), gen, "mixed"),
            _plane_batch((4, 2, *dsize), gen, "mixed"),
            matrix,
            torch.ones(4, dtype=torch.long),
            torch.ones(4, 2, dtype=torch.long),
            torch.ones(4, 2, dtype=torch.long),
        )
    else:
        args = _exact_case(kind, (12, 12), torch.float64, seed=7)
    upstream = torch.ones(2, 2, dtype=torch.float64)
    cams = args[0].clone()
    if poison == "inf_cam":
        cams[1, 0, 3, 4] = float("inf")
    elif poison == "nan_cam":
        cams[2, 1, 5, 0] = float("nan")
    else:
        upstream[0, 1] = float("inf")
    args = (cams, *args[1:])
    results = _at_1_and_2_threads(lambda: _run_with_upstream(args, "fused", upstream))
    for a, b in zip(*results):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    assert any(not torch.isfinite(t).all() for t in results[0])


def _shifted(planes, dx, dy):
    """planes (N, C, H, W) moved by (dx, dy) integer pixels, zero fill: the expected warp of a translation."""
    out = torch.zeros_like(planes)
    h, w = planes.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    out[..., ys, xs] = planes[..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_maps_forward_copies_pixels_bitwise(dtype):
    """Flips and integer shifts move pixels without arithmetic (the warp copies runs of a row forwards or
    backwards): bitwise equal to torch.flip / shifted slices of mn(src)."""
    from mmcam.ops import reference

    gen = torch.Generator().manual_seed(0)
    src = _plane_batch((1, 2, 11, 13), gen, "mixed").to(dtype)
    mn = reference.minmax_normalize(src)
    for horizontal, dim in ((True, -1), (False, -2)):
        matrix, dsize = transforms.flip_matrix(1, (11, 13), horizontal=horizontal, dtype=dtype)
        assert torch.equal(ops.warp_normalized(src, matrix, dsize), mn.flip(dim))
    for dx, dy in ((3, -2), (-4, 5), (0, 0), (15, 1)):
        matrix, dsize = transforms.translation_matrix(torch.tensor([[dx, dy]], dtype=dtype), (11, 13), dtype=dtype)
        assert torch.equal(ops.warp_normalized(src, matrix, dsize), _shifted(mn, dx, dy)), (dx, dy)
