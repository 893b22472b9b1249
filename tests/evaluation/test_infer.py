"""``python -m mmcam.infer``: outputs on the input's grid with its affine and header (nibabel's oblique
example4d.nii.gz), no flip anywhere between input voxel (i, j, k) and output voxel (i, j, k), empty masks
where the networks predict no target, the threshold's provenance, and clear errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmcam import infer, train
from mmcam.data import BuildOptions, SliceDataset, build_cache, discover, read_subject_meta
from mmcam.data.intensity import normalize_intensity
from mmcam.data.synthetic import prepare_synthetic
from mmcam.evaluation.runs import truth_volume

import data_fixtures as fx
import run_fixtures as rf

MODALITIES = ("t1ce", "flair")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(cache, run directory) of a model trained for 2 steps on 5 synthetic subjects."""
    root = tmp_path_factory.mktemp("infer")
    cache = prepare_synthetic(root / "synthetic", "brats", n_subjects=5, seed=0, shape=(32, 32, 12))
    run_dir = root / "run"
    assert (
        train.main(
            [
                "--data",
                str(cache),
                "--run-dir",
                str(run_dir),
                "--modalities",
                ",".join(MODALITIES),
                "width_divisor=16",
                "batch_size=4",
                "dice_selection=true",  # best_dice.pt too, for the --checkpoint best_dice cases
                "--max-steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    return cache, run_dir


def manifest(out: Path) -> dict:
    return json.loads((out / infer.MANIFEST).read_text())


def test_oblique_affine_and_header_of_example4d_survive(trained, tmp_path):
    _, run_dir = trained
    source = nib.load(fx.EXAMPLE_4D)
    assert not np.allclose(source.affine[:3, :3], np.diag(np.diag(source.affine[:3, :3])))  # oblique indeed
    out = tmp_path / "out"
    code = infer.main(
        [
            "--run",
            str(run_dir),
            "--files",
            f"t1ce={fx.EXAMPLE_4D}:0",
            f"flair={fx.EXAMPLE_4D}:1",
            "--threshold",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    folder = out / "example4d"
    for channel in (*MODALITIES, "combined"):
        for name, dtype in ((f"cam_{channel}.nii.gz", np.float32), (f"mask_{channel}.nii.gz", np.uint8)):
            image = nib.load(folder / name)
            assert image.shape == source.shape[:3], name
            assert image.get_data_dtype() == dtype, name
            np.testing.assert_array_equal(image.affine, source.affine)
            np.testing.assert_array_equal(image.header.get_sform(), source.header.get_sform())
            np.testing.assert_allclose(image.header.get_qform(), source.header.get_qform(), atol=1e-5)
            for key in ("qform_code", "sform_code", "xyzt_units", "descrip", "intent_code"):
                assert image.header[key] == source.header[key], (name, key)
            np.testing.assert_array_equal(image.header["pixdim"][1:4], source.header["pixdim"][1:4])
        mask = np.asarray(nib.load(folder / f"mask_{channel}.nii.gz").dataobj)
        assert set(np.unique(mask)) <= {0, 1}
    record = manifest(out)
    assert record["threshold"] == {
        "mode": "fixed",
        "source": "fixed at 0.5 for every channel and patient",
        "values": {"t1ce": 0.5, "flair": 0.5, "combined": 0.5},
    }
    assert set(record["subjects"]) == {"example4d"}


def asymmetric_subject(root: Path, shape=(32, 28, 10)) -> tuple[str, list, np.ndarray]:
    """A BraTS 2021 subject whose intensities grow along i, j and k at different rates (any flip or
    transposition changes them), with an L-shaped mask that differs per slice and an empty first slice."""
    subject = "BraTS2021_00042"
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    images = [(100 + 3 * i + 7 * j + 40 * k + 500 * m).astype(np.int16) for m in range(4)]
    seg = np.zeros(shape, dtype=np.uint8)
    seg[12:16, 10:12, 3] = 2
    seg[12:13, 12:18, 3] = 1
    seg[15:20, 9:11, 6] = 4
    seg[14, 16, 7] = 2
    for image in images:
        image[:, :, 0] = 0  # empty in every modality and the mask: dropped by prepare, 0 in the outputs
    affine = fx.affine_for(3)
    for suffix, image in zip(("t1", "t1ce", "t2", "flair"), images):
        fx.write_nifti(root / subject / f"{subject}_{suffix}.nii.gz", image, affine)
    fx.write_nifti(root / subject / f"{subject}_seg.nii.gz", seg, affine)
    return subject, images, seg


@pytest.mark.parametrize(
    "options",
    [BuildOptions(), BuildOptions(size=20), BuildOptions(size=24, fit="scale")],
    ids=["native", "crop", "scale"],
)
def test_prepare_then_restack_gives_back_the_asymmetric_mask(tmp_path, options):
    subject, _, seg = asymmetric_subject(tmp_path / "raw")
    cache = tmp_path / "cache"
    build_cache(discover(tmp_path / "raw"), cache, options=options)
    meta = read_subject_meta(cache, subject)
    assert meta.slice_index[0] == 1  # the empty slice was dropped
    truth = truth_volume(cache, subject)
    np.testing.assert_array_equal(truth, seg > 0)
    if options.fit == "crop":  # the cached masks themselves restack exactly
        dataset = SliceDataset(cache, [subject])
        masks = np.stack([dataset[n]["mask"].numpy() for n in range(len(dataset))])
        np.testing.assert_array_equal(meta.restack(masks), (seg > 0).astype(np.uint8))


def test_output_voxel_is_the_input_voxel(tmp_path, monkeypatch):
    """With the maps replaced by the cached intensities themselves, the output must be the input volume
    normalised by prepare (within the cache's quantisation step), voxel for voxel, inside the crop box
    of --size 20 (0 outside and on the dropped slice)."""
    subject, images, _ = asymmetric_subject(tmp_path / "raw")
    train_cache = tmp_path / "train-cache"
    build_cache(discover(tmp_path / "raw"), train_cache, options=BuildOptions(size=20))  # the run's options
    run_dir = rf.untrained_run(tmp_path / "run", train_cache, MODALITIES)

    def intensities_as_maps(model, batch, map_type, gate=True):
        return batch.clamp(0, 1), torch.ones(batch.shape[:2], dtype=torch.int64)

    monkeypatch.setattr("mmcam.evaluation.runs.class_maps", intensities_as_maps)
    out = tmp_path / "out"
    assert (
        infer.main(
            [
                "--run",
                str(run_dir),
                "--data",
                str(tmp_path / "raw"),
                "--threshold",
                "0.5",
                "--out",
                str(out),
                "--cache",
                str(tmp_path / "infer-cache"),
            ]
        )
        == 0
    )
    meta = read_subject_meta(tmp_path / "infer-cache", subject)
    assert meta.geometry.size == (20, 20) and meta.geometry.box != (0, 0, 32, 28)  # cropped
    x0, y0, x1, y1 = meta.geometry.box
    inside = np.zeros(images[0].shape, dtype=bool)
    inside[max(x0, 0) : x1, max(y0, 0) : y1, 1:] = True
    for modality in MODALITIES:
        expected = normalize_intensity(images[("t1", "t1ce", "t2", "flair").index(modality)])[0]
        got = np.asarray(nib.load(out / subject / f"cam_{modality}.nii.gz").dataobj)
        # the cache stores uint16 (steps of 1/65535): values agree within half a step, and the
        # intensity ramp (> 0.01 per voxel) rules out any shift of the grid
        np.testing.assert_allclose(got[inside], expected[inside], rtol=0, atol=0.5 / 65535 + 1e-6)
        assert not got[~inside].any()
        mask = np.asarray(nib.load(out / subject / f"mask_{modality}.nii.gz").dataobj)
        np.testing.assert_array_equal(mask, (inside & (expected >= 0.5)).astype(np.uint8))
        assert 0 < mask.sum() < inside.sum()


def test_networks_predicting_no_target_give_empty_masks(trained, tmp_path):
    cache, run_dir = trained
    run_dir = rf.copy_run(run_dir, tmp_path / "run")
    rf.force_prediction(run_dir, positive=False)
    out = tmp_path / "out"
    subject = "synth_00002"
    assert (
        infer.main(
            [
                "--run",
                str(run_dir),
                "--data",
                str(cache),
                "--subjects",
                subject,
                "--checkpoint",
                "last",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    shape = read_subject_meta(cache, subject).shape
    for channel in (*MODALITIES, "combined"):
        for name in (f"cam_{channel}.nii.gz", f"mask_{channel}.nii.gz"):
            data = np.asarray(nib.load(out / subject / name).dataobj)
            assert data.shape == shape and not data.any(), name
    record = manifest(out)
    # results.json was made with best: the thresholds for "last" are recomputed on validation
    assert record["threshold"]["source"].startswith("recomputed on the validation split of")
    assert record["subjects"][subject]["combined"]["mask_voxels"] == 0


def test_default_threshold_comes_from_results_json(trained, tmp_path):
    cache, run_dir = trained
    results = json.loads((run_dir / "results.json").read_text())
    out = tmp_path / "out"
    assert (
        infer.main(["--run", str(run_dir), "--data", str(cache), "--subjects", "synth_00001", "--out", str(out)]) == 0
    )
    record = manifest(out)
    assert record["checkpoint"] == "best" and "results.json" in record["threshold"]["source"]
    assert record["departure"] is None  # the paper's selection
    assert record["threshold"]["values"] == {c: results["dice"][c]["threshold"] for c in (*MODALITIES, "combined")}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--files", "flair=EX:1"], "missing ['t1ce']"),
        (["--files", "t1ce=/no/such/file.nii.gz", "flair=EX:1"], "no such file /no/such/file.nii.gz"),
        (["--files", "t1ce", "flair=EX:1"], "expected MODALITY=PATH"),
        (["--data", "CACHE", "--threshold", "0"], "--threshold '0'"),
        (["--data", "CACHE", "--subjects", "nobody"], "--subjects: not in"),
        (["--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
        (["--data", "CACHE", "--checkpoint", "best_dice"], None),  # exists: must work (control)
    ],
)
def test_bad_input_is_named_and_exits_2(trained, tmp_path, capsys, argv, message):
    cache, run_dir = trained
    argv = [a.replace("EX", str(fx.EXAMPLE_4D)).replace("CACHE", str(cache)) for a in argv]
    code = rf.exit_status(
        infer.main,
        ["--run", str(run_dir), "--out", str(tmp_path / "out"), "--subjects", "synth_00001", *argv]
        if "--subjects" not in argv and "--data" in argv
        else ["--run", str(run_dir), "--out", str(tmp_path / "out"), *argv],
    )
    if message is None:
        assert code == 0
        return
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / infer.MANIFEST).exists()


def test_missing_run_and_unknown_checkpoint_exit_2(trained, tmp_path):
    cache, run_dir = trained
    env = {**os.environ, "PYTHONPATH": ""}
    cases = [
        (["--run", str(tmp_path / "nope"), "--data", str(cache), "--out", str(tmp_path / "o")], "no such directory"),
        (
            ["--run", str(run_dir), "--data", str(cache), "--out", str(tmp_path / "o"), "--checkpoint", "best_loss"],
            "invalid choice: 'best_loss'",
        ),
    ]
    for argv, message in cases:
        # cwd outside the repository root, so that -m imports the installed package (as CI installs it)
        proc = subprocess.run(
            [sys.executable, "-m", "mmcam.infer", *argv],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
