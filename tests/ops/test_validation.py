"""Every bad input of the fused operators raises a clear ValueError / TypeError (never a crash), both
through the Python API and through the raw torch.ops.mmcam operators."""

from __future__ import annotations

import pytest
import torch

from mmcam import ops
from mmcam.ops import fused
from mmcam.ops.fused import fused_equivariance_terms

IDENT = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]).expand(2, 2, 3).clone()


def good():
    return dict(src=torch.randn(2, 3, 5, 5), matrix=IDENT.clone(), dst=torch.randn(2, 3, 4, 4))


def call(src, matrix, dst, **kw):
    return ops.equivariance_loss(src, matrix, dst, **kw)


def with_matrix_entry(value, index=(1, 0, 2)):
    m = IDENT.clone()
    m[index] = value
    return m


BAD = {
    "src rank": (dict(src=torch.randn(2, 5, 5)), ValueError, "src must have shape"),
    "dst rank": (dict(dst=torch.randn(2, 3, 4, 4, 1)), ValueError, "dst must have shape"),
    "N mismatch": (dict(dst=torch.randn(3, 3, 4, 4)), ValueError, "agree in N and C"),
    "C mismatch": (dict(dst=torch.randn(2, 2, 4, 4)), ValueError, "agree in N and C"),
    "dtype mismatch": (dict(dst=torch.randn(2, 3, 4, 4, dtype=torch.float64)), TypeError, "must match"),
    "integer cams": (
        dict(src=torch.ones(2, 3, 5, 5, dtype=torch.int64), dst=torch.ones(2, 3, 4, 4, dtype=torch.int64)),
        TypeError,
        "dtype",
    ),
    "half on cpu": (dict(src=torch.randn(2, 3, 5, 5).half(), dst=torch.randn(2, 3, 4, 4).half()), TypeError, "float16"),
    "empty H": (dict(src=torch.randn(2, 3, 0, 5)), ValueError, "empty spatial size"),
    "empty W dst": (dict(dst=torch.randn(2, 3, 4, 0)), ValueError, "empty spatial size"),
    "matrix shape": (dict(matrix=torch.zeros(2, 3, 3)), ValueError, "matrix must have shape"),
    "matrix N": (dict(matrix=IDENT[:1].clone()), ValueError, "matrix must have shape"),
    "matrix int": (dict(matrix=torch.zeros(2, 2, 3, dtype=torch.int32)), TypeError, "floating-point"),
    "matrix device": (dict(matrix=IDENT.to("meta")), ValueError, "share a device"),
    "matrix nan": (dict(matrix=with_matrix_entry(float("nan"))), ValueError, "matrix\\[1\\]"),
    "matrix inf": (dict(matrix=with_matrix_entry(float("inf"))), ValueError, "not an invertible finite affine"),
    "matrix singular": (dict(matrix=with_matrix_entry(0.0, (0, 1, 1))), ValueError, "matrix\\[0\\]"),
}

BAD_OPTIONS = {
    "distance": (dict(distance="l3"), ValueError, "distance must be one of"),
    "reduction": (dict(reduction="avg"), ValueError, "reduction must be one of"),
    "weight shape": (dict(weight=torch.ones(3)), ValueError, "weight must have shape"),
    "weight rank": (dict(weight=torch.ones(2, 1)), ValueError, "weight must have shape"),
    "weight int": (dict(weight=torch.ones(2, dtype=torch.int64)), TypeError, "weight must be a floating-point"),
    "l2_normalize": (dict(l2_normalize=1), TypeError, "l2_normalize must be a bool"),
    "negative eps": (dict(eps=-1.0), ValueError, "eps must be a finite non-negative"),
    "nan l2_eps": (dict(l2_eps=float("nan")), ValueError, "l2_eps must be a finite non-negative"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tensor_raises(case):
    change, exc, message = BAD[case]
    args = good() | change
    with pytest.raises(exc, match=message):
        call(**args)


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_raises(case):
    kw, exc, message = BAD_OPTIONS[case]
    with pytest.raises(exc, match=message):
        call(**good(), **kw)


def test_not_a_tensor_raises():
    with pytest.raises(TypeError, match="src must be a torch.Tensor"):
        call(src=[[1.0]], matrix=IDENT, dst=torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize(
    "dsize, exc",
    [((0, 4), ValueError), ((4,), TypeError), ((4.0, 4), TypeError), ("ab", TypeError), ((True, 3), TypeError)],
)
def test_warp_bad_dsize_raises(dsize, exc):
    with pytest.raises(exc, match="dsize"):
        ops.warp_normalized(torch.randn(2, 1, 4, 4), IDENT, dsize)


def test_warp_bad_matrix_value_raises():
    with pytest.raises(ValueError, match="not an invertible finite affine"):
        ops.warp_normalized(torch.randn(2, 1, 4, 4), with_matrix_entry(float("-inf")), (4, 4))


def test_raw_operator_rejects_bad_input_without_crashing():
    raw = torch.ops.mmcam
    src, dst = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError):
        raw.equivariance_loss(src[0], IDENT, dst, None, "sq_l2", False, 1e-8, 1e-12, "mean")
    with pytest.raises(ValueError):
        raw.equivariance_loss(src, IDENT, dst, None, "cosine", False, 1e-8, 1e-12, "mean")
    with pytest.raises(ValueError):
        raw.equivariance_loss(src, IDENT[:1], dst, None, "sq_l2", False, 1e-8, 1e-12, "mean")
    with pytest.raises(ValueError):
        raw.warp_normalized(src, IDENT, [0, 3], 1e-8)
    with pytest.raises(TypeError):
        raw.warp_normalized(src.half(), IDENT, [3, 3], 1e-8)
    cams = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="M >= 2"):
        raw.equivariance_terms(
            cams, cams, IDENT, torch.ones(2), torch.ones(2, 1), torch.ones(2, 1), "sq_l2", 1e-8, 1e-12, False
        )


def test_cuda_tensors_on_a_build_without_cuda_kernels_name_the_build(monkeypatch):
    """A CUDA torch with a CPU-only mmcam build (no nvcc at install time): CUDA inputs get one clear error
    that says why the kernels are missing and how to rebuild, not the dispatcher's 'Could not run'."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setitem(fused._BUILD, "cuda", False)
    monkeypatch.setitem(fused._BUILD, "cuda_status", "CPU only: no working CUDA compiler found")
    with FakeTensorMode():  # CUDA tensors without a GPU
        src, dst = torch.randn(2, 1, 5, 5, device="cuda"), torch.randn(2, 1, 4, 4, device="cuda")
        matrix = torch.zeros(2, 2, 3, device="cuda")  # values are never read: the check comes first
        ones = torch.ones(2, device="cuda")
        calls = {
            "warp_normalized": lambda: ops.warp_normalized(src, matrix, (4, 4)),
            "equivariance_loss": lambda: ops.equivariance_loss(src, matrix, dst),
            # the operator behind mmcam.losses.equivariance_terms (whose value checks need real tensors)
            "equivariance_terms": lambda: fused_equivariance_terms(
                src, dst, matrix, ones, ones.unsqueeze(1), ones.unsqueeze(1)
            ),
        }
        for run in calls.values():
            with pytest.raises(
                RuntimeError,
                match=r"built without CUDA kernels \(CPU only: no working CUDA "
                r"compiler found\)\. Rebuild with .*nvcc",
            ):
                run()


def test_other_devices_are_refused_by_name():
    src = torch.randn(2, 1, 5, 5, device="meta")
    with pytest.raises(RuntimeError, match="src is on meta; mmcam's fused operators run on cpu and cuda"):
        ops.warp_normalized(src, IDENT.to("meta"), (4, 4))


def _raw_bad_calls():
    """Bad calls of the raw operators: name -> (operator, arguments)."""
    src, dst = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 4, 4)
    cams, cams_t = torch.randn(2, 2, 5, 5), torch.randn(2, 2, 4, 4)
    ones, pred = torch.ones(2), torch.ones(2, 2)
    loss, terms, warp = (
        torch.ops.mmcam.equivariance_loss,
        torch.ops.mmcam.equivariance_terms,
        torch.ops.mmcam.warp_normalized,
    )
    opts = ("sq_l2", False, 1e-8, 1e-12, "mean")
    return {
        "src rank": (loss, (src[0], IDENT, dst, None, *opts)),
        "empty dst": (loss, (src, IDENT, dst[:, :, :0], None, *opts)),
        "N mismatch": (loss, (src, IDENT, dst[:1], None, *opts)),
        "dtype mismatch": (loss, (src, IDENT, dst.double(), None, *opts)),
        "matrix shape": (loss, (src, IDENT[:1], dst, None, *opts)),
        "weight shape": (loss, (src, IDENT, dst, torch.ones(3), *opts)),
        "distance": (loss, (src, IDENT, dst, None, "cosine", False, 1e-8, 1e-12, "mean")),
        "reduction": (loss, (src, IDENT, dst, None, "sq_l2", False, 1e-8, 1e-12, "avg")),
        "integer src": (warp, (src.long(), IDENT, [4, 4], 1e-8)),
        "dsize": (warp, (src, IDENT, [0, 3], 1e-8)),
        "one modality": (
            terms,
            (cams[:, :1], cams_t[:, :1], IDENT, ones, pred[:, :1], pred[:, :1], "sq_l2", 1e-8, 1e-12, False),
        ),
        "labels shape": (terms, (cams, cams_t, IDENT, pred, pred, pred, "sq_l2", 1e-8, 1e-12, False)),
        "pred shape": (terms, (cams, cams_t, IDENT, ones, ones, pred, "sq_l2", 1e-8, 1e-12, False)),
    }


@pytest.mark.parametrize("case", list(_raw_bad_calls()))
def test_fake_kernels_reject_what_the_kernels_reject(case):
    """Traced / compiled calls (FakeTensor) fail like eager ones: each fake checks what its kernel checks,
    with the same exception type and message start."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op, args = _raw_bad_calls()[case]
    with pytest.raises((ValueError, TypeError)) as eager:
        op(*args)
    mode = FakeTensorMode()
    fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode, pytest.raises(type(eager.value)) as traced:
        op(*fake_args)
    assert str(traced.value).split(" ")[:2] == str(eager.value).split(" ")[:2]  # "mmcam: <name>"
