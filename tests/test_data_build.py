"""Building the slice cache: contents against the arrays written into each raw layout, geometry
carried from the inputs, bad input, atomicity and resuming, worker processes, splits."""

from __future__ import annotations

import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest

from mmcam.data import (BuildOptions, DataError, build_cache, discover, read_cache_index, read_split,
                        read_subject_meta, save_nifti, split_patients, kfold_patients, write_splits)
from mmcam.data.cache import subject_dir

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as fx  # noqa: E402

WT = {"brats2018": {1, 2, 4}, "brats2020": {1, 2, 4}, "brats2021": {1, 2, 4},
      "brats2023": {1, 2, 3}, "brats2024": {1, 2, 3}, "msd_prostate": {1, 2}}


def build(tmp_path, layout, **kwargs):
    raw = tmp_path / "raw"
    written = fx.LAYOUTS[layout](raw)
    dataset = discover(raw, "brats2024" if layout == "brats2024" else "auto")
    cache = tmp_path / "cache"
    build_cache(dataset, cache, **kwargs)
    return written, cache


def assert_subject_matches(cache, subject_id, raw, region_values, *, dropped=(0,)):
    meta = read_subject_meta(cache, subject_id)
    image = np.load(subject_dir(cache, subject_id) / "image.npy")
    labels = np.load(subject_dir(cache, subject_id) / "labels.npy")
    depth = raw.seg.shape[2]
    kept = [k for k in range(depth) if k not in dropped]
    assert meta.slice_index.tolist() == kept
    assert meta.shape == raw.seg.shape
    assert image.shape == (len(kept), len(raw.images)) + raw.seg.shape[:2]
    assert labels.dtype == np.uint8 and labels.shape == (len(kept),) + raw.seg.shape[:2]
    for row, k in enumerate(kept):
        for m, volume in enumerate(raw.images):
            np.testing.assert_array_equal(image[row, m], volume[:, :, k].astype(np.float32))
        np.testing.assert_array_equal(labels[row], raw.seg[:, :, k])
    expected = [int(np.isin(raw.seg[:, :, k], list(region_values)).any()) for k in kept]
    return meta, expected


@pytest.mark.parametrize("layout", sorted(fx.LAYOUTS))
def test_cache_holds_every_kept_slice_of_every_modality(tmp_path, layout):
    written, cache = build(tmp_path, layout)
    index = read_cache_index(cache)
    assert index.subjects == tuple(written)
    for subject_id, raw in written.items():
        meta, expected_wt = assert_subject_matches(cache, subject_id, raw, WT[layout])
        default = "WG" if layout == "msd_prostate" else "WT"
        assert meta.slice_labels[default].tolist() == expected_wt
        assert expected_wt == [0, 1, 1, 1, 0]
        np.testing.assert_allclose(meta.affine, raw.affine)
        restacked = meta.restack(np.load(subject_dir(cache, subject_id) / "labels.npy"))
        np.testing.assert_array_equal(restacked, raw.seg)  # dropped slice 0 had an empty mask


def test_brats2024_resection_cavity_slice_is_not_a_tumour_slice(tmp_path):
    written, cache = build(tmp_path, "brats2024")
    meta = read_subject_meta(cache, "BraTS-GLI-00000-000")
    labels = np.load(subject_dir(cache, "BraTS-GLI-00000-000") / "labels.npy")
    assert (labels[4] == 4).any() and set(np.unique(labels[4])) == {0, 4}  # k = 5: cavity only
    assert {r: v.tolist() for r, v in meta.slice_labels.items()} == {
        "WT": [0, 1, 1, 1, 0], "TC": [0, 0, 1, 1, 0], "ET": [0, 0, 1, 0, 0]}


@pytest.mark.parametrize("layout, expected", [
    ("brats2018", {"WT": [0, 1, 1, 1, 0], "TC": [0, 0, 1, 1, 0], "ET": [0, 0, 1, 0, 0]}),
    ("brats2023", {"WT": [0, 1, 1, 1, 0], "TC": [0, 0, 1, 1, 0], "ET": [0, 0, 1, 0, 0]}),
    ("msd_prostate", {"WG": [0, 1, 1, 1, 0], "PZ": [0, 1, 1, 1, 0], "TZ": [0, 0, 1, 1, 0]}),
])
def test_region_slice_labels_hand_computed(tmp_path, layout, expected):
    # kept slices k = 1..5; k = 2: outer layer (edema / PZ), k = 3: all layers, k = 4: outer two
    written, cache = build(tmp_path, layout)
    for subject_id in written:
        meta = read_subject_meta(cache, subject_id)
        assert {r: v.tolist() for r, v in meta.slice_labels.items()} == expected


def test_spacing_is_read_from_the_header(tmp_path):
    written, cache = build(tmp_path, "brats2018")
    assert read_subject_meta(cache, "Brats18_2013_0_1").zooms == (1.0, 1.0, 1.5)
    assert read_subject_meta(cache, "Brats18_CBICA_AAB_1").zooms == (1.0, 1.0, 1.75)


def test_keep_empty_slices(tmp_path):
    written, cache = build(tmp_path, "brats2021", options=BuildOptions(drop_empty_slices=False))
    raw = written["BraTS2021_00000"]
    meta = read_subject_meta(cache, "BraTS2021_00000")
    assert meta.slice_index.tolist() == list(range(raw.seg.shape[2]))
    image = np.load(subject_dir(cache, "BraTS2021_00000") / "image.npy")
    assert not image[0].any()


def test_float16_cache(tmp_path):
    written, cache = build(tmp_path, "msd_prostate", options=BuildOptions(image_dtype="float16"))
    image = np.load(subject_dir(cache, "prostate_04") / "image.npy")
    assert image.dtype == np.float16 and read_cache_index(cache).image_dtype == "float16"
    np.testing.assert_allclose(image[:, 1].astype(np.float32),
                               written["prostate_04"].images[1][:, :, 1:].transpose(2, 0, 1),
                               rtol=1e-3)


def test_float16_overflow_is_refused(tmp_path):
    raw = tmp_path / "raw"
    fx.make_msd_prostate(raw)
    path = raw / "imagesTr" / "prostate_04.nii.gz"
    image = nib.load(path)
    fx.write_nifti(path, image.get_fdata() * 1e3, image.affine)
    with pytest.raises(DataError, match=r"prostate_04\.nii\.gz .*overflow float16"):
        build_cache(discover(raw), tmp_path / "cache", options=BuildOptions(image_dtype="float16"))


def test_real_oblique_4d_file_geometry_is_carried_to_outputs(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_msd_from_example4d(raw)
    build_cache(discover(raw), tmp_path / "cache")
    source = nib.load(fx.EXAMPLE_4D)
    meta = read_subject_meta(tmp_path / "cache", "prostate_01")
    np.testing.assert_allclose(meta.affine, source.affine, atol=1e-5)
    assert meta.zooms == pytest.approx(source.header.get_zooms()[:3])
    image = np.load(subject_dir(tmp_path / "cache", "prostate_01") / "image.npy")
    for row, k in enumerate(meta.slice_index):
        for c in range(2):
            np.testing.assert_array_equal(image[row, c], written["prostate_01"].images[c][:, :, k])
    # a predicted mask restacked and saved with the carried header lands on the input's grid
    labels = np.load(subject_dir(tmp_path / "cache", "prostate_01") / "labels.npy")
    out = nib.load(save_nifti(tmp_path / "pred.nii.gz", meta.restack(labels > 0), meta.affine,
                              meta.header()))
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), written["prostate_01"].seg > 0)


def test_workers_give_the_same_cache(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2021(raw)
    dataset = discover(raw)
    build_cache(dataset, tmp_path / "one", workers=1)
    build_cache(dataset, tmp_path / "two", workers=2)
    for subject_id in written:
        for name in ("image.npy", "labels.npy", "meta.json"):
            a = (subject_dir(tmp_path / "one", subject_id) / name).read_bytes()
            b = (subject_dir(tmp_path / "two", subject_id) / name).read_bytes()
            assert a == b, (subject_id, name)


def leftovers(cache):
    return [p for p in cache.rglob("*") if p.name.startswith(".tmp-mmcam-")]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_labels_stop_the_build_naming_the_file_and_the_rerun_resumes(tmp_path, workers):
    raw = tmp_path / "raw"
    written = fx.make_brats2021(raw)
    bad = raw / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz"
    seg = written["BraTS2021_00002"].seg.copy()
    seg[0, 0, 3] = 3  # the 2023 enhancing label in a 2021 mask
    fx.write_nifti(bad, seg, written["BraTS2021_00002"].affine)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"{bad}: unexpected label values \[3\]"):
        build_cache(discover(raw), cache, workers=workers)
    assert not (cache / "mmcam_cache.json").exists()
    assert leftovers(cache) == []
    with pytest.raises(DataError, match="not a complete mmcam cache"):
        read_cache_index(cache)

    fx.write_nifti(bad, written["BraTS2021_00002"].seg, written["BraTS2021_00002"].affine)
    done = {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("subjects/*/image.npy")}
    build_cache(discover(raw), cache, workers=workers)
    assert read_cache_index(cache).subjects == tuple(written)
    for subject_id, mtime in done.items():  # finished subjects were kept, not rewritten
        assert (subject_dir(cache, subject_id) / "image.npy").stat().st_mtime_ns == mtime
    assert_subject_matches(cache, "BraTS2021_00002", written["BraTS2021_00002"], {1, 2, 4})


def test_changed_source_is_rebuilt_on_resume(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2021(raw)
    cache = tmp_path / "cache"
    build_cache(discover(raw), cache)
    (cache / "mmcam_cache.json").unlink()  # as if interrupted before the index
    raw_subject = written["BraTS2021_00003"]
    raw_subject.images[2] = np.where(raw_subject.images[2] > 0, raw_subject.images[2] + 5, 0)
    fx.write_nifti(raw / "BraTS2021_00003" / "BraTS2021_00003_t2.nii.gz", raw_subject.images[2],
                   raw_subject.affine)
    build_cache(discover(raw), cache)
    assert_subject_matches(cache, "BraTS2021_00003", raw_subject, {1, 2, 4})


def test_shape_mismatch_names_both_files(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2023(raw)
    t2f = raw / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t2f.nii.gz"
    fx.write_nifti(t2f, np.zeros((9, 7, 5)), written["BraTS-GLI-00002-000"].affine)
    with pytest.raises(DataError, match=rf"{t2f}: shape \(9, 7, 5\) differs from .*-seg\.nii\.gz "
                                        r"\(9, 7, 6\)"):
        build_cache(discover(raw), tmp_path / "cache")


def test_affine_mismatch_names_the_file_and_the_tolerance_option(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2023(raw)
    t1c = raw / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1c.nii.gz"
    shifted = written["BraTS-GLI-00000-000"].affine.copy()
    shifted[0, 3] += 0.5
    fx.write_nifti(t1c, written["BraTS-GLI-00000-000"].images[1], shifted)
    with pytest.raises(DataError, match=rf"{t1c}: affine differs .* 0\.5 mm.*affine_tolerance"):
        build_cache(discover(raw), tmp_path / "cache")
    build_cache(discover(raw), tmp_path / "cache", options=BuildOptions(affine_tolerance=1.0))


def test_corrupt_image_names_the_file(tmp_path):
    raw = tmp_path / "raw"
    fx.make_msd_prostate(raw)
    path = raw / "imagesTr" / "prostate_00.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{path}: cannot read"):
        build_cache(discover(raw), tmp_path / "cache")


def test_complete_cache_is_not_overwritten_silently(tmp_path):
    written, cache = build(tmp_path, "msd_prostate")
    build_cache(discover(tmp_path / "raw"), cache)  # same files and options: up to date
    with pytest.raises(DataError, match="already holds a complete cache of other .*overwrite"):
        build_cache(discover(tmp_path / "raw"), cache, options=BuildOptions(image_dtype="float16"))
    (cache / "subjects" / "stale").mkdir()
    build_cache(discover(tmp_path / "raw"), cache, overwrite=True)
    assert sorted(p.name for p in (cache / "subjects").iterdir()) == sorted(written)


def test_foreign_directory_is_refused(tmp_path):
    fx.make_msd_prostate(tmp_path / "raw")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not empty and not an mmcam cache"):
        build_cache(discover(tmp_path / "raw"), tmp_path / "cache")
    assert (tmp_path / "cache" / "thesis.tex").read_text() == "precious"


def test_bad_options():
    with pytest.raises(DataError, match="image_dtype"):
        BuildOptions(image_dtype="int8")
    with pytest.raises(DataError, match="affine_tolerance"):
        BuildOptions(affine_tolerance=-1)


def test_splits_file_matches_the_split_functions(tmp_path):
    written, cache = build(tmp_path, "brats2021")
    ids = list(written)
    record = write_splits(cache, seed=3, val_fraction=0.34, test_fraction=0.34)
    expected = split_patients(ids, val_fraction=0.34, test_fraction=0.34, seed=3)
    assert json.loads((cache / "splits.json").read_text()) == record
    for part in ("train", "val", "test"):
        assert read_split(cache, part) == getattr(expected, part)
    with pytest.raises(DataError, match="fold 1 out of range"):
        read_split(cache, "train", fold=1)

    write_splits(cache, seed=3, test_fraction=0.34, folds=2)
    folds = kfold_patients(ids, folds=2, test_fraction=0.34, seed=3)
    for f in range(2):
        assert read_split(cache, "val", fold=f) == folds[f].val
        assert read_split(cache, "train", fold=f) == folds[f].train
    with pytest.raises(DataError, match="unknown split part"):
        read_split(cache, "holdout")
