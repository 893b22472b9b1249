"""In-plane crop / pad / resize (--size) and its inverse: plans hand-computed, exact round trips on
odd sizes, the stored grid's affine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmcam.data import DataError, InPlaneGeometry, center_crop_or_pad, plan_geometry


def test_no_size_is_the_identity():
    geometry = plan_geometry((9, 7), None)
    assert geometry.is_identity and geometry.scale == (1.0, 1.0)
    planes = np.arange(63.0).reshape(1, 9, 7)
    assert geometry.apply(planes) is planes and geometry.invert(planes) is planes


def test_crop_plans_hand_computed():
    # x: 9 -> 5 cropped, foreground in rows 5..8 (centre 7): start floor(7 - 2.5) = 4, inside [0, 4]
    # y: 7 -> 5 cropped, no foreground limits (all columns occupied): centred, start 1
    foreground = np.zeros((9, 7), bool)
    foreground[5:9, :] = True
    geometry = plan_geometry((9, 7), 5, "crop", foreground)
    assert geometry.box == (4, 1, 9, 6) and geometry.padding == ((0, 0), (0, 0))
    # padding: 3 -> 6 puts (6 - 3) // 2 = 1 before and 2 after, like center_crop_or_pad
    geometry = plan_geometry((3, 6), 6, "crop")
    assert geometry.box == (-1, 0, 5, 6) and geometry.padding == ((1, 2), (0, 0))
    a = np.arange(18).reshape(3, 6)
    np.testing.assert_array_equal(geometry.apply(a), center_crop_or_pad(a, (6, 6)))


def test_scale_plan_hand_computed():
    geometry = plan_geometry((9, 7), 18, "scale")
    assert geometry.box == (0, -1, 9, 8) and geometry.size == (18, 18)
    assert geometry.scale == (0.5, 0.5) and geometry.padding == ((0, 0), (1, 1))


def test_bilinear_resize_follows_the_pixel_centre_convention():
    # 2 -> 4 along x (y kept): stored pixel i sits at x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75,
    # 1.25; bilinear with edge clamping gives 0, 2.5, 7.5, 10 for the values 0 and 10
    geometry = InPlaneGeometry((2, 1), (0, 0, 2, 1), (4, 1))
    out = geometry.apply(np.array([[0.0], [10.0]], dtype=np.float32))
    np.testing.assert_allclose(out[:, 0], [0, 2.5, 7.5, 10])


@given(
    x=st.integers(1, 13),
    y=st.integers(1, 13),
    size=st.integers(1, 13),
    rows=st.integers(0, 12),
    cols=st.integers(0, 12),
)
def test_crop_round_trip_is_exact_inside_the_box(x, y, size, rows, cols):
    planes = np.arange(1, 2 * x * y + 1, dtype=np.int64).reshape(2, x, y)
    foreground = np.zeros((x, y), bool)
    foreground[min(rows, x - 1), min(cols, y - 1)] = True
    geometry = plan_geometry((x, y), size, "crop", foreground)
    stored = geometry.apply(planes)
    assert stored.shape == (2, size, size) and geometry.scale == (1.0, 1.0)
    back = geometry.invert(stored, fill=-1)
    kept = back != -1
    np.testing.assert_array_equal(back[kept], planes[kept])  # every kept voxel at its place
    assert kept[0].sum() == min(x, size) * min(y, size)
    assert geometry.voxels_outside(foreground) == 0  # the window covers the foreground
    assert stored.sum() == planes[kept].sum()  # padding is zero


@given(x=st.integers(1, 9), y=st.integers(1, 9), factor=st.integers(1, 3))
def test_scale_round_trip_of_masks_is_exact_for_integer_factors(x, y, factor):
    rng = np.random.default_rng(x * 100 + y * 10 + factor)
    mask = rng.integers(0, 3, size=(3, x, y)).astype(np.uint8)
    geometry = plan_geometry((x, y), max(x, y) * factor, "scale")
    stored = geometry.apply(mask)
    assert stored.dtype == np.uint8 and set(np.unique(stored)) <= set(np.unique(mask)) | {0}
    np.testing.assert_array_equal(geometry.invert(stored), mask)
    np.testing.assert_array_equal(geometry.invert(stored > 0), mask > 0)


def test_scale_down_of_images_is_antialiased_and_inverted_approximately():
    # rows 1, 4, 7 bright: shrinking 9 -> 3 samples exactly these rows, so a plain bilinear resize
    # would give all ones (aliasing); the antialiasing triangle filter (taps 1/9, 2/9, 3/9, 2/9, 1/9)
    # gives 1/3 in the middle row
    image = np.zeros((1, 9, 9), np.float32)
    image[0, 1::3] = 1.0
    geometry = plan_geometry((9, 9), 3, "scale")
    shrunk = geometry.apply(image)
    np.testing.assert_allclose(shrunk[0, 1], 1 / 3, atol=1e-6)
    assert shrunk.max() < 0.6
    ramp = np.linspace(0, 1, 81, dtype=np.float32).reshape(1, 9, 9)  # linear: kept in the interior
    back = geometry.invert(geometry.apply(ramp))
    assert back[0, 4, 4] == pytest.approx(ramp[0, 4, 4]) and np.abs(back - ramp).max() < 0.2


def test_stored_affine_for_crop_and_scale():
    affine = np.array([[-2.0, 0, 0, 30], [0, 3.0, 0, -4], [0, 0, 1.5, 7], [0, 0, 0, 1]])
    crop = InPlaneGeometry((9, 7), (2, -1, 7, 6), (5, 7))
    np.testing.assert_allclose(crop.stored_affine(affine) @ [0, 0, 4, 1], affine @ [2, -1, 4, 1])
    scale = plan_geometry((9, 7), 18, "scale")  # stored (i, j) at volume (i/2 - 0.25, j/2 - 1.25)
    np.testing.assert_allclose(scale.stored_affine(affine) @ [3, 5, 2, 1], affine @ [1.25, 1.25, 2, 1])
    np.testing.assert_allclose(
        np.linalg.norm(scale.stored_affine(affine)[:3, :3], axis=0), [1.0, 1.5, 1.5]
    )  # the voxel size halves in-plane


def test_json_round_trip_and_checks():
    geometry = plan_geometry((33, 41), 32, "crop")
    assert InPlaneGeometry.from_json(geometry.to_json()) == geometry
    with pytest.raises(ValueError, match="malformed"):
        InPlaneGeometry.from_json({"shape": [3, 3], "box": [0, 0, 0, 3], "size": [3, 3]})
    with pytest.raises(DataError, match="size must be a positive int"):
        plan_geometry((9, 7), 0)
    with pytest.raises(DataError, match="fit must be one of"):
        plan_geometry((9, 7), 5, "stretch")
    with pytest.raises(DataError, match=r"expects \(\.\.\., 32, 32\) planes"):
        geometry.invert(np.zeros((2, 33, 41)))
    with pytest.raises(DataError, match="interpolation must be one of"):
        geometry.apply(np.zeros((33, 41)), "cubic")
