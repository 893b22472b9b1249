"""Dedicated coverage of the CPU kernels' code paths behind ``equivariance_terms(..., backend="fused")``.

The min-max backward runs in one vectorised pass over blocks of 8 elements (a scalar tail for the rest
of a row) and gives the elements tied at the plane's minimum or maximum their share in a fix-up pass;
the gradient of each side is produced row by row. These tests pin the cases that exercise those paths:
row widths around the block size, planes with many tied maxima, all-positive planes (ties at the minimum
count), and every transform family, against the eager torch reference in float64.
"""

from __future__ import annotations

import pytest
import torch

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
    return (_plane_batch((n, m, *src), gen, kind), _plane_batch((n, m, *dsize), gen, kind), matrix,
            torch.ones(n, dtype=torch.long), torch.randint(0, 2, (n, m), generator=gen),
            torch.randint(0, 2, (n, m), generator=gen))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["mixed", "tied_max", "positive"])
@pytest.mark.parametrize("width", [7, 8, 9, 17])
def test_fused_matches_torch_reference_on_block_edges_and_ties(family, kind, width):
    args = _case(3, 2, (width + 3, width), family, kind, seed=width)
    fused = _run(args, "fused")
    expected = _run(args, "torch")
    for name, a, b in zip(("terms", "grad cams", "grad cams_t"), fused, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_paper_like_float32_bitwise_across_threads(family):
    """The reductions run in fixed lanes and fixed order: 1 and 2 threads agree bitwise."""
    args = _case(4, 2, (40, 44), family, "mixed", seed=3)
    args = tuple(a.float() if a.is_floating_point() and a.dim() == 4 else a for a in args)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_run(args, "fused"))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*results):
        assert torch.equal(a, b)
