"""Seeded patient-level splits by (train, val, test) fractions, their parsing, and k-fold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmcam.data import DataError, kfold_patients, parse_fractions, split_patients

IDS = [f"case_{i:03d}" for i in range(10)]


def sizes(split):
    return len(split.train), len(split.val), len(split.test)


def test_sizes_hand_computed():
    assert sizes(split_patients(IDS, (0.7, 0.1, 0.2), seed=0)) == (7, 1, 2)
    # 0.25 * 10 = 2.5 rounds up to 3; 0.04 * 10 = 0.4 rounds to 0 but a positive fraction gets 1
    assert sizes(split_patients(IDS, (0.71, 0.04, 0.25), seed=0)) == (6, 1, 3)
    split = split_patients(IDS, (1, 0, 0), seed=0)
    assert split.train == tuple(IDS) and split.val == split.test == ()
    # no training part: the rounding remainder goes to val, or to test when val is 0
    assert sizes(split_patients(IDS[:3], (0, 0.5, 0.5), seed=0)) == (0, 1, 2)
    assert sizes(split_patients(IDS, (0, 0, 1), seed=0)) == (0, 0, 10)
    assert sizes(split_patients([], (0.7, 0.1, 0.2))) == (0, 0, 0)


def test_default_fractions_are_the_documented_ones():
    assert split_patients(IDS, seed=4) == split_patients(IDS, (0.7, 0.1, 0.2), seed=4)


def test_deterministic_order_independent_and_seed_dependent():
    a = split_patients(IDS, seed=5)
    assert split_patients(list(reversed(IDS)), seed=5) == a
    assert split_patients(IDS, seed=5) == a
    others = {split_patients(IDS, seed=s).test for s in range(6, 12)}
    assert len(others | {a.test}) > 1


def test_parts_are_sorted():
    split = split_patients(IDS, (0.4, 0.3, 0.3), seed=1)
    for part in (split.train, split.val, split.test):
        assert list(part) == sorted(part)


@given(n=st.integers(3, 60), val=st.floats(0.0, 0.4), test=st.floats(0.0, 0.4), seed=st.integers(0, 2**32 - 1))
def test_split_is_a_partition_of_patients(n, val, test, seed):
    ids = [f"p{i}" for i in range(n)]
    try:
        split = split_patients(ids, (1 - val - test, val, test), seed=seed)
    except DataError as exc:  # only when nothing is left for training
        assert "none for training" in str(exc)
        return
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == n and set().union(*parts) == set(ids)  # no patient in two parts
    assert len(split.test) == (0 if test == 0 else max(1, int(test * n + 0.5)))
    assert len(split.val) == (0 if val == 0 else max(1, int(val * n + 0.5)))


@given(n=st.integers(6, 50), folds=st.integers(2, 4), seed=st.integers(0, 1000))
def test_kfold_validates_every_non_test_patient_once(n, folds, seed):
    ids = [f"p{i}" for i in range(n)]
    splits = kfold_patients(ids, folds=folds, test_fraction=0.2, seed=seed)
    test = set(splits[0].test)
    assert all(set(s.test) == test for s in splits)
    assert test == set(split_patients(ids, (0.7, 0.1, 0.2), seed=seed).test)
    rest = set(ids) - test
    vals = [set(s.val) for s in splits]
    assert sorted(p for v in vals for p in v) == sorted(rest)
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for s, v in zip(splits, vals):
        assert set(s.train) == rest - v


def test_kfold_sizes_hand_computed():
    splits = kfold_patients(IDS, folds=3, test_fraction=0.2, seed=0)  # 8 non-test: 3, 3, 2
    assert [len(s.val) for s in splits] == [3, 3, 2]
    assert [len(s.train) for s in splits] == [5, 5, 6]
    # the 32 labelled prostate cases, 5 folds without a test set: validation parts of 7,7,6,6,6
    cases = [f"prostate_{i:02d}" for i in range(32)]
    assert [len(s.val) for s in kfold_patients(cases, folds=5, test_fraction=0, seed=0)] == [7, 7, 6, 6, 6]


@pytest.mark.parametrize(
    "text, expected", [("0.7,0.1,0.2", (0.7, 0.1, 0.2)), (" 0.8, 0.2 ,0", (0.8, 0.2, 0.0)), ("1,0,0", (1.0, 0.0, 0.0))]
)
def test_parse_fractions(text, expected):
    assert parse_fractions(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.7,0.1", "three comma-separated numbers"),
        ("0.7,0.1,0.1,0.1", "three comma-separated numbers"),
        ("a,b,c", "three comma-separated numbers"),
        ("0.7,0.2,0.2", r"must sum to 1, got \(0\.7, 0\.2, 0\.2\) \(sum 1\.1\)"),
        ("1.2,-0.1,-0.1", "must be non-negative"),
        ("nan,0.5,0.5", "must be non-negative"),
    ],
)
def test_bad_fractions(text, message):
    with pytest.raises(DataError, match=message):
        parse_fractions(text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fractions": (0.5, 0.5)}, "three numbers"),
        ({"fractions": (0.0, 0.5, 0.6)}, "must sum to 1"),
        ({"fractions": (0.1, 0.45, 0.45)}, "leave none for training"),
        ({"seed": -1}, "seed must be a non-negative int"),
    ],
)
def test_bad_split_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        split_patients(IDS, **kwargs)


def test_duplicates_and_bad_folds():
    with pytest.raises(DataError, match="unique"):
        split_patients(["a", "b", "a"])
    with pytest.raises(DataError, match="folds must be an int >= 2"):
        kfold_patients(IDS, folds=1)
    with pytest.raises(DataError, match="8 non-test patients cannot fill 9 folds"):
        kfold_patients(IDS, folds=9)
    with pytest.raises(DataError, match="1 patients cannot fill every part"):
        split_patients(["a"], (0, 0.5, 0.5))
