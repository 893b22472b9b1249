"""Grad-CAM / Grad-CAM++ at the backbone layer: Grad-CAM equals the CAM for this architecture (the class
score is the mean of a 1x1 convolution of the hooked layer), the network's padding is cropped off, maps
are zeroed where the network predicts "no target", and the model's parameters get no gradient."""

from __future__ import annotations

import pytest
import torch

from mmcam.cams.gradcam import gradcam_maps, gradcam_weights
from mmcam.cams.pseudo_masks import MAP_TYPES, class_maps, foreground_maps
from mmcam.models import MultiModalCAM


def model_predicting(positive: bool) -> MultiModalCAM:
    """A small untrained model whose classifiers always predict class 1 (``positive``) or 0 (see
    tests/run_fixtures.force_prediction for why this works)."""
    torch.manual_seed(0)
    model = MultiModalCAM(["t2", "flair"], width_divisor=16).eval()
    with torch.no_grad():
        for network in model.networks.values():
            weight = network.classifier.weight
            winner = weight[1].abs() + 0.1
            weight.copy_(torch.stack([-winner, winner]) if positive else torch.stack([winner, -winner]))
    return model


def images() -> torch.Tensor:
    """(4, 2, 30, 27): padded to 32 x 32 inside the network (one shape for all tests: the first call of a
    convolution shape is slow on the CPU)."""
    return torch.randn(4, 2, 30, 27, generator=torch.Generator().manual_seed(1))


def test_gradcam_equals_cam():
    model = model_predicting(positive=True)
    cam, cam_pred = foreground_maps(model, images())
    grad, grad_pred = gradcam_maps(model, images(), "gradcam")
    assert grad.shape == cam.shape == (4, 2, 30, 27)
    assert torch.equal(grad_pred, cam_pred) and bool((cam_pred == 1).all())
    assert cam.amax() > 0.9  # non-trivial maps
    torch.testing.assert_close(grad, cam, rtol=0, atol=1e-5)


def test_gradcampp_differs_but_has_the_same_format():
    model = model_predicting(positive=True)
    cam, _ = foreground_maps(model, images())
    plus, pred = gradcam_maps(model, images(), "gradcampp")
    assert plus.shape == cam.shape and bool((pred == 1).all())
    assert float(plus.min()) >= 0.0 and float(plus.max()) <= 1.0
    assert (plus - cam).abs().max() > 1e-2  # other channel weights than the CAM's


def test_maps_are_zero_where_the_network_predicts_no_target():
    model = model_predicting(positive=False)
    for map_type in MAP_TYPES:
        maps, pred = class_maps(model, images(), map_type)
        assert bool((pred == 0).all()) and not maps.any(), map_type


def test_parameters_get_no_gradient_and_the_hook_is_removed():
    model = model_predicting(positive=True)
    gradcam_maps(model, images(), "gradcampp")
    assert all(p.grad is None for p in model.parameters())
    assert all(not model.get_submodule(model.backbone_name(m))._forward_hooks for m in model.modalities)


def test_gradcampp_weights_by_hand():
    activations = torch.tensor([[[[1.0, 3.0]]]])  # (N=1, C=1, 1, 2): sum 4
    gradients = torch.tensor([[[[0.5, -1.0]]]])
    # alpha = g^2 / (2 g^2 + 4 g^3): 0.25 / (0.5 + 0.5) = 0.25 at g = 0.5; the negative g is dropped by relu
    assert gradcam_weights(activations, gradients, "gradcampp").item() == pytest.approx(0.25 * 0.5)
    assert gradcam_weights(activations, gradients, "gradcam").item() == pytest.approx(-0.25)


def test_unknown_map_type_is_rejected():
    with pytest.raises(ValueError, match="unknown map type 'scorecam'"):
        class_maps(model_predicting(True), torch.randn(1, 2, 8, 8), "scorecam")
