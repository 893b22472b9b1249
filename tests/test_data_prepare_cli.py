"""``python -m mmcam.prepare``: a full run, k-fold splits, and bad input reported without traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from mmcam.data import SliceDataset, read_cache_index, read_split
from mmcam.prepare import main

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as fx  # noqa: E402


def test_module_entry_point_with_workers(tmp_path):
    fx.make_brats2021(tmp_path / "raw")
    result = subprocess.run(
        [sys.executable, "-m", "mmcam.prepare", str(tmp_path / "raw"), str(tmp_path / "cache"),
         "--workers", "2", "--no-progress"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "brats2021, 3 subjects, 15 slices (9 containing WT), modalities t1, t1ce, t2, flair" \
        in result.stdout
    assert read_cache_index(tmp_path / "cache").dataset == "brats2021"
    assert (tmp_path / "cache" / "splits.json").is_file()


def test_folds_dtype_and_dataset_options(tmp_path, capsys):
    written = fx.make_brats2023(tmp_path / "raw", with_resection_cavity=True)
    assert main([str(tmp_path / "raw"), str(tmp_path / "cache"), "--dataset", "brats2024",
                 "--workers", "1", "--dtype", "float16", "--keep-empty-slices", "--folds", "2",
                 "--test-fraction", "0", "--seed", "4", "--no-progress"]) == 0
    splits = json.loads((tmp_path / "cache" / "splits.json").read_text())
    assert splits["seed"] == 4 and len(splits["folds"]) == 2 and splits["test"] == []
    assert {read_split(tmp_path / "cache", "val", f)[0] for f in (0, 1)} == set(written)
    dataset = SliceDataset(tmp_path / "cache")
    assert len(dataset) == 12 and dataset.index.image_dtype == "float16"
    assert dataset.spec.name == "brats2024"
    assert "12 slices (6 containing WT)" in capsys.readouterr().out


def test_bad_input_is_one_line_on_stderr_with_status_2(tmp_path, capsys):
    fx.make_brats2023(tmp_path / "raw", with_resection_cavity=True)
    status = main([str(tmp_path / "raw"), str(tmp_path / "cache"), "--workers", "1",
                   "--test-fraction", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert "-seg.nii.gz: unexpected label values [4]" in err and "brats2024" in err
    assert not (tmp_path / "cache" / "mmcam_cache.json").exists()


def test_missing_source(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), str(tmp_path / "cache")]) == 2
    assert "nothing: not a directory" in capsys.readouterr().err


def test_warns_about_subjects_without_the_target(tmp_path, capsys):
    written = fx.make_msd_prostate(tmp_path / "raw")
    empty = np.zeros_like(written["prostate_04"].seg)
    fx.write_nifti(tmp_path / "raw" / "labelsTr" / "prostate_04.nii.gz", empty,
                   written["prostate_04"].affine)
    assert main([str(tmp_path / "raw"), str(tmp_path / "cache"), "--workers", "1",
                 "--val-fraction", "0.5", "--test-fraction", "0", "--no-progress"]) == 0
    assert "warning: 1 subject(s) without any WG voxel: ['prostate_04']" in capsys.readouterr().out


def test_split_options_are_checked_before_any_work(tmp_path, capsys):
    fx.make_brats2023(tmp_path / "raw")  # 2 subjects cannot fill train, val and test
    assert main([str(tmp_path / "raw"), str(tmp_path / "cache"), "--workers", "1"]) == 2
    assert "2 patients leave none for training" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_rerun_on_a_complete_cache_only_redraws_the_splits(tmp_path):
    fx.make_brats2021(tmp_path / "raw")
    args = [str(tmp_path / "raw"), str(tmp_path / "cache"), "--workers", "1", "--no-progress"]
    assert main(args) == 0
    image = tmp_path / "cache" / "subjects" / "BraTS2021_00000" / "image.npy"
    mtime = image.stat().st_mtime_ns
    assert main(args + ["--folds", "2", "--test-fraction", "0.34"]) == 0
    assert image.stat().st_mtime_ns == mtime
    assert len(json.loads((tmp_path / "cache" / "splits.json").read_text())["folds"]) == 2
    assert main(args + ["--dtype", "float16"]) == 2  # other options: refused without --overwrite
    assert main(args + ["--dtype", "float16", "--overwrite"]) == 0
    assert np.load(image).dtype == np.float16
