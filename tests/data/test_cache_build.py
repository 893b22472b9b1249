"""Building the slice cache: contents against the arrays written into each raw layout (raw intensities,
and the percentile normalisation against an independent computation), geometry carried from the
inputs, --size crop/pad/resize and its inverse, the manifest, subjects without a mask, bad input,
atomicity and resuming, worker processes, splits."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mmcam.data import (
    BuildOptions,
    DataError,
    DataWarning,
    build_cache,
    discover,
    kfold_patients,
    read_cache_index,
    read_manifest,
    read_split,
    read_subject_meta,
    save_nifti,
    split_patients,
    write_splits,
)
from mmcam.data.cache import read_subject_arrays, subject_dir

import data_fixtures as fx

WT = {
    "brats2018": {1, 2, 4},
    "brats2020": {1, 2, 4},
    "brats2021": {1, 2, 4},
    "brats2023": {1, 2, 3},
    "brats2024": {1, 2, 3},
    "msd_prostate": {1, 2},
}
RAW = BuildOptions(normalize=False)  # raw intensities: the cache can be compared value for value


def build(tmp_path, layout, options=RAW, **kwargs):
    raw = tmp_path / "raw"
    written = fx.LAYOUTS[layout](raw)
    dataset = discover(raw, "brats2024" if layout == "brats2024" else "auto")
    cache = tmp_path / "cache"
    build_cache(dataset, cache, options=options, **kwargs)
    return written, cache


def percentile_normalized(volume, low=0.5, high=99.5):
    """The documented normalisation, computed independently: clip to the foreground percentiles,
    scale the foreground to [0, 1], background 0."""
    volume = np.asarray(volume, dtype=np.float64)
    inside = volume[volume != 0]
    lo, hi = np.percentile(inside, low), np.percentile(inside, high)
    return np.where(volume != 0, np.clip((volume - lo) / (hi - lo), 0, 1), 0.0)


#: The default cache stores normalised intensities as uint16: half a step of 1/65535, plus float32 rounding.
UINT16_ATOL = 0.5 / 65535 + 1e-6


def cached(cache, subject_id):
    """``(image, labels)`` of a cached subject, decoded to its full stored planes (float32, uint8)."""
    return read_subject_arrays(cache, read_subject_meta(cache, subject_id))


def assert_subject_matches(cache, subject_id, raw, region_values, *, dropped=(0,)):
    meta = read_subject_meta(cache, subject_id)
    image = cached(cache, subject_id)[0]
    labels = cached(cache, subject_id)[1]
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
        restacked = meta.restack(cached(cache, subject_id)[1])
        np.testing.assert_array_equal(restacked, raw.seg)  # dropped slice 0 had an empty mask


def test_brats2024_resection_cavity_slice_is_not_a_tumour_slice(tmp_path):
    written, cache = build(tmp_path, "brats2024")
    meta = read_subject_meta(cache, "BraTS-GLI-00000-000")
    labels = cached(cache, "BraTS-GLI-00000-000")[1]
    assert (labels[4] == 4).any() and set(np.unique(labels[4])) == {0, 4}  # k = 5: cavity only
    assert {r: v.tolist() for r, v in meta.slice_labels.items()} == {
        "WT": [0, 1, 1, 1, 0],
        "TC": [0, 0, 1, 1, 0],
        "ET": [0, 0, 1, 0, 0],
    }


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("brats2018", {"WT": [0, 1, 1, 1, 0], "TC": [0, 0, 1, 1, 0], "ET": [0, 0, 1, 0, 0]}),
        ("brats2023", {"WT": [0, 1, 1, 1, 0], "TC": [0, 0, 1, 1, 0], "ET": [0, 0, 1, 0, 0]}),
        ("msd_prostate", {"WG": [0, 1, 1, 1, 0], "PZ": [0, 1, 1, 1, 0], "TZ": [0, 0, 1, 1, 0]}),
    ],
)
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
    written, cache = build(tmp_path, "brats2021", options=BuildOptions(drop_empty_slices=False, normalize=False))
    raw = written["BraTS2021_00000"]
    meta = read_subject_meta(cache, "BraTS2021_00000")
    assert meta.slice_index.tolist() == list(range(raw.seg.shape[2]))
    image = cached(cache, "BraTS2021_00000")[0]
    assert not image[0].any()


def test_float16_cache(tmp_path):
    written, cache = build(tmp_path, "msd_prostate", options=BuildOptions(image_dtype="float16", normalize=False))
    stored = np.load(subject_dir(cache, "prostate_04") / "image.npy")
    assert stored.dtype == np.float16 and read_cache_index(cache).image_dtype == "float16"
    image = cached(cache, "prostate_04")[0]
    np.testing.assert_allclose(
        image[:, 1].astype(np.float32), written["prostate_04"].images[1][:, :, 1:].transpose(2, 0, 1), rtol=1e-3
    )


def test_float16_overflow_is_refused(tmp_path):
    raw = tmp_path / "raw"
    fx.make_msd_prostate(raw)
    path = raw / "imagesTr" / "prostate_04.nii.gz"
    image = nib.load(path)
    fx.write_nifti(path, image.get_fdata() * 1e3, image.affine)
    with pytest.raises(DataError, match=r"prostate_04\.nii\.gz .*overflow float16"):
        build_cache(discover(raw), tmp_path / "cache", options=BuildOptions(image_dtype="float16", normalize=False))
    build_cache(discover(raw), tmp_path / "cache", options=BuildOptions(image_dtype="float16"))


def test_real_oblique_4d_file_geometry_is_carried_to_outputs(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_msd_from_example4d(raw)
    build_cache(discover(raw), tmp_path / "cache", options=RAW)
    source = nib.load(fx.EXAMPLE_4D)
    meta = read_subject_meta(tmp_path / "cache", "prostate_01")
    np.testing.assert_allclose(meta.affine, source.affine, atol=1e-5)
    assert meta.zooms == pytest.approx(source.header.get_zooms()[:3])
    image = cached(tmp_path / "cache", "prostate_01")[0]
    for row, k in enumerate(meta.slice_index):
        for c in range(2):
            np.testing.assert_array_equal(image[row, c], written["prostate_01"].images[c][:, :, k])
    # a predicted mask restacked and saved with the carried header lands on the input's grid
    labels = cached(tmp_path / "cache", "prostate_01")[1]
    out = nib.load(save_nifti(tmp_path / "pred.nii.gz", meta.restack(labels > 0), meta.affine, meta.header()))
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), written["prostate_01"].seg > 0)


def test_workers_give_the_same_cache(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2021(raw)
    dataset = discover(raw)
    build_cache(dataset, tmp_path / "one", workers=1)
    build_cache(dataset, tmp_path / "two", workers=2)
    assert (tmp_path / "one" / "manifest.json").read_bytes() == (tmp_path / "two" / "manifest.json").read_bytes()
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
        build_cache(discover(raw), cache, options=RAW, workers=workers)
    assert not (cache / "mmcam_cache.json").exists()
    assert leftovers(cache) == []
    with pytest.raises(DataError, match="not a complete mmcam cache"):
        read_cache_index(cache)

    fx.write_nifti(bad, written["BraTS2021_00002"].seg, written["BraTS2021_00002"].affine)
    done = {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("subjects/*/image.npy")}
    build_cache(discover(raw), cache, options=RAW, workers=workers)
    assert read_cache_index(cache).subjects == tuple(written)
    for subject_id, mtime in done.items():  # finished subjects were kept, not rewritten
        assert (subject_dir(cache, subject_id) / "image.npy").stat().st_mtime_ns == mtime
    assert_subject_matches(cache, "BraTS2021_00002", written["BraTS2021_00002"], {1, 2, 4})


def test_changed_source_is_rebuilt_on_resume(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2021(raw)
    cache = tmp_path / "cache"
    build_cache(discover(raw), cache, options=RAW)
    (cache / "mmcam_cache.json").unlink()  # as if interrupted before the index
    raw_subject = written["BraTS2021_00003"]
    raw_subject.images[2] = np.where(raw_subject.images[2] > 0, raw_subject.images[2] + 5, 0)
    fx.write_nifti(raw / "BraTS2021_00003" / "BraTS2021_00003_t2.nii.gz", raw_subject.images[2], raw_subject.affine)
    build_cache(discover(raw), cache, options=RAW)
    assert_subject_matches(cache, "BraTS2021_00003", raw_subject, {1, 2, 4})


def test_shape_mismatch_names_both_files(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2023(raw)
    t2f = raw / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t2f.nii.gz"
    fx.write_nifti(t2f, np.zeros((9, 7, 5)), written["BraTS-GLI-00002-000"].affine)
    with pytest.raises(
        DataError,
        match=rf"{t2f}: shape \(9, 7, 5\) differs from .*-seg\.nii\.gz "
        r"\(9, 7, 6\)",
    ):
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
    build_cache(discover(tmp_path / "raw"), cache, options=RAW)  # same files and options: up to date
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
    with pytest.raises(DataError, match="clip percentiles"):
        BuildOptions(clip_percentiles=(99, 1))
    with pytest.raises(DataError, match="nonfinite"):
        BuildOptions(nonfinite="drop")
    with pytest.raises(DataError, match="size must be a positive int"):
        BuildOptions(size=0)
    with pytest.raises(DataError, match="fit must be one of"):
        BuildOptions(size=8, fit="stretch")


def test_splits_file_matches_the_split_functions(tmp_path):
    written, cache = build(tmp_path, "brats2021")
    ids = list(written)
    record = write_splits(cache, fractions=(0.32, 0.34, 0.34), seed=3)
    expected = split_patients(ids, (0.32, 0.34, 0.34), seed=3)
    assert json.loads((cache / "splits.json").read_text()) == record
    assert record["fractions"] == [0.32, 0.34, 0.34] and record["unlabeled"] == []
    for part in ("train", "val", "test"):
        assert read_split(cache, part) == getattr(expected, part)
    assert read_split(cache, "unlabeled") == ()
    with pytest.raises(DataError, match="fold 1 out of range"):
        read_split(cache, "train", fold=1)

    write_splits(cache, fractions=(0.66, 0.0, 0.34), seed=3, folds=2)
    folds = kfold_patients(ids, folds=2, test_fraction=0.34, seed=3)
    for f in range(2):
        assert read_split(cache, "val", fold=f) == folds[f].val
        assert read_split(cache, "train", fold=f) == folds[f].train
    with pytest.raises(DataError, match="unknown split part"):
        read_split(cache, "holdout")


# ------------------------------------------------------------------------ intensity normalisation
@pytest.mark.parametrize("layout", ["brats2018", "msd_prostate"])
def test_default_build_stores_percentile_normalized_intensities(tmp_path, layout):
    written, cache = build(tmp_path, layout, options=BuildOptions())
    for subject_id, raw in written.items():
        meta = read_subject_meta(cache, subject_id)
        image = cached(cache, subject_id)[0]
        for m, (name, volume) in enumerate(zip(read_cache_index(cache).modalities, raw.images)):
            expected = percentile_normalized(volume)[:, :, meta.slice_index].transpose(2, 0, 1)
            np.testing.assert_allclose(image[:, m], expected, atol=UINT16_ATOL)
            assert 0.0 <= image[:, m].min() and image[:, m].max() == 1.0
            inside = np.asarray(volume, dtype=np.float64)[volume != 0]
            assert meta.intensity[name]["lo"] == pytest.approx(np.percentile(inside, 0.5))
            assert meta.intensity[name]["foreground"] == inside.size


def test_nan_voxels_are_refused_or_zeroed_with_a_warning(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2021(raw)
    subject = written["BraTS2021_00002"]
    flair = subject.images[3].astype(np.float32)
    flair[4, 3, 2] = np.nan
    path = raw / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz"
    fx.write_nifti(path, flair, subject.affine)
    with pytest.raises(DataError, match=rf"{path}: 1 non-finite intensity values.*nonfinite"):
        build_cache(discover(raw), tmp_path / "refused")
    with pytest.warns(DataWarning, match=rf"{path}: 1 non-finite intensity values .* set to 0"):
        build_cache(discover(raw), tmp_path / "cache", options=BuildOptions(nonfinite="zero"))
    meta = read_subject_meta(tmp_path / "cache", "BraTS2021_00002")
    image = cached(tmp_path / "cache", "BraTS2021_00002")[0]
    assert np.isfinite(image).all() and meta.intensity["flair"]["nonfinite"] == 1
    row = meta.slice_index.tolist().index(2)
    assert image[row, 3, 4, 3] == 0.0  # background
    expected = percentile_normalized(np.nan_to_num(flair, nan=0.0))  # NaN out of the percentiles
    np.testing.assert_allclose(image[:, 3], expected[:, :, meta.slice_index].transpose(2, 0, 1), atol=UINT16_ATOL)


# ------------------------------------------------------------------ --size: crop / pad / resize
def test_size_crop_pads_and_crops_odd_planes_and_uncrop_inverts_it(tmp_path):
    # planes (9, 7); size 8: x is cropped by 1 (window centred on the foreground), y padded by 1
    written, cache = build(tmp_path, "brats2021", options=BuildOptions(normalize=False, size=8))
    raw = written["BraTS2021_00000"]
    meta = read_subject_meta(cache, "BraTS2021_00000")
    geometry = meta.geometry
    assert geometry.size == (8, 8) and geometry.scale == (1.0, 1.0)
    assert geometry.box == (0, 0, 8, 8) and geometry.padding == ((0, 0), (0, 1))
    image = cached(cache, "BraTS2021_00000")[0]
    labels = cached(cache, "BraTS2021_00000")[1]
    assert image.shape == (5, 4, 8, 8) and labels.shape == (5, 8, 8)
    k = meta.slice_index
    np.testing.assert_array_equal(image[:, 0, :8, :7], raw.images[0][:8, :, k].transpose(2, 0, 1))
    assert not image[:, :, :, 7].any()  # padding
    restacked = meta.restack(labels)
    np.testing.assert_array_equal(restacked, raw.seg)  # the cropped row 8 held no mask voxel
    back = meta.uncrop(image[:, 0])
    np.testing.assert_array_equal(back[:, :8], raw.images[0][:8, :, k].transpose(2, 0, 1))
    assert not back[:, 8].any()  # cropped away: fill


def test_size_crop_refuses_to_cut_the_mask(tmp_path):
    fx.make_brats2021(tmp_path / "raw")
    with pytest.raises(
        DataError,
        match=r"_seg\.nii\.gz: --size 3 \(fit crop\) would cut off "
        r"\d+ voxels of the label mask",
    ):
        build_cache(discover(tmp_path / "raw"), tmp_path / "cache", options=BuildOptions(size=3))


def test_size_scale_resizes_and_nearest_masks_come_back_exactly(tmp_path):
    # (9, 7) planes padded to a 9 x 9 square, resized to 18 x 18: an exact factor of 2
    written, cache = build(tmp_path, "msd_prostate", options=BuildOptions(normalize=False, size=18, fit="scale"))
    raw = written["prostate_04"]
    meta = read_subject_meta(cache, "prostate_04")
    assert meta.geometry.box == (0, -1, 9, 8) and meta.geometry.scale == (0.5, 0.5)
    labels = cached(cache, "prostate_04")[1]
    assert labels.shape == (5, 18, 18)
    # nearest-exact at factor 2: stored pixel (i, j) is volume voxel (i // 2, j // 2 - 1)
    expected = np.zeros((5, 18, 18), np.uint8)
    for i in range(18):
        for j in range(18):
            if 0 <= j // 2 - 1 < 7:
                expected[:, i, j] = raw.seg[i // 2, j // 2 - 1, meta.slice_index]
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(meta.restack(labels), raw.seg)
    np.testing.assert_array_equal(meta.restack(labels > 0), raw.seg > 0)  # bool stays nearest
    image = cached(cache, "prostate_04")[0]
    assert image.shape == (5, 2, 18, 18) and image.dtype == np.float32


def test_stored_affine_maps_stored_voxels_to_the_same_world_points(tmp_path):
    raw = tmp_path / "raw"
    fx.make_msd_from_example4d(raw)  # oblique affine, planes (128, 96)
    build_cache(discover(raw), tmp_path / "cache", options=BuildOptions(size=100, fit="crop"))
    meta = read_subject_meta(tmp_path / "cache", "prostate_01")
    x0, y0 = meta.geometry.box[:2]
    for i, j, k in [(0, 0, 0), (99, 99, 23), (10, 3, 7)]:
        stored = meta.stored_affine @ [i, j, k, 1]
        np.testing.assert_allclose(stored, meta.affine @ [x0 + i, y0 + j, k, 1], atol=1e-9)


# ------------------------------------------------------------------------------------- manifest
def test_manifest_lists_every_slice_and_round_trips_the_real_affines(tmp_path):
    raw = tmp_path / "raw"
    fx.make_msd_from_example4d(raw)
    fx.make_brats2020_from_anatomical(tmp_path / "brats")
    build_cache(discover(raw), tmp_path / "msd")
    build_cache(discover(tmp_path / "brats"), tmp_path / "cache", options=BuildOptions(size=32))
    for cache, source in ((tmp_path / "msd", fx.EXAMPLE_4D), (tmp_path / "cache", fx.ANATOMICAL)):
        manifest = read_manifest(cache)
        (record,) = manifest["subjects"]
        reference = nib.load(source)
        np.testing.assert_array_equal(np.array(record["affine"]), reference.affine)  # bit for bit
        assert record["spacing"] == list(reference.header.get_zooms()[:3])
        assert record["shape"] == list(reference.shape[:3])
        meta = read_subject_meta(cache, record["subject"])
        assert record["slices"] == meta.slice_index.tolist()
        assert record["labels"] == {r: v.tolist() for r, v in meta.slice_labels.items()}
        assert record["crop"] == meta.geometry.to_json()
        np.testing.assert_array_equal(np.array(record["stored_affine"]), meta.stored_affine)
    assert manifest["default_region"] == "WT" and manifest["dataset"] == "brats2020"
    assert record["crop"]["box"] == [0, 4, 32, 36]  # (33, 41) planes, all foreground: centred


def test_real_big_endian_anatomical_file_goes_through_prepare(tmp_path):
    written = fx.make_brats2020_from_anatomical(tmp_path / "raw")
    assert nib.load(fx.ANATOMICAL).header.endianness == ">"
    dataset = discover(tmp_path / "raw")
    assert dataset.name == "brats2020"
    build_cache(dataset, tmp_path / "cache", options=BuildOptions(size=32))
    ((subject_id, raw),) = written.items()
    meta = read_subject_meta(tmp_path / "cache", subject_id)
    image = cached(tmp_path / "cache", subject_id)[0]
    labels = cached(tmp_path / "cache", subject_id)[1]
    assert image.dtype.isnative and image.shape == (25, 4, 32, 32)
    normalized = percentile_normalized(raw.images[0])  # no zero voxel: every voxel is foreground
    stored = meta.geometry.apply(normalized.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_allclose(image[:, 2], stored, atol=UINT16_ATOL)
    np.testing.assert_array_equal(meta.restack(labels), raw.seg)
    assert meta.slice_labels["ET"].tolist() == [int(k == 11) for k in range(25)]


# ------------------------------------------------------------------------ subjects without a mask
def test_subjects_without_a_mask_are_cached_for_inference_only(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2021_validation(raw)
    dataset = discover(raw)
    assert dataset.unlabeled == tuple(written)
    index = build_cache(dataset, tmp_path / "cache", options=RAW)
    assert index.unlabeled == tuple(written)
    for subject_id, subject in written.items():
        directory = subject_dir(tmp_path / "cache", subject_id)
        assert not (directory / "labels.npy").exists()
        meta = read_subject_meta(tmp_path / "cache", subject_id)
        assert not meta.labeled and meta.slice_labels == {}
        np.testing.assert_array_equal(meta.affine, subject.affine)
        image = cached(tmp_path / "cache", subject_id)[0]
        np.testing.assert_array_equal(image[:, 1], subject.images[1][:, :, 1:].transpose(2, 0, 1))
    record = write_splits(tmp_path / "cache", seed=0)
    assert record["test"] == [] and record["folds"] == [{"train": [], "val": []}]
    assert read_split(tmp_path / "cache", "unlabeled") == tuple(written)
    assert read_manifest(tmp_path / "cache")["subjects"][0]["labels"] is None


def test_a_lost_mask_puts_only_that_subject_in_the_unlabeled_part(tmp_path):
    raw = tmp_path / "raw"
    written = fx.make_brats2021(raw)
    (raw / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz").unlink()
    build_cache(discover(raw), tmp_path / "cache")
    record = write_splits(tmp_path / "cache", fractions=(0.5, 0.0, 0.5), seed=1)
    assert record["unlabeled"] == ["BraTS2021_00002"]
    labelled = sorted(record["test"] + record["folds"][0]["train"])
    assert labelled == sorted(set(written) - {"BraTS2021_00002"})
