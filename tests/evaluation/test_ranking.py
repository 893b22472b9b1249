"""Average precision (mmcam.evaluation.ranking) against hand-computed cases and a brute-force reference."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmcam.evaluation.ranking import average_precision, positive_slice_ap

from ranking_reference import brute_force_ap


def test_hand_computed():
    # ranking: 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-): precision at the positives 1 and 2/3 -> AP = (1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # perfect ranking
    assert average_precision(np.array([0.3, 0.2, 0.1]), np.array([1, 1, 0])) == 1.0
    # a constant map is one threshold: AP = the prevalence
    assert average_precision(np.zeros(8), np.array([1, 0, 0, 0, 1, 0, 0, 0])) == pytest.approx(0.25)
    # ties between a positive and a negative at the top: one threshold with precision 1/2
    assert average_precision(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 1])) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_no_positive_is_nan_and_bad_input_raises():
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))
    with pytest.raises(ValueError, match="shape"):
        average_precision(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        average_precision(np.array([np.nan, 1.0]), np.array([1, 0]))


@given(
    st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.booleans()), min_size=1, max_size=40).filter(
        lambda items: any(t for _, t in items)
    )
)
def test_matches_the_definition(items):
    scores = np.array([s for s, _ in items])
    truth = np.array([t for _, t in items])
    assert average_precision(scores, truth) == pytest.approx(brute_force_ap(scores, truth), abs=1e-12)


def test_positive_slices_only():
    """Slices [:, :, k] without truth are left out: a high score on them changes nothing."""
    rng = np.random.default_rng(0)
    truth = np.zeros((6, 5, 4), dtype=bool)
    truth[1:3, 1:4, 1] = truth[2:5, 0:2, 2] = True
    volume = rng.random(truth.shape)
    expected = brute_force_ap(volume[:, :, 1:3], truth[:, :, 1:3])
    assert positive_slice_ap(volume, truth) == pytest.approx(expected)
    volume[:, :, [0, 3]] = 10.0
    assert positive_slice_ap(volume, truth) == pytest.approx(expected)
    assert math.isnan(positive_slice_ap(volume, np.zeros_like(truth)))
