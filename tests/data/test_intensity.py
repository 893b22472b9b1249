"""Percentile normalisation of one volume: hand-computed cases, NaN safety, bad percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from mmcam.data import DataError, normalize_intensity


def test_hand_computed_with_chosen_percentiles():
    # foreground 10..50 (5 values, background 0); "linear" 25th / 75th percentiles: 20 and 40
    volume = np.array([0, 10, 20, 30, 40, 50, 0], dtype=np.float32)
    out, stats = normalize_intensity(volume, (25, 75))
    np.testing.assert_array_equal(out, [0, 0, 0, 0.5, 1, 1, 0])
    assert (stats.lo, stats.hi, stats.foreground) == (20.0, 40.0, 5)
    assert out.dtype == np.float32


def test_hand_computed_with_the_default_percentiles():
    # foreground 1..201: the 0.5th percentile sits at position 0.005 * 200 = 1 -> value 2, the 99.5th
    # at position 199 -> value 200; so v -> (v - 2) / 198, clipped to [0, 1]
    values = np.arange(1, 202, dtype=np.float32)
    volume = np.concatenate([np.zeros(50, np.float32), values]).reshape(1, 1, -1)
    out, stats = normalize_intensity(volume)
    assert (stats.lo, stats.hi) == (2.0, 200.0)
    expected = np.concatenate([np.zeros(50), np.clip((values - 2) / 198, 0, 1)]).reshape(1, 1, -1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out[0, 0, 50] == 0 and out[0, 0, 51] == 0 and out[0, 0, -1] == 1  # 1 and 2 -> 0; 201 -> 1
    assert out[0, 0, 150] == pytest.approx((101 - 2) / 198)


def test_an_outlier_does_not_stretch_the_range():
    volume = np.concatenate([np.linspace(100, 200, 999), [1e6]]).astype(np.float32)
    out, stats = normalize_intensity(volume)
    assert stats.hi < 201 and out[-1] == 1.0
    assert np.median(out[:-1]) == pytest.approx(0.5, abs=0.01)


def test_negative_values_are_foreground():
    out, stats = normalize_intensity(np.array([-3.0, -1.0, 0.0, 1.0, 3.0]), (0, 100))
    np.testing.assert_allclose(out, [0, 1 / 3, 0, 2 / 3, 1])
    assert stats.foreground == 4


def test_nan_and_inf_are_background_and_never_reach_the_output():
    volume = np.array([np.nan, 10, 20, np.inf, 30, -np.inf, 0], dtype=np.float32)
    out, stats = normalize_intensity(volume, (0, 100))
    np.testing.assert_array_equal(out, [0, 0, 0.5, 0, 1, 0, 0])
    assert stats.foreground == 3 and np.isfinite(out).all()


def test_constant_and_empty_foregrounds():
    out, stats = normalize_intensity(np.array([0, 7, 7, 0], dtype=np.float32))
    np.testing.assert_array_equal(out, [0, 1, 1, 0])
    assert stats.lo == stats.hi == 7
    out, stats = normalize_intensity(np.zeros((2, 2)))
    assert not out.any() and stats.foreground == 0 and stats.lo is None


@pytest.mark.parametrize("percentiles", [(99.5, 0.5), (-1, 50), (50, 101), (1,), "ab", (1, np.nan)])
def test_bad_percentiles(percentiles):
    with pytest.raises(DataError, match="clip percentiles"):
        normalize_intensity(np.ones(3), percentiles)
