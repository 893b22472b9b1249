"""Discovery of subjects in every raw layout, written with hard-coded real file names."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from mmcam.data import DataError, detect_dataset, discover

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as fx  # noqa: E402

BRATS = ("t1", "t1ce", "t2", "flair")


def names(subject):
    return [src.path.name for src in subject.images], subject.label.name


def test_brats2018_grade_directories(tmp_path):
    fx.make_brats2018(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "brats2018" and dataset.spec.name == "brats2018"
    assert dataset.modalities == BRATS
    assert [s.id for s in dataset.subjects] == [
        "Brats18_2013_0_1", "Brats18_2013_10_1", "Brats18_CBICA_AAB_1"]
    lgg = dataset.subjects[0]
    assert lgg.images[3].path == tmp_path / "LGG" / "Brats18_2013_0_1" / \
        "Brats18_2013_0_1_flair.nii.gz"
    assert lgg.images[3].channel is None
    assert names(lgg)[1] == "Brats18_2013_0_1_seg.nii.gz"


def test_brats2019_is_detected_from_its_subject_names(tmp_path):
    subject = tmp_path / "HGG" / "BraTS19_2013_2_1"
    for suffix in BRATS + ("seg",):
        fx.write_nifti(subject / f"BraTS19_2013_2_1_{suffix}.nii.gz", fx.np.zeros((2, 2, 2)),
                       fx.np.eye(4))
    assert detect_dataset(tmp_path) == "brats2019"
    assert discover(tmp_path).spec.name == "brats2019"


def test_brats2020_flat_uncompressed_and_subject_355_mask(tmp_path):
    fx.make_brats2020(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "brats2020"
    first, s355 = dataset.subjects
    assert names(first) == ([f"BraTS20_Training_001_{m}.nii" for m in BRATS],
                            "BraTS20_Training_001_seg.nii")
    assert names(s355) == ([f"BraTS20_Training_355_{m}.nii" for m in BRATS],
                           "W39_1998.09.19_Segm.nii")


def test_brats2021_skips_hidden_and_underscore_entries(tmp_path):
    fx.make_brats2021(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "brats2021"
    assert [s.id for s in dataset.subjects] == ["BraTS2021_00000", "BraTS2021_00002",
                                                "BraTS2021_00003"]
    assert names(dataset.subjects[1])[0][1] == "BraTS2021_00002_t1ce.nii.gz"


def test_brats2023_names_map_to_the_common_modality_order(tmp_path):
    fx.make_brats2023(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "brats2023" and dataset.modalities == BRATS
    assert names(dataset.subjects[0]) == (
        ["BraTS-GLI-00000-000-t1n.nii.gz", "BraTS-GLI-00000-000-t1c.nii.gz",
         "BraTS-GLI-00000-000-t2w.nii.gz", "BraTS-GLI-00000-000-t2f.nii.gz"],
        "BraTS-GLI-00000-000-seg.nii.gz")


def test_brats2024_shares_the_2023_layout_and_must_be_named(tmp_path):
    fx.make_brats2023(tmp_path, with_resection_cavity=True)
    assert detect_dataset(tmp_path) == "brats2023"
    dataset = discover(tmp_path, "brats2024")
    assert dataset.name == "brats2024" and 4 in dataset.spec.values


def test_msd_prostate_channels_and_macos_forks(tmp_path):
    fx.make_msd_prostate(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "msd_prostate" and dataset.modalities == ("t2", "adc")
    assert [s.id for s in dataset.subjects] == ["prostate_00", "prostate_04"]
    subject = dataset.subjects[1]
    assert [(src.path, src.channel) for src in subject.images] == [
        (tmp_path / "imagesTr/prostate_04.nii.gz", 0), (tmp_path / "imagesTr/prostate_04.nii.gz", 1)]
    assert subject.label == tmp_path / "labelsTr/prostate_04.nii.gz"


def test_msd_entries_naming_macos_forks_are_skipped(tmp_path):
    fx.make_msd_prostate(tmp_path)
    record = json.loads((tmp_path / "dataset.json").read_text())
    record["training"].append({"image": "./imagesTr/._prostate_00.nii.gz",
                               "label": "./labelsTr/._prostate_00.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps(record))
    assert [s.id for s in discover(tmp_path).subjects] == ["prostate_00", "prostate_04"]


def test_missing_modality_names_the_directory_and_the_modality(tmp_path):
    fx.make_brats2021(tmp_path)
    (tmp_path / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz").unlink()
    with pytest.raises(DataError, match=r"BraTS2021_00002: missing the flair image "
                                        r"BraTS2021_00002_flair\.nii\.gz"):
        discover(tmp_path)


def test_missing_mask_names_the_directory(tmp_path):
    fx.make_brats2023(tmp_path)
    (tmp_path / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-seg.nii.gz").unlink()
    with pytest.raises(DataError, match=r"BraTS-GLI-00002-000: no label mask "
                                        r"BraTS-GLI-00002-000-seg\.nii\.gz"):
        discover(tmp_path)


def test_two_mask_candidates_are_ambiguous(tmp_path):
    fx.make_brats2020(tmp_path)
    shutil.copy(tmp_path / "BraTS20_Training_355" / "W39_1998.09.19_Segm.nii",
                tmp_path / "BraTS20_Training_355" / "other_seg_copy.nii")
    with pytest.raises(DataError, match="candidates"):
        discover(tmp_path)


def test_both_nii_and_nii_gz_is_ambiguous(tmp_path):
    fx.make_brats2020(tmp_path)
    d = tmp_path / "BraTS20_Training_001"
    shutil.copy(d / "BraTS20_Training_001_t2.nii", d / "BraTS20_Training_001_t2.nii.gz")
    with pytest.raises(DataError, match=r"both BraTS20_Training_001_t2\.nii\.gz and "
                                        r"BraTS20_Training_001_t2\.nii exist"):
        discover(tmp_path)


def test_unknown_layout_suggests_the_nested_dataset(tmp_path):
    fx.make_brats2021(tmp_path / "MICCAI_BraTS2021_TrainingData")
    with pytest.raises(DataError, match=r"no known dataset layout.*did you mean "
                                        r".*MICCAI_BraTS2021_TrainingData"):
        discover(tmp_path)


def test_empty_or_missing_root(tmp_path):
    with pytest.raises(DataError, match="no known dataset layout"):
        discover(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        discover(tmp_path / "absent")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'brats2022'.*brats2021"):
        discover(tmp_path, "brats2022")


def test_msd_entry_pointing_at_a_missing_file(tmp_path):
    fx.make_msd_prostate(tmp_path)
    (tmp_path / "labelsTr" / "prostate_04.nii.gz").unlink()
    with pytest.raises(DataError, match=r"dataset\.json lists .*labelsTr/prostate_04\.nii\.gz, "
                                        r"which does not exist"):
        discover(tmp_path)


def test_msd_other_modalities_are_refused(tmp_path):
    fx.make_msd_prostate(tmp_path)
    fx.write_msd_json(tmp_path, ["prostate_00"], modality={"0": "CT"})
    with pytest.raises(DataError, match=r"dataset\.json: expected modalities T2 .* got \['CT'\]"):
        discover(tmp_path)


def test_msd_malformed_json(tmp_path):
    fx.make_msd_prostate(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset\.json: cannot read"):
        discover(tmp_path)
