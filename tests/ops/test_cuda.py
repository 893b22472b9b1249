"""The CUDA kernels of the fused operators (issue 6): parity with the CPU operator and both eager
references on the same inputs, deterministic mode, 16-bit inputs, strides, opcheck and torch.compile.

Skipped on machines without a CUDA device. On a machine with one, a build without the CUDA kernels
fails ``test_build_has_cuda_kernels`` instead of silently skipping everything.
"""

from __future__ import annotations

import pytest
import torch

import mmcam
from mmcam import ops
from mmcam.losses import equivariance_terms
from mmcam.ops import reference

from op_cases import FAMILIES, cams, family_matrix, random_affine
from op_cases import deterministic_algorithms as _deterministic

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def test_build_has_cuda_kernels():
    assert mmcam.build_info()["cuda"], "a CUDA device is present but mmcam._C was built without CUDA kernels"


needs_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and mmcam.build_info()["cuda"]),
    reason="needs a CUDA device and mmcam built with its CUDA kernels",
)


# (relative tolerance per element, tolerance relative to the tensor's largest magnitude) per input dtype.
_TOLERANCE = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-5, 2e-6),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (4e-2, 4e-2),
}


def _assert_close(actual, expected, dtype, what):
    """|actual - expected| <= rtol |expected| + scale_tol max|expected| element-wise (norm-wise accuracy:
    gradients of a mean are tiny, so a fixed absolute tolerance would make their comparison vacuous)."""
    rtol, scale_tol = _TOLERANCE[dtype]
    a, e = actual.detach().cpu().to(torch.float64), expected.detach().cpu().to(torch.float64)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(e.shape)}"
    scale = float(e.abs().max()) if e.numel() else 0.0
    error = (a - e).abs()
    bad = ~(error <= rtol * e.abs() + scale_tol * scale + 1e-300)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.numel()} off, worst {float(error.max()):.3g} (scale {scale:.3g})"
    )


def _terms_case(family, n, m, size, dtype, seed):
    """Inputs of equivariance_terms on the CPU (float64 or dtype): CAMs, matrix, labels and predictions."""
    gen = torch.Generator().manual_seed(seed)
    if family == "affine":
        matrix, dsize = random_affine(n, size, size, gen), size
    else:
        matrix, dsize = family_matrix(family, n, size, gen)
    c = cams((n, m) + tuple(size), gen, dtype)
    ct = cams((n, m) + tuple(dsize), gen, dtype)
    labels = (torch.rand(n, generator=gen) < 0.75).long()
    labels[0] = 1
    pred = (torch.rand(n, m, generator=gen) < 0.6).long()
    pred_t = (torch.rand(n, m, generator=gen) < 0.6).long()
    return c, ct, matrix.to(dtype), labels, pred, pred_t


def _as_float64(args):
    """The same inputs in float64: the references are evaluated there, so a float32 result is compared to
    the exact answer for its own inputs rather than to another float32 computation's rounding."""
    return tuple(a.to(torch.float64) if a.is_floating_point() else a for a in args)


def _terms_with_grads(args, device, backend="fused", dtype=None):
    c, ct, matrix, labels, pred, pred_t = (a.to(device) for a in args)
    if dtype is not None:
        c, ct = c.to(dtype), ct.to(dtype)
    c = c.detach().requires_grad_(True)
    ct = ct.detach().requires_grad_(True)
    terms = equivariance_terms(c, ct, matrix, labels, pred, pred_t, backend=backend)
    weights = torch.arange(1, terms.numel() + 1, dtype=terms.dtype, device=terms.device).view_as(terms)
    (terms * weights).sum().backward()
    return terms.detach().cpu(), c.grad.cpu(), ct.grad.cpu()


def _assert_all_close(actual, expected, dtype, what):
    for name, a, e in zip(("value", "grad of the first input", "grad of the second input"), actual, expected):
        _assert_close(a, e, dtype, f"{what}, {name}")


@needs_kernels
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("m", [2, 4])
def test_terms_match_cpu_and_references(family, dtype, m):
    args = _terms_case(family, 5, m, (37, 41), dtype, seed=m)
    on_cuda = _terms_with_grads(args, CUDA)
    _assert_all_close(on_cuda, _terms_with_grads(args, "cpu"), dtype, f"{family} CUDA vs CPU")
    for backend in ("torch", "kornia"):
        _assert_all_close(
            on_cuda, _terms_with_grads(_as_float64(args), CUDA, backend), dtype, f"{family} CUDA vs {backend}"
        )


@needs_kernels
@pytest.mark.parametrize("deterministic", [False, True])
def test_terms_strided_inputs_and_stop_gradient(deterministic):
    """Strided views of both views' CAMs, three networks with mixed predictions (so each network's CMER
    pairs read the others' maps as fixed targets): CUDA and CPU gradients agree for both inputs."""
    gen = torch.Generator().manual_seed(3)
    wide = cams((4, 4, 32, 40), gen, torch.float32)
    wide_t = cams((4, 4, 32, 40), gen, torch.float32)
    matrix = random_affine(4, (32, 40), (32, 40), gen).float()
    labels = torch.tensor([1, 1, 0, 1])
    pred = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0]])
    pred_t = torch.tensor([[0, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1]])
    results = []
    for device in (CUDA, "cpu"):
        c = wide.to(device)[:, 1:].detach().requires_grad_(True)  # strided views
        ct = wide_t.to(device)[:, 1:].detach().requires_grad_(True)
        with _deterministic(deterministic and device != "cpu"):
            terms = equivariance_terms(c, ct, matrix.to(device), labels.to(device), pred.to(device), pred_t.to(device))
            weights = torch.arange(1, 7, dtype=terms.dtype, device=terms.device).view(2, 3)
            (terms * weights).sum().backward()
        results.append((terms.detach(), c.grad, ct.grad))
    _assert_all_close(results[0], results[1], torch.float32, "strided CUDA vs CPU")


@needs_kernels
@pytest.mark.parametrize("family", ["resize", "affine", "rot90"])
def test_deterministic_backward_is_bitwise_reproducible_and_matches_atomic(family):
    args = _terms_case(family, 8, 2, (64, 64), torch.float32, seed=11)
    with _deterministic(True):
        first = _terms_with_grads(args, CUDA)
        second = _terms_with_grads(args, CUDA)
    for a, b in zip(first, second):
        assert torch.equal(a, b), "deterministic mode must give bitwise equal results"
    fast = _terms_with_grads(args, CUDA)
    _assert_all_close(fast, first, torch.float32, f"{family} atomic vs gather")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_terms_16_bit_inputs_within_tolerance(dtype):
    args = _terms_case("translate", 6, 2, (48, 48), torch.float64, seed=5)
    rounded = tuple(a.to(dtype).to(torch.float64) if a.is_floating_point() and a.dim() == 4 else a for a in args)
    low = _terms_with_grads(rounded, CUDA, dtype=dtype)
    exact = _terms_with_grads(rounded, "cpu")
    assert all(t.dtype == dtype for t in low)
    assert all(bool(torch.isfinite(t).all()) for t in low)
    _assert_all_close(low, exact, dtype, f"{dtype}")


def _pair_with_grads(src, matrix, dst, weight, device, **options):
    s = src.to(device).detach().requires_grad_(True)
    d = dst.to(device).detach().requires_grad_(True)
    w = None if weight is None else weight.to(device)
    out = ops.equivariance_loss(s, matrix.to(device), d, w, **options)
    out.sum().backward()
    return out.detach().cpu(), s.grad.cpu(), d.grad.cpu()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "options",
    [
        dict(distance="sq_l2", l2_normalize=False, reduction="mean"),
        dict(distance="l1", l2_normalize=True, reduction="none"),
        dict(distance="sq_l2", l2_normalize=True, reduction="sum"),
    ],
)
def test_equivariance_loss_matches_cpu_and_references(dtype, options):
    gen = torch.Generator().manual_seed(7)
    src = cams((4, 3, 30, 34), gen, dtype)
    dst = cams((4, 3, 28, 36), gen, dtype)
    matrix = random_affine(4, (30, 34), (28, 36), gen).to(dtype)
    weight = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=dtype)
    on_cuda = _pair_with_grads(src, matrix, dst, weight, CUDA, **options)
    _assert_all_close(on_cuda, _pair_with_grads(src, matrix, dst, weight, "cpu", **options), dtype, "CUDA vs CPU")
    src64, matrix64, dst64, weight64 = _as_float64((src, matrix, dst, weight))
    for fn in (reference.equivariance_loss_torch, reference.equivariance_loss_kornia):
        s = src64.to(CUDA).detach().clone().requires_grad_(True)
        d = dst64.to(CUDA).detach().clone().requires_grad_(True)
        out = fn(s, matrix64.to(CUDA), d, weight64.to(CUDA), **options)
        out.sum().backward()
        _assert_all_close(on_cuda, (out.detach().cpu(), s.grad.cpu(), d.grad.cpu()), dtype, fn.__name__)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_warp_normalized_matches_cpu_and_kornia(dtype):
    gen = torch.Generator().manual_seed(2)
    src = cams((3, 2, 25, 31), gen, dtype, non_contiguous=True)
    matrix = random_affine(3, (25, 31), (20, 40), gen).to(dtype)
    out = ops.warp_normalized(src.to(CUDA), matrix.to(CUDA), (20, 40))
    _assert_close(out, ops.warp_normalized(src, matrix, (20, 40)), dtype, "CUDA vs CPU")
    src64, matrix64 = _as_float64((src, matrix))
    _assert_close(
        out, reference.warp_normalized_kornia(src64.to(CUDA), matrix64.to(CUDA), (20, 40)), dtype, "CUDA vs kornia"
    )


@needs_kernels
@pytest.mark.parametrize("deterministic", [False, True])
def test_gradcheck_float64(deterministic):
    gen = torch.Generator().manual_seed(4)
    src = cams((2, 2, 7, 9), gen, torch.float64).to(CUDA).requires_grad_(True)
    dst = cams((2, 2, 8, 6), gen, torch.float64).to(CUDA).requires_grad_(True)
    matrix = random_affine(2, (7, 9), (8, 6), gen).to(CUDA)
    labels = torch.ones(2, device=CUDA)
    pred = torch.ones(2, 2, device=CUDA)
    # The fast path scatters with atomics: its float64 sums may differ in the last bits between calls.
    nondet_tol = 0.0 if deterministic else 1e-12
    with _deterministic(deterministic):
        assert torch.autograd.gradcheck(lambda s: ops.warp_normalized(s, matrix, (8, 6)), (src,), nondet_tol=nondet_tol)
        assert torch.autograd.gradcheck(
            lambda s, d: ops.equivariance_loss(s, matrix, d, l2_normalize=True), (src, dst), nondet_tol=nondet_tol
        )
        # Finite differences see through the CMER stop-gradient: check column i of the terms against
        # network i's own planes, the other network's held fixed (as tests/method/test_losses.py does on the CPU).
        for i in range(2):

            def column_i(a, b, i=i):
                full = torch.cat([src.detach()[:, :i], a, src.detach()[:, i + 1 :]], dim=1)
                full_t = torch.cat([dst.detach()[:, :i], b, dst.detach()[:, i + 1 :]], dim=1)
                return equivariance_terms(full, full_t, matrix, labels, pred, pred)[:, i]

            own = (
                src.detach()[:, i : i + 1].clone().requires_grad_(True),
                dst.detach()[:, i : i + 1].clone().requires_grad_(True),
            )
            assert torch.autograd.gradcheck(column_i, own, eps=1e-7, atol=1e-7, rtol=1e-5, nondet_tol=nondet_tol)


# Source->destination matrices for a source with a size-1 axis (a 19x1 column
# or a 1x23 row) into a 17x21 destination: a general affine, a 90-degree rotation (the kept source
# coordinate depends on the destination column only) and an axis-aligned resize (on the row only).
_SINGLETON_MATRICES = {
    "affine": None,
    "rot90": [[0.0, -1.0, 10.0], [1.0, 0.0, 2.0]],
    "resize": [[1.3, 0.0, 1.0], [0.0, 0.8, 1.5]],
}


@needs_kernels
@pytest.mark.parametrize("src_size", [(19, 1), (1, 23)])
@pytest.mark.parametrize("kind", list(_SINGLETON_MATRICES))
def test_singleton_source_axis_gather_matches_scatter_and_cpu(src_size, kind):
    """A source axis of size 1 is read at its one pixel from everywhere; the deterministic gather scans, for
    each source pixel, only the destination columns of each row that can sample near it (not the whole
    destination) and must still find every contribution: gather, atomic scatter and CPU agree."""
    gen = torch.Generator().manual_seed(17)
    src = cams((3, 2) + src_size, gen, torch.float64)
    dst = cams((3, 2, 17, 21), gen, torch.float64)
    fixed = _SINGLETON_MATRICES[kind]
    if fixed is None:
        matrix = random_affine(3, src_size, (17, 21), gen)
    else:
        matrix = torch.tensor([fixed] * 3, dtype=torch.float64)
    upstream = torch.randn(3, 2, 17, 21, generator=gen, dtype=torch.float64)

    def grads(device):
        s = src.to(device).requires_grad_(True)
        ops.warp_normalized(s, matrix.to(device), (17, 21)).backward(upstream.to(device))
        return (s.grad.cpu(), *_pair_with_grads(src, matrix, dst, None, device, l2_normalize=True))

    expected = grads("cpu")
    assert float(expected[0].abs().max()) > 0 and float(expected[2].abs().max()) > 0  # not a vacuous comparison
    for deterministic in (False, True):
        with _deterministic(deterministic):
            on_cuda = grads(CUDA)
        for name, a, e in zip(("warp grad", "loss", "loss grad of src", "loss grad of dst"), on_cuda, expected):
            _assert_close(a, e, torch.float64, f"{kind} {src_size} deterministic={deterministic}: {name}")


@needs_kernels
def test_many_tiles_per_plane_match_cpu():
    """600x700 planes: 411 tiles of 1024 pixels each, more than one per thread of the per-plane reductions
    of the min/max statistics and of the tile sums (issue 12); both backward paths agree with the CPU."""
    args = _terms_case("affine", 2, 2, (600, 700), torch.float32, seed=8)
    expected = _terms_with_grads(args, "cpu")
    src, dst, matrix = args[0], args[1], args[2]
    expected_pair = _pair_with_grads(src, matrix, dst, None, "cpu", l2_normalize=True)
    for deterministic in (False, True):
        with _deterministic(deterministic):
            _assert_all_close(
                _terms_with_grads(args, CUDA), expected, torch.float32, f"terms, deterministic={deterministic}"
            )
            _assert_all_close(
                _pair_with_grads(src, matrix, dst, None, CUDA, l2_normalize=True),
                expected_pair,
                torch.float32,
                f"equivariance_loss, deterministic={deterministic}",
            )


@needs_kernels
def test_opcheck_on_cuda():
    gen = torch.Generator().manual_seed(9)
    src = cams((2, 2, 12, 10), gen, torch.float32).to(CUDA).requires_grad_(True)
    dst = cams((2, 2, 12, 10), gen, torch.float32).to(CUDA).requires_grad_(True)
    matrix = random_affine(2, (12, 10), (12, 10), gen).float().to(CUDA)
    labels = torch.ones(2, device=CUDA)
    pred = torch.ones(2, 2, device=CUDA)
    torch.library.opcheck(torch.ops.mmcam.warp_normalized.default, (src, matrix, [12, 10], 1e-8))
    torch.library.opcheck(
        torch.ops.mmcam.equivariance_loss.default, (src, matrix, dst, None, "sq_l2", True, 1e-8, 1e-12, "mean")
    )
    torch.library.opcheck(
        torch.ops.mmcam.equivariance_terms.default, (src, dst, matrix, labels, pred, pred, "sq_l2", 1e-8, 1e-12, True)
    )


@needs_kernels
def test_compiled_terms_match_eager_on_cuda():
    args = tuple(a.to(CUDA) for a in _terms_case("flip", 4, 2, (32, 32), torch.float32, seed=1))

    def loss(c, ct):
        return equivariance_terms(c, ct, *args[2:]).sum()

    c = args[0].clone().requires_grad_(True)
    compiled = torch.compile(loss, fullgraph=True)
    value = compiled(c, args[1])
    value.backward()
    c_eager = args[0].clone().requires_grad_(True)
    expected = loss(c_eager, args[1])
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(c.grad, c_eager.grad)  # same kernels: equal up to atomic summation order


@needs_kernels
def test_singular_matrix_gives_nan_without_host_sync():
    src = torch.rand(2, 1, 8, 8, device=CUDA)
    matrix = torch.zeros(2, 2, 3, device=CUDA)
    matrix[1] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    out = ops.warp_normalized(src, matrix, (8, 8))
    assert bool(out[0].isnan().all()) and bool(out[1].isfinite().all())


@needs_kernels
def test_autocast_bfloat16_training_step():
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1).to(CUDA)
    x = torch.randn(4, 2, 32, 32, generator=gen).to(CUDA)
    matrix, dsize = family_matrix("rot90", 4, (32, 32), gen)
    xt = torch.rot90(x, 1, (-2, -1))
    ones = torch.ones(4, device=CUDA)
    pred = torch.ones(4, 2, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms = equivariance_terms(conv(x), conv(xt), matrix.float().to(CUDA), ones, pred, pred)
    assert terms.dtype == torch.bfloat16
    terms.float().sum().backward()
    assert conv.weight.grad is not None and bool(torch.isfinite(conv.weight.grad).all())
