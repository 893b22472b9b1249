"""Discovery of subjects in every raw layout, written with hard-coded real file names; dataset
families ("brats", "prostate"); subjects without a mask; modality aliases."""

from __future__ import annotations

import json
import shutil

import pytest

from mmcam.data import DataError, DataWarning, canonical_modality, detect_dataset, discover
from mmcam.data.modalities import select_modalities

import data_fixtures as fx

BRATS = ("t1", "t1ce", "t2", "flair")


def names(subject):
    return [src.path.name for src in subject.images], subject.label.name


def test_brats2018_grade_directories(tmp_path):
    fx.make_brats2018(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "brats2018" and dataset.spec.name == "brats2018"
    assert dataset.modalities == BRATS
    assert [s.id for s in dataset.subjects] == ["Brats18_2013_0_1", "Brats18_2013_10_1", "Brats18_CBICA_AAB_1"]
    lgg = dataset.subjects[0]
    assert lgg.images[3].path == tmp_path / "LGG" / "Brats18_2013_0_1" / "Brats18_2013_0_1_flair.nii.gz"
    assert lgg.images[3].channel is None
    assert names(lgg)[1] == "Brats18_2013_0_1_seg.nii.gz"


def test_brats2019_is_detected_from_its_subject_names(tmp_path):
    subject = tmp_path / "HGG" / "BraTS19_2013_2_1"
    for suffix in BRATS + ("seg",):
        fx.write_nifti(subject / f"BraTS19_2013_2_1_{suffix}.nii.gz", fx.np.zeros((2, 2, 2)), fx.np.eye(4))
    assert detect_dataset(tmp_path) == "brats2019"
    assert discover(tmp_path).spec.name == "brats2019"


def test_brats2020_flat_uncompressed_and_subject_355_mask(tmp_path):
    fx.make_brats2020(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "brats2020"
    first, s355 = dataset.subjects
    assert names(first) == ([f"BraTS20_Training_001_{m}.nii" for m in BRATS], "BraTS20_Training_001_seg.nii")
    assert names(s355) == ([f"BraTS20_Training_355_{m}.nii" for m in BRATS], "W39_1998.09.19_Segm.nii")


def test_brats2021_skips_hidden_and_underscore_entries(tmp_path):
    fx.make_brats2021(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "brats2021"
    assert len(dataset) == 3 and list(dataset) == list(dataset.subjects) and dataset[1].id == "BraTS2021_00002"
    assert dataset.paths(dataset[1])["flair"].path.name == "BraTS2021_00002_flair.nii.gz"
    assert [s.id for s in dataset.subjects] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
    assert names(dataset.subjects[1])[0][1] == "BraTS2021_00002_t1ce.nii.gz"


def test_brats2023_names_map_to_the_common_modality_order(tmp_path):
    fx.make_brats2023(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "brats2023" and dataset.modalities == BRATS
    assert names(dataset.subjects[0]) == (
        [
            "BraTS-GLI-00000-000-t1n.nii.gz",
            "BraTS-GLI-00000-000-t1c.nii.gz",
            "BraTS-GLI-00000-000-t2w.nii.gz",
            "BraTS-GLI-00000-000-t2f.nii.gz",
        ],
        "BraTS-GLI-00000-000-seg.nii.gz",
    )


def test_brats2024_shares_the_2023_layout_and_must_be_named(tmp_path):
    fx.make_brats2023(tmp_path, with_resection_cavity=True)
    assert detect_dataset(tmp_path) == "brats2023"
    assert discover(tmp_path, "brats").name == "brats2023"  # the release is detected...
    dataset = discover(tmp_path, "brats2024")  # ...but 2024 must be named
    assert dataset.name == "brats2024" and 4 in dataset.spec.values


@pytest.mark.parametrize(
    "layout, expected",
    [("brats2018", "brats2018"), ("brats2020", "brats2020"), ("brats2021", "brats2021"), ("brats2023", "brats2023")],
)
def test_dataset_brats_detects_the_release(tmp_path, layout, expected):
    fx.LAYOUTS[layout](tmp_path)
    dataset = discover(tmp_path, dataset="brats")
    assert dataset.name == expected and dataset.spec.name == expected


def test_dataset_prostate_and_family_mismatches(tmp_path):
    fx.make_msd_prostate(tmp_path / "msd")
    assert discover(tmp_path / "msd", "prostate").name == "msd_prostate"
    with pytest.raises(DataError, match=r"msd: holds a msd_prostate layout, not brats"):
        discover(tmp_path / "msd", "brats")
    fx.make_brats2021(tmp_path / "brats")
    with pytest.raises(DataError, match=r"brats: no dataset\.json"):
        discover(tmp_path / "brats", "prostate")


def test_msd_prostate_channels_and_macos_forks(tmp_path):
    fx.make_msd_prostate(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.name == "msd_prostate" and dataset.modalities == ("t2", "adc")
    assert [s.id for s in dataset.subjects] == ["prostate_00", "prostate_04"]
    subject = dataset.subjects[1]
    assert [(src.path, src.channel) for src in subject.images] == [
        (tmp_path / "imagesTr/prostate_04.nii.gz", 0),
        (tmp_path / "imagesTr/prostate_04.nii.gz", 1),
    ]
    assert subject.label == tmp_path / "labelsTr/prostate_04.nii.gz"


def test_msd_entries_naming_macos_forks_are_skipped(tmp_path):
    fx.make_msd_prostate(tmp_path)
    record = json.loads((tmp_path / "dataset.json").read_text())
    record["training"].append({"image": "./imagesTr/._prostate_00.nii.gz", "label": "./labelsTr/._prostate_00.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps(record))
    assert [s.id for s in discover(tmp_path).subjects] == ["prostate_00", "prostate_04"]


def test_missing_modality_names_the_directory_and_the_modality(tmp_path):
    fx.make_brats2021(tmp_path)
    (tmp_path / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz").unlink()
    with pytest.raises(
        DataError,
        match=r"BraTS2021_00002: missing the flair image "
        r"BraTS2021_00002_flair\.nii\.gz",
    ):
        discover(tmp_path)


def test_a_subject_without_mask_is_listed_unlabelled(tmp_path):
    fx.make_brats2023(tmp_path)
    (tmp_path / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-seg.nii.gz").unlink()
    dataset = discover(tmp_path)
    assert dataset.subjects[1].label is None and dataset.unlabeled == ("BraTS-GLI-00002-000",)
    assert dataset.subjects[0].label.name == "BraTS-GLI-00000-000-seg.nii.gz"


def test_brats_validation_set_without_masks(tmp_path):
    fx.make_brats2021_validation(tmp_path)
    dataset = discover(tmp_path, "brats")
    assert dataset.name == "brats2021"
    assert dataset.unlabeled == ("BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003")


def test_two_mask_candidates_are_ambiguous(tmp_path):
    fx.make_brats2020(tmp_path)
    shutil.copy(
        tmp_path / "BraTS20_Training_355" / "W39_1998.09.19_Segm.nii",
        tmp_path / "BraTS20_Training_355" / "other_seg_copy.nii",
    )
    with pytest.raises(DataError, match="candidates"):
        discover(tmp_path)


def test_both_nii_and_nii_gz_is_ambiguous(tmp_path):
    fx.make_brats2020(tmp_path)
    d = tmp_path / "BraTS20_Training_001"
    shutil.copy(d / "BraTS20_Training_001_t2.nii", d / "BraTS20_Training_001_t2.nii.gz")
    with pytest.raises(
        DataError,
        match=r"both BraTS20_Training_001_t2\.nii\.gz and "
        r"BraTS20_Training_001_t2\.nii exist",
    ):
        discover(tmp_path)


def test_unknown_layout_suggests_the_nested_dataset(tmp_path):
    fx.make_brats2021(tmp_path / "MICCAI_BraTS2021_TrainingData")
    with pytest.raises(
        DataError,
        match=r"no known dataset layout.*did you mean "
        r".*MICCAI_BraTS2021_TrainingData",
    ):
        discover(tmp_path)


def test_empty_or_missing_root(tmp_path):
    with pytest.raises(DataError, match="no known dataset layout"):
        discover(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        discover(tmp_path / "absent")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(
        DataError,
        match=r"unknown dataset 'brats2022'; choose auto, brats, prostate "
        r"or one of .*brats2021",
    ):
        discover(tmp_path, "brats2022")


def test_msd_entry_pointing_at_a_missing_file(tmp_path):
    fx.make_msd_prostate(tmp_path)
    (tmp_path / "labelsTr" / "prostate_04.nii.gz").unlink()
    with pytest.raises(
        DataError,
        match=r"dataset\.json lists .*labelsTr/prostate_04\.nii\.gz, "
        r"which does not exist",
    ):
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


def test_msd_test_images_are_unlabelled_subjects_and_absent_ones_are_skipped(tmp_path):
    fx.make_msd_prostate(tmp_path)
    (tmp_path / "imagesTs").mkdir()
    (tmp_path / "imagesTs" / "prostate_08.nii.gz").symlink_to(tmp_path / "imagesTr/prostate_00.nii.gz")
    record = json.loads((tmp_path / "dataset.json").read_text())
    record["test"] = [
        "./imagesTs/prostate_08.nii.gz",
        "./imagesTs/prostate_09.nii.gz",
        "./imagesTs/._prostate_08.nii.gz",
    ]
    (tmp_path / "dataset.json").write_text(json.dumps(record))
    with pytest.warns(
        DataWarning,
        match=r"lists the test image .*imagesTs/prostate_09\.nii\.gz, "
        r"which does not exist: skipped",
    ):
        dataset = discover(tmp_path)
    assert [s.id for s in dataset.subjects] == ["prostate_00", "prostate_04", "prostate_08"]
    assert dataset.unlabeled == ("prostate_08",)
    assert [src.channel for src in dataset.subjects[2].images] == [0, 1]


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("t1n", "t1"),
        ("T1c", "t1ce"),
        ("t1gd", "t1ce"),
        ("t2w", "t2"),
        ("T2F", "flair"),
        ("FLAIR", "flair"),
        ("T2", "t2"),
        ("ADC", "adc"),
    ],
)
def test_modality_aliases(alias, canonical):
    assert canonical_modality(alias) == canonical


def test_select_modalities_resolves_aliases_and_rejects_bad_lists():
    names, channels = select_modalities(["t2f", "T1c"], BRATS)
    assert names == ("flair", "t1ce") and channels.tolist() == [3, 1]
    assert select_modalities(None, ("t2", "adc"))[0] == ("t2", "adc")
    for bad, message in (
        (["t2", "adc"], "distinct names"),
        (["flair", "t2f"], "distinct names"),
        ([], "distinct names"),
        ("t2", "not the single string"),
    ):
        with pytest.raises(DataError, match=message):
            select_modalities(bad, BRATS)
