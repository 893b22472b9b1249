"""Run directories for the tests of mmcam.infer and mmcam.evaluate.

- :func:`untrained_run`: a run directory (config.yaml, a checkpoint) around an untrained model, without
  training: for tests where the model's weights do not matter;
- :func:`force_prediction`: rewrite a checkpoint so that every network predicts "target" (positive) or
  "no target" on every slice. The backbone output A is >= 0 (a ReLU) and the class scores are means of
  W_c · A, so W_1 = |W| + 0.1, W_0 = -W_1 makes class 1 win (and the reverse class 0);
- :func:`exit_status`: the exit status of a ``main(argv)``, whether it returns it or argparse raises it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mmcam.models import MultiModalCAM
from mmcam.training import checkpoint as ckpt
from mmcam.training.config import TrainConfig
from mmcam.training.run_dir import RunDirectory


def untrained_run(
    run_dir: Path, cache: Path, modalities, *, width_divisor: int = 16, seed: int = 0, name: str = "last"
) -> Path:
    config = TrainConfig(data=str(cache), modalities=list(modalities), width_divisor=width_divisor, seed=seed)
    RunDirectory(run_dir).write_config(config.to_dict(), seed)
    torch.manual_seed(seed)
    model = MultiModalCAM(list(modalities), width_divisor=width_divisor)
    ckpt.atomic_save(
        {"model": model.state_dict(), "modalities": list(modalities), "config": config.to_dict()},
        run_dir / f"{name}.pt",
    )
    return run_dir


def force_prediction(run_dir: Path, positive: bool, source: str = "last", target: str = "last") -> None:
    """Rewrite ``RUN_DIR/<source>.pt`` into ``<target>.pt`` with classifiers that always predict
    ``positive``."""
    saved = ckpt.load(run_dir / f"{source}.pt")
    for key, weight in saved["model"].items():
        if key.endswith(".classifier.weight"):
            winner = weight[1].abs() + 0.1
            forced = torch.stack([-winner, winner]) if positive else torch.stack([winner, -winner])
            saved["model"][key] = forced.to(weight.dtype)
    ckpt.atomic_save(saved, run_dir / f"{target}.pt")


def copy_run(run_dir: Path, to: Path) -> Path:
    """A copy of a run directory without its evaluation outputs."""
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("eval"))
    return to


def exit_status(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return exc.code
