"""Tests of mmcam.models: the per-modality U-Net CAM network, the multi-modal container, the z-score."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from mmcam.models import (
    BACKBONE_LAYER,
    CAMUNet,
    MultiModalCAM,
    unwrap_model,
    zscore_per_sample,
)

ODD_SIZES = [(32, 32), (40, 40), (41, 37), (9, 17), (3, 5)]


def _images(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("size", ODD_SIZES)
def test_multimodal_shapes_and_logits_are_gap_of_cam(size):
    torch.manual_seed(0)
    model = MultiModalCAM(("t1", "t2", "flair"), width_divisor=16)
    x = _images((2, 3, *size))
    logits, cams = model(x)
    assert logits.shape == (2, 3, 2) and cams.shape == (2, 3, 2, *size)
    assert torch.equal(logits, cams.mean(dim=(-2, -1)))  # exactly the global average of the CAM


@pytest.mark.parametrize("size", ODD_SIZES)
def test_single_network_matches_its_channel_of_the_container(size):
    torch.manual_seed(0)
    model = MultiModalCAM(("t1", "t2"), width_divisor=16)
    x = _images((2, 2, *size))
    logits, cams = model(x)
    for m in range(2):
        z, a = model.network(m)(x[:, m : m + 1])
        assert z.shape == (2, 2) and a.shape == (2, 2, *size)
        assert torch.equal(z, a.mean(dim=(-2, -1)))
        assert torch.equal(z, logits[:, m]) and torch.equal(a, cams[:, m])


def test_cam_is_aligned_with_the_input_when_padding():
    """The crop undoes the internal padding: in eval mode (no batch statistics), the CAM of a 37 x 37
    image equals the centre of the CAM of the same image explicitly zero-padded to 40 x 40 (a padding of
    (1, 2) pixels on each axis, the split the network uses)."""
    torch.manual_seed(0)
    net = CAMUNet(width_divisor=16).eval()
    x = _images((2, 1, 37, 37))
    z, cam = net(x)
    _, cam_padded = net(nn.functional.pad(x, (1, 2, 1, 2)))
    torch.testing.assert_close(cam, cam_padded[..., 1:38, 1:38], rtol=0, atol=0)
    _, cam_shifted = net(nn.functional.pad(x, (2, 1, 2, 1)))
    assert not torch.allclose(cam, cam_shifted[..., 2:39, 2:39])  # a wrong split would be detected


# ------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("divisor, widths", [(1, (64, 128, 256, 256)), (4, (16, 32, 64, 64)), (16, (4, 8, 16, 16))])
def test_conv_layout_widths_and_skip_connections(divisor, widths):
    net = CAMUNet(width_divisor=divisor)
    c0, c1, c2, c3 = widths
    assert net.widths == widths
    convs = _convs(net)
    expected_in = [1, c0, c0, c1, c1, c2, c2, c3, c3 + c2, c1, c1 + c1, c0, c0 + c0, c0, c0, c0]
    expected_out = [c0, c0, c1, c1, c2, c2, c3, c3, c1, c1, c0, c0, c0, c0, c0, 2]
    assert [c.in_channels for c in convs] == expected_in  # decoder inputs = upsampled + skip
    assert [c.out_channels for c in convs] == expected_out
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs[:-1])
    # every 3x3 conv is followed by BN + ReLU
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == expected_out[:-1]
    assert len([m for m in net.modules() if isinstance(m, nn.ReLU)]) == len(convs) - 1
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 2 for p in pools)


def test_classifier_is_a_bias_free_1x1_conv_on_the_backbone():
    torch.manual_seed(0)
    model = MultiModalCAM(("t1", "t2"), width_divisor=16)
    net = model.network("t2")
    assert net.classifier.bias is None
    assert net.classifier.kernel_size == (1, 1) and net.classifier.out_channels == 2
    assert _convs(net)[-1] is net.classifier
    backbone = model.get_submodule(model.backbone_name("t2"))
    assert backbone is getattr(net, BACKBONE_LAYER) is model.get_submodule(model.backbone_name(1))
    assert [type(m) for m in backbone] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]

    captured = {}
    backbone.register_forward_hook(lambda mod, inp, out: captured.setdefault("f", out))
    _, cams = model(_images((2, 2, 32, 32)))
    f = captured["f"]
    assert f.shape == (2, net.widths[0], 32, 32)
    weight = net.classifier.weight[:, :, 0, 0]
    # the CAM is the backbone feature times the 1x1 weights, with no offset
    torch.testing.assert_close(cams[:, 1], torch.einsum("kc,nchw->nkhw", weight, f), rtol=1e-5, atol=1e-6)


def test_upsampling_is_nearest_neighbour():
    torch.manual_seed(0)
    net = CAMUNet(width_divisor=16)
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 3 and all(u.mode == "nearest" and u.scale_factor == 2 for u in ups)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in net.modules())
    outputs = []
    for u in ups:
        u.register_forward_hook(lambda mod, inp, out: outputs.append((inp[0], out)))
    net(_images((2, 1, 40, 40)))
    assert len(outputs) == 3
    for inp, out in outputs:
        assert out.shape[-2:] == (2 * inp.shape[-2], 2 * inp.shape[-1])
        for dy in (0, 1):
            for dx in (0, 1):  # every 2x2 block repeats the input pixel
                assert torch.equal(out[..., dy::2, dx::2], inp)


def test_xavier_normal_initialisation():
    """Conv weights ~ N(0, 2 / (fan_in + fan_out)): std within sampling error and Gaussian kurtosis
    (the default kaiming-uniform init has another std and an excess kurtosis of -1.2)."""
    torch.manual_seed(0)
    net = CAMUNet(width_divisor=1)
    for conv in _convs(net):
        w = conv.weight.detach().double().flatten()
        k = conv.kernel_size[0] * conv.kernel_size[1]
        expected = math.sqrt(2.0 / (conv.in_channels * k + conv.out_channels * k))
        n = w.numel()
        assert abs(w.mean().item()) < 6 * expected / math.sqrt(n)
        std = w.std().item()
        assert abs(std / expected - 1) < 6 / math.sqrt(2 * n), (conv, std, expected)
        if n >= 30000:
            kurtosis = (((w - w.mean()) / std) ** 4).mean().item() - 3
            assert abs(kurtosis) < 6 * math.sqrt(24 / n), (conv, kurtosis)
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))


# ------------------------------------------------------------------------------------------ independence
def test_networks_are_independent():
    torch.manual_seed(0)
    model = MultiModalCAM(("t1", "t2"), width_divisor=16)
    p1 = dict(model.network("t1").named_parameters())
    p2 = dict(model.network("t2").named_parameters())
    assert p1.keys() == p2.keys()
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert len(ptrs) == len(list(model.parameters()))  # no shared storage
    assert not torch.equal(p1["classifier.weight"], p2["classifier.weight"])  # independent draws
    assert all(k.startswith(("networks.t1.", "networks.t2.")) for k in model.state_dict())

    x = _images((2, 2, 32, 32))
    logits, cams = model(x)
    (logits[:, 0].sum() + cams[:, 0].square().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.network("t1").parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.network("t2").parameters())

    # network t2 reads only channel 1; changing channel 0 or t1's weights leaves its output unchanged
    model.eval()
    ref = model(x)[0][:, 1]
    with torch.no_grad():
        model.network("t1").classifier.weight.mul_(-3)
    x2 = x.clone()
    x2[:, 0] = _images((2, 32, 32), seed=9)
    assert torch.equal(model(x2)[0][:, 1], ref)


# ------------------------------------------------------------------------------------------ z-score
def test_zscore_per_sample_and_channel():
    x = _images((3, 2, 17, 23), dtype=torch.float64) * 50 + 300
    x[1, 0] *= 4
    out = zscore_per_sample(x)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.zeros(3, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.std(dim=(-2, -1), correction=0), torch.ones(3, 2, dtype=torch.float64))
    # each plane on its own: changing one plane leaves the others unchanged
    y = x.clone()
    y[2, 1] = 0.0
    assert torch.equal(zscore_per_sample(y)[:2], out[:2]) and torch.equal(zscore_per_sample(y)[2, 0], out[2, 0])


def test_zscore_of_a_constant_plane_is_zero_not_nan():
    x = _images((2, 2, 8, 8))
    x[0, 1] = 7.0
    x[1, 0] = 0.0
    out = zscore_per_sample(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, 1], torch.zeros(8, 8)) and torch.equal(out[1, 0], torch.zeros(8, 8))


@pytest.mark.parametrize(
    "args, error",
    [
        ((torch.zeros(2, 8, 8),), ValueError),
        ((torch.zeros(2, 1, 8, 8, dtype=torch.int64),), TypeError),
        ((torch.zeros(2, 1, 0, 8),), ValueError),
        ((torch.zeros(2, 1, 8, 8), 0.0), ValueError),
        ((torch.zeros(2, 1, 8, 8), "x"), TypeError),
        (([[1.0]],), TypeError),
    ],
)
def test_zscore_rejects_bad_input(args, error):
    with pytest.raises(error):
        zscore_per_sample(*args)


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "divisor, error", [(3, ValueError), (0, ValueError), (128, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_width_divisor(divisor, error):
    with pytest.raises(error, match="width_divisor"):
        CAMUNet(width_divisor=divisor)


@pytest.mark.parametrize(
    "modalities, error",
    [
        ((), ValueError),
        (("t1", "t1"), ValueError),
        (("t1", ""), ValueError),
        (("a.b",), ValueError),
        ("t1", TypeError),
        ((1, 2), ValueError),
        (("t1", "keys"), ValueError),
    ],
)
def test_bad_modalities(modalities, error):
    with pytest.raises(error):
        MultiModalCAM(modalities, width_divisor=16)


def test_forward_rejects_bad_images():
    model = MultiModalCAM(("t1", "t2"), width_divisor=16)
    with pytest.raises(ValueError, match="M=3"):
        model(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, M, H, W\)"):
        model(torch.zeros(2, 16, 16))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(2, 2, 16, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(2, 2, 0, 16))
    with pytest.raises(TypeError):
        model(None)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model.network(0)(torch.zeros(2, 2, 16, 16))
    with pytest.raises(IndexError):
        model.network(2)
    with pytest.raises(KeyError):
        model.backbone_name("flair")


def test_unwrap_model():
    model = MultiModalCAM(("t1", "t2"), width_divisor=16)
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(model)) is model
    with pytest.raises(TypeError, match="MultiModalCAM"):
        unwrap_model(CAMUNet(16))


def test_float64_forward():
    torch.manual_seed(0)
    model = MultiModalCAM(("t1", "t2"), width_divisor=16).double()
    logits, cams = model(_images((2, 2, 24, 24), dtype=torch.float64))
    assert logits.dtype == cams.dtype == torch.float64
