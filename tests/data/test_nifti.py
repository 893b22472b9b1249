"""NIfTI reading and atomic writing, against nibabel's own real test files and hand-made cases."""

from __future__ import annotations

import gzip
import sys

import nibabel as nib
import numpy as np
import pytest

from mmcam.data import DataError, DataWarning, load_image, load_labels, save_nifti
from mmcam.data.nifti import header_from_text, header_to_text

from data_fixtures import ANATOMICAL, EXAMPLE_4D, write_nifti  # noqa: E402


def test_big_endian_file_becomes_native_float32_with_the_same_values():
    reference = nib.load(ANATOMICAL)
    assert reference.header.endianness == ">"  # the property under test
    volume = load_image(ANATOMICAL)
    assert volume.data.dtype == np.float32 and volume.data.dtype.isnative
    assert volume.data.shape == (33, 41, 25)
    np.testing.assert_array_equal(volume.data, reference.get_fdata())
    np.testing.assert_array_equal(volume.affine, reference.affine)
    assert volume.zooms == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("channel", [0, 1])
def test_channel_of_a_4d_file(channel):
    reference = nib.load(EXAMPLE_4D)
    volume = load_image(EXAMPLE_4D, channel=channel)
    assert volume.data.shape == (128, 96, 24) and volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, reference.get_fdata()[..., channel])
    np.testing.assert_allclose(volume.affine, reference.affine)
    assert abs(volume.affine[1, 2]) > 0.3  # oblique: carried, not squared up


def test_4d_file_without_channel_is_refused_with_a_hint():
    with pytest.raises(DataError, match=r"example4d\.nii\.gz: expected a 3-D volume.*pass a channel"):
        load_image(EXAMPLE_4D)


def test_channel_out_of_range_names_the_file_and_the_channel_count():
    with pytest.raises(DataError, match=r"example4d\.nii\.gz: channel 2 out of range, the file has 2"):
        load_image(EXAMPLE_4D, channel=2)


def test_channel_of_a_3d_file_is_refused():
    with pytest.raises(DataError, match=r"anatomical\.nii: expected a 4-D"):
        load_image(ANATOMICAL, channel=0)


def test_trailing_singleton_axis_is_a_3d_volume(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    path = write_nifti(tmp_path / "v.nii.gz", data, np.eye(4))
    np.testing.assert_array_equal(load_image(path).data, data[..., 0])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: file not found"):
        load_image(tmp_path / "nope.nii.gz")


def test_garbage_file_names_the_file(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(b"this is not a nifti file at all")
    with pytest.raises(DataError, match=r"junk\.nii\.gz: cannot read"):
        load_image(path)


def test_truncated_file_names_the_file(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 20)), np.eye(4))
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: cannot read"):
        load_image(bad)


def test_non_finite_intensities_are_refused(tmp_path):
    data = np.ones((3, 3, 3), dtype=np.float32)
    data[1, 1, 1] = np.nan
    data[0, 0, 0] = np.inf
    path = write_nifti(tmp_path / "nan.nii", data, np.eye(4))
    with pytest.raises(DataError, match=r"nan\.nii: 2 non-finite.*nonfinite='zero'"):
        load_image(path)


def test_non_finite_intensities_can_be_zeroed_with_a_warning(tmp_path):
    data = np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2, 1).repeat(2, axis=3)
    data[1, 1, 1, 1] = np.nan
    path = write_nifti(tmp_path / "nan4d.nii.gz", data, np.eye(4))
    clean = load_image(path, channel=0, nonfinite="zero")  # the NaN is in channel 1 only
    assert clean.nonfinite == 0
    with pytest.warns(DataWarning, match=r"nan4d\.nii\.gz \(channel 1\): 1 non-finite .* set to 0"):
        volume = load_image(path, channel=1, nonfinite="zero")
    assert volume.nonfinite == 1 and volume.data[1, 1, 1] == 0 and np.isfinite(volume.data).all()
    np.testing.assert_array_equal(volume.data.ravel()[:7], np.arange(1, 8))
    with pytest.raises(DataError, match="nonfinite must be one of"):
        load_image(path, channel=1, nonfinite="skip")


def test_big_endian_labels_become_native_int64(tmp_path):
    seg = np.array([0, 1, 2, 4, 300, 2, 1, 0], dtype=">i2").reshape(2, 2, 2)
    path = write_nifti(tmp_path / "seg.nii.gz", seg, np.eye(4), big_endian=True)
    assert nib.load(path).header.endianness == ">"
    volume = load_labels(path)
    assert volume.data.dtype == np.int64 and volume.data.dtype.isnative
    np.testing.assert_array_equal(volume.data, seg.astype(np.int64))


def test_float_labels_with_whole_values_are_accepted(tmp_path):
    seg = np.array([0.0, 1.0, 2.0, 4.0]).reshape(1, 2, 2)
    volume = load_labels(write_nifti(tmp_path / "f.nii", seg, np.eye(4)))
    np.testing.assert_array_equal(volume.data, [[[0, 1], [2, 4]]])


def test_fractional_labels_are_refused(tmp_path):
    seg = np.array([0.0, 1.0, 1.5, 4.0]).reshape(1, 2, 2)
    with pytest.raises(DataError, match=r"f\.nii: label mask holds values that are not whole.*1\.5"):
        load_labels(write_nifti(tmp_path / "f.nii", seg, np.eye(4)))


def test_save_carries_header_fields_and_affine_in_native_byte_order(tmp_path):
    source = nib.load(ANATOMICAL)
    mask = (source.get_fdata() > 500).astype(np.uint8)
    path = save_nifti(tmp_path / "mask.nii.gz", mask, source.affine, source.header)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    out = nib.load(path)
    assert out.header.endianness == "<" if sys.byteorder == "little" else ">"
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), mask)
    assert np.asanyarray(out.dataobj).dtype == np.uint8
    np.testing.assert_allclose(out.affine, source.affine)
    assert out.header.get_zooms() == source.header.get_zooms()
    for field in ("qform_code", "sform_code", "xyzt_units", "descrip"):
        assert out.header[field] == source.header[field], field


def test_save_of_a_4d_oblique_volume_keeps_the_affine(tmp_path):
    source = nib.load(EXAMPLE_4D)
    data = np.zeros(source.shape[:3], dtype=np.float32)
    out = nib.load(save_nifti(tmp_path / "o.nii", data, source.affine, source.header))
    assert out.shape == source.shape[:3]
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
    np.testing.assert_allclose(out.get_qform(), source.affine, atol=1e-5)


def test_header_text_round_trip_is_byte_exact():
    for path in (ANATOMICAL, EXAMPLE_4D):
        header = nib.load(path).header
        assert header_from_text(header_to_text(header)).binaryblock == header.binaryblock


def test_failed_save_leaves_neither_the_file_nor_a_temporary(tmp_path, monkeypatch):
    def write_half_then_fail(image, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(tmp_path / "out.nii.gz", np.zeros((2, 2, 2)), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    target = save_nifti(tmp_path / "out.nii", np.ones((2, 2, 2), np.uint8), np.eye(4))
    before = target.read_bytes()
    monkeypatch.setattr(nib, "save", lambda image, filename: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        save_nifti(target, np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.nii"]


def test_save_refuses_other_endings_and_bad_affines(tmp_path):
    with pytest.raises(DataError, match=r"out\.npy: a NIfTI output must end in"):
        save_nifti(tmp_path / "out.npy", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(DataError, match="affine must be a finite"):
        save_nifti(tmp_path / "out.nii", np.zeros((2, 2, 2)), np.full((4, 4), np.nan))
    assert list(tmp_path.iterdir()) == []


def test_gzip_output_is_a_valid_stream(tmp_path):
    path = save_nifti(tmp_path / "a.nii.gz", np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))
    assert len(gzip.decompress(path.read_bytes())) >= 352


def test_float_data_saved_with_an_integer_header_is_not_truncated(tmp_path):
    source = nib.load(ANATOMICAL)  # int16 on disk
    probabilities = np.linspace(0, 1, np.prod(source.shape), dtype=np.float32).reshape(source.shape)
    out = nib.load(save_nifti(tmp_path / "p.nii", probabilities, source.affine, source.header))
    np.testing.assert_array_equal(out.get_fdata(dtype=np.float32), probabilities)
