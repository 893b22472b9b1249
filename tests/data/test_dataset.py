"""SliceDataset items against the arrays written into the raw layouts; split and subject selection,
modality aliases, subjects without a mask, crop/pad, pickling and DataLoader workers, restacking."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmcam.data import (
    BuildOptions,
    DataError,
    SliceDataset,
    build_cache,
    center_crop_or_pad,
    discover,
    read_split,
    write_splits,
)

import data_fixtures as fx

BRATS_TC = {1, 4}
RAW = BuildOptions(normalize=False)  # raw intensities: items can be compared value for value


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    written = fx.make_brats2018(root / "raw")
    build_cache(discover(root / "raw"), root / "cache", options=RAW)
    return written, root / "cache"


@pytest.fixture(scope="module")
def prostate_two_sizes(tmp_path_factory):
    """MSD layout with in-plane sizes (9, 7) and (6, 10)."""
    root = tmp_path_factory.mktemp("prostate") / "raw"
    written = {}
    for n, (subject_id, shape) in enumerate((("prostate_00", (9, 7, 6)), ("prostate_01", (6, 10, 6)))):
        images, seg = fx.subject_arrays(n, 2, (1, 2), shape=shape)
        fx.write_nifti(root / "imagesTr" / f"{subject_id}.nii.gz", np.stack(images, -1), fx.affine_for(n))
        fx.write_nifti(root / "labelsTr" / f"{subject_id}.nii.gz", seg, fx.affine_for(n))
        written[subject_id] = fx.RawSubject(images, seg, fx.affine_for(n))
    fx.write_msd_json(root, list(written))
    cache = root.parent / "cache"
    build_cache(discover(root), cache, options=BuildOptions(image_dtype="float16", normalize=False))
    return written, cache


def expected_items(written, region_values, modalities=(0, 1, 2, 3), subjects=None):
    """(image, mask, label, subject, k) of every kept slice, from the raw arrays (k = 1..Z-1)."""
    items = []
    for subject_id, raw in written.items():
        if subjects is not None and subject_id not in subjects:
            continue
        for k in range(1, raw.seg.shape[2]):
            image = np.stack([raw.images[m][:, :, k] for m in modalities]).astype(np.float32)
            mask = np.isin(raw.seg[:, :, k], list(region_values))
            items.append((image, mask, int(mask.any()), subject_id, k))
    return items


def assert_items(dataset, expected):
    assert len(dataset) == len(expected)
    for i, (image, mask, label, subject_id, k) in enumerate(expected):
        item = dataset[i]
        assert list(item) == ["image", "mask", "label", "subject", "slice"]
        assert item["image"].dtype == torch.float32 and item["mask"].dtype == torch.uint8
        assert item["label"].dtype == torch.int64 and item["label"].shape == ()
        np.testing.assert_array_equal(item["image"].numpy(), image)
        np.testing.assert_array_equal(item["mask"].numpy(), mask)
        assert (int(item["label"]), item["subject"], item["slice"]) == (label, subject_id, k)
    assert dataset.labels.tolist() == [e[2] for e in expected]


def test_items_default_region_is_whole_tumour(brats):
    written, cache = brats
    dataset = SliceDataset(cache)
    assert dataset.region == "WT" and dataset.modalities == ("t1", "t1ce", "t2", "flair")
    assert_items(dataset, expected_items(written, {1, 2, 4}))


def test_region_modalities_and_subjects_selection(brats):
    written, cache = brats
    chosen = ["Brats18_CBICA_AAB_1", "Brats18_2013_0_1"]
    dataset = SliceDataset(cache, chosen, ["t2f", "T1"], region="tc")  # aliases accepted
    assert dataset.modalities == ("flair", "t1")
    assert dataset.subject_ids == ("Brats18_2013_0_1", "Brats18_CBICA_AAB_1")  # cache order
    assert_items(dataset, expected_items(written, BRATS_TC, modalities=(3, 0), subjects=chosen))


def test_negative_index_and_out_of_range(brats):
    dataset = SliceDataset(brats[1])
    assert dataset[-1]["slice"] == dataset[len(dataset) - 1]["slice"]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": ["nobody"]}, r"subjects not in the cache: \['nobody'\]"),
        ({"split": []}, "the list of subjects is empty"),
        (
            {"split": "Brats18_2013_0_1"},
            "unknown split 'Brats18_2013_0_1'; choose one of train, val, test, unlabeled or pass a list of subject ids",
        ),
        ({"modalities": "t1"}, "not the single string"),
        ({"region": "WG"}, "unknown region 'WG'"),
        ({"modalities": ["t1", "adc"]}, "modalities must be distinct names"),
        ({"modalities": ["t1", "t1"]}, "modalities must be distinct names"),
        ({"spatial_size": (0, 4)}, "spatial_size must be two positive ints"),
        ({"max_open_subjects": 0}, "max_open_subjects"),
    ],
)
def test_bad_arguments(brats, kwargs, message):
    with pytest.raises(DataError, match=message):
        SliceDataset(brats[1], **kwargs)


def test_not_a_cache(tmp_path):
    with pytest.raises(DataError, match="not a complete mmcam cache.*python -m mmcam.prepare"):
        SliceDataset(tmp_path)


def test_float16_cache_gives_float32_and_spatial_size_pads_and_crops(prostate_two_sizes):
    written, cache = prostate_two_sizes
    dataset = SliceDataset(cache, spatial_size=(8, 10))
    expected = expected_items(written, {1, 2}, modalities=(0, 1))
    assert len(dataset) == len(expected)
    for i, (image, mask, label, _subject_id, _k) in enumerate(expected):
        item = dataset[i]
        assert item["image"].dtype == torch.float32 and item["image"].shape == (2, 8, 10)
        reference = center_crop_or_pad(image.astype(np.float16).astype(np.float32), (8, 10))
        np.testing.assert_array_equal(item["image"].numpy(), reference)
        np.testing.assert_array_equal(item["mask"].numpy(), center_crop_or_pad(mask, (8, 10)))
        assert item["mask"].dtype == torch.uint8
        assert int(item["label"]) == label and item["mask"].numpy().any() == bool(label)


def test_batches_of_mixed_sizes_collate_with_spatial_size(prostate_two_sizes):
    dataset = SliceDataset(prostate_two_sizes[1], spatial_size=(8, 10))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))
    assert batch["image"].shape == (len(dataset), 2, 8, 10)
    assert batch["subject"][0] == "prostate_00" and batch["subject"][-1] == "prostate_01"


def test_crop_that_cuts_the_mask_is_refused(prostate_two_sizes):
    dataset = SliceDataset(prostate_two_sizes[1], spatial_size=(3, 3))
    positive = int(np.flatnonzero(dataset.labels)[0])
    with pytest.raises(DataError, match=r"spatial_size \(3, 3\) cuts off part of the WG mask"):
        dataset[positive]


def test_center_crop_or_pad_hand_computed():
    a = np.arange(1, 7).reshape(2, 3)  # [[1 2 3], [4 5 6]]
    np.testing.assert_array_equal(center_crop_or_pad(a, (4, 1)), [[0], [2], [5], [0]])
    np.testing.assert_array_equal(center_crop_or_pad(a, (1, 5)), [[0, 1, 2, 3, 0]])
    np.testing.assert_array_equal(center_crop_or_pad(a, (3, 2)), [[1, 2], [4, 5], [0, 0]])


@given(h=st.integers(1, 9), w=st.integers(1, 9), th=st.integers(1, 9), tw=st.integers(1, 9))
def test_center_crop_or_pad_is_undone_by_the_original_size(h, w, th, tw):
    a = np.arange(1, h * w + 1).reshape(h, w)
    back = center_crop_or_pad(center_crop_or_pad(a, (th, tw)), (h, w))
    kept = back != 0
    np.testing.assert_array_equal(back[kept], a[kept])  # every surviving value at its place
    assert kept.sum() == min(h, th) * min(w, tw)


def test_pickled_dataset_opens_its_own_maps_and_gives_the_same_items(brats):
    dataset = SliceDataset(brats[1])
    first = dataset[3]
    assert dataset._open  # maps opened here...
    clone = pickle.loads(pickle.dumps(dataset))
    assert not clone._open  # ...are not carried
    item = clone[3]
    assert torch.equal(item["image"], first["image"]) and torch.equal(item["mask"], first["mask"])
    assert len(pickle.dumps(dataset)) < 20_000


def test_open_subjects_are_bounded(brats):
    written, cache = brats
    dataset = SliceDataset(cache, max_open_subjects=2)
    assert_items(dataset, expected_items(written, {1, 2, 4}))  # visits 3 subjects
    assert len(dataset._open) == 2


def test_dataloader_workers_give_the_same_batches(brats):
    dataset = SliceDataset(brats[1])
    plain = list(torch.utils.data.DataLoader(dataset, batch_size=4))
    spawned = list(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="spawn"))
    assert len(plain) == len(spawned)
    for a, b in zip(plain, spawned):
        for key in ("image", "mask", "label"):
            assert torch.equal(a[key], b[key])
        assert a["subject"] == b["subject"] and torch.equal(a["slice"], b["slice"])


def test_restack_of_item_masks_gives_the_region_volume(brats):
    written, cache = brats
    dataset = SliceDataset(cache, region="ET")
    items = [dataset[i] for i in range(len(dataset)) if dataset[i]["subject"] == "Brats18_2013_0_1"]
    meta = dataset.subject_meta("Brats18_2013_0_1")
    volume = meta.restack(np.stack([it["mask"].numpy() for it in items]), [it["slice"] for it in items])
    assert volume.dtype == np.uint8
    np.testing.assert_array_equal(volume, written["Brats18_2013_0_1"].seg == 4)


def test_restack_undoes_spatial_size(prostate_two_sizes):
    written, cache = prostate_two_sizes
    dataset = SliceDataset(cache, ["prostate_01"], spatial_size=(8, 12))
    masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
    volume = dataset.subject_meta("prostate_01").restack(masks)
    np.testing.assert_array_equal(volume, written["prostate_01"].seg > 0)


def test_restack_checks_its_input(brats):
    meta = SliceDataset(brats[1]).subject_meta("Brats18_2013_0_1")
    with pytest.raises(DataError, match="restack needs"):
        meta.restack(np.zeros((2, 9, 7)))
    with pytest.raises(DataError, match="slice index out of range"):
        meta.restack(np.zeros((1, 9, 7)), [6])


def test_split_names_select_the_split_subjects(brats):
    written, cache = brats
    write_splits(cache, fractions=(0.32, 0.34, 0.34), seed=0)
    parts = {p: SliceDataset(cache, p) for p in ("train", "val", "test")}
    for part, dataset in parts.items():
        assert dataset.subject_ids == read_split(cache, part)
        assert len(dataset.subject_ids) == 1
    assert sorted(s for d in parts.values() for s in d.subject_ids) == sorted(written)
    assert sum(len(d) for d in parts.values()) == len(SliceDataset(cache))
    with pytest.raises(DataError, match="split 'unlabeled' \\(fold 0\\) is empty"):
        SliceDataset(cache, "unlabeled")


def test_fold_keyword_selects_the_cross_validation_fold(brats):
    written, cache = brats
    write_splits(cache, fractions=(1, 0, 0), seed=0, folds=3)
    vals = [SliceDataset(cache, "val", fold=f).subject_ids for f in range(3)]
    assert sorted(v for val in vals for v in val) == sorted(written)
    assert SliceDataset(cache, "train", fold=1).subject_ids == tuple(s for s in read_split(cache, "train", 1))
    with pytest.raises(DataError, match="fold 3 out of range"):
        SliceDataset(cache, "train", fold=3)


@pytest.fixture(scope="module")
def partly_unlabelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    written = fx.make_brats2021(root / "raw")
    (root / "raw" / "BraTS2021_00003" / "BraTS2021_00003_seg.nii.gz").unlink()
    build_cache(discover(root / "raw"), root / "cache", options=RAW)
    write_splits(root / "cache", fractions=(0.5, 0.5, 0.0), seed=0)
    return written, root / "cache"


def test_unlabelled_subjects_give_items_without_mask_and_label(partly_unlabelled):
    written, cache = partly_unlabelled
    dataset = SliceDataset(cache, "unlabeled", ["flair"])
    assert dataset.subject_ids == ("BraTS2021_00003",) and not dataset.has_masks
    assert dataset.labels is None and len(dataset) == 5
    item = dataset[0]
    assert list(item) == ["image", "subject", "slice"]
    np.testing.assert_array_equal(item["image"][0].numpy(), written["BraTS2021_00003"].images[3][:, :, 1])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert batch["image"].shape == (5, 1, 9, 7) and batch["slice"].tolist() == [1, 2, 3, 4, 5]
    labelled = SliceDataset(cache, "train")
    assert labelled.has_masks and "BraTS2021_00003" not in labelled.subject_ids


def test_mixing_labelled_and_unlabelled_subjects_is_refused(partly_unlabelled):
    with pytest.raises(
        DataError,
        match=r"mixes subjects with and without a label mask "
        r"\(\['BraTS2021_00003'\] have none\)",
    ):
        SliceDataset(partly_unlabelled[1])


def test_a_forked_copy_reopens_its_maps(brats):
    dataset = SliceDataset(brats[1])
    first = dataset[0]
    parent_maps = dict(dataset._open)
    dataset._pid = -1  # what a forked DataLoader worker sees: another process id
    again = dataset[0]
    assert dataset._pid == os.getpid() and all(dataset._open[s][0] is not parent_maps[s][0] for s in dataset._open)
    assert torch.equal(again["image"], first["image"])
