"""The compact cache (format version 3): uint16 intensities and each subject's in-plane foreground box,
padded back on read. Sizes against a float32 whole-plane cache (the format before), reading back
within the quantisation step, crop + pad exactly equal to no crop, outputs mapped back exactly, and
old caches refused with a message naming the file."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mmcam.data import BuildOptions, DataError, SliceDataset, build_cache, discover, read_cache_index
from mmcam.data.cache import (
    INDEX_FILE,
    Storage,
    foreground_box,
    read_subject_arrays,
    read_subject_meta,
    subject_dir,
)
from mmcam.data.synthetic import generate_synthetic

#: The cache format before version 3: float32, whole planes.
FLOAT32_FULL = BuildOptions(image_dtype="float32", crop_to_foreground=False)


def subject_bytes(cache, subject_id) -> int:
    """Bytes of a subject's folder (arrays and meta.json)."""
    return sum(p.stat().st_size for p in subject_dir(cache, subject_id).iterdir())


def build(raw, cache, options):
    return build_cache(discover(raw), cache, options=options)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """BraTS-layout phantoms (skull-stripped: zero background) cached three ways."""
    root = tmp_path_factory.mktemp("compact")
    generate_synthetic(root / "raw", "brats", 3, seed=0)
    caches = {
        "float32": FLOAT32_FULL,
        "default": BuildOptions(),
        "float32_crop": BuildOptions(image_dtype="float32"),
        "uint8": BuildOptions(image_dtype="uint8"),
    }
    for name, options in caches.items():
        build(root / "raw", root / name, options)
    return root


def items(cache, **kwargs):
    dataset = SliceDataset(cache, **kwargs)
    return [dataset[i] for i in range(len(dataset))]


def test_default_cache_is_at_most_a_quarter_of_float32(phantoms):
    index = read_cache_index(phantoms / "default")
    assert index.image_dtype == "uint16" and index.options["crop_to_foreground"] is True
    for subject_id in index.subjects:
        before = subject_bytes(phantoms / "float32", subject_id)
        after = subject_bytes(phantoms / "default", subject_id)
        assert after <= before / 4, (subject_id, before, after)
        meta = read_subject_meta(phantoms / "default", subject_id)
        assert meta.storage.dtype == "uint16" and meta.storage.crop_shape < meta.geometry.size


@pytest.mark.parametrize(("name", "step"), [("default", 1 / 65535), ("uint8", 1 / 255)])
def test_quantised_cache_reads_back_within_half_a_step(phantoms, name, step):
    reference, compact = items(phantoms / "float32"), items(phantoms / name)
    assert len(reference) == len(compact)
    for a, b in zip(reference, compact):
        assert a["subject"] == b["subject"] and a["slice"] == b["slice"]
        assert b["image"].dtype == torch.float32 and b["image"].shape == a["image"].shape
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["label"], b["label"])
        assert float((a["image"] - b["image"]).abs().max()) <= step / 2 + 1e-6
        assert not b["image"][a["image"] == 0].any()  # background stays exactly 0


@pytest.mark.parametrize("spatial_size", [None, (80, 100)])
def test_crop_and_pad_on_read_gives_exactly_the_uncropped_slices(phantoms, spatial_size):
    reference = items(phantoms / "float32", spatial_size=spatial_size)
    cropped = items(phantoms / "float32_crop", spatial_size=spatial_size)
    for a, b in zip(reference, cropped, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    for subject_id in read_cache_index(phantoms / "float32").subjects:
        meta = read_subject_meta(phantoms / "float32_crop", subject_id)
        image, labels = read_subject_arrays(phantoms / "float32_crop", meta)
        full = read_subject_arrays(phantoms / "float32", read_subject_meta(phantoms / "float32", subject_id))
        np.testing.assert_array_equal(image, full[0])
        np.testing.assert_array_equal(labels, full[1])


@pytest.mark.parametrize("options", [BuildOptions(size=64), BuildOptions(size=72, fit="scale")])
def test_crop_composes_with_size_and_masks_map_back_exactly(tmp_path, options):
    generate_synthetic(tmp_path / "raw", "brats", 2, seed=1)
    build(tmp_path / "raw", tmp_path / "full", dataclasses.replace(options, crop_to_foreground=False))
    build(tmp_path / "raw", tmp_path / "compact", options)
    for a, b in zip(items(tmp_path / "full"), items(tmp_path / "compact"), strict=True):
        assert torch.equal(a["mask"], b["mask"]) and a["image"].shape == b["image"].shape == (
            4,
            options.size,
            options.size,
        )
        assert float((a["image"] - b["image"]).abs().max()) <= 0.5 / 65535 + 1e-6
    dataset = SliceDataset(tmp_path / "compact")
    for subject_id in dataset.subject_ids:
        rows = [i for i in range(len(dataset)) if dataset[i]["subject"] == subject_id]
        masks = np.stack([dataset[i]["mask"].numpy() for i in rows])
        meta = dataset.subject_meta(subject_id)
        restacked = meta.restack(masks, [dataset[i]["slice"] for i in rows])
        full_meta = read_subject_meta(tmp_path / "full", subject_id)
        expected = full_meta.restack(read_subject_arrays(tmp_path / "full", full_meta)[1] != 0)
        np.testing.assert_array_equal(restacked != 0, expected)


def test_an_old_cache_is_refused_naming_the_file_and_the_fix(phantoms, tmp_path):
    index = json.loads((phantoms / "default" / INDEX_FILE).read_text())
    old = tmp_path / "old"
    old.mkdir()
    (old / INDEX_FILE).write_text(json.dumps({**index, "version": 2}))
    with pytest.raises(DataError, match=rf"{old / INDEX_FILE}: .*version 2.*expected .*version 3.*--overwrite"):
        SliceDataset(old)


def test_quantised_dtypes_need_normalisation():
    with pytest.raises(DataError, match="image_dtype 'uint16'.*normalised.*float32"):
        BuildOptions(image_dtype="uint16", normalize=False)
    assert BuildOptions(normalize=False).image_dtype == "float32"
    assert BuildOptions().image_dtype == "uint16"


def test_storage_round_trip_and_edges():
    image = np.zeros((2, 3, 6, 5), dtype=np.float32)
    image[1, 2, 2, 1] = 1.0
    image[0, 0, 3, 3] = 0.25
    labels = np.zeros((2, 6, 5), dtype=np.uint8)
    labels[0, 4, 1] = 2
    box = foreground_box(image, labels)
    assert box == (2, 1, 5, 4)
    storage = Storage("uint16", (6, 5), box)
    stored = storage.encode(image)
    assert stored.shape == (2, 3, 3, 3) and stored.dtype == np.uint16
    decoded = storage.decode(stored)
    np.testing.assert_allclose(decoded, image, atol=0.5 / 65535)
    assert decoded[1, 2, 2, 1] == 1.0 and np.count_nonzero(decoded) == 2  # 0 and 1 are exact
    np.testing.assert_array_equal(storage.pad(storage.crop(labels)), labels)
    assert Storage.from_json(storage.to_json()) == storage
    empty = Storage("uint16", (6, 5), foreground_box(np.zeros_like(image)))
    assert empty.box == (0, 0, 0, 0)
    np.testing.assert_array_equal(empty.decode(empty.encode(np.zeros_like(image))), np.zeros_like(image))
    with pytest.raises(DataError, match=r"subject x: intensities outside \[0, 1\] cannot be stored as uint16"):
        Storage.full("uint16", (6, 5)).encode(image * 2, "subject x")
    with pytest.raises(ValueError, match="malformed storage"):
        Storage.from_json({"dtype": "uint16", "size": [6, 5], "box": [0, 0, 7, 5]})
