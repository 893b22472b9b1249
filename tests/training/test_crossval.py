"""python -m mmcam.crossval: every fold trained into its own run directory on its own split, the per-fold
and mean ± std table, and a second run of the command skipping finished folds and resuming the rest."""

from __future__ import annotations

import json

import pytest
import yaml

from mmcam import crossval
from mmcam.data import read_split

import data_fixtures as fx

SMALL = ["width_divisor=16", "batch_size=4", "epochs=2", "log_every=1", "--no-progress", "--max-steps", "2"]


def test_crossval_trains_every_fold_and_tabulates(tmp_path, capsys):
    raw = tmp_path / "raw"
    fx.make_mixed_sizes(raw, "prostate", [(16, 16, 8)] * 9)
    runs = tmp_path / "cv"
    argv = ["--folds", "3", "--run-dir", str(runs), "--data", str(raw), "--dataset", "prostate", *SMALL]
    argv += ["--modalities", "t2,adc"]
    assert crossval.main(argv) == 0
    cache = tmp_path / "raw-mmcam-cache-3folds"
    table = json.loads((runs / "crossval.json").read_text())
    assert [row["fold"] for row in table["folds"]] == [0, 1, 2]
    for k in range(3):
        config = yaml.safe_load((runs / f"fold{k}" / "config.yaml").read_text())
        assert (config["fold"], config["folds"]) == (k, 3)
        assert read_split(cache, "val", k)  # each fold has its own validation patients
    dice = [row["dice"]["combined"] for row in table["folds"]]
    assert table["dice"]["combined"]["mean"] == pytest.approx(sum(dice) / 3)
    assert "mean ± std" in (runs / "crossval.md").read_text()
    assert len({tuple(read_split(cache, "val", k)) for k in range(3)}) == 3  # three different folds

    # run again after fold 2 lost its results: folds 0 and 1 are skipped, fold 2 resumes from last.pt
    (runs / "fold2" / "results.json").unlink()
    before = (runs / "fold0" / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert crossval.main(argv) == 0
    out = capsys.readouterr().out
    assert "fold 0: finished" in out and "fold 1: finished" in out and "fold 2: resuming" in out
    assert (runs / "fold0" / "results.json").stat().st_mtime_ns == before
    assert (runs / "fold2" / "results.json").is_file()


def test_crossval_refuses_options_it_sets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        crossval.main(["--folds", "3", "--run-dir", "x", "--resume", "y"])
    assert exit_info.value.code == 2
    assert "--resume is set by crossval itself" in capsys.readouterr().err
