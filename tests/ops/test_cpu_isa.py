"""The CPU kernels' instruction-set variants (csrc/cpu/isa.h): the AVX2 variant gives bitwise the same
values and gradients as the baseline one, for every operator, transform family, dtype and path (ties,
all-positive planes, non-contiguous inputs, NaN); the variant is chosen at import and can be forced by
MMCAM_CPU_ISA, and a bad name is refused with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mmcam import ops
from mmcam.losses import equivariance_terms
from mmcam.ops.extension import _C

from op_cases import FAMILIES, cams, family_matrix, process_setting
from repo_paths import ROOT


def cpu_isa(name: str):
    """The CPU kernels' variant forced to name inside a with block, restored afterwards."""
    return process_setting(_C.cpu_isa, _C._set_cpu_isa, name)


def _has_avx2_variant() -> bool:
    try:
        with cpu_isa("avx2"):
            return True
    except (RuntimeError, ValueError):
        return False


needs_avx2 = pytest.mark.skipif(not _has_avx2_variant(), reason="this CPU (or build) has no AVX2 variant")


def _grads(fn, inputs, needs_grad):
    leaves = [t.detach().clone().requires_grad_(g) for t, g in zip(inputs, needs_grad)]
    out = fn(*leaves)
    weights = torch.linspace(0.5, 2.0, out.numel(), dtype=out.dtype).view_as(out)
    (weights * out).sum().backward()
    return [out.detach()] + [leaf.grad for leaf, g in zip(leaves, needs_grad) if g]


def _both_variants(run):
    with cpu_isa("baseline"):
        baseline = run()
    with cpu_isa("avx2"):
        avx2 = run()
    return baseline, avx2


def _assert_bitwise(baseline, avx2):
    for a, b in zip(baseline, avx2):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), f"max difference {float((a - b).abs().max()):.3g}"


def _inputs(family, dtype, seed, *, positive=False, non_contiguous=False, size=(29, 37), n=3, m=2):
    gen = torch.Generator().manual_seed(seed)
    matrix, dsize = family_matrix(family, n, size, gen, dtype=dtype)
    src = cams((n, m, *size), gen, dtype, non_contiguous=non_contiguous)
    dst = cams((n, m, *dsize), gen, dtype)
    if positive:  # lo > 0: ties at the minimum get a share
        src, dst = src.abs() + 0.25, dst.abs() + 0.25
    src = src.clone() if not non_contiguous else src
    return src, dst, matrix


@needs_avx2
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["mixed", "positive", "strided"])
def test_terms_bitwise_equal_across_variants(family, dtype, kind):
    src, dst, matrix = _inputs(family, dtype, seed=7, positive=kind == "positive", non_contiguous=kind == "strided")
    n, m = src.shape[:2]
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([1, 0, 1])
    pred, pred_t = torch.randint(0, 2, (n, m), generator=gen), torch.ones(n, m, dtype=torch.long)

    def run():
        return _grads(
            lambda c, ct: equivariance_terms(c, ct, matrix, labels, pred, pred_t, backend="fused"),
            (src, dst),
            (True, True),
        )

    _assert_bitwise(*_both_variants(run))


@needs_avx2
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("distance", ["sq_l2", "l1"])
def test_loss_and_warp_bitwise_equal_across_variants(family, distance):
    src, dst, matrix = _inputs(family, torch.float32, seed=3)
    weight = torch.tensor([1.0, 0.5, 0.0])

    def run():
        loss = _grads(
            lambda s, d: ops.equivariance_loss(s, matrix, d, weight, distance=distance, l2_normalize=True),
            (src, dst),
            (True, True),
        )
        warp = _grads(lambda s: ops.warp_normalized(s, matrix, dst.shape[-2:]), (src,), (True,))
        return loss + warp

    _assert_bitwise(*_both_variants(run))


@needs_avx2
def test_non_finite_inputs_bitwise_equal_across_variants():
    src, dst, matrix = _inputs("flip", torch.float32, seed=5)
    src[0, 1, 3, 4] = float("nan")
    dst[2, 0, 1, 1] = float("inf")
    labels = torch.ones(3, dtype=torch.long)
    pred = torch.ones(3, 2, dtype=torch.long)

    def run():
        terms = lambda c, ct: equivariance_terms(c, ct, matrix, labels, pred, pred, backend="fused")  # noqa: E731
        return _grads(terms, (src, dst), (True, True))

    baseline, avx2 = _both_variants(run)
    assert any(not t.isfinite().all() for t in baseline)
    _assert_bitwise(baseline, avx2)


def test_unknown_variant_is_refused_by_name():
    with pytest.raises((RuntimeError, ValueError), match="sse9"):
        _C._set_cpu_isa("sse9")


def _python(code: str, **env):
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=300,
    )


def test_environment_chooses_the_variant_at_import():
    done = _python("from mmcam.ops.extension import _C; print(_C.cpu_isa())", MMCAM_CPU_ISA="baseline")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "baseline"
    bad = _python("import mmcam.ops", MMCAM_CPU_ISA="avx9000")
    assert bad.returncode != 0
    assert "avx9000" in bad.stderr
