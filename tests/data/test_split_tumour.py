"""The split-tumour brats phantoms (``tumour="split"``): each of T1ce and FLAIR shows one lobe and hides the
other, so neither modality alone gives the whole target but the pair does; the family is selectable
everywhere phantoms are written, and the default (nested) phantoms are written as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmcam.data import DataError
from mmcam.data.synthetic import MARKER_FILE, generate_synthetic, main, make_subject

from phantom_measures import best_threshold_dice, best_union_dice, mean_contrast

SUBJECTS = range(6)


@pytest.fixture(scope="module")
def split_subjects():
    return [make_subject("brats", 0, i, tumour="split") for i in SUBJECTS]


def test_best_union_dice_hand_computed():
    a = np.array([0.0, 0.0, 5.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    b = np.array([0.0, 5.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    within = np.ones(8, dtype=bool)
    target = np.array([0, 1, 1, 0, 0, 0, 0, 0]) > 0  # one voxel only a shows, one only b shows
    assert best_union_dice(a, b, target, within, steps=5) == 1.0
    assert best_threshold_dice(a, target, within) < 1.0 and best_threshold_dice(b, target, within) < 1.0


def test_each_lobe_is_shown_by_one_modality_and_hidden_by_the_other(split_subjects):
    for index, subject in zip(SUBJECTS, split_subjects):
        t1, t1ce, _, flair = subject.images
        labels = subject.labels
        assert set(np.unique(labels)) == {0, 2, 4}, index  # edema lobe, enhancing lobe, no core or necrosis
        normal = (t1 > 0) & (labels == 0) & ~subject.confounders["wmh"] & ~subject.confounders["plexus"]
        edema, enhancing = labels == 2, labels == 4
        for image, shown, hidden in ((t1ce, enhancing, edema), (flair, edema, enhancing)):
            visible, invisible = mean_contrast(image, shown, normal), mean_contrast(image, hidden, normal)
            assert visible > 1.4 and abs(invisible) < 1.0 and visible > invisible + 0.5, (index, visible, invisible)


def best_dice_table(subjects):
    """``(subjects, 3)``: the best threshold Dice of T1ce alone, of FLAIR alone, and of the pair."""
    dice = []
    for subject in subjects:
        _, t1ce, _, flair = subject.images
        brain, target = subject.images.sum(axis=0) > 0, subject.labels > 0
        dice.append(
            [
                best_threshold_dice(t1ce, target, brain),
                best_threshold_dice(flair, target, brain),
                best_union_dice(t1ce, flair, target, brain),
            ]
        )
    return np.array(dice)


def test_neither_modality_alone_finds_the_whole_target_but_the_pair_does(split_subjects):
    t1ce_dice, flair_dice, pair_dice = best_dice_table(split_subjects).T
    assert t1ce_dice.mean() < 0.7 and flair_dice.mean() < 0.6, (t1ce_dice, flair_dice)
    assert pair_dice.mean() > max(t1ce_dice.mean(), flair_dice.mean()) + 0.1, (t1ce_dice, flair_dice, pair_dice)


def test_on_nested_phantoms_flair_alone_does_as_well_as_the_pair():
    """Why the split family exists: on the default phantoms the pair adds nothing to FLAIR's threshold."""
    _, flair_dice, pair_dice = best_dice_table([make_subject("brats", 0, i) for i in SUBJECTS]).T
    assert flair_dice.mean() > 0.7 and pair_dice.mean() < flair_dice.mean() + 0.05, (flair_dice, pair_dice)


def test_some_slices_cut_only_one_lobe(split_subjects):
    only_edema = only_enhancing = 0
    for subject in split_subjects:
        edema = (subject.labels == 2).any(axis=(0, 1))
        enhancing = (subject.labels == 4).any(axis=(0, 1))
        assert edema.any() and enhancing.any()
        only_edema += int((edema & ~enhancing).sum())
        only_enhancing += int((enhancing & ~edema).sum())
    assert only_edema >= 5 and only_enhancing >= 5  # slice labels a single network cannot see


def test_nested_is_the_default_and_its_marker_is_unchanged(tmp_path):
    shape = (40, 40, 16)
    np.testing.assert_array_equal(
        make_subject("brats", 0, 1, shape).labels, make_subject("brats", 0, 1, shape, "nested").labels
    )
    assert not np.array_equal(
        make_subject("brats", 0, 1, shape).labels, make_subject("brats", 0, 1, shape, "split").labels
    )
    nested = generate_synthetic(tmp_path / "nested", "brats", 1, shape=shape)
    assert json.loads((nested / MARKER_FILE).read_text()) == {
        "layout": "brats",
        "n_subjects": 1,
        "seed": 0,
        "shape": list(shape),
    }
    split = generate_synthetic(tmp_path / "split", "brats", 1, shape=shape, tumour="split")
    assert json.loads((split / MARKER_FILE).read_text())["tumour"] == "split"
    with pytest.raises(DataError, match="other parameters"):
        generate_synthetic(nested, "brats", 1, shape=shape, tumour="split")


@pytest.mark.parametrize(
    "layout, tumour, message",
    [("brats", "cystic", "unknown tumour 'cystic'"), ("prostate", "split", "brats phantom; the prostate layout")],
)
def test_bad_tumour(tmp_path, layout, tumour, message):
    with pytest.raises(DataError, match=message):
        make_subject(layout, 0, 0, tumour=tumour)
    with pytest.raises(DataError, match=message):
        generate_synthetic(tmp_path / "x", layout, 1, tumour=tumour)
    assert not (tmp_path / "x").exists()


def test_command_line_tumour(tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["--out", str(out), "--subjects", "1", "--shape", "32", "32", "12", "--tumour", "split", "--no-progress"]
    assert main(argv) == 0
    assert json.loads((out / MARKER_FILE).read_text())["tumour"] == "split"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "q"), "--tumour", "cystic"])
    assert "invalid choice" in capsys.readouterr().err
