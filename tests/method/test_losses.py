"""Tests of mmcam.losses.equivariance_terms: backend parity, the formula, stop-gradients, validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcam import losses
from mmcam.losses import BACKENDS, equivariance_terms, predicted_classes
from mmcam.ops import reference

from op_cases import cams as make_cams
from op_cases import family_matrix, random_affine

DISTANCES = ("sq_l2", "l1")
MASK_MODES = ("random", "zeros", "ones")


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-15) if dtype == torch.float64 else dict(rtol=0.0, atol=1e-5)


def _masks(shape, mode: str, gen: torch.Generator) -> torch.Tensor:
    if mode == "zeros":
        return torch.zeros(shape, dtype=torch.long)
    if mode == "ones":
        return torch.ones(shape, dtype=torch.long)
    return torch.randint(0, 2, shape, generator=gen)


def _case(n, m, src, dst, dtype, gen, *, labels="random", preds="random"):
    """A random batch: (cams, cams_t, matrix, labels, pred, pred_t)."""
    cams = make_cams((n, m, *src), gen, dtype)
    cams_t = make_cams((n, m, *dst), gen, dtype)
    matrix = random_affine(n, src, dst, gen, dtype=dtype)
    return (cams, cams_t, matrix, _masks((n,), labels, gen), _masks((n, m), preds, gen), _masks((n, m), preds, gen))


def _run(args, backend, er_distance="sq_l2", weights=None):
    """Forward + backward of sum(weights * terms); returns (terms, grad_cams, grad_cams_t)."""
    cams, cams_t, *rest = args
    cams = cams.detach().clone().requires_grad_(True)
    cams_t = cams_t.detach().clone().requires_grad_(True)
    terms = equivariance_terms(cams, cams_t, *rest, backend=backend, er_distance=er_distance)
    if weights is None:  # distinct weights per entry so that a swapped row or column is caught
        weights = torch.arange(1, terms.numel() + 1, dtype=terms.dtype).view_as(terms)
    (weights * terms).sum().backward()
    return terms.detach(), cams.grad, cams_t.grad


# ------------------------------------------------------------------------------ backends agree
@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid:UserWarning")  # singleton destination
@settings(max_examples=200)
@given(
    m=st.integers(2, 4),
    n=st.integers(1, 4),
    src=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    dst=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    er_distance=st.sampled_from(DISTANCES),
    labels=st.sampled_from(MASK_MODES),
    preds=st.sampled_from(MASK_MODES),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 2**31 - 1),
)
def test_backends_agree(m, n, src, dst, er_distance, labels, preds, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    args = _case(n, m, src, dst, dtype, gen, labels=labels, preds=preds)
    fused = _run(args, "fused", er_distance)
    assert fused[0].shape == (2, m) and fused[0].dtype == dtype
    # The references run in float64 on the same inputs: a float32 reference carries its own rounding
    # error (up to ~1e-4 on nearly constant planes, and it depends on the thread count), which is not
    # what this test is about.
    args64 = tuple(a.to(torch.float64) if a.is_floating_point() else a for a in args)
    for backend in ("torch", "kornia"):
        other = _run(args64, backend, er_distance)
        for name, a, b in zip(("terms", "grad cams", "grad cams_t"), other, fused):
            torch.testing.assert_close(
                a, b.to(torch.float64), **_tol(dtype), msg=lambda s: f"{backend} vs fused, {name}: {s}"
            )


@pytest.mark.parametrize("family", ["flip", "rot90", "translate", "resize", "affine"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backends_agree_on_pi_families(family, dtype):
    """The paper's transform families hit exact pixel centres and borders; sizes change for resize."""
    gen = torch.Generator().manual_seed(7)
    n, m, size = 3, 3, (40, 48)
    matrix, dsize = family_matrix(family, n, size, gen, dtype=dtype)
    args = (
        make_cams((n, m, *size), gen, dtype),
        make_cams((n, m, *dsize), gen, dtype),
        matrix,
        torch.tensor([1, 1, 0]),
        torch.randint(0, 2, (n, m), generator=gen),
        torch.ones(n, m, dtype=torch.long),
    )
    fused = _run(args, "fused")
    for backend in ("torch", "kornia"):
        for a, b in zip(_run(args, backend), fused):
            torch.testing.assert_close(a, b, **_tol(dtype))


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid:UserWarning")
@pytest.mark.parametrize("src", [(1, 6), (5, 1)])
def test_backends_agree_singleton_source_axis(src):
    gen = torch.Generator().manual_seed(1)
    args = _case(2, 2, src, (4, 4), torch.float64, gen, labels="ones", preds="ones")
    fused = _run(args, "fused")
    for a, b in zip(_run(args, "torch"), fused):
        torch.testing.assert_close(a, b, **_tol(torch.float64))


def test_non_contiguous_cams_and_mask_dtypes():
    """Strided CAM views; labels and predictions as bool, int or float give the same result."""
    gen = torch.Generator().manual_seed(3)
    n, m, src, dst = 3, 2, (9, 10), (8, 7)
    cams = make_cams((n, m, *src), gen, torch.float64, non_contiguous=True)
    cams_t = make_cams((n, m, *dst), gen, torch.float64, non_contiguous=True)
    assert not cams.is_contiguous()
    matrix = random_affine(n, src, dst, gen)
    labels = torch.tensor([1, 0, 1])
    pred, pred_t = torch.tensor([[1, 0], [1, 1], [0, 1]]), torch.ones(n, m, dtype=torch.long)
    expected = _run((cams.contiguous(), cams_t.contiguous(), matrix, labels, pred, pred_t), "torch")
    for backend in BACKENDS:
        for cast in (torch.bool, torch.int32, torch.float32, torch.float64):
            got = _run((cams, cams_t, matrix, labels.to(cast), pred.to(cast), pred_t.to(cast)), backend)
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------- the formula, written by hand
def _hand_written_terms(cams, cams_t, matrix, labels, pred, pred_t, er_distance):
    """L_ER and L_CMER of docs/method.md with one reference call per sample and (ordered) network pair."""
    n, m = cams.shape[:2]
    hd, wd = cams_t.shape[-2:]
    er = [cams.new_zeros(()) for _ in range(m)]
    cmer = [cams.new_zeros(()) for _ in range(m)]
    one = torch.ones(1, dtype=cams.dtype)
    for s in range(n):
        y = float(labels[s])
        for i in range(m):
            src_i, dst_i = cams[s : s + 1, i : i + 1], cams_t[s : s + 1, i : i + 1]
            mat = matrix[s : s + 1]
            er[i] = er[i] + reference.equivariance_loss_torch(
                src_i, mat, dst_i, y * one, distance=er_distance, reduction="sum"
            )
            for j in range(m):
                if j == i:
                    continue
                src_j, dst_j = cams[s : s + 1, j : j + 1].detach(), cams_t[s : s + 1, j : j + 1].detach()
                # D(pi(P^i), sg P~^j, y 1[pred_t_j = 1])
                cmer[i] = cmer[i] + reference.equivariance_loss_torch(
                    src_i,
                    mat,
                    dst_j,
                    y * float(pred_t[s, j] == 1) * one,
                    distance="sq_l2",
                    l2_normalize=True,
                    reduction="sum",
                )
                # D(P~^i, sg pi(P^j), y 1[pred_j = 1]); the distance is symmetric in its two maps
                cmer[i] = cmer[i] + reference.equivariance_loss_torch(
                    src_j,
                    mat,
                    dst_i,
                    y * float(pred[s, j] == 1) * one,
                    distance="sq_l2",
                    l2_normalize=True,
                    reduction="sum",
                )
    er = torch.stack(er) / (n * hd * wd)
    cmer = torch.stack(cmer) / (2 * (m - 1) * n * hd * wd)
    return torch.stack([er, cmer])


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("er_distance", DISTANCES)
def test_matches_hand_written_formula(m, er_distance):
    gen = torch.Generator().manual_seed(11 + m)
    n, src, dst = 4, (10, 9), (11, 8)
    args = _case(n, m, src, dst, torch.float64, gen)
    args = args[:3] + (torch.tensor([1, 0, 1, 1]), args[4], args[5])
    weights = torch.rand(2, m, generator=gen, dtype=torch.float64)

    cams = args[0].clone().requires_grad_(True)
    cams_t = args[1].clone().requires_grad_(True)
    expected = _hand_written_terms(cams, cams_t, *args[2:], er_distance)
    (weights * expected).sum().backward()

    got = _run(args, "fused", er_distance, weights)
    assert bool((expected[0] > 0).all()) and bool((expected[1] > 0).all())
    torch.testing.assert_close(got[0], expected.detach(), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(got[1], cams.grad, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(got[2], cams_t.grad, rtol=1e-9, atol=1e-15)


def test_negative_slices_and_no_positive_predictions_give_zero():
    gen = torch.Generator().manual_seed(5)
    args = _case(3, 2, (8, 8), (8, 8), torch.float64, gen, labels="zeros")
    for backend in BACKENDS:
        terms, g, g_t = _run(args, backend)
        assert torch.equal(terms, torch.zeros(2, 2, dtype=torch.float64))
        assert not g.any() and not g_t.any()
    args = _case(3, 2, (8, 8), (8, 8), torch.float64, gen, labels="ones", preds="zeros")
    for backend in BACKENDS:
        terms = _run(args, backend)[0]
        assert bool((terms[0] > 0).all()) and torch.equal(terms[1], torch.zeros(2, dtype=torch.float64))


# ------------------------------------------------------------------------------ stop-gradients
@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_gradient_and_per_network_backward(backend):
    gen = torch.Generator().manual_seed(21)
    n, m = 3, 3
    cams, cams_t, matrix, _, _, _ = _case(n, m, (9, 9), (10, 8), torch.float64, gen)
    labels = torch.ones(n, dtype=torch.long)
    pred = pred_t = torch.ones(n, m, dtype=torch.long)
    cams.requires_grad_(True)
    cams_t.requires_grad_(True)
    terms = equivariance_terms(cams, cams_t, matrix, labels, pred, pred_t, backend=backend)

    summed_g = torch.zeros_like(cams)
    summed_g_t = torch.zeros_like(cams_t)
    for i in range(m):
        for row in (0, 1):
            g, g_t = torch.autograd.grad(terms[row, i], (cams, cams_t), retain_graph=True)
            others = [j for j in range(m) if j != i]
            assert torch.equal(g[:, others], torch.zeros_like(g[:, others])), (row, i)
            assert torch.equal(g_t[:, others], torch.zeros_like(g_t[:, others])), (row, i)
            assert g[:, i].abs().sum() > 0 and g_t[:, i].abs().sum() > 0
        g, g_t = torch.autograd.grad(terms[:, i].sum(), (cams, cams_t), retain_graph=True)
        summed_g += g
        summed_g_t += g_t
    g_all, g_all_t = torch.autograd.grad(terms.sum(), (cams, cams_t))
    torch.testing.assert_close(g_all, summed_g, rtol=1e-13, atol=0.0)
    torch.testing.assert_close(g_all_t, summed_g_t, rtol=1e-13, atol=0.0)


def test_only_cams_t_requires_grad():
    gen = torch.Generator().manual_seed(4)
    cams, cams_t, *rest = _case(2, 2, (7, 7), (7, 7), torch.float64, gen, labels="ones", preds="ones")
    grads = []
    for backend in BACKENDS:
        ct = cams_t.clone().requires_grad_(True)
        equivariance_terms(cams, ct, *rest, backend=backend).sum().backward()
        grads.append(ct.grad)
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("er_distance", DISTANCES)
def test_gradcheck_fused(er_distance):
    """Finite differences see through a stop-gradient, so check column i of the output against network
    i's own planes only (cams[:, i], cams_t[:, i]), the other networks' planes held fixed: there the
    analytical gradient is the full derivative. The stop-gradient itself is tested above."""
    gen = torch.Generator().manual_seed(2)
    cams, cams_t, matrix, _, _, _ = _case(2, 3, (5, 6), (4, 5), torch.float64, gen)
    labels = torch.tensor([1, 1])
    pred, pred_t = torch.tensor([[1, 1, 0], [0, 1, 1]]), torch.tensor([[1, 0, 1], [1, 1, 1]])
    for i in range(3):

        def column_i(a, b, i=i):
            full = torch.cat([cams[:, :i], a, cams[:, i + 1 :]], dim=1)
            full_t = torch.cat([cams_t[:, :i], b, cams_t[:, i + 1 :]], dim=1)
            return equivariance_terms(full, full_t, matrix, labels, pred, pred_t, er_distance=er_distance)[:, i]

        inputs = (cams[:, i : i + 1].clone().requires_grad_(True), cams_t[:, i : i + 1].clone().requires_grad_(True))
        assert torch.autograd.gradcheck(column_i, inputs, eps=1e-7, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------- bad inputs
def _good():
    gen = torch.Generator().manual_seed(0)
    return dict(
        zip(("cams", "cams_t", "matrix", "labels", "pred", "pred_t"), _case(2, 3, (6, 6), (5, 5), torch.float32, gen))
    )


def _bad_cases():
    g = _good()
    yield "cams", ValueError, dict(cams=g["cams"][0])  # rank 3
    yield "cams_t", ValueError, dict(cams_t=g["cams_t"][:, :2])  # M mismatch
    yield "cams", ValueError, dict(cams_t=g["cams_t"][:1])  # N mismatch
    yield (
        "M >= 2",
        ValueError,
        dict(cams=g["cams"][:, :1], cams_t=g["cams_t"][:, :1], pred=g["pred"][:, :1], pred_t=g["pred_t"][:, :1]),
    )
    yield (
        "at least one sample",
        ValueError,
        dict(
            cams=g["cams"][:0],
            cams_t=g["cams_t"][:0],
            matrix=g["matrix"][:0],
            labels=g["labels"][:0],
            pred=g["pred"][:0],
            pred_t=g["pred_t"][:0],
        ),
    )
    yield "backend", ValueError, dict(backend="cuda")
    yield "er_distance", ValueError, dict(er_distance="l2")
    yield "cams_t", TypeError, dict(cams_t=g["cams_t"].double())  # dtype mismatch
    yield "cams", TypeError, dict(cams=g["cams"].half(), cams_t=g["cams_t"].half())  # half on CPU
    yield "cams", TypeError, dict(cams=g["cams"].numpy())
    yield "matrix", ValueError, dict(matrix=g["matrix"][:, :, :2])
    yield "matrix", ValueError, dict(matrix=g["matrix"][:1])
    yield "matrix", TypeError, dict(matrix=g["matrix"].long())
    yield "matrix", ValueError, dict(matrix=torch.zeros_like(g["matrix"]))  # singular
    yield "matrix", ValueError, dict(matrix=g["matrix"].clone().fill_(float("nan")))
    yield "labels", ValueError, dict(labels=g["labels"][:1])
    yield "labels", ValueError, dict(labels=g["labels"][:, None])
    yield "labels", ValueError, dict(labels=torch.tensor([4, 1]))  # a raw segmentation label
    yield "pred", ValueError, dict(pred=g["pred"].T)
    yield "pred", ValueError, dict(pred=g["pred"] + 1)
    yield "pred_t", ValueError, dict(pred_t=g["pred_t"][:, :2])
    yield "pred_t", TypeError, dict(pred_t=[[0, 1, 1], [1, 1, 0]])
    yield "labels", ValueError, dict(labels=g["labels"].to("meta"))  # device mismatch
    yield "matrix", ValueError, dict(matrix=g["matrix"].to("meta"))
    yield "eps", ValueError, dict(eps=-1.0)
    yield "l2_eps", TypeError, dict(l2_eps="small")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: f"{c[0]}-{c[1].__name__}")
def test_bad_inputs_raise(case, backend):
    needle, error, overrides = case
    kwargs = {"backend": backend, **_good()}
    kwargs.update(overrides)
    with pytest.raises(error, match=needle):
        equivariance_terms(
            kwargs.pop("cams"),
            kwargs.pop("cams_t"),
            kwargs.pop("matrix"),
            kwargs.pop("labels"),
            kwargs.pop("pred"),
            kwargs.pop("pred_t"),
            **kwargs,
        )


# --------------------------------------------------------------------------------- determinism
def test_fused_bitwise_deterministic_across_threads():
    gen = torch.Generator().manual_seed(9)
    args = _case(8, 3, (32, 30), (28, 33), torch.float32, gen, labels="ones")
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (2, 2, 1):
            torch.set_num_threads(threads)
            results.append(_run(args, "fused"))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- predictions
def test_predicted_classes():
    z = torch.tensor([[[0.0, 1.0], [2.0, -1.0]], [[3.0, 3.0], [-1.0, 0.5]]], requires_grad=True)  # (N=2, M=2, 2)
    expected = torch.tensor([[1, 0], [0, 1]])
    assert torch.equal(predicted_classes(z), expected)
    assert torch.equal(predicted_classes([z[:, 0], z[:, 1]]), expected)
    with pytest.raises(ValueError, match="2 classes"):
        predicted_classes(torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="logits"):
        predicted_classes([])
    assert losses.predicted_classes(z).requires_grad is False


# ------------------------------------------------------------------------------ torch.compile
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit internals, emitted while compiling
def test_fused_backend_compiles_fullgraph():
    """The validation is traceable (value checks are skipped while compiling) and the fused operator has
    a fake implementation, so the whole call compiles without graph breaks."""
    gen = torch.Generator().manual_seed(8)
    args = _case(2, 2, (9, 9), (8, 10), torch.float32, gen, labels="ones", preds="ones")
    compiled = torch.compile(equivariance_terms, fullgraph=True, dynamic=False)
    cams = args[0].clone().requires_grad_(True)
    terms = compiled(cams, *args[1:])
    terms.sum().backward()
    expected = _run(args, "fused", weights=torch.ones(2, 2))
    torch.testing.assert_close(terms.detach(), expected[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cams.grad, expected[1], rtol=1e-6, atol=1e-7)
