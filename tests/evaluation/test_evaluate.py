"""``python -m mmcam.evaluate``: the threshold is chosen on validation (never on the test labels) unless
--oracle, which every output flags; per-patient metrics on the original grid agree with the masks that
mmcam.infer writes and with the raw label files; empty masks follow the stated convention; bad input
exits with status 2. Plus the threshold rules themselves."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmcam import evaluate, infer, train
from mmcam.data import build_cache, discover, split_patients, write_splits
from mmcam.data.synthetic import generate_synthetic
from mmcam.evaluation import protocol
from mmcam.evaluation.overlap import threshold_grid
from mmcam.evaluation.runs import UsageError, load_run, subject_maps
from mmcam.evaluation.surface_metrics import case_metrics
from mmcam.evaluation.thresholds import choose_on_split, otsu_threshold, parse_threshold, sweep_thresholds
from mmcam.training import checkpoint as ckpt

import data_fixtures as fx
import run_fixtures as rf
from ranking_reference import brute_force_ap

MODALITIES = ("t1ce", "flair")
CHANNELS = (*MODALITIES, "combined")
FRACTIONS = (0.6, 0.2, 0.2)


class Setup:
    """Raw phantoms (the first test patient's mask emptied), their cache and a run trained 2 steps."""

    def __init__(self, root: Path):
        self.raw = generate_synthetic(root / "raw", "brats", n_subjects=8, seed=0, shape=(32, 32, 12))
        ids = sorted(p.name for p in self.raw.iterdir() if p.is_dir())
        split = split_patients(ids, FRACTIONS, seed=0)
        self.test, self.val = list(split.test), list(split.val)
        assert len(self.test) == 2 and len(self.val) == 2
        self.empty = self.test[0]  # a patient with no positive slice
        seg = self.raw / self.empty / f"{self.empty}_seg.nii.gz"
        fx.write_nifti(seg, np.zeros(nib.load(seg).shape, dtype=np.uint8), nib.load(seg).affine)
        self.cache = root / "cache"
        build_cache(discover(self.raw), self.cache)
        write_splits(self.cache, fractions=FRACTIONS, seed=0)
        self.run = root / "run"
        assert (
            train.main(
                [
                    "--data",
                    str(self.cache),
                    "--run-dir",
                    str(self.run),
                    "--modalities",
                    ",".join(MODALITIES),
                    "width_divisor=16",
                    "batch_size=4",
                    "--max-steps",
                    "2",
                    "--no-progress",
                ]
            )
            == 0
        )

    def forced_run(self, to: Path, positive: bool) -> Path:
        run = rf.copy_run(self.run, to)
        rf.force_prediction(run, positive)
        return run

    def truth(self, subject: str) -> tuple[np.ndarray, tuple]:
        """Whole tumour of the raw label file, and the header's voxel spacing."""
        image = nib.load(self.raw / subject / f"{subject}_seg.nii.gz")
        return np.asarray(image.dataobj) > 0, tuple(float(z) for z in image.header.get_zooms()[:3])


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    return Setup(tmp_path_factory.mktemp("evaluate"))


def read_cases(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary_of(run: Path, name: str = "test") -> dict:
    return json.loads((run / "eval" / f"{name}_summary.json").read_text())


def splits_swept(monkeypatch) -> list:
    """Record the splits on which thresholds are swept."""
    import mmcam.evaluation.thresholds

    swept, original = [], mmcam.evaluation.thresholds.labelled_split

    def spy(run, cache, split, option="--split"):
        swept.append(split)
        return original(run, cache, split, option)

    monkeypatch.setattr(mmcam.evaluation.thresholds, "labelled_split", spy)
    return swept


def test_default_protocol_chooses_the_threshold_on_validation(setup, tmp_path, capsys, monkeypatch):
    run = setup.forced_run(tmp_path / "positive", positive=True)  # non-empty maps: the thresholds matter
    swept = splits_swept(monkeypatch)
    assert evaluate.main(["--run", str(run), "--checkpoint", "last"]) == 0
    assert swept == ["val"]  # no test label enters the threshold choice
    summary = summary_of(run)
    assert summary["format"] == "mmcam-evaluation" and summary["oracle"] is False and summary["warning"] is None
    protocol = summary["protocol"]
    assert protocol["threshold"]["mode"] == "val" and protocol["threshold"]["selected_on"] == "val"
    assert protocol["split"] == "test" and protocol["subjects"] == setup.test and protocol["checkpoint"] == "last"
    assert set(protocol["metrics"]) == {"dice", "hd95_mm", "assd_mm", "dice_2d", "ap"}
    assert "NaN" in protocol["empty_masks"]
    # the thresholds are those of an independent sweep on the validation split
    expected, _ = choose_on_split(load_run(run, "last"), setup.cache, "val")
    result = summary["maps"]["cam"]
    assert {c: result["channels"][c]["threshold"] for c in CHANNELS} == expected
    rows = read_cases(run / "eval" / result["cases_csv"])
    assert result["cases_csv"] == "test_cam_cases.csv" and [r["subject"] for r in rows] == setup.test
    assert all(r["threshold_mode"] == "val" for r in rows)
    for c in CHANNELS:
        assert all(float(r[f"{c}_threshold"]) == expected[c] for r in rows)
        dice = [float(r[f"{c}_dice"]) for r in rows]
        assert result["channels"][c]["dice"]["mean"] == pytest.approx(np.mean(dice))
        assert result["channels"][c]["dice"]["std"] == pytest.approx(np.std(dice))
    out = capsys.readouterr().out
    assert "Dice (3-D)" in out and "HD95 mm" in out and "ORACLE" not in out


def test_empty_truth_and_empty_prediction_follow_the_convention(setup, tmp_path):
    run = setup.forced_run(tmp_path / "negative", positive=False)  # every pseudo-mask empty
    assert evaluate.main(["--run", str(run), "--checkpoint", "last", "--threshold", "0.5"]) == 0
    rows = {r["subject"]: r for r in read_cases(run / "eval" / "test_fixed0.5_cam_cases.csv")}
    empty, other = rows[setup.empty], rows[setup.test[1]]
    assert empty["truth_voxels"] == "0" and int(other["truth_voxels"]) > 0
    for c in CHANNELS:  # both empty: perfect and finite; only the truth non-empty: Dice 0, distances undefined
        assert [float(empty[f"{c}_{m}"]) for m in protocol.METRICS] == [1.0, 0.0, 0.0, 1.0]
        assert float(other[f"{c}_dice"]) == 0.0 and math.isnan(float(other[f"{c}_hd95_mm"]))
    hd = summary_of(run, "test_fixed0.5")["maps"]["cam"]["channels"]["t1ce"]["hd95_mm"]
    assert hd == {"mean": 0.0, "std": 0.0, "n": 1, "n_undefined": 1}


def test_average_precision_ranks_the_maps_before_the_classifier_zeroing(setup, tmp_path):
    """Every pseudo-mask is empty (the classifiers say "no target" everywhere), yet the threshold-free AP
    is that of the network's maps on the slices with target: the brute-force AP of the ungated maps, not
    the prevalence a zeroed map would score; undefined for the patient without target."""
    run = rf.copy_run(setup.run, tmp_path / "negative")
    saved = ckpt.load(run / "last.pt")
    for key, weight in saved["model"].items():  # class 0 = twice class 1 on non-negative features: 0 wins
        if key.endswith(".classifier.weight"):
            saved["model"][key] = torch.stack([2 * weight[1].abs() + 0.1, weight[1].abs() + 0.1])
    ckpt.atomic_save(saved, run / "last.pt")
    assert evaluate.main(["--run", str(run), "--checkpoint", "last", "--threshold", "0.5"]) == 0
    rows = {r["subject"]: r for r in read_cases(run / "eval" / "test_fixed0.5_cam_cases.csv")}
    subject = setup.test[1]
    truth, _ = setup.truth(subject)
    maps = subject_maps(load_run(run, "last"), setup.cache, subject)
    assert not maps.maps.any() and maps.scores.any()
    positive = truth.any(axis=(0, 1))
    prevalence = truth[:, :, positive].mean()
    for c in CHANNELS:
        assert float(rows[subject][f"{c}_dice"]) == 0.0
        volume = maps.volume(c, gated=False)
        expected = brute_force_ap(volume[:, :, positive], truth[:, :, positive])
        assert float(rows[subject][f"{c}_ap"]) == pytest.approx(expected, rel=1e-6)
        assert abs(expected - prevalence) > 1e-3
        assert math.isnan(float(rows[setup.empty][f"{c}_ap"]))
    ap = summary_of(run, "test_fixed0.5")["maps"]["cam"]["channels"]["combined"]["ap"]
    assert ap["n"] == 1 and ap["n_undefined"] == 1


def test_metrics_agree_with_infer_masks_and_the_raw_labels(setup, tmp_path):
    run = setup.forced_run(tmp_path / "positive", positive=True)  # non-empty pseudo-masks
    assert evaluate.main(["--run", str(run), "--checkpoint", "last", "--threshold", "0.5"]) == 0
    subject = setup.test[1]
    row = next(r for r in read_cases(run / "eval" / "test_fixed0.5_cam_cases.csv") if r["subject"] == subject)
    out = tmp_path / "masks"
    assert (
        infer.main(
            [
                "--run",
                str(run),
                "--checkpoint",
                "last",
                "--threshold",
                "0.5",
                "--data",
                str(setup.cache),
                "--subjects",
                subject,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    truth, spacing = setup.truth(subject)
    assert row["spacing_mm"] == "x".join(f"{z:g}" for z in spacing)
    for c in CHANNELS:
        mask = np.asarray(nib.load(out / subject / f"mask_{c}.nii.gz").dataobj).astype(bool)
        assert mask.any() and not mask.all()
        expected = case_metrics(mask, truth, spacing)
        assert int(row[f"{c}_predicted_voxels"]) == expected.predicted_voxels
        for m in protocol.METRICS:
            assert float(row[f"{c}_{m}"]) == pytest.approx(getattr(expected, m), rel=1e-9), (c, m)
        assert math.isfinite(expected.hd95_mm) and expected.hd95_mm > 0


def test_oracle_is_flagged_in_every_output(setup, capsys, monkeypatch):
    swept = splits_swept(monkeypatch)
    assert evaluate.main(["--run", str(setup.run), "--oracle"]) == 0
    assert swept == ["test"]
    summary = summary_of(setup.run, "test_oracle")
    assert summary["oracle"] is True and "ORACLE" in summary["warning"]
    assert summary["protocol"]["threshold"]["selected_on"] == "test"
    assert summary["protocol"]["threshold"]["description"].startswith("ORACLE")
    rows = read_cases(setup.run / "eval" / summary["maps"]["cam"]["cases_csv"])
    assert summary["maps"]["cam"]["cases_csv"] == "test_oracle_cam_cases.csv"
    assert rows and all(r["threshold_mode"] == "oracle" for r in rows)
    assert "ORACLE" in capsys.readouterr().out


def test_every_map_type_with_a_label_free_threshold(setup, tmp_path):
    run = setup.forced_run(tmp_path / "positive", positive=True)
    assert (
        evaluate.main(
            ["--run", str(run), "--checkpoint", "last", "--threshold", "otsu", "--maps", "cam,gradcam,gradcampp"]
        )
        == 0
    )
    summary = summary_of(run, "test_otsu")
    assert list(summary["maps"]) == ["cam", "gradcam", "gradcampp"]
    assert summary["protocol"]["threshold"]["selected_on"] is None
    for map_type, result in summary["maps"].items():
        assert result["cases_csv"] == f"test_otsu_{map_type}_cases.csv"
        assert all(r["threshold"] == "per patient" for r in result["channels"].values())
        rows = read_cases(run / "eval" / result["cases_csv"])
        assert all(0 < float(r["t1ce_threshold"]) <= 1 and r["threshold_mode"] == "otsu" for r in rows)


@pytest.fixture(scope="module")
def unlabeled_cache(setup, tmp_path_factory) -> Path:
    """A cache with a labelled subject (the test split; no validation split) and an unlabelled one (its mask
    file removed)."""
    root = tmp_path_factory.mktemp("unlabeled")
    for subject in setup.val:
        shutil.copytree(setup.raw / subject, root / "raw" / subject)
    (root / "raw" / setup.val[1] / f"{setup.val[1]}_seg.nii.gz").unlink()
    build_cache(discover(root / "raw"), root / "cache")
    write_splits(root / "cache", fractions=(0.0, 0.0, 1.0), seed=0)
    return root / "cache"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "MISSING"], "no such directory"),
        (["--run", "RUN", "--checkpoint", "best_loss"], "invalid choice: 'best_loss'"),
        (["--run", "RUN", "--maps", "cam,scorecam"], "unknown map type(s) ['scorecam']"),
        (["--run", "RUN", "--split", "unlabeled", "--data", "UNLABELED"], "have no ground-truth masks"),
        (["--run", "RUN", "--split", "holdout"], "unknown split 'holdout'"),
        (["--run", "RUN", "--data", "NOCACHE"], "not a complete mmcam cache"),
        (["--run", "RUN", "--oracle", "--threshold", "0.5"], "cannot be combined"),
        (["--run", "RUN", "--threshold", "high"], "--threshold 'high'"),
        (["--run", "UNTRAINED", "--checkpoint", "best_dice"], "no file"),
        (["--run", "RUN", "--data", "UNLABELED"], "--threshold val: the validation split val: "),  # no val split
    ],
)
def test_bad_input_is_named_and_exits_2(setup, unlabeled_cache, tmp_path, capsys, argv, message):
    untrained = rf.untrained_run(tmp_path / "untrained", setup.cache, MODALITIES)
    names = {
        "MISSING": tmp_path / "missing",
        "RUN": setup.run,
        "UNLABELED": unlabeled_cache,
        "NOCACHE": tmp_path,
        "UNTRAINED": untrained,
    }
    argv = [str(names.get(a, a)) for a in argv]
    if "--split" in argv and "unlabeled" in argv:
        argv += ["--threshold", "0.5"]  # the error must come from the evaluated split, not from validation
    assert rf.exit_status(evaluate.main, argv) == 2
    assert message in capsys.readouterr().err


def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mmcam.evaluate", "--run", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and "error: --run" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- threshold rules
def test_parse_threshold():
    assert parse_threshold(None).mode == parse_threshold("val").mode == "val"
    assert parse_threshold("otsu").tag == "otsu"
    fixed = parse_threshold("0.35")
    assert (fixed.mode, fixed.value, fixed.tag) == ("fixed", 0.35, "fixed0.35")
    for bad in ("0", "-0.1", "1.5", "nan", "best"):
        with pytest.raises(UsageError, match="--threshold"):
            parse_threshold(bad)


def test_otsu_threshold_separates_two_modes():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.2, 0.03, 500).clip(0, 1), rng.normal(0.75, 0.03, 200).clip(0, 1)
    t = otsu_threshold(np.concatenate([low, high]))
    assert low.max() < t <= high.min()
    assert math.isnan(otsu_threshold(np.array([])))
    assert otsu_threshold(np.full(10, 0.4)) == pytest.approx(0.4)


def test_sweep_picks_the_smallest_best_grid_threshold():
    volume = np.zeros((4, 4, 2), dtype=np.float32)
    volume[0, 0, 0], volume[1, 1, 0], volume[2, 2, 1] = 0.3, 0.5, 0.7
    truth = volume >= 0.5  # any threshold in (0.3, 0.5] is perfect: the grid's smallest such is 0.35
    chosen, dice = sweep_thresholds([("a", {"x": volume}, truth)], ["x"])
    assert chosen == {"x": 0.35} and dice == {"x": 1.0}
    assert 0.35 in threshold_grid()


def test_one_threshold_rule_for_evaluate_and_infer():
    """ThresholdRule.threshold_for + pseudo_mask are the one thresholding path of evaluate and infer."""
    from mmcam.evaluation.thresholds import ThresholdRule, pseudo_mask

    volume = np.array([[0.0, 0.2], [0.6, 0.9]], dtype=np.float32)
    assert ThresholdRule("fixed", 0.5).threshold_for(volume) == 0.5
    assert ThresholdRule("val").threshold_for(volume, chosen=0.3) == 0.3
    with pytest.raises(ValueError, match="needs the value chosen on a split"):
        ThresholdRule("val").threshold_for(volume)
    assert pseudo_mask(volume, 0.6).tolist() == [[False, False], [True, True]]  # >= threshold
    empty = np.zeros((2, 2), dtype=np.float32)
    t = ThresholdRule("otsu").threshold_for(empty)  # no positive value: no threshold, an empty mask
    assert math.isnan(t) and not pseudo_mask(empty, t).any()


def test_patient_statistics_hand_values():
    from mmcam.evaluation.overlap import patient_statistics

    s = patient_statistics([0.5, 1.0, float("nan")])
    assert s == {"mean": 0.75, "std": 0.25, "n": 2, "n_undefined": 1}  # population std of 0.5, 1.0
    none = patient_statistics([])
    assert math.isnan(none["mean"]) and none["n"] == 0
