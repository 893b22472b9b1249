"""Dice, HD95, ASSD and the distance transform against an independent brute-force implementation (explicit
neighbour loops for the surface, all pairwise distances in mm), against hand-computed values, and against
MONAI where it is installed (an optional test dependency)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmcam.evaluation.distance_transform import distance_transform
from mmcam.evaluation.surface_metrics import assd, case_metrics, dice, hd95, slice_dice, surface, surface_distances


# ------------------------------------------------------------------------ independent reference
def reference_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (or outside the volume), by explicit loops."""
    out = np.zeros(mask.shape, dtype=bool)
    for index in np.argwhere(mask):
        for axis in range(mask.ndim):
            for step in (-1, 1):
                neighbour = index.copy()
                neighbour[axis] += step
                if not 0 <= neighbour[axis] < mask.shape[axis] or not mask[tuple(neighbour)]:
                    out[tuple(index)] = True
    return out


def reference_metrics(pred, truth, spacing) -> tuple[float, float, float]:
    """(Dice, HD95, ASSD) from all pairwise distances between surface voxels, in mm."""
    spacing = np.asarray(spacing, dtype=np.float64)
    p = np.argwhere(reference_surface(pred)) * spacing
    g = np.argwhere(reference_surface(truth)) * spacing
    distances = np.sqrt(((p[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    to_truth, to_pred = distances.min(axis=1), distances.min(axis=0)
    overlap = 2.0 * np.count_nonzero(pred & truth) / (pred.sum() + truth.sum())
    return (
        overlap,
        max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)),
        (to_truth.sum() + to_pred.sum()) / (to_truth.size + to_pred.size),
    )


def sphere(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius**2


def cube(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, a + size) for a in start)] = True
    return mask


FIXTURES = {
    "cube vs shifted cube": (cube((12, 12, 12), (2, 2, 2), 5), cube((12, 12, 12), (4, 3, 2), 5), (1.0, 1.0, 1.0)),
    "cube vs shifted cube, anisotropic": (
        cube((12, 12, 12), (2, 2, 2), 5),
        cube((12, 12, 12), (4, 3, 2), 5),
        (0.7, 1.3, 2.5),
    ),
    "shifted spheres, anisotropic": (
        sphere((16, 18, 10), (7, 8, 4), 4.5, (1.0, 1.0, 2.0)),
        sphere((16, 18, 10), (8, 10, 5), 5.5, (1.0, 1.0, 2.0)),
        (1.0, 1.0, 2.0),
    ),
    "disjoint cubes": (cube((14, 8, 8), (0, 1, 1), 4), cube((14, 8, 8), (9, 2, 3), 3), (1.2, 0.8, 3.0)),
    "touching the volume border": (cube((6, 6, 6), (0, 0, 0), 6), cube((6, 6, 6), (1, 1, 1), 3), (1.0, 2.0, 1.5)),
}


@pytest.mark.parametrize("name", list(FIXTURES))
def test_metrics_match_the_brute_force_reference(name):
    pred, truth, spacing = FIXTURES[name]
    expected = reference_metrics(pred, truth, spacing)
    got = case_metrics(pred, truth, spacing)
    assert got.dice == pytest.approx(expected[0], abs=1e-12)
    assert got.hd95_mm == pytest.approx(expected[1], abs=1e-9)
    assert got.assd_mm == pytest.approx(expected[2], abs=1e-9)
    assert (dice(pred, truth), hd95(pred, truth, spacing), assd(pred, truth, spacing)) == pytest.approx(
        (got.dice, got.hd95_mm, got.assd_mm)
    )
    assert got.hd95_mm > 0 and got.assd_mm > 0  # the fixtures differ


def test_random_masks_match_the_brute_force_reference():
    rng = np.random.default_rng(3)
    for _ in range(20):
        shape = tuple(rng.integers(3, 9, size=3))
        pred, truth = rng.random(shape) < 0.3, rng.random(shape) < 0.2
        pred.flat[0] = truth.flat[-1] = True
        spacing = tuple(rng.uniform(0.4, 3.0, size=3))
        got = case_metrics(pred, truth, spacing)
        assert (got.dice, got.hd95_mm, got.assd_mm) == pytest.approx(reference_metrics(pred, truth, spacing), abs=1e-9)


def test_hand_computed_values():
    spacing = (0.5, 2.0, 2.5)
    a, b = np.zeros((4, 5, 6), dtype=bool), np.zeros((4, 5, 6), dtype=bool)
    a[1, 1, 1], b[2, 3, 4] = True, True  # one voxel each: every distance is the offset in mm
    offset = math.sqrt((1 * 0.5) ** 2 + (2 * 2.0) ** 2 + (3 * 2.5) ** 2)
    assert hd95(a, b, spacing) == pytest.approx(offset) and assd(a, b, spacing) == pytest.approx(offset)
    planes_a, planes_b = np.zeros((6, 6, 8), dtype=bool), np.zeros((6, 6, 8), dtype=bool)
    planes_a[:, :, 2], planes_b[:, :, 5] = True, True  # parallel one-voxel planes 3 slices apart
    assert hd95(planes_a, planes_b, spacing) == pytest.approx(3 * 2.5)
    assert assd(planes_a, planes_b, spacing) == pytest.approx(3 * 2.5)
    two, one = np.zeros((3, 3, 3), dtype=bool), np.zeros((3, 3, 3), dtype=bool)
    two[0, 0, 0] = two[0, 0, 1] = one[0, 0, 0] = True
    assert dice(two, one) == pytest.approx(2 / 3)
    assert case_metrics(two, two, spacing).as_dict() == {
        "dice": 1.0,
        "hd95_mm": 0.0,
        "assd_mm": 0.0,
        "dice_2d": 1.0,
        "predicted_voxels": 2,
        "truth_voxels": 2,
    }


def test_surface_of_a_cube_and_at_the_volume_border():
    inner = cube((8, 8, 8), (2, 2, 2), 4)
    assert surface(inner).sum() == 4**3 - 2**3
    full = np.ones((3, 4, 5), dtype=bool)  # outside the volume counts as outside the mask
    assert np.array_equal(surface(full), reference_surface(full)) and surface(full).sum() == 3 * 4 * 5 - 1 * 2 * 3


def test_empty_mask_conventions():
    empty, some = np.zeros((5, 5, 5), dtype=bool), cube((5, 5, 5), (1, 1, 1), 2)
    both = case_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (both.dice, both.hd95_mm, both.assd_mm, both.dice_2d) == (1.0, 0.0, 0.0, 1.0)
    for pred, truth in ((empty, some), (some, empty)):
        one = case_metrics(pred, truth, (1.0, 1.0, 1.0))
        assert one.dice == 0.0 and one.dice_2d == 0.0
        assert math.isnan(one.hd95_mm) and math.isnan(one.assd_mm)
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(empty, some, (1.0, 1.0, 1.0))


def test_slice_dice_averages_the_slices_where_either_mask_is_present():
    pred, truth = np.zeros((3, 3, 4), dtype=bool), np.zeros((3, 3, 4), dtype=bool)
    pred[0, 0, 0] = truth[0, 0, 0] = True  # slice 0: Dice 1
    pred[0, 0, 1] = pred[1, 1, 1] = True  # slice 1: prediction only, Dice 0
    pred[2, 2, 3] = truth[2, 2, 3] = truth[2, 1, 3] = True  # slice 3: 2*1/(1+2); slice 2: both empty, left out
    assert slice_dice(pred, truth) == pytest.approx((1.0 + 0.0 + 2 / 3) / 3)


def test_cropping_to_the_bounding_box_changes_nothing():
    pred, truth, spacing = FIXTURES["shifted spheres, anisotropic"]
    padded = [np.pad(m, ((3, 5), (0, 7), (2, 1))) for m in (pred, truth)]
    for small, large in zip(surface_distances(pred, truth, spacing), surface_distances(*padded, spacing)):
        assert np.array_equal(np.sort(small), np.sort(large))


def test_shape_and_spacing_are_checked():
    with pytest.raises(ValueError, match="same shape"):
        case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="one entry per axis"):
        hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1, 1))
    with pytest.raises(ValueError, match="positive"):
        distance_transform(np.ones((2, 2)), (1.0, 0.0))


# ------------------------------------------------------------------------ distance transform
@given(mask=hnp.arrays(bool, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7)), data=st.data())
def test_distance_transform_matches_the_minimum_over_all_features(mask, data):
    spacing = data.draw(st.lists(st.floats(0.25, 4.0), min_size=mask.ndim, max_size=mask.ndim))
    got = distance_transform(mask, spacing)
    if not mask.any():
        assert np.isinf(got).all()
        return
    points = np.indices(mask.shape).reshape(mask.ndim, -1).T * np.asarray(spacing)
    features = np.argwhere(mask) * np.asarray(spacing)
    expected = np.sqrt(((points[:, None, :] - features[None, :, :]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(got.ravel(), expected, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------ MONAI (optional)
def test_metrics_agree_with_monai():
    monai_metrics = pytest.importorskip("monai.metrics", reason="MONAI is an optional test dependency")
    pytest.importorskip("scipy", reason="MONAI's surface distances need SciPy")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    cases = list(FIXTURES.values()) + [
        (rng.random((10, 9, 7)) < 0.3, rng.random((10, 9, 7)) < 0.25, tuple(rng.uniform(0.5, 3.0, 3))) for _ in range(5)
    ]
    for pred, truth, spacing in cases:
        p, g = (torch.from_numpy(m.astype(np.float32))[None, None] for m in (pred, truth))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected_hd = float(monai_metrics.compute_hausdorff_distance(p, g, percentile=95, spacing=list(spacing)))
            expected_assd = float(
                monai_metrics.compute_average_surface_distance(p, g, symmetric=True, spacing=list(spacing))
            )
        got = case_metrics(pred, truth, spacing)
        assert got.hd95_mm == pytest.approx(expected_hd, abs=1e-4)
        assert got.assd_mm == pytest.approx(expected_assd, abs=1e-4)
