"""``python -m mmcam.train``: a resumed run is bitwise the uninterrupted one, checkpoints and run files
exist, bad input fails before training, SIGINT saves and exits cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmcam import train
from mmcam.data.synthetic import prepare_synthetic
from mmcam.training import checkpoint as ckpt

SMALL = ["width_divisor=16", "batch_size=4", "epochs=2", "log_every=1", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("synthetic"), "brats", n_subjects=6, seed=0, shape=(32, 32, 12))


def run(cache, run_dir, *extra) -> int:
    return train.main(["--data", str(cache), "--run-dir", str(run_dir), "--modalities", "t1ce,flair", *SMALL, *extra])


def weights(run_dir: Path) -> dict:
    return ckpt.load(run_dir / "last.pt")["model"]


def test_resume_gives_bitwise_the_uninterrupted_weights(cache, tmp_path):
    assert run(cache, tmp_path / "whole", "--max-steps", "7") == 0
    assert run(cache, tmp_path / "split", "--max-steps", "3") == 0
    state = ckpt.load(tmp_path / "split" / "last.pt")["state"]
    assert state["step"] == 3 and state["batch_in_epoch"] == 3  # stopped inside the first epoch
    after_three = weights(tmp_path / "split")
    assert train.main(["--resume", str(tmp_path / "split"), "--max-steps", "7", "--no-progress"]) == 0
    whole, split = weights(tmp_path / "whole"), weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    for name in whole:
        assert torch.equal(whole[name], split[name]), name
    # the comparison can fail: three steps less gives other weights
    assert not all(torch.equal(whole[k], after_three[k]) for k in whole if whole[k].is_floating_point())


def test_run_directory_contents(cache, tmp_path):
    run_dir = tmp_path / "run"
    assert run(cache, run_dir, "--max-steps", "4") == 0
    for name in (
        "config.yaml",
        "environment.json",
        "train.log",
        "metrics.csv",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "results.json",
    ):
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["dice"]) == {"t1ce", "flair", "combined"}
    assert 0.0 <= results["dice"]["combined"]["mean"] <= 1.0
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"] == torch.__version__
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,split,name,value" and any(",train,loss," in r for r in rows)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lrr=1"], "unknown config key 'lrr'"),
        (["lr=abc"], "must be a number"),
        (["--modalities", "t1ce,dwi"], "dwi"),
        (["--preset", "paper-brats", "epochs=0"], "'epochs' must be >= 1"),
        (["--amp", "fp16"], "--amp fp16 needs --device cuda"),
    ],
)
def test_bad_input_fails_before_training(cache, tmp_path, capsys, argv, message):
    code = train.main(["--data", str(cache), "--run-dir", str(tmp_path / "r"), "--no-progress", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_bf16_autocast_trains_on_the_cpu(cache, tmp_path):
    """``--amp bf16`` on the CPU runs the network under CPU autocast: the same seed and steps give weights
    near, but not equal to, the float32 run's (bfloat16 convolutions), all finite."""
    assert run(cache, tmp_path / "fp32", "--max-steps", "2") == 0
    assert run(cache, tmp_path / "bf16", "--max-steps", "2", "--amp", "bf16") == 0
    fp32, bf16 = weights(tmp_path / "fp32"), weights(tmp_path / "bf16")
    floats = [k for k in fp32 if fp32[k].is_floating_point()]
    assert all(bf16[k].dtype == torch.float32 and torch.isfinite(bf16[k]).all() for k in floats)
    assert not all(torch.equal(fp32[k], bf16[k]) for k in floats)
    assert all(torch.allclose(fp32[k], bf16[k], rtol=0.1, atol=0.05) for k in floats)
    assert "amp: bf16" in (tmp_path / "bf16" / "config.yaml").read_text()


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "_cpu_has_bf16", lambda: False)
    assert run(cache, tmp_path / "r", "--max-steps", "1", "--amp", "bf16") == 0
    assert "without bfloat16 instructions" in (tmp_path / "r" / "train.log").read_text()
    monkeypatch.setattr(train, "_cpu_has_bf16", lambda: True)
    assert run(cache, tmp_path / "q", "--max-steps", "1", "--amp", "bf16") == 0
    assert "without bfloat16 instructions" not in (tmp_path / "q" / "train.log").read_text()


def test_unknown_option_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--learning-rate", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_resume_with_a_different_config_is_refused(cache, tmp_path, capsys):
    assert run(cache, tmp_path / "r", "--max-steps", "2") == 0
    code = train.main(["--resume", str(tmp_path / "r"), "lr=0.5", "--no-progress"])
    assert code == 2
    assert "different config" in capsys.readouterr().err


def test_sigint_saves_and_exits_cleanly(cache, tmp_path):
    run_dir = tmp_path / "interrupted"
    cmd = [
        sys.executable,
        "-m",
        "mmcam.train",
        "--data",
        str(cache),
        "--run-dir",
        str(run_dir),
        "--modalities",
        "t1ce,flair",
        *SMALL,
        "epochs=1000",
    ]
    # cwd: not the repository root, where `-m` would import the source tree instead of the installed package
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while not (run_dir / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, output
    assert "Traceback" not in output
    state = ckpt.load(run_dir / "last.pt")["state"]
    assert state["step"] >= 1


def test_raw_download_is_prepared_on_first_use(tmp_path):
    from mmcam.data.synthetic import generate_synthetic

    raw = generate_synthetic(tmp_path / "raw", "brats", n_subjects=5, seed=1, shape=(32, 32, 12))
    run_dir = tmp_path / "run"
    code = train.main(
        [
            "--data",
            str(raw),
            "--dataset",
            "brats",
            "--run-dir",
            str(run_dir),
            "--modalities",
            "t2,flair",
            "--max-steps",
            "2",
            "--limit-subjects",
            "2",
            "--channels-last",
            "--workers",
            "1",
            *SMALL,
        ]
    )
    assert code == 0
    cache = raw.parent / f"{raw.name}-mmcam-cache"
    assert (cache / "mmcam_cache.json").is_file()
    log = (run_dir / "train.log").read_text()
    assert f"preparing {raw}" in log
    saved = ckpt.load(run_dir / "last.pt")
    assert saved["modalities"] == ["t2", "flair"] and saved["config"]["channels_last"] is True


def test_a_bad_raw_file_stops_training_with_the_prepare_error(tmp_path, capsys):
    """Training prepares a raw --data through the same library call as `python -m mmcam.prepare`
    (data.prepare_raw), so a broken file gives prepare's own one-line error naming it, and no cache."""
    from mmcam.data.synthetic import generate_synthetic

    raw = generate_synthetic(tmp_path / "raw", "brats", n_subjects=3, seed=1, shape=(16, 16, 8))
    broken = sorted(raw.rglob("*_flair.nii.gz"))[0]
    broken.write_bytes(b"not a NIfTI file")
    code = train.main(["--data", str(raw), "--dataset", "brats", "--run-dir", str(tmp_path / "run"), *SMALL])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and broken.name in err and "Traceback" not in err
    assert not (raw.parent / f"{raw.name}-mmcam-cache" / "mmcam_cache.json").exists()


def test_training_results_are_the_evaluate_protocol(cache, tmp_path):
    """One test-Dice protocol: results.json holds the figures of `python -m mmcam.evaluate`'s protocol
    (original voxel grid, validation threshold, default checkpoint), written by the same code to eval/."""
    from mmcam import evaluate

    run_dir = tmp_path / "run"
    assert run(cache, run_dir, "--max-steps", "4") == 0
    results = json.loads((run_dir / "results.json").read_text())
    summary = json.loads((run_dir / results["evaluation"]).read_text())
    channels = summary["maps"]["cam"]["channels"]
    assert set(results["dice"]) == set(channels) == {"t1ce", "flair", "combined"}
    for name, entry in results["dice"].items():
        assert entry["per_patient"] == channels[name]["per_patient_dice"]
        assert entry["mean"] == channels[name]["dice"]["mean"] and entry["threshold"] == channels[name]["threshold"]
    assert results["checkpoint"] == Path(summary["protocol"]["checkpoint_file"]).name
    # the command line, run afterwards with its defaults, reproduces them
    (run_dir / results["evaluation"]).unlink()
    assert evaluate.main(["--run", str(run_dir), "--data", str(cache)]) == 0
    again = json.loads((run_dir / results["evaluation"]).read_text())["maps"]["cam"]["channels"]
    for name, channel in again.items():
        assert channel["per_patient_dice"] == channels[name]["per_patient_dice"]


def test_loss_options_are_defined_once_and_reach_the_objective():
    """TrainConfig takes its loss keys from ObjectiveConfig (one definition, one validation), so every one
    of them, zscore_eps included, can be set and reaches the objective the trainer uses."""
    import dataclasses

    from mmcam.objective import ObjectiveConfig
    from mmcam.training import config as cfg

    loss_keys = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    assert loss_keys <= {f.name for f in dataclasses.fields(cfg.TrainConfig)}
    config = cfg.apply(cfg.TrainConfig(), {"zscore_eps": "1e-3", "lambda_kd": 0.25, "use_cmer": "false"}, "test")
    assert config.objective() == ObjectiveConfig(zscore_eps=1e-3, lambda_kd=0.25, use_cmer=False)
    with pytest.raises(cfg.ConfigError, match=r"temperature must be > 0.*\(in test\)"):
        cfg.apply(cfg.TrainConfig(), {"temperature": 0}, "test")
    with pytest.raises(cfg.ConfigError, match="at least one of use_cls"):
        cfg.apply(cfg.TrainConfig(), {f"use_{t}": False for t in ("cls", "kd", "er", "cmer")}, "test")
