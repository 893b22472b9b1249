"""Synthetic phantoms: determinism, labels, modality-specific lesion appearance, difficulty (no single
modality separates the target by intensity; look-alikes), the written NIfTI (int16, affines,
dataset.json), and the full path raw layout -> discover -> cache -> SliceDataset."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mmcam.data import DataError, SliceDataset, discover, get_label_spec
from mmcam.data.synthetic import DEFAULT_SHAPES, generate_synthetic, main, make_subject, prepare_synthetic, spacing

from phantom_measures import best_threshold_dice, mean_contrast

SMALL = {"brats": (40, 40, 16), "prostate": (40, 40, 12)}


@pytest.mark.parametrize("layout", ["brats", "prostate"])
def test_same_seed_same_subject_other_seed_other_subject(layout):
    a = make_subject(layout, 7, 2, SMALL[layout])
    b = make_subject(layout, 7, 2, SMALL[layout])
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = make_subject(layout, 8, 2, SMALL[layout])
    assert not np.array_equal(a.images, c.images)
    d = make_subject(layout, 7, 3, SMALL[layout])
    assert not np.array_equal(a.labels, d.labels)


@pytest.mark.parametrize("layout, spec, n_modalities", [("brats", "brats2021", 4), ("prostate", "msd_prostate", 2)])
def test_default_subjects_have_target_and_background_slices(layout, spec, n_modalities):
    fractions = []
    for index in range(6):
        subject = make_subject(layout, 0, index)
        assert subject.images.shape == (n_modalities,) + DEFAULT_SHAPES[layout]
        assert subject.images.dtype == np.float32 and np.isfinite(subject.images).all()
        np.testing.assert_array_equal(subject.images, np.round(subject.images))  # int16 values
        assert subject.images.min() >= 0 and subject.images.max() <= np.iinfo(np.int16).max
        get_label_spec(spec).check_values(subject.labels, f"{layout} {index}")
        region = get_label_spec(spec).region_mask(subject.labels)
        per_slice = region.any(axis=(0, 1))
        assert per_slice.any() and not per_slice.all()
        fractions.append(per_slice.mean())
    assert 0.15 < np.mean(fractions) < 0.6, fractions  # both classes well represented


def test_brats_lesion_looks_different_in_each_modality():
    subject = make_subject("brats", 0, 2)  # a large enhancing tumour
    t1, t1ce, t2, flair = subject.images
    labels = subject.labels
    brain = t1 > 0
    normal = brain & (labels == 0) & ~subject.confounders["wmh"] & ~subject.confounders["plexus"]
    edema, rim, necrosis = labels == 2, labels == 4, labels == 1
    assert necrosis.sum() > 100 and rim.sum() > 100 and edema.sum() > 100
    # FLAIR: edema stands out bright, the fluid-filled core does not (part visible in one only)
    assert mean_contrast(flair, edema, normal) > 1.5
    assert mean_contrast(flair, necrosis, normal) < 0.0
    # T2: the core is bright; T1: the core is dark
    assert mean_contrast(t2, necrosis, normal) > 1.0
    assert mean_contrast(t1, necrosis, normal) < -0.8
    # T1ce: the enhancing rim stands out, edema is not enhanced
    assert mean_contrast(t1ce, rim, normal) > 1.5
    assert t1ce[rim].mean() > 1.5 * t1ce[edema].mean()
    assert flair[edema].mean() > flair[rim].mean()  # opposite order to T1ce
    # T2: tumour bright, but so is CSF (a confounder FLAIR suppresses)
    csf_like = normal & (t2 > np.percentile(t2[normal], 95))
    assert t2[csf_like].mean() > t2[normal].mean() and t2[edema].mean() > t2[normal].mean()
    assert flair[csf_like].mean() < flair[normal].mean()
    # the per-modality images are not rescaled copies of one another inside the tumour
    tumour = labels > 0
    correlations = np.corrcoef(np.stack([m[tumour] for m in subject.images]))
    assert correlations[np.triu_indices(4, 1)].min() < 0.5


def test_best_threshold_dice_hand_computed():
    image = np.array([1.0, 2.0, 3.0, 4.0])
    assert best_threshold_dice(image, np.array([0, 0, 1, 1]) > 0, image > 0) == 1.0
    assert best_threshold_dice(image, np.array([1, 0, 0, 0]) > 0, image > 0) == 1.0
    # target {2, 4}: best is "above 1" (3 predicted, 2 right: 4/5) or "above 3" (1 of 2: 2/3)
    assert best_threshold_dice(image, np.array([0, 1, 0, 1]) > 0, image > 0) == pytest.approx(0.8)


def test_no_single_brats_modality_separates_the_tumour_by_intensity():
    """The target is not a threshold of one image: a classification CAM cannot be trivially right."""
    dice = []
    for index in range(6):
        subject = make_subject("brats", 0, index)
        brain = subject.images.sum(axis=0) > 0
        dice.append([best_threshold_dice(m, subject.labels > 0, brain) for m in subject.images])
    dice = np.array(dice)  # (subjects, modalities: t1, t1ce, t2, flair)
    assert dice[:, :3].max() < 0.5  # T1, T1ce, T2 show only parts
    assert 0.5 < dice[:, 3].mean() < 0.85, dice[:, 3]  # FLAIR is best but far from perfect
    assert dice[:, 3].min() < 0.7


def test_brats_look_alikes_and_small_tumours_occur():
    subjects = [make_subject("brats", 0, index) for index in range(8)]
    for s in subjects:
        brain = s.images[0] > 0
        wmh, plexus = s.confounders["wmh"], s.confounders["plexus"]
        normal = brain & (s.labels == 0) & ~wmh & ~plexus
        assert not ((wmh | plexus) & (s.labels > 0)).any()  # look-alikes are background
        # the choroid plexus enhances in T1ce like the tumour rim
        assert mean_contrast(s.images[1], plexus, normal) > 0.5
        if wmh.sum() > 20:  # white-matter hyperintensities: FLAIR-bright like edema
            assert mean_contrast(s.images[3], wmh, normal) > 1.5
    assert sum(s.confounders["wmh"].sum() > 20 for s in subjects) >= 3
    volumes_ml = [(s.labels > 0).sum() * np.prod(spacing("brats", s.labels.shape)) / 1000 for s in subjects]
    assert min(volumes_ml) < 15 < max(volumes_ml)  # small and large tumours


def test_prostate_gland_contrast_differs_between_t2_and_adc():
    subject = make_subject("prostate", 0, 1)
    t2, adc = subject.images
    pz, tz = subject.labels == 1, subject.labels == 2
    # fat: bright on T2, dark on ADC; the gland sits in it
    fat = (t2 > np.percentile(t2, 90)) & (subject.labels == 0)
    assert t2[fat].mean() > t2[tz].mean() and adc[fat].mean() < adc[tz].mean()
    # PZ brighter than TZ in both, much more so relative to noise on T2
    assert t2[pz].mean() > 1.3 * t2[tz].mean()
    assert adc[pz].mean() > adc[tz].mean()
    # not one contrast rescaled: the two modalities are weakly correlated over the body
    body = t2 > np.percentile(t2, 20)
    assert np.corrcoef(t2[body], adc[body])[0, 1] < 0.5


def test_default_spacing_and_resolution_independent_field_of_view():
    assert spacing("brats", DEFAULT_SHAPES["brats"]) == (2.5, 2.5, 3.875)
    assert spacing("prostate", DEFAULT_SHAPES["prostate"]) == (1.25, 1.25, 3.6)
    # the same anatomy at half the in-plane resolution: the tumour keeps its size in mm
    fine = make_subject("brats", 0, 0, (96, 96, 40))
    coarse = make_subject("brats", 0, 0, (48, 48, 40))
    volume = [(s.labels > 0).sum() * np.prod(spacing("brats", s.labels.shape)) for s in (fine, coarse)]
    assert volume[1] == pytest.approx(volume[0], rel=0.1)


def test_subject_does_not_depend_on_the_number_generated(tmp_path):
    generate_synthetic(tmp_path / "one", "brats", 1, seed=4, shape=SMALL["brats"])
    generate_synthetic(tmp_path / "two", "brats", 2, seed=4, shape=SMALL["brats"])
    for name in ("synth_00000_flair.nii.gz", "synth_00000_seg.nii.gz"):
        a = nib.load(tmp_path / "one" / "synth_00000" / name).get_fdata()
        b = nib.load(tmp_path / "two" / "synth_00000" / name).get_fdata()
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout, dataset, n_modalities", [("brats", "brats2021", 4), ("prostate", "msd_prostate", 2)])
def test_written_layout_is_read_like_real_data(tmp_path, layout, dataset, n_modalities):
    shape = SMALL[layout]
    root = generate_synthetic(tmp_path / "raw", layout, 2, seed=1, shape=shape)
    found = discover(root)
    assert found.name == dataset and len(found.subjects) == 2
    first = make_subject(layout, 1, 0, shape)
    loaded = nib.load(found.subjects[0].label)
    np.testing.assert_array_equal(np.asanyarray(loaded.dataobj), first.labels)
    np.testing.assert_allclose(loaded.affine, first.affine, atol=1e-5)
    assert int(loaded.header["sform_code"]) == 1 and int(loaded.header["qform_code"]) == 1
    field_of_view = {"brats": (240, 240, 155), "prostate": (120, 120, 86.4)}[layout]
    np.testing.assert_allclose(loaded.header.get_zooms()[:3], np.divide(field_of_view, shape), rtol=1e-6)
    image = nib.load(found.subjects[0].images[-1].path)
    assert image.get_data_dtype() == np.int16
    if layout == "prostate":
        assert image.shape == shape + (2,)
        np.testing.assert_array_equal(image.get_fdata()[..., 1], first.images[1])
        assert json.loads((root / "dataset.json").read_text())["modality"] == {"0": "T2", "1": "ADC"}
        rotation = first.affine[:3, :3] / np.array(spacing("prostate", shape))
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)  # oblique, rigid
        assert abs(first.affine[1, 2]) > 1e-3
    else:
        np.testing.assert_array_equal(image.get_fdata(), first.images[3])
        assert np.diag(first.affine)[:3].tolist() == [-6.0, -6.0, 155 / 16]  # BraTS-like flips


def test_generation_is_idempotent_and_refuses_to_mix(tmp_path):
    root = generate_synthetic(tmp_path / "raw", "prostate", 2, seed=0, shape=SMALL["prostate"])
    before = (root / "imagesTr" / "prostate_00000.nii.gz").stat().st_mtime_ns
    generate_synthetic(root, "prostate", 2, seed=0, shape=SMALL["prostate"])
    assert (root / "imagesTr" / "prostate_00000.nii.gz").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="other parameters"):
        generate_synthetic(root, "prostate", 3, seed=0, shape=SMALL["prostate"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        generate_synthetic(tmp_path / "full", "brats", 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layout": "liver"}, "unknown synthetic layout"),
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"shape": (4, 40, 40)}, "shape must be three ints"),
        ({"n_subjects": 0}, "n_subjects"),
    ],
)
def test_bad_generator_arguments(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        generate_synthetic(tmp_path / "x", **kwargs)


def test_prepare_synthetic_gives_a_split_cache(tmp_path):
    cache = prepare_synthetic(tmp_path, "brats", 5, seed=2, shape=SMALL["brats"])
    assert json.loads((cache / "splits.json").read_text())["seed"] == 2
    train = SliceDataset(cache, "train")
    item = train[0]
    assert item["image"].shape == (4, 40, 40) and len(train.subject_ids) == 3
    assert 0 <= item["image"].min() and item["image"].max() <= 1  # normalised
    assert 0 < train.labels.mean() < 1
    assert prepare_synthetic(tmp_path, "brats", 5, seed=2, shape=SMALL["brats"]) == cache


def test_command_line(tmp_path, capsys):
    assert (
        main(
            [
                "--out",
                str(tmp_path / "p"),
                "--layout",
                "prostate",
                "--subjects",
                "1",
                "--shape",
                "24",
                "24",
                "10",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "p" / "dataset.json").is_file()
    assert "wrote 1 synthetic prostate subjects" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "p"), "--layout", "brats", "--subjects", "1", "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


def test_blur_matches_a_torch_convolution_reference():
    import torch
    import torch.nn.functional as F

    from mmcam.data.synthetic import _blur

    volume = np.random.default_rng(0).random((9, 8, 7)).astype(np.float32)
    sigma = (0.6, 1.5, 0.4)
    out = torch.from_numpy(volume)[None, None].double()
    for axis, s in enumerate(sigma):  # replicate padding + 1-D Gaussian along each axis
        radius = max(1, int(3 * s + 0.5))
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (taps / s) ** 2)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), (kernel / kernel.sum()).view(shape))
    np.testing.assert_allclose(_blur(volume, sigma), out[0, 0].numpy(), atol=1e-6)
