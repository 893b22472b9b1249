"""The paper's experiments as published: downloads whose cases differ in in-plane size, the paper presets,
training one cross-validation fold, and model selection on a step schedule (issue 14)."""

from __future__ import annotations

import csv
import json

import pytest

from mmcam import evaluate, train
from mmcam.data import build_cache, discover, read_split, write_splits
from mmcam.training import checkpoint as ckpt
from mmcam.training import config as cfg
from mmcam.training.run_dir import RunDirectory
from mmcam.training.trainer import Trainer

import data_fixtures as fx

SMALL = ["width_divisor=16", "batch_size=4", "epochs=2", "log_every=1", "--no-progress"]
MODALITIES = {"brats": "t1ce,flair", "prostate": "t2,adc"}


@pytest.mark.parametrize("layout", ["brats", "prostate"])
def test_mixed_in_plane_sizes_stop_with_what_to_pass_then_train_at_one_size(tmp_path, capsys, layout):
    raw = tmp_path / "raw"
    fx.make_mixed_sizes(raw, layout, [(16, 16, 8), (20, 18, 8), (16, 20, 8), (18, 16, 8), (20, 20, 8)])
    argv = ["--data", str(raw), "--dataset", layout, "--modalities", MODALITIES[layout], *SMALL]
    assert train.main([*argv, "--run-dir", str(tmp_path / "native")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "differ in in-plane size (16x16, 16x20, 18x16, 20x18, 20x20)" in err and "size=S" in err
    assert not (tmp_path / "native" / "last.pt").exists()

    run_dir = tmp_path / "sized"
    assert train.main([*argv, "size=24", "fit=scale", "--max-steps", "2", "--run-dir", str(run_dir)]) == 0
    assert (tmp_path / "raw-mmcam-cache-24scale" / "mmcam_cache.json").is_file()  # named by its size
    assert json.loads((run_dir / "results.json").read_text())["dice"]


def test_paper_presets_carry_the_papers_setting():
    brats, prostate = cfg.preset("paper-brats"), cfg.preset("paper-prostate")
    assert brats["modalities"] == ["t1", "t2"] and brats.get("size") is None  # BraTS' native 240x240
    assert cfg.preset("paper-brats-4")["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert (prostate["modalities"], prostate["size"], prostate["fit"]) == (["t2", "adc"], 256, "scale")
    for preset in (brats, prostate):
        assert preset["val_every_steps"] == 200
    assert cfg.apply(cfg.TrainConfig(), prostate, "test").objective() == cfg.TrainConfig().objective()


def test_fold_k_trains_and_validates_on_that_folds_split(tmp_path):
    raw = tmp_path / "raw"
    fx.make_mixed_sizes(raw, "prostate", [(16, 16, 8)] * 9)
    cache = tmp_path / "cache"
    build_cache(discover(raw), cache)
    write_splits(cache, fractions=(0.7, 0.0, 0.3), seed=0, folds=3)
    config = cfg.apply(cfg.TrainConfig(), {"data": str(cache), "fold": 1, "width_divisor": 16}, "test")
    trainer = Trainer(config, cache, RunDirectory(tmp_path / "run"))
    assert trainer.train_set.subject_ids == read_split(cache, "train", 1)
    assert trainer.val_set.subject_ids == read_split(cache, "val", 1)
    assert trainer.test_set.subject_ids == read_split(cache, "test")
    assert set(trainer.val_set.subject_ids) != set(read_split(cache, "val", 0))
    with pytest.raises(cfg.ConfigError, match="'fold' must be >= 0"):
        cfg.apply(cfg.TrainConfig(), {"fold": -1}, "test")


def test_model_selection_every_k_steps_by_accuracy_and_dice_only_on_request(tmp_path, capsys):
    cache_root = tmp_path / "raw"
    fx.make_mixed_sizes(cache_root, "brats", [(16, 16, 8)] * 6)
    cache = tmp_path / "cache"
    build_cache(discover(cache_root), cache)
    write_splits(cache, fractions=(0.5, 0.25, 0.25), seed=0)
    run_dir = tmp_path / "run"
    argv = ["--data", str(cache), "--modalities", "t1ce,flair", *SMALL, "val_every_steps=2", "--max-steps", "5"]
    assert train.main([*argv, "--run-dir", str(run_dir)]) == 0
    with open(run_dir / "metrics.csv") as f:
        val_steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r["split"] == "val"})
    assert val_steps == [2, 4, 5]  # the schedule, and the last step
    assert (run_dir / "best.pt").is_file() and not (run_dir / "best_dice.pt").exists()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["checkpoint"] == "best.pt"  # the paper's selection is the default
    assert set(ckpt.load(run_dir / "best.pt")["best_accuracy"]) == {"t1ce", "flair"}

    dice_run = tmp_path / "dice_run"
    assert train.main([*argv, "dice_selection=true", "--run-dir", str(dice_run)]) == 0
    assert (dice_run / "best_dice.pt").is_file()
    capsys.readouterr()
    assert evaluate.main(["--run", str(dice_run), "--data", str(cache), "--checkpoint", "best_dice"]) == 0
    assert "departure from the paper" in capsys.readouterr().out
    summary = json.loads((dice_run / "eval" / "test_summary.json").read_text())
    assert "departure from the paper" in summary["protocol"]["departure"]
