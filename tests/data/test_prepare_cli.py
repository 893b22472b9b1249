"""``python -m mmcam.prepare --data RAW --out CACHE``: full runs on every layout family, --size,
--splits, k-fold, unlabelled subjects, and bad input reported without traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mmcam.data import SliceDataset, read_cache_index, read_manifest, read_split, read_subject_meta
from mmcam.prepare import main

import data_fixtures as fx


def run(tmp_path, *extra, raw="raw", out="cache"):
    return main(
        ["--data", str(tmp_path / raw), "--out", str(tmp_path / out), "--workers", "1", "--no-progress", *extra]
    )


def test_module_entry_point_with_workers(tmp_path):
    fx.make_brats2021(tmp_path / "raw")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmcam.prepare",
            "--data",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "cache"),
            "--dataset",
            "brats",
            "--size",
            "8",
            "--splits",
            "0.34,0.33,0.33",
            "--seed",
            "1",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )  # not the repository root: `-m` would import the source tree, not the installed package
    assert result.returncode == 0, result.stderr
    assert "brats2021, 3 subjects, 15 slices (9 containing WT), modalities t1, t1ce, t2, flair, 8x8" in result.stdout
    assert "prepare brats2021" in result.stderr  # the progress bar
    index = read_cache_index(tmp_path / "cache")
    assert index.dataset == "brats2021" and index.size == 8
    splits = json.loads((tmp_path / "cache" / "splits.json").read_text())
    assert splits["fractions"] == [0.34, 0.33, 0.33] and splits["seed"] == 1
    assert [len(read_split(tmp_path / "cache", p)) for p in ("train", "val", "test")] == [1, 1, 1]
    assert SliceDataset(tmp_path / "cache", "train")[0]["image"].shape == (4, 8, 8)


@pytest.mark.parametrize(
    "layout, dataset, expected",
    [
        ("brats2018", "brats", "brats2018"),
        ("brats2020", "auto", "brats2020"),
        ("msd_prostate", "prostate", "msd_prostate"),
    ],
)
def test_dataset_families(tmp_path, capsys, layout, dataset, expected):
    fx.LAYOUTS[layout](tmp_path / "raw")
    assert run(tmp_path, "--dataset", dataset, "--splits", "0.5,0,0.5") == 0
    assert read_cache_index(tmp_path / "cache").dataset == expected
    assert f": {expected}, " in capsys.readouterr().out


def test_folds_dtype_and_dataset_options(tmp_path, capsys):
    written = fx.make_brats2023(tmp_path / "raw", with_resection_cavity=True)
    assert (
        run(
            tmp_path,
            "--dataset",
            "brats2024",
            "--dtype",
            "float16",
            "--keep-empty-slices",
            "--folds",
            "2",
            "--splits",
            "1,0,0",
            "--seed",
            "4",
        )
        == 0
    )
    splits = json.loads((tmp_path / "cache" / "splits.json").read_text())
    assert splits["seed"] == 4 and len(splits["folds"]) == 2 and splits["test"] == []
    assert {read_split(tmp_path / "cache", "val", f)[0] for f in (0, 1)} == set(written)
    dataset = SliceDataset(tmp_path / "cache")
    assert len(dataset) == 12 and dataset.index.image_dtype == "float16"
    assert dataset.spec.name == "brats2024"
    assert "12 slices (6 containing WT)" in capsys.readouterr().out


def test_brats_2024_masks_need_the_named_release(tmp_path, capsys):
    fx.make_brats2023(tmp_path / "raw", with_resection_cavity=True)
    assert run(tmp_path, "--dataset", "brats", "--splits", "1,0,0") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "-seg.nii.gz: unexpected label values [4]" in err and "brats2024" in err
    assert not (tmp_path / "cache" / "mmcam_cache.json").exists()


def test_missing_source(tmp_path, capsys):
    assert run(tmp_path, raw="nothing") == 2
    assert "nothing: not a directory" in capsys.readouterr().err


def test_data_and_out_are_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path), str(tmp_path / "cache")])
    assert info.value.code == 2
    assert "--data" in capsys.readouterr().err


@pytest.mark.parametrize(
    "splits, message",
    [("0.7,0.2,0.2", "must sum to 1"), ("0.7,0.3", "three comma-separated numbers"), ("1.5,-0.5,0", "non-negative")],
)
def test_bad_splits_are_reported_before_any_work(tmp_path, capsys, splits, message):
    fx.make_brats2021(tmp_path / "raw")
    assert run(tmp_path, "--splits", splits) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_split_that_cannot_be_filled_is_checked_before_any_work(tmp_path, capsys):
    fx.make_brats2023(tmp_path / "raw")  # 2 subjects cannot fill train, val and test
    assert run(tmp_path) == 2
    assert "2 patients leave none for training" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_warns_about_subjects_without_the_target(tmp_path, capsys):
    written = fx.make_msd_prostate(tmp_path / "raw")
    empty = np.zeros_like(written["prostate_04"].seg)
    fx.write_nifti(tmp_path / "raw" / "labelsTr" / "prostate_04.nii.gz", empty, written["prostate_04"].affine)
    assert run(tmp_path, "--splits", "0.5,0.5,0") == 0
    assert "warning: 1 subject(s) without any WG voxel: ['prostate_04']" in capsys.readouterr().out


def test_validation_set_without_masks_is_prepared_for_inference(tmp_path, capsys):
    written = fx.make_brats2021_validation(tmp_path / "raw")
    assert run(tmp_path) == 0  # the default 0.7,0.1,0.2 split has no labelled patient to split
    out = capsys.readouterr().out
    assert "warning: 3 subject(s) without a label mask, for inference only" in out
    assert read_split(tmp_path / "cache", "unlabeled") == tuple(written)
    dataset = SliceDataset(tmp_path / "cache", "unlabeled")
    assert len(dataset) == 15 and "mask" not in dataset[0]


def test_nonfinite_option(tmp_path, capsys):
    written = fx.make_brats2021(tmp_path / "raw")
    t1 = written["BraTS2021_00000"].images[0].astype(np.float32)
    t1[1, 1, 1] = np.nan
    fx.write_nifti(
        tmp_path / "raw" / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz", t1, written["BraTS2021_00000"].affine
    )
    assert run(tmp_path, "--splits", "0.34,0.33,0.33") == 2
    assert "BraTS2021_00000_t1.nii.gz: 1 non-finite" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="BraTS2021_00000_t1.nii.gz: 1 non-finite"):
        assert run(tmp_path, "--splits", "0.34,0.33,0.33", "--nonfinite", "zero") == 0
    assert "non-finite voxels set to 0 in 1 volume(s): ['BraTS2021_00000 (t1: 1)']" in capsys.readouterr().out


def test_rerun_on_a_complete_cache_only_redraws_the_splits(tmp_path):
    fx.make_brats2021(tmp_path / "raw")
    args = ["--splits", "0.34,0.33,0.33"]
    assert run(tmp_path, *args) == 0
    image = tmp_path / "cache" / "subjects" / "BraTS2021_00000" / "image.npy"
    mtime = image.stat().st_mtime_ns
    assert run(tmp_path, "--folds", "2", "--splits", "0.66,0,0.34") == 0
    assert image.stat().st_mtime_ns == mtime
    assert len(json.loads((tmp_path / "cache" / "splits.json").read_text())["folds"]) == 2
    assert run(tmp_path, *args, "--size", "8") == 2  # other options: refused without --overwrite
    assert run(tmp_path, *args, "--size", "8", "--overwrite") == 0
    assert read_subject_meta(tmp_path / "cache", "BraTS2021_00000").geometry.size == (8, 8)
    assert read_manifest(tmp_path / "cache")["subjects"][0]["crop"]["size"] == [8, 8]
