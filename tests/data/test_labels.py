"""Label specs: regions per BraTS year and for the prostate, hand-computed; unexpected values."""

from __future__ import annotations

import numpy as np
import pytest

from mmcam.data import LABEL_SPECS, DataError, get_label_spec


def regions(spec_name, values):
    spec = get_label_spec(spec_name)
    values = np.array(values)
    return {r: spec.region_mask(values, r).astype(int).tolist() for r in spec.regions}


@pytest.mark.parametrize("year", [2018, 2019, 2020, 2021])
def test_brats_up_to_2022_enhancing_tumour_is_label_4(year):
    assert regions(f"brats{year}", [0, 1, 2, 4]) == {"WT": [0, 1, 1, 1], "TC": [0, 1, 0, 1], "ET": [0, 0, 0, 1]}


def test_brats2023_enhancing_tumour_is_label_3():
    assert regions("brats2023", [0, 1, 2, 3]) == {"WT": [0, 1, 1, 1], "TC": [0, 1, 0, 1], "ET": [0, 0, 0, 1]}


def test_brats2024_resection_cavity_is_allowed_but_in_no_tumour_region():
    spec = get_label_spec("brats2024")
    spec.check_values(np.array([0, 1, 2, 3, 4]), "seg.nii.gz")  # no error
    assert regions("brats2024", [0, 1, 2, 3, 4]) == {
        "WT": [0, 1, 1, 1, 0],
        "TC": [0, 1, 0, 1, 0],
        "ET": [0, 0, 0, 1, 0],
    }


def test_prostate_whole_gland_and_zones():
    assert regions("msd_prostate", [0, 1, 2]) == {"WG": [0, 1, 1], "PZ": [0, 1, 0], "TZ": [0, 0, 1]}


def test_default_regions():
    assert {name: spec.default_region for name, spec in LABEL_SPECS.items()} == {
        "brats2018": "WT",
        "brats2019": "WT",
        "brats2020": "WT",
        "brats2021": "WT",
        "brats2023": "WT",
        "brats2024": "WT",
        "msd_prostate": "WG",
    }


def test_label_3_in_a_2021_mask_names_file_values_and_the_2023_convention():
    with pytest.raises(DataError) as info:
        get_label_spec("brats2021").check_values(np.array([[0, 3], [2, 3]]), "/d/x_seg.nii.gz")
    message = str(info.value)
    assert "/d/x_seg.nii.gz" in message and "[3]" in message and "brats2023" in message


def test_label_4_in_a_2023_mask_points_to_brats2024():
    with pytest.raises(DataError, match=r"seg\.nii\.gz: unexpected label values \[4\].*brats2024"):
        get_label_spec("brats2023").check_values(np.array([0, 1, 4]), "seg.nii.gz")


def test_several_unexpected_values_are_all_listed():
    with pytest.raises(DataError, match=r"p\.nii: unexpected label values \[3, 7\]"):
        get_label_spec("msd_prostate").check_values(np.array([0, 7, 1, 3, 2]), "p.nii")


def test_negative_label_is_unexpected():
    with pytest.raises(DataError, match=r"\[-1\]"):
        get_label_spec("brats2021").check_values(np.array([0, -1]), "m.nii")


def test_region_names_are_case_insensitive_and_unknown_ones_listed():
    spec = get_label_spec("brats2023")
    assert spec.region_name("et") == "ET" and spec.region_name(None) == "WT"
    with pytest.raises(DataError, match="WT, TC, ET"):
        spec.region_name("WG")


def test_unknown_spec_lists_known_ones():
    with pytest.raises(DataError, match="brats2021"):
        get_label_spec("brats2022")


@pytest.mark.parametrize("name", sorted(LABEL_SPECS))
def test_lookup_table_agrees_with_region_mask_for_every_uint8_value(name):
    spec = get_label_spec(name)
    values = np.arange(256, dtype=np.uint8)
    for region in spec.regions:
        np.testing.assert_array_equal(spec.lookup_table(region)[values], spec.region_mask(values, region))
