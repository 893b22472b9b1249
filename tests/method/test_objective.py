"""Tests of mmcam.objective: per-network gradients of the single backward, KD, ablation switches, π
sharing, determinism, validation."""

from __future__ import annotations

import math

import pytest
import torch

from mmcam import losses, transforms
from mmcam.losses import BACKENDS
from mmcam.models import MultiModalCAM, zscore_per_sample
from mmcam.objective import (
    ABLATIONS,
    TERMS,
    ObjectiveConfig,
    compute_objective,
    distillation_loss,
)

MODALITIES = ("t1", "t2", "flair")
LABELS = torch.tensor([1, 0, 1, 1])


def _model(modalities=MODALITIES, seed=0, lean=(0, 1)) -> MultiModalCAM:
    """A tiny model whose networks ``lean`` predict "target" everywhere (class-1 classifier weights >= 0,
    class-0 weights <= 0 on non-negative features), so that the CMER masks are not all zero."""
    torch.manual_seed(seed)
    model = MultiModalCAM(modalities, width_divisor=16)
    with torch.no_grad():
        for m in lean:
            w = model.network(m).classifier.weight
            w[0].copy_(-w[0].abs())
            w[1].copy_(w[1].abs())
    return model


def _images(n=4, m=3, size=(32, 32), seed=1, dtype=torch.float32):
    """Raw MRI-like intensities: a bright blob on a positive background, plus noise."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    yy = torch.linspace(-1, 1, h)[:, None]
    xx = torch.linspace(-1, 1, w)[None, :]
    blob = torch.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2) * 6)
    return (100 + 80 * blob + 10 * torch.randn(n, m, h, w, generator=g)).to(dtype)


def _run(model, config, seed=7, images=None, labels=LABELS):
    return compute_objective(
        model, _images() if images is None else images, labels, torch.Generator().manual_seed(seed), config
    )


def _grads(params) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


# ----------------------------------------------------------------------- one backward = M backwards
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transform", ["translate", "resize", "affine"])
def test_one_backward_equals_separate_per_network_backwards(backend, transform):
    """Backward of sum_i L_i gives network i exactly the gradient of L_i alone, and L_i alone gives
    every other network exactly zero gradient (all cross-network targets are detached)."""
    model = _model()
    config = ObjectiveConfig(equivariance_backend=backend, transform=transform)
    seed = 3  # draws a resize to 28 x 28: the transformed view has another size
    result = _run(model, config, seed=seed)
    assert transform != "resize" or result.dsize == (28, 28)
    for term in TERMS:  # every term is active, so a missing stop-gradient anywhere would show
        assert (result.terms[term] > 0).all(), (term, result.terms[term])
    result.total.backward()
    joint = {m: _grads(model.network(m).parameters()) for m in MODALITIES}

    for i, name in enumerate(MODALITIES):
        model.zero_grad(set_to_none=True)
        alone = _run(model, config, seed=seed)  # same generator seed: the same π and the same forward values
        assert torch.equal(alone.per_network.detach(), result.per_network.detach())
        alone.per_network[i].backward()
        for other in MODALITIES:
            grads = _grads(model.network(other).parameters())
            if other == name:
                for g_joint, g_alone in zip(joint[name], grads):
                    assert torch.equal(g_joint, g_alone), f"{backend}: network {name} gradient differs"
                assert any(g.abs().sum() > 0 for g in grads)
            else:
                assert all(not g.any() for g in grads), f"{backend}: L_{name} reaches network {other}"


def test_per_network_and_total_are_consistent():
    model = _model()
    r = _run(model, ObjectiveConfig(equivariance_backend="torch"))
    expected = r.terms["cls"] + 0.5 * r.terms["kd"] + r.terms["er"] + r.terms["cmer"]
    assert torch.equal(r.per_network, expected)
    torch.testing.assert_close(r.total, r.per_network.sum())
    assert r.total.requires_grad and r.total.dim() == 0


# ----------------------------------------------------------------------------------------- KD
def test_term_weights_scale_exactly_their_terms():
    """lambda_er / lambda_cmer (and lambda_kd) weigh their terms in L_i; weight 0 equals switching off."""
    model = _model()
    config = ObjectiveConfig(equivariance_backend="torch", lambda_kd=0.25, lambda_er=2.0, lambda_cmer=1000.0)
    r = _run(model, config)
    t = r.terms
    expected = t["cls"] + 0.25 * t["kd"] + 2.0 * t["er"] + 1000.0 * t["cmer"]
    torch.testing.assert_close(r.per_network, expected, rtol=1e-6, atol=0)
    assert bool((t["cmer"] > 0).all())  # the weighted term is really there
    default = _run(model, ObjectiveConfig(equivariance_backend="torch"))
    torch.testing.assert_close(t["cmer"], default.terms["cmer"])  # weights change L_i, not the terms
    no_cmer = _run(model, ObjectiveConfig(equivariance_backend="torch", lambda_cmer=0.0))
    off = _run(model, ObjectiveConfig(equivariance_backend="torch", use_cmer=False))
    torch.testing.assert_close(no_cmer.per_network, off.per_network, rtol=0, atol=0)


def _kl(p, q):
    return sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kd_by_hand(logits, t):
    """(M,) list: T^2 / (M-1) sum_{j != i} mean_n KL(softmax(z_j/T) || softmax(z_i/T))."""
    n, m = len(logits), len(logits[0])
    return [
        t
        * t
        / (m - 1)
        * sum(
            sum(_kl(_softmax(logits[k][j], t), _softmax(logits[k][i], t)) for k in range(n)) / n
            for j in range(m)
            if j != i
        )
        for i in range(m)
    ]


@pytest.mark.parametrize("temperature", [10.0, 1.0, 2.5])
def test_distillation_against_hand_computation(temperature):
    logits = [[[2.0, -1.0], [0.5, 0.5], [-3.0, 4.0]], [[0.0, 1.0], [10.0, -10.0], [1.5, 0.25]]]  # (N=2, M=3, 2)
    got = distillation_loss(torch.tensor(logits, dtype=torch.float64), temperature)
    torch.testing.assert_close(
        got, torch.tensor(_kd_by_hand(logits, temperature), dtype=torch.float64), rtol=1e-12, atol=0
    )


def test_distillation_of_identical_logits_is_zero():
    z = torch.randn(5, 1, 2).expand(5, 3, 2).contiguous()
    assert torch.equal(distillation_loss(z, 10.0), torch.zeros(3))


def test_distillation_gradient_reaches_only_the_student():
    z = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    kd = distillation_loss(z, 10.0)
    for i in range(3):
        (g,) = torch.autograd.grad(kd[i], z, retain_graph=True)
        assert g[:, i].abs().sum() > 0
        others = [j for j in range(3) if j != i]
        assert torch.equal(g[:, others], torch.zeros_like(g[:, others]))


def test_objective_kd_term_is_the_mean_over_both_views():
    model = _model()
    r = _run(model, ObjectiveConfig(equivariance_backend="torch"))
    for logits in (r.logits, r.logits_t):
        assert (distillation_loss(logits, 10.0) > 0).all()
    hand = [
        0.5 * (a + b)
        for a, b in zip(_kd_by_hand(r.logits.double().tolist(), 10.0), _kd_by_hand(r.logits_t.double().tolist(), 10.0))
    ]
    torch.testing.assert_close(r.terms["kd"].double(), torch.tensor(hand, dtype=torch.float64), rtol=1e-4, atol=1e-9)


def test_objective_kd_is_zero_for_identical_networks():
    """Identical networks on identical modalities produce identical logits: L_KD is exactly 0."""
    model = _model(lean=())
    state = model.network(0).state_dict()
    for m in MODALITIES[1:]:
        model.network(m).load_state_dict(state)
    images = _images(m=1).expand(-1, 3, -1, -1).contiguous()
    r = _run(model, ObjectiveConfig(equivariance_backend="torch"), images=images)
    assert torch.equal(r.logits[:, 0], r.logits[:, 1])
    assert torch.equal(r.terms["kd"], torch.zeros(3))


# ----------------------------------------------------------------------------------------- ablation
@pytest.mark.parametrize("name", list(ABLATIONS) + ["no_cls"])
def test_ablation_switches_remove_exactly_their_terms(name, monkeypatch):
    model = _model()
    if name == "no_cls":
        config = ObjectiveConfig(equivariance_backend="torch", use_cls=False)
    else:
        config = ObjectiveConfig.ablation(name, equivariance_backend="torch")
    full = _run(model, ObjectiveConfig(equivariance_backend="torch"))
    kept = [t for t in TERMS if config.enabled(t)]
    dropped = [t for t in TERMS if t not in kept]
    for t in TERMS:
        assert (full.terms[t] > 1e-5).all()  # every term is large enough for its removal to show

    calls = []
    real = losses.equivariance_terms
    monkeypatch.setattr(losses, "equivariance_terms", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.zero_grad(set_to_none=True)
    ablated = _run(model, config)
    assert len(calls) == (1 if config.use_er or config.use_cmer else 0)

    for t in kept:
        assert torch.equal(ablated.terms[t], full.terms[t])
    for t in dropped:
        assert torch.equal(ablated.terms[t], torch.zeros(3)) and not ablated.terms[t].requires_grad
    weight = {"cls": 1.0, "kd": 0.5, "er": 1.0, "cmer": 1.0}
    composed = sum(weight[t] * full.terms[t] for t in kept)
    torch.testing.assert_close(ablated.per_network, composed, rtol=1e-6, atol=0)

    # gradients: those of the hand-composed sum
    params = list(model.parameters())
    expected = torch.autograd.grad(composed.sum(), params, allow_unused=True, retain_graph=True)
    ablated.total.backward()
    for p, g in zip(params, expected):
        g = torch.zeros_like(p) if g is None else g
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, g, rtol=1e-5, atol=1e-8)
    if dropped:  # the full objective's gradient is measurably different
        full_grad = torch.autograd.grad(full.total, params, allow_unused=True)
        assert any(
            fg is not None and not torch.allclose(fg, p.grad, rtol=1e-3, atol=1e-6) for fg, p in zip(full_grad, params)
        )


def test_cam_only_never_calls_the_equivariance_terms(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("equivariance_terms called with use_er=use_cmer=False")

    monkeypatch.setattr(losses, "equivariance_terms", forbidden)
    r = _run(_model(), ObjectiveConfig.ablation("cam"))
    r.total.backward()
    assert torch.equal(r.per_network, r.terms["cls"])


# ------------------------------------------------------------------------------------------ π
@pytest.mark.parametrize("transform", ["translate", "affine", "rot90"])
def test_one_pi_per_batch_shared_by_all_modalities(transform, monkeypatch):
    model = _model()
    images = _images()
    captured = {}
    real = losses.equivariance_terms

    def spy(cams, cams_t, matrix, *args, **kwargs):
        captured.update(cams=cams, cams_t=cams_t, matrix=matrix, backend=kwargs["backend"])
        return real(cams, cams_t, matrix, *args, **kwargs)

    monkeypatch.setattr(losses, "equivariance_terms", spy)
    inputs = {m: [] for m in MODALITIES}
    for m in MODALITIES:
        model.network(m).register_forward_pre_hook(lambda mod, args, m=m: inputs[m].append(args[0]))
    r = _run(model, ObjectiveConfig(equivariance_backend="kornia", transform=transform), images=images)

    matrix, dsize, family = transforms.sample_transform(
        4, (32, 32), policy=transform, generator=torch.Generator().manual_seed(7)
    )
    assert captured["backend"] == "kornia"
    assert captured["matrix"].shape == (4, 2, 3) and torch.equal(captured["matrix"], matrix)
    assert torch.equal(r.matrix, matrix) and r.dsize == dsize and r.family == family
    assert captured["cams"].shape == (4, 3, 32, 32) and captured["cams_t"].shape == (4, 3, *dsize)
    for m, name in enumerate(MODALITIES):
        x, x_t = inputs[name]  # each network ran once per view
        torch.testing.assert_close(x, zscore_per_sample(images[:, m : m + 1]), rtol=0, atol=0)
        expect_t = zscore_per_sample(transforms.warp_images(images[:, m : m + 1], matrix, dsize))
        torch.testing.assert_close(x_t, expect_t, rtol=1e-6, atol=1e-6)


def test_identical_modalities_get_identical_transformed_views():
    model = _model()
    inputs = {m: [] for m in MODALITIES}
    for m in MODALITIES:
        model.network(m).register_forward_pre_hook(lambda mod, args, m=m: inputs[m].append(args[0]))
    images = _images(m=1).expand(-1, 3, -1, -1).contiguous()
    _run(model, ObjectiveConfig(equivariance_backend="torch", transform="affine"), images=images)
    views = [inputs[m][1] for m in MODALITIES]
    assert not torch.equal(views[0], inputs["t1"][0])  # the view is transformed
    assert torch.equal(views[0], views[1]) and torch.equal(views[0], views[2])


# ------------------------------------------------------------------------------------------ determinism
def test_same_generator_seed_gives_bitwise_identical_loss_and_gradients():
    runs = []
    for global_seed in (123, 456):
        model = _model(seed=0)
        torch.manual_seed(global_seed)  # the objective must not read the global RNG
        r = _run(model, ObjectiveConfig(), seed=11)
        r.total.backward()
        runs.append((r.total.detach(), r.per_network.detach(), [p.grad.clone() for p in model.parameters()]))
    (t0, l0, g0), (t1, l1, g1) = runs
    assert torch.equal(t0, t1) and torch.equal(l0, l1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))

    other = _run(_model(seed=0), ObjectiveConfig(transform="translate"), seed=12)
    same = _run(_model(seed=0), ObjectiveConfig(transform="translate"), seed=11)
    assert not torch.equal(other.matrix, same.matrix)


def test_backends_agree_in_the_objective():
    results = {}
    for backend in BACKENDS:
        model = _model()
        r = _run(model, ObjectiveConfig(equivariance_backend=backend, transform="affine"))
        r.total.backward()
        results[backend] = (r.per_network.detach(), [p.grad for p in model.parameters()])
    for backend in ("torch", "kornia"):
        torch.testing.assert_close(results[backend][0], results["fused"][0], rtol=1e-5, atol=1e-7)
        for a, b in zip(results[backend][1], results["fused"][1]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------ other setups
def test_single_modality_er_only():
    model = _model(modalities=("t2",), lean=(0,))
    images = _images(m=1)
    r = _run(model, ObjectiveConfig.ablation("er"), images=images)
    assert r.per_network.shape == (1,) and r.terms["er"].item() > 0 and r.terms["cmer"].item() == 0
    r.total.backward()
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
    # the same network inside a two-modality model gets the same ER
    pair = _model(modalities=("t1", "t2"), lean=(0,))
    pair.network("t2").load_state_dict(model.network("t2").state_dict())
    r2 = _run(pair, ObjectiveConfig.ablation("er"), images=torch.cat([_images(m=1, seed=5), images], dim=1))
    torch.testing.assert_close(r2.terms["er"][1:], r.terms["er"], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="M >= 2"):
        _run(model, ObjectiveConfig(), images=images)


def test_float64_images_and_model():
    model = _model().double()
    r = _run(model, ObjectiveConfig(equivariance_backend="fused"), images=_images(dtype=torch.float64))
    assert r.total.dtype == torch.float64 and r.matrix.dtype == torch.float64
    r.total.backward()


def test_accuracy_and_scalars():
    model = _model()
    r = _run(model, ObjectiveConfig(equivariance_backend="torch"))
    # networks 0 and 1 lean to "target": right exactly on the positive slices
    assert r.accuracy[:2].tolist() == [0.75, 0.75] and r.accuracy_t[:2].tolist() == [0.75, 0.75]
    s = r.scalars()
    assert s["loss"] == pytest.approx(r.total.item())
    for i, name in enumerate(MODALITIES):
        assert s[f"loss/{name}"] == pytest.approx(r.per_network[i].item())
        for t in TERMS:
            assert s[f"{t}/{name}"] == pytest.approx(r.terms[t][i].item())
        assert s[f"acc/{name}"] == r.accuracy[i].item() and s[f"acc_t/{name}"] == r.accuracy_t[i].item()
    assert len(s) == 1 + 7 * len(MODALITIES)
    assert all(isinstance(v, float) for v in s.values())


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "images, labels, error, match",
    [
        (torch.zeros(4, 32, 32), LABELS, ValueError, r"\(N, M, H, W\)"),
        (torch.zeros(4, 2, 32, 32), LABELS, ValueError, "M=2"),
        (torch.zeros(4, 3, 32, 32, dtype=torch.int64), LABELS, TypeError, "floating"),
        (None, LABELS, TypeError, "images"),
        (torch.zeros(4, 3, 32, 32), torch.tensor([0, 1, 2, 1]), ValueError, "0/1"),
        (torch.zeros(4, 3, 32, 32), torch.tensor([0, 1, -1, 1]), ValueError, "0/1"),
        (torch.zeros(4, 3, 32, 32), torch.tensor([0.0, 1.0, 1.0, 0.0]), TypeError, "integer"),
        (torch.zeros(4, 3, 32, 32), torch.tensor([0, 1, 1]), ValueError, r"\(4,\)"),
        (torch.zeros(4, 3, 32, 32), [0, 1, 1, 0], TypeError, "labels"),
    ],
)
def test_rejects_bad_batches(images, labels, error, match):
    with pytest.raises(error, match=match):
        compute_objective(_model(), images, labels, torch.Generator(), ObjectiveConfig())


def test_rejects_bad_arguments():
    model, images = _model(), _images()
    with pytest.raises(TypeError, match="generator"):
        compute_objective(model, images, LABELS, None, ObjectiveConfig())
    with pytest.raises(TypeError, match="config"):
        compute_objective(model, images, LABELS, torch.Generator(), {"lambda_kd": 0.5})
    with pytest.raises(TypeError, match="MultiModalCAM"):
        compute_objective(model.network(0), images, LABELS, torch.Generator(), ObjectiveConfig())
    compute_objective(model, images, LABELS.bool(), torch.Generator(), None)  # bool labels, default config


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(lambda_kd=-1.0), ValueError),
        (dict(lambda_kd=float("nan")), ValueError),
        (dict(lambda_kd="0.5"), TypeError),
        (dict(lambda_er=-0.1), ValueError),
        (dict(lambda_cmer=float("inf")), ValueError),
        (dict(temperature=0.0), ValueError),
        (dict(zscore_eps=0.0), ValueError),
        (dict(transform="shear"), ValueError),
        (dict(equivariance_backend="cuda"), ValueError),
        (dict(er_distance="l2"), ValueError),
        (dict(use_er=1), TypeError),
        (dict(use_cls=False, use_kd=False, use_er=False, use_cmer=False), ValueError),
    ],
)
def test_config_validation(kwargs, error):
    with pytest.raises(error):
        ObjectiveConfig(**kwargs)


def test_ablation_presets():
    assert ObjectiveConfig.ablation("full") == ObjectiveConfig()
    assert ObjectiveConfig.ablation("er_cmer", equivariance_backend="torch").use_kd is False
    with pytest.raises(ValueError, match="ablation"):
        ObjectiveConfig.ablation("cmer_only")
    with pytest.raises(ValueError, match="use_kd"):
        ObjectiveConfig.ablation("er", use_kd=True)
