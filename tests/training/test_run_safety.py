"""Runs are safe to read and to crash: a checkpoint carrying a pickled payload is refused by every command
that reads a run, without running it; a truncated checkpoint gives one line naming the file and exit status
2; kill -9 between two step checkpoints resumes bitwise; a full disk stops prepare and training with one
line and keeps what was written; a non-finite loss stops training naming the step and term; one training
process per run directory."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcam import evaluate, infer, train
from mmcam.data.synthetic import prepare_synthetic
from mmcam.report import cli as report_cli
from mmcam.training import checkpoint as ckpt

SMALL = ["width_divisor=16", "batch_size=4", "log_every=1", "--no-progress", "--modalities", "t1ce,flair"]


class Payload:
    """Unpickling this creates the folder ``path``: the stand-in for code a shared checkpoint could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("safety")
    cache = prepare_synthetic(root / "synthetic", "brats", n_subjects=6, seed=0, shape=(32, 32, 12))
    run_dir = root / "run"
    assert train.main(["--data", str(cache), "--run-dir", str(run_dir), "--max-steps", "2", *SMALL]) == 0
    return cache, run_dir


def commands(run_dir: Path, cache: Path, out: Path) -> dict[str, tuple]:
    """Every command that reads a run's checkpoints: ``name -> (main, argv)``."""
    return {
        "train --resume": (train.main, ["--resume", str(run_dir), "--max-steps", "3", "--no-progress"]),
        "evaluate": (evaluate.main, ["--run", str(run_dir), "--checkpoint", "last", "--data", str(cache)]),
        "infer": (
            infer.main,
            ["--run", str(run_dir), "--checkpoint", "last", "--data", str(cache), "--out", str(out / "masks")],
        ),
        "report": (report_cli.main, [str(run_dir), "--checkpoint", "last", "--out", str(out / "report")]),
    }


def test_a_pickled_payload_in_a_checkpoint_is_never_run(finished_run, tmp_path, capsys):
    cache, original = finished_run
    run_dir = shutil.copytree(original, tmp_path / "shared-run")
    marker = tmp_path / "payload-ran"
    saved = ckpt.load(run_dir / "last.pt")
    saved["config"]["note"] = Payload(marker)
    torch.save(saved, run_dir / "last.pt")
    # the test can fail: the unsafe reader would run the payload
    torch.load(run_dir / "last.pt", weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    for name, (main, argv) in commands(run_dir, cache, tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "holds objects other than tensors and plain values" in err and str(run_dir / "last.pt") in err, name
        assert not marker.exists(), f"{name} ran the payload"


def test_a_truncated_checkpoint_is_one_line_and_status_2(finished_run, tmp_path, capsys):
    cache, original = finished_run
    run_dir = shutil.copytree(original, tmp_path / "cut-run")
    data = (run_dir / "last.pt").read_bytes()
    (run_dir / "last.pt").write_bytes(data[: len(data) // 2])
    for name, (main, argv) in commands(run_dir, cache, tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), (name, err)
        assert str(run_dir / "last.pt") in err and "truncated or corrupt" in err, (name, err)
        assert "restore the file from a copy" in err or "restore " + str(run_dir / "last.pt") in err, (name, err)


def test_checkpoints_hold_only_tensors_and_plain_values(finished_run):
    """Every checkpoint of a run loads with weights_only=True, random states included."""
    _, run_dir = finished_run
    for path in run_dir.glob("*.pt"):
        torch.load(path, weights_only=True)
    rng = ckpt.load(run_dir / "last.pt")["rng"]
    assert isinstance(rng["numpy"]["keys"], torch.Tensor) and rng["numpy"]["name"] == "MT19937"


# --------------------------------------------------------------------------------- crash and disk
def train_command(cache: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmcam.train", "--data", str(cache), "--run-dir", str(run_dir), *SMALL, *extra]


def start(command: list[str], cwd: Path, file_size_limit: int | None = None) -> subprocess.Popen:
    """A subprocess (cwd outside the repository, so ``-m`` imports the installed package), optionally under
    RLIMIT_FSIZE (a file-size limit: writes past it fail with EFBIG, as on a full disk)."""

    def limit() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    pipe = subprocess.PIPE
    return subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, cwd=cwd, preexec_fn=limit)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``metrics.jsonl`` logs a training step >= ``step``."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        log = run_dir / "metrics.jsonl"
        if log.is_file():
            steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.endswith("}")]
            if steps and max(steps) >= step:
                return
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached: {proc.poll()}")


def test_kill_9_between_step_checkpoints_resumes_bitwise(finished_run, tmp_path):
    cache, _ = finished_run
    assert train.main(["--data", str(cache), "--run-dir", str(tmp_path / "whole"), "--max-steps", "9", *SMALL]) == 0
    run_dir = tmp_path / "killed"
    proc = start(train_command(cache, run_dir, "epochs=1000", "checkpoint_every_steps=3"), tmp_path)
    wait_for_step(run_dir, 7, proc)
    proc.kill()  # SIGKILL: no handler runs, nothing is saved on the way out
    proc.communicate()
    step = ckpt.load(run_dir / "last.pt")["state"]["step"]
    assert step % 3 == 0 and step >= 6  # the last step checkpoint before the kill
    assert train.main(["--resume", str(run_dir), "--max-steps", "9", "--no-progress"]) == 0
    whole, resumed = ckpt.load(tmp_path / "whole" / "last.pt")["model"], ckpt.load(run_dir / "last.pt")["model"]
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def test_a_full_disk_stops_prepare_and_training_with_one_line_and_keeps_what_was_written(finished_run, tmp_path):
    cache, original = finished_run
    raw = cache.parent / "raw"
    # prepare: a file-size limit below one subject's image file stops it; the rerun finishes it
    out = tmp_path / "cache"
    proc = start([sys.executable, "-m", "mmcam.prepare", "--data", str(raw), "--out", str(out), "--workers", "1",
                  "--no-progress"], tmp_path, file_size_limit=20_000)  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "preparing stopped" in err and "run the same command again" in err
    assert not list(out.rglob(".tmp-mmcam-*"))  # no temporary file left behind
    proc = start([sys.executable, "-m", "mmcam.prepare", "--data", str(raw), "--out", str(out), "--workers", "1",
                  "--no-progress", "--splits", "0.5,0.25,0.25"], tmp_path)  # fmt: skip
    assert proc.communicate(timeout=300) and proc.returncode == 0
    for name in ("image.npy", "labels.npy"):
        for subject in (cache / "subjects").iterdir():
            assert (out / "subjects" / subject.name / name).read_bytes() == (subject / name).read_bytes()
    # training: last.pt cannot be written (it is larger than best.pt, the limit is between them)
    run_dir = shutil.copytree(original, tmp_path / "run")
    limit = ((run_dir / "best.pt").stat().st_size + (run_dir / "last.pt").stat().st_size) // 2
    before = (run_dir / "last.pt").read_bytes()
    proc = start([sys.executable, "-m", "mmcam.train", "--resume", str(run_dir), "--max-steps", "4", "--no-progress"],
                 tmp_path, file_size_limit=limit)  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and err.startswith("error: writing to") and err.count("\n") == 1, err
    assert "File too large" in err and "--resume" in err
    assert (run_dir / "last.pt").read_bytes() == before and not list(run_dir.glob(".tmp-mmcam-*"))
    assert train.main(["--resume", str(run_dir), "--max-steps", "4", "--no-progress"]) == 0


def test_a_non_finite_loss_stops_training_naming_the_step_and_term(finished_run, tmp_path, capsys):
    cache, _ = finished_run
    from mmcam.data import build_cache, discover, write_splits
    from mmcam.data.build import BuildOptions
    from mmcam.data.cache import IMAGE_FILE

    nan_cache = tmp_path / "nan-cache"
    build_cache(discover(cache.parent / "raw"), nan_cache, options=BuildOptions(image_dtype="float32"))
    write_splits(nan_cache, fractions=(0.5, 0.25, 0.25), seed=0)
    for subject in (nan_cache / "subjects").iterdir():  # half of every subject's slices
        images = np.load(subject / IMAGE_FILE, mmap_mode="r+")
        images[::2] = np.nan
        images.flush()
    run_dir = tmp_path / "run"
    argv = ["--data", str(nan_cache), "--run-dir", str(run_dir), "--max-steps", "6", "checkpoint_every_steps=1", *SMALL]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    match = re.search(r"step (\d+): the loss term (cls|er|cmer|kd)/(t1ce|flair) is not finite", err)
    assert match and err.count("\n") == 1, err
    if (run_dir / "last.pt").is_file():  # the last good state: saved before the failing step, finite
        saved = ckpt.load(run_dir / "last.pt")
        assert saved["state"]["step"] < int(match.group(1))
        assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not (run_dir / "results.json").exists()


def test_one_training_process_per_run_directory(finished_run, tmp_path, capsys):
    cache, original = finished_run
    run_dir = tmp_path / "busy"
    proc = start(train_command(cache, run_dir, "epochs=1000", "checkpoint_every_steps=1"), tmp_path)
    wait_for_step(run_dir, 2, proc)
    config = (run_dir / "config.yaml").read_bytes()
    assert train.main(["--data", str(cache), "--run-dir", str(run_dir), "--max-steps", "1", *SMALL]) == 2
    assert "in use by another training process (pid " in capsys.readouterr().err
    assert train.main(["--resume", str(run_dir), "--max-steps", "1", "--no-progress"]) == 2
    assert "in use by another training process" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_bytes() == config
    proc.kill()  # a crashed run does not leave the lock stuck
    proc.communicate()
    step = ckpt.load(run_dir / "last.pt")["state"]["step"]
    assert train.main(["--resume", str(run_dir), "--max-steps", str(step + 1), "--no-progress"]) == 0
    # a new run into a finished run's directory is refused too
    finished = shutil.copytree(original, tmp_path / "finished")
    assert train.main(["--data", str(cache), "--run-dir", str(finished), "--max-steps", "1", *SMALL]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
